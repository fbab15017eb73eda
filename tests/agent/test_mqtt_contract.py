"""The MQTT contract (ftedge.mqtt.contract): broker URL parsing for every caller, and the exact topic strings."""

from __future__ import annotations

import pytest
from ftedge.mqtt import contract
from ftedge.mqtt.contract import BrokerSettings

from ftedge.cli import main
from ftedge.errors import UsageError

# -- BrokerSettings.from_url: the forms every caller accepted, with their defaults -------------------------

@pytest.mark.parametrize("url,host,port,tls", [
    ("mqtt://127.0.0.1", "127.0.0.1", 1883, False),
    ("mqtt://127.0.0.1/", "127.0.0.1", 1883, False),
    ("mqtt://broker:1884", "broker", 1884, False),
    ("mqtt://broker:", "broker", 1883, False),
    ("mqtts://broker.example", "broker.example", 8883, True),
    ("mqtts://broker.example:8884", "broker.example", 8884, True),
    ("MQTTS://Broker.Example:1", "broker.example", 1, True),
    ("mqtt://[::1]:1884", "::1", 1884, False),
    ("mqtts://[::1]", "::1", 8883, True),
    ("mqtt://h:65535", "h", 65535, False),
])
def test_from_url_accepts_host_and_port(url, host, port, tls):
    b = BrokerSettings.from_url(url)
    assert (b.host, b.port, b.tls, b.username, b.password) == (host, port, tls, None, None)
    assert b.scheme == ("mqtts" if tls else "mqtt") and not b.has_credentials


def test_from_url_parses_credentials_and_keeps_the_password_out_of_repr():
    b = BrokerSettings.from_url("mqtts://dev%2D1:s3cr%40t@broker:8884")
    assert (b.host, b.port, b.tls, b.username, b.password) == ("broker", 8884, True, "dev-1", "s3cr@t")
    assert "s3cr" not in repr(b) and b.has_credentials
    assert BrokerSettings.from_url("mqtt://user@h").username == "user"
    assert BrokerSettings.from_url("mqtt://@h").has_credentials   # an empty user is still "credentials given"


@pytest.mark.parametrize("url,words", [
    ("127.0.0.1:1883", "has no scheme"),
    ("broker", "has no scheme"),
    ("http://x", "scheme 'http' is not mqtt:// or mqtts://"),
    ("ws://x:80", "scheme 'ws' is not mqtt:// or mqtts://"),
    ("mqtt://", "has no host"),
    ("mqtts://:8883", "has no host"),
    ("mqtt://h:abc", "port 'abc', which is not a number"),
    ("mqtt://h:1883x", "not a number"),
    ("mqtt://h:-1", "not a number"),
    ("mqtt://h:0", "port 0, out of range"),
    ("mqtt://h:65536", "port 65536, out of range"),
    ("mqtts://broker:99999", "out of range"),
    ("mqtt://[::1", "not a valid URL"),
    ("mqtt://x/path", "path, query or fragment"),
    ("mqtt://x?q=1", "path, query or fragment"),
    ("mqtt://x#frag", "path, query or fragment"),
])
def test_from_url_refuses_bad_urls_saying_what_to_do(url, words):
    with pytest.raises(UsageError) as info:
        BrokerSettings.from_url(url)
    msg = str(info.value)
    assert words in msg
    assert "mqtt://HOST" in msg or "1-65535" in msg   # what to write instead


def test_from_url_refuses_a_non_string():
    with pytest.raises(UsageError, match="must be a string"):
        BrokerSettings.from_url(1883)  # type: ignore[arg-type]


def test_from_url_never_shows_the_password():
    for url in ("mqtt://u:hunter2@h:abc", "mqtt://u:hunter2@h/x", "mqtt://u:hunter2@h:0", "u:hunter2@h"):
        with pytest.raises(UsageError) as info:
            BrokerSettings.from_url(url)
        assert "hunter2" not in str(info.value) and ("u:***@" in str(info.value) or "scheme" in str(info.value))
    assert contract.redact_url("mqtts://u:p@h:1/x") == "mqtts://u:***@h:1/x"
    assert contract.redact_url("mqtt://u@h") == "mqtt://u@h"


