"""Start-up of `audioseal-live-gui` in hostile environments: no display, a bogus platform
plugin, missing packages or system libraries, a log folder that cannot be made. Each is one
clear line on stderr and exit status 2 (never a traceback, never Qt's abort), or, for the
log folder, a fallback that still opens the window."""

from __future__ import annotations

import importlib.util
import io
import logging
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from audioseal_live_gui import startup
from audioseal_live_gui.startup import (
    StartupError,
    check_display,
    describe_import_error,
    describe_library_error,
    judge_wayland_display,
    judge_x_display,
)

PROG = "audioseal-live-gui: "
UNIX_DESKTOP = sys.platform.startswith(("linux", "freebsd", "openbsd", "netbsd", "dragonfly"))
needs_x11_desktop = pytest.mark.skipif(not UNIX_DESKTOP, reason="X11/Wayland systems only")
# Hides a module the way a missing install does; MODS is filled per test.
HOOK = """import sys
MODS = {mods!r}
class _Hide:
    def find_spec(self, name, path=None, target=None):
        for hidden, message in MODS.items():
            if name == hidden or name.startswith(hidden + "."):
                raise ImportError(message)
        return None
sys.meta_path.insert(0, _Hide())
"""


def _gui(
    tmp_path: Path, *args: str, console_script: bool = False, **env: str | None
) -> subprocess.CompletedProcess[str]:
    """Run the entry point as a user would, without a display unless ``env`` gives one."""
    base = dict(os.environ)
    for var in ("DISPLAY", "WAYLAND_DISPLAY", "WAYLAND_SOCKET", "QT_QPA_PLATFORM"):
        base.pop(var, None)
    base.update(
        AUDIOSEAL_LIVE_LOG_DIR=str(tmp_path / "logs"),
        XDG_CONFIG_HOME=str(tmp_path / "cfg"),
        TMPDIR=str(tmp_path),
        OMP_NUM_THREADS="1",
    )
    for k, v in env.items():
        if v is None:
            base.pop(k, None)
        else:
            base[k] = v
    exe = shutil.which("audioseal-live-gui") if console_script else None
    cmd = [exe] if exe else [sys.executable, "-m", "audioseal_live_gui.app"]
    cmd += ["--settings", str(tmp_path / "s.ini"), *args]
    return subprocess.run(cmd, env=base, capture_output=True, text=True, timeout=60)


def _one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith(PROG), proc.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _hide(tmp_path: Path, **mods: str) -> str:
    d = tmp_path / "hook"
    d.mkdir()
    (d / "sitecustomize.py").write_text(HOOK.format(mods=mods))
    return str(d)


def _free_display() -> int:
    """A display number with no X server: no socket, no abstract socket, no TCP listener."""
    for n in range(4242, 4300):
        if judge_x_display(f":{n}")[0] is False:
            return n
    pytest.skip("every display number tried has an X server")


# ----- no display ---------------------------------------------------------------------------
pyside = pytest.mark.skipif(importlib.util.find_spec("PySide6") is None, reason="needs PySide6")


@needs_x11_desktop
@pyside
def test_no_display_is_one_line_not_an_abort(tmp_path: Path) -> None:
    proc = _gui(tmp_path, console_script=True)
    _one_line_error(proc, "no display: run it in a desktop session", "QT_QPA_PLATFORM=offscreen")


@needs_x11_desktop
@pyside
def test_a_local_display_without_x_server_is_refused(tmp_path: Path) -> None:
    n = _free_display()
    line = _one_line_error(_gui(tmp_path, DISPLAY=f":{n}"), f"DISPLAY=:{n}")
    assert f".X11-unix/X{n}" in line


@needs_x11_desktop
@pyside
def test_a_remote_display_is_left_to_qt_and_its_failure_is_one_line(tmp_path: Path) -> None:
    # Not judged beforehand (it could work), so Qt tries, and its qFatal is no abort either.
    n = _free_display()
    proc = _gui(tmp_path, DISPLAY=f"localhost:{n}")
    _one_line_error(proc, "Qt cannot start", f"localhost:{n}", "QT_QPA_PLATFORM=offscreen")
    assert "Reinstalling" not in proc.stderr and "xcb-cursor" not in proc.stderr


@needs_x11_desktop
@pyside
@pytest.mark.parametrize(
    ("env", "args", "source"),
    [
        ({"QT_QPA_PLATFORM": "bogus"}, (), "QT_QPA_PLATFORM=bogus"),
        ({"QT_QPA_PLATFORM": "offscreen"}, ("-platform", "bogus"), "-platform bogus"),
    ],
)
def test_an_unknown_platform_plugin_names_the_ones_there_are(
    tmp_path: Path, env: dict[str, str], args: tuple[str, ...], source: str
) -> None:
    proc = _gui(tmp_path, *args, **env)
    line = _one_line_error(proc, "no Qt platform plugin 'bogus'", source)
    assert "offscreen" in line and "xcb" in line


