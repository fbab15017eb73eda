"""The ``ftedge`` command line: one argparse tree, one error boundary.

Subcommand modules register their parsers without importing heavy
dependencies, so ``ftedge inspect`` on a device never pulls in torch.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from typing import Callable, Sequence

from ftedge import __version__
from ftedge.errors import EXIT_CODES, EXIT_INTERNAL, EXIT_INTERRUPTED, FtedgeError


def _epilog() -> str:
    codes = "\n".join(f"  {code:>3}  {text}" for code, text in sorted(EXIT_CODES.items()))
    return (f"exit codes:\n{codes}\n"
            "Run `ftedge COMMAND --help` for the options and an example of each command.")


def _registrars() -> list[Callable[[argparse._SubParsersAction], None]]:
    from ftedge import demo_launcher as demo
    from ftedge.bundle import cli as bundle_cli
    from ftedge.device_agent import cli as agent_cli
    from ftedge.export import cli as export_cli
    from ftedge.fleet import cli as fleet_cli
    from ftedge.runtime import cli as runtime_cli

    return [export_cli.register, bundle_cli.register, runtime_cli.register, agent_cli.register, fleet_cli.register, demo.register]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ftedge",
        description="Fine-tune pretrained models on edge devices with ONNX Runtime training.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ftedge {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in _registrars():
        register(sub)
    for child in sub.choices.values():  # accept --debug after the subcommand too (where it parses options itself)
        if "-" in child.prefix_chars:
            child.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    return parser


class _StderrHandler(logging.Handler):
    """Writes ``warning: …`` to the *current* sys.stderr (which tests may swap)."""

    def emit(self, record: logging.LogRecord) -> None:
        prefix = record.levelname.lower()
        print(f"{prefix}: {self.format(record)}", file=sys.stderr)


def _configure_logging(debug: bool) -> None:
    log = logging.getLogger("ftedge")
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):
        log.addHandler(_StderrHandler())
    log.setLevel(logging.DEBUG if debug else logging.WARNING)
    log.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (one of ``ftedge.errors.EXIT_CODES``).

    The one error boundary: an ``FtedgeError`` prints ``error: …`` and returns its code; anything else is a
    bug and prints ``error: internal error (…); rerun with --debug``. Tracebacks only with ``--debug``.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:  # argparse: --help (0) or usage error (2)
        return int(exc.code or 0)
    if not getattr(args, "handler", None):
        parser.print_help(sys.stderr)
        return 2
    _configure_logging(bool(args.debug))
    try:
        return int(args.handler(args) or 0)
    except FtedgeError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the boundary: no raw traceback without --debug
        if args.debug:
            traceback.print_exc()
        print(f"error: internal error ({type(exc).__name__}: {exc}); rerun with --debug and report the traceback",
              file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
