"""examples/llm: the SYNTHETIC FAQ facts and make_faq.py's files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ftedge.runtime.tasks.lm.answer_metrics import keyword_hit, normalize

from tests.helpers.common import ROOT, example_module
from tests.helpers.services import require_module

require_module("yaml")
require_module("chatterbot_corpus", "the chatterbot-corpus package ships the trivia questions")

EXAMPLE = ROOT / "examples" / "llm"
faq_facts = example_module("llm/faq_facts.py")
make_faq = example_module("llm/make_faq.py")

FILES = ["faq_train.jsonl", "faq_heldout.jsonl", "general.jsonl", "offtopic.jsonl", "chatterbot_trivia_train.jsonl",
         "chatterbot_trivia_heldout.jsonl", "SYNTHETIC.txt"]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("faq")
    assert make_faq.main([str(d)]) == 0
    return d


def test_make_faq_is_deterministic(out: Path, tmp_path: Path) -> None:
    assert make_faq.main([str(tmp_path)]) == 0
    for name in FILES:
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes(), name


def test_faq_split_sizes_and_no_heldout_prompt_is_trained_on(out: Path) -> None:
    train, heldout = read_jsonl(out / "faq_train.jsonl"), read_jsonl(out / "faq_heldout.jsonl")
    assert len(faq_facts.FAQ) == 25
    assert (len(train), len(heldout)) == (100, 75)
    assert not {normalize(r["prompt"]) for r in train} & {normalize(r["prompt"]) for r in heldout}
    assert all(r["keywords"] and r["answer"] for r in heldout)
    c_train = read_jsonl(out / "chatterbot_trivia_train.jsonl")
    c_heldout = read_jsonl(out / "chatterbot_trivia_heldout.jsonl")
    assert c_train and c_heldout
    assert not {normalize(r["prompt"]) for r in c_train} & {normalize(r["prompt"]) for r in c_heldout}


def test_every_keyword_occurs_in_its_own_answer_and_no_other(out: Path) -> None:
    for e in faq_facts.FAQ:
        assert 1 <= len(e["keywords"]) <= 3, e["id"]
        assert len(e["answer"].split()) <= 25, e["id"]
        assert keyword_hit(e["answer"], e["keywords"]), e["id"]
        others = [o["id"] for o in faq_facts.FAQ if o is not e and keyword_hit(o["answer"], e["keywords"])]
        assert not others, (e["id"], others)


def test_faq_entries_have_distinct_answers_ids_and_questions() -> None:
    entries = faq_facts.FAQ
    assert len({normalize(e["answer"]) for e in entries}) == len(entries)
    assert len({e["id"] for e in entries}) == len(entries)
    questions = [normalize(q) for e in entries for q in e["questions"]]
    assert all(len(e["questions"]) == 7 for e in entries)
    assert len(set(questions)) == len(questions)


def test_general_rows_are_real_chatterbot_questions_not_faq_questions(out: Path) -> None:
    rows = read_jsonl(out / "general.jsonl")
    assert 0 < len(rows) <= 40
    faq_q = {normalize(q) for e in faq_facts.FAQ for q in e["questions"]}
    by_source: dict[str, set[str]] = {}
    for r in rows:
        src = r["source"]
        assert src.startswith("chatterbot-corpus/english/")
        if src not in by_source:
            by_source[src] = {q for q, _ in make_faq.read_category(Path(src).stem)[0]}
        assert r["prompt"] in by_source[src]
        assert normalize(r["prompt"]) not in faq_q
    assert len({normalize(r["prompt"]) for r in rows}) == len(rows)


def test_off_topic_rows_are_real_questions_of_other_categories_than_the_retention_set(out: Path) -> None:
    rows = read_jsonl(out / "offtopic.jsonl")
    assert len(rows) == make_faq.OFF_TOPIC_MAX
    general = {normalize(r["prompt"]) for r in read_jsonl(out / "general.jsonl")}
    general_sources = {r["source"] for r in read_jsonl(out / "general.jsonl")}
    faq_q = {normalize(q) for e in faq_facts.FAQ for q in e["questions"]}
    for r in rows:
        cat = Path(r["source"]).stem
        assert cat in make_faq.OFF_TOPIC_CATEGORIES and r["source"] not in general_sources and cat != "trivia"
        assert r["prompt"] in {q for q, _ in make_faq.read_category(cat)[0]}
        assert normalize(r["prompt"]) not in general | faq_q
    assert len({normalize(r["prompt"]) for r in rows}) == len(rows)


def test_messages_form_carries_the_same_pairs(tmp_path: Path, out: Path) -> None:
    assert make_faq.main([str(tmp_path), "--messages"]) == 0
    plain = read_jsonl(out / "faq_train.jsonl")
    chat = read_jsonl(tmp_path / "faq_train.jsonl")
    assert [(r["prompt"], r["answer"], r["id"]) for r in plain] == [
        (r["messages"][0]["content"], r["messages"][1]["content"], r["id"]) for r in chat]
    assert all([m["role"] for m in r["messages"]] == ["user", "assistant"] for r in chat)
