"""Entry point ``audioseal-live-gui``: logging, the uncaught-exception dialog, theme, window.

Logs go to a rotating file in the user log folder (platformdirs), so a user can send it and
the offscreen smoke test can grep it. An uncaught exception is logged with its traceback and
shown once in a dialog; later ones are only logged, so a failing timer cannot flood dialogs.
A start-up problem (no display, a missing package or library, see ``startup``) is one line on
stderr and exit status 2; a log folder that cannot be made falls back to a temporary one.
"""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import os
import platform
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from audioseal_live_gui.startup import NO_DISPLAY_HINT, StartupError, check_display, import_modules

PROG = "audioseal-live-gui"
LOG_NAME = "audioseal-live-gui.log"
log = logging.getLogger("audioseal_live_gui")


def default_log_dir() -> Path:
    env = os.environ.get("AUDIOSEAL_LIVE_LOG_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_log_dir("audioseal-live", appauthor=False))


def _why(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    return str(e) or type(e).__name__


def _file_handler(d: Path) -> logging.Handler:
    d.mkdir(parents=True, exist_ok=True)
    return logging.handlers.RotatingFileHandler(
        d / LOG_NAME, maxBytes=1_000_000, backupCount=3, encoding="utf-8"
    )


def setup_logging(
    log_dir: Path | None = None, verbose: bool = False, fallback: bool = True
) -> Path | None:
    """Rotating file (1 MB x 3) + stderr. Returns the log file's path, None for stderr only.

    A log folder that cannot be made (no home, read-only home) must not keep the window from
    opening: with ``fallback`` the log goes to a fresh temporary folder (failing that, to stderr
    only) and one line says so; without it (a folder the user named) that is a StartupError.
    """
    handler: logging.Handler | None = None
    path: Path | None = None
    where = f"in {log_dir}" if log_dir else "in the user log folder"
    try:
        d = log_dir or default_log_dir()
        where = f"in {d}"
        handler, path = _file_handler(d), d / LOG_NAME
    except (OSError, ImportError) as e:  # ImportError: platformdirs
        if not fallback:
            raise StartupError(f"cannot write the log {where}: {_why(e)}") from e
        instead = "the terminal only"
        try:  # mkdtemp: private to this user, so no one else can plant the file
            d = Path(tempfile.mkdtemp(prefix="audioseal-live-gui-log-"))
            handler, path = _file_handler(d), d / LOG_NAME
            instead = str(path)
        except OSError:
            pass
        print(
            f"{PROG}: cannot write the log {where} ({_why(e)}); logging to {instead}",
            file=sys.stderr,
        )
    fmt = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s [%(threadName)s] %(message)s")
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for h in list(root.handlers):
        if getattr(h, "_audioseal_gui", False):
            root.removeHandler(h)
    sh = logging.StreamHandler(sys.stderr)
    sh.setLevel(logging.WARNING if handler else logging.NOTSET)  # no file: keep it all here
    for h in (handler, sh):
        if h is None:
            continue
        h.setFormatter(fmt)
        h._audioseal_gui = True  # type: ignore[attr-defined]
        root.addHandler(h)
    return path


class _QtStart:
    """Qt's messages while ``QApplication()`` runs: held back, so a start that Qt gives up on
    (qFatal, which would ``abort()`` with "reinstalling the application may fix this problem")
    becomes one line and exit status 2, with the warning that says why."""

    def __init__(self, log_path: Path | None) -> None:
        self.log_path = log_path
        self.active = False
        self.held: list[tuple[int, str]] = []

    def __enter__(self) -> _QtStart:
        self.active = True
        return self

    def __exit__(self, *exc: object) -> None:
        self.active = False
        held, self.held = self.held, []
        for level, message in held:  # started: they are ordinary log lines after all
            logging.getLogger("qt").log(level, "%s", message)

    def fatal(self, message: str) -> None:
        qlog = logging.getLogger("qt")
        for _level, held in self.held:  # into the log file (stderr gets the one line)
            qlog.info("%s", held)
        qlog.info("%s", message)
        # The first warning is the cause ("could not connect to display :5"); Qt 6.5+ names
        # xcb-cursor whenever xcb fails, even where it is installed: not a cause.
        why = [m for lvl, m in self.held if lvl >= logging.WARNING and "xcb-cursor" not in m]
        reason = why[0] if why else message.strip().split(". ")[0]
        details = f"; details in {self.log_path}" if self.log_path else ""
        print(f"{PROG}: Qt cannot start ({reason}): {NO_DISPLAY_HINT}{details}", file=sys.stderr)
        sys.stderr.flush()
        for h in logging.getLogger().handlers:
            h.flush()
        os._exit(2)  # Qt aborts once this handler returns


def qt_message_to_log(start: _QtStart | None = None) -> None:
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
        if start is not None and start.active:
            if mode == QtMsgType.QtFatalMsg:
                start.fatal(message)
            start.held.append((levels.get(mode, logging.INFO), message))
            return
        qlog.log(levels.get(mode, logging.INFO), "%s", message)

    qInstallMessageHandler(handler)


class ExceptionReporter:
    """sys.excepthook / threading.excepthook: log every one, show a dialog for the first."""

    def __init__(self, log_path: Path | None) -> None:
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
        where = f"in the log: {self.log_path}" if self.log_path else "on the terminal (stderr)"
        box.setInformativeText(f"Details are {where}")
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
    try:
        return run(args, qt_args)
    except StartupError as e:  # the user's to fix: one line, no traceback, no abort
        log.info("not started: %s", e)  # into the log file, where there is one
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace, qt_args: list[str]) -> int:
    log_path = setup_logging(args.log_dir, args.verbose, fallback=args.log_dir is None)
    # Qt's modules first (QtGui loads libEGL & co.), then the display, then the rest: each
    # problem is said before anything that depends on it can fail less clearly.
    import_modules("PySide6.QtCore", "PySide6.QtGui", "PySide6.QtWidgets")
    check_display(os.environ, qt_args)
    import_modules("pyqtgraph", "audioseal_live_gui.main_window")
    from audioseal_live_gui import APP_NAME, ORG_NAME
    from audioseal_live_gui import settings as st
    from audioseal_live_gui.main_window import MainWindow
    from PySide6 import __version__ as pyside_version
    from PySide6.QtCore import QTimer, qVersion
    from PySide6.QtWidgets import QApplication

    log.info(
        "starting audioseal-live-gui (Python %s, PySide6 %s, Qt %s, %s); log %s",
        platform.python_version(),
        pyside_version,
        qVersion(),
        platform.platform(),
        log_path or "on stderr",
    )
    start = _QtStart(log_path)
    qt_message_to_log(start)
    with start:
        app = QApplication.instance() or QApplication([sys.argv[0], *qt_args])
    app.setOrganizationName(ORG_NAME)
    app.setApplicationName(APP_NAME)
    app.setApplicationDisplayName("audioseal-live")
    app.setDesktopFileName("audioseal-live-gui")
    app.setWindowIcon(app_icon())
    apply_theme(app, args.theme)
    reporter = ExceptionReporter(log_path)
    reporter.install()

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
