"""Device-side commands: `ftedge inspect` (and, later, train/evaluate). Torch-free."""

from __future__ import annotations

import argparse
import json

from ftedge.runtime.bundle import load_bundle
from ftedge.runtime.inspect import summary


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="show what a bundle holds and verify its hashes",
        description="Verify a bundle (schema version, sha256 and size of every file) and show its inputs, labels, "
        "which parameters train, file sizes and hashes, and the recorded parity against PyTorch.",
        epilog="example:\n  ftedge inspect bundles/kws\n  ftedge inspect bundles/kws --json | jq .parity",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("bundle", metavar="BUNDLE", help="bundle directory (written by `ftedge export`)")
    p.add_argument("--json", action="store_true", help="print the manifest plus {'verified': true} as JSON")
    p.set_defaults(handler=run_inspect)


def run_inspect(args: argparse.Namespace) -> int:
    bundle = load_bundle(args.bundle, verify=True)  # raises BundleError (exit 1) if tampered
    if args.json:
        print(json.dumps({**bundle.manifest, "verified": True}, indent=2))
    else:
        print(summary(bundle.path, bundle.manifest, verified=True))
    return 0
