"""The personalization policy's settings, declared once: ``[personalize]`` in agent.toml, the ``policy`` verb's
``args.set`` and docs/personalize.md all read :data:`FIELDS`.

A policy names one bundle (under ``paths.bundle_root``) and one data set (under ``paths.data_root``), when a run may
start (enough new samples, time since the last run, a local time window, load, power, runs per day) and how it
trains (train options, or ``"auto"``; warm start from the active version by default).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, fields
from typing import Any

WINDOW_RE = re.compile(r"([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)")
NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,128}")
MAX_DATA_PATH = 1024


@dataclass(frozen=True)
class Setting:
    """One policy setting: its type, default, bounds and help (the docs' table)."""

    name: str
    type: type
    default: Any
    help: str
    bounds: tuple[float, float] | None = None
    required: bool = False


FIELDS: tuple[Setting, ...] = (
    Setting("enabled", bool, True, "false keeps the policy but starts nothing"),
    Setting("bundle", str, None, "the bundle's folder name under paths.bundle_root", required=True),
    Setting("data", str, None, "the data set (a folder per label, or a file) under paths.data_root", required=True),
    Setting("min_new_samples", int, 20, "samples (by content hash) not in the last policy run's data", (1, 10_000_000)),
    Setting("min_interval_h", float, 24.0, "hours since the last policy run started", (0, 8760)),
    Setting("window", str, "", "local time window HH:MM-HH:MM (may wrap midnight); empty: any time"),
    Setting("max_load", float, 0.5, "the 1-minute load average per CPU core must be at most this", (0, 64)),
    Setting("on_battery", bool, False, "also run while the battery discharges (/sys/class/power_supply)"),
    Setting("max_runs_per_day", int, 2, "policy runs started in the last 24 h at most", (1, 96)),
    Setting("options", dict, {}, 'train options (as a train command\'s args), or "auto" for {"auto": true}'),
    Setting("warm_start", bool, True, "continue from the active version (and promote only what beats it)"),
    Setting("max_samples_per_label", int, 0, "keep at most this many samples per label, oldest out first; 0: no cap",
            (0, 10_000_000)),
    Setting("max_bytes", int, 0, "keep the data set within this many bytes, oldest out first; 0: no cap",
            (0, 2**62)),
    Setting("check_interval_s", float, 60.0, "seconds between checks (new data also triggers one)", (1, 86400)),
    Setting("hold_after_rollout_s", float, 900.0, "no policy run for this long after a deploy or rollback", (0, 7 * 86400)),
)
BY_NAME = {s.name: s for s in FIELDS}


@dataclass(frozen=True)
class Policy:
    """A validated policy (see :data:`FIELDS`); ``source`` says where it came from (``config`` or ``fleet``)."""

    bundle: str
    data: str
    enabled: bool = True
    min_new_samples: int = 20
    min_interval_h: float = 24.0
    window: str = ""
    max_load: float = 0.5
    on_battery: bool = False
    max_runs_per_day: int = 2
    options: dict[str, Any] = field(default_factory=dict)
    warm_start: bool = True
    max_samples_per_label: int = 0
    max_bytes: int = 0
    check_interval_s: float = 60.0
    hold_after_rollout_s: float = 900.0
    source: str = "config"

    def public(self) -> dict[str, Any]:
        """JSON-ready, as ``meta`` and the ``policy`` verb show it."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def train_options(self) -> dict[str, Any]:
        """The options a policy run's job gets (before warm start is added)."""
        return dict(self.options)

    def window_minutes(self) -> tuple[int, int] | None:
        """(start, end) in minutes after local midnight, or None for any time."""
        m = WINDOW_RE.fullmatch(self.window) if self.window else None
        if m is None:
            return None
        a, b, c, d = (int(x) for x in m.groups())
        return a * 60 + b, c * 60 + d


def _type_word(t: type) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            dict: 'a table of train options or "auto"'}[t]


