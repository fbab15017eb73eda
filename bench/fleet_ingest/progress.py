"""The one-line progress of each phase, on stderr."""

from __future__ import annotations

import sys
from typing import Any


def print_progress(name: str, res: dict[str, Any]) -> None:
    """``[name] rate=…, collector_cores=…, verify=…`` for a finished phase."""
    keys = ("rate", "collector_cores", "pg_cores", "mosquitto_cores", "publisher_cores", "collector_us_per_msg",
            "pg_us_per_msg", "complete", "fcp_cold_ms", "fcp_warm_median_ms", "naive_rate", "batch500_rate",
            "batch5000_rate")
    print(f"[{name}] " + ", ".join(f"{k}={res[k]:.3g}" if isinstance(res[k], float) else f"{k}={res[k]}"
                                   for k in keys if k in res and res[k] is not None)
          + (f", verify={res['verify']['ok']}, lost={res['verify']['lost']}, "
             f"double={res['verify']['double_counted']}" if "verify" in res else "")
          + (f", problems={res['verify']['problems'][:3]}" if "verify" in res and not res["verify"]["ok"] else "")
          + (f", api_walk_ok={res['api_walk']['ok']}" if "api_walk" in res else ""),
          file=sys.stderr, flush=True)

