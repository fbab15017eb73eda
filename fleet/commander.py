"""Commands to devices: MQTT v5 request/response over the collector's connection (``cmd/{verb}`` with a
ResponseTopic and CorrelationData; the reply arrives on the collector's own ``cmdres`` topic and is read back
from the store, so a late one can still be looked up by cmd_id). See ARCHITECTURE.md, "The MQTT contract"."""

from __future__ import annotations

import json
import math
import threading
import time
import uuid
from typing import Any

from ftedge.errors import CollectorError
from ftedge.mqtt import client as mqtt
from ftedge.mqtt.contract import cmd_topic, cmdres_topic


class CommandClient:
    """The command side of :class:`~ftedge.fleet.ingest.Collector` (which provides the client, the store, the
    settings and the reply condition variable)."""

    client: mqtt.Client
    host_id: str
    subscribed: threading.Event
    _cv: threading.Condition

    def reply_topic(self, fleet: str, device: str) -> str:
        return cmdres_topic(fleet, device, self.host_id)

    def publish_command(self, fleet: str, device: str, verb: str, args: dict[str, Any] | None = None,
                        cmd_id: str | None = None, expiry_s: int | None = None,
                        expires_ms: int | None = None) -> str:
        """Publish ``{"cmd_id", "args"}`` on ``cmd/{verb}`` (QoS 1, ResponseTopic, CorrelationData); returns
        the cmd_id. Does not wait (see :meth:`send`). ``expires_ms`` (epoch ms) goes into the body as
        ``expires``: the device refuses or stops the command after it (the sender has given up)."""
        for name, value in (("fleet", fleet), ("device", device), ("verb", verb)):
            if not isinstance(value, str) or not value or any(ch in value for ch in "/+#\0"):
                raise CollectorError(f"{name} {value!r} must be a non-empty topic segment (no / + #)")
        if args is not None and not isinstance(args, dict):
            raise CollectorError(f"command args must be a JSON object (dict), not {type(args).__name__}")
        cmd_id = cmd_id or f"{verb}-{uuid.uuid4().hex}"
        props = mqtt.publish_properties(correlation=cmd_id.encode(), response_topic=self.reply_topic(fleet, device),
                                        expiry_s=max(1, int(expiry_s or self.settings.command_expiry_s)))
        body: dict[str, Any] = {"cmd_id": cmd_id, "args": args or {}}
        if expires_ms is not None:
            body["expires"] = int(expires_ms)
        payload = json.dumps(body, separators=(",", ":")).encode()
        info = self.client.publish(cmd_topic(fleet, device, verb), payload, qos=1, retain=False,
                                   properties=props)
        if info.rc not in (mqtt.ERR_SUCCESS, mqtt.ERR_NO_CONN):   # NO_CONN: paho sends it later
            raise CollectorError(f"could not publish {verb} to {fleet}/{device}: {mqtt.error_string(info.rc)}")
        return cmd_id

    def request_resync(self, fleet: str, device: str) -> str:
        """Ask a device to republish its retained state; returns the cmd_id (``resync-<uuid>``)."""
        cmd_id = self.publish_command(fleet, device, "resync", {}, cmd_id=f"resync-{uuid.uuid4()}")
        self.stats["resyncs"] += 1
        return cmd_id

    def send(self, fleet: str, device: str, verb: str, args: dict[str, Any] | None = None,
             timeout: float = 30.0) -> dict[str, Any]:
        """Request/response: publish the command and return the device's first reply (its ``cmdres`` body:
        ``cmd_id``, ``status`` accepted/rejected/done/error, ``code``, ``detail``, …).

        Raises ``TimeoutError`` if the broker is not reachable or no reply arrives within ``timeout`` s.
        The reply is stored (``FleetStore.reply``), so a late one can still be looked up by cmd_id; only a
        reply published by ``device`` itself (on its own ``cmdres`` topic) counts.
        """
        deadline = time.monotonic() + timeout
        if self._writer is None:
            raise CollectorError("start() the collector before send()")
        if not self.subscribed.wait(timeout):   # the reply subscription must exist before the command leaves
            raise TimeoutError(self.not_connected(timeout))
        remaining = max(0.0, deadline - time.monotonic())
        cmd_id = self.publish_command(fleet, device, verb, args, expiry_s=max(1, math.ceil(remaining)),
                                      expires_ms=int((time.time() + remaining) * 1000))
        with self._cv:
            while True:
                reply = self.store.reply(cmd_id, fleet, device)
                if reply is not None:
                    return reply
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no reply from {fleet}/{device} to {verb} (cmd_id {cmd_id}) within "
                                       f"{timeout:g} s; is the device online?")
                self._cv.wait(min(remaining, 0.25))
