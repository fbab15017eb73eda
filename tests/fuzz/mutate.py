"""Byte-level mutation of seed inputs (the corpus): overwrite, insert, delete, truncate, splice, magic ints."""

from __future__ import annotations

import struct

from hypothesis import strategies as st

_MAGIC = [0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes], max_ops: int = 4) -> bytes:
    """One seed with 1..max_ops random edits (empty seeds list: random bytes)."""
    if not seeds:
        return draw(st.binary(max_size=512))
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, max_ops))):
        n = len(data)
        op = draw(st.sampled_from(["flip", "write", "magic", "insert", "delete", "truncate", "splice"]))
        at = draw(st.integers(0, max(0, n - 1)))
        if op == "flip" and n:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "write":
            blob = draw(st.binary(min_size=1, max_size=16))
            data[at:at + len(blob)] = blob
        elif op == "magic":
            v = draw(st.sampled_from(_MAGIC))
            blob = struct.pack("<I", v) if v > 0xFFFF else struct.pack("<H", v)
            data[at:at + len(blob)] = blob
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 64))]
        elif op == "truncate":
            del data[at:]
        elif op == "splice" and len(seeds) > 1:
            other = draw(st.sampled_from(seeds))
            cut = draw(st.integers(0, len(other)))
            data[at:] = other[cut:]
    return bytes(data)
