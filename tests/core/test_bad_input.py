"""Bad input gets a clear error (exit 1, or 2 for usage) that says what to do, and writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ftedge.runtime import load_bundle

from ftedge.cli import main
from tests.helpers.common import ZOO, export, smoke_train


def run(capsys, *argv: str) -> tuple[int, str]:
    rc = main(list(argv))
    return rc, capsys.readouterr().err


def test_unimportable_module(capsys, tmp_path):
    rc, err = run(capsys, "export", "no_such_pkg.models:net", "-o", str(tmp_path / "b"), "--input", "x:float32:1,4")
    assert rc == 1
    assert "error: cannot import module 'no_such_pkg.models'" in err
    assert not (tmp_path / "b").exists()


def test_model_file_with_syntax_error(capsys, tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def build(:\n")
    rc, err = run(capsys, "export", f"{bad}:build", "-o", str(tmp_path / "b"), "--input", "x:float32:1,4")
    assert rc == 1 and "importing" in err and "SyntaxError" in err


@pytest.mark.parametrize("attr,expect", [
    ("missing_attr", "has no attribute 'missing_attr'"),
    ("not_a_module", "not a torch.nn.Module"),
    ("broken_factory", "weights file not found"),
])
def test_bad_model_attribute(capsys, tmp_path, attr, expect):
    rc, err = run(capsys, "export", f"{ZOO}:{attr}", "-o", str(tmp_path / "b"), "--input", "x:float32:1,4")
    assert rc == 1 and expect in err


def test_unknown_head_lists_candidates(capsys, tmp_path):
    rc, err = run(capsys, "export", f"{ZOO}:mlp", "-o", str(tmp_path / "b"), "--input", "x:float32:1,20",
                  "--head", "classifier")
    assert rc == 1
    assert "--head 'classifier' is not a submodule" in err and "out" in err


def test_trainable_regex_matching_nothing(capsys, tmp_path):
    rc, err = run(capsys, "export", f"{ZOO}:mlp", "-o", str(tmp_path / "b"), "--input", "x:float32:1,20",
                  "--trainable", "^decoder")
    assert rc == 1 and "matches no parameter" in err and "body.0.weight" in err


def test_invalid_regex_is_usage_error(capsys, tmp_path):
    rc, err = run(capsys, "export", f"{ZOO}:mlp", "-o", str(tmp_path / "b"), "--input", "x:float32:1,20",
                  "--trainable", "([")
    assert rc == 2 and "not a valid regular expression" in err


@pytest.mark.parametrize("spec", ["x", "x:float99:1,20", "x:float32:", "x:float32:0,20", "x:float32:1,20:0-5"])
def test_malformed_input_spec_is_usage_error(capsys, tmp_path, spec):
    rc, err = run(capsys, "export", f"{ZOO}:mlp", "-o", str(tmp_path / "b"), "--input", spec)
    assert rc == 2 and "--input" in err


def test_input_spec_not_matching_model(capsys, tmp_path):
    rc, err = run(capsys, "export", f"{ZOO}:mlp", "-o", str(tmp_path / "b"), "--input", "x:float32:1,7")
    assert rc == 1 and "does not run on the --input spec" in err
    assert not (tmp_path / "b").exists()


def test_layer_without_ort_gradient_trains_on_the_portable_engine(tmp_path):
    """InstanceNormalization has no onnxruntime-training gradient; the portable engine trains through it (the
    ort-training engine's refusal, naming op and module, is tested in test_ort_training_engine.py)."""
    manifest = export(f"{ZOO}:instance_norm", tmp_path / "b", "--input", "x:float32:1,4,10", "--trainable", ".")
    assert list(manifest["engines"]) == ["portable"] and manifest["layout"] == "full"
    before, after = smoke_train(tmp_path / "b")
    assert after < before


def test_ort_training_export_without_that_package_says_how_to_get_it(capsys, tmp_path):
    rc, err = run(capsys, "export", f"{ZOO}:mlp", "-o", str(tmp_path / "b"), "--input", "x:float32:1,20",
                  "--engine", "ort-training")
    assert rc == 2
    assert "needs onnxruntime-training on this host" in err and "--engine portable" in err
    assert not (tmp_path / "b").exists() and not list(tmp_path.glob(".b.*")), "staging folder left behind"


def test_instance_norm_frozen_is_fine(tmp_path):
    manifest = export(f"{ZOO}:instance_norm", tmp_path / "b", "--input", "x:float32:1,4,10")
    assert manifest["trainable"] == ["head.weight", "head.bias"]


def test_parity_failure_lists_every_failing_output(capsys, tmp_path):
    rc, err = run(capsys, "export", f"{ZOO}:batch_branch", "-o", str(tmp_path / "b"), "--input", "x:float32:1,4")
    assert rc == 1
    # the batch of 5 takes the other branch, whole and embedded in chunks of 2 (batches of <= 3 agree)
    assert "disagree with PyTorch on 2 output(s): logits[fp32,batch=5]: max abs diff" in err
    assert "logits[fp32,batch=5,chunks=2]: max abs diff" in err
    assert "mixes" not in err and "depends on the other samples" not in err  # whole-batch fails too: not the cut
    assert not (tmp_path / "b").exists()


def test_skip_parity_writes_bundle_marked_unchecked(capsys, tmp_path):
    rc, err = run(capsys, "export", f"{ZOO}:batch_branch", "-o", str(tmp_path / "b"), "--input", "x:float32:1,4",
                  "--skip-parity", "--quiet")
    assert rc == 0 and "--skip-parity" in err
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["parity"]["skipped"] is True


def test_existing_output_needs_force(capsys, cnn_bundle):
    rc, err = run(capsys, "export", f"{ZOO}:cnn", "-o", str(cnn_bundle), "--input", "x:float32:1,101,40")
    assert rc == 1 and "already exists" in err and "--force" in err


def test_force_replaces_bundle_atomically(tmp_path):
    out = tmp_path / "b"
    export(f"{ZOO}:mlp", out, "--input", "x:float32:1,20")
    export(f"{ZOO}:mlp", out, "--input", "x:float32:1,20", "--loss", "mse", "--force")
    assert load_bundle(out).loss == "mse"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_tampered_bundle_file_is_refused(capsys, cnn_bundle, tmp_path):
    bundle = _copy(cnn_bundle, tmp_path / "t")
    ckpt = bundle / "portable" / "init.safetensors"
    data = bytearray(ckpt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    ckpt.write_bytes(bytes(data))
    rc, err = run(capsys, "inspect", str(bundle))
    assert rc == 1
    assert "portable/init.safetensors: sha256" in err and "re-download or re-export" in err


def test_missing_and_unlisted_files_are_refused(capsys, cnn_bundle, tmp_path):
    bundle = _copy(cnn_bundle, tmp_path / "t")
    (bundle / "backbone.onnx").unlink()
    rc, err = run(capsys, "inspect", str(bundle))
    assert rc == 1 and "backbone.onnx: missing" in err


def test_unknown_schema_version_is_refused(capsys, cnn_bundle, tmp_path):
    bundle = _copy(cnn_bundle, tmp_path / "t")
    mpath = bundle / "manifest.json"
    manifest = json.loads(mpath.read_text())
    manifest["schema_version"] = 99
    mpath.write_text(json.dumps(manifest))
    rc, err = run(capsys, "inspect", str(bundle))
    assert rc == 1 and "schema_version 99 is not supported" in err and "upgrade ftedge" in err


def test_not_a_bundle(capsys, tmp_path):
    rc, err = run(capsys, "inspect", str(tmp_path))
    assert rc == 1 and "has no manifest.json" in err
    (tmp_path / "manifest.json").write_text("{not json")
    rc, err = run(capsys, "inspect", str(tmp_path))
    assert rc == 1 and "not valid JSON" in err


def test_debug_shows_traceback(capsys, tmp_path):
    rc = main(["inspect", str(tmp_path), "--debug"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" in err and "error: " in err


def test_feeds_not_matching_bundle_inputs_get_clear_error(cnn_bundle):
    import numpy as np
    from ftedge.runtime.engines.session import BundleSession

    from ftedge.errors import DataError

    session = BundleSession(load_bundle(cnn_bundle))
    with pytest.raises(DataError, match=r"input 'x' is float32\[2, 40, 101\], the bundle expects float32\[batch, 101, 40\]"):
        session.embed({"x": np.zeros((2, 40, 101), np.float32)})
    with pytest.raises(DataError, match="missing input 'x'"):
        session.embed({"y": np.zeros((2, 101, 40), np.float32)})
