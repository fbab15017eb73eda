"""(b) The manifest/bundle loader: ``load_bundle`` (manifest.json parsing, schema, hashes) and what its callers
read from a loaded bundle (``Bundle`` accessors, ``ModelIO.from_manifest``), over fuzzed manifest contents and
folder layouts (missing, truncated or extra files, directories and symlinks where files belong).

Input: a JSON document ``{"base": NAME, "manifest": TEXT, "ops": [[OP, REL, ARG], ...]}``; ``TEXT`` is the
manifest.json bytes as latin-1 text (byte mutations survive), ``NAME`` a folder under tests/fuzz/bases/ (the
real bundles the manifests start from). Contract: a ``BundleError`` (any ``FtedgeError``) or a bundle whose
accessors all answer; a loaded bundle's files all lie inside its folder.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from ftedge.bundle.loader import load_bundle
from ftedge.runtime.data.samples import ModelIO
from hypothesis import strategies as st

from ftedge.errors import FtedgeError
from tests.fuzz.common import corpus, guarded, workdir
from tests.fuzz.mutate import mutated
from tests.helpers.common import DATA

BASES = Path(__file__).resolve().parent / "bases"
_ROOTS = {"bundle_v1": DATA / "bundle_v1", "mlp_v2": BASES / "mlp_v2"}
_DIR = workdir("bundle")
OPS = ("rm", "truncate", "append", "dir", "symlink_out", "symlink_in", "extra", "manifest_dir")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


def _base_manifest(name: str) -> dict[str, Any]:
    return json.loads((_ROOTS[name] / "manifest.json").read_text())


@st.composite
def _edited(draw: st.DrawFn, name: str) -> str:
    """The base manifest with a few values replaced, removed or added at random depths."""
    m: Any = _base_manifest(name)
    for _ in range(draw(st.integers(1, 4))):
        node, key = None, None
        cur = m
        while isinstance(cur, (dict, list)) and cur and (node is None or draw(st.booleans())):
            keys = sorted(cur) if isinstance(cur, dict) else list(range(len(cur)))
            node, key = cur, draw(st.sampled_from(keys))
            cur = cur[key]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if node is None:
            m = draw(json_values)
            continue
        if action == "replace":
            node[key] = draw(json_values | st.sampled_from(["../../etc/passwd", "/etc/passwd", "", "batch", -1, 0,
                                                             10**12, [], {}]))
        elif action == "delete":
            del node[key]
        elif isinstance(node, dict):
            node[draw(st.text(max_size=8))] = draw(json_values)
        else:
            node.append(draw(json_values))
    return json.dumps(m, allow_nan=True)


@st.composite
def documents(draw: st.DrawFn) -> bytes:
    name = draw(st.sampled_from(sorted(_ROOTS)))
    text = (_ROOTS[name] / "manifest.json").read_bytes().decode("latin-1")
    kind = draw(st.sampled_from(["edit", "edit", "bytes", "as-is"]))
    if kind == "edit":
        text = draw(_edited(name))
    elif kind == "bytes":
        text = draw(mutated([text.encode("latin-1")])).decode("latin-1")
    files = sorted(_base_manifest(name).get("files") or {}) + ["manifest.json", "head", "portable", "x/y"]
    ops = draw(st.lists(st.tuples(st.sampled_from(OPS), st.sampled_from(files), st.integers(0, 4096)), max_size=3))
    return json.dumps({"base": name, "manifest": text, "ops": ops}).encode()


def inputs() -> st.SearchStrategy[bytes]:
    return st.one_of(documents(), mutated([p.read_bytes() for p in corpus("bundle")]))


def _apply(root: Path, op: str, rel: str, arg: int) -> None:
    p = root / rel
    if op == "rm":
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
    elif op == "truncate" and p.is_file():
        os.truncate(p, min(arg, p.stat().st_size))
    elif op == "append" and p.is_file():
        with open(p, "ab") as f:
            f.write(b"\0" * arg)
    elif op == "dir" and not p.is_dir():
        p.unlink(missing_ok=True)
        p.mkdir(parents=True, exist_ok=True)
    elif op in ("symlink_out", "symlink_in"):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.symlink_to(_DIR / "outside.bin" if op == "symlink_out" else root / "manifest.json")
    elif op == "extra":
        p.parent.mkdir(parents=True, exist_ok=True)
        if not p.exists():
            p.write_bytes(b"x" * arg)
    elif op == "manifest_dir":
        (root / "manifest.json").unlink(missing_ok=True)
        (root / "manifest.json").mkdir(exist_ok=True)


def _materialize(doc: dict[str, Any]) -> Path:
    root = _DIR / "b"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(_ROOTS[doc["base"]], root, symlinks=True)
    (_DIR / "outside.bin").write_bytes(b"secret")
    (root / "manifest.json").write_bytes(str(doc["manifest"]).encode("latin-1", errors="replace"))
    for op, rel, arg in doc.get("ops") or []:
        if op in OPS and isinstance(rel, str) and ".." not in rel and not rel.startswith("/") and isinstance(arg, int):
            try:
                _apply(root, op, rel, max(0, min(arg, 1 << 16)))
            except OSError:
                pass  # an op that does not fit the layout the earlier ops left (e.g. under a symlinked dir)
    return root


def check(data: bytes) -> None:
    """One input through the contract; raises ContractViolation."""
    try:
        doc = json.loads(data)
        assert isinstance(doc, dict) and doc.get("base") in _ROOTS and isinstance(doc.get("manifest"), str)
    except (ValueError, AssertionError):
        return  # the harness's own envelope is broken: nothing to test
    root = _materialize(doc)
    with guarded("load_bundle", (FtedgeError,)):
        b = load_bundle(root, verify=True)
        _ = (b.name, b.layout, b.inputs, b.head_inputs, b.output, b.labels, b.loss)
        for role in b.manifest["roles"]:
            f = b.file(role).resolve()
            assert root.resolve() in f.parents, f"role {role} resolves outside the bundle: {f}"
        ModelIO.from_manifest(b.manifest, b.path)
