"""Issue 36, fleet side: the fleet sees how every box personalizes itself.

Simulated devices (real MQTT messages through a real Mosquitto, tests/helpers/fleet_sim.py) publish metas with their
policy's state and results of policy-triggered, warm-started jobs; a real collector stores them in SQLite or
PostgreSQL. Then the device page shows the policy and the history (escaped), /metrics counts runs and promotions by
trigger and devices by policy state, `fleet status --json` and `fleet policy` show the state, and `fleet policy
--set-json/--set/--clear/--check` send the `policy` verb (docs/mqtt.md) and print the device's reply.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request

import pytest
from ftedge.cli import main
from ftedge.fleet.http import FleetHTTPServer
from ftedge.fleet.store import FleetStore
from ftedge.fleet.validate import MAX_LINE, POLICY_KEYS
from ftedge.mqtt.contract import POLICY_STATES, TRIGGERS

from tests.helpers.fleet_sim import FLEET, SimDevice, env, msg, wait_for

EVIL = '<script>alert("x")</script>'


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _state(state: str, reason: str, **extra) -> dict:
    return {"state": state, "reason": reason, "samples": 64, "new_samples": 24, "next_eligible_ms": 1_767_056_400_000,
            "checked_ms": 1_767_000_000_000, "runs_24h": 1, "last_run": {"job": "pol-2", "at_ms": 1_766_990_000_000},
            "removed": {"samples": 3, "bytes": 1200}, **extra}


POLICY = {"bundle": "kws", "data": "user", "enabled": True, "min_new_samples": 20, "min_interval_h": 24.0,
          "window": "01:00-05:00", "max_load": 0.5, "on_battery": False, "max_runs_per_day": 2, "options": {"auto": True},
          "warm_start": True, "max_samples_per_label": 0, "max_bytes": 0, "check_interval_s": 60.0,
          "hold_after_rollout_s": 900.0, "source": "fleet"}


def _result(job: str, untuned: float, tuned: float, promoted: bool, version: str | None, **extra) -> dict:
    return {"job": job, "status": "succeeded", "promoted": promoted, "version": version, "task": "classify",
            "final": {"accuracy": tuned}, "baseline": {"accuracy": untuned}, "duration_s": 3.0,
            "headline": {"metric": "accuracy", "label": "accuracy", "higher_is_better": True, "tuned": tuned,
                         "untuned": untuned}, **extra}


def _publish_history(dev: SimDevice) -> None:
    """A box whose first job came from a command (an agent from before issue 36: no trigger), then two policy runs:
    one promoted, one that did not beat the active model."""
    dev.publish("status", {"state": "online", "reason": "birth"}, retain=True)
    dev.publish("jobs/cmd-1/result", _result("cmd-1", 0.70, 0.80, True, "v0002"))
    dev.publish("jobs/pol-1/result", _result(
        "pol-1", 0.70, 0.86, True, "v0003", trigger="policy", trigger_reason=f"24 new samples (≥ 20); {EVIL}",
        warm_start="v0002", previous={"accuracy": 0.80}, previous_gain=0.06))
    dev.publish("jobs/pol-2/result", _result(
        "pol-2", 0.70, 0.84, False, None, trigger="policy", trigger_reason="31 new samples (≥ 20); in window",
        warm_start="v0003", previous={"accuracy": 0.86}, previous_gain=-0.02,
        stop_reason="not promoted: does not beat the active model (0.84 vs 0.86)"))
    dev.publish("meta", {"agent": "0.1", "models": ["v0001", "v0002", "v0003"], "active_version": "v0003",
                         "personalize": {"policy": POLICY, "state": _state("waiting_window", f"outside {EVIL}")}},
                retain=True)
    dev.sync()


def _metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    m = re.search(rf"^{re.escape(name)}{{{re.escape(want)}}} (\S+)$", text, re.MULTILINE)
    assert m, f"no {name}{{{want}}} in /metrics"
    return float(m.group(1))


@pytest.mark.needs("mosquitto")
def test_policy_runs_and_states_reach_the_device_page_metrics_and_status(db, broker, running, capsys):
    store = FleetStore(db)
    running(store)
    box, busy, plain = (SimDevice(broker, name) for name in ("box-1", "box-2", "box-3"))
    try:
        _publish_history(box)
        busy.publish("meta", {"agent": "0.1", "personalize": {"policy": POLICY, "state": _state("running", "pol-9")}},
                     retain=True)
        plain.publish("meta", {"agent": "0.1", "personalize": None}, retain=True)   # no policy: not counted
        busy.sync(), plain.sync()
        assert wait_for(lambda: len(store.personalization(FLEET, "box-1")) == 3
                        and (store.device(FLEET, "box-3") or {}).get("meta") is not None
                        and store.policy_states()["running"] == 1)
        srv = FleetHTTPServer(store, "127.0.0.1", 0).start()
        try:
            code, page = _get(srv.url + "/devices/box-1?fleet=" + FLEET)
            frag = _get(srv.url + "/devices/box-1/fragment?fleet=" + FLEET)[1]
            api = json.loads(_get(srv.url + "/api/devices/box-1/personalization")[1])
            metrics = _get(srv.url + "/metrics")[1]
            missing = _get(srv.url + "/devices/%3Cb%3Enope")
            dashboard = _get(srv.url + "/")[1]
        finally:
            srv.stop()

        # the device page: policy, state, why and when, and the history (newest first), all escaped
        assert code == 200 and "<h2>Personalization</h2>" in page and frag in page
        assert EVIL not in page and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
        assert 'id="policy-state" data-state="waiting_window" data-next="1767056400000"' in page
        assert "next eligible <b class=\"next\">2025-12-30 01:00:00 UTC</b>" in page
        assert '<tr data-key="window"><th>window</th><td>01:00-05:00</td></tr>' in page
        assert re.findall(r'<tr class="run" data-job="([^"]+)" data-trigger="(\w+)" data-promoted="(\w+)"', page) == [
            ("pol-2", "policy", "false"), ("pol-1", "policy", "true"), ("cmd-1", "command", "true")]
        pol2 = page[page.index('data-job="pol-2"'):page.index('data-job="pol-1"')]
        assert '<td class="gain">+0.1400</td><td class="previous-gain">-0.0200</td><td>v0003</td>' in pol2
        assert '<td class="why">31 new samples (≥ 20); in window</td>' in pol2
        # the headline metric over the promoted versions: v0002 (0.80), v0003 (0.86)
        chart = page[page.index('<div id="versions-chart"'):]
        assert 'data-points="2"' in chart and ">0.86</tspan>" in chart and "2 versions" in chart
        assert missing[0] == 404 and "<b>" not in missing[1]
        assert '<a class="page" href="/devices/box-1?fleet=demo"' in dashboard
        assert [r["job"] for r in api["history"]] == ["pol-2", "pol-1", "cmd-1"]
        assert api["history"][1] | {"gain": round(api["history"][1]["gain"], 6)} == {
            "job": "pol-1", "at_ms": api["history"][1]["at_ms"], "trigger": "policy",
            "trigger_reason": f"24 new samples (≥ 20); {EVIL}", "status": "succeeded", "promoted": True,
            "version": "v0003", "metric": "accuracy", "label": "accuracy", "tuned": 0.86, "untuned": 0.70,
            "gain": 0.16, "previous_gain": 0.06, "warm_start": "v0002"}
        assert api["policy"]["state"] == "waiting_window" and api["policy"]["policy"] == POLICY

        # /metrics: runs and promotions by trigger, devices by policy state (every state, 0 included)
        assert _metric(metrics, "ftedge_personalization_runs_total", trigger="policy") == 2
        assert _metric(metrics, "ftedge_personalization_runs_total", trigger="command") == 1
        assert _metric(metrics, "ftedge_personalization_promotions_total", trigger="policy") == 1
        assert _metric(metrics, "ftedge_personalization_promotions_total", trigger="command") == 1
        assert {s: _metric(metrics, "ftedge_policy_devices", state=s) for s in POLICY_STATES} == {
            s: float(s in ("waiting_window", "running")) for s in POLICY_STATES}

        # fleet status: the table and --json show each device's policy state
        capsys.readouterr()
        assert main(["fleet", "status", "--db", db, "--json"]) == 0
        rows = {d["device"]: d for d in json.loads(capsys.readouterr().out)}
        assert rows["box-1"]["policy"] | {"policy": None} == {
            "state": "waiting_window", "reason": f"outside {EVIL}", "next_eligible_ms": 1_767_056_400_000,
            "checked_ms": 1_767_000_000_000, "samples": 64, "new_samples": 24, "runs_24h": 1,
            "last_run": {"job": "pol-2", "at_ms": 1_766_990_000_000}, "removed": {"samples": 3, "bytes": 1200},
            "policy": None}
        assert rows["box-2"]["policy"]["state"] == "running" and rows["box-3"]["policy"] is None
        assert main(["fleet", "status", "--db", db]) == 0
        out = capsys.readouterr().out
        assert re.search(r"^demo\s+box-1 .* waiting_window\s*$", out, re.MULTILINE)
        assert (f"  box-1 policy: waiting_window: outside {EVIL}; next eligible 2025-12-30 01:00:00 UTC; "
                "1 run(s) in 24 h") in out
        assert main(["fleet", "policy", "--device", "box-1", "--db", db]) == 0
        shown = capsys.readouterr().out
        assert shown.startswith("box-1: waiting_window: outside") and 'window="01:00-05:00"' in shown

        # a new state moves the device between the gauges; the same result again is no new run
        box.publish("meta", {"agent": "0.1", "personalize": {"policy": POLICY, "state": _state("disabled", "off")}},
                    retain=True)
        box.publish("jobs/pol-1/result", _result("pol-1", 0.70, 0.86, True, "v0003", trigger="policy"))
        box.sync()
        assert wait_for(lambda: store.policy_states()["disabled"] == 1)
        assert store.policy_states()["waiting_window"] == 0
        assert wait_for(lambda: store.counters()["messages_total"] >= 9)
        assert store.personalization_totals() == {"runs": {"command": 1, "policy": 2},
                                                  "promotions": {"command": 1, "policy": 1}}
    finally:
        for d in (box, busy, plain):
            d.close()
        store.close()


# Each is refused as a whole (counted in malformed_total); the field that makes it so.
HOSTILE = [
    ("jobs/e1/result", {"job": "e1", "status": "succeeded", "trigger": "cron"}),
    ("jobs/e2/result", {"job": "e2", "status": "succeeded", "trigger": "policy", "trigger_reason": "x" * (MAX_LINE + 1)}),
    ("jobs/e3/result", {"job": "e3", "status": "succeeded", "previous_gain": "0.1"}),
    ("jobs/e4/result", {"job": "e4", "status": "succeeded", "previous_gain": True}),
    ("jobs/e5/result", {"job": "e5", "status": "succeeded", "previous": [0.8]}),
    ("jobs/e6/result", {"job": "e6", "status": "succeeded", "warm_start": {"from": "/state/models/v2"}}),
    ("jobs/e7/result", {"job": "e7", "status": "succeeded", "trigger": ["policy"]}),
    ("meta", {"personalize": "waiting_data"}),
    ("meta", {"personalize": {"policy": POLICY}}),                                       # no state
    ("meta", {"personalize": {"policy": POLICY, "state": _state("sleeping", "made up")}}),
    ("meta", {"personalize": {"policy": POLICY, "state": _state("running", "y" * (MAX_LINE + 1))}}),
    ("meta", {"personalize": {"policy": POLICY, "state": _state("running", "r", next_eligible_ms="soon")}}),
    ("meta", {"personalize": {"policy": [POLICY], "state": _state("running", "r")}}),
    ("meta", {"personalize": {"policy": {**POLICY, "min_new_samples": "20"}, "state": _state("running", "r")}}),
    ("meta", {"personalize": {"policy": POLICY, "state": _state("running", "r", last_run={"job": 7})}}),
    ("meta", {"personalize": {"policy": POLICY, "state": _state("running", "r", removed=[1])}}),
]


def _nested(depth: int) -> dict:
    doc: dict = {}
    for _ in range(depth):
        doc = {"a": doc}
    return doc


@pytest.mark.needs("mosquitto")
def test_hostile_personalization_fields_are_refused_counted_and_nothing_else_is_lost(db, broker, running):
    store = FleetStore(db)
    running(store)
    good, evil = SimDevice(broker, "good-1"), SimDevice(broker, "evil-1")
    try:
        hostile = [*HOSTILE, ("meta", {"personalize": {"policy": {**POLICY, "options": _nested(24)},   # too deep
                                                       "state": _state("running", "r")}})]
        for suffix, body in hostile:
            evil.publish(suffix, body, retain=suffix == "meta")
        evil.publish("meta", {"personalize": {"policy": POLICY, "state": _state("waiting_data", "3 new (< 20)")}},
                     retain=True)
        evil.publish("jobs/ok-1/result", _result("ok-1", 0.5, 0.6, True, "v0002", trigger="policy",
                                                 trigger_reason="ok"))
        _publish_history(good)
        evil.sync()
        assert wait_for(lambda: store.counters()["malformed_total"] == len(hostile)
                        and len(store.personalization(FLEET, "good-1")) == 3
                        and len(store.personalization(FLEET, "evil-1")) == 1
                        and store.policy_states()["waiting_data"] == 1)
        assert [r["job"] for r in store.personalization(FLEET, "evil-1")] == ["ok-1"]
        assert store.device(FLEET, "evil-1")["policy"]["reason"] == "3 new (< 20)"
        assert store.personalization_totals() == {"runs": {"command": 1, "policy": 3},
                                                  "promotions": {"command": 1, "policy": 2}}
        states = store.policy_states()
        assert set(states) == set(POLICY_STATES) and sum(states.values()) == 2   # "sleeping" made no series
        assert not store.jobs(FLEET, "evil-1")[1:], "only the good result of the evil box is stored"
    finally:
        good.close(), evil.close()
        store.close()


def test_history_is_bounded_per_device_and_the_counters_never_go_down(db):
    """300 results of one device: its newest 200 history rows are kept (and its newest 100 jobs' results), the
    run counters keep counting every job once."""
    with FleetStore(db, max_history_per_device=200) as store:
        batch = [msg("box", f"jobs/j{i:03d}/result", env("box", "b1", i, ts=1_767_000_000_000 + i,
                                                         **_result(f"j{i:03d}", 0.5, 0.6, i % 3 == 0, f"v{i}",
                                                                   trigger="policy", trigger_reason="r")))
                 for i in range(1, 301)]
        assert store.ingest_batch(batch)["messages"] == 300
        history = store.personalization(FLEET, "box", limit=1000)
        assert [r["job"] for r in history] == [f"j{i:03d}" for i in range(300, 100, -1)]
        assert len(store.jobs(FLEET, "box")) == 100
        assert store.personalization_totals()["runs"] == {"command": 0, "policy": 300}
        assert store.personalization_totals()["promotions"] == {"command": 0, "policy": 100}
        # a result repeated under a new boot (a replay) is the same job: no second run
        again = batch[-1][1].decode().replace('"boot": "b1"', '"boot": "b2"')
        assert store.ingest_batch([(batch[-1][0], again.encode(), False)])["messages"] == 1
        assert store.personalization_totals()["runs"]["policy"] == 300


def test_the_wire_lists_match_the_agent_declarations():
    """The fleet's checks of meta.personalize.policy name every setting the agent declares (and its source)."""
    from ftedge.device_agent.policy.spec import FIELDS

    assert set(POLICY_KEYS) == {f.name for f in FIELDS} | {"source"}
    assert TRIGGERS == ("command", "policy")


# -- `fleet policy` against a device that answers the verb as the contract says -----------------------------------

class PolicyDevice:
    """What a box answers to ``cmd/policy`` (docs/mqtt.md): its policy and state; a bad ``set`` is rejected with
    every problem; ``clear`` goes back to the config's policy (none here); ``check`` evaluates now."""

    def __init__(self) -> None:
        self.policy: dict | None = None

    def __call__(self, verb: str, args: dict) -> dict:
        if verb != "policy":
            return {}
        if "set" in args:
            new = args["set"]
            problems = [f"{k}: required" for k in ("bundle", "data") if not isinstance(new.get(k), str)]
            if "window" in new and not re.fullmatch(r"\d\d:\d\d-\d\d:\d\d", str(new["window"])):
                problems.append(f'window: must be "HH:MM-HH:MM", got {new["window"]!r}')
            if problems:
                return {"status": "rejected", "code": "bad_args", "detail": "; ".join(problems)}
            self.policy = {**new, "source": "fleet"}
        elif args.get("clear"):
            self.policy = None
        if args.get("check"):
            state = _state("running", "checked now")
        else:
            state = _state(*(("waiting_data", "3 new samples (< 20)") if self.policy else ("disabled", "no policy")))
        return {"policy": self.policy, "state": state}


@pytest.mark.needs("mosquitto")
def test_fleet_policy_sends_the_verb_and_prints_the_reply(tmp_path, broker, capsys):
    box = SimDevice(broker, "box-1", responder=PolicyDevice())
    url = ["--broker", broker.url, "--timeout", "10"]
    try:
        capsys.readouterr()
        assert main(["fleet", "policy", "--device", "box-1", "--set-json",
                     '{"bundle": "kws", "data": "user", "window": "01:00-05:00"}', *url]) == 0
        out = capsys.readouterr().out
        assert out.startswith("box-1: waiting_data: 3 new samples (< 20); next eligible 2025-12-30 01:00:00 UTC")
        assert 'bundle="kws" data="user" window="01:00-05:00" source="fleet"' in out
        topic, body, *_ = box.commands[-1]
        assert topic.endswith("/box-1/cmd/policy")
        assert body["args"] == {"set": {"bundle": "kws", "data": "user", "window": "01:00-05:00"}}

        doc = tmp_path / "policy.json"
        doc.write_text(json.dumps({"bundle": "kws", "data": "user", "options": "auto"}))
        assert main(["fleet", "policy", "--device", "box-1", "--set", str(doc), "--json", *url]) == 0
        reply = json.loads(capsys.readouterr().out)
        assert reply["status"] == "done" and reply["policy"] == {"bundle": "kws", "data": "user", "options": "auto",
                                                                 "source": "fleet"}
        assert reply["state"]["state"] == "waiting_data"

        assert main(["fleet", "policy", "--device", "box-1", *url]) == 0    # show: args {}
        assert box.commands[-1][1]["args"] == {} and "waiting_data" in capsys.readouterr().out
        assert main(["fleet", "policy", "--device", "box-1", "--check", *url]) == 0
        assert box.commands[-1][1]["args"] == {"check": True}
        assert capsys.readouterr().out.startswith("box-1: running: checked now")
        assert main(["fleet", "policy", "--device", "box-1", "--clear", *url]) == 0
        assert box.commands[-1][1]["args"] == {"clear": True}
        assert capsys.readouterr().out.startswith("box-1: disabled: no policy")

        # a policy the device refuses: exit 3, every problem on stderr
        assert main(["fleet", "policy", "--device", "box-1", "--set-json", '{"window": "1-5"}', *url]) == 3
        err = capsys.readouterr().err
        assert "rejected the policy command (bad_args)" in err
        assert "bundle: required; data: required; window: must be" in err
        # errors before anything is sent: bad JSON, no --broker for a change, a device that does not answer
        sent = len(box.commands)
        assert main(["fleet", "policy", "--device", "box-1", "--set-json", "{bundle:", *url]) == 2
        assert "--set-json is not JSON" in capsys.readouterr().err
        assert main(["fleet", "policy", "--device", "box-1", "--set", str(tmp_path / "none.json"), *url]) == 2
        assert main(["fleet", "policy", "--device", "box-1", "--clear"]) == 2
        assert "give --broker URL" in capsys.readouterr().err
        assert len(box.commands) == sent
        assert main(["fleet", "policy", "--device", "box-404", "--broker", broker.url, "--timeout", "1"]) == 4
        assert "no reply from demo/box-404 to policy" in capsys.readouterr().err
    finally:
        box.close()
