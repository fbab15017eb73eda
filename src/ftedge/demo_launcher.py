"""``ftedge demo``: finds the demo in the examples folder and runs it (the core package never needs it).

The demo and its dataset maker live in ``examples/demo/`` (they read ``examples/kws``). A checkout or an
editable install finds that folder beside the package; an installed wheel finds it only through
``FTEDGE_EXAMPLES``. Never from the working directory: a command run in a folder that happens to hold an
``examples/demo/demo.py`` must not execute it. And only ``ftedge demo`` loads it -- building the parser for
every other command (``ftedge agent run`` included) runs no code from the examples folder.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
from pathlib import Path

from ftedge.errors import FtedgeError

DEMO = Path("demo") / "demo.py"


def examples_dir() -> Path | None:
    """The examples folder holding the demo: $FTEDGE_EXAMPLES, else the checkout beside the package."""
    candidates = [os.environ.get("FTEDGE_EXAMPLES"), Path(__file__).resolve().parents[2] / "examples"]
    for c in candidates:
        if c and (Path(c) / DEMO).is_file():
            return Path(c)
    return None


def register(sub: argparse._SubParsersAction) -> None:
    """A ``demo`` entry that loads the demo's own parser only when ``ftedge demo`` runs."""
    # prefix_chars="+": every word after `demo` (its --help and options included) is passed on to the demo's parser
    p = sub.add_parser("demo", add_help=False, prefix_chars="+",
                       help="a fleet of three boxes personalizes the shipped keyword model to three accents, end to "
                            "end (needs the repository's examples folder; `ftedge demo --help` for its options)")
    p.add_argument("demo_args", nargs="*")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    where = examples_dir()
    if where is None:
        raise FtedgeError("`ftedge demo` needs the examples folder of the ftedge repository (examples/demo, "
                          "examples/kws): run it from a checkout, or set FTEDGE_EXAMPLES=/path/to/ftedge/examples")
    spec = importlib.util.spec_from_file_location("ftedge_examples_demo", where / DEMO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sub = argparse.ArgumentParser(prog="ftedge").add_subparsers()
    module.register(sub)
    demo = sub.choices["demo"]
    demo.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    try:
        real = demo.parse_args(args.demo_args)
    except SystemExit as exc:  # --help (0) or a usage error (2), as for every other command
        return int(exc.code or 0)
    if getattr(real, "debug", False):  # `ftedge demo --debug`: the CLI boundary reads it from the outer namespace
        args.debug = True
        logging.getLogger("ftedge").setLevel(logging.DEBUG)
    return real.handler(real)
