"""``python -m bench.fleet_ingest``: the arguments; the internal children (``--publisher``, ``--child-collector``,
``--baselines-child``) import only what they run, everything else is :mod:`bench.fleet_ingest.harness`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.fleet_ingest import __doc__ as DOC


def parser() -> argparse.ArgumentParser:
    """The command line (the children's options are hidden)."""
    ap = argparse.ArgumentParser(prog="python -m bench.fleet_ingest", description=DOC.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--publisher", help=argparse.SUPPRESS)
    ap.add_argument("--child-collector", help=argparse.SUPPRESS)
    ap.add_argument("--baselines-child", help=argparse.SUPPRESS)
    ap.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite",
                    help="sqlite (default): the single-collector phases below; postgresql: per --devices count the "
                         "SQLite single collector, then PostgreSQL with each --collectors count; paint; soak")
    ap.add_argument("--collectors", default="1,2,3", metavar="N,…",
                    help="--store postgresql: collector counts, one max phase each (default 1,2,3)")
    ap.add_argument("--devices", default="1000", metavar="N,…",
                    help="simulated devices (default 1000); --store postgresql: a comma list, e.g. 1000,10000")
    ap.add_argument("--total-messages", type=int, default=200000, metavar="N",
                    help="--store postgresql: unique messages per max phase, spread over the devices (default "
                         "200000)")
    ap.add_argument("--pg-durable", action="store_true",
                    help="--store postgresql: fsync/synchronous_commit/full_page_writes on (default: off, as in "
                         "tests/helpers/postgres.py)")
    ap.add_argument("--json-out", type=Path, metavar="FILE", help="also write the JSON object to FILE")
    ap.add_argument("--connections", type=int, default=0, help="TCP connections (default: one per device)")
    ap.add_argument("--messages", type=int, default=200, help="max phase: messages per device (default 200)")
    ap.add_argument("--rate", type=float, default=10000, help="paced phase: offered msg/s (default 10000)")
    ap.add_argument("--seconds", type=float, default=30, help="paced phase: seconds (default 30)")
    ap.add_argument("--soak-seconds", type=float, default=60, help="soak phase seconds (default 60; 0 skips)")
    ap.add_argument("--soak-rate", type=float, default=5000, help="soak offered msg/s (default 5000)")
    ap.add_argument("--dup-every", type=int, default=97, help="send every Nth message twice (default 97; 0: never)")
    ap.add_argument("--before", default="09914b8", metavar="REF",
                    help="git revision whose fleet/ingest.py + store.py run the 'before' phase (default 09914b8)")
    ap.add_argument("--phases", default=None,
                    help="comma-separated subset of baselines,before,max,paced,soak,paint (default: all); "
                         "--store postgresql: of max,paint,soak (default: all three)")
    ap.add_argument("--profile", metavar="PHASE", choices=("max", "paced"),
                    help="run PHASE with a cProfile'd collector and print the profiles of its threads")
    ap.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    return ap


def main(argv: list[str] | None = None) -> int:
    """Run one of the children, or the bench."""
    ap = parser()
    args = ap.parse_args(argv)
    if args.publisher:   # the children import only their own module (the collector child's peak RSS is reported)
        from bench.fleet_ingest.publisher import publisher

        print(json.dumps(publisher(json.loads(args.publisher))), flush=True)
        return 0
    if args.child_collector:
        from bench.fleet_ingest.collector import child_collector

        return child_collector(json.loads(args.child_collector))
    if args.baselines_child:
        from bench.fleet_ingest.baselines import baselines

        print(json.dumps(baselines(json.loads(args.baselines_child))), flush=True)
        return 0
    from bench.fleet_ingest.harness import run

    return run(args, ap)


if __name__ == "__main__":
    sys.exit(main())
