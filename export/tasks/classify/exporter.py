"""`ftedge export`: PyTorch model → verified training bundle."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import onnx
import torch

from ftedge.errors import ExportError, UsageError
from ftedge.export import artifacts as art
from ftedge.export.backbone import quantize_int8, quantize_qdq, save_optimized
from ftedge.export.calibration import CALIBRATION_METHOD, calibration_feeds
from ftedge.export.bundle_writer import BundleStage, manifest_header
from ftedge.export.graph_split import measure_tensors, split_graph
from ftedge.export.tasks.classify.head import find_head, replace_head, select_trainable, set_modes
from ftedge.export.model_loader import load_model
from ftedge.export.onnx_export import (
    check_trainable_initializers,
    export_graph,
    fold_eval_batchnorm,
    frozen_parameter_names,
    sample_inputs,
)
from ftedge.export.options import ExportOptions
from ftedge.export.parity import check_parity
from ftedge.export.preprocessing import TOKENIZER_FILE, image_preprocessing, text_preprocessing
from ftedge.export.wrapper import OutputSelector
from ftedge.export.step_graph import OPTIMIZER_DEFAULTS, build_step
from ftedge.bundle.manifest import BATCH, LOSSES, OPTIMIZERS, TensorSpec
from ftedge.runtime.engines import ort_backend
from ftedge.runtime.engines.ort_backend import has_training_api

log = logging.getLogger(__name__)


def _validate(opts: ExportOptions) -> None:
    if not opts.inputs:
        raise UsageError("give at least one --input NAME:DTYPE:D1,D2,... (batch dimension first)")
    names = [s.name for s in opts.inputs]
    if len(set(names)) != len(names):
        raise UsageError(f"--input names must be unique, got {names}")
    if opts.loss not in LOSSES:
        raise UsageError(f"--loss {opts.loss!r}: use one of {', '.join(LOSSES)}")
    if opts.optimizer not in OPTIMIZERS:
        raise UsageError(f"--optimizer {opts.optimizer!r}: use one of {', '.join(OPTIMIZERS)}")
    if opts.labels is not None and opts.num_classes is not None and len(opts.labels) != opts.num_classes:
        raise UsageError(f"--num-classes {opts.num_classes} disagrees with {len(opts.labels)} --labels")
    if opts.keep_head and opts.num_classes is not None:
        raise UsageError("--keep-head names the existing head's classes with --labels; it cannot go with --num-classes")
    if opts.quantize_backbone not in (None, "int8", "int8-conv", "int8-qdq"):
        raise UsageError("--quantize-backbone supports int8 (MatMul weights), int8-conv (MatMul + Conv weights) and "
                         "int8-qdq (static QDQ int8, calibrated)")
    if opts.calibration_data is not None and opts.quantize_backbone != "int8-qdq":
        raise UsageError("--calibration-data calibrates the static int8 backbone: give --quantize-backbone int8-qdq too")
    if not opts.lr > 0:
        raise UsageError("--lr must be positive")
    if opts.engine not in ("auto", "portable", "ort-training", "all"):
        raise UsageError(f"--engine {opts.engine!r}: use auto, portable, ort-training or all")
    if opts.engine in ("ort-training", "all") and not has_training_api():
        raise UsageError(f"--engine {opts.engine} needs onnxruntime-training on this host (onnxruntime "
                         f"{ort_backend.version()} here has no training API): pip uninstall -y onnxruntime && pip install "
                         "onnxruntime-training-cpu==1.19.2 onnx==1.17.0 (x86_64, CPython 3.10-3.12); or use --engine "
                         "portable")


def _engines(opts: ExportOptions) -> tuple[list[str], bool]:
    """(engines to write, whether ort-training may be dropped with a warning when it cannot differentiate)."""
    if opts.engine == "all":
        return ["portable", "ort-training"], False
    if opts.engine == "auto":
        return (["portable", "ort-training"], True) if has_training_api() else (["portable"], False)
    return [opts.engine], False


def _declared_preprocessing(opts: ExportOptions) -> dict[str, Any]:
    """Text / image preprocessing from the command line, checked against the inputs (before any work)."""
    if opts.tokenizer is not None and opts.image_size is not None:
        raise UsageError("--tokenizer and --image-size describe different modalities: give one")
    if opts.tokenizer is not None:
        return text_preprocessing(Path(opts.tokenizer), opts.max_length, opts.inputs)
    if opts.image_size is not None:
        return image_preprocessing(opts.image_size, opts.mean, opts.std, opts.inputs)
    return {}


def audio_preprocessing(model: torch.nn.Module, inputs: list[TensorSpec]) -> dict[str, Any]:
    """If the model starts with a LogMel frontend, what the device must feed it: raw samples at a rate."""
    from ftedge.export.frontends import LogMel

    fronts = [m for m in model.modules() if isinstance(m, LogMel)]
    waves = [s for s in inputs if s.dtype.startswith("float") and len(s.sample_shape) == 1]
    if not fronts or not waves:
        return {}
    return {"type": "audio", "input": waves[0].name, "sample_rate": fronts[0].sample_rate,
            "clip_samples": waves[0].sample_shape[0], "clip_seconds": waves[0].sample_shape[0] / fronts[0].sample_rate,
            "frontend": fronts[0].config()}


def export_bundle(opts: ExportOptions, progress: Callable[[str], None] = lambda _msg: None,
                  sign_key: str | Path | None = None) -> dict[str, Any]:
    """Export ``opts.model`` into a bundle at ``opts.output`` and return its manifest.

    ``sign_key``: an Ed25519 private key PEM; the manifest (files table included) is signed with it.
    """
    _validate(opts)
    declared = _declared_preprocessing(opts)
    signer = None
    if sign_key is not None:
        from ftedge.bundle.signing import manifest_signer

        signer = manifest_signer(sign_key)  # a bad key fails before the export work
    t0 = time.perf_counter()
    torch.manual_seed(opts.seed)
    progress("loading model")
    model = load_model(opts.model)
    num_classes = None if opts.keep_head else (len(opts.labels) if opts.labels else opts.num_classes)
    head_name = None
    if opts.head is not None or not opts.trainable or num_classes:
        head_name, _ = find_head(model, opts.head)
    if num_classes:
        replace_head(model, head_name, num_classes, opts.seed)
    trainable = select_trainable(model, opts.trainable, head_name)
    frozen = frozen_parameter_names(model, trainable)
    set_modes(model, trainable, head_name)
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.MultiheadAttention) and m.training and m.dropout > 0:
            log.warning("%s: attention dropout (p=%g) is not in the exported training graph (torch.onnx drops "
                        "scaled_dot_product_attention's dropout); it trains without it", name, m.dropout)

    wrapper = OutputSelector(model, [s.name for s in opts.inputs], opts.output_name)
    output_name = opts.output_name if opts.output_name and not opts.output_name.isdigit() else (
        f"output_{opts.output_name}" if opts.output_name else "logits")
    with torch.no_grad():
        try:
            was = [m.training for m in model.modules()]
            model.eval()
            probe = wrapper(*sample_inputs(opts.inputs, 2, seed=opts.seed))
        except ExportError:
            raise
        except Exception as exc:
            raise ExportError(
                f"the model does not run on the --input spec: {type(exc).__name__}: {exc}. "
                "Check names, dtypes and shapes (batch first)"
            ) from exc
        finally:
            for m, w in zip(model.modules(), was):
                m.training = w
    out_shape = [BATCH, *probe.shape[1:]]
    labels = list(opts.labels) if opts.labels else None
    if opts.loss == "cross-entropy":
        if probe.dim() != 2:
            raise ExportError(f"cross-entropy needs [batch, classes] output, the model gives {list(probe.shape)}; pick --loss")
        if labels is None:
            labels = [str(i) for i in range(probe.shape[1])]
        if len(labels) != probe.shape[1]:
            raise ExportError(f"{len(labels)} labels but the head has {probe.shape[1]} outputs; pass --num-classes/--labels")

    progress("exporting to ONNX")
    full = export_graph(wrapper, opts.inputs, output_name, opts.opset)
    check_trainable_initializers(full, trainable)

    split = split_graph(full, trainable, opts.inputs) if opts.split else None
    layout = "split" if split else "full"
    if opts.split and split is None:
        log.warning("the trainable part starts at the model inputs: nothing to cache, writing a full bundle")

    stage = BundleStage(opts.output, opts.force)
    try:
        roles: dict[str, str] = {}
        if opts.tokenizer is not None:
            shutil.copyfile(opts.tokenizer, stage.path(TOKENIZER_FILE))
            roles["tokenizer"] = TOKENIZER_FILE
        backbones: dict[str, Path] = {}
        quantized_ops: dict[str, int] | None = None
        quantization: dict[str, Any] | None = None  # the manifest's record of how backbone_int8 was made
        if split:
            progress("optimizing backbone")
            save_optimized(split.backbone, stage.path("backbone.onnx"))
            roles["backbone"] = "backbone.onnx"
            backbones["fp32"] = stage.path("backbone.onnx")
            if opts.quantize_backbone:
                from ftedge.export.frontends import LogMel

                keep_fp32 = tuple(f"/model/{n.replace('.', '/')}/" for n, m in model.named_modules()
                                  if isinstance(m, LogMel))
            if opts.quantize_backbone == "int8-qdq":
                progress("calibrating the static int8 (QDQ) backbone")
                feeds, n_calib = calibration_feeds(opts.inputs, opts.calibration_data, seed=opts.seed)
                quantized_ops = quantize_qdq(stage.path("backbone.onnx"), stage.path("backbone.int8.onnx"), feeds,
                                             keep_fp32, method=CALIBRATION_METHOD)
                quantization = {"method": "static-qdq", "weights": "int8 per-channel", "activations": "uint8",
                                "calibration": {"method": CALIBRATION_METHOD, "samples": n_calib,
                                                "source": "file" if opts.calibration_data else "random sample inputs"},
                                "quantized_nodes": quantized_ops}
                if not quantized_ops:
                    log.warning("--quantize-backbone int8-qdq: the backbone has no weights to quantize")
                roles["backbone_int8"] = "backbone.int8.onnx"
                backbones["int8"] = stage.path("backbone.int8.onnx")
            elif opts.quantize_backbone in ("int8", "int8-conv"):
                conv = opts.quantize_backbone == "int8-conv"
                quantized_ops = quantize_int8(stage.path("backbone.onnx"), stage.path("backbone.int8.onnx"), keep_fp32,
                                              conv=conv)
                quantization = {"method": "dynamic", "matmul_weights": "int8",
                                "conv_weights": "uint8" if conv else "fp32", "quantized_nodes": quantized_ops}
                if not quantized_ops:
                    log.warning("--quantize-backbone %s: the backbone has no %s weights to quantize%s",
                                opts.quantize_backbone, "MatMul or Conv" if conv else "MatMul",
                                "" if conv else " (int8-conv also quantizes Conv)")
                roles["backbone_int8"] = "backbone.int8.onnx"
                backbones["int8"] = stage.path("backbone.int8.onnx")
            head_model, head_inputs, train_dir = split.head, split.head_inputs, "head"
        else:
            head_model = full
            head_inputs = [TensorSpec(s.name, s.dtype, list(s.shape), s.value_range, {"source": "input"}) for s in opts.inputs]
            train_dir = "full"
        bn_inputs = [n.input[0] for n in head_model.graph.node if n.op_type == "BatchNormalization"]
        if bn_inputs:
            shapes = measure_tensors(head_model, head_inputs, sorted(set(bn_inputs) - {s.name for s in head_inputs}))[2]
            ranks = {k: v.ndim for k, v in shapes.items()}
            ranks.update({s.name: len(s.shape) for s in head_inputs})
            fold_eval_batchnorm(head_model, ranks)
        wanted, optional = _engines(opts)
        engines: dict[str, dict[str, Any]] = {}
        heads: dict[str, Path] = {}
        out_spec = TensorSpec(output_name, "float32", out_shape)
        if "portable" in wanted:
            progress("building the portable training step (PyTorch autograd -> ONNX)")
            clean = onnx.ModelProto()
            clean.CopyFrom(head_model)
            files, step_spec = build_step(clean, head_inputs, out_spec, trainable, opts.loss, opts.optimizer,
                                          stage.dir / "portable")
            rel = {role: p.relative_to(stage.dir).as_posix() for role, p in files.items()}
            engines["portable"] = {"files": rel, **step_spec.to_json()}
            roles.update(rel)
            heads["portable"] = files["head"]
        if "ort-training" in wanted:
            progress("building onnxruntime-training artifacts")
            try:
                paths = art.build_artifacts(head_model, trainable, frozen, opts.loss, opts.optimizer, output_name,
                                            stage.dir / train_dir)
            except ExportError as exc:
                if not optional:
                    raise
                log.warning("not writing the ort-training engine: %s", exc)
            else:
                rel = {role: p.relative_to(stage.dir).as_posix() for role, p in paths.items()}
                engines["ort-training"] = {"files": rel}
                roles.update(rel)
                heads["ort-training"] = paths

        if opts.skip_parity:
            log.warning("--skip-parity: the bundle is NOT checked against PyTorch")
            parity: dict[str, Any] = {"skipped": True, "tolerance": opts.tolerance}
        else:
            progress("checking parity against PyTorch")
            parity = check_parity(wrapper, opts.inputs, head_inputs, heads, output_name, backbones, opts.tolerance)
            parity["skipped"] = False
        if "portable" in engines:
            parity["step"] = step_spec.check

        manifest = {
            **manifest_header(opts, opts.opset),
            "inputs": [s.to_json() for s in opts.inputs],
            "output": TensorSpec(output_name, "float32", out_shape).to_json(),
            "labels": labels,
            "task": "classification" if opts.loss in ("cross-entropy", "bce") else "regression",
            "loss": opts.loss,
            # ORT 1.19.2 onnxblock defaults (what both engines' optimizer graphs compute)
            "optimizer": {"name": opts.optimizer, "lr": opts.lr, **OPTIMIZER_DEFAULTS[opts.optimizer]},
            "engines": engines,
            "head": head_name,
            "trainable": trainable,
            "frozen": frozen,
            "trainable_parameter_count": int(sum(p.numel() for n, p in model.named_parameters() if n in set(trainable))),
            "parameter_count": int(sum(p.numel() for p in model.parameters())),
            "layout": layout,
            "roles": roles,
            "head_inputs": [s.to_json() for s in head_inputs],
            "quantization": None if quantization is None else {"backbone_int8": quantization},
            "train_inputs": [s.name for s in head_inputs] + ["labels"],
            "parity": parity,
            "preprocessing": {**audio_preprocessing(model, opts.inputs), **declared, **opts.preprocessing},
            "export_seconds": round(time.perf_counter() - t0, 3),
        }
        stage.commit(manifest, signer)
    except BaseException:
        stage.discard()
        raise
    return manifest
