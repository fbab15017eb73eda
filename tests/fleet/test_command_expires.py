"""A command the collector sends on someone's behalf says when that caller gives up (`expires`), so the device
does not spend time on an answer nobody waits for (issue 33, finding 5)."""

from __future__ import annotations

import time

import pytest
from ftedge.fleet.store import FleetStore

from tests.helpers.fleet_sim import FLEET, SimDevice, wait_for


@pytest.mark.needs("mosquitto")
def test_send_sets_expires_to_the_end_of_its_reply_timeout(tmp_path, broker, running):
    col = running(FleetStore(tmp_path / "fleet.sqlite"), client_id="ops")
    dev = SimDevice(broker, "dev-a", auto_reply=False)
    before = time.time() * 1000
    with pytest.raises(TimeoutError):
        col.send(FLEET, "dev-a", "ask", {"prompt": "hi"}, timeout=2)
    after = time.time() * 1000
    assert wait_for(lambda: dev.commands, 10)
    body = dev.commands[-1][1]
    assert body["args"] == {"prompt": "hi"} and isinstance(body.get("expires"), int), body
    assert before + 1000 <= body["expires"] <= after + 100, (before, body["expires"], after)
    dev.close()