def test_judge_x_display(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(startup, "X11_SOCKET_DIR", tmp_path)
    assert judge_x_display(None) == (False, "DISPLAY is not set")
    for remote in ("otherhost:0", "localhost:10.0", "[::1]:0", "/private/tmp/xquartz:0"):
        assert judge_x_display(remote)[0] is None  # cannot tell: Qt's to try
    n = _free_display()
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / f"X{n}"))
    try:  # a socket file with nothing behind it (a crashed Xvfb) cannot work...
        ok, why = judge_x_display(f":{n}.0")
        assert ok is False and "nothing answers" in why
        server.listen(1)  # ...one that answers can
        assert judge_x_display(f":{n}")[0] is True
        assert judge_x_display(f"unix:{n}")[0] is True
    finally:
        server.close()
    if sys.platform.startswith("linux"):  # a dead file left in /tmp, the server on its
        abstract = socket.socket(socket.AF_UNIX)  # abstract socket: libxcb connects there
        abstract.bind(f"\0{tmp_path / f'X{n}'}")
        abstract.listen(1)
        try:
            assert judge_x_display(f":{n}")[0] is True
        finally:
            abstract.close()


def test_judge_wayland_display(tmp_path: Path) -> None:
    assert judge_wayland_display({})[0] is False  # Qt's own choice: no Wayland without it
    assert judge_wayland_display({}, asked=True)[0] is None  # "wayland-0", no runtime dir
    ok, why = judge_wayland_display({"XDG_RUNTIME_DIR": str(tmp_path)}, asked=True)
    assert ok is False and "wayland-0" in why  # named, unset: libwayland's default, not there
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "wayland-0"))
    server.listen(1)
    try:
        assert judge_wayland_display({"XDG_RUNTIME_DIR": str(tmp_path)}, asked=True)[0] is True
    finally:
        server.close()
    assert judge_wayland_display({"WAYLAND_SOCKET": "3"})[0] is None
    assert judge_wayland_display({"WAYLAND_DISPLAY": "wayland-0"})[0] is None  # no runtime dir
    env = {"WAYLAND_DISPLAY": "wayland-9", "XDG_RUNTIME_DIR": str(tmp_path)}
    ok, why = judge_wayland_display(env)
    assert ok is False and "wayland-9" in why
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "wayland-9"))
    server.listen(1)
    try:
        assert judge_wayland_display(env)[0] is True
    finally:
        server.close()


@pyside
def test_check_display_refuses_only_what_cannot_work(tmp_path: Path) -> None:
    check_display({}, platform="darwin")  # macOS and Windows: Qt knows best
    check_display({}, platform="win32")
    if not UNIX_DESKTOP:
        return
    check_display({"QT_QPA_PLATFORM": "offscreen"})
    check_display({"QT_QPA_PLATFORM": "OFFSCREEN:fontengine=freetype"})  # Qt ignores case
    check_display({"QT_QPA_PLATFORM": "xcb;offscreen"})  # Qt falls back to offscreen
    check_display({"DISPLAY": "otherhost:0"})
    with pytest.raises(StartupError, match="no display: run it in a desktop session"):
        check_display({})
    with pytest.raises(StartupError, match="for QT_QPA_PLATFORM=xcb: DISPLAY is not set"):
        check_display({"QT_QPA_PLATFORM": "xcb"})
    with pytest.raises(StartupError, match="there are: .*offscreen"):
        check_display({"QT_QPA_PLATFORM": "nope;nada"})


# ----- missing packages and system libraries ------------------------------------------------
@pytest.mark.parametrize(
    ("mods", "needles"),
    [
        ({"PySide6": "No module named PySide6"}, ("PySide6", "pip install 'PySide6-Essentials")),
        ({"pyqtgraph": "No module named 'pyqtgraph'"}, ("pyqtgraph", "pip install pyqtgraph")),
        (
            {"PySide6.QtGui": "libEGL.so.1: cannot open shared object file: No such file"},
            ("libEGL.so.1", "missing", "apt install libegl1"),
        ),
    ],
)
def test_a_missing_module_or_library_is_one_line(
    tmp_path: Path, mods: dict[str, str], needles: tuple[str, ...]
) -> None:
    proc = _gui(tmp_path, QT_QPA_PLATFORM="offscreen", PYTHONPATH=_hide(tmp_path, **mods))
    _one_line_error(proc, *needles)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ELF loader")
