"""`audioseal-live bench --live`: the JACK dummy-server loop (see ``jackloop``)."""

from __future__ import annotations

from audioseal_live.engine.jackloop import live_benchmark

__all__ = ["live_benchmark"]
