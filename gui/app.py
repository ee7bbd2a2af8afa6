"""Entry point ``audioseal-live-gui``: logging, the uncaught-exception dialog, theme, window.

Logs go to a rotating file in the user log folder (platformdirs), so a user can send it and
the offscreen smoke test can grep it. An uncaught exception is logged with its traceback and
shown once in a dialog; later ones are only logged, so a failing timer cannot flood dialogs.
"""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import os
import platform
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

LOG_NAME = "audioseal-live-gui.log"
log = logging.getLogger("audioseal_live_gui")


def default_log_dir() -> Path:
    env = os.environ.get("AUDIOSEAL_LIVE_LOG_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_log_dir("audioseal-live", appauthor=False))


def setup_logging(log_dir: Path | None = None, verbose: bool = False) -> Path:
    """Rotating file (1 MB x 3) + stderr. Returns the log file's path."""
    d = log_dir or default_log_dir()
    d.mkdir(parents=True, exist_ok=True)
    path = d / LOG_NAME
    fmt = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s [%(threadName)s] %(message)s")
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for h in list(root.handlers):
        if getattr(h, "_audioseal_gui", False):
            root.removeHandler(h)
    fh = logging.handlers.RotatingFileHandler(
        path, maxBytes=1_000_000, backupCount=3, encoding="utf-8"
    )
    sh = logging.StreamHandler(sys.stderr)
    sh.setLevel(logging.WARNING)
    for h in (fh, sh):
        h.setFormatter(fmt)
        h._audioseal_gui = True  # type: ignore[attr-defined]
        root.addHandler(h)
    return path


def qt_message_to_log() -> None:
    """Qt's own warnings (fonts, platform plugin) into our log instead of a bare stderr."""
    from PySide6.QtCore import QtMsgType, qInstallMessageHandler

    qlog = logging.getLogger("qt")
    levels = {
        QtMsgType.QtDebugMsg: logging.DEBUG,
        QtMsgType.QtInfoMsg: logging.INFO,
        QtMsgType.QtWarningMsg: logging.WARNING,
        QtMsgType.QtCriticalMsg: logging.ERROR,
        QtMsgType.QtFatalMsg: logging.CRITICAL,
    }

    def handler(mode: Any, _ctx: Any, message: str) -> None:
        if "propagateSizeHints" in message:  # offscreen/xcb plugin chatter, not a problem
            return
        qlog.log(levels.get(mode, logging.INFO), "%s", message)

    qInstallMessageHandler(handler)


class ExceptionReporter:
    """sys.excepthook / threading.excepthook: log every one, show a dialog for the first."""

    def __init__(self, log_path: Path) -> None:
        from PySide6.QtCore import QObject, Signal

        class _Bridge(QObject):
            show = Signal(str)

        self.log_path = log_path
        self.count = 0
        self.shown = False
        self._bridge = _Bridge()  # created on the GUI thread: queued delivery from others
        self._bridge.show.connect(self._show)

    def install(self) -> None:
        sys.excepthook = self.hook
        threading.excepthook = self.thread_hook

    def hook(self, et: type[BaseException], ev: BaseException, tb: TracebackType | None) -> None:
        from audioseal_live.errors import AudioSealLiveError

        if issubclass(et, KeyboardInterrupt):
            from PySide6.QtWidgets import QApplication

            QApplication.quit()
            return
        self.count += 1
        if isinstance(ev, AudioSealLiveError):  # the user's to fix: one line, no traceback
            log.warning("error: %s", ev)
            text = str(ev).splitlines()[0] if str(ev) else et.__name__
        else:
            log.critical("uncaught exception", exc_info=(et, ev, tb))
            text = f"Unexpected error: {et.__name__}: {str(ev).splitlines()[0] if str(ev) else ''}"
        self._bridge.show.emit(text)

    def thread_hook(self, args: threading.ExceptHookArgs) -> None:
        if args.exc_value is None:
            return
        self.hook(args.exc_type, args.exc_value, args.exc_traceback)

    def _show(self, text: str) -> None:
        if self.shown:  # one dialog per session; the rest are in the log
            return
        self.shown = True
        from PySide6.QtWidgets import QApplication, QMessageBox

        box = QMessageBox(
            QMessageBox.Icon.Critical,
            "audioseal-live",
            text,
            parent=QApplication.activeWindow(),
        )
        box.setInformativeText(f"Details are in the log: {self.log_path}")
        self.box = box  # keep it alive: without a parent, Python owns the dialog
        box.open()  # non-blocking: the audio views keep updating


def apply_theme(app: Any, theme: str) -> None:
    """'system' keeps the platform palette (dark or light); 'dark'/'light' force one."""
    from PySide6.QtGui import QColor, QPalette

    if theme == "system":
        return
    app.setStyle("Fusion")
    if theme == "light":
        app.setPalette(app.style().standardPalette())
        return
    p = QPalette()
    c = QPalette.ColorRole
    for role, col in (
        (c.Window, "#161b22"),
        (c.WindowText, "#e6edf3"),
        (c.Base, "#0d1117"),
        (c.AlternateBase, "#161b22"),
        (c.ToolTipBase, "#21262d"),
        (c.ToolTipText, "#e6edf3"),
        (c.Text, "#e6edf3"),
        (c.Button, "#21262d"),
        (c.ButtonText, "#e6edf3"),
        (c.BrightText, "#ffffff"),
        (c.Highlight, "#1f6feb"),
        (c.HighlightedText, "#ffffff"),
        (c.Link, "#58a6ff"),
        (c.PlaceholderText, "#8b949e"),
        (c.Mid, "#30363d"),
        (c.Dark, "#010409"),
        (c.Light, "#30363d"),
    ):
        p.setColor(role, QColor(col))
    for role in (c.Text, c.ButtonText, c.WindowText):
        p.setColor(QPalette.ColorGroup.Disabled, role, QColor("#6e7681"))
    app.setPalette(p)


def app_icon() -> Any:
    from audioseal_live_gui.main_window import assets_dir
    from PySide6.QtGui import QIcon

    icon = QIcon()
    for name in ("icon.svg", "icon.png"):
        f = assets_dir() / name
        if f.is_file():
            icon.addFile(str(f))
    return icon


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(
        prog="audioseal-live-gui",
        description="Live audio watermarking desk: mark a microphone, route it to any output, "
        "and watch the detector find the mark.",
    )
    p.add_argument("--theme", choices=["system", "dark", "light"], default="system")
    p.add_argument("--settings", help="use this INI file instead of the user's settings")
    p.add_argument("--reset-settings", action="store_true", help="forget saved settings")
    p.add_argument("--log-dir", type=Path, help="log folder (default: the user log folder)")
    p.add_argument("--start", action="store_true", help="press Start once the window is up")
    p.add_argument(
        "--smoke-seconds",
        type=float,
        default=float(os.environ.get("AUDIOSEAL_LIVE_SMOKE_SECONDS", 0) or 0),
        help="close the window after this many seconds (smoke tests)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p.parse_known_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args, qt_args = parse_args(sys.argv[1:] if argv is None else argv)
    log_path = setup_logging(args.log_dir, args.verbose)
    from audioseal_live_gui import APP_NAME, ORG_NAME
    from audioseal_live_gui import settings as st
    from PySide6 import __version__ as pyside_version
    from PySide6.QtCore import QTimer, qVersion
    from PySide6.QtWidgets import QApplication

    log.info(
        "starting audioseal-live-gui (Python %s, PySide6 %s, Qt %s, %s); log %s",
        platform.python_version(),
        pyside_version,
        qVersion(),
        platform.platform(),
        log_path,
    )
    qt_message_to_log()
    app = QApplication.instance() or QApplication([sys.argv[0], *qt_args])
    app.setOrganizationName(ORG_NAME)
    app.setApplicationName(APP_NAME)
    app.setApplicationDisplayName("audioseal-live")
    app.setDesktopFileName("audioseal-live-gui")
    app.setWindowIcon(app_icon())
    apply_theme(app, args.theme)
    reporter = ExceptionReporter(log_path)
    reporter.install()

    from audioseal_live_gui.main_window import MainWindow

    qs = st.qsettings(args.settings)
    if args.reset_settings:
        qs.clear()
    win = MainWindow(qs)
    win.show()
    log.info("window shown (platform %s, theme %s)", app.platformName(), args.theme)
    if args.start:
        QTimer.singleShot(0, win.start)
    if args.smoke_seconds > 0:
        QTimer.singleShot(int(args.smoke_seconds * 1000), win.close)
    rc = int(app.exec())
    if reporter.count:
        log.error("exiting after %d uncaught exception(s)", reporter.count)
        rc = rc or 1
    log.info("clean exit (code %d)", rc)
    logging.shutdown()
    return rc


if __name__ == "__main__":
    sys.exit(main())
