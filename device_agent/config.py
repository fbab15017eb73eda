"""The device agent's TOML configuration: load once, validate everything, fail with the exact key.

Every problem found is reported at once (one line per key, e.g. ``mqtt.url: scheme 'http' is not
mqtt:// or mqtts://``); unknown keys get the closest known one suggested. Relative paths resolve
against the config file's directory. The MQTT password is read from ``mqtt.password_file`` at load
and never shown: ``repr()`` and ``to_public_dict()`` print ``***``.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ftedge.errors import AgentError, UsageError
from ftedge.device_agent.policy.spec import FIELDS as POLICY_FIELDS, Policy, parse_policy
from ftedge.mqtt.contract import BrokerSettings, device_prefix

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    try:
        import tomli as tomllib  # type: ignore[no-redef]
    except ModuleNotFoundError:
        tomllib = None  # type: ignore[assignment]

NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # device_id / fleet become MQTT topic levels
LOG_LEVELS = ("debug", "info", "warning", "error")
REDACTED = "***"
_U32 = 2**32 - 1

# Known keys per table ("" is the top level); a dict value is a sub-table.
_SCHEMA: dict[str, tuple[str, ...]] = {
    "": ("device_id", "fleet", "state_dir", "log_level", "mqtt", "paths", "deploy", "outbox", "jobs", "retention",
         "ask", "runtime", "personalize"),
    "mqtt": ("url", "username", "password_file", "ca_file", "cert_file", "key_file",
             "keepalive", "session_expiry", "will_delay", "max_packet_size"),
    "jobs": ("max_starts",),
    "retention": ("keep_runs", "keep_versions", "cache_max_bytes"),
    "paths": ("data_root", "bundle_root"),
    "deploy": ("trusted_keys", "require_signed", "file_root", "max_bytes", "deadline_s", "keep_replaced"),
    "outbox": ("max_bytes", "max_age_s"),
    "ask": ("max_prompt_tokens", "queue", "token_deadline_s"),
    "runtime": ("providers", "step_providers"),
    "personalize": tuple(s.name for s in POLICY_FIELDS),
}
_HINTS = {
    "device_id": 'add device_id = "dev-001" at the top of the file',
    "fleet": 'add fleet = "my-fleet" at the top of the file',
    "state_dir": 'add state_dir = "/var/lib/ftedge" at the top of the file',
    "mqtt": 'add a [mqtt] table with url = "mqtt://HOST:1883"',
    "mqtt.url": 'add url = "mqtt://HOST:1883" (mqtts:// for TLS) under [mqtt]',
    "paths": 'add a [paths] table with data_root and bundle_root',
    "paths.data_root": 'add data_root = "/data" under [paths]',
    "paths.bundle_root": 'add bundle_root = "/var/lib/ftedge/bundles" under [paths]',
}


@dataclass(frozen=True, repr=False)
class MqttConfig:
    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    keepalive: int = 30
    session_expiry: int = 86400
    will_delay: int = 10
    max_packet_size: int = 256 * 1024  # CONNECT MaximumPacketSize: bigger commands never reach the agent

    def to_public_dict(self) -> dict[str, Any]:
        """Every field, JSON-ready, with the password redacted."""
        out = {f.name: _public(getattr(self, f.name)) for f in fields(self)}
        if self.password is not None:
            out["password"] = REDACTED
        return out

    def __repr__(self) -> str:
        shown = self.to_public_dict()
        return "MqttConfig(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"

    __str__ = __repr__


@dataclass(frozen=True)
class PathsConfig:
    data_root: Path     # commands may only name data below this root
    bundle_root: Path


@dataclass(frozen=True)
class DeployConfig:
    trusted_keys: tuple[Path, ...] = ()  # Ed25519 public keys for signed bundles
    require_signed: bool = True          # false: accept unsigned bundles (signatures then go unchecked)
    file_root: Path | None = None        # file:// deploys only from below this folder; unset: refused
    max_bytes: int = 2 * 2**30           # download and unpacked-size cap
    deadline_s: int = 1800               # the whole download
    keep_replaced: int = 2               # NAME.replaced-* folders kept per bundle after `replace`


@dataclass(frozen=True)
class OutboxConfig:
    max_bytes: int = 64 * 1024 * 1024
    max_age_s: int = 7 * 24 * 3600


@dataclass(frozen=True)
class JobsConfig:
    max_starts: int = 3  # starts without a finished epoch before a job is failed (crash loop guard)


@dataclass(frozen=True)
class AskConfig:
    """The ``ask`` verb's bounds (its worker: ``ftedge.device_agent.asker``)."""

    max_prompt_tokens: int = 1024  # prefill memory grows with the square of this (SmolLM2-135M: ~0.2 GB at 1024)
    queue: int = 4                 # asks waiting behind the one being answered; more are refused `busy`
    token_deadline_s: float = 10.0  # the answer stops (stopped: "deadline") when one token takes longer


