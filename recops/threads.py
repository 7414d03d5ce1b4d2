"""BLAS thread limits without the per-call cost.

``threadpoolctl.threadpool_limits`` scans the process's loaded libraries on every call (about 4 ms here: it reads
``/proc/self/maps``), which is more than a whole online request should take. One ``ThreadpoolController`` is
built on first use (numpy's and scipy's BLAS are loaded by then) and reused: a limit then costs microseconds.
"""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager, nullcontext

from threadpoolctl import ThreadpoolController

_controller: ThreadpoolController | None = None
_lock = threading.Lock()


def _shared_controller() -> ThreadpoolController:
    global _controller
    if _controller is None:
        with _lock:
            if _controller is None:
                _controller = ThreadpoolController()
    return _controller


def set_blas_threads(threads: int) -> None:
    """Run the BLAS thread pools with ``threads`` threads for the rest of the process (a serving process: its
    requests then find the pools as they need them, and :func:`blas_limits` changes nothing per call). A pool
    loaded later keeps its own count; :func:`blas_limits` still limits it around each call."""
    _shared_controller().limit(limits=threads, user_api="blas")  # not restored: no context is exited


def blas_limits(threads: int) -> AbstractContextManager:
    """Context manager limiting the BLAS thread pools to ``threads`` (restored on exit). When every BLAS pool
    already runs ``threads`` threads (a server started with one thread per process), nothing is changed: asking
    each library for its count is a C call, where a ``limit`` saves and restores the whole thread-pool info
    (~50 us, a few percent of an online request)."""
    controller = _shared_controller()
    if all(lib.num_threads == threads for lib in controller.lib_controllers if lib.user_api == "blas"):
        return nullcontext()
    return controller.limit(limits=threads, user_api="blas")
