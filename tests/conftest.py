"""Shared fixtures. ``jack_server``: a JACK dummy server for end-to-end audio tests."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # test helpers (engine_fakes) importable


@pytest.fixture(scope="session")
def jack_server() -> Iterator[object]:
    from audioseal_live.engine.jackloop import JackUnavailable, jack_dummy_server

    try:
        cm = jack_dummy_server(rate=48000, period=256, realtime=True)
        server = cm.__enter__()
    except JackUnavailable as exc:
        pytest.skip(f"JACK end-to-end tests need jackd2 + libjack + espeak-ng: {exc}")
    try:
        yield server
    finally:
        cm.__exit__(None, None, None)