def test_allow_path_ignores_path_query_and_fragment():
    b = BrokerSettings.from_url("mqtt://h:1884/some/path?q=1#f", allow_path=True)
    assert (b.host, b.port, b.tls) == ("h", 1884, False)
    with pytest.raises(UsageError):
        BrokerSettings.from_url("mqtt://h:abc/x", allow_path=True)


# -- the three callers -----------------------------------------------------------------------------------

def test_collector_settings_from_url_keeps_its_inputs_and_error_type():
    from ftedge.fleet.ingest import CollectorSettings

    from ftedge.errors import CollectorError

    s = CollectorSettings.from_url("mqtts://broker.example:8884", client_id="c1")
    assert (s.host, s.port, s.tls, s.client_id) == ("broker.example", 8884, True, "c1")
    assert CollectorSettings.from_url("mqtt://127.0.0.1").port == 1883
    assert CollectorSettings.from_url("mqtts://[::1]").port == 8883
    for bad in ("127.0.0.1:1883", "http://x", "mqtt://u:p@x", "mqtt://u@x", "mqtt://x/path", "mqtt://h:abc",
                "mqtt://h:70000", "mqtt://h:0", "mqtt://:1883"):
        with pytest.raises(CollectorError):
            CollectorSettings.from_url(bad)


def test_agent_config_url_goes_through_the_contract(tmp_path):
    from ftedge.device_agent import config

    r = config._Reader(tmp_path)  # noqa: SLF001 - the parser the loader uses, without a whole config file
    assert r.url("mqtts://broker.example") == ("broker.example", 8883, True)
    assert r.url("mqtt://[::1]:1884") == ("::1", 1884, False)
    assert not r.errors
    for bad, words in (("mqtt://h:abc", "not a number"), ("mqtts://u:p@broker", "password_file"),
                       ("broker:1883", "mqtt://"), ("mqtt://h:0", "1-65535")):
        r = config._Reader(tmp_path)  # noqa: SLF001
        assert r.url(bad) == (None, 0, False)
        assert any(words in e for e in r.errors) and all(e.startswith("mqtt.url") for e in r.errors), r.errors


def test_fleet_cli_broker_keeps_accepting_what_it_accepted():
    from ftedge.fleet.cli import _broker

    assert _broker("mqtt://127.0.0.1:1883") == ("127.0.0.1", 1883, False)
    assert _broker("mqtts://broker") == ("broker", 8883, True)
    assert _broker("mqtt://user:pw@broker:1884/x") == ("broker", 1884, False)   # ignored, as it always was
    for bad in ("http://x", "broker:1883", "mqtt://", "mqtt://h:abc", "mqtt://h:65536"):
        with pytest.raises(UsageError, match="--broker"):
            _broker(bad)


