"""Last-block training of Hugging Face transformers loaded as users load them (default SDPA attention) against the
same models with eager attention, the path that worked before issue 32: export time and portable training-step time,
same run, same machine.

Reproduce (repo root, host venv; ~3 minutes here, most of it the six exports):

    .venv/bin/python -m bench.attention_step            # Markdown table
    .venv/bin/python -m bench.attention_step --json     # + one JSON object on the last line

ALL INPUTS ARE SYNTHETIC and all weights random: BERT, GPT-2 and Llama at a small-text-model size (hidden 128,
4 heads, ff 512, 2 layers, 32 tokens, right padding of random length), `--trainable` the last block, the final norm
and the head (the same patterns as the wide zoo's "-last" families). Each model is exported twice with the CLI
(`attn=sdpa`, the transformers 5 default, and `attn=eager`), then one `BundleSession` per bundle trains on the same
cached head inputs, batch 32, AdamW, 2 threads; the two bundles of a family alternate in blocks (ABBA), after a
warm-up, and the table gives median step times and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._common import ROOT, md_table, median, progress, timed

BATCH, SEQ, VOCAB = 32, 32, 1000
_SIZE = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512,
             max_position_embeddings=64, num_labels=4)
FAMILIES = {  # family -> (config, model, config kwargs, trainable patterns)
    "bert": ("BertConfig", "BertForSequenceClassification", dict(vocab_size=VOCAB, **_SIZE),
             [r"bert\.encoder\.layer\.1\.", "^classifier"]),
    "gpt2": ("GPT2Config", "GPT2ForSequenceClassification",
             dict(vocab_size=VOCAB, n_embd=128, n_layer=2, n_head=4, n_inner=512, n_positions=64, num_labels=4,
                  pad_token_id=0, bos_token_id=1, eos_token_id=1),
             [r"transformer\.h\.1\.", r"transformer\.ln_f", "^score"]),
    "llama": ("LlamaConfig", "LlamaForSequenceClassification",
              dict(vocab_size=VOCAB, **_SIZE, num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=1),
              [r"model\.layers\.1\.", r"model\.norm", "^score"]),
}


def _make(family: str, attn: str):  # noqa: ANN202
    import torch
    import transformers

    cfg_cls, model_cls, kwargs, _ = FAMILIES[family]
    torch.manual_seed(0)
    cfg = getattr(transformers, cfg_cls)(**kwargs)
    cfg._attn_implementation = attn
    return getattr(transformers, model_cls)(cfg).eval()


# MODEL specs for `ftedge export bench/attention_step.py:<family>_<attn>`
def bert_sdpa():  # noqa: ANN201, D103
    return _make("bert", "sdpa")


def bert_eager():  # noqa: ANN201, D103
    return _make("bert", "eager")


def gpt2_sdpa():  # noqa: ANN201, D103
    return _make("gpt2", "sdpa")


def gpt2_eager():  # noqa: ANN201, D103
    return _make("gpt2", "eager")


def llama_sdpa():  # noqa: ANN201, D103
    return _make("llama", "sdpa")


def llama_eager():  # noqa: ANN201, D103
    return _make("llama", "eager")


def export(family: str, attn: str, work: Path) -> tuple[Path, float]:
    out = work / f"{family}-{attn}"
    cmd = [sys.executable, "-m", "ftedge", "export", f"{Path(__file__)}:{family}_{attn}", "-o", str(out), "--quiet",
           "--force", "--input", f"input_ids:int64:1,{SEQ}:1-{VOCAB}", "--input", f"attention_mask:int64:1,{SEQ}:1-2"]
    for pattern in FAMILIES[family][3]:
        cmd += ["--trainable", pattern]
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"export of {family} ({attn}) failed:\n{proc.stderr[-3000:]}")
    return out, time.perf_counter() - t


def step_times(paths: dict[str, Path], rounds: int, steps: int) -> dict[str, list[float]]:
    """Per-step seconds of each bundle on the same padded batch, the bundles alternating in ABBA blocks."""
    import numpy as np
    from ftedge.runtime import load_bundle
    from ftedge.runtime.engines.session import BundleSession

    rng = np.random.default_rng(0)
    ids = rng.integers(2, VOCAB, (BATCH, SEQ))
    lengths = rng.integers(4, SEQ + 1, BATCH)
    mask = (np.arange(SEQ)[None, :] < lengths[:, None]).astype(np.int64)
    raw = {"input_ids": ids * mask, "attention_mask": mask}
    labels = rng.integers(0, 4, BATCH)
    sessions, feeds = {}, {}
    for k, path in paths.items():
        s = BundleSession(load_bundle(path))
        s.set_learning_rate(1e-4)
        feeds[k] = s.embed(raw)
        sessions[k] = s
    for k in sessions:
        timed(lambda k=k: sessions[k].train_step(feeds[k], labels), 10)  # warm-up
    times: dict[str, list[float]] = {k: [] for k in sessions}
    order = list(sessions)
    for r in range(rounds):
        for k in (order if r % 2 == 0 else order[::-1]):
            times[k] += timed(lambda k=k: sessions[k].train_step(feeds[k], labels), steps)
    return times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.attention_step", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=10, help="ABBA rounds per family (default 10)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per bundle per round (default 20)")
    ap.add_argument("--json", action="store_true", help="also print one JSON object on the last line")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    say = progress()
    rows, report = [], {}
    with tempfile.TemporaryDirectory(prefix="ftedge-attn-") as tmp:
        for family in FAMILIES:
            paths, export_s = {}, {}
            for attn in ("sdpa", "eager"):
                paths[attn], export_s[attn] = export(family, attn, Path(tmp))
                say(f"  exported {family} ({attn}) in {export_s[attn]:.1f} s")
            manifest = json.loads((paths["sdpa"] / "manifest.json").read_text())
            times = step_times(paths, args.rounds, args.steps)
            ms = {k: median(v) * 1e3 for k, v in times.items()}
            report[family] = {"export_s": export_s, "step_ms": ms, "steps": {k: len(v) for k, v in times.items()},
                              "step_parity_sdpa": manifest["parity"]["step"]["max_rel_diff"]}
            rows.append([family, f"{export_s['sdpa']:.1f} / {export_s['eager']:.1f}",
                         f"{export_s['sdpa'] / export_s['eager']:.2f}×", f"{ms['sdpa']:.2f} / {ms['eager']:.2f}",
                         f"{ms['sdpa'] / ms['eager']:.2f}×", f"{manifest['parity']['step']['max_rel_diff']:.1e}"])
    print("\n".join(md_table(["family (last block + head)", "export s, SDPA / eager", "ratio", "step ms, SDPA / eager",
                    "ratio", "SDPA step parity (max rel)"], rows)))
    if args.json:
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
