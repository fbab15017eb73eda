"""PyTorch → ONNX with the TorchScript exporter, plus the fix-ups ORT training needs."""

from __future__ import annotations

import contextlib
import io
import warnings
from typing import Iterable

import numpy as np
import onnx
import torch
import torch.nn as nn
from onnx import helper

from ftedge.errors import ExportError
from ftedge.export.ep_portable import ep_portable_isnan
from ftedge.export.wrapper import PREFIX, OutputSelector
from ftedge.bundle.manifest import TensorSpec

TORCH_DTYPES = {
    "float32": torch.float32, "float16": torch.float16, "float64": torch.float64,
    "int64": torch.int64, "int32": torch.int32, "int8": torch.int8, "uint8": torch.uint8, "bool": torch.bool,
}


def sample_inputs(specs: list[TensorSpec], batch: int, seed: int) -> list[torch.Tensor]:
    """Random inputs matching ``specs`` for ``batch`` samples (deterministic per seed)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for spec in specs:
        shape = spec.concrete_shape(batch)
        dtype = TORCH_DTYPES[spec.dtype]
        if dtype.is_floating_point:
            out.append(torch.randn(*shape, generator=gen).to(dtype))
        elif dtype == torch.bool:
            out.append(torch.randint(0, 2, shape, generator=gen).bool())
        else:
            lo, hi = spec.value_range or (0, 2)
            out.append(torch.randint(lo, hi, shape, generator=gen, dtype=dtype))
    return out


@contextlib.contextmanager
def mha_fastpath_disabled():
    """Eval-mode Transformer layers take a fused fast path (``_transformer_encoder_layer_fwd``)
    that has no ONNX export; the math path is equivalent."""
    mha = getattr(torch.backends, "mha", None)
    if mha is None:
        yield
        return
    before = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(before)


def export_graph(wrapper: OutputSelector, specs: list[TensorSpec], output_name: str, opset: int) -> onnx.ModelProto:
    """Export with trainable modules in train mode and frozen ones in eval mode.

    ``TrainingMode.PRESERVE`` keeps each module's own mode; the wrapper's
    ``training=True`` stops the exporter from merging equal-valued initializers
    (which would tie, e.g., two zero biases).
    """
    wrapper.training = True
    args = tuple(sample_inputs(specs, 2, seed=1234))
    # Tracing runs forward: train-mode BatchNorm would fold the random export inputs into its running statistics.
    buffers = {n: b.detach().clone() for n, b in wrapper.named_buffers()}
    buf = io.BytesIO()
    dynamic_axes = {s.name: {0: "batch"} for s in specs}
    dynamic_axes[output_name] = {0: "batch"}
    try:
        with warnings.catch_warnings(), mha_fastpath_disabled():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper, args, buf,
                dynamo=False, export_params=True, do_constant_folding=False,
                training=torch.onnx.TrainingMode.PRESERVE,
                input_names=[s.name for s in specs], output_names=[output_name],
                dynamic_axes=dynamic_axes, opset_version=opset,
                keep_initializers_as_inputs=False,
            )
    except Exception as exc:
        raise ExportError(
            f"torch.onnx.export failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}. "
            "Check --input (names, dtypes, shapes must match the model's forward) and --opset"
        ) from exc
    finally:
        with torch.no_grad():
            for n, b in wrapper.named_buffers():
                b.copy_(buffers[n])
    model = ep_portable_isnan(onnx.load_from_string(buf.getvalue()))  # backbone, head and step inherit it
    _strip_prefix(model)
    originals = {n[len(PREFIX):]: b for n, b in buffers.items() if n.startswith(PREFIX)}
    for init in model.graph.initializer:
        if init.name in originals and originals[init.name].is_floating_point():
            init.CopyFrom(onnx.numpy_helper.from_array(originals[init.name].numpy(), init.name))
    return model


def _strip_prefix(model: onnx.ModelProto) -> None:
    """Rename initializers ``model.<name>`` back to the user's parameter names."""
    renames = {i.name: i.name[len(PREFIX):] for i in model.graph.initializer if i.name.startswith(PREFIX)}
    if not renames:
        return
    for init in model.graph.initializer:
        init.name = renames.get(init.name, init.name)
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]
    for vi in model.graph.value_info:
        vi.name = renames.get(vi.name, vi.name)


