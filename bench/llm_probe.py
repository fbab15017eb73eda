"""Exploratory PyTorch-only probes behind the LLM benchmark's recipe (host venv; not device code, not a contender).

    .venv/bin/python -m bench.llm_probe features            # how far frozen SmolLM2 features separate the FAQ
    .venv/bin/python -m bench.llm_probe recipe --rank 32     # one PEFT fine-tune: paraphrase accuracy, retention
    .venv/bin/python -m bench.llm_probe recipe --replay 100 --lr 5e-4   # + self-distillation replay
    (--json before the subcommand ends the output with one JSON line)

Data: examples/llm/make_faq.py (SYNTHETIC FAQ + REAL chatterbot questions), written to --data if missing.

``features``: per layer, the mean (and last-token) hidden state of each prompt, standardized and L2-normalized.
(1) Which of the 25 FAQ entries a held-out paraphrase asks about, by nearest training prompt and by nearest
class centroid (4 training phrasings per entry): how much of the paraphrase problem the frozen model already
solves. (2) The adapter router's task: logistic regression (ftedge.runtime.tasks.lm.router) on training prompts vs
offtopic.jsonl, scored on the held-out paraphrases (should be inside) and general.jsonl (should be outside).

``recipe``: bench/llm_reference.py's fine-tune (PEFT, same recipe, last epoch kept), answers by batched greedy
decoding (left padding, <= 48 new tokens), scored with ftedge.runtime.tasks.lm.answer_metrics: paraphrase accuracy and
retention of the base answers on general.jsonl, adapter applied to every prompt (no router). ``--replay N``
mixes N off-topic prompts with the base model's own greedy answers into training (self-distillation replay).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from bench import llm_reference as R
from bench._common import ROOT, read_jsonl
from ftedge.runtime.tasks.lm import answer_metrics
from ftedge.runtime.tasks.lm.router import fit_router


def data(folder: Path) -> dict[str, list[dict]]:
    if not (folder / "offtopic.jsonl").is_file():
        subprocess.run([sys.executable, str(ROOT / "examples" / "llm" / "make_faq.py"), str(folder)], check=True,
                       stdout=subprocess.DEVNULL)
    return {k: read_jsonl(folder / f"{f}.jsonl") for k, f in (("train", "faq_train"), ("held", "faq_heldout"),
                                                         ("general", "general"), ("off", "offtopic"))}


def batch_answers(model, tok, prompts: list[str], max_new: int = 48, bs: int = 16) -> list[str]:  # noqa: ANN001
    end = tok.convert_tokens_to_ids(R.END)
    tok.padding_side = "left"
    out = []
    for i in range(0, len(prompts), bs):
        texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
                 for p in prompts[i:i + bs]]
        enc = tok(texts, add_special_tokens=False, return_tensors="pt", padding=True)
        with torch.inference_mode():
            o = model.generate(**enc, do_sample=False, max_new_tokens=max_new, eos_token_id=end, pad_token_id=end)
        out += [tok.decode(r[enc.input_ids.shape[1]:], skip_special_tokens=True).strip() for r in o]
    return out


def features(args: argparse.Namespace) -> dict:
    d = data(Path(args.data))
    model, tok, _ = R.load_base(args.threads)

    def feats(prompts: list[str]) -> np.ndarray:  # [N, 2, layers + 1, D]: mean, last token
        rows = []
        with torch.inference_mode():
            for p in prompts:
                ids, _ = R.encode(tok, p)
                hs = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
                rows.append([[h[0].mean(0).numpy() for h in hs], [h[0, -1].numpy() for h in hs]])
        return np.array(rows)

    f = {k: feats([r["prompt"] for r in rows]) for k, rows in d.items()}
    ids = sorted({r["id"] for r in d["train"]})
    y_tr = np.array([ids.index(r["id"]) for r in d["train"]])
    y_te = np.array([ids.index(r["id"]) for r in d["held"]])
    out = {"entries": len(ids), "layers": {}}
    for layer in range(0, f["train"].shape[2], 2):
        for k, kind in enumerate(("mean", "last")):
            a, b = f["train"][:, k, layer], f["held"][:, k, layer]
            mu, sd = a.mean(0), a.std(0) + 1e-6
            za, zb = (a - mu) / sd, (b - mu) / sd
            za /= np.linalg.norm(za, axis=1, keepdims=True)
            zb /= np.linalg.norm(zb, axis=1, keepdims=True)
            cent = np.stack([za[y_tr == c].mean(0) for c in range(len(ids))])
            router = fit_router(f["train"][:, k, layer], f["off"][:, k, layer])
            out["layers"][f"{layer}/{kind}"] = {
                "entry_1nn": float((y_tr[(zb @ za.T).argmax(1)] == y_te).mean()),
                "entry_centroid": float(((zb @ cent.T).argmax(1) == y_te).mean()),
                "router_heldout_inside": float((router.probability(f["held"][:, k, layer]) >= 0.5).mean()),
                "router_general_outside": float((router.probability(f["general"][:, k, layer]) < 0.5).mean())}
            print(layer, kind, {n: round(v, 3) for n, v in out["layers"][f"{layer}/{kind}"].items()}, flush=True)
    return out


def recipe(args: argparse.Namespace) -> dict:
    d = data(Path(args.data))
    torch.manual_seed(0)
    model, tok, _ = R.load_base(args.threads)
    general = [r["prompt"] for r in d["general"]]
    base_general = batch_answers(model, tok, general)
    replay = []
    if args.replay:
        prompts = [r["prompt"] for r in d["off"][:args.replay]]
        replay = [{"prompt": p, "answer": a} for p, a in zip(prompts, batch_answers(model, tok, prompts)) if a]
    cfg = R.ReferenceConfig(rank=args.rank, alpha=2 * args.rank, trainable_blocks=args.blocks, lr=args.lr,
                            epochs=args.epochs, batch_size=args.batch_size, threads=args.threads)
    hook = None
    if args.hidden_noise > 0:  # Gaussian noise on the hidden states entering the first adapted block, training only
        gen = torch.Generator().manual_seed(0)

        def noisy(module, inputs):  # noqa: ANN001, ANN202
            if not module.training:
                return None
            h = inputs[0]
            rms = h.pow(2).mean(-1, keepdim=True).sqrt()
            return (h + args.hidden_noise * rms * torch.randn(h.shape, generator=gen), *inputs[1:])

        layer = model.model.layers[model.config.num_hidden_layers - args.blocks]
        hook = layer.register_forward_pre_hook(noisy)
    ft = R.finetune(model, tok, d["train"] + replay, cfg)
    if hook is not None:
        hook.remove()
    tuned = ft["model"]
    held = batch_answers(tuned, tok, [r["prompt"] for r in d["held"]])
    s = answer_metrics.score_answers({"prediction": p, "reference": r["answer"], "keywords": r["keywords"]}
                                     for p, r in zip(held, d["held"]))
    ret = answer_metrics.retention(base_general, batch_answers(tuned, tok, general))
    out = {"settings": {k: v for k, v in vars(args).items() if k not in ("func",)}, "train_seconds": ft["train_seconds"],
           "losses": ft["losses"], "paraphrase_accuracy": s["accuracy"], "token_f1": s["token_f1"],
           "retention": ret["retention"], "replay_rows": len(replay)}
    print(json.dumps({k: out[k] for k in ("paraphrase_accuracy", "token_f1", "retention", "train_seconds")}))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.llm_probe", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="/tmp/ftedge-llm-probe", help="make_faq.py output folder (made if missing)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true", help="end with one JSON line of the figures")
    sub = ap.add_subparsers(required=True)
    sub.add_parser("features", help="frozen-feature probes").set_defaults(func=features)
    r = sub.add_parser("recipe", help="one PEFT fine-tune, adapter on every prompt")
    r.add_argument("--rank", type=int, default=8)
    r.add_argument("--blocks", type=int, default=4)
    r.add_argument("--lr", type=float, default=2e-3)
    r.add_argument("--epochs", type=int, default=10)
    r.add_argument("--batch-size", type=int, default=4)
    r.add_argument("--replay", type=int, default=0, help="off-topic prompts answered by the base model, trained on")
    r.add_argument("--hidden-noise", type=float, default=0.0,
                   help="std of Gaussian noise (times each token's RMS) added to the hidden states at the cut while "
                   "training (NEFTune-like regularization at the cached layer)")
    r.set_defaults(func=recipe)
    args = ap.parse_args(argv)
    out = args.func(args)
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
