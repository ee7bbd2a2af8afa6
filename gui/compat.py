"""Workaround for a reference-counting bug in PySide6 6.12.0 on CPython < 3.12.

That release returns ``True`` from ``Signal.emit()`` and ``None`` for an empty ``QVariant``
(``QComboBox.currentData()`` of an item without data, a missing property) without taking a
reference. On CPython 3.12+ these objects are immortal and nothing happens; on 3.11 every
emit (pyqtgraph emits dozens per redraw) takes one reference away from ``True`` until it hits
zero and the interpreter aborts with "Fatal Python error: bool_dealloc" (or "none_dealloc")
after a minute or so. PySide6 6.11.x does not have the bug: pin ``PySide6!=6.12.0``.

Where a probe shows the bug, a timer gives back what was taken: it notes each object's count
and adds the missing references (``Py_IncRef``: the exact increment the binding forgot).
Nothing is done where the probe shows no loss.
"""

from __future__ import annotations

import ctypes
import logging
import sys
from typing import Any

log = logging.getLogger(__name__)

_SINGLETONS: tuple[Any, ...] = (None, True, False)
_PAD = 100_000  # head room between two checks (a busy window loses a few hundred per second)
_guard: Any = None


def _leaks_on_emit() -> bool:
    from PySide6.QtCore import QObject, Signal

    class _Probe(QObject):
        sig = Signal()

    p = _Probe()
    before = sys.getrefcount(True)
    for _ in range(50):
        p.sig.emit()
    return sys.getrefcount(True) <= before - 40


def _incref(obj: Any, n: int) -> None:
    inc = ctypes.pythonapi.Py_IncRef
    inc.argtypes = [ctypes.py_object]
    inc.restype = None
    for _ in range(n):
        inc(obj)


class _RefcountGuard:
    def __init__(self) -> None:
        from PySide6.QtCore import QCoreApplication, QTimer

        for obj in _SINGLETONS:
            _incref(obj, _PAD)
        self.floor = {id(o): sys.getrefcount(o) for o in _SINGLETONS}
        self.restored = 0
        self.timer = QTimer(QCoreApplication.instance())
        self.timer.setInterval(200)
        self.timer.timeout.connect(self.top_up)
        self.timer.start()

    def top_up(self) -> None:
        for obj in _SINGLETONS:
            missing = self.floor[id(obj)] - sys.getrefcount(obj)
            if missing > 0:
                _incref(obj, missing)
                self.restored += missing


def install_refcount_guard() -> bool:
    """Idempotent; needs a QCoreApplication. True if the guard is active."""
    global _guard
    if _guard is not None:
        return True
    if sys.version_info >= (3, 12) or not _leaks_on_emit():
        return False
    import PySide6

    log.warning(
        "PySide6 %s loses references to True/None on this Python (%s): compensating; "
        "install another PySide6 version (6.11.x works) to avoid the workaround",
        PySide6.__version__,
        sys.version.split()[0],
    )
    _guard = _RefcountGuard()
    _guard.top_up()
    return True
