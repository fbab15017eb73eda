"""`ftedge train --warm-start DIR` for a causal LM: the LoRA adapter continues from a previous run's
adapter.safetensors and is judged against it on the same held-out prompts. SYNTHETIC shop facts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ftedge.errors import FtedgeError
from tests.helpers.common import FACTS, write_jsonl


def _losses(run: Path) -> list[float]:
    return [json.loads(x)["train_loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_lm_warm_start_continues_the_adapter_and_is_judged_against_it(llm_bundle, tmp_path):
    from ftedge.runtime.tasks.lm.trainer import LMTrainConfig, train_lm

    facts = write_jsonl(tmp_path / "facts.jsonl", [{"prompt": q, "answer": a} for q, a in FACTS])
    common = dict(lr=0.03, eval_data=str(facts), max_new_tokens=12)
    prev = train_lm(llm_bundle, facts, tmp_path / "prev", LMTrainConfig(epochs=20, **common))
    assert prev["promoted"] and "previous" not in prev
    source = tmp_path / "models" / "v0002"
    shutil.copytree(tmp_path / "prev", source)
    warm = train_lm(llm_bundle, facts, tmp_path / "warm", LMTrainConfig(epochs=2, warm_start=str(source), **common))
    cold = train_lm(llm_bundle, facts, tmp_path / "cold", LMTrainConfig(epochs=2, **common))
    assert _losses(tmp_path / "warm")[0] < 0.3 * _losses(tmp_path / "cold")[0]
    assert warm["warm_start"] == {"from": str(source), "version": "v0002"}
    assert warm["previous"]["accuracy"] == prev["metrics"]["accuracy"]           # same prompts, same adapter
    assert warm["previous"]["perplexity"] == pytest.approx(prev["metrics"]["perplexity"], rel=1e-4)
    assert warm["previous_gain"] == warm["metrics"]["accuracy"] - prev["metrics"]["accuracy"]
    if warm["previous_gain"] <= 0:
        assert not warm["promoted"] and "does not beat the active model" in warm["stop_reason"]
    # a learning rate far too high ruins the answers: never promoted over the previous adapter
    worse = train_lm(llm_bundle, facts, tmp_path / "worse", LMTrainConfig(epochs=1, warm_start=str(source),
                                                                          **{**common, "lr": 5.0}))
    assert worse["promoted"] is False and "does not beat the active model" in worse["stop_reason"]
    # an adapter from another build of the bundle is refused before any training
    model = json.loads((source / "model.json").read_text())
    (source / "model.json").write_text(json.dumps({**model, "bundle_sha256": "f" * 64}))
    with pytest.raises(FtedgeError, match="another build of bundle"):
        train_lm(llm_bundle, facts, tmp_path / "other", LMTrainConfig(epochs=1, warm_start=str(source), **common))
