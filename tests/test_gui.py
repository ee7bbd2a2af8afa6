"""The Qt window (pytest-qt, offscreen): widgets, settings, smoke launch, and the live window on
the JACK dummy server with real speech fed into its input."""

from __future__ import annotations

import dataclasses
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before any QApplication exists

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

pytest.importorskip("pytestqt")
pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")

from audioseal_live_gui import settings as st  # noqa: E402
from audioseal_live_gui.bits_view import (  # noqa: E402
    DETECTING,
    MATCH,
    MISMATCH,
    NOT_DETECTED,
    STOPPED,
    MatchState,
)
from audioseal_live_gui.main_window import MainWindow  # noqa: E402
from audioseal_live_gui.message_editor import MessageEditor  # noqa: E402
from audioseal_live_gui.settings import DeviceRef  # noqa: E402
from PySide6.QtCore import Qt, QTimer  # noqa: E402
from PySide6.QtWidgets import QApplication, QMessageBox  # noqa: E402

MESSAGE = 0x1A2B
THRESHOLD = 0.5


# ----- widgets and settings (no audio) -------------------------------------------------------
def test_message_editor_rejects_bad_hex(qtbot: Any) -> None:
    ed = MessageEditor(MESSAGE)
    qtbot.addWidget(ed)
    with qtbot.assertNotEmitted(ed.messageChanged):
        assert not ed.apply_hex("0xZZ")
        assert "not hex" in ed.hex_error()
        assert not ed.apply_hex("12345")  # 0x12345 needs 17 bits
        assert "does not fit" in ed.hex_error()
        assert not ed.apply_hex("")
        for signed in ("-1", "+1a", "-0"):  # int(.., 16) takes a sign; a message has none
            assert not ed.apply_hex(signed)
            assert "not hex" in ed.hex_error()
    assert ed.value() == MESSAGE  # the last good message stays in force
    assert ed.error_label.isVisibleTo(ed)
    # Typing as a user would: nothing half-typed goes live; the 4th digit applies.
    ed.hex_edit.clear()
    seen: list[int] = []
    ed.messageChanged.connect(seen.append)
    qtbot.keyClicks(ed.hex_edit, "beef")
    assert seen == [0xBEEF] and ed.value() == 0xBEEF and not ed.hex_error()
    qtbot.keyClicks(ed.hex_edit, "5")  # 0xBEEF5: flagged, 0xBEEF stays
    assert seen == [0xBEEF] and "does not fit" in ed.hex_error()
    ed.hex_edit.clear()
    qtbot.keyClicks(ed.hex_edit, "1a")
    assert seen == [0xBEEF]
    qtbot.keyClick(ed.hex_edit, Qt.Key.Key_Return)  # Enter applies a shorter one
    assert seen == [0xBEEF, 0x1A] and ed.hex_edit.text() == "001A"
    ed.show()
    ed.activateWindow()
    ed.hex_edit.setFocus()
    qtbot.waitUntil(ed.hex_edit.hasFocus, timeout=3000)
    qtbot.keyClicks(ed.hex_edit, "ab")  # "001Aab": six digits, nothing applied while typing
    assert len(seen) == 2
    qtbot.mouseClick(ed.random_button, Qt.MouseButton.LeftButton)  # replaces, applies nothing
    assert len(seen) == 3 and seen[-1] == ed.value() and ed.hex_edit.text() == f"{ed.value():04X}"
    assert ed.apply_hex("0xbeef") and ed.value() == 0xBEEF
    assert ed.dec_spin.value() == 0xBEEF
    assert "".join(b.text() for b in ed.bit_buttons) == "1011111011101111"
    ed.show()
    ed.activateWindow()
    ed.hex_edit.setFocus()
    qtbot.waitUntil(ed.hex_edit.hasFocus, timeout=3000)  # bit buttons do not take the focus
    qtbot.mouseClick(ed.bit_buttons[0], Qt.MouseButton.LeftButton)  # MSB off
    assert ed.value() == 0x3EEF and ed.hex_edit.text() == "3EEF"
    ed.dec_spin.setValue(6699)
    assert ed.value() == 0x1A2B and ed.bits()[:4] == (0, 0, 0, 1)


def test_match_state_hysteresis() -> None:
    m = MatchState(on=0.6, off=0.4, hold_s=0.75)
    assert m.update(0.0, None, running=False, now=0.0) == STOPPED
    assert m.update(0.0, None, True, 0.0) == NOT_DETECTED  # leaving STOPPED is immediate
    assert m.update(0.55, True, True, 0.1) == NOT_DETECTED  # inside the band: no change
    assert m.update(0.9, True, True, 0.2) == NOT_DETECTED  # must hold 0.75 s first
    assert m.update(0.9, True, True, 1.0) == MATCH
    # A single mismatching vote or a dip into the band does not flicker the label.
    assert m.update(0.45, False, True, 1.1) == MATCH
    assert m.update(0.9, True, True, 1.2) == MATCH
    assert m.update(0.3, None, True, 1.3) == MATCH
    assert m.update(0.3, None, True, 2.1) == NOT_DETECTED
    assert m.update(0.9, False, True, 2.2) == NOT_DETECTED
    assert m.update(0.9, False, True, 3.0) == MISMATCH
    assert m.update(0.9, None, True, 4.0) == MISMATCH
    assert m.update(0.9, None, True, 4.8) == DETECTING
    assert m.update(0.9, None, False, 4.1) == STOPPED


