"""Run in the legacy venv (onnxruntime-training + torch + transformers): export each wide-zoo family with
``--engine ort-training`` and take 5 training steps on one fixed batch; prints one JSON object
{family: {"exported": bool, "error": str | None, "before": float, "after": float}}.

    python -m tests.helpers.wide_ort_training OUT_DIR FAMILY...   # from the repository root
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path


def main() -> None:
    from ftedge.cli import main as cli
    from tests.helpers.common import ZOO, ZOO_WIDE, smoke_train
    from tests.helpers.zoo import PORTABLE_ONLY
    from tests.helpers.zoo_wide import WIDE

    out, *families = sys.argv[1:]
    report: dict[str, dict] = {}
    for family in families:
        model, args = WIDE[family] if family in WIDE else PORTABLE_ONLY[family]
        zoo = ZOO_WIDE if family in WIDE else ZOO
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = cli(["export", f"{zoo}:{model}", "-o", str(Path(out) / family), "--quiet", "--engine",
                      "ort-training", *args])
        entry: dict = {"exported": rc == 0, "error": None if rc == 0 else err.getvalue().strip()[-2000:]}
        if rc == 0:
            entry["before"], entry["after"] = smoke_train(Path(out) / family)
        report[family] = entry
    print(json.dumps(report))


if __name__ == "__main__":
    main()
