"""The portable engine trains like PyTorch: for every zoo family, 50 training steps of the bundle (backbone.onnx +
step.onnx on plain onnxruntime) against the original nn.Module trained by PyTorch autograd with
onnxruntime-training's AdamW / SGD update, same batches, same dropout masks: loss per step within 1e-5
relative and the same final accuracy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from ftedge.export.model_loader import load_model
from ftedge.export.onnx_export import sample_inputs
from ftedge.export.tasks.classify.head import find_head, replace_head, set_modes
from ftedge.export.wrapper import OutputSelector
from ftedge.runtime import load_bundle
from ftedge.runtime.engines.session import BundleSession

from tests.helpers.common import ZOO, ZOO_WIDE, nan_guards
from tests.helpers.zoo import FAMILIES, PORTABLE_ONLY
from tests.helpers.zoo_wide import WIDE

STEPS, N, BATCH, SEED = 50, 48, 16, 123
REL = 1e-5
ALL = {**FAMILIES, **PORTABLE_ONLY}


def _arg(args: list[str], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args else None


def reference_module(model: str, args: list[str], manifest: dict, zoo: Path = ZOO) -> OutputSelector:
    """The nn.Module exactly as `ftedge export` prepared it (same seed, same new head, same modes)."""
    torch.manual_seed(0)
    module = load_model(f"{zoo}:{model}")
    head_name = manifest["head"]
    replaced = (_arg(args, "--labels") or _arg(args, "--num-classes")) and "--keep-head" not in args
    if replaced:
        head_name, _ = find_head(module, _arg(args, "--head"))
        replace_head(module, head_name, len(manifest["labels"]), 0)
    set_modes(module, manifest["trainable"], head_name)
    for m in module.modules():  # the TorchScript exporter drops attention dropout (see export warning): so does the bundle
        if isinstance(m, torch.nn.MultiheadAttention):
            m.dropout = 0.0
    return OutputSelector(module, [s["name"] for s in manifest["inputs"]], _arg(args, "--output"))


def ort_adamw(params, grads, m, v, t, lr, betas=(0.9, 0.999), eps=1e-6):  # noqa: ANN001
    """onnxruntime-training 1.19.2's AdamWOptimizer (adam_mode 1, weight decay 0), written out in float32."""
    b1, b2 = np.float32(betas[0]), np.float32(betas[1])
    bc1, bc2 = np.float32(1) - np.float32(float(b1) ** t), np.float32(1) - np.float32(float(b2) ** t)
    step_size = float(np.float32(lr) * np.float32(np.float32(np.sqrt(bc2)) / bc1))
    with torch.no_grad():
        for p, g, mi, vi in zip(params, grads, m, v):
            mi.mul_(float(b1)).add_(g * float(np.float32(1) - b1))
            vi.mul_(float(b2)).add_(g * g * float(np.float32(1) - b2))
            p.sub_(step_size * mi / (vi.sqrt() + float(np.float32(eps))))


