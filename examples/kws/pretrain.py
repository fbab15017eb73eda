"""Pretrain the shipped keyword-spotting base model on SYNTHETIC speech of six source accents.

    .venv/bin/python examples/kws/pretrain.py            # writes examples/kws/kws_base.pt + training_report.json

Data: ``examples/demo/make_kws_dataset.py`` with espeak-ng voices en-us, en-gb, en-gb-x-rp, en-us-nyc, en-029 and
en-gb-x-gbclan only (never the held-out accents), decoded and clipped with the device's own loader
(``ftedge.runtime.data.audio``) so training sees exactly what the device feeds. Augmentation on the waveform:
random time shift (±100 ms), gain (×0.5–1.5) and white noise (SNR 10–40 dB, 80 % of clips).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))

from model import CLIP_SAMPLES, SAMPLE_RATE, WEIGHTS, WORDS, KeywordSpotter  # noqa: E402

SOURCE_VOICES = ["en-us", "en-gb", "en-gb-x-rp", "en-us-nyc", "en-029", "en-gb-x-gbclan"]


def _load_bench(name: str, folder: str = "bench"):  # noqa: ANN202
    spec = importlib.util.spec_from_file_location(name, ROOT / folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_clips(root: Path, words: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Every ``root/<word>/*.wav`` through the device loader → float32 [N, 16000], labels, file names."""
    from ftedge.runtime.data.audio import prepare_clip, read_wav

    xs, ys, names = [], [], []
    for label, word in enumerate(words):
        for f in sorted((root / word).glob("*.wav")):
            samples, rate = read_wav(f)
            xs.append(prepare_clip(samples, rate, SAMPLE_RATE, CLIP_SAMPLES))
            ys.append(label)
            names.append(f"{word}/{f.name}")
    return np.stack(xs), np.asarray(ys, np.int64), names


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    shift = torch.randint(-1600, 1601, (n,), generator=gen)
    out = torch.stack([torch.roll(x[i], int(shift[i])) for i in range(n)])
    gain = 0.5 + torch.rand(n, 1, generator=gen)
    out = out * gain
    rms = out.pow(2).mean(dim=1, keepdim=True).sqrt().clamp(min=1e-4)
    snr_db = 10 + 30 * torch.rand(n, 1, generator=gen)
    noise = torch.randn(out.shape, generator=gen) * rms / (10 ** (snr_db / 20))
    use = (torch.rand(n, 1, generator=gen) < 0.8).float()
    return (out + use * noise).clamp(-1, 1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, help="an existing dataset dir (default: synthesize one)")
    ap.add_argument("--per-word", type=int, default=40, help="clips per word per voice when synthesizing")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=WEIGHTS)
    args = ap.parse_args(argv)
    t0 = time.time()
    torch.manual_seed(args.seed)
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            data = Path(tmp) / "kws"
            _load_bench("make_kws_dataset", "examples/demo").make_dataset(data, SOURCE_VOICES, WORDS, args.per_word, args.seed)
        x, y, names = load_clips(data, WORDS)
    rng = np.random.default_rng(args.seed)
    val = np.zeros(len(y), bool)
    for c in range(len(WORDS)):  # stratified 15 % validation from the same source voices
        idx = rng.permutation(np.flatnonzero(y == c))
        val[idx[: max(1, len(idx) * 15 // 100)]] = True
    xt, yt = torch.from_numpy(x[~val]), torch.from_numpy(y[~val])
    xv, yv = torch.from_numpy(x[val]), torch.from_numpy(y[val])
    model = KeywordSpotter()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-3)
    steps = args.epochs * math.ceil(len(yt) / args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(args.seed)
    history = []
    for epoch in range(1, args.epochs + 1):
        model.train()
        perm = torch.randperm(len(yt), generator=gen)
        total = 0.0
        for b in perm.split(args.batch_size):
            wave = augment(xt[b], gen)
            with torch.no_grad():
                feats = model.frontend(wave)
            loss = nn.functional.cross_entropy(model.classifier(model.features(feats.unsqueeze(1))), yt[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss) * len(b)
        model.eval()
        with torch.no_grad():
            acc = float((model(xv).argmax(1) == yv).float().mean())
        history.append({"epoch": epoch, "train_loss": total / len(yt), "val_accuracy": acc})
        print(f"epoch {epoch:2d} loss {total / len(yt):.4f} val acc {acc:.4f}", file=sys.stderr)
    torch.save(model.state_dict(), args.out)
    report = {
        "data": "SYNTHETIC speech (espeak-ng)", "voices": SOURCE_VOICES, "words": WORDS,
        "clips": int(len(y)), "train": int(len(yt)), "val": int(len(yv)), "per_word_per_voice": args.per_word,
        "seed": args.seed, "epochs": args.epochs, "params": sum(p.numel() for p in model.parameters()),
        "val_accuracy": history[-1]["val_accuracy"], "history": history, "seconds": round(time.time() - t0, 1),
        "weights_bytes": args.out.stat().st_size, "torch": torch.__version__,
        "command": "python examples/kws/pretrain.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    (args.out.parent / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "history"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
