"""The layout shows the architecture: three zones, no import cycle, and the plugin never imports a command.

- ``verl_reflect/`` top level: the plugin proper, what verl imports in its trainer and workers;
- ``verl_reflect/cpu/``: the CPU path (platform, ``hf`` rollout, transformers generation, tiny model);
- ``verl_reflect/commands/``: the user commands and what they share; ``verl_reflect/data/``: the rows.

Imports are read from the source (``ast``), function-level ones included, so a lazy import counts too.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "verl_reflect"
PLUGIN_PROPER = {
    "__init__",
    "plugin",
    "register",
    "agent_loop",
    "verdict",
    "turn_boundary",
    "advantage",
    "trainer",
    "resolvers",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the verl_reflect modules it imports (``from pkg import mod`` counts as importing ``pkg.mod``)."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported |= {f"{node.module}.{alias.name}" for alias in node.names} | {node.module}
        graph[name] = {m for m in imported if m in modules and m != name}
    return graph


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for dependency in sorted(graph[module]):
            if state.get(dependency) == "open":
                # A package's __init__ re-exporting its own modules is not a cycle between modules.
                cycle = path[path.index(dependency) :] + [dependency] if dependency in path else [module, dependency]
                if not all(m == dependency or m.startswith(dependency + ".") for m in cycle):
                    pytest.fail(f"import cycle: {' -> '.join(cycle)}")
            elif dependency not in state:
                visit(dependency, [*path, dependency])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_the_plugin_proper_never_imports_a_command():
    graph = import_graph()
    plugin = {f"verl_reflect.{name}" if name != "__init__" else "verl_reflect" for name in PLUGIN_PROPER}
    reached, todo = set(), list(plugin)
    while todo:  # everything the plugin proper imports, transitively
        for dependency in graph[todo.pop()] - reached:
            reached.add(dependency)
            todo.append(dependency)
    assert not [m for m in reached if m.startswith("verl_reflect.commands")], sorted(reached)


def test_the_top_level_holds_only_the_plugin_proper():
    top = {path.stem for path in PACKAGE.glob("*.py")}
    assert top == PLUGIN_PROPER
    assert {path.name for path in PACKAGE.iterdir() if path.is_dir() and path.name != "__pycache__"} == {
        "cpu",
        "commands",
        "data",
        "samples",
    }


def test_the_docs_layout_section_matches_the_tree():
    development = (REPO / "docs" / "development.md").read_text()
    section = development.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    # One bullet per zone: "- `verl_reflect/<zone>/`: ... `module` (its job), `module` (its job), ..."
    named = {
        f"verl_reflect/{zone + '/' if zone else ''}{name}.py"
        for zone, line in re.findall(r"^- `verl_reflect/(\w*)/?`: (.+)$", section, flags=re.M)
        for name in re.findall(r"`(\w+)` \(", line)
    }
    tree = {str(p.relative_to(REPO)) for p in PACKAGE.rglob("*.py") if p.name not in ("__init__.py", "__main__.py")}
    assert named == tree, (sorted(tree - named), sorted(named - tree))


def test_no_merge_conflict_markers_are_left_in_the_tree():
    import subprocess

    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    marked = [
        name
        for name in files
        if name.endswith((".py", ".md", ".yaml", ".toml", ".sh", ".txt", "run"))
        and re.search(r"^(<{7}|>{7}) ", (REPO / name).read_text(errors="replace"), flags=re.M)
    ]
    assert not marked
