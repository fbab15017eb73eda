"""ftedge.runtime.tasks.lm.answer_metrics: SQuAD-style answer scoring, keyword checks and retention."""

from __future__ import annotations

import re
import string
import sys
from collections import Counter

import pytest
from ftedge.runtime.tasks.lm.answer_metrics import (
    F1_CORRECT,
    RETAINED_F1,
    answer_correct,
    exact_match,
    keyword_hit,
    normalize,
    retention,
    score_answers,
    token_f1,
    tokens,
)

# --- the official SQuAD v1.1 evaluation logic (evaluate-v1.1.py), reimplemented from its definition ---

def squad_normalize_answer(s: str) -> str:
    def remove_articles(text: str) -> str:
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text: str) -> str:
        return " ".join(text.split())

    def remove_punc(text: str) -> str:
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    return white_space_fix(remove_articles(remove_punc(s.lower())))


def squad_f1(prediction: str, ground_truth: str) -> float:
    p, g = squad_normalize_answer(prediction).split(), squad_normalize_answer(ground_truth).split()
    num_same = sum((Counter(p) & Counter(g)).values())
    if num_same == 0:
        return 0.0
    precision, recall = num_same / len(p), num_same / len(g)
    return 2 * precision * recall / (precision + recall)


def squad_em(prediction: str, ground_truth: str) -> float:
    return float(squad_normalize_answer(prediction) == squad_normalize_answer(ground_truth))


# Punctuation only at word edges (where deleting it and replacing it by a space agree), no both-empty pair
# (official F1 gives 0.0 there, ours 1.0: tested separately), no non-ASCII symbols.
SQUAD_PAIRS = [
    ("The Eiffel Tower", "Eiffel Tower"),
    ("Paris", "paris, France"),
    ("in 1889", "1889"),
    ("A bike, a helmet and a lock.", "bike helmet lock"),
    ("the bike the", "bike"),
    ("cat cat dog", "cat dog dog"),
    ("We open at 9 am.", "We are open from 9 am to 6 pm."),
    ("Call us on 0455 218 907!", "0455 218 907"),
    ("an apple a day", "The apple of my eye"),
    ("Harbor Lane Bikes", "harbor lane bikes"),
    ("nothing in common", "completely different words"),
    ("  spaced   out  ", "spaced out"),
    ("Yes.", "No."),
    ("E1 means (too hot)", "E1: too hot"),
    ("21 days", "within 21 days with a receipt"),
    ("The Andromeda Galaxy.", "Andromeda"),
    ("theatre then thesis", "the atre then thesis"),
    ("Anna and Ann", "an Anna"),
    ("50 euro deposit", "a deposit of 50 euro"),
    ("\"quoted\" answer", "answer quoted"),
    ("bike", ""),
]


@pytest.mark.parametrize("pred,ref", SQUAD_PAIRS)
def test_token_f1_and_exact_match_agree_with_official_squad_v11(pred: str, ref: str) -> None:
    assert normalize(pred) == squad_normalize_answer(pred)
    assert token_f1(pred, ref) == pytest.approx(squad_f1(pred, ref))
    assert exact_match(pred, ref) == squad_em(pred, ref)


def test_normalize_replaces_inner_punctuation_by_a_space_where_squad_deletes_it() -> None:
    assert normalize("9:30am") == "9 30am"
    assert squad_normalize_answer("9:30am") == "930am"
    assert normalize("tune-up") == "tune up"
    assert normalize("don't") == "don t"
    # the same rule on both sides, so times still match each other
    assert exact_match("Opens 9:30.", "opens 9:30") == 1.0


def test_normalize_lowercases_drops_articles_and_collapses_whitespace() -> None:
    assert normalize("  The  Quick\tBrown\nFox, an  A-Team  ") == "quick brown fox team"
    assert normalize("Theatre ANNA") == "theatre anna"  # articles only as whole words


def test_normalize_treats_unicode_punctuation_and_symbols_as_spaces() -> None:
    assert normalize("“Hello”—world…") == "hello world"
    assert normalize("€8 per hour") == "8 per hour"
    assert normalize("5 °C") == "5 c"


def test_tokens_are_the_normalized_words() -> None:
    assert tokens("The E1 code: too hot!") == ["e1", "code", "too", "hot"]
    assert tokens("") == []
    assert tokens("?!") == []


def test_exact_match_ignores_case_punctuation_and_articles() -> None:
    assert exact_match("An Apple.", "apple") == 1.0
    assert exact_match("apple pie", "apple") == 0.0
    assert exact_match("", "") == 1.0
    assert exact_match("the", "") == 1.0


def test_token_f1_counts_repeated_tokens_once_per_occurrence() -> None:
    # pred [bike, bike, bike], ref [bike]: 1 common → P 1/3, R 1 → 2·(1/3)/(4/3) = 0.5
    assert token_f1("bike bike bike", "bike") == pytest.approx(0.5)
    # pred [cat, cat, sat], ref [cat, sat, on, mat]: common cat×1 + sat×1 = 2 → P 2/3, R 1/2 → 4/7
    assert token_f1("the cat the cat sat", "cat sat on mat") == pytest.approx(4 / 7)


def test_token_f1_of_empty_answers() -> None:
    assert token_f1("", "") == 1.0
    assert squad_f1("", "") == 0.0  # the one documented difference from the official script
    assert token_f1("the, a!", "an") == 1.0  # both empty after normalizing
    assert token_f1("bike", "") == 0.0
    assert token_f1("", "bike") == 0.0
    assert token_f1("red", "blue") == 0.0