@pytest.mark.parametrize("argv", [
    ["fleet", "send", "dev-001", "ping"],
    ["fleet", "serve", "--db", "{tmp}/f.sqlite"],
    ["fleet", "train", "--devices", "a", "--bundle", "b", "--data", "d"],
])
@pytest.mark.parametrize("url", ["mqtt://h:abc", "mqtt://h:99999", "mqtt://h:0", "mqtt://[::1"])
def test_cli_bad_broker_port_is_an_error_line_not_a_traceback(argv, url, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    rc = main([*argv, "--broker", url])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("error: --broker: broker URL") and "Traceback" not in err and "internal error" not in err
    assert "1-65535" in err or "mqtt://HOST" in err


# -- topics ------------------------------------------------------------------------------------------------

def test_topic_builders_give_the_exact_strings():
    assert contract.TOPIC_ROOT == "ftedge/v1"
    assert contract.device_prefix("demo", "dev-001") == "ftedge/v1/demo/dev-001/"
    assert contract.device_topic("demo", "dev-001", contract.STATUS) == "ftedge/v1/demo/dev-001/status"
    assert contract.device_topic("demo", "dev-001", contract.META) == "ftedge/v1/demo/dev-001/meta"
    assert contract.device_topic("demo", "dev-001", contract.JOB) == "ftedge/v1/demo/dev-001/job"
    assert contract.job_topic("demo", "dev-001", "j1", contract.PROGRESS) == "ftedge/v1/demo/dev-001/jobs/j1/progress"
    assert contract.job_suffix("j1", contract.RESULT) == "jobs/j1/result"
    assert contract.cmd_topic("demo", "dev-007", "resync") == "ftedge/v1/demo/dev-007/cmd/resync"
    assert contract.cmd_subscription("demo", "dev-001") == "ftedge/v1/demo/dev-001/cmd/+"
    assert contract.cmdres_topic("demo", "dev-007", "fleet-host-1") == "ftedge/v1/demo/dev-007/cmdres/fleet-host-1"
    assert contract.collector_subscriptions("h1") == ["ftedge/v1/+/+/#"]
    assert contract.collector_subscriptions("h1", share="g1") == ["$share/g1/ftedge/v1/+/+/#", "ftedge/v1/+/+/cmdres/h1"]
    assert contract.collector_subscriptions("h1", share="g1", listen=False) == ["ftedge/v1/+/+/cmdres/h1"]
    assert contract.collector_subscriptions("h1", listen=False) == ["ftedge/v1/+/+/cmdres/h1"]
    assert contract.MESSAGE_KINDS == ("status", "meta", "job", "progress", "result", "cmdres")
    assert contract.DEVICE_WRITES == ("status", "meta", "job", "jobs/#", "cmdres/#")
    assert contract.DEVICE_READS == ("cmd/#",)
    assert contract.COLLECTOR_READS == ("ftedge/v1/#",) and contract.COLLECTOR_WRITES == ("ftedge/v1/+/+/cmd/#",)


def test_the_collector_and_agent_use_the_contract():
    from ftedge.device_agent.config import topic_root
    from ftedge.device_agent.outbox import KINDS
    from ftedge.fleet.acl import DEVICE_READS, DEVICE_WRITES, render_acl
    from ftedge.fleet.ingest import Collector, CollectorSettings
    from ftedge.fleet.store import TOPIC_ROOT, FleetStore

    assert TOPIC_ROOT == contract.TOPIC_ROOT and KINDS == contract.MESSAGE_KINDS
    assert (DEVICE_WRITES, DEVICE_READS) == (contract.DEVICE_WRITES, contract.DEVICE_READS)

    class Cfg:
        fleet, device_id = "demo", "dev-001"

    assert topic_root(Cfg()) == "ftedge/v1/demo/dev-001/"  # type: ignore[arg-type]
    col = Collector(FleetStore(":memory:"), settings=CollectorSettings(client_id="fleet-host-1", share="g1"))
    assert col.subscriptions == ["$share/g1/ftedge/v1/+/+/#", "ftedge/v1/+/+/cmdres/fleet-host-1"]
    assert col.reply_topic("demo", "dev-007") == "ftedge/v1/demo/dev-007/cmdres/fleet-host-1"
    assert render_acl([("demo", "box-1")]).split("\n")[3:] == [
        "user collector", "topic read ftedge/v1/#", "topic write ftedge/v1/+/+/cmd/#", "",
        "user box-1", "topic write ftedge/v1/demo/box-1/status", "topic write ftedge/v1/demo/box-1/meta",
        "topic write ftedge/v1/demo/box-1/job", "topic write ftedge/v1/demo/box-1/jobs/#",
        "topic write ftedge/v1/demo/box-1/cmdres/#", "topic read ftedge/v1/demo/box-1/cmd/#", ""]
