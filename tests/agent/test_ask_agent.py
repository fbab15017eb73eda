"""The agent's `ask` verb under hostile or heavy use: token bound, sampler floor, error replies, its own bounded
queue beside the other verbs, signature and staleness (a real agent process and a real Mosquitto; the tiny LLM)."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from tests.helpers.agent_harness import AgentProc, Collector, agent_config
from tests.helpers.common import FACTS, write_jsonl


@pytest.fixture()
def ask_device(tmp_path, llm_bundle):
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "facts.jsonl", [{"prompt": q, "answer": a} for q, a in FACTS])
    bundles = tmp_path / "bundles"
    shutil.copytree(llm_bundle, bundles / "faq-llm")
    return lambda b, extra="": agent_config(tmp_path / "state", b, data, bundles, extra)


def _edit_manifest(bundle, edit) -> None:
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def test_ask_bounds_prompts_in_tokens_floors_the_temperature_and_errors_carry_the_cmd_id(broker, ask_device,
                                                                                        tmp_path):
    broken = tmp_path / "bundles" / "broken-llm"
    shutil.copytree(tmp_path / "bundles" / "faq-llm", broken)
    _edit_manifest(broken, lambda m: m["preprocessing"].update(max_length="sixty-four"))  # not an int: a bug path
    col = Collector(broker)
    agent = AgentProc(ask_device(broker), tmp_path / "agent.log")  # [ask] max_prompt_tokens: 1024 by default
    try:
        col.wait_online()
        ok = col.send("ask", {"prompt": FACTS[0][0], "bundle": "faq-llm", "max_new_tokens": 4})
        assert ok["status"] == "done" and ok["prompt_tokens"] < 100, ok
        # 1,300 characters (under the 4,000-character limit) of a rare character: ~3,900 tokens
        for args in ({"prompt": "\u2603" * 1300}, {"prompt": "hi", "system": "\u2603" * 300}):
            reply = col.send("ask", {**args, "bundle": "faq-llm", "max_new_tokens": 4})
            assert reply["status"] == "rejected" and reply["code"] == "prompt_too_long", reply
            assert "at most 511" in reply["detail"], reply  # the tiny model's 512 positions bind first
        tiny = col.send("ask", {"prompt": "hi", "bundle": "faq-llm", "temperature": 1e-320})
        assert tiny["status"] == "rejected" and tiny["code"] == "bad_args" and "temperature" in tiny["detail"]
        crash = col.send("ask", {"prompt": "hi", "bundle": "broken-llm"}, cmd_id="ask-broken-1")
        assert crash["status"] == "error" and crash["code"] == "internal" and crash["cmd_id"] == "ask-broken-1"
        assert col.send("ping")["status"] == "done"  # and the agent goes on
    finally:
        col.close()
        agent.stop()


def test_asks_wait_in_their_own_bounded_queue_while_other_commands_are_answered(broker, ask_device, tmp_path):
    col = Collector(broker)
    agent = AgentProc(ask_device(broker), tmp_path / "agent.log")  # [ask] queue: 4 by default
    try:
        col.wait_online()
        ids = [f"ask-{i}" for i in range(8)]
        for cmd_id in ids:  # the first opens the model, so the others arrive while it is busy
            col.send("ask", {"prompt": FACTS[1][0], "bundle": "faq-llm", "max_new_tokens": 256}, cmd_id=cmd_id,
                     wait_for=None)
        status = col.send("status", cmd_id="status-during-asks")
        assert status["status"] == "done", status
        assert col.wait(lambda: all(col.replies.get(c) for c in ids), 120), agent.text()[-3000:]
        replies = {c: col.replies[c][0] for c in ids}
        busy = [c for c, r in replies.items() if r["status"] == "rejected" and r["code"] == "busy"]
        done = [c for c, r in replies.items() if r["status"] == "done"]
        # at most one answered and four waiting when they arrived; the rest refused at once, not queued
        assert busy and len(done) + len(busy) == len(ids), replies
        # `status` did not wait behind the answers: its reply left before the first answer
        order = [b.get("cmd_id") for t, b, _ in col.messages if "/cmdres/" in t]
        assert order.index("status-during-asks") < min(order.index(c) for c in done), order
    finally:
        col.close()
        agent.stop()


def test_ask_checks_signatures_and_answers_with_the_bundle_now_deployed(broker, ask_device, tmp_path):
    from ftedge.bundle.signing import generate_keypair, sign_manifest

    private, public = generate_keypair(tmp_path / "keys" / "fleet")
    bundles = tmp_path / "bundles"
    shutil.copytree(bundles / "faq-llm", bundles / "signed-llm")
    _edit_manifest(bundles / "signed-llm", lambda m: m.update(sign_manifest(m, private)))
    col = Collector(broker)
    agent = AgentProc(ask_device(broker, f'[deploy]\ntrusted_keys = ["{public}"]\n'), tmp_path / "agent.log")
    try:
        col.wait_online()
        unsigned = col.send("ask", {"prompt": "hi", "bundle": "faq-llm", "max_new_tokens": 2})
        assert unsigned["status"] == "rejected" and unsigned["code"] == "model_unusable", unsigned
        assert "sign" in unsigned["detail"], unsigned
        first = col.send("ask", {"prompt": "hi", "bundle": "signed-llm", "max_new_tokens": 2})
        assert first["status"] == "done", first
        # a replace renames a new folder into place (here: another default system text, re-signed)
        staged = bundles / ".staged"
        shutil.copytree(bundles / "signed-llm", staged)

        def longer_system(m: dict) -> None:
            m["preprocessing"]["chat"]["default_system"] = "You are the shop's assistant. " * 20
            m.pop("signature", None)
            m.update(sign_manifest(m, private))

        _edit_manifest(staged, longer_system)
        os.rename(bundles / "signed-llm", bundles / ".replaced")
        os.rename(staged, bundles / "signed-llm")
        second = col.send("ask", {"prompt": "hi", "bundle": "signed-llm", "max_new_tokens": 2})
        assert second["status"] == "done" and second["prompt_tokens"] > first["prompt_tokens"], (first, second)
    finally:
        col.close()
        agent.stop()


def test_the_decoder_is_released_when_training_starts_and_a_slow_token_stops_the_answer(tmp_path, llm_bundle):
    """The asker the agent runs (its own component, in process): the opened decoder is dropped on `release()`
    (the agent calls it when a job starts running) and after every answer while a job runs; and
    `[ask] token_deadline_s` reaches the generator (`stopped: "deadline"`)."""
    from ftedge.device_agent.asker import Asker
    from ftedge.device_agent.config import AskConfig
    from ftedge.device_agent.versions import ModelStore

    bundles = tmp_path / "bundles"
    shutil.copytree(llm_bundle, bundles / "faq-llm")
    req = {"prompt": FACTS[0][0], "bundle": "faq-llm", "max_new_tokens": 3}
    training = {"on": False}
    asker = Asker(ModelStore(tmp_path / "state"), bundles, training=lambda: training["on"])
    status, code, _, out = asker.ask(req)
    assert (status, code) == ("done", "ok") and asker._open is not None  # kept for the next question
    asker.release()                                                        # a job starts running
    assert asker._open is None
    training["on"] = True
    assert asker.ask(req)[0] == "done" and asker._open is None             # answered, then dropped again
    slow = Asker(ModelStore(tmp_path / "state"), bundles, cfg=AskConfig(token_deadline_s=1e-9))
    status, _, _, out = slow.ask({**req, "max_new_tokens": 8})
    assert status == "done" and out["stopped"] == "deadline" and out["tokens"] < 8, out
