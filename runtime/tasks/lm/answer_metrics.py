"""Scoring generated answers against references (stdlib only: runs on the device, never imports torch).

Normalization follows SQuAD v1.1 (lowercase, no punctuation, no articles ``a``/``an``/``the``, single spaces) with
one deliberate difference: punctuation and symbols (Unicode categories P* and S*, which include all of
``string.punctuation``) are replaced by a *space*, not deleted. So ``"9:30"`` → ``"9 30"``, ``"9:30am"`` →
``"9 30am"``, ``"tune-up"`` → ``"tune up"``, ``"€8"`` → ``"8"`` and ``"don't"`` → ``"don t"`` (SQuAD gives
``"930"``, ``"tuneup"``, ``"€8"``, ``"dont"``). References, predictions and keywords all go through the same
``normalize``, so a time or a code compares the same on both sides.
"""

from __future__ import annotations

import string
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Union

F1_CORRECT = 0.8    # answer_correct without keywords: exact match or token F1 at least this
RETAINED_F1 = 0.5   # retention: a tuned answer is "kept" when its token F1 against the base answer is at least this

ARTICLES = frozenset({"a", "an", "the"})
_ASCII_PUNCT = frozenset(string.punctuation)

Keyword = Union[str, Sequence[str]]  # one phrase, or a list of alternative phrases (any one suffices)


def _is_punct(ch: str) -> bool:
    return ch in _ASCII_PUNCT or unicodedata.category(ch)[0] in "PS"


def tokens(text: str) -> list[str]:
    """The normalized tokens of ``text``: lowercased, punctuation/symbols → spaces, articles dropped."""
    spaced = "".join(" " if _is_punct(ch) else ch for ch in text.lower())
    return [t for t in spaced.split() if t not in ARTICLES]


def normalize(text: str) -> str:
    """SQuAD-style normalized text (see the module docstring for the punctuation → space choice)."""
    return " ".join(tokens(text))


def exact_match(pred: str, ref: str) -> float:
    """1.0 when ``pred`` and ``ref`` are equal after ``normalize``, else 0.0."""
    return float(normalize(pred) == normalize(ref))


def token_f1(pred: str, ref: str) -> float:
    """SQuAD token-overlap F1 (multiset counts); 1.0 when both are empty after normalizing, 0.0 when one is."""
    p, r = tokens(pred), tokens(ref)
    if not p or not r:
        return float(p == r)
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def _contains(hay: list[str], needle: list[str]) -> bool:
    n = len(needle)
    return any(hay[i:i + n] == needle for i in range(len(hay) - n + 1))


def keyword_hit(pred: str, keywords: Iterable[Keyword]) -> bool:
    """Whether every keyword occurs in ``pred`` as a contiguous run of normalized tokens.

    A keyword is a phrase or a list of alternative phrases, any one of which suffices:
    ``[["9 am", "9am", "nine"], "monday"]``. No keywords → True. A phrase that normalizes to nothing (``"the"``,
    ``"!"``) is a ValueError: it would match everything.
    """
    hay = tokens(pred)
    for kw in keywords:
        alternatives = [kw] if isinstance(kw, str) else list(kw)
        needles = [tokens(a) for a in alternatives]
        if not needles or not all(needles):
            raise ValueError(f"keyword {kw!r} is empty after normalizing")
        if not any(_contains(hay, nd) for nd in needles):
            return False
    return True


def answer_correct(pred: str, reference: str, keywords: Sequence[Keyword] | None = None) -> bool:
    """With keywords (non-empty): ``keyword_hit``; otherwise exact match or token F1 ≥ ``F1_CORRECT``."""
    if keywords:
        return keyword_hit(pred, keywords)
    return exact_match(pred, reference) == 1.0 or token_f1(pred, reference) >= F1_CORRECT


def score_answers(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Means over rows of ``{"prediction", "reference", "keywords"?}``: ``{"n", "accuracy", "exact_match",
    "token_f1"}``; with no rows, n is 0 and the means are None."""
    n = correct = 0
    em = f1 = 0.0
    for row in rows:
        pred, ref = row["prediction"], row["reference"]
        n += 1
        correct += answer_correct(pred, ref, row.get("keywords"))
        em += exact_match(pred, ref)
        f1 += token_f1(pred, ref)
    if n == 0:
        return {"n": 0, "accuracy": None, "exact_match": None, "token_f1": None}
    return {"n": n, "accuracy": correct / n, "exact_match": em / n, "token_f1": f1 / n}


def retention(base_answers: Sequence[str], tuned_answers: Sequence[str],
              threshold: float = RETAINED_F1) -> dict[str, Any]:
    """How much of the base model's behaviour the tuned model keeps on the same prompts (in the same order).

    An answer is kept when ``token_f1(tuned, base) >= threshold``. Returns ``{"n", "kept", "retention",
    "mean_f1"}`` (retention = kept / n; None for both ratios when n is 0). Raises ValueError on a length mismatch.
    """
    if len(base_answers) != len(tuned_answers):
        raise ValueError(f"{len(base_answers)} base answers but {len(tuned_answers)} tuned answers")
    f1s = [token_f1(t, b) for b, t in zip(base_answers, tuned_answers)]
    n = len(f1s)
    kept = sum(f >= threshold for f in f1s)
    return {"n": n, "kept": kept, "retention": kept / n if n else None, "mean_f1": sum(f1s) / n if n else None}
