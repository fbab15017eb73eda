"""Write the LLM worked example's data: a SYNTHETIC site FAQ split by paraphrase, plus real chatterbot-corpus text.

    python examples/llm/make_faq.py OUT_DIR [--train-phrasings 4] [--seed 0] [--category trivia] [--messages]

Files (JSON Lines, UTF-8, one object per line; see docs/llm.md):

- ``faq_train.jsonl``: the first ``--train-phrasings`` questions of each FAQ entry, ``{"prompt", "answer", "id"}``
  (or with ``--messages`` ``{"messages": [user, assistant], "id"}``), shuffled with ``--seed``;
- ``faq_heldout.jsonl``: the other paraphrases (never trained on), ``{"prompt", "answer", "keywords", "id"}``;
- ``general.jsonl``: at most 40 general questions from chatterbot-corpus (science, history, literature,
  computers; not ``--category``) the fine-tune never sees, ``{"prompt", "source"}``: a retention set;
- ``offtopic.jsonl``: 100 other chatterbot-corpus questions (ai, psychology, money, movies, sports, …; none of
  ``general.jsonl``'s categories, not ``--category``), ``{"prompt", "source"}``: the off-topic prompts the
  adapter router is fitted on (``ftedge train --off-topic``);
- ``chatterbot_<category>_train.jsonl`` / ``_heldout.jsonl``: one real category as ``{"prompt", "answer"}``
  (the first answer), every 5th distinct question held out (with all its conversations);
- ``SYNTHETIC.txt``: which files are synthetic and which are real.

Deterministic: the same arguments give the same bytes. The corpus is read from the installed
``chatterbot-corpus`` package's YAML files (found with ``importlib.util.find_spec``; the package is not imported).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import random
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from faq_facts import BUSINESS, FAQ  # noqa: E402

from ftedge.runtime.tasks.lm.answer_metrics import normalize  # noqa: E402

GENERAL_CATEGORIES = ("science", "history", "literature", "computers")
GENERAL_MAX = 40
# Off-topic prompts for the adapter router: other categories than the retention set's, so retention is measured
# on questions of kinds the router never saw.
OFF_TOPIC_CATEGORIES = ("ai", "psychology", "money", "movies", "sports", "food", "health", "politics", "emotion",
                        "gossip", "botprofile", "conversations", "greetings")
OFF_TOPIC_MAX = 100
HELDOUT_EVERY = 5


def corpus_dir() -> Path:
    """The chatterbot-corpus English data folder (``.../chatterbot_corpus/data/english``)."""
    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("chatterbot-corpus is not installed (pip install chatterbot-corpus)")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "english"


def corpus_version() -> str:
    try:
        return importlib.metadata.version("chatterbot-corpus")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def read_category(name: str) -> tuple[list[tuple[str, str]], int]:
    """``(question, first answer)`` of each conversation of ``<name>.yml``, and how many were skipped (no answer,
    or an entry that is not text)."""
    path = corpus_dir() / f"{name}.yml"
    if not path.is_file():
        raise SystemExit(f"no chatterbot-corpus category {name!r} ({path} does not exist)")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    pairs, skipped = [], 0
    for conv in data.get("conversations") or []:
        if (not isinstance(conv, list) or len(conv) < 2 or not all(isinstance(t, str) and t.strip() for t in conv)):
            skipped += 1
            continue
        pairs.append((conv[0].strip(), conv[1].strip()))
    return pairs, skipped


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write rows as JSON Lines (UTF-8, ``\\n`` line ends); returns the row count."""
    n = 0
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def faq_rows(train_phrasings: int, seed: int, messages: bool) -> tuple[list[dict], list[dict]]:
    """(train rows, held-out rows) of the FAQ; training rows are shuffled with ``seed``."""
    train, heldout = [], []
    for e in FAQ:
        for q in e["questions"][:train_phrasings]:
            if messages:
                train.append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": e["answer"]}],
                              "id": e["id"]})
            else:
                train.append({"prompt": q, "answer": e["answer"], "id": e["id"]})
        for q in e["questions"][train_phrasings:]:
            heldout.append({"prompt": q, "answer": e["answer"], "keywords": e["keywords"], "id": e["id"]})
    random.Random(seed).shuffle(train)
    return train, heldout


