"""Collect every distinct contract violation of a target, with the shortest input seen for each.

``.venv/bin/python -m tests.fuzz.triage TARGET [EXAMPLES] [OUT_DIR]``: prints one line per signature
(including known ones) and writes the shortest input of each to OUT_DIR (default /tmp/ftedge-triage/TARGET).
"""

from __future__ import annotations

import importlib
import sys
import traceback
from pathlib import Path

from hypothesis import HealthCheck, given, settings

import tests.fuzz.common as common


def main() -> None:
    target = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 500
    out = Path(sys.argv[3] if len(sys.argv) > 3 else f"/tmp/ftedge-triage/{target}")
    out.mkdir(parents=True, exist_ok=True)
    harness = importlib.import_module(f"tests.fuzz.{target}")
    common.STRICT_KNOWN = True
    found: dict[str, tuple[bytes, str]] = {}

    @settings(max_examples=n, deadline=None, database=None, phases=[p for p in settings().phases if p.name != "shrink"],
              suppress_health_check=list(HealthCheck))
    @given(harness.inputs())
    def run(data: bytes) -> None:
        try:
            harness.check(data)
        except common.ContractViolation as exc:
            cause = exc.__cause__
            sig = common.signature(cause) if cause is not None else str(exc).split(":")[0] + ":" + str(exc)[-60:]
            if sig not in found or len(data) < len(found[sig][0]):
                tb = "".join(traceback.format_exception(cause)) if cause is not None else str(exc)
                found[sig] = (data, tb)

    run()
    for i, (sig, (data, tb)) in enumerate(sorted(found.items())):
        (out / f"{i:02d}.bin").write_bytes(data)
        (out / f"{i:02d}.txt").write_text(f"{sig}\n{tb}")
        print(f"{i:02d} {sig} ({len(data)} bytes){'  [known]' if sig in importlib.import_module('tests.fuzz.known').KNOWN else ''}")


if __name__ == "__main__":
    main()
