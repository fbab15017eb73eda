"""``python tests/helpers/traced_export.py DEPS.json ARGS…``: run ``ftedge ARGS…`` (an export), then write the source
files the process imported to DEPS.json — what :mod:`tests.helpers.bundle_cache` checks before it reuses the bundle."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> int:
    deps, argv = Path(sys.argv[1]), sys.argv[2:]
    sys.path[0] = str(Path(__file__).resolve().parents[2])   # the checkout, as `python -m ftedge.cli` from it has
    from ftedge.cli import main as ftedge

    try:
        return ftedge(argv)
    finally:
        files = sorted({str(Path(f).resolve()) for m in list(sys.modules.values())
                        if isinstance(f := getattr(m, "__file__", None), str)})
        deps.write_text(json.dumps(files))


if __name__ == "__main__":
    sys.exit(main())
