"""The collector side of security: mutual TLS + passwords + ACL against a real Mosquitto and a real agent."""

from __future__ import annotations

import json
import time

import pytest
from ftedge.fleet.ingest import Collector
from ftedge.fleet.store import FleetStore

from ftedge.cli import main
from tests.helpers.agent_harness import AgentProc
from tests.helpers.broker import Broker
from tests.helpers.common import ROOT

pytestmark = pytest.mark.needs("mosquitto")

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
                     "--password-file", str(tmp_path / "bad.pass"), *tls, "--timeout", "3"]) == 5, "broker unreachable"
        err = capsys.readouterr().err
        assert "not connected to the broker" in err and "refused the connection: Not authorized" in err
        assert "check --username/--password-file" in err
        assert main(["fleet", "send", "dev-001", "ping", "--broker", b.url, "--username", "collector",
                     "--password-file", str(tmp_path / "col.pass"), "--ca-file", str(c["ca.crt"]),
                     "--timeout", "3"]) == 5
        assert "not connected to the broker" in capsys.readouterr().err
        assert "not authorised" in b.log(), "the broker refused the wrong password"
    finally:
        agent.stop()
        col.stop()
        store.close()
        b.stop()


# -- issue 12, finding 10: the ACL pins each device to its fleet and its own subtree -----------------------------

