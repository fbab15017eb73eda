"""The device agent personalizes a causal LM over MQTT: train job, adapter version, `ask`, rollback."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest

from tests.helpers.agent_harness import AgentProc, Collector, agent_config
from tests.helpers.common import FACTS, write_jsonl


@pytest.fixture()
def llm_device(tmp_path, llm_bundle):
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "facts.jsonl", [{"prompt": q, "answer": a} for q, a in FACTS])
    write_jsonl(data / "general.jsonl", [{"prompt": "What is the capital of France?"}])
    write_jsonl(data / "offtopic.jsonl", [{"prompt": p} for p in ("Who wrote Hamlet?", "Tell me a joke.",
                                                                  "What is photosynthesis?", "How far is the moon?")])
    bundles = tmp_path / "bundles"
    shutil.copytree(llm_bundle, bundles / "faq-llm")

    return lambda b: agent_config(tmp_path / "state", b, data, bundles)


def test_agent_trains_a_language_model_answers_with_it_and_rolls_back(broker, llm_device, tmp_path):  # noqa: F811
    col = Collector(broker)
    agent = AgentProc(llm_device(broker), tmp_path / "agent.log")
    try:
        col.wait_online()
        no_model = col.send("ask", {"prompt": "When do you open?"})
        assert no_model["status"] == "rejected" and no_model["code"] == "no_model"
        for bad, why in (({"bundle": "faq-llm", "data": "facts.jsonl", "mode": "full"}, "do(es) not apply"),
                         ({"bundle": "faq-llm", "data": "facts.jsonl", "eval_data": "../../etc/passwd"}, "outside"),
                         ({"bundle": "faq-llm", "data": "facts.jsonl", "min_retention": 2}, "between")):
            reply = col.send("train", bad)
            assert reply["status"] == "rejected" and why in reply["detail"], reply
        settings = {"bundle": "faq-llm", "data": "facts.jsonl", "eval_data": "facts.jsonl", "general": "general.jsonl",
                    "off_topic": "offtopic.jsonl", "epochs": 30, "lr": 0.03, "max_new_tokens": 12, "min_retention": 0}
        first = col.send("train", settings)
        assert first["status"] == "accepted", first
        assert col.wait(lambda: col.of(f"jobs/{first['job']}/result"), 180), agent.text()[-3000:]
        result = col.of(f"jobs/{first['job']}/result")[0]
        assert result["status"] == "succeeded" and result["promoted"] and result["version"] == "v0001", result
        assert result["final"]["accuracy"] >= 0.75 > result["baseline"]["accuracy"]
        assert [p["epoch"] for p in col.of(f"jobs/{first['job']}/progress")] == list(range(1, 31))
        # the shared result schema: the task, how many epochs ran, and the task's headline metric
        assert result["task"] == "causal-lm" and result["epochs_run"] == 30, result
        assert result["headline"]["metric"] == "perplexity" and result["headline"]["higher_is_better"] is False
        assert result["headline"]["tuned"] == result["final"]["perplexity"]
        last = col.of(f"jobs/{first['job']}/progress")[-1]
        assert last["task"] == "causal-lm" and last["headline"]["value"] == last["metrics"]["val_perplexity"]
        answer = col.send("ask", {"prompt": FACTS[0][0], "max_new_tokens": 12})
        assert answer["status"] == "done" and answer["version"] == "v0001", answer
        assert answer["answer"] == FACTS[0][1] and answer["stopped"] == "stop" and answer["route"] == "adapter"
        untuned = col.send("ask", {"prompt": FACTS[0][0], "bundle": "faq-llm", "max_new_tokens": 6})
        assert untuned["status"] == "done" and untuned["version"] is None and untuned["answer"] != FACTS[0][1]
        for bad in ({"prompt": ""}, {"prompt": "x", "max_new_tokens": 10_000}, {"prompt": "x", "temperature": "hot"},
                    {"prompt": "x", "bundle": "../../"}, {"prompt": "x", "shell": "rm -rf /"}):
            reply = col.send("ask", bad)
            assert reply["status"] == "rejected", (bad, reply)
        second = col.send("train", {**settings, "seed": 1})
        assert col.wait(lambda: col.of(f"jobs/{second['job']}/result"), 180), agent.text()[-3000:]
        assert col.of(f"jobs/{second['job']}/result")[0]["version"] == "v0002"
        assert col.send("ask", {"prompt": FACTS[1][0], "max_new_tokens": 12})["version"] == "v0002"
        back = col.send("rollback", {})
        assert back["status"] == "done" and back["active_version"] == "v0001", back
        again = col.send("ask", {"prompt": FACTS[0][0], "max_new_tokens": 12})
        assert again["status"] == "done" and again["version"] == "v0001" and again["answer"] == FACTS[0][1]
        # `deploy replace` of the base (a new folder renamed into place, the old one deleted by retention) and a
        # restart: the version answers from its own copy of the base it was trained on
        bundles = tmp_path / "bundles"
        staged = bundles / ".staged"
        shutil.copytree(bundles / "faq-llm", staged)
        tok = staged / "tokenizer.json"
        tok.write_text(json.dumps(json.loads(tok.read_text()), indent=1))  # other bytes: another bundle
        manifest = json.loads((staged / "manifest.json").read_text())
        manifest["files"]["tokenizer.json"] = {"sha256": hashlib.sha256(tok.read_bytes()).hexdigest(),
                                               "size": tok.stat().st_size}
        (staged / "manifest.json").write_text(json.dumps(manifest))
        os.rename(bundles / "faq-llm", bundles / ".replaced-faq-llm")
        os.rename(staged, bundles / "faq-llm")
        shutil.rmtree(bundles / ".replaced-faq-llm")
        agent.stop()
        agent = AgentProc(llm_device(broker), tmp_path / "agent2.log")
        pinned = col.send("ask", {"prompt": FACTS[0][0], "max_new_tokens": 12}, timeout=60)
        assert pinned["status"] == "done" and pinned["version"] == "v0001", (pinned, agent.text()[-2000:])
        assert pinned["answer"] == FACTS[0][1]
    finally:
        col.close()
        agent.stop()
