"""The MQTT v5 contract between a device agent and the fleet collector: topics, kinds, broker URLs.

Topic tree (every level below the root is a name of letters, digits, ``. _ -``)::

    ftedge/v1/{fleet}/{device}/status                  retained state, and the Last Will (seq 0)
    ftedge/v1/{fleet}/{device}/meta                    retained device description
    ftedge/v1/{fleet}/{device}/job                     retained snapshot of the current job
    ftedge/v1/{fleet}/{device}/jobs/{job}/progress     per epoch
    ftedge/v1/{fleet}/{device}/jobs/{job}/result       once per job
    ftedge/v1/{fleet}/{device}/cmd/{verb}              collector → device (request, ResponseTopic set)
    ftedge/v1/{fleet}/{device}/cmdres/{host}           device → collector (the reply to a command)

A broker is named by a URL ``mqtt://[user[:pass]@]HOST[:PORT]`` (default port 1883) or
``mqtts://…`` (TLS, default port 8883): :meth:`BrokerSettings.from_url` is the only parser of it.
Callers decide whether credentials in the URL are allowed (the agent config and the collector refuse them).

This module imports nothing of ftedge but :mod:`ftedge.errors`, and no MQTT client.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from ftedge.errors import UsageError

TOPIC_ROOT = "ftedge/v1"
# Every device message is a JSON object carrying this envelope: contract version, epoch ms, device name, boot
# id, per-boot sequence number (0 is the Last Will), and whether it is an outbox replay.
ENVELOPE_KEYS = ("v", "ts", "dev", "boot", "seq", "hist")

# -- message kinds and the topic levels they use --------------------------------------------------------
STATUS = "status"
META = "meta"
JOB = "job"
JOBS = "jobs"          # jobs/{job}/{progress|result}
PROGRESS = "progress"
RESULT = "result"
CMD = "cmd"            # cmd/{verb}
CMDRES = "cmdres"      # cmdres/{host}

# What a device publishes (the outbox's kinds, in this order); progress and result go under jobs/{job}/.
MESSAGE_KINDS = (STATUS, META, JOB, PROGRESS, RESULT, CMDRES)
JOB_KINDS = (PROGRESS, RESULT)

# Topic filters below a device's prefix: what a device may write and read (the broker ACL).
DEVICE_WRITES = (STATUS, META, JOB, f"{JOBS}/#", f"{CMDRES}/#")
DEVICE_READS = (f"{CMD}/#",)
# What a collector may read and write.
COLLECTOR_READS = (f"{TOPIC_ROOT}/#",)
COLLECTOR_WRITES = (f"{TOPIC_ROOT}/+/+/{CMD}/#",)
ALL_DEVICES = f"{TOPIC_ROOT}/+/+/#"   # every message of every device of every fleet


# Personalization (issue 36): why a job ran (a result's ``trigger``), and the states of a device's local policy
# (``meta.personalize.state.state``). The fleet refuses any other value (they become Prometheus labels).
TRIGGERS = ("command", "policy")
POLICY_STATES = ("disabled", "waiting_data", "waiting_interval", "waiting_window", "waiting_idle", "waiting_power",
                 "waiting_quota", "waiting_rollout", "busy", "running", "error")
POLICY_VERB = "policy"   # cmd/policy: show, set, clear or check a device's policy (docs/mqtt.md)
MAX_REASON = 1024        # characters of a result's trigger_reason and of a policy state's reason: the fleet refuses
                         # a longer one (the whole message), so an agent cuts its reasons to this


# -- topic builders --------------------------------------------------------------------------------------

def device_prefix(fleet: str, device: str) -> str:
    """``ftedge/v1/{fleet}/{device}/``: the prefix of every topic of one device (trailing slash included)."""
    return f"{TOPIC_ROOT}/{fleet}/{device}/"


def device_topic(fleet: str, device: str, suffix: str) -> str:
    """``ftedge/v1/{fleet}/{device}/{suffix}``, e.g. suffix ``status``."""
    return device_prefix(fleet, device) + suffix


def job_topic(fleet: str, device: str, job: str, kind: str) -> str:
    """``ftedge/v1/{fleet}/{device}/jobs/{job}/{kind}`` (kind ``progress`` or ``result``)."""
    return device_topic(fleet, device, job_suffix(job, kind))


def job_suffix(job: str, kind: str) -> str:
    """``jobs/{job}/{kind}``: the part of a job message's topic below the device prefix."""
    return f"{JOBS}/{job}/{kind}"


def cmd_topic(fleet: str, device: str, verb: str) -> str:
    """``ftedge/v1/{fleet}/{device}/cmd/{verb}``: where a command to one device is published."""
    return device_topic(fleet, device, f"{CMD}/{verb}")


def cmd_subscription(fleet: str, device: str) -> str:
    """``ftedge/v1/{fleet}/{device}/cmd/+``: what a device subscribes to (its own commands)."""
    return device_topic(fleet, device, f"{CMD}/+")


def cmdres_topic(fleet: str, device: str, host: str) -> str:
    """``ftedge/v1/{fleet}/{device}/cmdres/{host}``: the ResponseTopic of a command sent by collector ``host``."""
    return device_topic(fleet, device, f"{CMDRES}/{host}")


