"""(h) ``ftedge export --calibration-data FILE.npz`` (the static int8 backbone's calibration samples) through
``ftedge.export.calibration``'s reader, on arbitrary file bytes.

Inputs: generated .npz files (right and wrong names, shapes, dtypes, row counts, Fortran order, object arrays,
compressed or not), byte mutations of the corpus (a compressed zip bomb among it: 80 MB of zeros in 80 KB), random
bytes. Contract: only ``UsageError``; what it returns fits the specs and holds at most CALIBRATION_SAMPLES rows;
memory stays under the harness bound whatever the file claims.
"""

from __future__ import annotations

import io

import numpy as np
from hypothesis import strategies as st

from ftedge.bundle.manifest import TensorSpec
from ftedge.errors import UsageError
from ftedge.export.calibration import CALIBRATION_SAMPLES, _load
from tests.fuzz.common import ContractViolation, corpus, guarded, workdir
from tests.fuzz.mutate import mutated

SPECS = [TensorSpec("x", "float32", ["batch", 4, 5]), TensorSpec("ids", "int64", ["batch", 3])]
_FILE = workdir("calibration") / "calib.npz"
_DTYPES = ["float32", "float64", "int64", "int32", "uint8", "bool", "complex64", "U3", "S2", "object"]


@st.composite
def npz_files(draw: st.DrawFn) -> bytes:
    arrays = {}
    for name in draw(st.lists(st.sampled_from(["x", "ids", "labels", "y"]), max_size=4, unique=True)):
        rows = draw(st.integers(0, 80))
        shape = draw(st.sampled_from([[rows, 4, 5], [rows, 3], [rows], [], [rows, 5, 4], [rows, 4, 5, 1]]))
        dtype = draw(st.sampled_from(_DTYPES))
        arr = np.zeros(shape, dtype=dtype) if dtype != "object" else np.empty(shape, dtype=object)
        if dtype.startswith("float") and arr.size and draw(st.booleans()):
            arr.flat[draw(st.integers(0, arr.size - 1))] = draw(st.sampled_from([np.nan, np.inf, 1e30]))
        arrays[name] = np.asfortranarray(arr) if draw(st.integers(0, 4)) == 0 else arr
    buf = io.BytesIO()
    (np.savez_compressed if draw(st.booleans()) else np.savez)(buf, **arrays)
    return buf.getvalue()


def inputs() -> st.SearchStrategy[bytes]:
    seeds = [p.read_bytes() for p in corpus("calibration")]
    return st.one_of(npz_files(), mutated(seeds), st.binary(max_size=256))


def check(data: bytes) -> None:
    """One input through the contract; raises ContractViolation."""
    _FILE.write_bytes(data)
    with guarded("calibration", (UsageError,)):
        out = _load(_FILE, SPECS)
        rows = {len(a) for a in out.values()}
        fits = all(list(out[s.name].shape[1:]) == s.sample_shape and out[s.name].dtype == s.dtype for s in SPECS)
        if len(rows) != 1 or not 0 < rows.pop() <= CALIBRATION_SAMPLES or not fits:
            raise ContractViolation(f"calibration: returned arrays that do not fit the specs: "
                                    f"{ {k: (v.shape, v.dtype) for k, v in out.items()} }")
