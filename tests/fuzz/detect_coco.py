"""(h) A COCO JSON (``ds/coco.json``, beside ``images/train/a.png``) through ``load_detection``, on arbitrary bytes.

Inputs: generated COCO documents (ids of every JSON type, duplicate ids, file_names escaping the root or
absolute, widths that lie, bboxes of wrong length / NaN-like values / huge numbers, crowd flags, unknown
categories), deep nesting, and byte mutations of the corpus. Contract: :mod:`tests.fuzz.detect_common`.
"""

from __future__ import annotations

import json

from hypothesis import strategies as st

from tests.fuzz.common import corpus
from tests.fuzz.detect_common import check_load, dataset
from tests.fuzz.mutate import mutated

_ROOT = dataset("detect_coco")

scalars = st.none() | st.booleans() | st.integers(-3, 2**70) | st.floats(allow_nan=False) | st.text(max_size=8)
anything = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                        | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8)
ids = st.integers(-1, 4) | st.sampled_from(["1", "a", True, None, 1.0, [1]])
files = st.sampled_from(["images/train/a.png", "images/train/b.png", "a.png", "../../secret.png", "../secret.png",
                         "/etc/passwd", str(_ROOT.parent / "secret.png"), "missing.png", "", "images/train"])
numbers = st.integers(-50, 100) | st.floats(-1e308, 1e308) | st.sampled_from([0, 1e308, -1e308, 24, 32])


@st.composite
def documents(draw: st.DrawFn) -> bytes:
    images = [{"id": draw(ids), "file_name": draw(files | anything), "width": draw(numbers | anything),
               "height": draw(numbers | anything)} for _ in range(draw(st.integers(0, 4)))]
    anns = [{"id": draw(ids), "image_id": draw(ids), "category_id": draw(ids),
             "bbox": draw(st.lists(numbers, min_size=0, max_size=5) | anything), "iscrowd": draw(st.sampled_from([0, 1])
                                                                                              | anything)}
            for _ in range(draw(st.integers(0, 6)))]
    cats = draw(st.lists(st.fixed_dictionaries({"id": ids, "name": st.sampled_from(["cat", "dog", "bird", "x"])
                                                 | anything}), max_size=4) | anything)
    doc = {"images": images, "annotations": anns, "categories": cats}
    for key in draw(st.lists(st.sampled_from(list(doc)), max_size=1)):
        doc[key] = draw(anything)
    return json.dumps(doc).encode()


def inputs() -> st.SearchStrategy[bytes]:
    seeds = [p.read_bytes() for p in corpus("detect_coco")]
    deep = st.integers(1, 100_000).map(lambda n: b"[" * n + b"]" * n)
    return st.one_of(documents(), mutated(seeds), deep, st.binary(max_size=256))


def check(data: bytes) -> None:
    """One input through the contract; raises ContractViolation."""
    (_ROOT / "ds" / "coco.json").write_bytes(data)
    check_load(_ROOT / "ds" / "coco.json", _ROOT)