def test_bits_view_says_updating_while_the_bits_catch_up_with_a_new_message(qtbot: Any) -> None:
    """A review saw MATCH beside 9 red bits, then MISMATCH beside equal rows, for ~2.7 s after
    a message change, and the embedded row flipped back to the old message for a tick."""
    from audioseal_live_gui.bits_view import UPDATING, BitsView

    from audioseal_live.engine.metrics import Detection, Snapshot

    old, new = (1, 0) * 8, (0, 1) * 8
    view = BitsView()
    qtbot.addWidget(view)
    view.set_embedded(old)

    def show(bits: tuple[int, ...], engine_message: tuple[int, ...], now: float) -> str:
        det = Detection(0.95, 0.95, bits, (1.0,) * 16, bits == engine_message, chunks=9)
        view.handle_new_data(Snapshot(running=True, message=engine_message, detection=det), now)
        return view.shown_state

    assert [show(old, old, t) for t in (0.0, 1.0)][-1] == MATCH
    view.set_embedded(new)  # the user's change
    assert show(old, old, 1.2) == UPDATING and view.embedded == new  # a stale snapshot
    assert show(old, new, 2.5) == UPDATING  # the vote still holds the old bits
    assert show(new, new, 3.0) == MATCH  # caught up: the state is the detector's again
    view.set_embedded(old)
    assert show(new, old, 5.0) == UPDATING
    assert show(new, old, 9.5) == MISMATCH  # not caught up after UPDATE_S: it is a mismatch


def test_bits_view_says_where_the_polarity_came_from(qtbot: Any) -> None:
    """A polarity read off the message (a sign code alone cannot tell) is said to be that."""
    from audioseal_live_gui.bits_view import BitsView

    from audioseal_live.engine.metrics import Detection, Snapshot

    view = BitsView()
    qtbot.addWidget(view)
    bits = (1, 0) * 8
    for guessed in (False, True):
        det = Detection(0.95, 0.95, bits, (1.0,) * 16, True, True, chunks=5)
        det = dataclasses.replace(det, polarity_from_message=guessed)
        snap = Snapshot(running=True, message=bits, detection=det)
        for now in (0.0, 1.0):
            view.handle_new_data(snap, now=now)
        assert view.state == MATCH
        text = view.detail_label.text()
        assert "polarity inverted" in text and ("inferred from the message" in text) == guessed
        assert ("complement message" in view.detail_label.toolTip()) == guessed


def test_bits_view_says_a_pause_holds_the_reading(qtbot: Any) -> None:
    from audioseal_live_gui.bits_view import BitsView

    from audioseal_live.engine.metrics import Detection, Snapshot

    view = BitsView()
    qtbot.addWidget(view)
    bits = (1, 0) * 8
    for quiet in (False, True):
        det = Detection(0.95, 0.95, bits, (1.0,) * 16, True, chunks=5, quiet=quiet)
        view.handle_new_data(Snapshot(running=True, message=bits, detection=det), now=1.0)
        assert ("pause" in view.detail_label.text()) == quiet


def test_bits_view_holds_no_reading_it_never_had(qtbot: Any) -> None:
    """Right after a (re)start, a pause said "last reading held" beside 0.00 / NOT DETECTED
    though nothing had been read yet (review)."""
    from audioseal_live_gui.bits_view import BitsView

    from audioseal_live.engine.metrics import Detection, Snapshot

    view = BitsView()
    qtbot.addWidget(view)
    bits = (1, 0) * 8

    def show(prob: float, quiet: bool, running: bool = True) -> str:
        det = Detection(prob, prob, bits, (1.0,) * 16, True, chunks=5, quiet=quiet)
        view.handle_new_data(Snapshot(running=running, message=bits, detection=det), now=1.0)
        return view.detail_label.text()

    assert "pause" not in show(0.02, quiet=False)
    assert "pause" not in show(0.0, quiet=True)  # no marked chunk yet: nothing to hold
    assert "pause" not in show(0.95, quiet=False)
    assert "pause" in show(0.95, quiet=True)  # a reading, held
    show(0.0, quiet=False, running=False)  # stopped: the next session starts afresh
    assert "pause" not in show(0.0, quiet=True)


def test_a_long_detail_line_does_not_widen_the_window(qtbot: Any, tmp_path: Path) -> None:
    """The notes under the state (bypass, polarity, pause, monitor) came and went and the
    window widened itself mid-session: 905 px asked, 1198-1571 px got (review)."""
    from audioseal_live.engine.metrics import Detection, Snapshot

    w = MainWindow(st.qsettings(str(tmp_path / "settings.ini")))
    qtbot.addWidget(w)
    w.show()
    w.resize(905, 700)
    qtbot.waitExposed(w)
    QApplication.processEvents()
    width = w.width()
    assert width == 905
    bits = (1, 0) * 8
    det = Detection(
        0.93,
        0.93,
        bits,
        (0.9,) * 16,
        True,
        inverted=True,
        polarity_from_message=True,
        source="CABLE Output (VB-Audio Virtual Cable) with a long device name",
        chunks=500,
        quiet=True,
    )
    snap = Snapshot(running=True, chunk_ms=20, message=bits, bypass=True, detection=det)
    for t in range(4):
        w.bits_view.handle_new_data(snap, now=100.0 + t)
    for _ in range(5):
        QApplication.processEvents()
    text = w.bits_view.detail_label.text()
    assert "BYPASS" in text and "polarity" in text and "pause" in text and "monitor" in text
    assert w.width() == width and w.minimumSizeHint().width() <= width
    assert w.bits_view.detail_label.wordWrap()
    w.close()


