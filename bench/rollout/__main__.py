"""``python -m bench.rollout``: the arguments; the internal child (``--host``, the collector side) imports only what
it runs, everything else is :mod:`bench.rollout.harness`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.rollout import __doc__ as DOC


def parser() -> argparse.ArgumentParser:
    """The command line (the child's option is hidden)."""
    ap = argparse.ArgumentParser(prog="python -m bench.rollout", description=DOC.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", help=argparse.SUPPRESS)
    ap.add_argument("--devices", type=int, default=1000, help="simulated boxes (default 1000)")
    ap.add_argument("--fail-rate", default="0.5%", help="share of simulated boxes whose deploy fails (default 0.5%%)")
    ap.add_argument("--offline-rate", default="2%", help="share of simulated boxes that never answer (default 2%%)")
    ap.add_argument("--regress-rate", default="5%", help="share whose training regresses (default 5%%)")
    ap.add_argument("--halt-regress-rate", default="40%",
                    help="the breach scenario's regress rate: a wave halts and rolls back (default 40%%)")
    ap.add_argument("--max-failures", type=float, default=0.05, help="the rollout's --max-failures (default 0.05)")
    ap.add_argument("--min-devices", type=int, default=20,
                    help="the rollout's --min-devices (default 20: with 1, the first failed deploy among a wave's "
                         "first answers halts it)")
    ap.add_argument("--max-regressions", type=float, default=0.2, help="the rollout's --max-regressions (default 0.2)")
    ap.add_argument("--wave-timeout", type=float, default=5.0,
                    help="seconds per wave; the offline boxes close each wave at this timeout (default 5)")
    ap.add_argument("--fast-tick", type=float, default=0.1,
                    help="the second run's driver tick in seconds, beside the default 1 s (default 0.1; 0 skips)")
    ap.add_argument("--tick-sizes", default="1000,10000,50000,100000", metavar="N,…",
                    help="wave sizes for the driver's tick cost (default 1000,10000,50000,100000)")
    ap.add_argument("--agents", type=int, default=10, help="real `ftedge agent run` processes (default 10; 0 skips)")
    ap.add_argument("--epochs", type=int, default=5, help="the real agents' training epochs (default 5)")
    ap.add_argument("--phases", default="sim,baseline,halt,ticks,agents",
                    help="comma-separated subset of sim,baseline,halt,ticks,agents (default all)")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run (~30 s): 200 boxes, wave timeout 3 s, ticks at 1000,5000, no agents")
    ap.add_argument("--seed", type=int, default=0, help="which boxes fail, are offline, regress (default 0)")
    ap.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    ap.add_argument("--json-out", type=Path, metavar="FILE", help="also write the JSON object to FILE")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    return ap


def main(argv: list[str] | None = None) -> int:
    """Run the child, or the bench."""
    ap = parser()
    args = ap.parse_args(argv)
    if args.host:
        from bench.rollout.host import host

        return host(json.loads(Path(args.host).read_text()))
    from bench.rollout.harness import run

    return run(args)


if __name__ == "__main__":
    sys.exit(main())