class _Client:
    """A plain MQTT v5 client that records what it receives."""

    def __init__(self, broker: Broker, user: str, password: str, subscribe: list[str]) -> None:
        import threading

        import paho.mqtt.client as mqtt

        self.got: list[tuple[str, bool]] = []
        self.granted: list[bool] = []
        self.ready = threading.Event()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{user}-{len(subscribe)}-{id(self)}",
                        protocol=mqtt.MQTTv5)
        c.username_pw_set(user, password)
        c.on_connect = lambda cl, *_: cl.subscribe([(t, 1) for t in subscribe]) if subscribe else self.ready.set()
        c.on_subscribe = lambda cl, u, mid, codes, p: (self.granted.extend(not rc.is_failure for rc in codes),
                                                       self.ready.set())
        c.on_message = lambda cl, u, m: self.got.append((m.topic, bool(m.retain)))
        c.connect("127.0.0.1", broker.port, keepalive=30)
        c.loop_start()
        self.client = c
        assert self.ready.wait(10), f"{user} could not connect"

    def publish(self, topic: str, retain: bool = False) -> None:
        self.client.publish(topic, b'{"probe": true}', qos=1, retain=retain).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _wait(cond, timeout: float = 10.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline and not cond():
        time.sleep(0.02)
    return bool(cond())


@pytest.mark.parametrize("source", ["generated", "shipped"])
def test_acl_pins_each_device_to_its_fleet_and_its_own_subtree(tmp_path, capsys, source):
    if source == "generated":
        assert main(["fleet", "acl", "--fleet", "demo", "--devices", "dev-001,dev-002"]) == 0
        acl = capsys.readouterr().out
    else:
        acl = (ROOT / "examples" / "agent" / "ftedge.acl").read_text()
    b = Broker(tmp_path / "broker", users={"dev-001": "p1", "dev-002": "p2", "collector": "pc"}, acl=acl).start()
    clients: list[_Client] = []
    try:
        watch = _Client(b, "collector", "pc", ["ftedge/v1/#"])
        dev = _Client(b, "dev-001", "p1", ["ftedge/v1/demo/dev-001/cmd/+"])   # what the agent subscribes
        snoop = _Client(b, "dev-001", "p1", ["ftedge/v1/#", "ftedge/v1/demo/dev-002/cmd/#",
                                              "ftedge/v1/other/dev-001/cmd/#"])
        clients += [watch, dev, snoop]
        assert dev.granted == [True], "the agent's own command subscription is allowed"
        # (Mosquitto 2.0 grants such subscriptions; the read ACL filters every delivery: checked below)

        # a device publishes only its own contract topics in its own fleet
        for topic, retain in (("ftedge/v1/other/dev-001/status", True),      # posing in another fleet
                              ("ftedge/v1/demo/dev-002/status", True),       # posing as another device
                              ("ftedge/v1/demo/dev-001/cmd/deploy", True),   # a retained command to itself
                              ("ftedge/v1/demo/dev-001/cmd/train", False),
                              ("ftedge/v1/demo/dev-001/anything", False)):
            dev.publish(topic, retain)
        own = ("status", "meta", "job", "jobs/j1/progress", "jobs/j1/result", "cmdres/ftedge-fleet-host")
        for suffix in own:
            dev.publish(f"ftedge/v1/demo/dev-001/{suffix}")
        assert _wait(lambda: len(watch.got) >= len(own)), watch.got
        assert [t for t, _ in watch.got] == [f"ftedge/v1/demo/dev-001/{s}" for s in own]
        assert not dev.got, "its own publish to cmd/ was refused"

        # commands reach only the device they are for
        for topic in ("ftedge/v1/demo/dev-002/cmd/ping", "ftedge/v1/other/dev-001/cmd/ping",
                      "ftedge/v1/demo/dev-001/cmd/ping"):
            watch.publish(topic)
        assert _wait(lambda: dev.got), "the collector may command the device"
        assert dev.got == [("ftedge/v1/demo/dev-001/cmd/ping", False)]
        assert {t for t, _ in snoop.got} <= {"ftedge/v1/demo/dev-001/cmd/ping"}, "only its own commands"
        late = _Client(b, "dev-001", "p1", ["ftedge/v1/demo/dev-001/cmd/+"])
        clients.append(late)
        watch.publish("ftedge/v1/demo/dev-001/cmd/status")   # a sentinel: retained replays come before it
        assert _wait(lambda: late.got)
        assert late.got == [("ftedge/v1/demo/dev-001/cmd/status", False)], "no retained command waits for it"
    finally:
        for c in clients:
            c.close()
        b.stop()


def test_acl_command_reads_a_device_list_and_refuses_bad_names(tmp_path, capsys):
    listing = tmp_path / "devices.txt"
    listing.write_text("# fleet device\ndemo dev-001\nlab  box-7\n\n")
    assert main(["fleet", "acl", "--from", str(listing), "--collector", "ops"]) == 0
    acl = capsys.readouterr().out
    assert "user ops\n" in acl and "user dev-001\n" in acl and "user box-7\n" in acl
    assert "topic read ftedge/v1/lab/box-7/cmd/#" in acl and "pattern" not in acl
    for bad in (["--fleet", "demo", "--devices", "dev+1"], ["--fleet", "de/mo", "--devices", "d"],
                ["--fleet", "demo", "--devices", "dev-001,dev-001"], ["--devices", "d"]):
        assert main(["fleet", "acl", *bad]) == 2, bad
        assert "error:" in capsys.readouterr().err
    listing.write_text("demo dev-001\nlab dev-001\n")   # one username cannot belong to two fleets
    assert main(["fleet", "acl", "--from", str(listing)]) == 2
    assert "dev-001" in capsys.readouterr().err


# -- issue 12, finding 19: HTTP token, Host header, timeouts, secrets in reprs --------------------------------------

def _http(url: str, method: str = "GET", token: str | None = None, host: str | None = None,
          body: bytes | None = None) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=body, method=method)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    if host is not None:
        req.add_header("Host", host)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("how", ["file", "env"])
def test_serve_reads_the_http_token_from_a_file_or_the_environment(tmp_path, how):
    import os
    import subprocess
    import sys

    b = Broker(tmp_path / "broker").start()
    port = _free_port()
    cmd = [sys.executable, "-m", "ftedge", "fleet", "serve", "--broker", b.url, "--http", f"127.0.0.1:{port}",
           "--db", str(tmp_path / "fleet.sqlite")]
    environ = {k: v for k, v in os.environ.items() if k != "FTEDGE_FLEET_TOKEN"}
    if how == "file":
        (tmp_path / "token").write_text("s3cret-t0ken\n")
        cmd += ["--token-file", str(tmp_path / "token")]
    else:
        environ["FTEDGE_FLEET_TOKEN"] = "s3cret-t0ken"
    proc = subprocess.Popen(cmd, env=environ, stderr=subprocess.PIPE, text=True)
    try:
        assert "dashboard" in proc.stderr.readline()
        url = f"http://127.0.0.1:{port}/api/devices/dev-404/commands/ping"
        code, body = _http(url, "POST", token="s3cret-t0ken", body=b"{}")
        assert code == 404 and "unknown device" in body, "the token was accepted"
        code, body = _http(url, "POST", token="s3cret-t0kem", body=b"{}")
        assert code == 401 and "wrong bearer token" in body
        assert _http(url, "POST", body=b"{}")[0] == 401
    finally:
        proc.terminate()
        proc.wait(20)
        proc.stderr.close()
        b.stop()


