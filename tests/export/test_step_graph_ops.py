"""Which operators the portable engine's step graph differentiates through: predicates and masks carry no gradient
(treated as constants, as PyTorch's autograd treats them); an operator it has no gradient for is refused at export,
naming the operator, the module and the fix."""

from __future__ import annotations

import json

import onnx
import pytest
import torch
from onnx import helper

from ftedge.cli import main
from ftedge.export.onnx_ops import OPS, Sh
from ftedge.export.onnx_torch import GRADIENT_FREE
from tests.helpers.common import ZOO, nan_guards


def _run(op: str, *inputs: torch.Tensor, **attrs) -> object:  # noqa: ANN003
    node = helper.make_node(op, [f"i{k}" for k in range(len(inputs))], ["y"], **attrs)
    at = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return OPS[op](list(inputs), at, {"n_outputs": 1, "training": True, "masks": {}})


@pytest.mark.parametrize("op", sorted(GRADIENT_FREE - {"Shape", "Size"}))
def test_gradient_free_ops_give_no_gradient_to_drop(op):
    """Each op the writer treats as a constant in the backward either outputs booleans / integers or is piecewise
    constant (autograd's gradient is exactly zero): treating it as a constant loses nothing."""
    x = torch.randn(4, 5, requires_grad=True)
    b = torch.randn(4, 5)
    if op in {"And", "Or", "Xor", "Not"}:
        ins = [x > 0, b > 0][: 1 if op == "Not" else 2]
    elif op in {"IsNaN", "IsInf", "ArgMax", "ArgMin", "Floor", "Ceil", "Sign"}:
        ins = [x * 3]
    else:
        ins = [x, b]
    y = _run(op, *ins)
    assert isinstance(y, torch.Tensor)
    if y.is_floating_point():
        (grad,) = torch.autograd.grad(y.sum(), x)
        assert torch.count_nonzero(grad) == 0
    else:
        assert not y.requires_grad


def test_isnan_and_isinf_follow_onnx():
    x = torch.tensor([1.0, float("nan"), float("inf"), -float("inf")])
    assert _run("IsNaN", x).tolist() == [False, True, False, False]
    assert _run("IsInf", x).tolist() == [False, False, True, True]
    assert _run("IsInf", x, detect_negative=0).tolist() == [False, False, True, False]
    assert _run("IsInf", x, detect_positive=0).tolist() == [False, False, False, True]
    assert _run("ArgMax", torch.tensor([[1.0, 3.0, 3.0]]), axis=1, select_last_index=1).tolist() == [[2]]


def test_shape_arithmetic_through_where_stays_shape_arithmetic():
    """nn.MultiheadAttention expands its masks with Where(Equal(shape, -1), ones, shape): the result must stay a
    list of ints, or a traced Expand would have a data-dependent size."""
    shape = Sh([1, 2, 1, -1])
    cond = OPS["Equal"]([shape, Sh([-1], scalar=True)], {}, {})
    assert isinstance(cond, Sh) and list(cond) == [False, False, False, True]
    out = OPS["Where"]([cond, Sh([1, 1, 1, 1]), shape], {}, {})
    assert isinstance(out, Sh) and list(out) == [1, 2, 1, 1]
    ones = OPS["ConstantOfShape"]([Sh([4])], {"value": onnx.numpy_helper.to_array(
        helper.make_tensor("v", onnx.TensorProto.INT64, [1], [1]))}, {})
    assert isinstance(ones, Sh) and list(ones) == [1, 1, 1, 1]


def test_an_operator_without_a_gradient_is_refused_naming_it_its_module_and_the_fix(tmp_path, capsys):
    args = ["--input", "x:float32:1,5,6", "--engine", "portable", "--quiet"]
    out = tmp_path / "refused"
    rc = main(["export", f"{ZOO}:topk_pooling", "-o", str(out), "--trainable", r"^(body|head)\.", *args])
    err = capsys.readouterr().err
    assert rc == 1 and "TopK in module pool" in err, err
    assert "narrow --trainable" in err and "--engine ort-training" in err and "Traceback" not in err
    assert not out.exists()
    # frozen, the same operator stays in the backbone and the head trains
    assert main(["export", f"{ZOO}:topk_pooling", "-o", str(tmp_path / "head"), "--trainable", r"^head\.", *args]) == 0


