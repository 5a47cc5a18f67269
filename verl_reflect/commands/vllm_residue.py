"""vLLM's leftovers in ``/dev/shm``, removed after a run that started vLLM servers (``main_ppo``, standalone servers).

Ray ends vLLM's servers by killing their processes, so vLLM never unlinks its shared memory: its message queues and
object storage (Python's ``SharedMemory``: ``psm_<hex>``, 160 and 240 MiB for the tiny model) and a multiprocessing
semaphore (``sem.mp-<id>``), about 400 MB per run. verl's own weight buckets (``verl_weights_*``) are unlinked by verl.
Only files that appeared during the run and that no live process holds are removed: another run's stay.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import time
from collections.abc import Iterator
from pathlib import Path

SHM_DIR = Path("/dev/shm")
VLLM_SHM = ("psm_*", "sem.mp-*")


@contextlib.contextmanager
def removing_vllm_shm() -> Iterator[None]:
    """Around a run that starts vLLM servers: afterwards, remove the vLLM shared-memory files that appeared in
    ``/dev/shm`` during it and that no live process holds (other runs' files in use stay)."""
    before = shm_names()
    try:
        yield
    finally:
        remove_vllm_shm(before)


def remove_vllm_shm(before: set[str], wait_s: float = 30.0) -> list[str]:
    """Unlink the vLLM shared-memory files not in ``before`` that no live process maps or has open; returns them.
    Waits up to ``wait_s`` for the run's processes to let go of them (vLLM's engine outlives Ray's shutdown briefly)."""
    deadline = time.monotonic() + wait_s
    while True:
        new = {name for name in shm_names() - before if is_vllm_shm(name)}
        held = new & shm_in_use()
        if not held or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    removed = sorted(new - held)
    for name in removed:
        with contextlib.suppress(FileNotFoundError):
            (SHM_DIR / name).unlink()
    return removed


def is_vllm_shm(name: str) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in VLLM_SHM)


def shm_names() -> set[str]:
    return set(os.listdir(SHM_DIR)) if SHM_DIR.is_dir() else set()


def shm_in_use() -> set[str]:
    """Names under /dev/shm that a live process maps (``/proc/<pid>/maps``) or has open (``/proc/<pid>/fd``)."""
    prefix = f"{SHM_DIR}/"
    held = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
                fields = line.split(maxsplit=5)  # address perms offset dev inode [path]
                path = fields[5] if len(fields) == 6 else ""
                if path.startswith(prefix):
                    held.add(path[len(prefix) :].removesuffix(" (deleted)"))
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith(prefix):
                        held.add(target[len(prefix) :])
    return held