def test_views_draw_snapshots(qtbot: Any) -> None:
    """Widgets take engine snapshots (Friture's handle_new_data) and show what they hold."""
    from audioseal_live_gui.health_strip import HealthStrip
    from audioseal_live_gui.level_meter import LevelMeter
    from audioseal_live_gui.probability_plot import ProbabilityPlot

    from audioseal_live.engine.metrics import Detection, Snapshot

    plot, health, meter = ProbabilityPlot(), HealthStrip(), LevelMeter("In")
    for w in (plot, health, meter):
        qtbot.addWidget(w)
    hist: list[float] = []
    for k in range(40):  # 4 s of audio; the worker falls behind between 2.0 and 2.5 s
        hist.append(min(0.95, 0.05 * k))
        t = 0.1 * (k + 1)
        snap = Snapshot(
            running=True,
            time_s=t,
            sample_rate=48000,
            chunk_ms=20,
            unmarked_s=0.0 if t <= 2.0 else min(0.5, t - 2.0),
            unmarked_spans=int(t > 2.0),
            overloaded=2.0 < t <= 2.5,
            detection=Detection(prob_smoothed=hist[-1], history=tuple(hist), chunks=k + 1),
        )
        plot.handle_new_data(snap)
        plot.canvas_update()
    assert plot.latest() == pytest.approx(0.95)
    assert plot.unmarked_spans_visible() == 1  # one shaded span where the mark was missing
    health.handle_new_data(dataclasses.replace(snap, xruns=3, rtf=0.9, overloaded=True))
    assert health.text("xruns") == "3" and "color" in health.values["xruns"].styleSheet()
    assert health.text("unmarked") == "1 (0.5 s)" and "FALLING BEHIND" in health.tag.text()
    health.handle_new_data(dataclasses.replace(snap, bypass=True, device="cpu <&>"))
    assert (
        "BYPASS: output unmarked" in health.tag.text() and "cpu &lt;&amp;&gt;" in health.tag.text()
    )
    meter.set_level(0.5, 0.1, now=0.0)
    meter.set_level(0.01, 0.005, now=0.5)  # peak hold keeps the loud moment for a while
    assert meter.hold_db == pytest.approx(-6.02, abs=0.01) and meter.peak_db == -40.0
    meter.set_level(0.01, 0.005, now=3.0)
    assert meter.hold_db < -6.1  # ...then falls


def test_device_boxes_group_by_host_api_and_show_bare_names(qtbot: Any) -> None:
    from audioseal_live_gui.device_picker import DevicePicker
    from PySide6.QtWidgets import QStyleOptionViewItem

    from audioseal_live.engine.audio_io import DeviceInfo

    mic = DeviceInfo(
        3, "Blue Yeti Stereo Microphone USB Audio (hw:2,0)", "ALSA", 2, 0, 48000.0, 0.01, 0.01
    )
    p = DevicePicker("input")
    qtbot.addWidget(p)
    p.set_devices([mic], keep=DeviceRef(mic.name, "ALSA"))
    assert p.currentText() == mic.name  # the closed box: the whole name, no indent
    shown = []
    for row in range(p.model().rowCount()):
        opt = QStyleOptionViewItem()
        p.itemDelegate().initStyleOption(opt, p.model().index(row, 0))
        shown.append(opt.text)
    assert shown == ["System default", "ALSA", f"    {mic.name}"]  # the list: under its API


def test_settings_round_trip(qtbot: Any, tmp_path: Path) -> None:
    ini = str(tmp_path / "settings.ini")
    w = MainWindow(st.qsettings(ini))
    qtbot.addWidget(w)
    # Devices are saved by name: one that is not plugged in survives, marked "not found".
    w.select_device("input", DeviceRef("USB Mic Pro", "ALSA"))
    w.select_device("output", DeviceRef("CABLE Input", "Windows WASAPI"))
    w.select_device("monitor", st.MONITOR_OFF)
    w.rate_combo.setCurrentIndex(w.rate_combo.findData(44100))
    w.chunk_combo.setCurrentIndex(w.chunk_combo.findData(60))
    w.message_editor.set_value(0xBEEF)
    w.alpha_slider.setValue(65)
    w._record_dir = str(tmp_path)
    w.save_settings()
    saved = w.current_settings()
    w.close()

    w2 = MainWindow(st.qsettings(ini))
    qtbot.addWidget(w2)
    got = w2.current_settings()
    for field in ("input", "output", "monitor", "sample_rate", "chunk_ms", "message", "alpha"):
        assert getattr(got, field) == getattr(saved, field), field
    assert got.input == DeviceRef("USB Mic Pro", "ALSA")
    assert got.monitor == st.MONITOR_OFF and got.record_dir == str(tmp_path)
    assert w2.input_picker.currentText().startswith("(not found) USB Mic Pro")
    # the closed box cuts long names: its tooltip has the whole one, under its own
    assert "microphone to watermark" in w2.input_picker.toolTip()
    assert "USB Mic Pro [ALSA]: saved device, not found" in w2.input_picker.toolTip()
    assert w2.message_editor.value() == 0xBEEF and w2.alpha_label.text() == "65%"
    cfg = w2.engine_config()
    assert cfg.input == "USB Mic Pro" and cfg.monitor is None and cfg.sample_rate == 44100
    assert cfg.chunk_ms == 60 and abs(cfg.alpha - 0.65) < 1e-9
    w2.close()


