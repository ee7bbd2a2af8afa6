"""The main window: controls on the left, live views on the right, health along the bottom.

Data flows one way: the engine publishes a frozen metrics snapshot; two timers read it (plots
~30 Hz, numbers ~4 Hz) and hand it to the widgets (``handle_new_data``), which redraw on
their own. Controls call the ``EngineRunner``; nothing here waits on audio or the model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import logging
import threading
from pathlib import Path
from typing import Any

from audioseal_live_gui import settings as st
from audioseal_live_gui.bits_view import BitsView
from audioseal_live_gui.compat import install_refcount_guard
from audioseal_live_gui.device_picker import DevicePicker
from audioseal_live_gui.engine_runner import EngineRunner
from audioseal_live_gui.health_strip import HealthStrip
from audioseal_live_gui.level_meter import LevelMeter
from audioseal_live_gui.message_editor import MessageEditor
from audioseal_live_gui.probability_plot import ProbabilityPlot
from audioseal_live_gui.settings import DeviceRef, GuiSettings
from PySide6.QtCore import QSettings, Qt, QTimer, Signal
from PySide6.QtGui import QCloseEvent, QColor, QFont, QKeySequence, QPalette, QShortcut
from PySide6.QtWidgets import (
    QApplication,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QSlider,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from audioseal_live.engine import audio_io
from audioseal_live.engine.audio_io import (
    SEE_DEVICES,
    DeviceInfo,
    list_devices,
    rescan_devices,
)
from audioseal_live.engine.engine import EngineConfig
from audioseal_live.engine.metrics import NO_DETECTION, NO_MONITOR, Snapshot
from audioseal_live.errors import AudioSealLiveError
from audioseal_live.message_bits import bits_of

log = logging.getLogger(__name__)

PLOT_MS = 33  # ~30 Hz
NUMBERS_MS = 250  # ~4 Hz
OFFICIAL_CARD = "audioseal_wm_streaming"
SAFETY_MS = 5.0  # the engine's default output-ring margin


def assets_dir() -> Path:
    """Icons and screenshot: the installed data package, else the source tree's assets/."""
    try:
        import audioseal_live_assets

        if audioseal_live_assets.__file__:
            return Path(audioseal_live_assets.__file__).parent
    except ImportError:
        pass
    return Path(__file__).resolve().parent.parent / "assets"