def test_serve_refuses_two_token_sources(tmp_path, capsys, monkeypatch):
    (tmp_path / "token").write_text("a\n")
    monkeypatch.setenv("FTEDGE_FLEET_TOKEN", "b")
    assert main(["fleet", "serve", "--broker", "mqtt://127.0.0.1:1", "--db", str(tmp_path / "f.sqlite"),
                 "--token-file", str(tmp_path / "token")]) == 2
    assert "FTEDGE_FLEET_TOKEN" in capsys.readouterr().err
    (tmp_path / "empty").write_text("\n")
    monkeypatch.delenv("FTEDGE_FLEET_TOKEN")
    assert main(["fleet", "serve", "--broker", "mqtt://127.0.0.1:1", "--db", str(tmp_path / "f.sqlite"),
                 "--token-file", str(tmp_path / "empty")]) == 2
    assert "is empty" in capsys.readouterr().err


def test_http_rejects_unknown_host_headers(tmp_path):
    from ftedge.fleet.http import FleetHTTPServer

    store = FleetStore(tmp_path / "fleet.sqlite")
    srv = FleetHTTPServer(store, "127.0.0.1", 0, token="t", allowed_hosts=["fleet.example.org"]).start()
    try:
        port = srv.httpd.server_address[1]
        for host in (f"127.0.0.1:{port}", "localhost", f"localhost:{port}", "fleet.example.org",
                     f"FLEET.example.org:{port}", "[::1]:8080"):
            assert _http(srv.url + "/api/devices", host=host)[0] == 200, host
        for host in ("attacker.example", f"attacker.example:{port}", "fleet.example.org.attacker.example", ""):
            code, body = _http(srv.url + "/api/devices", host=host)
            assert code == 421 and "--allow-host" in body, (host, code, body)
            assert _http(srv.url + "/", host=host)[0] == 421
            assert _http(srv.url + "/api/devices/d/commands/ping", "POST", token="t", host=host,
                         body=b"{}")[0] == 421
    finally:
        srv.stop()
        store.close()


def test_http_closes_idle_connections_and_refuses_huge_bodies(tmp_path):
    import socket

    from ftedge.fleet.http import FleetHTTPServer

    store = FleetStore(tmp_path / "fleet.sqlite")
    srv = FleetHTTPServer(store, "127.0.0.1", 0, token="t", timeout_s=1.0).start()
    try:
        with socket.create_connection(srv.httpd.server_address[:2], timeout=15) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")   # and then nothing more
            while s.recv(65536):   # the server hangs up (socket.timeout here would mean it never does)
                pass
        code, body = _http(srv.url + "/api/devices/d/commands/ping", "POST", token="t", body=b"{" + b" " * 70000 + b"}")
        assert code == 413 and "too large" in body
    finally:
        srv.stop()
        store.close()


def test_reprs_do_not_show_secrets(tmp_path):
    from ftedge.fleet.http import FleetHTTPServer
    from ftedge.fleet.ingest import CollectorSettings

    s = CollectorSettings(username="collector", password="pa55word-xyz")
    assert "pa55word-xyz" not in repr(s) and "collector" in repr(s)
    col = Collector(FleetStore(":memory:"), s)
    assert "pa55word-xyz" not in repr(col.settings)
    store = FleetStore(tmp_path / "f.sqlite")
    srv = FleetHTTPServer(store, "127.0.0.1", 0, token="t0k3n-xyz")
    assert "t0k3n-xyz" not in repr(srv)
    srv.httpd.server_close()
    store.close()
    from ftedge.device_agent.mqtt_link import (
        LinkSettings,  # the agent's side of the same rule
    )

    link = LinkSettings(host="h", port=1883, client_id="c", username="dev-001", password="pa55word-xyz")
    assert "pa55word-xyz" not in repr(link) and "dev-001" in repr(link)
