"""BLAS thread limits without the per-call cost.

``threadpoolctl.threadpool_limits`` scans the process's loaded libraries on every call (about 4 ms here: it reads
``/proc/self/maps``), which is more than a whole online request should take. One ``ThreadpoolController`` is
built on first use (numpy's and scipy's BLAS are loaded by then) and reused: a limit then costs microseconds.
"""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager

from threadpoolctl import ThreadpoolController

_controller: ThreadpoolController | None = None
_lock = threading.Lock()


def blas_limits(threads: int) -> AbstractContextManager:
    """Context manager limiting the BLAS thread pools to ``threads`` (restored on exit)."""
    global _controller
    if _controller is None:
        with _lock:
            if _controller is None:
                _controller = ThreadpoolController()
    return _controller.limit(limits=threads, user_api="blas")