class MainWindow(QMainWindow):
    cudaChecked = Signal(bool)

    def __init__(self, qsettings: QSettings | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        install_refcount_guard()  # before pyqtgraph starts emitting (see compat.py)
        self.setWindowTitle("audioseal-live")
        self.qsettings = qsettings if qsettings is not None else st.qsettings()
        self.cfg: GuiSettings = st.load(self.qsettings)
        self.runner = EngineRunner(self)
        self.runner.started.connect(self._on_started)
        self.runner.failed.connect(self._on_failed)
        self.runner.stopped.connect(self._on_stopped)
        self.runner.recorded.connect(self._show_saved)
        self.errors: list[str] = []  # every message shown to the user (tests read it)
        self._box: QMessageBox | None = None
        self._pending_switch: tuple[str, object, EngineConfig] | None = None
        self._switching = False  # a live device switch's stop: the session goes on
        self._recording_ended_by_switch = False
        self._selected: dict[str, object] = {}
        self._devices: list[DeviceInfo] = []
        self._build()
        self._apply_settings(self.cfg)
        self.refresh_devices(rescan=False)
        self._update_enabled()

        self.plot_timer = QTimer(self)
        self.plot_timer.setInterval(PLOT_MS)
        self.plot_timer.timeout.connect(self._on_plot_tick)
        self.numbers_timer = QTimer(self)
        self.numbers_timer.setInterval(NUMBERS_MS)
        self.numbers_timer.timeout.connect(self._on_numbers_tick)
        self.plot_timer.start()
        self.numbers_timer.start()
        # torch takes a second or two to import: do it off the GUI thread, then offer CUDA.
        self.cudaChecked.connect(self._on_cuda_checked)
        threading.Thread(target=self._check_cuda, name="audioseal-gui-cuda", daemon=True).start()

    # ================================================================= layout
    def _build(self) -> None:
        central = QWidget(self)
        self.setCentralWidget(central)
        root = QHBoxLayout(central)
        root.setContentsMargins(12, 12, 12, 12)
        root.setSpacing(14)

        left = QVBoxLayout()
        left.setSpacing(10)
        left.addWidget(self._build_devices())
        left.addWidget(self._build_watermark())
        left.addWidget(self._build_session())
        left.addStretch(1)
        left_w = QWidget()
        left_w.setLayout(left)
        left_w.setFixedWidth(390)
        root.addWidget(left_w)

        right = QVBoxLayout()
        right.setSpacing(10)
        self.bits_view = BitsView()
        right.addWidget(_card(self.bits_view))
        self.plot = ProbabilityPlot()
        self.plot.setMinimumHeight(220)
        right.addWidget(self.plot, 1)
        meters = QVBoxLayout()
        meters.setSpacing(2)
        self.meter_in = LevelMeter("In")
        self.meter_out = LevelMeter("Out")
        meters.addWidget(self.meter_in)
        meters.addWidget(self.meter_out)
        right.addLayout(meters)
        self.health = HealthStrip()
        right.addWidget(self.health)
        root.addLayout(right, 1)

        self.busy = QProgressBar()
        self.busy.setRange(0, 0)  # indeterminate: "loading the model…"
        self.busy.setMaximumWidth(160)
        self.busy.setTextVisible(False)
        self.busy.hide()
        self.statusBar().addPermanentWidget(self.busy)
        self.apply_style()

    def _build_devices(self) -> QGroupBox:
        box = QGroupBox("Audio")
        form = QFormLayout(box)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.input_picker = DevicePicker("input")
        self.output_picker = DevicePicker("output")
        self.monitor_picker = DevicePicker(
            "monitor",
            specials=(("Marked output (digital)", st.MONITOR_OUTPUT), ("Off", st.MONITOR_OFF)),
        )
        self.input_picker.setToolTip("microphone to watermark")
        self.output_picker.setToolTip("speakers, or a virtual cable for Zoom / OBS / Discord")
        self.monitor_picker.setToolTip(
            "what the detector listens to: the marked output itself, or a capture device "
            "(loopback / room mic) to verify the mark after the real chain"
        )
        for kind, p in (
            ("input", self.input_picker),
            ("output", self.output_picker),
            ("monitor", self.monitor_picker),
        ):
            p.deviceChanged.connect(lambda ref, k=kind: self._on_device_changed(k, ref))
        form.addRow("Input", self.input_picker)
        form.addRow("Output", self.output_picker)
        form.addRow("Detector", self.monitor_picker)

        self.rate_combo = QComboBox()
        for r in st.RATE_CHOICES:
            self.rate_combo.addItem("device default" if r == 0 else f"{r / 1000:g} kHz", r)
        self.chunk_combo = QComboBox()
        for c in st.CHUNK_CHOICES_MS:
            self.chunk_combo.addItem(f"{c} ms", c)
        self.chunk_combo.setToolTip(
            "audio the model processes at once: longer chunks cost less CPU, add latency"
        )
        self.chunk_combo.currentIndexChanged.connect(self._update_latency_hint)
        self.latency_hint = QLabel("")
        self.latency_hint.setObjectName("caption")
        self.refresh_button = QPushButton("Refresh devices")
        self.refresh_button.setToolTip("rescan audio devices (while stopped)")
        self.refresh_button.clicked.connect(lambda: self.refresh_devices(rescan=True))
        self.rate_combo.setToolTip(
            "the devices' sample rate: their default, or one both input and output support"
        )
        self.chunk_combo.setAccessibleName("chunk length")
        form.addRow("Sample rate", self.rate_combo)
        chunk_row = QHBoxLayout()
        chunk_row.addWidget(self.chunk_combo)
        chunk_row.addWidget(self.latency_hint, 1)
        form.addRow("Chunk", chunk_row)
        form.addRow("", self.refresh_button)
        return box

    def _build_watermark(self) -> QGroupBox:
        box = QGroupBox("Watermark")
        form = QFormLayout(box)
        self.message_editor = MessageEditor()
        self.message_editor.messageChanged.connect(self._on_message)
        form.addRow(self.message_editor)

        self.alpha_slider = QSlider(Qt.Orientation.Horizontal)
        self.alpha_slider.setRange(0, 200)  # percent
        self.alpha_slider.setSingleStep(5)
        self.alpha_slider.setPageStep(10)
        self.alpha_slider.setToolTip(
            "watermark strength (alpha): 100% is the model's level. 70%: 3 dB quieter, still "
            "read after MP3 and phone lines; 50%: 6 dB quieter, weaker under noise (README)"
        )
        self.alpha_slider.setAccessibleName("watermark strength")
        self.alpha_label = QLabel("100%")
        self.alpha_label.setMinimumWidth(44)
        self.alpha_slider.valueChanged.connect(self._on_alpha)
        row = QHBoxLayout()
        row.addWidget(self.alpha_slider, 1)
        row.addWidget(self.alpha_label)
        form.addRow("Strength", row)

        self.model_combo = QComboBox()
        self.model_combo.addItem("Embedded default", ("default", ""))
        self.model_combo.addItem(f"Official: {OFFICIAL_CARD}", ("card", OFFICIAL_CARD))
        self.model_combo.addItem("Checkpoint file…", ("file", ""))
        self.model_combo.setToolTip(
            "the generator (its detector is paired by name); official cards download once "
            "when online, or are read from the audioseal cache"
        )
        self.model_combo.activated.connect(self._on_model_activated)
        form.addRow("Model", self.model_combo)
        self.compute_combo = QComboBox()
        self.compute_combo.addItem("CPU", "cpu")
        self.compute_combo.setToolTip("where the model runs (CUDA appears if torch sees a GPU)")
        form.addRow("Compute", self.compute_combo)
        return box

    def _build_session(self) -> QGroupBox:
        box = QGroupBox("Session")
        lay = QVBoxLayout(box)
        self.start_button = QPushButton("Start")
        self.start_button.setObjectName("startButton")
        self.start_button.setMinimumHeight(46)
        self.start_button.clicked.connect(self.toggle_start)
        lay.addWidget(self.start_button)
        row = QHBoxLayout()
        self.bypass_button = QPushButton("Bypass (A/B)")
        self.bypass_button.setObjectName("bypassButton")
        self.bypass_button.setCheckable(True)
        self.bypass_button.setToolTip(
            "while running: send the unmarked signal (A/B listening); off again at Stop"
        )
        self.bypass_button.toggled.connect(self._on_bypass)
        self.record_button = QPushButton("● Record")
        self.record_button.setObjectName("recordButton")
        self.record_button.setCheckable(True)
        self.record_button.toggled.connect(self._on_record)
        self.record_dir_button = QToolButton()
        self.record_dir_button.setText("…")
        self.record_dir_button.setToolTip("choose the folder recordings are saved to")
        self.record_dir_button.setAccessibleName("recording folder")
        self.record_dir_button.clicked.connect(self._choose_record_dir)
        row.addWidget(self.bypass_button, 1)
        row.addWidget(self.record_button, 1)
        row.addWidget(self.record_dir_button)
        lay.addLayout(row)
        self.record_label = QLabel("")
        self.record_label.setObjectName("caption")
        self.record_label.setWordWrap(True)
        lay.addWidget(self.record_label)
        self.record_button.setToolTip("record the marked output to a WAV file")
        self.start_button.setToolTip("start or stop the live watermark")
        # Keys for the three things done mid-call, away from the mouse. Ctrl (Cmd on macOS)
        # with each: a bare Space would steal the focused button's own Space.
        self.shortcuts = {
            "Ctrl+Return": self.start_button,
            "Ctrl+B": self.bypass_button,
            "Ctrl+R": self.record_button,
        }
        for keys, button in self.shortcuts.items():
            seq = QKeySequence(keys)
            QShortcut(seq, self, button.click)  # click(): does nothing while disabled
            if keys == "Ctrl+Return":  # the keypad's Enter is another key to Qt
                QShortcut(QKeySequence("Ctrl+Enter"), self, button.click)
            text = seq.toString(QKeySequence.SequenceFormat.NativeText)
            button.setToolTip(f"{button.toolTip()} ({text})")
        return box

    # ================================================================= look
    def apply_style(self) -> None:
        """Sizes for reading at two metres; colours derived from the current palette so dark
        and light system themes both work."""
        pal = self.palette()
        text = pal.color(QPalette.ColorRole.WindowText)
        win = pal.color(QPalette.ColorRole.Window)
        cap = _mix(text, win, 0.62)
        panel = _mix(pal.color(QPalette.ColorRole.Base), win, 0.5)
        hi = pal.color(QPalette.ColorRole.Highlight)  # a set bit: filled, as in the bits view
        hi_text = pal.color(QPalette.ColorRole.HighlightedText)
        mono = QFont("DejaVu Sans Mono")
        mono.setStyleHint(QFont.StyleHint.Monospace)
        self.setStyleSheet(
            f"""
            QLabel#caption {{ color: {cap.name()}; font-size: 11px; }}
            QLabel#bigNumber {{ font-size: 60px; font-weight: 700; }}
            QLabel#bigState {{ font-size: 44px; font-weight: 800; }}
            QLabel#healthValue {{ font-size: 17px; font-weight: 600; }}
            QLabel#mono {{ font-family: "{mono.family()}", monospace; font-size: 15px; }}
            QFrame#card, QFrame#healthStrip {{ background: {panel.name()};
                border: 1px solid {_mix(text, win, 0.85).name()}; border-radius: 8px; }}
            QPushButton#startButton {{ font-size: 18px; font-weight: 700; }}
            QPushButton#recordButton:checked {{ color: #f85149; font-weight: 700; }}
            QPushButton#bypassButton:checked {{ background: #d29922; color: #1b1b1b;
                font-weight: 700; border: 1px solid #9e7212; border-radius: 4px; padding: 3px; }}
            QToolButton#bitButton:checked {{ background: {hi.name()}; color: {hi_text.name()};
                font-weight: 700; border-radius: 3px; }}
            QLabel#healthTag {{ color: {cap.name()}; }}
            QGroupBox {{ font-weight: 600; }}
            """
        )
        if hasattr(self, "plot"):
            self.plot.apply_palette()

    def changeEvent(self, e: Any) -> None:
        from PySide6.QtCore import QEvent

        if e.type() == QEvent.Type.PaletteChange:  # the system switched dark/light
            self.apply_style()
        super().changeEvent(e)

    # ================================================================= settings
    def _apply_settings(self, g: GuiSettings) -> None:
        self._selected = {"input": g.input, "output": g.output, "monitor": self._monitor_ref(g)}
        self.rate_combo.setCurrentIndex(max(0, self.rate_combo.findData(g.sample_rate)))
        self.chunk_combo.setCurrentIndex(max(0, self.chunk_combo.findData(g.chunk_ms)))
        self.message_editor.set_value(g.message)
        self.bits_view.set_embedded(bits_of(g.message))
        self.alpha_slider.setValue(round(g.alpha * 100))
        self._on_alpha(self.alpha_slider.value())  # setValue emits nothing if it was there
        self._model_file = g.model_file
        idx = {"default": 0, "card": 1, "file": 2}[g.model_kind]
        if g.model_kind == "file" and g.model_file:
            self.model_combo.setItemText(2, f"File: {Path(g.model_file).name}")
        elif g.model_kind == "file":
            idx = 0
        self.model_combo.setCurrentIndex(idx)
        self._want_device = g.device
        self._record_dir = g.record_dir
        self.record_label.setText(f"records to {g.record_dir}")
        if not (g.geometry and self.restoreGeometry(g.geometry)):  # none, or not a geometry
            self.resize(1360, 860)
        self._update_latency_hint()

    @staticmethod
    def _monitor_ref(g: GuiSettings) -> object:
        if g.monitor in (st.MONITOR_OUTPUT, st.MONITOR_OFF):
            return g.monitor
        return DeviceRef(g.monitor, g.monitor_hostapi)

    def current_settings(self) -> GuiSettings:
        mon = self.monitor_picker.current()
        kind, card = self.model_combo.currentData()
        return GuiSettings(
            input=_ref(self.input_picker.current()),
            output=_ref(self.output_picker.current()),
            monitor=mon.name if isinstance(mon, DeviceRef) else str(mon or st.MONITOR_OUTPUT),
            monitor_hostapi=mon.hostapi if isinstance(mon, DeviceRef) else "",
            sample_rate=int(self.rate_combo.currentData()),
            chunk_ms=int(self.chunk_combo.currentData()),
            message=self.message_editor.value(),
            alpha=self.alpha_slider.value() / 100,
            device=str(self.compute_combo.currentData()),
            model_kind=kind,
            model_card=card or OFFICIAL_CARD,
            model_file=self._model_file,
            record_dir=self._record_dir,
            geometry=bytes(self.saveGeometry().data()),
        )

    def save_settings(self) -> None:
        st.save(self.qsettings, self.current_settings())

    # ================================================================= devices
    def refresh_devices(self, rescan: bool = True) -> None:
        if self.runner.running or self.runner.starting:
            return  # PortAudio cannot be re-initialised under open streams
        failed = False
        try:
            if rescan:
                rescan_devices()
            self._devices = list_devices()
        except AudioSealLiveError as exc:
            # said as it is (e.g. "restart the program"), not as "no devices found" below
            if rescan:  # the devices listed so far stay
                self.show_error(str(exc))
                return
            self._devices, failed = [], True
            self.statusBar().showMessage(str(exc))
        for kind, p in self._pickers():
            p.set_devices(self._devices, keep=self._selected.get(kind))
        n_in = sum(d.max_input_channels > 0 for d in self._devices)
        n_out = sum(d.max_output_channels > 0 for d in self._devices)
        log.info("devices: %d inputs, %d outputs", n_in, n_out)
        if failed:
            return
        if not n_in or not n_out:  # said where it is seen, not only at the failed Start
            missing = " and ".join(k for k, n in (("input", n_in), ("output", n_out)) if not n)
            self.statusBar().showMessage(
                f"No audio {missing} devices found: plug one in, then Refresh devices"
            )
        elif rescan:
            self.statusBar().showMessage(f"{n_in} inputs, {n_out} outputs found", 4000)

    def _pickers(self) -> tuple[tuple[str, DevicePicker], ...]:
        return (
            ("input", self.input_picker),
            ("output", self.output_picker),
            ("monitor", self.monitor_picker),
        )

    def select_device(self, kind: str, ref: object) -> None:
        """Pick a device as the user would (emits the change; switches if running)."""
        picker = dict(self._pickers())[kind]
        picker.select(ref)
        self._on_device_changed(kind, picker.current())

    def pick_device(self, kind: str, name: str) -> None:
        """Select the listed device called ``name`` (scripts, tests)."""
        chan = "max_output_channels" if kind == "output" else "max_input_channels"
        for d in self._devices:
            if d.name == name and getattr(d, chan) > 0:
                self.select_device(kind, DeviceRef(d.name, d.hostapi))
                return
        self.select_device(kind, DeviceRef(name))

    def _on_device_changed(self, kind: str, ref: object) -> None:
        previous = self._selected.get(kind)
        if ref == previous:
            return
        self._selected[kind] = ref
        if not self.runner.running:
            return
        # Switch live: stop, start on the new device; on failure roll back (see _on_failed).
        old_cfg = self.runner.config
        assert old_cfg is not None
        log.info("switching %s: %r -> %r", kind, previous, ref)
        recording = self.runner.recorder is not None
        self._switching = True  # Bypass (A/B) carries over to the new device
        try:
            self.runner.stop()  # may report a recording that could not be saved: not the switch's
        finally:
            self._switching = False
        self._pending_switch = (kind, previous, old_cfg)
        self._start_with(self.engine_config())
        # a file has one device's rate and clock: the switch ends it, and the next status says so
        self._recording_ended_by_switch = recording

    # ================================================================= engine config
    def engine_config(self) -> EngineConfig:
        mon = self.monitor_picker.current()
        monitor: str | int | None
        if mon == st.MONITOR_OFF:
            monitor = None
        elif mon == st.MONITOR_OUTPUT or mon is None:
            monitor = "output"
        else:
            monitor = self.monitor_picker.engine_spec()
        kind, card = self.model_combo.currentData()
        model = None if kind == "default" else card if kind == "card" else self._model_file
        rate = int(self.rate_combo.currentData())
        return EngineConfig(
            input=self.input_picker.engine_spec(),
            output=self.output_picker.engine_spec(),
            monitor=monitor,
            sample_rate=rate or None,
            chunk_ms=float(self.chunk_combo.currentData()),
            device=str(self.compute_combo.currentData()),
            model=model or None,
            **self._live_controls(),
        )

    def _live_controls(self) -> dict[str, Any]:
        """The message and strength the controls show now (both change while running)."""
        return {"message": self.message_editor.bits(), "alpha": self.alpha_slider.value() / 100}

    # ================================================================= start / stop
    def toggle_start(self) -> None:
        if self.runner.running:
            self.stop()
        elif not self.runner.starting:
            self.start()

    def start(self) -> None:
        self._pending_switch = None
        self._start_with(self.engine_config())

    def _start_with(self, cfg: EngineConfig) -> None:
        self.plot.clear()
        if self.runner.start(cfg):
            self.statusBar().showMessage("Loading the model and opening the devices…")
            self.busy.show()
            QApplication.setOverrideCursor(Qt.CursorShape.BusyCursor)
        self._update_enabled()

    def stop(self) -> None:
        self._pending_switch = None
        self.runner.stop()
        self._update_enabled()

    def _end_busy(self) -> None:
        if self.busy.isVisible():
            self.busy.hide()
            QApplication.restoreOverrideCursor()

    def _on_started(self) -> None:
        self._end_busy()
        self._pending_switch = None
        # Edits made while the engine was starting had nothing to reach: send them now.
        live = self._live_controls()
        self.runner.set_message(live["message"])
        self.runner.set_alpha(live["alpha"])
        self.runner.set_bypass(self.bypass_button.isChecked())
        cfg = self.runner.config
        # the detail line names a capture monitor as its picker does, not by its index
        capture = cfg is not None and cfg.monitor not in (None, "output")
        self.bits_view.monitor_name = self.monitor_picker.shown_name() if capture else ""
        ended, self._recording_ended_by_switch = self._recording_ended_by_switch, False
        self.statusBar().showMessage(
            f"Running: {self.input_picker.shown_name()} → {self.output_picker.shown_name()}"
            + (f" at {cfg.sample_rate} Hz" if cfg and cfg.sample_rate else "")
            + (
                " · the recording ended at the switch (saved; Record starts a new one)"
                if ended
                else ""
            ),
        )
        self.save_settings()  # a configuration that worked is worth keeping
        self._update_enabled()

    def _on_failed(self, message: str) -> None:
        self._end_busy()
        switch, self._pending_switch = self._pending_switch, None
        if switch is not None:
            kind, previous, old_cfg = switch
            picker = dict(self._pickers())[kind]
            bad = picker.shown_name()  # the box may show "(not found)" before the name
            picker.revert(previous)
            self._selected[kind] = previous
            self.show_error(
                f"Could not switch {kind} to {bad}: {message}. Back on {picker.shown_name()}."
            )
            # Roll back (a failure here just reports), with the message and strength as they
            # are now: they may have changed since old_cfg started.
            self._start_with(dataclasses.replace(old_cfg, **self._live_controls()))
            return
        self.show_error(message)
        self._update_enabled()

    def _on_stopped(self, snap: Snapshot) -> None:
        self.record_button.blockSignals(True)
        self.record_button.setChecked(False)
        self.record_button.blockSignals(False)
        self.statusBar().showMessage(
            f"Stopped after {snap.time_s:.1f} s · xruns {snap.xruns} · "
            f"underruns {snap.underruns} · unmarked spans {snap.unmarked_spans}",
        )
        self._show_snapshot(Snapshot())
        self._update_enabled()

    def _update_enabled(self) -> None:
        running, starting = self.runner.running, self.runner.starting
        idle = not running and not starting
        self.start_button.setText("Starting…" if starting else "Stop" if running else "Start")
        self.start_button.setEnabled(not starting)
        self.refresh_button.setEnabled(idle)
        for w in (self.input_picker, self.output_picker, self.monitor_picker):
            w.setEnabled(not starting)  # switching while running restarts on the new device
        for w in (self.rate_combo, self.chunk_combo, self.model_combo, self.compute_combo):
            w.setEnabled(idle)  # these need a fresh engine: change them while stopped
        self.record_button.setEnabled(running)
        self.bypass_button.setEnabled(running)
        if idle and not self._switching:
            # A/B belongs to the session: the next Start must not go out unmarked unnoticed.
            self.bypass_button.setChecked(False)
        self.record_dir_button.setEnabled(self.runner.recorder is None)

    # ================================================================= live controls
    def _on_message(self, value: int) -> None:
        bits = bits_of(value)
        self.runner.set_message(bits)
        self.bits_view.set_embedded(bits)

    def _on_alpha(self, v: int) -> None:
        self.alpha_label.setText(f"{v}%")
        self.runner.set_alpha(v / 100)

    def _on_bypass(self, on: bool) -> None:
        self.runner.set_bypass(on)
        log.info("bypass %s", "on" if on else "off")
        if self.runner.running:
            self.statusBar().showMessage(
                "BYPASS: the output is unmarked (Ctrl+B or the button again to mark)"
                if on
                else "Marking again"
            )

    def _on_model_activated(self, idx: int) -> None:
        kind, _ = self.model_combo.itemData(idx)
        if kind != "file":
            return
        path, _f = QFileDialog.getOpenFileName(
            self,
            "Generator checkpoint",
            str(Path(self._model_file).parent) if self._model_file else str(Path.home()),
            "Checkpoints (*.pth *.pt *.json *.safetensors);;All files (*)",
        )
        if path:
            self._model_file = path
            self.model_combo.setItemText(2, f"File: {Path(path).name}")
        elif not self._model_file:
            self.model_combo.setCurrentIndex(0)

    def _check_cuda(self) -> None:
        try:
            import torch

            ok = bool(torch.cuda.is_available())
        except Exception:  # no torch / broken driver: CPU only
            log.debug("CUDA check failed", exc_info=True)
            ok = False
        with contextlib.suppress(RuntimeError):  # the window closed meanwhile: nothing to do
            self.cudaChecked.emit(ok)

    def _on_cuda_checked(self, ok: bool) -> None:
        if ok and self.compute_combo.findData("cuda") < 0:
            self.compute_combo.addItem("CUDA (GPU)", "cuda")
        i = self.compute_combo.findData(self._want_device)
        if i >= 0 and not (self.runner.running or self.runner.starting):
            self.compute_combo.setCurrentIndex(i)  # (a start in flight keeps what it shows)

    def _update_latency_hint(self) -> None:
        chunk = int(self.chunk_combo.currentData() or 20)
        snap = self.runner.snapshot()
        if self.runner.running and snap.latency_budget_ms:
            self.latency_hint.setText(f"latency budget {snap.latency_budget_ms:.0f} ms")
        else:
            # One chunk waits in the output ring plus a safety margin, on top of the devices.
            self.latency_hint.setText(f"≈ {chunk + SAFETY_MS:.0f} ms + device buffers")

    # ================================================================= recording
    def _choose_record_dir(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Record to folder", self._record_dir)
        if d:
            self._record_dir = d
            self.record_label.setText(f"records to {d}")

    def record_path(self) -> Path:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        return Path(self._record_dir) / f"audioseal-live-{stamp}.wav"

    def _on_record(self, on: bool) -> None:
        try:
            if on:
                path = self.record_path()
                self.runner.start_recording(path)
                self.record_label.setText(f"recording to {path}")
            else:
                self.runner.stop_recording()  # the label follows runner.recorded
        except AudioSealLiveError as exc:
            self.record_button.blockSignals(True)
            self.record_button.setChecked(False)
            self.record_button.blockSignals(False)
            self.show_error(str(exc))
        self._update_enabled()

    def _show_saved(self, path: str, seconds: float, lost: float) -> None:
        gaps = f" ({lost:.1f} s as silence: the disk was too slow)" if lost else ""
        self.record_label.setText(f"saved {seconds:.1f} s to {path}{gaps}")

    # ================================================================= timers
    def _live_snapshot(self) -> Snapshot:
        snap = self.runner.snapshot()
        if self.runner.running and not snap.running:
            # Before the worker's first publish: the engine runs, the numbers are not in yet.
            snap = dataclasses.replace(snap, running=True)
        cfg = self.runner.config
        if cfg is not None and cfg.monitor is None and snap.detection.source != NO_MONITOR:
            snap = dataclasses.replace(snap, detection=NO_DETECTION)
        return snap

    def _on_plot_tick(self) -> None:
        if not self.runner.running:
            return
        snap = self._live_snapshot()
        self.plot.handle_new_data(snap)
        self.plot.canvas_update()
        self.meter_in.set_level(snap.peak_in, snap.rms_in)
        self.meter_out.set_level(snap.peak_out, snap.rms_out)

    def _on_numbers_tick(self) -> None:
        if not self.runner.running:
            return
        lost = self.runner.check_device()
        if lost:
            log.warning("device lost: %s", lost)
            self.stop()
            if _audio_system_gone():
                # PortAudio is left alone from now on: every Start would fail ("restart the
                # program"), so none is suggested (review)
                self.show_error(
                    "Audio stopped: the audio server went away. "
                    "Close this program and open it again to use audio."
                )
            else:
                self.show_error(f"Audio stopped: {lost}. Check the device, then press Start.")
            return
        self._show_snapshot(self._live_snapshot())

    def _show_snapshot(self, snap: Snapshot) -> None:
        self.bits_view.handle_new_data(snap)
        self.health.handle_new_data(snap)
        self._update_latency_hint()
        if not snap.running:
            self.meter_in.reset()
            self.meter_out.reset()

    # ================================================================= errors / close
    def show_error(self, message: str) -> None:
        """One line, no traceback, non-blocking; a newer message replaces an open one."""
        line = (message or "unknown error").strip().splitlines()[0]
        # the library's errors point at the command line; in the window, the button is here
        line = line.replace(SEE_DEVICES, "(plug it in, then Refresh devices)")
        self.errors.append(line)
        log.warning("shown to user: %s", line)
        self.statusBar().showMessage(line, 10000)
        if self._box is not None:
            self._box.close()
        box = QMessageBox(QMessageBox.Icon.Warning, "audioseal-live", line, parent=self)
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.finished.connect(lambda _r: setattr(self, "_box", None))
        self._box = box
        box.open()

    def closeEvent(self, e: QCloseEvent) -> None:
        log.info("closing window")
        self.plot_timer.stop()
        self.numbers_timer.stop()
        try:
            self.save_settings()
        except Exception:
            log.exception("could not save settings")
        self.hide()  # gone at once, even if a start in flight takes a while to finish
        self.runner.shutdown()
        self._end_busy()
        super().closeEvent(e)


def _audio_system_gone() -> bool:
    """PortAudio was abandoned (a stream would not stop) or its JACK server is gone: no
    device opens again in this process."""
    try:
        audio_io.check_portaudio_usable()
    except AudioSealLiveError:
        return True
    return False


def _ref(x: object) -> DeviceRef:
    return x if isinstance(x, DeviceRef) else DeviceRef()


def _mix(a: QColor, b: QColor, t: float) -> QColor:
    """a*(1-t) + b*t."""
    return QColor(
        round(a.red() * (1 - t) + b.red() * t),
        round(a.green() * (1 - t) + b.green() * t),
        round(a.blue() * (1 - t) + b.blue() * t),
    )


def _card(w: QWidget) -> QFrame:
    f = QFrame()
    f.setObjectName("card")
    lay = QVBoxLayout(f)
    lay.setContentsMargins(16, 10, 16, 12)
    lay.addWidget(w)
    f.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Maximum)
    return f
