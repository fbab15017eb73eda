"""Bundle operations, host and device alike: `ftedge inspect`, `keygen`, `pack` (no numpy, no onnxruntime)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ftedge.bundle.loader import load_bundle
from ftedge.bundle.summary import summary


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
    p.add_argument("--trusted-key", dest="trusted_keys", metavar="PUB.pem", action="append", type=Path,
                   help="require a valid manifest signature by this Ed25519 public key (repeatable)")
    p.set_defaults(handler=run_inspect)

    k = sub.add_parser(
        "keygen",
        help="create an Ed25519 key pair for signing bundles",
        description="Write PREFIX.key.pem (Ed25519 private key, unencrypted PKCS#8, mode 0600: keep it on the "
        "build host) and PREFIX.pub.pem (the public key devices trust). Existing files are never overwritten.",
        epilog="example:\n  ftedge keygen -o keys/release\n  ftedge export ... --sign-key keys/release.key.pem",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    k.add_argument("-o", dest="prefix", metavar="KEY_PREFIX", required=True, type=Path, help="path prefix of the keys")
    k.set_defaults(handler=run_keygen)

    pk = sub.add_parser(
        "pack",
        help="archive a verified bundle as a deterministic .tar.gz for deployment",
        description="Verify BUNDLE and write it as ARCHIVE (.tar.gz, one top-level folder, fixed owners, modes "
        "and timestamps: the same bundle always gives the same bytes). Prints `SHA256  ARCHIVE`; devices "
        "deploy it by URL and that sha256.",
        epilog="example:\n  ftedge pack bundles/kws -o dist/kws.tar.gz",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pk.add_argument("bundle", metavar="BUNDLE", help="bundle directory (written by `ftedge export`)")
    pk.add_argument("-o", dest="archive", metavar="ARCHIVE.tar.gz", required=True, type=Path, help="archive to write")
    pk.set_defaults(handler=run_pack)


def run_inspect(args: argparse.Namespace) -> int:
    # raises BundleError (exit 1) if tampered, or unsigned/untrusted when --trusted-key is given
    bundle = load_bundle(args.bundle, verify=True, trusted_keys=args.trusted_keys)
    # `--providers` (added by the device runtime's CLI, which plugs in `placement`): each graph's placement there
    probe = getattr(args, "placement", None)
    placed = probe(args, bundle) if probe is not None and getattr(args, "providers", None) else None
    if args.json:
        extra = {"signed_by": bundle.signed_by} if bundle.signed_by else {}
        print(json.dumps({**bundle.manifest, "verified": True, **extra,
                          **({"placement": placed} if placed is not None else {})}, indent=2))
    else:
        print(summary(bundle.path, bundle.manifest, verified=True, signed_by=bundle.signed_by))
        for stage, p in (placed or {}).items():
            where = ("CPU (fallback: " + p["fallback"] + ")") if p.get("fallback") else ", ".join(p["providers"])
            print(f"  {stage}: {where}; {p.get('cpu_fallback_nodes')} node(s) on the CPU EP"
                  + (f" of {p['nodes']}" if p.get("nodes") is not None else ""))
    return 0


def run_keygen(args: argparse.Namespace) -> int:
    from ftedge.bundle.signing import generate_keypair, key_id, load_private_key

    private, public = generate_keypair(args.prefix)
    print(f"key {key_id(load_private_key(private).public_key())}: private {private} (keep secret), public {public}")
    return 0


def run_pack(args: argparse.Namespace) -> int:
    from ftedge.bundle.pack import pack_bundle

    print(f"{pack_bundle(args.bundle, args.archive)}  {args.archive}")
    return 0
