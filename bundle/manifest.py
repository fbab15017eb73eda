"""The bundle manifest: schema version, tensor specs and the ``--input`` syntax.

Shared by the exporter (which writes it) and the runtime (which reads it), so
both sides agree on one definition.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from ftedge.errors import BundleError, UsageError

SCHEMA_VERSION = 2  # 2: `engines` (portable and/or ort-training); 1: ort-training artifacts only
SUPPORTED_SCHEMA_VERSIONS = frozenset({1, 2})
MANIFEST_NAME = "manifest.json"
BATCH = "batch"

DTYPES = ("float32", "float16", "float64", "int64", "int32", "int8", "uint8", "bool")
LOSSES = ("cross-entropy", "bce", "mse", "l1")
OPTIMIZERS = ("adamw", "sgd")

# Roles a bundle file can play; `layout` (and, from schema 2, `engines`) decide which must be present.
ENGINE_ROLES = {"ort-training": ("training", "eval", "optimizer", "checkpoint"), "portable": ("step", "head", "init")}
SPLIT_ROLES = ("backbone", "training", "eval", "optimizer", "checkpoint")  # schema 1
FULL_ROLES = ("training", "eval", "optimizer", "checkpoint")


@dataclass
class TensorSpec:
    """A tensor: name, dtype and shape with the symbolic batch dimension.

    ``shape`` holds ints and the string ``"batch"`` where the batch axis is;
    ``value_range`` (inclusive low, exclusive high) bounds random test values
    of integer inputs, e.g. token ids.
    """

    name: str
    dtype: str
    shape: list[Any]
    value_range: list[int] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def batch_axis(self) -> int | None:
        return self.shape.index(BATCH) if BATCH in self.shape else None

    def concrete_shape(self, batch: int) -> list[int]:
        return [batch if d == BATCH else int(d) for d in self.shape]

    @property
    def sample_shape(self) -> list[int]:
        """The shape of one sample (the batch axis removed)."""
        return [int(d) for d in self.shape if d != BATCH]

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        if out["value_range"] is None:
            del out["value_range"]
        if not out["meta"]:
            del out["meta"]
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "TensorSpec":
        try:
            return cls(
                name=obj["name"],
                dtype=obj["dtype"],
                shape=list(obj["shape"]),
                value_range=obj.get("value_range"),
                meta=dict(obj.get("meta", {})),
            )
        except (KeyError, TypeError) as exc:
            raise BundleError(
                f"malformed tensor spec in manifest: {obj!r} ({exc}); re-export the bundle"
            ) from exc


_INPUT_RE = re.compile(r"^(?P<name>[A-Za-z_][\w.\-]*):(?P<dtype>\w+):(?P<dims>[0-9,]+)(?::(?P<lo>-?\d+)-(?P<hi>-?\d+))?$")


def parse_input_spec(text: str) -> TensorSpec:
    """Parse ``NAME:DTYPE:D1,D2,...[:LOW-HIGH]``; D1 is the (dynamic) batch dimension.

    ``LOW-HIGH`` (integer inputs only) is the half-open range of random values
    used for parity checks, e.g. ``input_ids:int64:1,32:0-30522``.
    """
    m = _INPUT_RE.match(text.strip())
    if not m:
        raise UsageError(
            f"bad --input {text!r}: expected NAME:DTYPE:D1,D2,... with the batch dimension first, "
            "e.g. x:float32:1,101,40 or input_ids:int64:1,128:0-30522"
        )
    dtype = m["dtype"]
    if dtype not in DTYPES:
        raise UsageError(f"bad --input {text!r}: unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    dims = [int(d) for d in m["dims"].split(",") if d]
    if not dims or any(d <= 0 for d in dims):
        raise UsageError(f"bad --input {text!r}: dimensions must be positive integers, batch first")
    value_range = None
    if m["lo"] is not None:
        lo, hi = int(m["lo"]), int(m["hi"])
        if dtype.startswith("float") or hi <= lo:
            raise UsageError(f"bad --input {text!r}: LOW-HIGH needs an integer dtype and LOW < HIGH")
        value_range = [lo, hi]
    return TensorSpec(name=m["name"], dtype=dtype, shape=[BATCH, *dims[1:]], value_range=value_range)


def check_schema(manifest: dict[str, Any], where: str) -> None:
    version = manifest.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or version not in SUPPORTED_SCHEMA_VERSIONS:
        known = ", ".join(str(v) for v in sorted(SUPPORTED_SCHEMA_VERSIONS))
        raise BundleError(
            f"{where}: bundle schema_version {version!r} is not supported by this runtime "
            f"(it reads {known}); upgrade ftedge on this device or re-export the bundle with a matching ftedge"
        )
    layout = manifest.get("layout")
    if layout not in ("split", "full"):
        raise BundleError(f"{where}: unknown bundle layout {layout!r}; re-export the bundle")
    roles = manifest.get("roles") or {}
    if not isinstance(roles, dict):
        raise BundleError(f"{where}: manifest `roles` is not an object of file names; re-export the bundle")
    if version == 1:
        needed: tuple[str, ...] = SPLIT_ROLES if layout == "split" else FULL_ROLES
    else:
        engines = manifest.get("engines")
        if not isinstance(engines, dict) or not engines or any(e not in ENGINE_ROLES for e in engines):
            raise BundleError(f"{where}: manifest lists no known training engine ({engines!r}); re-export the bundle")
        needed = (("backbone",) if layout == "split" else ()) + tuple(r for e in engines for r in ENGINE_ROLES[e])
    missing = [r for r in needed if r not in roles]
    if missing:
        raise BundleError(f"{where}: manifest names no file for role(s) {', '.join(missing)}; re-export the bundle")
