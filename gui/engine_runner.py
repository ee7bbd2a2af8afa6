"""Owns the ``Engine`` for the window: starts it off the GUI thread, stops it, records, and
watches for a lost device. The GUI thread only ever reads ``engine.snapshot()`` (one attribute
read, never blocks) and flips live controls (message, alpha, bypass: swapped atomically).

Model loading and warm-up take seconds, so ``start()`` runs them on a plain Python thread and
reports back through a queued Qt signal. Loaded models are cached per (model, detector,
device): a restart after a device switch or a lost device is then quick. ``stop()`` runs on
the GUI thread: it waits for the worker to finish its chunk (at most one chunk, <= 200 ms,
measured 0.1 s at 200 ms chunks) and for a recording to flush.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Signal

from audioseal_live.engine.engine import Engine, EngineConfig
from audioseal_live.engine.metrics import Snapshot
from audioseal_live.errors import AudioSealLiveError, DeviceError

log = logging.getLogger(__name__)


class EngineRunner(QObject):
    started = Signal()
    failed = Signal(str)  # one line for the user
    stopped = Signal(object)  # final Snapshot
    recorded = Signal(str, float, float)  # a saved recording: path, seconds, seconds as silence
    _done = Signal()  # from the start thread to the GUI thread (queued)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.engine: Engine | None = None
        self.config: EngineConfig | None = None  # of the running (or starting) engine
        self._thread: threading.Thread | None = None
        self._result: tuple[Engine | None, str] = (None, "")
        self._models: dict[tuple[Any, ...], tuple[Any, Any]] = {}
        self._models_lock = threading.Lock()
        self._closing = False
        self.recorder: Any = None
        self._done.connect(self._on_done)

    # ----- state -------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.engine is not None

    @property
    def starting(self) -> bool:
        return self._thread is not None

    def snapshot(self) -> Snapshot:
        return self.engine.snapshot() if self.engine is not None else Snapshot()

    # ----- start -------------------------------------------------------------------------
    def start(self, cfg: EngineConfig) -> bool:
        if self.engine is not None or self._thread is not None:
            return False
        self.config = cfg
        self._result = (None, "")
        self._thread = threading.Thread(
            target=self._start_bg, args=(cfg,), name="audioseal-gui-start", daemon=True
        )
        self._thread.start()
        return True

    def _models_for(self, cfg: EngineConfig) -> tuple[Any, Any]:
        import torch

        torch.set_num_threads(max(1, cfg.threads))  # before any torch work
        key = (cfg.model, cfg.detector, cfg.device)
        with self._models_lock:
            if key not in self._models:
                from audioseal_live.engine.model import load_models

                t0 = time.perf_counter()
                self._models[key] = load_models(cfg.model, cfg.device, cfg.detector)
                log.info("models %s loaded in %.1f s", key, time.perf_counter() - t0)
            return self._models[key]

    def _start_bg(self, cfg: EngineConfig) -> None:
        eng: Engine | None = None
        error = ""
        try:
            marker, det = self._models_for(cfg)
            eng = Engine(cfg, marker=marker, detector=det)
            eng.start()
        except AudioSealLiveError as exc:
            error = str(exc)
        except ValueError as exc:  # settings the engine refuses (chunk size and similar)
            error = str(exc)
        except NotImplementedError as exc:  # e.g. a non-streaming checkpoint
            error = str(exc)
        except Exception as exc:  # keep the window alive; the log has the traceback
            log.exception("engine start failed")
            error = f"engine failed to start: {type(exc).__name__}: {exc}"
        if error:
            eng = None
            log.warning("start failed: %s", error)
        self._result = (eng, error.splitlines()[0] if error else "")
        self._done.emit()

    def _on_done(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        eng, error = self._result
        self._result = (None, "")
        if eng is None:
            self.config = None
            if not self._closing:
                self.failed.emit(error)
            return
        if self._closing:  # the window closed while the model was loading
            eng.stop()
            return
        self.engine = eng
        log.info("started: %s", _describe(eng))
        self.started.emit()

    # ----- live controls -----------------------------------------------------------------
    def set_message(self, bits: tuple[int, ...]) -> None:
        if self.engine is not None:
            self.engine.set_message(bits)

    def set_alpha(self, alpha: float) -> None:
        if self.engine is not None:
            self.engine.set_alpha(alpha)

    def set_bypass(self, on: bool) -> None:
        if self.engine is not None:
            self.engine.set_bypass(on)

    # ----- recording (added to a running engine as a worker sink) ------------------------
    def start_recording(self, path: Path) -> None:
        from audioseal_live.engine.recorder import Recorder

        if self.engine is None or self.engine.worker is None:
            raise DeviceError("start the engine before recording")
        if self.recorder is not None:
            return
        w = self.engine.worker
        self.recorder = Recorder(path, w.rate)
        # Swap the list (one atomic attribute store): the worker iterates whichever it read.
        w.sinks = [*w.sinks, self.recorder]
        log.info("recording to %s", path)

    def stop_recording(self) -> tuple[Path, float, float] | None:
        """Finish the recording: (path, seconds, seconds the disk was too slow for, written
        as silence), also sent as ``recorded``; None if none was running."""
        rec, self.recorder = self.recorder, None
        if rec is None:
            return None
        if self.engine is not None and self.engine.worker is not None:
            w = self.engine.worker
            w.sinks = [s for s in w.sinks if s is not rec]
        rec.close()  # flushes on its writer thread, renames the file into place
        if rec.error:
            raise DeviceError(rec.error)
        seconds, lost = rec.frames / rec.sample_rate, rec.dropped / rec.sample_rate
        log.info("recording finished: %.1f s in %s", seconds, rec.path)
        self.recorded.emit(str(rec.path), seconds, lost)
        return rec.path, seconds, lost

    # ----- stop --------------------------------------------------------------------------
    def stop(self) -> Snapshot:
        """Stop streams and threads (then finish a recording). Safe to call when stopped."""
        eng, self.engine = self.engine, None
        self.config = None
        snap = Snapshot()
        if eng is not None:
            snap = eng.stop()  # streams first: nothing more reaches the recorder after this
        rec_error = ""
        try:
            self.stop_recording()
        except AudioSealLiveError as exc:
            rec_error = str(exc)
        if eng is not None:
            log.info("stopped: %s", snap.status_line())
            self.stopped.emit(snap)
        if rec_error:
            self.failed.emit(rec_error)
        return snap

    def shutdown(self, timeout: float = 60.0) -> None:
        """Window closing: wait for a pending start, then stop everything."""
        self._closing = True
        t = self._thread
        if t is not None:
            t.join(timeout)
            self._thread = None
            eng, _ = self._result
            if eng is not None:
                eng.stop()
            self._result = (None, "")
        self.stop()

    # ----- device watch ------------------------------------------------------------------
    def check_device(self, now: float | None = None) -> str:
        """Why the running engine lost its device ('' if fine). Called at ~4 Hz."""
        eng = self.engine
        return "" if eng is None else eng.device_problem(now)


def _describe(eng: Engine) -> str:
    c = eng.config
    return (
        f"input={c.input!r} output={c.output!r} monitor={c.monitor!r} "
        f"rate={getattr(eng.backend, 'sample_rate', '?')} chunk={c.chunk_ms:g} ms "
        f"device={c.device} model={c.model or 'default'}"
    )
