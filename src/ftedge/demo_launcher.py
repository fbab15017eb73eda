"""``ftedge demo``: finds the demo in the examples folder and registers it (the core package never needs it).

The demo and its dataset maker live in ``examples/demo/`` (they read ``examples/kws``). An editable install
or a checkout finds that folder beside the package; an installed wheel finds it through ``FTEDGE_EXAMPLES``
or ``./examples``; otherwise ``ftedge demo`` says what it needs.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from pathlib import Path

from ftedge.errors import FtedgeError

DEMO = Path("demo") / "demo.py"


def examples_dir() -> Path | None:
    """The first examples folder holding the demo: $FTEDGE_EXAMPLES, the checkout beside the package, ./examples."""
    candidates = [os.environ.get("FTEDGE_EXAMPLES"), Path(__file__).resolve().parents[2] / "examples",
                  Path.cwd() / "examples"]
    for c in candidates:
        if c and (Path(c) / DEMO).is_file():
            return Path(c)
    return None


def register(sub: argparse._SubParsersAction) -> None:
    where = examples_dir()
    if where is not None:
        spec = importlib.util.spec_from_file_location("ftedge_examples_demo", where / DEMO)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.register(sub)
        return
    p = sub.add_parser("demo", help="the end-to-end demo (needs the repository's examples folder)",
                       description="The demo lives in the repository's examples/demo folder, which is not here.")
    p.set_defaults(handler=_missing)


def _missing(_args: argparse.Namespace) -> int:
    raise FtedgeError("`ftedge demo` needs the examples folder of the ftedge repository (examples/demo, "
                      "examples/kws): run it from a checkout, or set FTEDGE_EXAMPLES=/path/to/ftedge/examples")
