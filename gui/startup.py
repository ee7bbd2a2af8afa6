"""Checks made before the window exists, so that a start-up problem is one line, not an abort.

Qt ends the process with ``abort()`` (qFatal) when it cannot open a display, after advice that
rarely fits ("reinstalling the application may fix this problem"); a missing Python package or
system library surfaces as a traceback. Here each is found first and said as a ``StartupError``:
``main`` prints it as one line and exits with status 2. Nothing is refused that could work: a
display that cannot be judged (remote, unusual) is left to Qt, and macOS/Windows are not checked.
"""

from __future__ import annotations

import importlib
import os
import re
import socket
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

PYSIDE_PIP = "pip install 'PySide6-Essentials!=6.12.0'"
PYSIDE_REINSTALL = "pip install --force-reinstall 'PySide6-Essentials!=6.12.0'"
NO_DISPLAY_HINT = (
    "run it in a desktop session (or set QT_QPA_PLATFORM=offscreen to run without one)"
)
X11_SOCKET_DIR = Path("/tmp/.X11-unix")  # where local X servers listen (":N" -> XN)
CONNECT_TIMEOUT_S = 0.5

# X11/Wayland systems, where Qt picks xcb or wayland by itself.
_UNIX_DESKTOPS = ("linux", "freebsd", "openbsd", "netbsd", "dragonfly", "sunos")
_OURS = ("audioseal_live", "audioseal_live_gui", "audioseal_live_assets")

# Python modules the window imports -> the pip project that provides them.
PIP_NAMES = {
    "pyqtgraph": "pyqtgraph",
    "numpy": "numpy",
    "platformdirs": "platformdirs",
    "sounddevice": "sounddevice",
    "soundfile": "soundfile",
    "soxr": "soxr",
    "einops": "einops",
    "safetensors": "safetensors",
    "tqdm": "tqdm",
    "torch": "torch",
}

# Shared libraries Qt loads from the system -> Debian/Ubuntu package.
DEBIAN_PACKAGES = {
    "libEGL.so.1": "libegl1",
    "libGL.so.1": "libgl1",
    "libGLX.so.0": "libglx0",
    "libOpenGL.so.0": "libopengl0",
    "libxkbcommon.so.0": "libxkbcommon0",
    "libxkbcommon-x11.so.0": "libxkbcommon-x11-0",
    "libfontconfig.so.1": "libfontconfig1",
    "libfreetype.so.6": "libfreetype6",
    "libdbus-1.so.3": "libdbus-1-3",
    "libglib-2.0.so.0": "libglib2.0-0",
    "libgthread-2.0.so.0": "libglib2.0-0",
    "libX11.so.6": "libx11-6",
    "libX11-xcb.so.1": "libx11-xcb1",
    "libxcb.so.1": "libxcb1",
    "libxcb-cursor.so.0": "libxcb-cursor0",
    "libxcb-icccm.so.4": "libxcb-icccm4",
    "libxcb-image.so.0": "libxcb-image0",
    "libxcb-keysyms.so.1": "libxcb-keysyms1",
    "libxcb-randr.so.0": "libxcb-randr0",
    "libxcb-render-util.so.0": "libxcb-render-util0",
    "libxcb-shape.so.0": "libxcb-shape0",
    "libxcb-xinerama.so.0": "libxcb-xinerama0",
    "libxcb-xkb.so.1": "libxcb-xkb1",
    "libSM.so.6": "libsm6",
    "libICE.so.6": "libice6",
    "libwayland-client.so.0": "libwayland-client0",
    "libwayland-cursor.so.0": "libwayland-cursor0",
    "libwayland-egl.so.1": "libwayland-egl1",
}
# Libraries that ship inside the PySide6 wheel: a problem there is a broken PySide6.
_PYSIDE_LIBS = ("libQt6", "libpyside6", "libshiboken6", "libicu")
_SHARED_LIB = re.compile(r"(lib[\w.+-]*?\.so(?:\.\d+)*)(?![\w.+-])")


class StartupError(Exception):
    """A start-up problem the user can fix; ``str()`` is the whole one-line message."""


# ----- imports ------------------------------------------------------------------------------
def _missing_module(exc: ImportError) -> str | None:
    """The top-level name of a module that is not there, or None for other import errors."""
    text = str(exc)
    m = re.search(r"No module named '?([\w.]+)'?", text)
    name = m.group(1) if m else (exc.name if isinstance(exc, ModuleNotFoundError) else None)
    return name.split(".")[0] if name else None


