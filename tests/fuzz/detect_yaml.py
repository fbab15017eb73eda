"""(f) An Ultralytics ``data.yaml`` through ``load_detection`` (with a data root), on arbitrary file bytes.

Inputs: generated YAML documents (every key a random value: paths escaping the root, absolute paths, lists,
mappings, numbers), anchor/alias bombs, and byte mutations of the corpus. Contract: :mod:`tests.fuzz.detect_common`.
"""

from __future__ import annotations

import yaml
from hypothesis import strategies as st

from tests.fuzz.common import corpus
from tests.fuzz.detect_common import check_load, dataset
from tests.fuzz.mutate import mutated

_ROOT = dataset("detect_yaml")

paths = st.sampled_from(["images/train", ".", "..", "../..", "/", "/etc", "images/train/a.png", "../ds/images/train",
                         "list.txt", "missing", "", "images/../../..", "~"]) | st.text(max_size=20)
scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
values = st.recursive(scalars | paths, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(scalars.filter(lambda k: k is not None), inner, max_size=4), max_leaves=12)
names = (st.lists(st.sampled_from(["cat", "dog", "bird", "fish"]) | scalars, max_size=5)
         | st.dictionaries(st.integers(-2, 5) | st.text(max_size=3), st.sampled_from(["cat", "dog"]) | values,
                           max_size=4) | values)


@st.composite
def documents(draw: st.DrawFn) -> bytes:
    doc = {k: draw(v) for k, v in (("path", paths | values), ("train", paths | st.lists(paths, max_size=3) | values),
                                   ("val", paths), ("names", names), ("nc", st.none() | st.integers(-1, 5) | values))
           if draw(st.integers(0, 4))}
    return yaml.safe_dump(doc, allow_unicode=True).encode("utf-8", "surrogatepass")


@st.composite
def bombs(draw: st.DrawFn) -> bytes:
    """Nested anchors and aliases (a billion-laughs shape), placed under a random key."""
    depth, width = draw(st.integers(1, 9)), draw(st.integers(2, 10))
    lines = [f"a0: &a0 [{','.join(['x'] * width)}]"]
    lines += [f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * width)}]" for i in range(1, depth)]
    key = draw(st.sampled_from(["names", "train", "path", "nc"]))
    return ("\n".join(lines) + f"\n{key}: *a{depth - 1}\ntrain: images/train\nnames: [cat]\n").encode()


def inputs() -> st.SearchStrategy[bytes]:
    seeds = [p.read_bytes() for p in corpus("detect_yaml")]
    return st.one_of(documents(), bombs(), mutated(seeds), st.binary(max_size=256))


def check(data: bytes) -> None:
    """One input through the contract; raises ContractViolation."""
    (_ROOT / "ds" / "list.txt").write_text("images/train/a.png\n../../secret.png\n/etc/passwd\n")
    (_ROOT / "ds" / "data.yaml").write_bytes(data)
    check_load(_ROOT / "ds" / "data.yaml", _ROOT)