def torch_loss(loss: str, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if loss == "cross-entropy":
        return F.cross_entropy(out, y)
    if loss == "bce":
        return F.binary_cross_entropy_with_logits(out, y)
    return F.mse_loss(out, y) if loss == "mse" else F.l1_loss(out, y)


def targets(bundle, n: int, rng: np.random.Generator) -> np.ndarray:  # noqa: ANN001
    if bundle.loss == "cross-entropy":
        return rng.integers(0, len(bundle.labels), n)
    shape = bundle.output.concrete_shape(n)
    return rng.integers(0, 2, shape).astype(np.float32) if bundle.loss == "bce" else rng.standard_normal(shape).astype(
        np.float32)


def masks_for(specs: list[dict], n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """The portable engine's dropout masks, drawn the way it draws them."""
    out = []
    for m in specs:
        keep = 1.0 - float(m["ratio"])
        shape = [n if d == "batch" else int(d) for d in m["shape"]]
        out.append((rng.random(shape, dtype=np.float32) < keep).astype(np.float32) / keep)
    return out


@pytest.mark.parametrize("family", sorted(ALL))
def test_portable_engine_trains_step_by_step_like_pytorch(family, family_bundle):
    model, args = ALL[family]
    bundle = load_bundle(family_bundle(family))
    _train_side_by_side(bundle, reference_module(model, args, bundle.manifest), sample_inputs(bundle.inputs, N, seed=5))


def padded_text(specs: list, n: int, seed: int) -> list[torch.Tensor]:
    """Token ids and an attention mask with right padding of random length (pad id 0), a few rows unpadded: the
    masks users' batches carry, so the attention's masking paths are in every step."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 96, (n, 12), generator=g)
    lengths = torch.randint(2, 13, (n,), generator=g)
    lengths[::5] = 12
    mask = (torch.arange(12)[None, :] < lengths[:, None]).long()
    feeds = {"input_ids": ids * mask, "attention_mask": mask}
    return [feeds[s.name] for s in specs]


# Hugging Face models whose last block trains, as users load them: default attention (SDPA) and eager.
HF_LAST = ["bert-last", "bert-last-eager", "gpt2-last", "gpt2-last-eager", "llama-last", "llama-last-eager"]


@pytest.mark.parametrize("family", HF_LAST)
def test_hugging_face_last_block_trains_step_by_step_like_pytorch(family, wide_bundles):
    """The attention of a real transformers model in the training step, with padded batches, against the same
    model trained by PyTorch (its own attention implementation, not the exported graph)."""
    model, args = WIDE[family]
    proc, path = wide_bundles(family)
    assert proc.returncode == 0, proc.stderr[-3000:]
    bundle = load_bundle(path)
    ref = reference_module(model, args, bundle.manifest, zoo=ZOO_WIDE)
    want = "eager" if family.endswith("-eager") else "sdpa"
    assert ref.model.config._attn_implementation == want
    assert not bundle.manifest["engines"]["portable"]["masks"]  # no dropout in the step: nothing to align
    guards = nan_guards(onnx.load(str(path / "portable" / "step.onnx")))
    assert bool(guards) == (want == "sdpa")  # SDPA's export guards fully masked rows (NaN test, then Where)
    _train_side_by_side(bundle, ref, padded_text(bundle.inputs, N, seed=5))


def _train_side_by_side(bundle, ref: OutputSelector, raw: list[torch.Tensor]) -> None:  # noqa: ANN001
    """50 steps of the bundle on plain onnxruntime against ``ref`` trained by PyTorch autograd with
    onnxruntime-training's update, same batches and dropout masks; then the same predictions."""
    manifest = bundle.manifest
    specs = list(bundle.inputs)
    family = manifest.get("source_model", "")
    rng = np.random.default_rng(1)
    y = targets(bundle, N, rng)
    lr = float(manifest["optimizer"]["lr"]) * (10 if manifest["optimizer"]["name"] == "adamw" else 1)

    session = BundleSession(bundle)
    assert session.engine_name == "portable"
    feeds = session.embed({s.name: t.numpy() for s, t in zip(specs, raw)})
    axes = {s.name: s.batch_axis or 0 for s in bundle.head_inputs}
    session.model.set_seed(SEED)

    mask_specs = manifest["engines"]["portable"]["masks"]
    modules = dict(ref.model.named_modules())
    current: list[np.ndarray] = []
    for k, m in enumerate(mask_specs):  # "/model/classifier/classifier.0/Dropout_output_0" -> classifier.0
        owner = modules[m["node"].split("/")[-2]]
        owner.register_forward_hook(lambda mod, inp, out, k=k: inp[0] * torch.from_numpy(current[k]) if mod.training else out)
    params = [p for n, p in ref.model.named_parameters() if n in set(manifest["trainable"])]
    mom = [torch.zeros_like(p) for p in params]
    vel = [torch.zeros_like(p) for p in params]
    mask_rng = np.random.default_rng(SEED)
    ours, theirs = [], []
    for step in range(1, STEPS + 1):
        idx = np.arange(((step - 1) * BATCH) % N, ((step - 1) * BATCH) % N + BATCH)
        session.set_learning_rate(lr)
        loss, _ = session.train_step({k: np.take(v, idx, axis=axes[k]) for k, v in feeds.items()}, y[idx])
        ours.append(loss)
        current[:] = masks_for(mask_specs, BATCH, mask_rng)
        out = ref(*[t[idx] for t in raw])
        target = torch.from_numpy(y[idx])
        ref_loss = torch_loss(bundle.loss, out, target)
        grads = torch.autograd.grad(ref_loss, params)
        if manifest["optimizer"]["name"] == "adamw":
            ort_adamw(params, grads, mom, vel, step, lr)
        else:
            with torch.no_grad():
                for p, g in zip(params, grads):
                    p.sub_(float(np.float32(lr)) * g)
        theirs.append(float(ref_loss.detach()))
    rel = [abs(a - b) / max(abs(b), 1e-3) for a, b in zip(ours, theirs)]
    assert max(rel) <= REL, f"{family}: worst step {int(np.argmax(rel)) + 1}: {ours[int(np.argmax(rel))]} vs " \
                            f"{theirs[int(np.argmax(rel))]} (rel {max(rel):.2e})"

    ref.eval()
    with torch.no_grad():
        want = ref(*raw).numpy()
    got = session.predict({s.name: t.numpy() for s, t in zip(specs, raw)})
    if bundle.loss == "cross-entropy":
        assert (got.argmax(1) == y).mean() == (want.argmax(1) == y).mean()
        assert (got.argmax(1) == want.argmax(1)).all()
    else:
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_sdpa_masks_family_trains_through_an_isnan_mask(family_bundle):
    """The padding-masked scaled_dot_product_attention exports with a NaN-guarded mask inside the step graph, the
    NaN test written as Not(Equal(x, x)) (test_portable_engine_trains_step_by_step_like_pytorch[sdpa-masks] holds
    it to PyTorch for 50 steps)."""
    step = onnx.load(str(family_bundle("sdpa-masks") / "portable" / "step.onnx"))
    assert nan_guards(step) and "Where" in {n.op_type for n in step.graph.node}


def test_trainable_batchnorm_updates_its_running_statistics(family_bundle):
    """A trainable BatchNorm normalizes with batch statistics in training steps and its running statistics move
    as PyTorch's do (momentum 0.1, unbiased variance)."""
    model, args = PORTABLE_ONLY["hardswish-block"]
    path = family_bundle("hardswish-block")
    manifest = load_bundle(path).manifest
    buffers = manifest["engines"]["portable"]["buffers"]
    assert "expand.1.running_mean" in buffers and "project.1.running_var" in buffers
    step = onnx.load(str(path / "portable" / "step.onnx"))
    assert "BatchNormalization" not in {n.op_type for n in step.graph.node}  # decomposed into primitives
    session = BundleSession(load_bundle(path))
    before = session.model.buffer_values()
    ref = reference_module(model, args, manifest)
    raw = sample_inputs(session.bundle.inputs, 8, seed=3)
    feeds = session.embed({"x": raw[0].numpy()})
    session.set_learning_rate(0.0)
    session.train_step(feeds, np.zeros(8, np.int64))
    with torch.no_grad():
        ref(*raw)  # train-mode BatchNorm modules update their running statistics
    after = session.model.buffer_values()
    torch_bufs = dict(ref.model.named_buffers())
    for name in buffers:
        assert not np.allclose(before[name], after[name])
        np.testing.assert_allclose(after[name], torch_bufs[name].numpy(), atol=1e-5, rtol=1e-5)