def describe_library_error(text: str) -> str | None:
    """One line for a dynamic loader error ("libEGL.so.1: file too short"), or None."""
    found = list(_SHARED_LIB.finditer(text))
    if not found:
        return None
    last = found[-1]  # the innermost: "Cannot load library libqxcb.so: (libxcb-cursor.so.0: ..."
    lib = last.group(1)
    start = max(text.rfind(c, 0, last.start()) for c in " (\n") + 1  # its path, if given
    detail = text[start:].strip().rstrip(")").splitlines()[0]
    if lib.startswith(_PYSIDE_LIBS):
        return f"PySide6 is broken ({detail}): reinstall it: {PYSIDE_REINSTALL}"
    pkg = DEBIAN_PACKAGES.get(lib)
    how = f"(Debian/Ubuntu: apt install {pkg})" if pkg else "with your system's package manager"
    state = "missing" if "cannot open shared object file" in text else f"broken ({detail})"
    return f"Qt needs the system library {lib}, which is {state}: install {lib} {how}"


def describe_import_error(exc: ImportError) -> str | None:
    """One line naming what is missing and how to get it; None for our own bugs (re-raise)."""
    missing = _missing_module(exc)
    if missing in ("PySide6", "shiboken6"):
        return f"PySide6 (Qt for Python) is not installed: {PYSIDE_PIP}"
    if missing in _OURS:
        return None
    if missing:
        pip = PIP_NAMES.get(missing, missing)
        return f"the Python package {pip} is not installed: pip install {pip}"
    lib = describe_library_error(str(exc))
    if lib:
        return lib
    top = (exc.name or "").split(".")[0]
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if top in ("PySide6", "shiboken6"):
        return f"PySide6 is broken ({first}): reinstall it: {PYSIDE_REINSTALL}"
    if top in PIP_NAMES:  # "cannot import name ..." from a too old or half-installed package
        return f"{PIP_NAMES[top]} is broken or too old ({first}): pip install -U {PIP_NAMES[top]}"
    return None


def import_modules(*names: str) -> None:
    """Import ``names`` now; a missing package or system library becomes a StartupError."""
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as e:
            msg = describe_import_error(e)
            if msg is None:
                raise
            raise StartupError(msg) from e


# ----- display ------------------------------------------------------------------------------
# (True: works, False: cannot work, None: cannot tell; why it cannot work)
Verdict = tuple[bool | None, str]


def _connect_unix(address: str) -> bool | None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(CONNECT_TIMEOUT_S)
    try:
        s.connect(address)
        return True
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError:  # permission, timeout: a server may be there
        return None
    finally:
        s.close()


def _connect_tcp(host: str, port: int) -> bool | None:
    try:
        addrs = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return None
    result: bool | None = False
    for family, kind, proto, _name, addr in addrs:
        s = socket.socket(family, kind, proto)
        s.settimeout(CONNECT_TIMEOUT_S)
        try:
            s.connect(addr)
            return True
        except ConnectionRefusedError:
            pass
        except OSError:
            result = None
        finally:
            s.close()
    return result


def judge_x_display(display: str | None, platform: str = sys.platform) -> Verdict:
    """Is an X server at ``display``? Only local displays (":N", "unix:N") are judged."""
    if not display:
        return False, "DISPLAY is not set"
    m = re.fullmatch(r"(unix)?:(\d+)(?:\.\d+)?", display)
    if not m:  # remote "host:N", ssh's "localhost:10.0", socket paths: Qt's to try
        return None, ""
    n = int(m.group(2))
    path = X11_SOCKET_DIR / f"X{n}"
    where = f"no X server at DISPLAY={display}"
    # libxcb's order: the abstract socket (Linux), the socket file, then TCP for ":N". Any
    # that answers will do: a dead file left in /tmp with a live abstract socket works.
    alive = _connect_unix(f"\0{path}") if platform.startswith("linux") else False
    if alive is not True and path.exists():
        alive = _connect_unix(str(path)) or alive
    if alive is False and not m.group(1):
        alive = _connect_tcp("localhost", 6000 + n)
    if alive is False:
        why = "nothing answers on" if path.exists() else "no socket"
        return False, f"{where} ({why} {path})"
    return alive, ""


def judge_wayland_display(env: Mapping[str, str], asked: bool = False) -> Verdict:
    """``asked``: the Wayland plugin was named (QT_QPA_PLATFORM, -platform): it then connects
    to libwayland's default "wayland-0" when WAYLAND_DISPLAY is unset; Qt's own choice of a
    platform does not pick Wayland without it."""
    if env.get("WAYLAND_SOCKET"):  # an inherited connection: cannot be checked from here
        return None, ""
    name = env.get("WAYLAND_DISPLAY") or ("wayland-0" if asked else "")
    if not name:
        return False, "WAYLAND_DISPLAY is not set"
    runtime = env.get("XDG_RUNTIME_DIR")
    if not os.path.isabs(name) and not runtime:
        return None, ""
    path = Path(name) if os.path.isabs(name) else Path(runtime or "") / name
    alive = _connect_unix(str(path))
    if alive is False:
        return False, f"no Wayland compositor at WAYLAND_DISPLAY={name} (no socket {path})"
    return alive, ""


