"""audioseal-live desktop window (PySide6): a live watermarking desk.

Installed as ``audioseal_live_gui``; the entry point is ``audioseal-live-gui``
(``audioseal_live_gui.app:main``). Importing this package imports neither Qt nor torch.
"""

from __future__ import annotations

APP_NAME = "audioseal-live"
ORG_NAME = "audioseal-live"
