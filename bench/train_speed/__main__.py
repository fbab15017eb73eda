"""``python -m bench.train_speed``: the arguments; ``--worker`` (internal) runs one measured worker and imports only
:mod:`bench.train_speed.workers`, everything else is :mod:`bench.train_speed.harness`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.train_speed import __doc__ as DOC


def parser() -> argparse.ArgumentParser:
    """The command line (the workers' options are hidden)."""
    ap = argparse.ArgumentParser(prog="python -m bench.train_speed", description=DOC,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=1024)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--classes", type=int, default=8, help="4-12 (default 8)")
    ap.add_argument("--lr", type=float, default=0.01, help="peak learning rate, all contenders (default 0.01)")
    ap.add_argument("--val-fraction", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3, help="runs per contender, round-robin; medians reported")
    ap.add_argument("--budget-s", type=float, default=300.0,
                    help="stop repeating once another round would end the bench after this many seconds (default 300)")
    ap.add_argument("--full-repeat", type=int, default=1,
                    help="rounds in which the full-mode contenders (b), (b-ort) run (default 1; 0 skips them)")
    ap.add_argument("--workdir", type=Path, help="keep data, bundles and runs here (default: a temp dir, removed)")
    ap.add_argument("--json", action="store_true", help="also print one JSON object on the last line")
    # worker mode (internal)
    ap.add_argument("--worker", choices=["ort-infer", "torch-eager", "torch-cached"], help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--bundle", help=argparse.SUPPRESS)
    ap.add_argument("--weights", help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> int:
    """Run one worker, or the bench."""
    ap = parser()
    args = ap.parse_args(argv)
    if args.worker:   # a measured process: only the worker's own imports (its peak RSS is reported)
        from bench.train_speed.workers import run_worker

        return run_worker(args)
    from bench.train_speed.harness import run

    return run(args, ap)


if __name__ == "__main__":
    sys.exit(main())