def test_token_f1_article_tokens_do_not_count() -> None:
    # "a" is dropped: pred [b, c, d] vs ref [b, c, d, e, f] → P 1, R 3/5 → 0.75
    assert token_f1("a b c d", "a b c d e f") == pytest.approx(0.75)


def test_keyword_hit_needs_every_keyword() -> None:
    assert keyword_hit("We open Monday at 9 am.", ["monday", "9 am"])
    assert not keyword_hit("We open Monday.", ["monday", "9 am"])
    assert keyword_hit("anything", [])


def test_keyword_hit_accepts_any_one_alternative() -> None:
    kws = [["9 am", "9am", "nine"], "monday"]
    assert keyword_hit("From nine on Monday", kws)
    assert keyword_hit("Monday, 9AM sharp", kws)
    assert keyword_hit("monday 9 a.m.", [["9 a.m.", "9am"]])  # "9 a.m." normalizes to "9 m": same on both sides
    assert not keyword_hit("From ten on Monday", kws)
    assert not keyword_hit("From nine on Tuesday", kws)


def test_keyword_hit_multi_word_keyword_must_be_contiguous() -> None:
    assert keyword_hit("Find us at 14 Harbor Lane, Wrenmouth.", ["14 Harbor Lane"])
    assert keyword_hit("Find us at 14 (Harbor) Lane", ["14 harbor lane"])  # punctuation between is fine
    assert keyword_hit("at the 14 harbor lane", ["14 the harbor lane"])  # articles dropped on both sides
    assert not keyword_hit("Harbor Lane, number 14", ["14 Harbor Lane"])
    assert not keyword_hit("14 old Harbor Lane", ["14 Harbor Lane"])


def test_keyword_hit_matches_whole_tokens_only() -> None:
    assert not keyword_hit("Amsterdam", ["am"])
    assert not keyword_hit("9am", ["9 am"])
    assert keyword_hit("9:30", ["9 30"])


def test_keyword_hit_rejects_a_keyword_that_normalizes_to_nothing() -> None:
    with pytest.raises(ValueError):
        keyword_hit("the bike", ["the"])
    with pytest.raises(ValueError):
        keyword_hit("the bike", [[]])
    with pytest.raises(ValueError):
        keyword_hit("the bike", [["bike", "!"]])


def test_answer_correct_with_keywords_ignores_token_overlap() -> None:
    ref = "Most repairs are done within 48 hours."
    assert answer_correct("Give us 48 hours.", ref, keywords=[["48 hours", "two days"]])
    assert not answer_correct("Most repairs are done within 24 hours.", ref, keywords=[["48 hours", "two days"]])


def test_answer_correct_without_keywords_uses_exact_match_or_f1_threshold() -> None:
    assert F1_CORRECT == 0.8
    assert answer_correct("The Apple!", "apple")
    assert answer_correct("open daily", "open daily now")  # F1 exactly 0.8: P 1, R 2/3
    assert not answer_correct("open", "open daily now")    # P 1, R 1/3 → 0.5
    assert answer_correct("open daily", "open daily now", keywords=[])  # empty keywords → F1 rule


def test_score_answers_means_over_rows() -> None:
    rows = [
        {"prediction": "We open at 9 am", "reference": "We open at 9 am", "keywords": [["9 am"]]},  # EM 1, F1 1
        {"prediction": "bike bike bike", "reference": "bike"},                                     # EM 0, F1 .5
        {"prediction": "E1 is heat", "reference": "E1 means too hot", "keywords": None},           # F1 2/7
    ]
    out = score_answers(rows)
    assert out["n"] == 3
    assert out["accuracy"] == pytest.approx(1 / 3)
    assert out["exact_match"] == pytest.approx(1 / 3)
    # row 3: pred [e1, is, heat], ref [e1, means, too, hot]: 1 common → P 1/3, R 1/4 → 2/7
    assert out["token_f1"] == pytest.approx((1 + 0.5 + 2 / 7) / 3)


def test_score_answers_of_no_rows_is_none() -> None:
    assert score_answers([]) == {"n": 0, "accuracy": None, "exact_match": None, "token_f1": None}


def test_retention_counts_tuned_answers_close_to_the_base_answers() -> None:
    assert RETAINED_F1 == 0.5
    base = ["Paris is the capital of France", "bike", "water boils at 100 degrees"]
    tuned = ["Paris is the capital of France", "bike bike bike", "I do not know"]
    # F1s: 1.0, 0.5 (kept: threshold inclusive), 0.0
    out = retention(base, tuned)
    assert out == {"n": 3, "kept": 2, "retention": pytest.approx(2 / 3), "mean_f1": pytest.approx(0.5)}
    assert retention(base, tuned, threshold=0.9)["kept"] == 1


def test_retention_of_no_answers() -> None:
    assert retention([], []) == {"n": 0, "kept": 0, "retention": None, "mean_f1": None}


def test_retention_rejects_a_length_mismatch() -> None:
    with pytest.raises(ValueError, match="2 base answers but 1 tuned"):
        retention(["a", "b"], ["a"])


def test_answer_metrics_imports_only_the_standard_library() -> None:
    import ast

    import ftedge.runtime.tasks.lm.answer_metrics as m
    tree = ast.parse(open(m.__file__, encoding="utf-8").read())
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert names <= set(sys.stdlib_module_names), names - set(sys.stdlib_module_names)
