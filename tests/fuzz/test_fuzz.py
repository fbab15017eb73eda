"""Fuzzing: each harness in tests/fuzz/ replays its saved corpus, then runs hypothesis for a bounded time.

CI: ``pytest tests/test_fuzz.py`` (derandomized, about a minute in all). Deep local fuzzing:
``FTEDGE_FUZZ_SECONDS=600 .venv/bin/python -m pytest tests/fuzz`` (split among the targets, fresh seeds).
A failure prints the input; save it under tests/fuzz/corpus/<target>/ as a regression example.

Corpus inputs that reproduce a bug owned elsewhere are listed in ``KNOWN_BUGS`` (strict xfail: once the owner
fixes it, the XPASS fails the run — then remove the entry); the random runs skip those same signatures
(``fuzz.known``) so they keep looking for new bugs.
"""

from __future__ import annotations

import importlib

import pytest

import tests.fuzz.common as common
from tests.fuzz.common import TARGETS, corpus, run_budgeted

# target -> examples per derandomized CI run (sized for ~60 s in all on a shared 2-core box)
CI_EXAMPLES = {"wav": 1800, "bundle": 800, "deploy": 400, "commands": 2200, "collector": 450, "http": 400,
               "detect_yaml": 200, "detect_labels": 120, "detect_coco": 200, "calibration": 150}
# "target/file" -> reason: a bug in a module this suite does not own (signatures in tests/fuzz/known.py).
# Empty: every bug the harnesses found is fixed and its input replays as a regression example.
KNOWN_BUGS: dict[str, str] = {}


def _corpus_params() -> list:
    params = []
    for target in TARGETS:
        for path in corpus(target):
            key = f"{target}/{path.name}"
            marks = [pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[key])] if key in KNOWN_BUGS else []
            params.append(pytest.param(target, path, id=key, marks=marks))
    return params


@pytest.mark.parametrize(("target", "path"), _corpus_params())
def test_corpus_replays_cleanly(target, path, monkeypatch):
    monkeypatch.setattr(common, "STRICT_KNOWN", True)  # a known bug fails here (its strict xfail documents it)
    importlib.import_module(f"tests.fuzz.{target}").check(path.read_bytes())


@pytest.mark.parametrize("target", TARGETS)
def test_fuzz(target):
    harness = importlib.import_module(f"tests.fuzz.{target}")
    run_budgeted(harness.check, harness.inputs(), CI_EXAMPLES[target])
