"""The README's two newcomer commands are the ones CI and the demo actually run."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEST_COMMAND = (
    'pip install torch==2.13.0 && pip install -e ".[test]" && bash packaging/install-cpu-test-deps.sh'
    " && python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder"
)
DEMO_COMMAND = "pip install torch==2.13.0 && pip install -e . && verl-reflect demo"


def test_readme_shows_both_commands_and_ci_runs_the_test_command():
    readme = (REPO / "README.md").read_text()
    assert DEMO_COMMAND in readme
    assert TEST_COMMAND in readme
    ci_commands = [
        line
        for line in (REPO / ".ci" / "run").read_text().splitlines()
        if line and not line.startswith(("#", "set ", "cd "))
    ]
    assert ci_commands == [TEST_COMMAND]