@dataclass(frozen=True)
class RuntimeConfig:
    """Where the box's jobs run: execution providers for every session, and for the training step alone (the
    ``providers`` / ``step_providers`` train options; a train command's own values win)."""

    providers: tuple[str, ...] = ()       # e.g. ("OpenVINO", "CPU"); empty: the CPU EP
    step_providers: tuple[str, ...] = ()  # empty: as providers

    def train_defaults(self) -> dict[str, Any]:
        """The options a train command without its own ``providers`` / ``step_providers`` gets."""
        return {k: list(v) for k, v in (("providers", self.providers), ("step_providers", self.step_providers)) if v}


@dataclass(frozen=True)
class RetentionConfig:
    """What the agent deletes at start: the oldest beyond these caps."""

    keep_runs: int = 20                      # run directories of finished jobs
    keep_versions: int = 10                  # model versions (never the active one or its predecessor)
    cache_max_bytes: int = 512 * 1024 * 1024  # embedding cache


@dataclass(frozen=True)
class AgentConfig:
    device_id: str
    fleet: str
    state_dir: Path
    log_level: str
    mqtt: MqttConfig
    paths: PathsConfig
    deploy: DeployConfig = field(default_factory=DeployConfig)
    outbox: OutboxConfig = field(default_factory=OutboxConfig)
    jobs: JobsConfig = field(default_factory=JobsConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    ask: AskConfig = field(default_factory=AskConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    personalize: Policy | None = None  # [personalize]: the box trains by itself (device_agent.policy)
    source: Path | None = None  # the file it was loaded from

    def to_public_dict(self) -> dict[str, Any]:
        """JSON-ready view safe to log or publish (password redacted)."""
        out = {f.name: _public(getattr(self, f.name)) for f in fields(self) if f.name != "mqtt"}
        out["mqtt"] = self.mqtt.to_public_dict()
        for name in ("paths", "deploy", "outbox", "jobs", "retention", "ask", "runtime"):
            obj = getattr(self, name)
            out[name] = {f.name: _public(getattr(obj, f.name)) for f in fields(obj)}
        out["personalize"] = self.personalize.public() if self.personalize else None
        return out


def topic_root(cfg: AgentConfig) -> str:
    """``ftedge/v1/{fleet}/{device}/``: the prefix of every topic this device uses (``ftedge.mqtt.contract``)."""
    return device_prefix(cfg.fleet, cfg.device_id)


def load_config(path: str | Path) -> AgentConfig:
    """Read and validate the agent config at ``path``; raises AgentError listing every problem."""
    path = Path(path).expanduser().absolute()
    if tomllib is None:
        raise AgentError("reading the agent config needs Python 3.11+ (tomllib) or, on Python 3.10, "
                         "`pip install tomli`")
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise AgentError(f"agent config {path} does not exist: create it or pass the right path") from None
    except OSError as exc:
        raise AgentError(f"agent config {path} cannot be read ({exc}): check its permissions") from None
    except UnicodeDecodeError as exc:
        raise AgentError(f"agent config {path} is not UTF-8 text ({exc}): save it as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise AgentError(f"agent config {path} is not valid TOML: {exc}; fix the syntax there "
                         "(strings need quotes, tables are [name])") from None
    r = _Reader(path.parent)
    cfg = r.build(doc, path)
    if r.errors:
        if len(r.errors) == 1:
            raise AgentError(f"agent config {path}: {r.errors[0]}")
        raise AgentError(f"agent config {path} has {len(r.errors)} problems:\n"
                         + "\n".join(f"  {e}" for e in r.errors))
    assert cfg is not None
    return cfg


def _public(v: Any) -> Any:
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, tuple):
        return [_public(x) for x in v]
    return v


def _toml_type(v: Any) -> str:
    if isinstance(v, bool):
        return "boolean"
    return {str: "string", int: "integer", float: "float", list: "array", dict: "table"}.get(type(v), type(v).__name__)


class _Reader:
    """Collects every validation error instead of stopping at the first."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.errors: list[str] = []

    def err(self, key: str, msg: str) -> None:
        self.errors.append(f"{key}: {msg}")

    # --- tables and keys -------------------------------------------------------------------

    def table(self, doc: dict, name: str, required: bool) -> dict | None:
        """The sub-table, ``{}`` when an optional one is absent, None when missing or not a table."""
        if name not in doc:
            if required:
                self.err(name, f"required table is missing; {_HINTS[name]}")
                return None
            return {}
        value = doc[name]
        if not isinstance(value, dict):
            self.err(name, f"must be a table ([{name}]), got {_toml_type(value)}")
            return None
        return value

    def unknown(self, table: dict, prefix: str) -> None:
        known = _SCHEMA[prefix]
        for key in table:
            if key in known:
                continue
            full = f"{prefix}.{key}" if prefix else key
            close = difflib.get_close_matches(key, known, n=1)
            if close:
                self.err(full, f"unknown key; did you mean '{close[0]}'?")
                continue
            home = next((t for t, keys in _SCHEMA.items() if key in keys), None)
            if home == "":
                self.err(full, f"unknown key; did you mean top-level '{key}'? (keys after a [table] header "
                               "belong to that table: move it above the first header)")
            elif home is not None:
                self.err(full, f"unknown key; did you mean '{home}.{key}'? (put it under [{home}])")
            else:
                self.err(full, f"unknown key; known keys here: {', '.join(known)}")

    def get(self, table: dict, prefix: str, key: str, kind: type, required: bool = False) -> Any:
        full = f"{prefix}.{key}" if prefix else key
        if key not in table:
            if required:
                self.err(full, f"required key is missing; {_HINTS[full]}")
            return None
        value = table[key]
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if not ok:
            want = {str: "a string", int: "an integer", list: "an array"}[kind]
            self.err(full, f"must be {want}, got {_toml_type(value)} {value!r}")
            return None
        if kind is str and not value.strip():
            self.err(full, "must not be empty" + ("" if required else " (remove the key instead)"))
            return None
        return value

    def integer(self, table: dict, prefix: str, key: str, default: int, lo: int, hi: int) -> int:
        value = self.get(table, prefix, key, int)
        if value is None:
            return default
        if not lo <= value <= hi:
            why = ("must not be negative" if value < 0 else f"must be at least {lo}" if value < lo
                   else f"must be at most {hi}")
            self.err(f"{prefix}.{key}", f"{why}, got {value}")
            return default
        return value

    def name(self, table: dict, key: str) -> str:
        value = self.get(table, "", key, str, required=True)
        if value is not None and not NAME_RE.fullmatch(value):
            self.err(key, f"{value!r} is not 1-64 characters of A-Z a-z 0-9 _ . - "
                          "(it becomes an MQTT topic level: no '/', '+', '#' or spaces)")
        return value or ""

    def path(self, value: str) -> Path:
        p = Path(os.path.expanduser(value))
        return (p if p.is_absolute() else self.base / p).resolve()

    def path_key(self, table: dict, prefix: str, key: str, required: bool = False) -> Path | None:
        value = self.get(table, prefix, key, str, required)
        return None if value is None else self.path(value)

    def readable(self, key: str, p: Path | None) -> Path | None:
        if p is None:
            return None
        try:
            with open(p, "rb") as f:
                f.read(1)
        except OSError as exc:
            self.err(key, f"cannot read {p} ({exc.strerror or exc}): fix the path or the file's permissions")
            return None
        return p

    # --- sections --------------------------------------------------------------------------

    def build(self, doc: dict, source: Path) -> AgentConfig | None:
        self.unknown(doc, "")
        device_id = self.name(doc, "device_id")
        fleet = self.name(doc, "fleet")
        state_dir = self.path_key(doc, "", "state_dir", required=True)
        log_level = self.get(doc, "", "log_level", str) or "info"
        if log_level.lower() not in LOG_LEVELS:
            self.err("log_level", f"{log_level!r} is not one of {', '.join(LOG_LEVELS)}")
        mqtt = self.mqtt(self.table(doc, "mqtt", required=True))
        paths = self.paths(self.table(doc, "paths", required=True))
        deploy = self.deploy(self.table(doc, "deploy", required=False))
        outbox = self.outbox(self.table(doc, "outbox", required=False))
        jobs, retention = self.jobs(self.table(doc, "jobs", required=False)), self.retention(self.table(doc, "retention", required=False))
        ask = self.ask(self.table(doc, "ask", required=False))
        runtime = self.runtime(self.table(doc, "runtime", required=False))
        personalize = self.personalize(doc)
        if self.errors:
            return None
        assert state_dir is not None and mqtt is not None and paths is not None
        return AgentConfig(device_id=device_id, fleet=fleet, state_dir=state_dir, log_level=log_level.lower(),
                           mqtt=mqtt, paths=paths, deploy=deploy, outbox=outbox, source=source, jobs=jobs, retention=retention, ask=ask,
                           runtime=runtime, personalize=personalize)

    def mqtt(self, t: dict | None) -> MqttConfig | None:
        if t is None:
            return None
        self.unknown(t, "mqtt")
        url = self.get(t, "mqtt", "url", str, required=True)
        host, port, tls = self.url(url) if url is not None else (None, 0, False)
        username = self.get(t, "mqtt", "username", str)
        password = self.password(self.path_key(t, "mqtt", "password_file"))
        ca_file = self.readable("mqtt.ca_file", self.path_key(t, "mqtt", "ca_file"))
        cert_file = self.readable("mqtt.cert_file", self.path_key(t, "mqtt", "cert_file"))
        key_file = self.readable("mqtt.key_file", self.path_key(t, "mqtt", "key_file"))
        if "cert_file" in t and "key_file" not in t:
            self.err("mqtt.cert_file", "is set without mqtt.key_file: mutual TLS needs both; add key_file")
        if "key_file" in t and "cert_file" not in t:
            self.err("mqtt.key_file", "is set without mqtt.cert_file: mutual TLS needs both; add cert_file")
        if url is not None and host is not None and not tls:
            for key in ("ca_file", "cert_file", "key_file"):
                if key in t:
                    self.err(f"mqtt.{key}", "is set but mqtt.url is mqtt:// (no TLS): use mqtts:// or remove it")
        keepalive = self.integer(t, "mqtt", "keepalive", 30, 0, 65535)
        session_expiry = self.integer(t, "mqtt", "session_expiry", 86400, 0, _U32)
        will_delay = self.integer(t, "mqtt", "will_delay", 10, 0, _U32)
        max_packet = self.integer(t, "mqtt", "max_packet_size", 256 * 1024, 4096, 268_435_455)
        if host is None:
            return None
        return MqttConfig(host=host, port=port, tls=tls, username=username, password=password,
                          ca_file=ca_file, cert_file=cert_file, key_file=key_file, keepalive=keepalive,
                          session_expiry=session_expiry, will_delay=will_delay, max_packet_size=max_packet)

    def url(self, url: str) -> tuple[str | None, int, bool]:
        key = "mqtt.url"
        try:
            broker = BrokerSettings.from_url(url)
        except UsageError as exc:
            self.err(key, str(exc))
            return None, 0, False
        if broker.has_credentials:
            self.err(key, "must not contain credentials: put the user in mqtt.username and the password "
                          "in the file named by mqtt.password_file")
            return None, 0, False
        return broker.host, broker.port, broker.tls

    def password(self, p: Path | None) -> str | None:
        if p is None:
            return None
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            self.err("mqtt.password_file", f"cannot read {p} ({exc.strerror or exc}): "
                                           "fix the path or the file's permissions")
            return None
        except UnicodeDecodeError:
            self.err("mqtt.password_file", f"{p} is not UTF-8 text")
            return None
        if text.endswith("\n"):
            text = text[:-1].removesuffix("\r")
        if not text:
            self.err("mqtt.password_file", f"{p} is empty: write the password into it")
            return None
        return text

    def paths(self, t: dict | None) -> PathsConfig | None:
        if t is None:
            return None
        self.unknown(t, "paths")
        data_root = self.path_key(t, "paths", "data_root", required=True)
        bundle_root = self.path_key(t, "paths", "bundle_root", required=True)
        if data_root is None or bundle_root is None:
            return None
        return PathsConfig(data_root=data_root, bundle_root=bundle_root)

    def deploy(self, t: dict | None) -> DeployConfig:
        d = DeployConfig()
        if t is None:
            return d
        self.unknown(t, "deploy")
        keys = self.get(t, "deploy", "trusted_keys", list)
        out: list[Path] = []
        for i, value in enumerate(keys or []):
            key = f"deploy.trusted_keys[{i}]"
            if not isinstance(value, str) or not value.strip():
                self.err(key, f"must be a non-empty string path, got {_toml_type(value)} {value!r}")
                continue
            p = self.readable(key, self.path(value))
            if p is not None:
                out.append(p)
        require_signed = t.get("require_signed", d.require_signed)
        if not isinstance(require_signed, bool):
            self.err("deploy.require_signed", f"must be true or false, got {_toml_type(require_signed)} "
                                              f"{require_signed!r}")
            require_signed = d.require_signed
        file_root = self.path_key(t, "deploy", "file_root")
        if file_root is not None and not file_root.is_dir():
            self.err("deploy.file_root", f"{file_root} is not a folder: create it or fix the path "
                                         "(file:// deploys are allowed only from below it)")
            file_root = None
        return DeployConfig(trusted_keys=tuple(out), require_signed=require_signed, file_root=file_root,
                            max_bytes=self.integer(t, "deploy", "max_bytes", d.max_bytes, 1, 2**63 - 1),
                            deadline_s=self.integer(t, "deploy", "deadline_s", d.deadline_s, 1, 7 * 24 * 3600),
                            keep_replaced=self.integer(t, "deploy", "keep_replaced", d.keep_replaced, 0, 1000))

    def outbox(self, t: dict | None) -> OutboxConfig:
        d = OutboxConfig()
        if t is None:
            return d
        self.unknown(t, "outbox")
        return OutboxConfig(max_bytes=self.integer(t, "outbox", "max_bytes", d.max_bytes, 1, 2**63 - 1),
                            max_age_s=self.integer(t, "outbox", "max_age_s", d.max_age_s, 1, 2**63 - 1))

    def jobs(self, t: dict | None) -> JobsConfig:
        d = JobsConfig()
        if t is None:
            return d
        self.unknown(t, "jobs")
        return JobsConfig(max_starts=self.integer(t, "jobs", "max_starts", d.max_starts, 1, 1000))

    def ask(self, t: dict | None) -> AskConfig:
        d = AskConfig()
        if t is None:
            return d
        self.unknown(t, "ask")
        deadline = t.get("token_deadline_s")
        if deadline is not None and (isinstance(deadline, bool) or not isinstance(deadline, (int, float))
                                     or not 0.1 <= deadline <= 3600):
            self.err("ask.token_deadline_s", f"must be a number of seconds between 0.1 and 3600, got {deadline!r}")
            deadline = None
        return AskConfig(max_prompt_tokens=self.integer(t, "ask", "max_prompt_tokens", d.max_prompt_tokens, 1, 131_072),
                         queue=self.integer(t, "ask", "queue", d.queue, 0, 1000),
                         token_deadline_s=float(deadline) if deadline is not None else d.token_deadline_s)

    def runtime(self, t: dict | None) -> RuntimeConfig:
        """``[runtime]``: provider lists checked as the train options are (names this box's onnxruntime has)."""
        if t is None:
            return RuntimeConfig()
        self.unknown(t, "runtime")
        from ftedge.runtime.training.options import COMMON

        lists = {}
        for key in ("providers", "step_providers"):
            value = t.get(key)
            if value is None:
                continue
            why = COMMON[key].problem(value)
            if why:
                self.err(f"runtime.{key}", f"{why}; list the execution providers this box's onnxruntime has "
                                           "(its `meta` message names them), e.g. [\"OpenVINO\", \"CPU\"]")
            else:
                lists[key] = tuple(value)
        return RuntimeConfig(**lists)

    def personalize(self, doc: dict) -> Policy | None:
        """``[personalize]`` (absent: the box trains only when told to); every problem reported with its key."""
        if "personalize" not in doc:
            return None
        t = self.table(doc, "personalize", required=False)
        if t is None:
            return None
        policy, problems = parse_policy(t, "config")
        for problem in problems:
            key, _, what = problem.partition(": ")
            self.err(f"personalize.{key}", what)
        return policy

    def retention(self, t: dict | None) -> RetentionConfig:
        d = RetentionConfig()
        if t is None:
            return d
        self.unknown(t, "retention")
        return RetentionConfig(
            keep_runs=self.integer(t, "retention", "keep_runs", d.keep_runs, 0, 1_000_000),
            keep_versions=self.integer(t, "retention", "keep_versions", d.keep_versions, 1, 1_000_000),
            cache_max_bytes=self.integer(t, "retention", "cache_max_bytes", d.cache_max_bytes, 0, 2**63 - 1))