def general_rows(exclude: set[str], skip_category: str, categories: tuple[str, ...] = GENERAL_CATEGORIES,
                 limit: int = GENERAL_MAX) -> list[dict]:
    """Up to ``limit`` distinct questions, taken round-robin over ``categories`` in file order (without
    ``skip_category``, and without any question whose normalized form is in ``exclude``)."""
    seen = set(exclude)
    per_cat: list[list[dict]] = []
    for cat in categories:
        if cat == skip_category:
            continue
        rows = []
        for q, _ in read_category(cat)[0]:
            key = normalize(q)
            if key and key not in seen:
                seen.add(key)
                rows.append({"prompt": q, "source": f"chatterbot-corpus/english/{cat}.yml"})
        per_cat.append(rows)
    out: list[dict] = []
    for i in range(max(map(len, per_cat), default=0)):
        out += [rows[i] for rows in per_cat if i < len(rows)]
    return out[:limit]


def category_rows(name: str) -> tuple[list[dict], list[dict], int]:
    """(train, held-out, skipped) of a category: every ``HELDOUT_EVERY``-th distinct question (in file order) and
    all its conversations are held out, so no held-out prompt is trained on."""
    pairs, skipped = read_category(name)
    order: dict[str, int] = {}
    for q, _ in pairs:
        order.setdefault(normalize(q), len(order))
    train, heldout = [], []
    for q, a in pairs:
        (heldout if order[normalize(q)] % HELDOUT_EVERY == HELDOUT_EVERY - 1 else train).append({"prompt": q, "answer": a})
    if not heldout:
        raise SystemExit(f"chatterbot-corpus category {name!r} has {len(order)} distinct questions: "
                         f"fewer than {HELDOUT_EVERY}, nothing to hold out")
    return train, heldout, skipped


def synthetic_note(category: str) -> str:
    return (
        f"faq_train.jsonl, faq_heldout.jsonl: SYNTHETIC. A made-up FAQ of a fictional business ({BUSINESS}, "
        "Wrenmouth, the VoltDock charger and KeyLoop lock); every name, number and rule is invented "
        "(examples/llm/faq_facts.py).\n"
        f"general.jsonl, offtopic.jsonl, chatterbot_{category}_train.jsonl, chatterbot_{category}_heldout.jsonl: REAL crowd-written "
        f"text from chatterbot-corpus {corpus_version()} (English; BSD licence), unchanged.\n"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", type=Path, help="output folder (created)")
    ap.add_argument("--train-phrasings", type=int, default=4,
                    help="questions per FAQ entry to train on (the other paraphrases are held out; default 4 of 7)")
    ap.add_argument("--seed", type=int, default=0, help="shuffle of the training rows (default 0)")
    ap.add_argument("--category", default="trivia",
                    help="chatterbot-corpus English category for the real train/held-out pair (default trivia)")
    ap.add_argument("--messages", action="store_true",
                    help='write faq_train.jsonl as {"messages": [user, assistant]} rows instead of {"prompt", "answer"}')
    args = ap.parse_args(argv)
    n_q = min(len(e["questions"]) for e in FAQ)
    if not 1 <= args.train_phrasings < n_q:
        ap.error(f"--train-phrasings must be 1-{n_q - 1} (each entry has {n_q} questions; at least one is held out)")

    train, heldout = faq_rows(args.train_phrasings, args.seed, args.messages)
    faq_questions = {normalize(q) for e in FAQ for q in e["questions"]}
    c_train, c_heldout, skipped = category_rows(args.category)
    random.Random(args.seed).shuffle(c_train)
    out: Path = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    cat = args.category
    counts = {
        "faq_train.jsonl": write_jsonl(out / "faq_train.jsonl", train),
        "faq_heldout.jsonl": write_jsonl(out / "faq_heldout.jsonl", heldout),
        "general.jsonl": write_jsonl(out / "general.jsonl", general := general_rows(faq_questions, cat)),
        "offtopic.jsonl": write_jsonl(out / "offtopic.jsonl", general_rows(
            faq_questions | {normalize(r["prompt"]) for r in general}, cat, OFF_TOPIC_CATEGORIES, OFF_TOPIC_MAX)),
        f"chatterbot_{cat}_train.jsonl": write_jsonl(out / f"chatterbot_{cat}_train.jsonl", c_train),
        f"chatterbot_{cat}_heldout.jsonl": write_jsonl(out / f"chatterbot_{cat}_heldout.jsonl", c_heldout),
    }
    (out / "SYNTHETIC.txt").write_text(synthetic_note(cat), encoding="utf-8", newline="\n")
    for name, n in counts.items():
        extra = ""
        if name == f"chatterbot_{cat}_train.jsonl" and skipped:
            extra = f" ({skipped} conversations of {cat}.yml skipped: no answer or not text)"
        print(f"{out / name}: {n} rows{extra}")
    print(f"{out / 'SYNTHETIC.txt'}: written")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