def test_keyboard_shortcuts_press_the_buttons(qtbot: Any, tmp_path: Path) -> None:
    """Ctrl+B and Ctrl+R do nothing while stopped (bypass and recording belong to a running
    stream; the live tests below use them); Ctrl+Return or keypad Enter presses Start/Stop
    (counted here: starting needs audio devices, see the fake-engine tests below); the
    tooltips name the keys."""
    w = MainWindow(st.qsettings(str(tmp_path / "settings.ini")))
    qtbot.addWidget(w)
    w.show()
    w.activateWindow()
    qtbot.waitUntil(w.isActiveWindow, timeout=3000)  # window shortcuts need the active window
    clicks: list[bool] = []
    w.start_button.clicked.disconnect()  # starting needs audio devices: count the press
    w.start_button.clicked.connect(lambda: clicks.append(True))
    for key in (Qt.Key.Key_B, Qt.Key.Key_R):  # A/B and recording belong to a running session
        qtbot.keyClick(w, key, Qt.KeyboardModifier.ControlModifier)
    assert not w.bypass_button.isChecked() and not w.bypass_button.isEnabled()
    assert not w.record_button.isChecked() and not w.record_button.isEnabled()
    qtbot.keyClick(w, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)
    qtbot.keyClick(w, Qt.Key.Key_Enter, Qt.KeyboardModifier.ControlModifier)  # keypad Enter
    assert clicks == [True, True]
    assert "Ctrl+B" in w.bypass_button.toolTip() and "Ctrl+R" in w.record_button.toolTip()
    w.close()


def test_uncaught_exceptions_show_one_dialog(qtbot: Any, tmp_path: Path) -> None:
    from audioseal_live_gui.app import ExceptionReporter

    rep = ExceptionReporter(tmp_path / "gui.log")
    for i in range(5):
        try:
            raise RuntimeError(f"boom {i}")
        except RuntimeError as exc:
            rep.hook(type(exc), exc, exc.__traceback__)
    qtbot.waitUntil(lambda: rep.shown, timeout=2000)
    QApplication.processEvents()
    boxes = [w for w in QApplication.topLevelWidgets() if isinstance(w, QMessageBox)]
    visible = [b for b in boxes if b.isVisible() and "boom" in b.text()]
    assert rep.count == 5 and len(visible) == 1, [b.text() for b in boxes]
    assert visible[0].text() == "Unexpected error: RuntimeError: boom 0"
    visible[0].close()


def test_refcount_guard_gives_back_what_pyside_takes(qtbot: Any) -> None:
    """PySide6 6.12.0 on Python < 3.12 drops a reference to True per Signal.emit(): without
    the guard a window aborts within minutes ("bool_dealloc"). See gui/compat.py."""
    from audioseal_live_gui import compat
    from PySide6.QtCore import QObject, Signal

    if not compat.install_refcount_guard():
        pytest.skip("this PySide6 / Python keeps its reference counts: no guard needed")

    class Emitter(QObject):
        sig = Signal()

    e = Emitter()
    floor = compat._guard.floor[id(True)]
    for _ in range(3):
        before = sys.getrefcount(True)
        for _ in range(5000):
            e.sig.emit()
        assert before - sys.getrefcount(True) >= 4000  # the loss is real (other threads add refs)
        qtbot.wait(300)
        assert sys.getrefcount(True) >= floor - 100  # ...and the guard gave it back


def test_smoke_launch_logs_clean_start(tmp_path: Path) -> None:
    """`audioseal-live-gui` as a process, offscreen, quits by itself; its log says so."""
    exe = shutil.which("audioseal-live-gui")
    cmd = [exe] if exe else [sys.executable, "-m", "audioseal_live_gui.app"]
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", XDG_CONFIG_HOME=str(tmp_path / "cfg"))
    logs = tmp_path / "logs"
    args = ["--smoke-seconds", "3", "--log-dir", str(logs), "--settings", str(tmp_path / "s.ini")]
    proc = subprocess.run(cmd + args, env=env, capture_output=True, text=True, timeout=120)
    log = (logs / "audioseal-live-gui.log").read_text()
    assert proc.returncode == 0, proc.stderr[-2000:] + log[-2000:]
    assert "starting audioseal-live-gui" in log
    assert "window shown (platform offscreen" in log
    assert "closing window" in log and "clean exit (code 0)" in log
    assert "Traceback" not in log and "Traceback" not in proc.stderr
    assert " ERROR " not in log and " CRITICAL " not in log