@pyside
def test_a_broken_system_library_is_named(tmp_path: Path) -> None:
    libs = tmp_path / "lib"
    libs.mkdir()
    (libs / "libEGL.so.1").write_bytes(b"")  # what the loader finds first: "file too short"
    proc = _gui(tmp_path, QT_QPA_PLATFORM="offscreen", LD_LIBRARY_PATH=str(libs))
    _one_line_error(proc, "libEGL.so.1", "file too short", "apt install libegl1")


def test_describe_import_errors() -> None:
    missing = ModuleNotFoundError("No module named 'shiboken6'", name="shiboken6")
    assert "pip install 'PySide6-Essentials!=6.12.0'" in (describe_import_error(missing) or "")
    too_old = ImportError("cannot import name 'PlotCurveItem' from 'pyqtgraph'", name="pyqtgraph")
    assert "pip install -U pyqtgraph" in (describe_import_error(too_old) or "")
    # Our own modules: a bug or a broken checkout, where the traceback is what helps.
    ours = ModuleNotFoundError("No module named 'audioseal_live_gui.nope'", name="x")
    assert describe_import_error(ours) is None
    assert describe_import_error(ImportError("something else")) is None
    xcb = describe_library_error(
        "Cannot load library /q/platforms/libqxcb.so: "
        "(libxcb-cursor.so.0: cannot open shared object file: No such file or directory)"
    )
    assert xcb and "libxcb-cursor.so.0, which is missing" in xcb and "libxcb-cursor0" in xcb
    qt = describe_library_error("libQt6Gui.so.6: cannot open shared object file")
    assert qt and qt.startswith("PySide6 is broken") and "--force-reinstall" in qt
    other = describe_library_error("/usr/lib/libfoo.so.3: file too short")
    assert other and "package manager" in other and "/usr/lib/libfoo.so.3" in other


# ----- the log folder ------------------------------------------------------------------------
def _bad_log_dirs(tmp_path: Path) -> list[dict[str, str | None]]:
    afile = tmp_path / "afile"
    afile.write_text("")
    cases: list[dict[str, str | None]] = [{"XDG_STATE_HOME": str(afile / "state")}]
    if sys.platform.startswith("linux"):
        cases.append({"HOME": "/proc/nohome", "XDG_STATE_HOME": None})
    return cases


@pyside
def test_a_log_folder_that_cannot_be_made_falls_back_and_the_window_opens(
    tmp_path: Path,
) -> None:
    for i, env in enumerate(_bad_log_dirs(tmp_path)):
        run_dir = tmp_path / f"run{i}"
        run_dir.mkdir()
        proc = _gui(
            run_dir,
            "--smoke-seconds",
            "0.5",
            QT_QPA_PLATFORM="offscreen",
            AUDIOSEAL_LIVE_LOG_DIR=None,
            **env,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr
        lines = [ln for ln in proc.stderr.splitlines() if ln.startswith(PROG)]
        assert len(lines) == 1 and "cannot write the log in" in lines[0], proc.stderr
        fallback = Path(lines[0].rsplit("logging to ", 1)[1])
        assert fallback.is_relative_to(run_dir)  # TMPDIR: a fresh temporary folder
        assert "window shown" in fallback.read_text()


@pyside
def test_a_log_folder_the_user_named_must_work(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    proc = _gui(tmp_path, "--log-dir", str(tmp_path / "afile" / "logs"))
    _one_line_error(proc, "cannot write the log in", "afile")


def test_without_any_log_folder_it_logs_to_stderr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from audioseal_live_gui import app

    def nowhere(*_a: object, **_k: object) -> Path:
        raise PermissionError(13, "Permission denied", "/nowhere")

    (tmp_path / "afile").write_text("")
    monkeypatch.setattr(app, "default_log_dir", lambda: tmp_path / "afile" / "log")
    monkeypatch.setattr(app.tempfile, "mkdtemp", nowhere)
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    root = logging.getLogger()
    level = root.level
    try:
        assert app.setup_logging() is None
        logging.getLogger("audioseal_live_gui").info("still logged")
    finally:
        for h in list(root.handlers):
            if getattr(h, "_audioseal_gui", False):
                root.removeHandler(h)
        root.setLevel(level)
    out = err.getvalue()
    assert f"cannot write the log in {tmp_path / 'afile' / 'log'}" in out
    assert "logging to the terminal only" in out
    assert "still logged" in out  # nothing lost: stderr takes every level then
