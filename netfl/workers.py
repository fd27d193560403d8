"""Worker processes of a sweep: the fork server they are forked from, started early.

Kept free of heavy imports (no torch, no netfl.api) so that ``netfl sweep`` can start the
fork server before it imports anything itself: the server's imports (torch, netfl, the
build, scikit-learn's datasets) then run on the second core while this process imports
the same and checks the sweep, instead of after.
"""

from __future__ import annotations

import multiprocessing
import sys
from typing import Any

# What every run imports lazily, beyond netfl.api: the build (with the simulator, learners
# and data), torch._dynamo (torch.func and the memory check's meta-device forward import
# it: ~800 modules) and scikit-learn's datasets (the digits). A worker that had to import
# them itself would spend seconds of CPU on its first run; forked from a fork server that
# imported them, it never does.
RUN_IMPORTS = ("netfl.api", "netfl.sweep_exec", "netfl.run", "netfl.build", "torch._dynamo",
               "sklearn.datasets")


def _preload() -> list[str]:
    """What the fork server imports before it forks a worker: RUN_IMPORTS, then every netfl
    module this process has imported (after the sweep's build check: what its runs use)."""
    ours = [name for name, module in list(sys.modules.items())
            if name.split(".")[0] == "netfl" and not name.endswith("__main__")
            and getattr(module, "__spec__", None) is not None]
    return list(dict.fromkeys([*RUN_IMPORTS, *ours]))


def worker_context() -> Any:
    """forkserver with netfl (and torch) preloaded where the platform has it: each worker is
    forked from a server that imported them once, before any thread started, so it skips
    the seconds a spawned interpreter spends importing torch; spawn elsewhere."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(_preload())
        return context
    return multiprocessing.get_context("spawn")


def start_workers(workers: int) -> None:
    """Start the fork server now, for a sweep about to run in ``workers`` processes, so that
    its imports (seconds of CPU) overlap this process's loading and build-checking of the
    sweep instead of following them. Nothing for one worker, or where workers are spawned."""
    if workers > 1 and "forkserver" in multiprocessing.get_all_start_methods():
        worker_context()
        from multiprocessing import forkserver

        forkserver.ensure_running()
