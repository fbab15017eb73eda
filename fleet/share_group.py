"""The collectors' MQTT v5 share-group name: a secret, because anyone who knows it can take messages.

Mosquitto's ``acl_file`` checks what a client may *receive*, not what it may *subscribe* to: any broker user
(a device) that subscribes to ``$share/GROUP/ftedge/v1/+/+/#`` joins the group, and the broker hands it its
round-robin share of the fleet's telemetry — with n collectors, a device holding k sessions takes k/(n+k) of
every message, which the ACL then refuses to deliver to it, so the collectors never see them. The group name
is the only thing keeping devices out (deploy/README.md, "Security", gives brokers that check subscriptions).

``ftedge fleet serve --share-group`` therefore refuses the names this project ever shipped as examples and
names with fewer than :data:`MIN_RANDOM_CHARS` letters and digits; :func:`generate` makes a good one
(``ftedge fleet share-group``). Whether a long name was picked at random cannot be told from the name.
"""

from __future__ import annotations

import re
import secrets

from ftedge.errors import UsageError

MIN_RANDOM_CHARS = 16    # letters and digits a share-group name needs at least
MIN_DISTINCT_CHARS = 6   # ... of which this many different ones ("aaaa…" is no secret)
GENERATED_HEX = 32       # hex digits of a generated name (128 bits)

# Every name the docs, compose file, env example, CLI help, tests or bench ever showed: public, so refused.
EXAMPLE_NAMES = frozenset(n.lower() for n in (
    "ftedge-compose", "ftedge-CHANGE-ME-4f9c2e", "ftedge-4f9c2e", "fleet", "fleetgrp", "bench", "g1"))
_PLACEHOLDER = re.compile(r"change[-_.]?me|example|placeholder", re.IGNORECASE)
_NAME = re.compile(r"[A-Za-z0-9._-]+")

HOW_TO = "generate one with `ftedge fleet share-group` (or `openssl rand -hex 16`) and give every collector of " \
         "the fleet the same one"


def generate() -> str:
    """A fresh random share-group name: ``ftedge-`` and 32 hex digits."""
    return f"ftedge-{secrets.token_hex(GENERATED_HEX // 2)}"


def check(name: str) -> str:
    """``name`` if it may be a share group; else a UsageError saying why and what to do."""
    if not _NAME.fullmatch(name or ""):
        raise UsageError(f"--share-group {name!r} must be a non-empty name of letters, digits, . _ -; {HOW_TO}")
    if name.lower() in EXAMPLE_NAMES or _PLACEHOLDER.search(name):
        raise UsageError(f"--share-group {name!r} is an example name from the ftedge docs: any device that "
                         f"knows it can subscribe to the group and take a share of the fleet's telemetry; {HOW_TO}")
    alnum = [c for c in name if c.isalnum()]
    if len(alnum) < MIN_RANDOM_CHARS or len({c.lower() for c in alnum}) < MIN_DISTINCT_CHARS:
        raise UsageError(f"--share-group {name!r} is guessable: it needs at least {MIN_RANDOM_CHARS} random letters "
                         f"and digits (a device that guesses it takes a share of the fleet's telemetry); {HOW_TO}")
    return name