def requested_platform(env: Mapping[str, str], qt_args: Sequence[str]) -> tuple[str, str] | None:
    """(value, where it came from): ``-platform NAME`` wins over QT_QPA_PLATFORM, as in Qt."""
    for i, arg in enumerate(qt_args[:-1]):
        if arg in ("-platform", "--platform"):
            return qt_args[i + 1], f"-platform {qt_args[i + 1]}"
    value = env.get("QT_QPA_PLATFORM", "")
    return (value, f"QT_QPA_PLATFORM={value}") if value.strip() else None


def plugin_dirs(env: Mapping[str, str], qt_args: Sequence[str]) -> list[Path]:
    """The folders Qt searches for platform plugins, in its order."""
    dirs: list[Path] = []
    for i, arg in enumerate(qt_args[:-1]):
        if arg in ("-platformpluginpath", "--platformpluginpath"):
            dirs += [Path(p) for p in qt_args[i + 1].split(os.pathsep) if p]
    dirs += [Path(p) for p in env.get("QT_QPA_PLATFORM_PLUGIN_PATH", "").split(os.pathsep) if p]
    dirs += [Path(p) / "platforms" for p in env.get("QT_PLUGIN_PATH", "").split(os.pathsep) if p]
    from PySide6.QtCore import QLibraryInfo

    dirs.append(Path(QLibraryInfo.path(QLibraryInfo.LibraryPath.PluginsPath)) / "platforms")
    dirs.append(Path(sys.executable).parent / "platforms")  # Qt also looks next to the program
    return dirs


def platform_plugins(dirs: Sequence[Path]) -> dict[str, Path]:
    """Platform plugin name (lower case, as Qt compares them) -> its file; {} if none found."""
    from PySide6.QtCore import QPluginLoader

    found: dict[str, Path] = {}
    for d in dirs:
        try:
            files = sorted(f for f in d.iterdir() if ".so" in f.name or f.suffix == ".dylib")
        except OSError:
            continue
        for f in files:
            meta = QPluginLoader(str(f)).metaData()  # read from the file; nothing is loaded
            if not str(meta.get("IID", "")).startswith("org.qt-project.Qt.QPA.QPlatformIntegr"):
                continue
            for key in meta.get("MetaData", {}).get("Keys", []):
                found.setdefault(str(key).lower(), f)
    return found


def _judge_plugin(
    name: str, env: Mapping[str, str], qt_args: Sequence[str], asked: bool = False
) -> Verdict:
    if name == "xcb":
        display = env.get("DISPLAY")
        for i, arg in enumerate(qt_args[:-1]):
            if arg in ("-display", "--display"):
                display = qt_args[i + 1]
        return judge_x_display(display)
    if name.startswith("wayland"):
        return judge_wayland_display(env, asked)
    return None, ""  # offscreen, eglfs, vnc, ...: need no display server


def _check_loads(name: str, path: Path) -> None:
    """Qt aborts when the one plugin it may use cannot load (libxcb-cursor0 since Qt 6.5)."""
    from PySide6.QtCore import QPluginLoader

    loader = QPluginLoader(str(path))
    if loader.load():  # Qt reuses the loaded library when it starts the platform
        return
    err = loader.errorString()
    lib = describe_library_error(err)
    raise StartupError(f"the Qt platform plugin {name!r} cannot be loaded: {lib or err}")


def check_display(
    env: Mapping[str, str] | None = None,
    qt_args: Sequence[str] = (),
    platform: str = sys.platform,
) -> None:
    """Raise StartupError where QApplication() would abort for want of a display or plugin."""
    if not platform.startswith(_UNIX_DESKTOPS):
        return
    env = os.environ if env is None else env
    request = requested_platform(env, qt_args)
    plugins = platform_plugins(plugin_dirs(env, qt_args))
    if request is None:
        if not (env.get("DISPLAY") or env.get("WAYLAND_DISPLAY") or env.get("WAYLAND_SOCKET")):
            raise StartupError(f"no display: {NO_DISPLAY_HINT}")
        candidates, source = ["xcb", "wayland"], ""
    else:
        value, source = request
        names = [e.split(":")[0].strip().lower() for e in value.split(";") if e.strip()]
        candidates = [n for n in names if n in plugins] if plugins else names
        if not candidates:
            have = ", ".join(sorted(plugins))
            raise StartupError(f"no Qt platform plugin {value!r} ({source}); there are: {have}")
    verdicts = {name: _judge_plugin(name, env, qt_args, request is not None) for name in candidates}
    usable = [name for name, (ok, _) in verdicts.items() if ok is not False]
    if not usable:
        reasons = [why for _, why in verdicts.values()]
        if request is None:  # say what is wrong with the display that is set
            reasons = [r for r in reasons if "is not set" not in r] or reasons
        where = f" for {source}" if source else ""
        raise StartupError(f"no display{where}: {'; '.join(reasons)}: {NO_DISPLAY_HINT}")
    if len(usable) == 1 and usable[0] in plugins:
        _check_loads(usable[0], plugins[usable[0]])
