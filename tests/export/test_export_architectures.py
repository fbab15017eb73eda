"""Every architecture family exports with parity <= 1e-4 against PyTorch and trains in ORT."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from ftedge.runtime import load_bundle
from ftedge.runtime.engines.session import BundleSession

from ftedge.cli import main
from tests.helpers.common import ZOO, export, random_feeds, smoke_train
from tests.helpers.zoo import FAMILIES


def _fp32_diffs(manifest: dict) -> dict[str, float]:
    return {k: v for k, v in manifest["parity"]["max_abs_diff"].items() if "int8" not in k}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_exports_with_parity_and_loss_falls(family, family_bundle):
    path = family_bundle(family)
    manifest = json.loads((path / "manifest.json").read_text())

    assert manifest["parity"]["skipped"] is False
    diffs = _fp32_diffs(manifest)
    assert len(diffs) == 2, "parity runs two batch sizes"
    assert all(d <= 1e-4 for d in diffs.values()), diffs
    assert manifest["layout"] == "split"

    before, after = smoke_train(path)
    assert after < before, f"{family}: loss did not fall ({before} -> {after})"


@pytest.mark.parametrize("layout_args", [
    ["--trainable", "^head"],
    ["--trainable", "^head", "--no-split"],
    ["--trainable", "conv|head"],
], ids=["bn-in-backbone", "bn-frozen-in-merged-graph", "bn-between-trainable-layers"])
def test_frozen_batchnorm_uses_running_statistics_while_training(tmp_path, layout_args):
    """ORT turns BatchNormalization into training-mode BatchNormInternal in training graphs;
    frozen BatchNorm must still normalise with its running statistics in training steps."""
    import numpy as np

    export(f"{ZOO}:conv_bn", tmp_path / "b", "--input", "x:float32:1,3,10", *layout_args)
    bundle = load_bundle(tmp_path / "b")
    step = onnx.load(str(bundle.file("step")))
    assert not [n for n in step.graph.node if n.op_type.startswith("BatchNorm")]
    assert bundle.manifest["engines"]["portable"]["buffers"] == []  # frozen: no running statistics to update
    session = BundleSession(bundle)
    head = session.embed(random_feeds(bundle.inputs, 8))
    y = np.zeros(8, np.int64)
    eval_out = session.eval_step(head, y)[1]
    session.set_learning_rate(0.0)
    train_out = session.train_step(head, y)[1]  # the training forward, parameters unchanged
    np.testing.assert_allclose(train_out, eval_out, atol=1e-6)


def test_trainable_parameters_are_initializers_or_checkpointed(cnn_bundle):
    bundle = load_bundle(cnn_bundle)
    assert bundle.manifest["trainable"] == ["classifier.1.weight", "classifier.1.bias"]
    session = BundleSession(bundle)
    params = session.model.parameters()
    assert set(params) == set(bundle.manifest["trainable"])
    assert params["classifier.1.weight"].shape == (4, 32)


def test_default_trainable_is_last_linear(tmp_path):
    manifest = export(f"{ZOO}:mlp", tmp_path / "b", "--input", "x:float32:1,20")
    assert manifest["trainable"] == ["out.weight", "out.bias"]
    assert "body.0.weight" in manifest["frozen"]
    assert manifest["labels"] == ["0", "1", "2", "3"]


def test_no_split_bundle_trains_like_split_bundle(tmp_path):
    """The merged full graph and backbone+head give the same losses on the same data."""
    split = tmp_path / "split"
    full = tmp_path / "full"
    export(f"{ZOO}:mlp", split, "--input", "x:float32:1,20", "--loss", "mse")
    manifest = export(f"{ZOO}:mlp", full, "--input", "x:float32:1,20", "--loss", "mse", "--no-split")
    assert manifest["layout"] == "full" and "backbone" not in manifest["roles"]
    assert all(d <= 1e-4 for d in _fp32_diffs(manifest).values())
    s_before, s_after = smoke_train(split)
    f_before, f_after = smoke_train(full)
    assert f_after < f_before
    assert abs(s_before - f_before) < 1e-5 and abs(s_after - f_after) < 1e-4


def test_cached_embeddings_are_per_sample(cnn_bundle):
    """Running the backbone on a batch equals running it sample by sample (what the cache relies on)."""
    import numpy as np

    bundle = load_bundle(cnn_bundle)
    session = BundleSession(bundle)
    feeds = random_feeds(bundle.inputs, 6)
    whole = session.embed(feeds)["embedding_0"]
    one_by_one = np.concatenate([session.embed({"x": feeds["x"][i:i + 1]})["embedding_0"] for i in range(6)])
    np.testing.assert_allclose(whole, one_by_one, atol=1e-5)
    assert bundle.head_inputs[0].shape == ["batch", 32]


@pytest.mark.parametrize("family,mode,op", [
    ("transformer-last-block", "int8", "MatMulInteger"),
    ("cnn-batchnorm-depthwise", "int8-conv", "ConvInteger"),
])
def test_int8_backbone_is_written_and_reported(tmp_path, family, mode, op):
    model, args = FAMILIES[family]
    manifest = export(f"{ZOO}:{model}", tmp_path / "q", *args, "--quantize-backbone", mode)
    assert manifest["roles"]["backbone_int8"] == "backbone.int8.onnx"
    assert manifest["quantization"]["backbone_int8"]["quantized_nodes"].get(op, 0) > 0
    int8_graph = onnx.load(str(tmp_path / "q" / "backbone.int8.onnx"))
    assert op in {n.op_type for n in int8_graph.graph.node}
    int8 = {k: v for k, v in manifest["parity"]["max_abs_diff"].items() if "int8" in k}
    assert len(int8) == 2 and all(v > 0 for v in int8.values())  # quantization changes outputs a little
    bundle = load_bundle(tmp_path / "q")
    session = BundleSession(bundle, backbone_variant="backbone_int8")
    out = session.predict(random_feeds(bundle.inputs, 3))
    assert out.shape[0] == 3 and np.isfinite(out).all()


def test_keep_head_names_pretrained_classes_without_replacing_them(tmp_path):
    import torch
    from ftedge.export.model_loader import load_model

    manifest = export(f"{ZOO}:pretrained_mlp", tmp_path / "b", "--input", "x:float32:1,20",
                      "--labels", "a,b,c,d", "--keep-head")
    assert manifest["labels"] == ["a", "b", "c", "d"]
    session = BundleSession(load_bundle(tmp_path / "b"))
    x = random_feeds(load_bundle(tmp_path / "b").inputs, 4)
    model = load_model(f"{ZOO}:pretrained_mlp")
    with torch.no_grad():
        ref = model(torch.from_numpy(x["x"])).numpy()
    import numpy as np

    np.testing.assert_allclose(session.predict(x), ref, atol=1e-5)  # the pretrained head, not a fresh one


def test_keep_head_with_wrong_label_count_fails(tmp_path, capsys):
    from ftedge.cli import main

    rc = main(["export", f"{ZOO}:pretrained_mlp", "-o", str(tmp_path / "b"), "--input", "x:float32:1,20",
               "--labels", "a,b,c", "--keep-head"])
    assert rc == 1 and "3 labels but the head has 4 outputs" in capsys.readouterr().err


def test_head_dropout_trains_and_never_reaches_the_cached_backbone(cnn_bundle):
    """`--head classifier` = Sequential(Dropout, Linear): the whole head trains, so its Dropout is in the
    training graph (random) and not in the backbone, whose outputs are cached."""
    import numpy as np

    backbone = onnx.load(str(cnn_bundle / "backbone.onnx"))
    assert "Dropout" not in {n.op_type for n in backbone.graph.node}
    bundle = load_bundle(cnn_bundle)
    masks = bundle.manifest["engines"]["portable"]["masks"]
    assert [(m["shape"], round(m["ratio"], 6)) for m in masks] == [(["batch", 32], 0.2)]
    session = BundleSession(bundle)
    head = session.embed(random_feeds(bundle.inputs, 8))
    y = np.zeros(8, np.int64)
    a, b = session.eval_step(head, y)[1], session.eval_step(head, y)[1]
    np.testing.assert_array_equal(a, b)  # eval: dropout off, deterministic
    session.set_learning_rate(0.0)
    t = session.train_step(head, y)[1]
    assert np.abs(t - a).max() > 1e-3  # training: dropout active


def _chunked_training_runs(bundle_path: Path, tmp_path: Path, n: int = 70) -> dict:
    bundle = load_bundle(bundle_path)
    data = tmp_path / "d.npz"
    np.savez(data, labels=np.random.default_rng(0).integers(0, len(bundle.labels), n),
             **random_feeds(bundle.inputs, n, seed=4))  # SYNTHETIC
    run = tmp_path / "run"
    assert main(["train", str(bundle_path), "--data", str(data), "-o", str(run), "--epochs", "2", "--batch-size", "16",
                 "--embed-batch-size", "16", "--quiet"]) == 0
    return json.loads((run / "result.json").read_text())


def test_last_token_row_index_is_not_cached_as_an_embedding(tmp_path):
    """arange(batch) (decoder last-token pooling) crossed the cut: cached in chunks of 64, later batches indexed
    rows that do not exist ("Gather ... indices element out of data bounds")."""
    manifest = export(f"{ZOO}:last_token_pooling", tmp_path / "b", "--input", "tokens:int64:1,6:0-20")
    assert manifest["layout"] == "split"
    chunked = manifest["parity"]["chunked_max_abs_diff"]
    assert len(chunked) == 1 and max(chunked.values()) <= 1e-4
    crossing = [s["meta"].get("tensor", s["name"]) for s in manifest["head_inputs"]]
    assert not [t for t in crossing if "Range" in t], crossing  # the row index is recomputed in the head
    assert _chunked_training_runs(tmp_path / "b", tmp_path)["status"] == "succeeded"


def test_a_frozen_op_mixing_samples_moves_into_the_head(tmp_path):
    """A backbone output that depends on the other samples of the batch cannot be cached per sample."""
    manifest = export(f"{ZOO}:batch_centered", tmp_path / "b", "--input", "x:float32:1,6")
    assert manifest["layout"] == "split"
    assert max(manifest["parity"]["chunked_max_abs_diff"].values()) <= 1e-4
    head = onnx.load(str(tmp_path / "b" / "portable" / "head.onnx"))
    assert "ReduceMean" in {n.op_type for n in head.graph.node}  # the batch mean is taken in the head
    assert _chunked_training_runs(tmp_path / "b", tmp_path)["status"] == "succeeded"


def test_export_check_refuses_a_cut_whose_embedding_mixes_samples(tmp_path, monkeypatch, capsys):
    """The second line of defence: were the split to miss a sample-mixing tensor, parity on embeddings computed in
    chunks catches it and the export is refused."""
    import ftedge.export.graph_split as gs

    monkeypatch.setattr(gs, "not_per_sample", lambda *a, **k: set())
    rc = main(["export", f"{ZOO}:batch_centered", "-o", str(tmp_path / "b"), "--quiet", "--input", "x:float32:1,6"])
    err = capsys.readouterr().err
    assert rc != 0 and ",chunks=2]" in err and "--no-split" in err, err
    assert not (tmp_path / "b").exists()
