"""Screenshot of the running window with real audio flowing, for the README.

Starts a JACK dummy server, opens the window on its "system" device, feeds synthetic speech
(espeak-ng) into the engine's input ports from a separate JACK client process, lets the plots
fill, and saves the window. Run under Xvfb:

    xvfb-run -a -s "-screen 0 1600x1000x24" python -m audioseal_live_gui.screenshot \
        assets/screenshot.png
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from audioseal_live_gui.main_window import MainWindow, assets_dir


def wait(app: object, seconds: float, until: object = None) -> bool:
    """Run the event loop for up to ``seconds`` (or until ``until()`` is true)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()  # type: ignore[attr-defined]
        if until is not None and until():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return until is None


def live_window(
    app: object,
    settings_path: str,
    message: int = 0x1A2B,
    rate: int = 48000,
    chunk_ms: int = 20,
) -> MainWindow:
    """A window set up for the JACK "system" device at ``rate`` (not started yet)."""
    from audioseal_live_gui import settings as st

    win = MainWindow(st.qsettings(settings_path))
    win.pick_device("input", "system")
    win.pick_device("output", "system")
    win.rate_combo.setCurrentIndex(win.rate_combo.findData(rate))
    win.chunk_combo.setCurrentIndex(win.chunk_combo.findData(chunk_ms))
    win.message_editor.set_value(message)
    return win


def steady(win: MainWindow) -> bool:
    hist = win.runner.snapshot().detection.history
    return len(hist) >= 50 and min(hist[-50:]) > 0.5 and win.bits_view.state != "not detected"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("output", nargs="?", default=str(assets_dir() / "screenshot.png"))
    p.add_argument("--seconds", type=float, default=9.0, help="audio before the shot")
    p.add_argument("--theme", default="dark", choices=["system", "dark", "light"])
    p.add_argument(
        "--chunk-ms", type=int, default=20, help="model chunk (20-200 ms; the app's default)"
    )
    args = p.parse_args(argv)

    from audioseal_live_gui.app import app_icon, apply_theme, setup_logging
    from PySide6.QtWidgets import QApplication

    from audioseal_live.engine.demo import speech
    from audioseal_live.engine.jackloop import FeederProcess, jack_dummy_server

    setup_logging(Path(tempfile.gettempdir()) / "audioseal-live-screenshot")
    with jack_dummy_server(rate=48000, period=256, realtime=True) as server:
        app = QApplication.instance() or QApplication([sys.argv[0]])
        app.setWindowIcon(app_icon())
        apply_theme(app, args.theme)
        with tempfile.TemporaryDirectory() as d:
            win = live_window(app, str(Path(d) / "settings.ini"), chunk_ms=args.chunk_ms)
            win.apply_style()
            win.resize(1360, 860)
            win.show()
            win.start()
            if not wait(app, 120, lambda: win.runner.running):
                print("engine did not start:", win.errors, file=sys.stderr)
                return 1
            feeder = FeederProcess(server, speech(args.seconds + 40, 48000), args.seconds + 36)
            try:
                wait(app, args.seconds)
                # Shoot once the view is steady: detection held over the last 5 s.
                if not wait(app, 45, lambda: steady(win)):
                    print("detection did not hold steady; shooting anyway", file=sys.stderr)
                win.grab().save(args.output)
            finally:
                win.close()
                if feeder.proc.poll() is None:
                    feeder.proc.kill()
                    feeder.proc.wait()
    print(f"saved {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
