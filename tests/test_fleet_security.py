"""The collector side of security: mutual TLS + passwords + ACL against a real Mosquitto and a real agent."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from broker import Broker
from ftedge.cli import main
from ftedge.fleet.ingest import Collector
from ftedge.fleet.store import FleetStore
from test_agent import AgentProc

pytestmark = pytest.mark.skipif(not Path("/usr/sbin/mosquitto").exists() and not shutil.which("mosquitto"),
                                reason="mosquitto not installed (scripts/dev.sh installs it)")

ACL = ("user collector\ntopic read ftedge/v1/#\ntopic write ftedge/v1/+/+/cmd/#\n"
       "pattern readwrite ftedge/v1/+/%u/#\n")


def test_collector_ingests_and_sends_over_mutual_tls_with_credentials(tmp_path, capsys):
    b = Broker(tmp_path / "broker", users={"dev-001": "d3v", "collector": "c0l"}, acl=ACL, tls=True,
               require_certificate=True).start()
    c = b.certs
    (tmp_path / "dev.pass").write_text("d3v\n")
    (tmp_path / "col.pass").write_text("c0l\n")
    (tmp_path / "bad.pass").write_text("nope\n")
    for d in ("data", "bundles"):
        (tmp_path / d).mkdir()
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'device_id = "dev-001"\nfleet = "demo"\nstate_dir = "{tmp_path / "state"}"\n[mqtt]\n'
                   f'url = "{b.url}"\nusername = "dev-001"\npassword_file = "{tmp_path / "dev.pass"}"\n'
                   f'ca_file = "{c["ca.crt"]}"\ncert_file = "{c["client.crt"]}"\nkey_file = "{c["client.key"]}"\n'
                   f'[paths]\ndata_root = "{tmp_path / "data"}"\nbundle_root = "{tmp_path / "bundles"}"\n')
    tls = ["--ca-file", str(c["ca.crt"]), "--cert-file", str(c["client.crt"]), "--key-file", str(c["client.key"])]
    store = FleetStore(tmp_path / "fleet.sqlite")
    col = Collector(store, host="127.0.0.1", port=b.port, tls=True, username="collector", password="c0l",
                    ca_file=str(c["ca.crt"]), cert_file=str(c["client.crt"]), key_file=str(c["client.key"]),
                    client_id="fleet-tls").start()
    agent = AgentProc(cfg, tmp_path / "agent.log")
    try:
        deadline = time.time() + 30
        while not any(d["state"] == "online" for d in store.devices()) and time.time() < deadline:
            time.sleep(0.1)
        assert [d["device"] for d in store.devices() if d["state"] == "online"] == ["dev-001"], agent.text()[-2000:]

        assert main(["fleet", "send", "dev-001", "ping", "--broker", b.url, "--username", "collector",
                     "--password-file", str(tmp_path / "col.pass"), *tls]) == 0
        assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["status"] == "done"

        # wrong password, or no client certificate: no connection, so no command leaves; a clear error
        assert main(["fleet", "send", "dev-001", "ping", "--broker", b.url, "--username", "collector",
                     "--password-file", str(tmp_path / "bad.pass"), *tls, "--timeout", "3"]) == 1
        err = capsys.readouterr().err
        assert "not connected to the broker" in err and "refused the connection: Not authorized" in err
        assert "check --username/--password-file" in err
        assert main(["fleet", "send", "dev-001", "ping", "--broker", b.url, "--username", "collector",
                     "--password-file", str(tmp_path / "col.pass"), "--ca-file", str(c["ca.crt"]),
                     "--timeout", "3"]) == 1
        assert "not connected to the broker" in capsys.readouterr().err
        assert "not authorised" in b.log(), "the broker refused the wrong password"
    finally:
        agent.stop()
        col.stop()
        store.close()
        b.stop()
