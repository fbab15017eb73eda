"""``python -m bench.agent_bench``: the arguments; ``--worker outbox`` (internal) runs the outbox worker and imports
only :mod:`bench.agent_bench.worker`, everything else is :mod:`bench.agent_bench.harness`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.agent_bench import __doc__ as DOC


def parser() -> argparse.ArgumentParser:
    """The command line (the worker's options are hidden)."""
    ap = argparse.ArgumentParser(prog="python -m bench.agent_bench", description=DOC,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--idle-s", type=float, default=20.0, help="idle window (default 20 s)")
    ap.add_argument("--samples", type=int, default=1024)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3, help="runs of (a), (a0) and (b), round-robin; medians")
    ap.add_argument("--messages", type=int, default=10_000, help="messages for (3) and (4)")
    ap.add_argument("--timeout", type=float, default=300.0, help="per-phase timeout (s)")
    ap.add_argument("--workdir", type=Path, help="keep configs, logs, state dirs here (default: a temp dir, removed)")
    ap.add_argument("--json", action="store_true", help="also print one JSON object on the last line")
    ap.add_argument("--worker", choices=["outbox"], help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    ap.add_argument("--scenario", choices=["live", "outage"], help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> int:
    """Run the outbox worker, or the bench."""
    ap = parser()
    args = ap.parse_args(argv)
    if args.worker:   # the device interpreter: only the worker's own imports (its peak RSS is reported)
        from bench.agent_bench.worker import worker_outbox

        return worker_outbox(args)
    from bench.agent_bench.harness import run

    return run(args, ap)


if __name__ == "__main__":
    sys.exit(main())