def collector_reply_subscription(host: str) -> str:
    """``ftedge/v1/+/+/cmdres/{host}``: every reply to the commands collector ``host`` sent."""
    return f"{TOPIC_ROOT}/+/+/{CMDRES}/{host}"


def shared(group: str, topic_filter: str) -> str:
    """``$share/{group}/{topic_filter}``: an MQTT v5 shared subscription."""
    return f"$share/{group}/{topic_filter}"


def collector_subscriptions(host: str, share: str | None = None, listen: bool = True) -> list[str]:
    """The subscriptions of collector ``host``.

    ``listen=False`` (a one-shot ``send``): only its replies. ``share="GROUP"``: the shared subscription
    ``$share/GROUP/ftedge/v1/+/+/#`` plus its own replies (a shared one may hand them to another member).
    Otherwise ``ftedge/v1/+/+/#``, which includes its replies.
    """
    own = collector_reply_subscription(host)
    if not listen:
        return [own]
    if share:
        return [shared(share, ALL_DEVICES), own]
    return [ALL_DEVICES]


# -- broker URLs -----------------------------------------------------------------------------------------

SCHEMES = {"mqtt": 1883, "mqtts": 8883}   # scheme -> default port; mqtts is TLS
URL_USAGE = "write mqtt://HOST[:PORT], or mqtts://HOST[:PORT] for TLS"


@dataclass(frozen=True)
class BrokerSettings:
    """Where the broker is: host, port, TLS, and the credentials the URL carried (if any)."""

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)   # never in a repr or a log line

    @property
    def scheme(self) -> str:
        return "mqtts" if self.tls else "mqtt"

    @property
    def has_credentials(self) -> bool:
        """The URL named a user or a password (``user@``, ``user:pass@``, even an empty ``@``)."""
        return self.username is not None or self.password is not None

    @classmethod
    def from_url(cls, url: str, *, allow_path: bool = False) -> BrokerSettings:
        """Parse ``mqtt://[user[:pass]@]HOST[:PORT]`` (default port 1883) or ``mqtts://…`` (TLS, 8883).

        The scheme is case-insensitive, an IPv6 host is written in brackets (``mqtt://[::1]:1884``), a
        trailing ``/`` is allowed, user and password are percent-decoded. A path, query or fragment is
        refused unless ``allow_path`` (then it is ignored). Raises :class:`~ftedge.errors.UsageError` saying
        what is wrong and what to write instead; a password in the URL is never shown in it.
        """
        if not isinstance(url, str):
            raise UsageError(f"the broker URL must be a string, not {type(url).__name__}; {URL_USAGE}")
        shown = redact_url(url)
        if "://" not in url:
            raise UsageError(f"broker URL {shown!r} has no scheme; {URL_USAGE}")
        try:
            parts = urlsplit(url)
        except ValueError as exc:   # e.g. an unclosed IPv6 bracket
            raise UsageError(f"broker URL {shown!r} is not a valid URL ({exc}); {URL_USAGE}") from None
        if parts.scheme not in SCHEMES:
            raise UsageError(f"broker URL scheme {parts.scheme!r} is not mqtt:// or mqtts://; {URL_USAGE}")
        if not allow_path and (parts.path not in ("", "/") or parts.query or parts.fragment):
            raise UsageError(f"broker URL {shown!r} has a path, query or fragment; {URL_USAGE}")
        if not parts.hostname:
            raise UsageError(f"broker URL {shown!r} has no host; {URL_USAGE}")
        port = _port(parts.netloc, shown)
        username = None if parts.username is None else unquote(parts.username)
        password = None if parts.password is None else unquote(parts.password)
        return cls(host=parts.hostname, port=port or SCHEMES[parts.scheme], tls=parts.scheme == "mqtts",
                   username=username, password=password)


def _port(netloc: str, shown: str) -> int | None:
    """The explicit port of ``netloc`` (None if there is none), checked to be 1-65535."""
    hostport = netloc.rpartition("@")[2]
    if hostport.startswith("["):
        hostport = hostport.partition("]")[2]
    raw = hostport.partition(":")[2]
    if not raw:
        return None
    if not (raw.isascii() and raw.isdigit()):
        raise UsageError(f"broker URL {shown!r} has port {raw!r}, which is not a number; write a port 1-65535, "
                         "e.g. mqtt://HOST:1883")
    port = int(raw)
    if not 1 <= port <= 65535:
        raise UsageError(f"broker URL {shown!r} has port {port}, out of range; use a port 1-65535")
    return port


def redact_url(url: str) -> str:
    """``url`` with the password of its ``user:pass@`` part replaced by ``***`` (for messages and logs)."""
    if not isinstance(url, str):
        return repr(url)
    head, sep, rest = url.partition("://")
    if not sep:
        head, rest = "", url
    cut = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    netloc, tail = rest[:cut], rest[cut:]
    userinfo, at, hostport = netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return f"{head}{sep}{userinfo.partition(':')[0]}:***@{hostport}{tail}"