def _check(s: Setting, value: Any) -> tuple[Any, str | None]:
    """(normalized value, problem or None)."""
    if s.type is bool:
        return (value, None) if isinstance(value, bool) else (None, f"must be {_type_word(bool)}, got {value!r}")
    if s.type is dict:
        if value == "auto":
            return {"auto": True}, None
        if not isinstance(value, dict):
            return None, f"must be {_type_word(dict)}, got {json.dumps(value, default=str)[:60]}"
        return _options(value)
    ok = isinstance(value, (int, float) if s.type is float else s.type) and not isinstance(value, bool)
    if not ok:
        return None, f"must be {_type_word(s.type)}, got {json.dumps(value, default=str)[:60]}"
    if isinstance(value, float) and not math.isfinite(value):
        return None, f"must be a finite number, got {value!r}"
    if s.bounds is not None and not s.bounds[0] <= value <= s.bounds[1]:
        return None, f"must be between {s.bounds[0]:g} and {s.bounds[1]:g}, got {value!r}"
    if s.type is float:
        value = float(value)
    if s.name == "window" and value and not WINDOW_RE.fullmatch(value):
        return None, f'must be "HH:MM-HH:MM" in local time (e.g. "01:00-05:00") or empty, got {value!r}'
    if s.name == "bundle" and not NAME_RE.fullmatch(value):
        return None, f"must be a bundle folder name (A-Z a-z 0-9 _ . -), got {value!r}"
    if s.name == "data" and (not value.strip() or "\0" in value or len(value) > MAX_DATA_PATH
                             or value.startswith("/")):
        return None, f"must be a path relative to paths.data_root, got {value[:80]!r}"
    return value, None


def _options(value: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """Train options checked against their declarations (the same check a train command gets)."""
    from ftedge.errors import Rejected
    from ftedge.runtime import tasks

    every = tasks.all_options()
    unknown = sorted(set(value) - set(every))
    if unknown:
        return None, f"unknown train option(s) {', '.join(unknown)}; known: {', '.join(every)}"
    out = {}
    for key, v in value.items():
        try:
            out[key] = every[key].check(v)
        except Rejected as exc:
            return None, f"{key}: {exc.detail}"
    return out, None


def parse_policy(doc: Any, source: str = "config") -> tuple[Policy | None, list[str]]:
    """A :class:`Policy` from a TOML table or JSON object, or None with every problem as ``key: what is wrong``."""
    if not isinstance(doc, dict):
        return None, [f"must be a table of {', '.join(BY_NAME)}"]
    errors: list[str] = []
    import difflib

    for key in doc:
        if key not in BY_NAME:
            close = difflib.get_close_matches(str(key), list(BY_NAME), n=1)
            errors.append(f"{key}: unknown key" + (f"; did you mean '{close[0]}'?" if close
                                                   else f"; known keys: {', '.join(BY_NAME)}"))
    values: dict[str, Any] = {}
    for s in FIELDS:
        if s.name not in doc:
            if s.required:
                errors.append(f"{s.name}: required key is missing ({s.help})")
            continue
        value, problem = _check(s, doc[s.name])
        if problem:
            errors.append(f"{s.name}: {problem}")
        else:
            values[s.name] = value
    if errors:
        return None, errors
    return Policy(**values, source=source), []


def _fmt(v: float) -> str:
    if isinstance(v, int) and v >= 2**32 and (v & (v - 1)) == 0:
        return f"2^{v.bit_length() - 1}"
    return f"{v:,}" if isinstance(v, int) else f"{v:g}"


def markdown_table() -> str:
    """The settings table of docs/personalize.md."""
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for s in FIELDS:
        default = "(required)" if s.required else json.dumps(s.default)
        bounds = f" ({_fmt(s.bounds[0])} … {_fmt(s.bounds[1])})" if s.bounds else ""
        rows.append(f"| `{s.name}` | {s.type.__name__}{bounds} | {default} | {s.help} |")
    return "\n".join(rows)
