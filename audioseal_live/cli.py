"""The `audioseal-live` command line: one subcommand per job, each defined in its own module.

Each command module exposes ``register(subparsers)``; the module is imported only when listed
here so that `audioseal-live --help` stays fast (no torch import).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys

from audioseal_live.errors import AudioSealLiveError

# Each module's register(subparsers) adds its subcommands.
COMMAND_MODULES: list[str] = [
    "audioseal_live.bench",
    "audioseal_live.training.commands",
    "audioseal_live.engine.commands",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="audioseal-live",
        description="Real-time neural audio watermarking with a live detector.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):
        # file names that are not UTF-8 print as the bytes they are (a print of one raised)
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="surrogateescape")  # type: ignore[union-attr]
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except AudioSealLiveError as exc:
        with contextlib.suppress(OSError):  # stderr gone (a closed terminal): the status says it
            print(f"audioseal-live: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away (`| head`): as Unix tools, no traceback
        _stdout_to_devnull()
        return 2
    except OSError as exc:  # e.g. stdout unwritable (a full disk): one line, details with -v
        if args.verbose:
            logging.exception("failed")
        _stdout_to_devnull()
        with contextlib.suppress(OSError):
            print(f"audioseal-live: error: {exc} (-v says where)", file=sys.stderr)
        return 2


def _stdout_to_devnull() -> None:
    """What is still buffered for stdout would fail again at exit ('Exception ignored')."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        sys.stdout.flush()
    with contextlib.suppress(OSError, ValueError, AttributeError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


if __name__ == "__main__":
    sys.exit(main())