@pytest.mark.parametrize("family", ["transformer-last-block"])
def test_step_graph_has_no_training_only_layernorm_outputs(family, tmp_path):
    """Inference EPs (OpenVINO's ONNX frontend) refuse a LayerNormalization that outputs its mean and inverse std
    ("used for training, not supported"): the step graph computes them from standard ops (docs/openvino-probe.md)."""
    from tests.helpers.common import export
    from tests.helpers.zoo import FAMILIES

    model, args = FAMILIES[family]
    manifest = export(f"{ZOO}:{model}", tmp_path / "b", "--engine", "portable", *args)
    step = onnx.load(str(tmp_path / "b" / manifest["roles"]["step"]))
    multi = [n.name for n in step.graph.node if n.op_type == "LayerNormalization" and len([o for o in n.output if o]) > 1]
    assert not multi, multi
    assert manifest["parity"]["step"]["max_rel_diff"] <= manifest["parity"]["step"]["tolerance"]


def test_whole_tensor_reductions_keep_dims_then_squeeze_with_the_same_values():
    """The OpenVINO EP leaves a reduction with empty ``axes`` and ``keepdims=0`` (torch's ``sum()``) to the CPU EP:
    the step writer rewrites it to explicit axes, ``keepdims=1`` and a ``Squeeze`` — same value, same 0-d shape."""
    import numpy as np
    import onnxruntime as ort

    from ftedge.export.ep_portable import ep_portable_reductions

    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 5])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [])
    empty = onnx.numpy_helper.from_array(np.zeros(0, dtype=np.int64), "no_axes")
    node = helper.make_node("ReduceSum", ["x", "no_axes"], ["y"], name="sum", keepdims=0)
    model = helper.make_model(helper.make_graph([node], "g", [x], [y], [empty]),
                              opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    before = model.SerializeToString()
    fixed = ep_portable_reductions(model)
    ops = [(n.op_type, {a.name: a.i for a in n.attribute}) for n in fixed.graph.node]
    assert ops == [("ReduceSum", {"keepdims": 1}), ("Squeeze", {})], ops
    feed = {"x": np.arange(15, dtype=np.float32).reshape(3, 5)}
    want = ort.InferenceSession(before, providers=["CPUExecutionProvider"]).run(None, feed)[0]
    got = ort.InferenceSession(fixed.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    assert got.shape == want.shape == () and got == want == 105.0


@pytest.mark.parametrize("family", ["gru"])
def test_step_graph_has_no_keepdims_free_whole_tensor_reductions(family, tmp_path):
    from tests.helpers.common import export
    from tests.helpers.zoo import FAMILIES

    model, args = FAMILIES[family]
    manifest = export(f"{ZOO}:{model}", tmp_path / "b", "--engine", "portable", *args)
    step = onnx.load(str(tmp_path / "b" / manifest["roles"]["step"]))
    empty = {t.name for t in step.graph.initializer if t.data_type == onnx.TensorProto.INT64 and list(t.dims) == [0]}
    bad = [n.name for n in step.graph.node if n.op_type.startswith("Reduce") and len(n.input) > 1
           and n.input[1] in empty]
    assert not bad, bad


def _static_channels(model: onnx.ModelProto, name: str) -> bool:
    inferred = onnx.shape_inference.infer_shapes(model)
    for v in [*inferred.graph.value_info, *inferred.graph.input]:
        if v.name == name and v.type.tensor_type.HasField("shape"):
            dims = v.type.tensor_type.shape.dim
            return len(dims) > 1 and dims[1].HasField("dim_value")
    return False


@pytest.mark.parametrize("family", ["groupnorm-block", "hardswish-block"])
def test_conv_weight_gradient_keeps_channel_axes_static(family, family_bundle):
    """A trainable Conv's weight gradient is not a Conv with the batch on its channel axis: OpenVINO's compiler
    cannot build one ("evaluate() is not implemented for op: opset1::Convolution"), so the step graph did not load
    on OpenVINO at all (docs/openvino-probe.md). Every Conv of the step graph has static input channels."""
    bundle = family_bundle(family)
    manifest = json.loads((bundle / "manifest.json").read_text())
    step = onnx.load(str(bundle / manifest["roles"]["step"]))
    convs = [n for n in step.graph.node if n.op_type in ("Conv", "ConvTranspose")]
    assert convs  # the input gradients stay transposed convolutions
    dynamic = [n.name for n in convs if not _static_channels(step, n.input[0])]
    assert not dynamic, dynamic
    assert manifest["parity"]["step"]["max_rel_diff"] <= manifest["parity"]["step"]["tolerance"]


def test_isnan_is_written_as_not_equal_to_itself_with_the_same_values():
    import numpy as np
    import onnxruntime as ort

    from ftedge.export.ep_portable import ep_portable_isnan

    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.BOOL, ["batch", 4])
    model = helper.make_model(helper.make_graph([helper.make_node("IsNaN", ["x"], ["y"], name="nan")], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    fixed = ep_portable_isnan(model)
    assert [n.op_type for n in fixed.graph.node] == ["Equal", "Not"] and nan_guards(fixed) == 1
    feed = {"x": np.array([[1.0, np.nan, np.inf, -np.inf], [0.0, -0.0, np.nan, 3.0]], dtype=np.float32)}
    got = ort.InferenceSession(fixed.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    assert got.tolist() == np.isnan(feed["x"]).tolist()


def test_no_graph_of_the_sdpa_bundle_has_isnan(family_bundle):
    """The OpenVINO EP has no IsNaN: SDPA's fully-masked-row guard left sdpa-masks' step and head partly on the CPU
    EP. The backbone, the step and the head guard with Not(Equal(x, x)) instead."""
    bundle = family_bundle("sdpa-masks")
    roles = json.loads((bundle / "manifest.json").read_text())["roles"]
    graphs = {role: onnx.load(str(bundle / roles[role])) for role in ("backbone", "step", "head")}
    assert {r: [n.name for n in g.graph.node if n.op_type == "IsNaN"] for r, g in graphs.items()} == {
        "backbone": [], "step": [], "head": []}
    assert nan_guards(graphs["step"]) >= 1 and nan_guards(graphs["head"]) >= 1


def _scatter_nd_add(data_shape: list, k: int) -> onnx.ModelProto:
    vi = helper.make_tensor_value_info
    graph = helper.make_graph(
        [helper.make_node("ScatterND", ["d", "i", "u"], ["y"], name="scatter", reduction="add")], "g",
        [vi("d", onnx.TensorProto.FLOAT, ["batch", *data_shape[1:]]), vi("i", onnx.TensorProto.INT64, ["m", k]),
         vi("u", onnx.TensorProto.FLOAT, ["m", *data_shape[k:]])],
        [vi("y", onnx.TensorProto.FLOAT, ["batch", *data_shape[1:]])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


@pytest.mark.parametrize("data_shape,k", [([5, 7, 3], 2), ([5, 3], 1), ([4, 6], 2)])
def test_scatter_nd_add_is_written_as_scatter_elements_with_the_same_values(data_shape, k):
    """OpenVINO's ONNX frontend refuses ScatterND with reduction="add" (an indexing op's gradient: the wide zoo's
    GPT-2 classifier picks each row's last token) and so the whole step graph; ScatterElements adds the same way,
    duplicate and negative indices included."""
    import numpy as np
    import onnxruntime as ort

    from ftedge.export.ep_portable import ep_portable_scatter_add

    model = _scatter_nd_add(data_shape, k)
    before = model.SerializeToString()
    fixed = ep_portable_scatter_add(model)
    ops = [n.op_type for n in fixed.graph.node]
    assert "ScatterND" not in ops and ops.count("ScatterElements") == 1, ops
    rng = np.random.default_rng(0)
    m = 9  # more updates than rows: duplicates
    feed = {"d": rng.standard_normal(data_shape).astype(np.float32),
            "i": np.stack([rng.integers(-data_shape[j], data_shape[j], m) for j in range(k)], -1),
            "u": rng.standard_normal([m, *data_shape[k:]]).astype(np.float32)}
    want = ort.InferenceSession(before, providers=["CPUExecutionProvider"]).run(None, feed)[0]
    got = ort.InferenceSession(fixed.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_step_graph_inputs_no_node_reads_are_dropped():
    """The OpenVINO EP binds a model's inputs by position after dropping one no node reads: every later input is
    fed the wrong tensor. The step graph declares only the inputs it reads (the runtime binds what it declares)."""
    from ftedge.export.ep_portable import ep_portable_inputs

    vi = helper.make_tensor_value_info
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [vi("ids", onnx.TensorProto.INT64, ["batch", 4]), vi("x", onnx.TensorProto.FLOAT, [2]),
                               vi("state", onnx.TensorProto.FLOAT, [2])],
                              [vi("y", onnx.TensorProto.FLOAT, [2]), vi("state", onnx.TensorProto.FLOAT, [2])])
    fixed = ep_portable_inputs(helper.make_model(graph))
    assert [i.name for i in fixed.graph.input] == ["x", "state"]


@pytest.mark.parametrize("family", ["gpt2"])
def test_wide_step_graph_has_no_scatter_nd_add_nor_unread_inputs(family, wide_bundles):
    proc, path = wide_bundles(family)
    assert proc.returncode == 0, proc.stderr[-3000:]
    step = onnx.load(str(path / "portable" / "step.onnx"))
    adds = [n.name for n in step.graph.node if n.op_type == "ScatterND"
            and any(a.name == "reduction" and a.s == b"add" for a in n.attribute)]
    read = {x for n in step.graph.node for x in n.input} | {o.name for o in step.graph.output}
    assert not adds and all(i.name in read for i in step.graph.input), (adds, [i.name for i in step.graph.input])
