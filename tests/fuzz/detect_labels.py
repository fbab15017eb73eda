"""(g) A YOLO label file (``labels/train/a.txt``) through ``load_detection``, on arbitrary file bytes.

Inputs: generated lines (right and wrong field counts, huge / negative / NaN / infinite / non-integer numbers,
classes beyond the names, polygons, comments, BOMs, CRLF), and byte mutations of the corpus. Contract:
:mod:`tests.fuzz.detect_common`.
"""

from __future__ import annotations

from hypothesis import strategies as st

from tests.fuzz.common import corpus
from tests.fuzz.detect_common import check_load, dataset
from tests.fuzz.mutate import mutated

_ROOT = dataset("detect_labels")

numbers = (st.sampled_from(["0", "1", "2", "3", "-1", "0.5", "1e308", "-1e308", "nan", "inf", "-inf", "1e-9", "2.5",
                            "0x10", "1_0", "", "١"])
           | st.floats(-2, 3).map(repr) | st.integers(-5, 10**30).map(str) | st.text(max_size=6))


@st.composite
def label_files(draw: st.DrawFn) -> bytes:
    lines = []
    for _ in range(draw(st.integers(0, 12))):
        fields = draw(st.lists(numbers, min_size=0, max_size=9))
        line = draw(st.sampled_from([" ", "\t", "  "])).join(fields)
        lines.append(draw(st.sampled_from(["", "# ", " "])) + line if draw(st.integers(0, 5)) == 0 else line)
    text = draw(st.sampled_from(["\n", "\r\n", "\r"])).join(lines)
    return draw(st.sampled_from([b"", b"\xef\xbb\xbf"])) + text.encode("utf-8", "surrogatepass")


def inputs() -> st.SearchStrategy[bytes]:
    seeds = [p.read_bytes() for p in corpus("detect_labels")]
    return st.one_of(label_files(), mutated(seeds), st.binary(max_size=256))


def check(data: bytes) -> None:
    """One input through the contract; raises ContractViolation."""
    (_ROOT / "ds" / "labels" / "train" / "a.txt").write_bytes(data)
    check_load(_ROOT / "ds" / "data.yaml", _ROOT)