# ----- the window on a real engine with a fake audio backend and fake models ---------------
@pytest.fixture
def fake_audio(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The window's runner builds real Engines, on the fake backend (no devices) with fake
    models that take a moment to load; an output named "Bad" does not exist."""
    import audioseal_live_gui.engine_runner as er
    from engine_fakes import FakeDetector, FakeMarker, fake_factory

    from audioseal_live.engine.engine import Engine
    from audioseal_live.errors import DeviceError

    def models_for(self: Any, cfg: Any) -> Any:
        time.sleep(0.3)
        return FakeMarker(), FakeDetector([0] * 16)

    class FakeEngine(Engine):
        def __init__(self, cfg: Any, marker: Any = None, detector: Any = None) -> None:
            if cfg.output == "Bad":
                raise DeviceError("no output device called 'Bad'")
            super().__init__(cfg, marker, detector, backend_factory=fake_factory())

    monkeypatch.setattr(er.EngineRunner, "_models_for", models_for)
    monkeypatch.setattr(er, "Engine", FakeEngine)
    return FakeEngine


def _fake_window(qtbot: Any, tmp_path: Path, **saved: object) -> MainWindow:
    qs = st.qsettings(str(tmp_path / "settings.ini"))
    for key, value in saved.items():
        qs.setValue(key, value)
    w = MainWindow(qs)
    w._record_dir = str(tmp_path)
    qtbot.addWidget(w)
    return w


def _edit_controls(w: MainWindow) -> None:
    """What a user changes mid-session: the message and the strength."""
    w.message_editor.set_value(0xBEEF)
    w.alpha_slider.setValue(40)


def _controls(w: MainWindow) -> tuple[int, float]:
    c = w.runner.engine._controls  # type: ignore[union-attr]
    return int("".join(map(str, c.message)), 2), c.alpha


def test_edits_made_while_starting_reach_the_engine(
    fake_audio: Any, qtbot: Any, tmp_path: Path
) -> None:
    w = _fake_window(qtbot, tmp_path)
    w.message_editor.set_value(0x1111)
    w.start()
    assert w.runner.starting and w.message_editor.isEnabled() and w.alpha_slider.isEnabled()
    _edit_controls(w)
    qtbot.waitUntil(lambda: w.runner.running, timeout=10000)
    assert _controls(w) == (0xBEEF, 0.4)
    w.stop()


def test_a_failed_switch_rolls_back_with_the_message_and_strength_of_now(
    fake_audio: Any, qtbot: Any, tmp_path: Path
) -> None:
    w = _fake_window(qtbot, tmp_path)
    w.message_editor.set_value(0x1111)
    w.start()
    qtbot.waitUntil(lambda: w.runner.running, timeout=10000)
    _edit_controls(w)
    w.select_device("output", DeviceRef("Bad"))
    qtbot.waitUntil(lambda: bool(w.errors) and w.runner.running, timeout=10000)
    assert "Could not switch output" in w.errors[0]
    assert _controls(w) == (0xBEEF, 0.4)  # not the message and strength of the first start
    w.stop()


def test_stop_while_recording_says_where_the_file_went(
    fake_audio: Any, qtbot: Any, tmp_path: Path
) -> None:
    w = _fake_window(qtbot, tmp_path)
    w.start()
    qtbot.waitUntil(lambda: w.runner.running, timeout=10000)
    w.record_button.click()
    assert w.record_button.isChecked() and w.record_label.text().startswith("recording to")
    w.toggle_start()  # stop: the recording is finished with the engine
    saved = list(tmp_path.glob("audioseal-live-*.wav"))
    assert len(saved) == 1 and not w.record_button.isChecked()
    assert w.record_label.text().startswith("saved ") and str(saved[0]) in w.record_label.text()


def test_bypass_is_shown_and_ends_with_the_session(
    fake_audio: Any, qtbot: Any, tmp_path: Path
) -> None:
    """A review found Bypass left on after Stop: the next session went out unmarked."""
    w = _fake_window(qtbot, tmp_path)
    assert not w.bypass_button.isEnabled()  # nothing to bypass while stopped
    w.start()
    qtbot.waitUntil(lambda: w.runner.running, timeout=10000)
    w.bypass_button.click()
    assert w.runner.engine._controls.bypass  # type: ignore[union-attr]
    assert w.statusBar().currentMessage().startswith("BYPASS")
    w.record_button.click()
    w.select_device("output", DeviceRef("Other Speakers"))  # a live switch: A/B goes on
    qtbot.waitUntil(lambda: w.runner.running, timeout=10000)
    # ...and a recording ends there (one device's rate and clock per file): said, not silent
    assert "the recording ended at the switch" in w.statusBar().currentMessage()
    assert not w.record_button.isChecked() and list(tmp_path.glob("audioseal-live-*.wav"))
    assert w.bypass_button.isChecked() and w.runner.engine._controls.bypass  # type: ignore[union-attr]
    w.toggle_start()  # stop
    assert not w.bypass_button.isChecked() and not w.bypass_button.isEnabled()
    w.start()
    qtbot.waitUntil(lambda: w.runner.running, timeout=10000)
    assert not w.runner.engine._controls.bypass  # type: ignore[union-attr]
    w.stop()


def test_detector_off_says_off_not_undetected(fake_audio: Any, qtbot: Any, tmp_path: Path) -> None:
    w = _fake_window(qtbot, tmp_path, **{"devices/monitor": "off"})
    w.start()
    qtbot.waitUntil(lambda: w.runner.running, timeout=10000)
    w._on_numbers_tick()
    assert w.bits_view.state_label.text() == "DETECTOR OFF"
    w.stop()


def test_a_saved_strength_of_zero_shows_zero(qtbot: Any, tmp_path: Path) -> None:
    w = _fake_window(qtbot, tmp_path, **{"watermark/alpha": 0.0})
    assert w.alpha_slider.value() == 0 and w.alpha_label.text() == "0%"
    assert w.engine_config().alpha == 0.0


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf", "1e999", "NaN", "abc", "1, 2"])
def test_a_settings_file_with_numbers_that_are_not_opens_on_defaults(
    qtbot: Any, tmp_path: Path, bad: str
) -> None:
    """`alpha=nan` in the settings file stopped the window from opening ("cannot convert
    float NaN to integer"); `alpha=inf` opened at 200 %. Each numeric setting that is no
    usable number falls back to its default (review)."""
    ini = tmp_path / "settings.ini"
    ini.write_text(
        f"[audio]\nchunk_ms={bad}\nsample_rate={bad}\n"
        f"[watermark]\nalpha={bad}\nmessage={bad}\n"
        f"[window]\ngeometry=@ByteArray({bad})\n"  # bytes, but no geometry
    )
    w = MainWindow(st.qsettings(str(ini)))
    qtbot.addWidget(w)
    d = st.GuiSettings()
    assert w.alpha_slider.value() == 100 and w.alpha_label.text() == "100%"
    got = w.current_settings()
    assert (got.alpha, got.chunk_ms, got.sample_rate, got.message) == (
        d.alpha,
        d.chunk_ms,
        d.sample_rate,
        d.message,
    )
    assert w.width() == 1360  # no geometry to restore: the default size
    w.close()
    # a native store hands back numbers, not strings: the same holds for them
    for alpha in (float("nan"), float("inf"), float("-inf")):
        assert st.sanitize(dataclasses.replace(d, alpha=alpha)).alpha == d.alpha
    assert st.sanitize(dataclasses.replace(d, alpha=7.0)).alpha == 2.0  # a number: clamped
    assert st.sanitize(dataclasses.replace(d, message=1 << 40)).message == d.message


LOST = "the audio device stopped (unplugged, or taken by another program)"


@pytest.mark.parametrize("audio", ["alive", "server gone", "abandoned"])
def test_a_lost_audio_server_says_to_reopen_the_program(
    fake_audio: Any, qtbot: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, audio: str
) -> None:
    """After the JACK server died mid-run (or a stream would not stop: PortAudio abandoned)
    the window said "Check the device, then press Start", and every Start then failed with
    "restart the program" (review)."""
    from audioseal_live.engine import audio_io

    w = _fake_window(qtbot, tmp_path)
    w.start()
    qtbot.waitUntil(lambda: w.runner.running, timeout=10000)
    monkeypatch.setattr(w.runner, "check_device", lambda now=None: LOST)
    monkeypatch.setattr(audio_io, "jack_server_gone", lambda: audio == "server gone")
    monkeypatch.setattr(audio_io, "_abandoned", audio == "abandoned")
    monkeypatch.setattr(audio_io.atexit, "unregister", lambda fn: None)  # this process's exit
    w._on_numbers_tick()
    assert not w.runner.running and w.start_button.text() == "Start"
    msg = w.errors[-1]
    assert msg.startswith("Audio stopped:")
    if audio == "alive":
        assert LOST in msg and msg.endswith("then press Start.")
    else:
        assert "audio server went away" in msg and "open it again" in msg
        assert "Start" not in msg


def test_a_capture_monitor_is_named_not_numbered(
    fake_audio: Any, qtbot: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a capture device as the Detector source the line under the state said
    "monitor: 1" (the PortAudio index the engine gets) instead of the device's name."""
    import audioseal_live.engine.engine as engine_mod
    from audioseal_live.engine.audio_io import DeviceInfo
    from audioseal_live.engine.metrics import Detection, Snapshot
    from audioseal_live.engine.native_io import make_callback_io

    class FakeCapture:  # the second input stream, without a device
        def __init__(self, device: int, rate: int, capacity: int) -> None:
            _io, self.ring, _ = make_callback_io(capacity)

        def start(self) -> None:
            pass

        def close(self) -> None:
            pass

    name = "Monitor of Built-in Audio Analog Stereo"
    loop = DeviceInfo(1, name, "JACK Audio Connection Kit", 2, 0, 48000.0, 0.01, 0.01)
    monkeypatch.setattr(engine_mod, "resolve_device", lambda spec, kind: int(spec))
    monkeypatch.setattr(engine_mod, "CaptureStream", FakeCapture)
    w = _fake_window(qtbot, tmp_path)
    w._devices = [loop]
    w.monitor_picker.set_devices(w._devices)
    w.pick_device("monitor", name)
    assert w.engine_config().monitor == 1  # the engine gets the index...
    w.start()
    qtbot.waitUntil(lambda: w.runner.running, timeout=10000)
    det = Detection(0.1, 0.1, source="1", chunks=3)  # ...and its source says so
    w._show_snapshot(Snapshot(running=True, detection=det))
    assert w.bits_view.detail_label.text() == f"monitor: {name}"  # the picker's name
    w.stop()


def test_a_late_cuda_check_does_not_change_a_start_in_flight(
    fake_audio: Any, qtbot: Any, tmp_path: Path
) -> None:
    w = _fake_window(qtbot, tmp_path, **{"model/device": "cuda"})
    w.start()  # CUDA not confirmed yet: the engine starts on what the box shows (CPU)
    w._on_cuda_checked(True)  # what the check emits on a machine with a GPU
    qtbot.waitUntil(lambda: w.runner.running, timeout=10000)
    assert w.compute_combo.currentData() == w.runner.config.device  # type: ignore[union-attr]
    w.stop()


# ----- the live window on the JACK dummy server ----------------------------------------------
def _wait(cond: Any, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        QApplication.processEvents()
        if cond():
            return True
        time.sleep(0.01)
    return False


@pytest.fixture(scope="module")
def model_decodes_bits() -> str:
    """'' if the shipped model decodes the message offline, else what it measured."""
    from model_quality import bits_shortfall

    return bits_shortfall(tuple((MESSAGE >> (15 - i)) & 1 for i in range(16)))


def _feed(server: Any, seconds: float) -> Any:
    from audioseal_live.engine.demo import speech
    from audioseal_live.engine.jackloop import FeederProcess

    return FeederProcess(server, speech(seconds + 2, server.rate), seconds)


def _kill(feeder: Any) -> None:
    if feeder is not None and feeder.proc.poll() is None:
        feeder.proc.kill()
        feeder.proc.wait()


@pytest.fixture(scope="module")
def live(jack_server: Any, qapp: Any, tmp_path_factory: Any) -> Iterator[SimpleNamespace]:
    """The window running on the JACK "system" device, speech fed into its input."""
    from audioseal_live_gui.screenshot import live_window

    d = tmp_path_factory.mktemp("gui-live")
    # 60 ms chunks: on a loaded 2-core machine 20 ms chunks underrun now and then, and the
    # engine's drift corrector then shifts the output by a few samples, which the interim
    # model's detector does not survive (see the note on the interim model).
    win = live_window(
        qapp, str(d / "settings.ini"), message=MESSAGE, rate=jack_server.rate, chunk_ms=60
    )
    win._record_dir = str(d)
    win.show()
    win.start()
    assert win.runner.starting and win.busy.isVisibleTo(win)  # loading off the GUI thread
    assert win.start_button.text() == "Starting…" and not win.start_button.isEnabled()
    if not _wait(lambda: win.runner.running or win.errors, 120):
        pytest.fail("engine did not start within 120 s")
    assert win.runner.running, win.errors
    ns = SimpleNamespace(win=win, server=jack_server, dir=d, feeder=_feed(jack_server, 60))
    ns.trace = []  # one status line a second, for failure messages
    tracer = QTimer()
    tracer.timeout.connect(
        lambda: ns.trace.append(
            f"{win.runner.snapshot().status_line()} | plot {_latest(win):.2f} "
            f"state {win.bits_view.state}"
        )
    )
    tracer.start(1000)
    try:
        yield ns
    finally:
        tracer.stop()
        win.close()
        _kill(ns.feeder)


def _until(live: SimpleNamespace, cond: Any, timeout: float, what: str) -> None:
    """Wait for ``cond`` while the window runs; on timeout, fail with what the engine saw."""
    if _wait(cond, timeout):
        return
    lines = "\n".join(live.trace[-12:])
    pytest.fail(f"{what}: not within {timeout:.0f} s; engine once a second:\n{lines}")


def _latest(win: MainWindow) -> float:
    v = win.plot.latest()
    return -1.0 if v is None else v


@pytest.mark.slow
def test_live_probability_rises_and_state_shows(live: SimpleNamespace, qtbot: Any) -> None:
    win = live.win
    assert win.start_button.text() == "Stop" and not win.busy.isVisibleTo(win)
    assert not win.errors
    assert not win.refresh_button.isEnabled() and not win.chunk_combo.isEnabled()
    _until(live, lambda: _latest(win) > THRESHOLD, 20, "plot above threshold")
    lo, hi = win.plot.plot.getPlotItem().viewRange()[1]
    assert lo <= win.plot.thr_line.value() == THRESHOLD <= hi  # the threshold line, in view
    # Hysteresis: the big state follows once detection has held for a moment.
    detected = (MATCH, MISMATCH, DETECTING)
    _until(live, lambda: win.bits_view.state in detected, 10, "state shows detection")
    live.seen = (win.bits_view.state, win.bits_view.decoded_hex.text())
    assert float(win.bits_view.prob_label.text()) > 0.4  # the hysteresis band's bottom
    assert win.bits_view.embedded_hex.text() == f"0x{MESSAGE:04X}"
    assert live.seen[1].startswith("0x")  # decoded bits are shown beside the embedded ones
    snap = win.runner.snapshot()
    assert snap.running and snap.message == win.message_editor.bits() and not snap.bypass
    assert win.health.text("latency").endswith(" ms") and win.health.text("rtf") != "–"
    # Audio flows (the last chunk may fall in a pause of the speech: wait for a word).
    _until(live, lambda: win.meter_in.peak_db > -40 < win.meter_out.peak_db, 10, "levels")


@pytest.mark.slow
def test_live_match_shows_the_message(live: SimpleNamespace, model_decodes_bits: str) -> None:
    win = live.win
    seen = getattr(live, "seen", None)
    assert seen is not None, "needs test_live_probability_rises_and_state_shows"
    if model_decodes_bits:
        # Detection works (asserted above); matching bits need the trained model.
        assert seen[0] in (MATCH, MISMATCH)
        pytest.xfail(f"{model_decodes_bits}: the live bits cannot match yet")
    _until(live, lambda: win.bits_view.state == MATCH, 15, "state MATCH")
    assert win.bits_view.decoded_hex.text() == f"0x{MESSAGE:04X}"
    assert win.bits_view.state_label.text() == "MATCH"


@pytest.mark.slow
def test_live_bypass_makes_detection_fall(live: SimpleNamespace, qtbot: Any) -> None:
    win = live.win
    _until(live, lambda: _latest(win) > THRESHOLD, 20, "marked: plot above threshold")
    qtbot.mouseClick(win.bypass_button, Qt.MouseButton.LeftButton)
    assert win.bypass_button.isChecked()
    _until(live, lambda: _latest(win) < THRESHOLD, 10, "_latest(win) < THRESHOLD")
    _until(
        live, lambda: win.bits_view.state == NOT_DETECTED, 5, "win.bits_view.state == NOT_DETECTED"
    )
    snap = win.runner.snapshot()
    assert snap.bypass and "BYPASS" in win.health.tag.text()
    assert "BYPASS" in win.bits_view.detail_label.text()
    qtbot.mouseClick(win.bypass_button, Qt.MouseButton.LeftButton)  # back to marked
    assert not win.runner.snapshot().bypass or _wait(lambda: not win.runner.snapshot().bypass, 2)
    _until(live, lambda: "BYPASS" not in win.health.tag.text(), 2, "BYPASS tag cleared")
    # (Detection coming back is the engine's business and is usually seen within ~2 s; on a
    # loaded machine the interim model can lose it for longer, so it is not asserted here.)


@pytest.mark.slow
def test_live_failed_device_switch_rolls_back(live: SimpleNamespace, qtbot: Any) -> None:
    win = live.win
    before = win.output_picker.current()
    n_errors = len(win.errors)
    win.select_device("output", DeviceRef("No Such Output 42"))
    _until(live, lambda: len(win.errors) > n_errors, 60, "len(win.errors) > n_errors")
    msg = win.errors[-1]
    assert msg.startswith("Could not switch output to No Such Output 42") and "Back on" in msg
    assert "\n" not in msg and "Traceback" not in msg
    assert win.output_picker.current() == before  # rolled back in the picker...
    _until(live, lambda: win.runner.running, 60, "win.runner.running")  # ...and running on it again
    assert win.runner.config is not None and win.runner.config.output == (
        win.output_picker.engine_spec()
    )


@pytest.mark.slow
def test_live_stop_stops_streams(live: SimpleNamespace, qtbot: Any) -> None:
    win = live.win
    _until(live, lambda: win.runner.running, 60, "win.runner.running")
    eng = win.runner.engine
    backend = eng.backend
    assert backend.active
    qtbot.mouseClick(win.start_button, Qt.MouseButton.LeftButton)
    assert not win.runner.running and win.start_button.text() == "Start"
    assert not backend.active and backend._streams == []  # stopped and closed
    assert eng.worker is not None and not eng.worker._running
    assert win.bits_view.state == STOPPED and win.refresh_button.isEnabled()
    assert not win.record_button.isEnabled()


@pytest.mark.slow
def test_live_device_lost_stops_with_message_and_restarts(
    live: SimpleNamespace, qtbot: Any
) -> None:
    win = live.win
    if not win.runner.running:
        qtbot.mouseClick(win.start_button, Qt.MouseButton.LeftButton)
    _until(live, lambda: win.runner.running, 60, "win.runner.running")
    n_errors = len(win.errors)
    win.runner.engine.backend.stop()  # what PortAudio does when the device vanishes
    _until(live, lambda: not win.runner.running, 3, "not win.runner.running")
    assert len(win.errors) == n_errors + 1 and win.errors[-1].startswith("Audio stopped:")
    assert win.start_button.text() == "Start" and win.start_button.isEnabled()
    qtbot.mouseClick(win.start_button, Qt.MouseButton.LeftButton)
    _until(live, lambda: win.runner.running, 60, "win.runner.running")


@pytest.mark.slow
def test_live_close_while_recording_leaves_a_valid_file(live: SimpleNamespace, qtbot: Any) -> None:
    import soundfile as sf

    win = live.win
    _until(live, lambda: win.runner.running, 60, "win.runner.running")
    _kill(live.feeder)
    live.feeder = _feed(live.server, 20)  # the restarted engine has new ports: feed them
    qtbot.mouseClick(win.record_button, Qt.MouseButton.LeftButton)
    assert win.record_button.isChecked() and win.runner.recorder is not None
    path = win.runner.recorder.path
    qtbot.wait(2000)
    win.close()
    assert not win.runner.running and win.runner.recorder is None
    info = sf.info(str(path))
    assert info.samplerate == live.server.rate and info.channels == 1
    assert info.duration >= 1.0
    x, _ = sf.read(str(path), dtype="float32")
    assert np.all(np.isfinite(x)) and np.max(np.abs(x)) <= 1.0
    assert not list(Path(path).parent.glob("*.part"))  # the temp file was renamed into place
