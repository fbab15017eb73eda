"""Ed25519 signatures over a bundle's manifest.

The manifest lists every file's sha256 and size, so a valid signature plus
:func:`ftedge.bundle.loader.load_bundle`'s hash check covers the whole bundle.
What is signed is :func:`canonical_manifest_bytes`: the manifest without its
``signature`` key as compact, key-sorted UTF-8 JSON.

``cryptography`` is imported only inside the functions here, so the runtime
imports (and runs unsigned bundles) without it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Union

from ftedge.errors import BundleError, FtedgeError, KeyFileError

ALG = "ed25519"
PRIVATE_SUFFIX = ".key.pem"
PUBLIC_SUFFIX = ".pub.pem"

# A trusted key: a PEM file path, PEM text/bytes, or an already loaded Ed25519PublicKey.
KeySource = Union[str, bytes, Path, Any]


def _crypto():  # noqa: ANN202
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as exc:
        raise FtedgeError(
            "bundle signing needs the `cryptography` package: pip install 'ftedge[device]' (or cryptography>=41)"
        ) from exc
    return serialization, ed25519


def canonical_manifest_bytes(manifest: dict[str, Any]) -> bytes:
    """The signed bytes: the manifest minus ``signature``, sorted keys, compact separators, UTF-8.

    The manifest is round-tripped through JSON first, so an in-memory manifest and the one read back
    from ``manifest.json`` canonicalize identically (tuples, non-string keys).
    """
    body = json.loads(json.dumps({k: v for k, v in manifest.items() if k != "signature"}))
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def key_id(public_key: Any) -> str:
    """First 16 hex digits of the sha256 of the raw 32-byte public key."""
    serialization, _ = _crypto()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_private_key(path: str | Path) -> Any:
    """Read an unencrypted Ed25519 private key PEM (as `ftedge keygen` writes)."""
    serialization, ed25519 = _crypto()
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise KeyFileError(
            f"cannot read signing key {path}: {exc.strerror or exc}; create one with `ftedge keygen`") from exc
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError as exc:
        raise KeyFileError(
            f"signing key {path} is encrypted; give an unencrypted PEM (`ftedge keygen` writes one)") from exc
    except ValueError as exc:
        raise KeyFileError(f"{path} is not a PEM private key ({exc}); create one with `ftedge keygen`") from exc
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise KeyFileError(f"{path} is a {type(key).__name__}, not an Ed25519 key; create one with `ftedge keygen`")
    return key


def load_public_key(source: KeySource) -> Any:
    """An Ed25519 public key from a PEM path, PEM text/bytes, or a loaded key object."""
    serialization, ed25519 = _crypto()
    if isinstance(source, ed25519.Ed25519PublicKey):
        return source
    if isinstance(source, bytes) or (isinstance(source, str) and "-----BEGIN" in source):
        data, where = (source if isinstance(source, bytes) else source.encode()), "trusted key PEM"
    else:
        where = f"trusted key {source}"
        try:
            data = Path(source).read_bytes()
        except OSError as exc:
            raise KeyFileError(f"cannot read {where}: {exc.strerror or exc}; check the path of the public key") from exc
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise KeyFileError(
            f"{where} is not a PEM public key ({exc}); pass the *.pub.pem file `ftedge keygen` wrote"
        ) from exc
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise KeyFileError(f"{where} is a {type(key).__name__}, not an Ed25519 public key")
    return key


def load_trusted_keys(sources: KeySource | Iterable[KeySource]) -> dict[str, Any]:
    """``{key_id: public key}`` for every trusted key (one source or an iterable of them)."""
    if isinstance(sources, (str, bytes, Path)) or not isinstance(sources, Iterable):
        sources = [sources]
    keys = {}
    for source in sources:
        key = load_public_key(source)
        keys[key_id(key)] = key
    return keys


def _signature(manifest: dict[str, Any], private_key: Any) -> dict[str, str]:
    value = private_key.sign(canonical_manifest_bytes(manifest))
    return {"alg": ALG, "key_id": key_id(private_key.public_key()), "value": base64.b64encode(value).decode("ascii")}


def sign_manifest(manifest: dict[str, Any], private_key_pem_path: str | Path) -> dict[str, Any]:
    """A copy of ``manifest`` with ``signature: {alg, key_id, value}`` over its canonical bytes."""
    return {**manifest, "signature": _signature(manifest, load_private_key(private_key_pem_path))}


def manifest_signer(private_key_pem_path: str | Path) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Load the key now (fail fast) and return ``manifest -> signed copy``."""
    private_key = load_private_key(private_key_pem_path)
    return lambda manifest: {**manifest, "signature": _signature(manifest, private_key)}


def verify_manifest(manifest: dict[str, Any], trusted_public_key_paths_or_pems: KeySource | Iterable[KeySource]) -> str:
    """Return the signer's key_id if ``manifest`` carries a valid signature by a trusted key; else BundleError."""
    sig = manifest.get("signature")
    if sig is None:
        raise BundleError("bundle is not signed, but a signature is required: re-export it with "
                          "`ftedge export --sign-key PRIVATE.pem` (or do not require trusted keys)")
    trusted = load_trusted_keys(trusted_public_key_paths_or_pems)
    if not trusted:
        raise BundleError("no trusted public keys were given, so no signature can be accepted; "
                          "configure at least one *.pub.pem (or pass trusted_keys=None to skip signature checks)")
    if not isinstance(sig, dict) or sig.get("alg") != ALG or not isinstance(sig.get("key_id"), str) \
            or not isinstance(sig.get("value"), str):
        raise BundleError(f"malformed manifest signature {sig!r}: expected {{alg: ed25519, key_id, value}}; "
                          "re-sign the bundle with `ftedge export --sign-key`")
    kid = sig["key_id"]
    if kid not in trusted:
        raise BundleError(f"signed by unknown key {kid} (trusted: {', '.join(sorted(trusted))}); "
                          "add the signer's public key to the trusted keys or re-sign with a trusted key")
    from cryptography.exceptions import InvalidSignature

    try:
        trusted[kid].verify(base64.b64decode(sig["value"], validate=True), canonical_manifest_bytes(manifest))
    except (InvalidSignature, binascii.Error, ValueError) as exc:
        raise BundleError("signature does not match: the manifest was modified after signing; "
                          "re-download the bundle or re-export and re-sign it") from exc
    return kid


def generate_keypair(prefix: str | Path) -> tuple[Path, Path]:
    """Write ``PREFIX.key.pem`` (Ed25519 private key, PKCS#8, unencrypted, mode 0600) and ``PREFIX.pub.pem``."""
    serialization, ed25519 = _crypto()
    prefix = Path(prefix)
    private_path, public_path = Path(f"{prefix}{PRIVATE_SUFFIX}"), Path(f"{prefix}{PUBLIC_SUFFIX}")
    existing = [str(p) for p in (private_path, public_path) if p.exists()]
    if existing:
        raise KeyFileError(
            f"{', '.join(existing)} already exist(s); choose another prefix (keys are never overwritten)")
    key = ed25519.Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    private_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)  # whatever the umask
        f.write(private_pem)
        f.flush()
        os.fsync(f.fileno())
    try:
        with open(public_path, "xb") as f:
            f.write(public_pem)
    except BaseException:
        private_path.unlink(missing_ok=True)
        raise
    return private_path, public_path
