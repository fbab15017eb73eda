"""`ftedge export --task causal-lm`: a pretrained Llama-style LM → a LoRA training bundle for the portable engine.

The lower ``layers - N`` blocks are the frozen backbone (run once per training sequence, their hidden states
cached on the device); the top ``--trainable-blocks N`` blocks get LoRA adapters on the projections
``--lora-targets`` selects, and train with the frozen final norm and LM head; ``decoder.onnx`` generates with a
KV cache and the adapters fed as inputs (side-loaded: a personalized version is the adapter file alone).
Graphs: :mod:`ftedge.export.tasks.lm.graphs`. Checked against the Hugging Face model before the bundle is written.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ftedge.bundle.manifest import BATCH, TensorSpec
from ftedge.errors import ExportError, ModelLoadError, UsageError
from ftedge.export.tasks.lm import graphs as lm_graphs
from ftedge.export.bundle_writer import BundleStage, manifest_header
from ftedge.export.tasks.lm.llama import Llama, LlamaShape, answer_nll, hf_weights, init_lora, lora_names
from ftedge.export.model_loader import load_model
from ftedge.export.options import ExportOptions
from ftedge.export.step_graph import OPTIMIZER_DEFAULTS
from ftedge.runtime.tasks.lm.chat import ChatFormat

log = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer.json"
DEFAULT_TARGETS = r"(q|k|v|o|gate|up|down)_proj$"
PARITY_LOGITS = 2e-3   # max |logit diff| vs transformers, fp32 through every layer
_S = "\x00FTEDGE-SENTINEL-{}\x00"


def _render(tok: Any, messages: list[dict[str, str]], gen: bool) -> str:
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)


def chat_format(tok: Any) -> tuple[ChatFormat, str]:
    """The tokenizer's Jinja chat template as per-role prefix/suffix strings, checked against the template on
    several conversations; raises ExportError when the template is not of that form."""
    jinja = getattr(tok, "chat_template", None)
    if not isinstance(jinja, str) or not jinja:
        raise ExportError("the tokenizer has no chat template; causal-LM bundles need an instruction-tuned model")
    u, s, a = _S.format("user"), _S.format("system"), _S.format("assistant")
    try:
        gen = _render(tok, [{"role": "user", "content": u}], True)
        nogen = _render(tok, [{"role": "user", "content": u}], False)
        with_sys = _render(tok, [{"role": "system", "content": s}, {"role": "user", "content": u}], False)
        full = _render(tok, [{"role": "system", "content": s}, {"role": "user", "content": u},
                             {"role": "assistant", "content": a}], False)
    except Exception as exc:
        raise ExportError(f"rendering the chat template failed: {exc}") from exc
    if not gen.startswith(nogen) or not full.startswith(with_sys):
        raise ExportError("the chat template does not render turns as a growing prefix; it is not supported")
    generation_prompt = gen[len(nogen):]
    sys_pre, rest = with_sys.split(s, 1)
    between, user_post = rest.split(u, 1)          # between = system suffix + user prefix
    asst_pre, asst_post = full[len(with_sys):].split(a, 1)
    before_user = nogen.split(u, 1)[0]             # the default system turn (if any) + user prefix
    checks = [
        [{"role": "user", "content": "What are your opening hours?"}],
        [{"role": "system", "content": "You answer briefly."}, {"role": "user", "content": "Hi"}],
        [{"role": "user", "content": "One"}, {"role": "assistant", "content": "Two"}, {"role": "user", "content": "3?"}],
    ]
    stop = tuple(t for t in [getattr(tok, "eos_token", None)] if t)
    candidates = []
    for k in range(len(between) + 1):  # where the system suffix ends and the user prefix begins
        sys_post, user_pre = between[:k], between[k:]
        default_system = None
        if before_user != user_pre:
            turn = before_user[: len(before_user) - len(user_pre)] if before_user.endswith(user_pre) else None
            if turn is None or not (turn.startswith(sys_pre) and turn.endswith(sys_post)) or len(turn) < len(sys_pre) + len(sys_post):
                continue
            default_system = turn[len(sys_pre): len(turn) - len(sys_post)]
        fmt = ChatFormat(turn={"system": (sys_pre, sys_post), "user": (user_pre, user_post),
                               "assistant": (asst_pre, asst_post)},
                         default_system=default_system, generation_prompt=generation_prompt, stop=stop)
        if all(fmt.render(conv, g) == _render(tok, conv, g) for conv in checks for g in (True, False)):
            candidates.append(fmt)
    if not candidates:
        raise ExportError("the chat template is not a fixed prefix/suffix per role (checked on test conversations); "
                          "this template is not supported yet")
    # several splits reproduce the template; turns that end alike (system as user) is the natural one
    fmt = next((f for f in candidates if f.turn["system"][1] == f.turn["user"][1]), candidates[0])
    asst_post = fmt.turn["assistant"][1]
    if asst_post and fmt.stop and not asst_post.startswith(fmt.stop[0]):
        log.warning("the assistant turn ends with %r, not the EOS token %r", asst_post, fmt.stop[0])
    return fmt, jinja


def _tokenizer_file(tok: Any, out: Path) -> None:
    """``tokenizer.json`` of a fast tokenizer, checked to encode like transformers does."""
    import tokenizers

    with tempfile.TemporaryDirectory() as tmp:
        try:
            tok.save_pretrained(tmp)
        except Exception as exc:
            raise ExportError(f"cannot save the tokenizer: {exc}") from exc
        src = Path(tmp) / TOKENIZER_FILE
        if not src.is_file():
            raise ExportError("the model's tokenizer is not a fast (tokenizers) tokenizer; the device needs tokenizer.json")
        out.write_bytes(src.read_bytes())
    device = tokenizers.Tokenizer.from_file(str(out))
    for text in ("<|im_start|>user\nWhen do you open on Sunday?<|im_end|>\n", "Error E4: café 9:30 – ok?"):
        if device.encode(text, add_special_tokens=False).ids != tok(text, add_special_tokens=False).input_ids:
            raise ExportError("tokenizer.json encodes differently from the transformers tokenizer; not supported")


def _validate(opts: ExportOptions, shape: LlamaShape) -> None:
    n = opts.trainable_blocks
    if not 1 <= n <= shape.layers - 1:
        raise UsageError(f"--trainable-blocks {n}: the model has {shape.layers} blocks; train 1..{shape.layers - 1} "
                         "(at least one stays frozen as the cached backbone)")
    if opts.lora_rank < 1:
        raise UsageError("--lora RANK must be a positive integer")
    if opts.max_length is not None and opts.max_length < 8:
        raise UsageError("--max-length must be at least 8 tokens")


def _parity(hf: Any, model: Llama, cut: int, names: list[str], init: dict[str, torch.Tensor], files: dict[str, Path],
            tol: float) -> dict[str, Any]:
    """The exported graphs against transformers' model (adapters off) and against the eager PyTorch functions
    (adapters on, random B so they change the output)."""
    from ftedge.runtime.engines.ort_backend import InferenceModel

    g = torch.Generator().manual_seed(7)
    s = model.s
    ids = torch.randint(0, s.vocab, (2, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).logits.float()
    lora = {k: (v if k.endswith("lora_A") else 0.02 * torch.randn(v.shape, generator=g)) for k, v in init.items()}
    with torch.no_grad():
        ref_lora = model.forward(ids, mask, lora)
    out: dict[str, Any] = {"reference": "transformers LlamaForCausalLM (adapters off); eager ftedge.export.tasks.lm.llama "
                           "(adapters on)", "tolerance": tol}
    dec = InferenceModel(files["decoder"]).session
    empty = {f"past_{kv}.{i}": np.zeros((2, s.kv_heads, 0, s.head_dim), np.float32)
             for i in range(s.layers) for kv in ("key", "value")}
    feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "position_ids": np.tile(np.arange(12), (2, 1)),
             "logit_index": np.arange(12), **empty}
    worst = {}
    for label, lo, r in (("decoder", init, ref), ("decoder+lora", lora, ref_lora)):
        got = dec.run(["logits"], {**feeds, **{k: v.numpy() for k, v in lo.items()}})[0]
        keep = mask.numpy().astype(bool)
        worst[label] = float(np.abs(got - r.numpy())[keep].max())
    bb = InferenceModel(files["backbone"]).session
    hidden = bb.run(["hidden"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    head = InferenceModel(files["head"]).session
    pos = torch.tensor([[2, 5, 8], [1, 4, 7]])
    labels = torch.randint(0, s.vocab, (2, 3), generator=g)
    nll = head.run(["token_nll"], {"hidden": hidden, "attention_mask": mask.numpy(), "label_pos": pos.numpy(),
                                   "labels": labels.numpy(), **{k: v.numpy() for k, v in lora.items()}})[0]
    with torch.no_grad():
        x = model.layers_forward(model.embed(ids), range(s.layers), mask, lora)
        ref_nll = answer_nll(model, x, pos, labels).numpy()
    worst["backbone+head token_nll"] = float(np.abs(nll - ref_nll).max())
    cut_mean = dec.run(["cut_mean"], {**feeds, **{k: v.numpy() for k, v in init.items()}})[0]
    m = mask.numpy()[..., None].astype(np.float32)
    worst["decoder cut_mean (router feature)"] = float(np.abs(cut_mean - (hidden * m).sum(1) / m.sum(1)).max())
    out["max_abs_diff"] = worst
    bad = [f"{k}: {v:.3g}" for k, v in worst.items() if not v <= tol]
    if bad:
        raise ExportError("the exported causal-LM graphs disagree with PyTorch: " + "; ".join(bad))
    return out


QUANT_PROMPTS = ("What are your opening hours?", "Explain what a KV cache is in one sentence.",
                 "Write a short greeting for a new customer.")


def _greedy(sess: Any, ids: list[int], steps: int, shape: LlamaShape, adapter: dict[str, np.ndarray]) -> list[int]:
    """Greedy tokens from a decoder session with its KV cache (batch 1): the export-time twin of the device's
    loop, kept here so the check needs no runtime state."""
    outs = [o.name for o in sess.get_outputs()]
    past = {f"past_{kv}.{i}": np.zeros((1, shape.kv_heads, 0, shape.head_dim), np.float32)
            for i in range(shape.layers) for kv in ("key", "value")}
    seq, done, got = list(ids), 0, []
    for _ in range(steps):
        feeds = {"input_ids": np.array([seq]), "attention_mask": np.ones((1, done + len(seq)), np.int64),
                 "position_ids": np.arange(done, done + len(seq))[None], "logit_index": np.array([len(seq) - 1]),
                 **past, **adapter}
        res = dict(zip(outs, sess.run(outs, feeds)))
        nxt = int(res["logits"][0, -1].argmax())
        got.append(nxt)
        done += len(seq)
        seq = [nxt]
        past = {n: res[n.replace("past_", "present_")] for n in past}
    return got


def _quantized_parity(hf: Any, tok: Any, fmt: ChatFormat, model: Llama, init: dict[str, torch.Tensor],
                      fp32: Path, quantized: Path, kind: str, steps: int = 16) -> dict[str, Any]:
    """Informational (a quantized graph is not expected to meet the fp32 tolerance): the quantized decoder's max
    |logit diff| against transformers (adapters off, the fp32 check's inputs) and how many greedy tokens it
    agrees with the fp32 decoder on a few chat prompts."""
    from ftedge.runtime.engines.ort_backend import InferenceModel

    s = model.s
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, s.vocab, (2, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).logits.float().numpy()
    qs = InferenceModel(quantized).session
    adapter = {k: v.numpy() for k, v in init.items()}
    empty = {f"past_{kv}.{i}": np.zeros((2, s.kv_heads, 0, s.head_dim), np.float32)
             for i in range(s.layers) for kv in ("key", "value")}
    got = qs.run(["logits"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy(),
                              "position_ids": np.tile(np.arange(12), (2, 1)), "logit_index": np.arange(12),
                              **empty, **adapter})[0]
    diff = float(np.abs(got - ref)[mask.numpy().astype(bool)].max())
    fs = InferenceModel(fp32).session
    agree, total, exact = 0, 0, 0
    for prompt in QUANT_PROMPTS:
        prompt_ids = tok(fmt.render([{"role": "user", "content": prompt}], True), add_special_tokens=False).input_ids
        a, b = _greedy(fs, prompt_ids, steps, s, adapter), _greedy(qs, prompt_ids, steps, s, adapter)
        same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), steps)
        agree, total, exact = agree + same, total + steps, exact + (same == steps)
    return {"weights": kind, "max_abs_logit_diff_vs_transformers": diff, "informational": True,
            "greedy_agreement_vs_fp32": {"prompts": len(QUANT_PROMPTS), "new_tokens": steps, "identical": exact,
                                         "tokens_before_first_divergence": agree, "of": total}}


def export_causal_lm(opts: ExportOptions, progress: Callable[[str], None] = lambda _m: None,
                     sign_key: str | Path | None = None) -> dict[str, Any]:
    """Export ``opts.model`` (a Hugging Face Llama-style causal LM; its tokenizer as ``ftedge_tokenizer`` or
    ``--tokenizer DIR``) into a LoRA bundle at ``opts.output``; return the manifest."""
    signer = None
    if sign_key is not None:
        from ftedge.bundle.signing import manifest_signer

        signer = manifest_signer(sign_key)
    t0 = time.perf_counter()
    progress("loading model")
    hf = load_model(opts.model)
    tok = getattr(hf, "ftedge_tokenizer", None)
    if opts.tokenizer is not None:
        try:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(opts.tokenizer))
        except Exception as exc:
            raise ModelLoadError(f"cannot load the tokenizer at {opts.tokenizer}: {exc}") from exc
    if tok is None:
        raise UsageError("a causal-LM export needs the model's tokenizer: pass --tokenizer DIR (a transformers "
                         "tokenizer folder) or return a model with `ftedge_tokenizer` set")
    hf.eval()
    shape = LlamaShape.from_config(hf.config)
    _validate(opts, shape)
    fmt, jinja = chat_format(tok)
    max_length = opts.max_length or 256
    cut = shape.layers - opts.trainable_blocks
    top = range(cut, shape.layers)
    w = hf_weights(hf)
    alpha = opts.lora_alpha if opts.lora_alpha is not None else 2.0 * opts.lora_rank
    model = Llama(shape, w, lora_scale=alpha / opts.lora_rank)
    pairs = lora_names(top, opts.lora_targets or DEFAULT_TARGETS)
    names = [n for p in pairs for n in p]
    init = init_lora(w, pairs, opts.lora_rank, opts.seed)
    stage = BundleStage(opts.output, opts.force)
    try:
        _tokenizer_file(tok, stage.path(TOKENIZER_FILE))
        files = {"backbone": stage.path("backbone.onnx"), "step": stage.path("portable/step.onnx"),
                 "head": stage.path("portable/head.onnx"), "decoder": stage.path("decoder.onnx")}
        progress(f"exporting the frozen backbone (blocks 0-{cut - 1})")
        lm_graphs.write_backbone(model, cut, files["backbone"])
        progress(f"building the LoRA training step (blocks {cut}-{shape.layers - 1}, rank {opts.lora_rank}, "
                 f"{len(pairs)} adapted projections)")
        check = lm_graphs.write_step(model, top, names, init, files["step"])
        lm_graphs.write_head(model, top, names, init, files["head"])
        progress("exporting the KV-cache decoder")
        quant = opts.quantize_decoder
        scratch = tempfile.TemporaryDirectory(prefix="ftedge-decoder-") if quant else None
        decoder_fp32 = Path(scratch.name) / "decoder.onnx" if scratch else files["decoder"]
        lm_graphs.write_decoder(model, names, init, decoder_fp32, cut)
        from safetensors.numpy import save_file

        save_file({k: np.ascontiguousarray(v.numpy()) for k, v in init.items()}, str(stage.path("portable/init.safetensors")))
        if opts.skip_parity:
            log.warning("--skip-parity: the bundle is NOT checked against PyTorch")
            parity: dict[str, Any] = {"skipped": True}
        else:
            progress("checking parity against PyTorch")
            parity = {**_parity(hf, model, cut, names, init, {**files, "decoder": decoder_fp32},
                                max(opts.tolerance, PARITY_LOGITS)), "skipped": False}
        parity["step"] = check
        quant_info: dict[str, Any] | None = None
        if quant:
            progress(f"quantizing the decoder ({quant})")
            quant_info = lm_graphs.quantize_decoder(decoder_fp32, files["decoder"], quant)
            if not opts.skip_parity:
                parity["decoder_quantized"] = _quantized_parity(hf, tok, fmt, model, init, decoder_fp32,
                                                                files["decoder"], quant)
            assert scratch is not None
            scratch.cleanup()
        rel = lambda p: p.relative_to(stage.dir).as_posix()  # noqa: E731
        roles = {"tokenizer": TOKENIZER_FILE, "backbone": rel(files["backbone"]), "step": rel(files["step"]),
                 "head": rel(files["head"]), "init": "portable/init.safetensors", "decoder": rel(files["decoder"])}
        n_lora = int(sum(v.numel() for v in init.values()))
        manifest = {
            **manifest_header(opts, 17),
            "task": "causal-lm",
            "loss": "cross-entropy",
            "inputs": [TensorSpec("input_ids", "int64", [BATCH, "seq"], [0, shape.vocab]).to_json(),
                       TensorSpec("attention_mask", "int64", [BATCH, "seq"], [0, 2]).to_json()],
            "head_inputs": [TensorSpec("hidden", "float32", [BATCH, "seq", shape.hidden]).to_json(),
                            TensorSpec("attention_mask", "int64", [BATCH, "seq"]).to_json(),
                            TensorSpec("label_pos", "int64", [BATCH, "answer"]).to_json()],
            "output": TensorSpec("token_nll", "float32", [BATCH, "answer"]).to_json(),
            "labels": None,
            "optimizer": {"name": "adamw", "lr": opts.lr, **OPTIMIZER_DEFAULTS["adamw"]},
            "engines": {"portable": {"files": {"step": roles["step"], "head": roles["head"], "init": roles["init"]},
                                     "params": names, "buffers": [], "optimizer": "adamw", "masks": [],
                                     "prepack": False}},
            "layout": "split",
            "roles": roles,
            "llm": {"architecture": "llama", "layers": shape.layers, "hidden": shape.hidden, "heads": shape.heads,
                    "kv_heads": shape.kv_heads, "head_dim": shape.head_dim, "vocab": shape.vocab,
                    "cut": cut, "trainable_blocks": opts.trainable_blocks,
                    "lora": {"rank": opts.lora_rank, "alpha": alpha, "targets": opts.lora_targets or DEFAULT_TARGETS,
                             "adapted": [p[0][: -len(".lora_A")] for p in pairs], "parameters": n_lora},
                    "adapter": "side-loaded",
                    "router_feature": "cut_mean",  # the decoder output an adapter router reads (runtime/tasks/lm/router.py)
                    "decoder_weights": quant or "fp32",
                    **({"decoder_quantization": quant_info} if quant_info else {}),
                    "eos": fmt.stop[0] if fmt.stop else None,
                    # the positions the model was built for: a prompt plus its answer never goes beyond
                    "context": getattr(hf.config, "max_position_embeddings", None)},
            "trainable": names,
            "frozen": ["(every base-model weight)"],
            "trainable_parameter_count": n_lora,
            "parameter_count": int(sum(p.numel() for p in hf.parameters())),
            "parity": parity,
            "preprocessing": {"type": "chat", "tokenizer": TOKENIZER_FILE, "max_length": max_length,
                              "chat": {**fmt.to_json(), "jinja": jinja}},
            "export_seconds": round(time.perf_counter() - t0, 3),
        }
        stage.commit(manifest, signer)
    except BaseException:
        stage.discard()
        raise
    return manifest