def check_trainable_initializers(model: onnx.ModelProto, trainable: Iterable[str]) -> None:
    """Every trainable parameter must be an initializer, not folded into a constant or renamed."""
    names = {i.name for i in model.graph.initializer}
    missing = [t for t in trainable if t not in names]
    if missing:
        raise ExportError(
            "the exporter did not keep these trainable parameters as initializers of the training graph: "
            + ", ".join(missing)
            + ". They were folded, tied or renamed; untie shared weights or choose other --trainable parameters"
        )


def frozen_parameter_names(module: nn.Module, trainable: list[str]) -> list[str]:
    wanted = set(trainable)
    return [n for n, _ in module.named_parameters() if n not in wanted]


def add_training_outputs(model: onnx.ModelProto) -> int:
    """Give LayerNormalization and Dropout the optional outputs gradient builders need.

    At opset >= 17 the exporter emits LayerNormalization with only ``Y`` and
    Dropout without ``mask``; ORT cannot build their gradients then.
    """
    fixed = 0
    for node in model.graph.node:
        base = node.name or node.output[0]
        if node.op_type == "LayerNormalization" and len(node.output) == 1:
            node.output.extend([f"{base}_mean", f"{base}_inv_std_dev"])
            fixed += 1
        elif node.op_type == "Dropout" and len(node.output) == 1:
            node.output.append(f"{base}_mask")
            fixed += 1
    return fixed


def numpy_of(init: onnx.TensorProto) -> np.ndarray:
    return onnx.numpy_helper.to_array(init)


def value_info(name: str, dtype: np.dtype, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), shape)


def fold_eval_batchnorm(model: onnx.ModelProto, ranks: dict[str, int]) -> int:
    """Rewrite inference-mode BatchNormalization as ``x * scale + shift`` constants.

    ORT's training graph turns every BatchNormalization into BatchNormInternal
    with ``training_mode=1``: a frozen BatchNorm would then normalise with batch
    statistics during training steps while eval uses running statistics.
    Folding keeps frozen BatchNorm frozen. ``ranks`` maps BN input names to ranks.
    """
    inits = {i.name: i for i in model.graph.initializer}
    new_nodes: list[onnx.NodeProto] = []
    new_inits: list[onnx.TensorProto] = []
    folded = 0
    for node in model.graph.node:
        attrs = {a.name: a for a in node.attribute}
        training = attrs["training_mode"].i if "training_mode" in attrs else 0
        params = list(node.input[1:5])
        if node.op_type != "BatchNormalization" or training or len(node.output) != 1 or not all(p in inits for p in params) \
                or node.input[0] not in ranks:
            new_nodes.append(node)
            continue
        gamma, beta, mean, var = (numpy_of(inits[p]).astype(np.float64) for p in params)
        eps = attrs["epsilon"].f if "epsilon" in attrs else 1e-5
        scale = gamma / np.sqrt(var + eps)
        shift = beta - mean * scale
        shape = [len(scale)] + [1] * (ranks[node.input[0]] - 2)
        base = (node.name or node.output[0]).strip("/").replace("/", "_")
        s_name, b_name, mid = f"{base}_folded_scale", f"{base}_folded_shift", f"{base}_folded_mul"
        dtype = numpy_of(inits[params[0]]).dtype
        new_inits += [
            onnx.numpy_helper.from_array(scale.reshape(shape).astype(dtype), s_name),
            onnx.numpy_helper.from_array(shift.reshape(shape).astype(dtype), b_name),
        ]
        new_nodes += [
            helper.make_node("Mul", [node.input[0], s_name], [mid], name=f"{node.name}_scale"),
            helper.make_node("Add", [mid, b_name], [node.output[0]], name=f"{node.name}_shift"),
        ]
        folded += 1
    if folded:
        del model.graph.node[:]
        model.graph.node.extend(new_nodes)
        model.graph.initializer.extend(new_inits)
        used = {i for n in model.graph.node for i in n.input}
        keep = [i for i in model.graph.initializer if i.name in used]
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)
    return folded
