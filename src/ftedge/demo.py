"""`ftedge demo`: a voice-command box adapts to its user's accent, end to end on this machine.

1. Synthesize the user's recordings: SYNTHETIC speech from espeak-ng in a held-out accent (default
   ``es``: Spanish voice reading English) that the shipped base model never heard — ``--shots`` clips
   per command word to train on, more to test on.
2. `ftedge export` the shipped keyword-spotting model (``examples/kws``: raw waveform in, log-mel in the
   graph, pretrained on six other accents), checked against PyTorch.
3. `ftedge train` on the box: torch-free (the ``.venv-device`` interpreter when present), WAV decoding,
   backbone once per clip, head fine-tuning, safety gate, personalized ``model.onnx``.
4. `ftedge evaluate` the untuned bundle and the personalized model on the held-out clips.
Needs a checkout of the repository (examples/ and bench/) and ``apt-get install espeak-ng``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from ftedge.errors import FtedgeError

REPO = Path(__file__).resolve().parents[2]


def _module(path: Path, name: str):  # noqa: ANN202
    if not path.is_file():
        raise FtedgeError(f"{path} is missing: `ftedge demo` runs from a checkout of the ftedge repository")
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _split(raw: Path, dst: Path, shots: int, words: list[str]) -> tuple[Path, Path]:
    for word in words:
        for f in sorted((raw / word).glob("*.wav")):
            part = "train" if int(f.stem.rsplit("_", 1)[1]) < shots else "test"
            (dst / part / word).mkdir(parents=True, exist_ok=True)
            shutil.copy(f, dst / part / word / f.name)
    return dst / "train", dst / "test"


def _train(bundle: Path, data: Path, run_dir: Path, seed: int) -> tuple[dict[str, Any], str]:
    args = ["train", str(bundle), "--data", str(data), "-o", str(run_dir), "--epochs", "30", "--lr", "0.01",
            "--batch-size", "16", "--seed", str(seed), "--no-cache", "--json", "--quiet"]
    device_py = REPO / ".venv-device" / "bin" / "python"
    if device_py.exists():
        proc = subprocess.run([str(device_py), "-m", "ftedge", *args], capture_output=True, text=True, cwd=REPO)
        if proc.returncode not in (0, 1) or not proc.stdout.strip():
            raise FtedgeError(f"ftedge train on the device venv failed:\n{proc.stderr[-2000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1]), "device venv (no torch installed)"
    from ftedge.runtime.trainer import TrainConfig, train

    cfg = TrainConfig(epochs=30, lr=0.01, batch_size=16, seed=seed)
    return train(bundle, data, run_dir, cfg), "this interpreter"


def run_demo(workdir: Path, voice: str = "es", shots: int = 5, seed: int = 0,
             say: Callable[[str], None] = print) -> dict[str, Any]:
    from ftedge.export import ExportOptions, export_bundle
    from ftedge.runtime.evaluate import evaluate
    from ftedge.runtime.manifest import parse_input_spec

    t0 = time.perf_counter()
    maker = _module(REPO / "bench" / "make_kws_dataset.py", "make_kws_dataset")
    kws = _module(REPO / "examples" / "kws" / "model.py", "kws_model")
    if shutil.which("espeak-ng") is None:
        raise FtedgeError("espeak-ng is not installed: sudo apt-get install espeak-ng (scripts/dev.sh demo does)")
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)

    say(f"1/4 synthesizing the user's recordings: SYNTHETIC speech, voice '{voice}' (unseen by the base model)")
    maker.make_dataset(workdir / "raw", [voice], kws.WORDS, shots + 20, seed)
    train_dir, test_dir = _split(workdir / "raw", workdir / "user", shots, kws.WORDS)

    say("2/4 ftedge export of the shipped keyword model (waveform in, log-mel in the graph), parity-checked")
    bundle = workdir / "kws-bundle"
    manifest = export_bundle(ExportOptions(
        model=f"{REPO / 'examples' / 'kws' / 'model.py'}:build_model", output=bundle,
        inputs=[parse_input_spec("waveform:float32:1,16000")], head="classifier", labels=kws.WORDS,
        keep_head=True, name="kws", force=True))

    say(f"3/4 ftedge train on {shots} clips per word ({shots * len(kws.WORDS)} WAV files)")
    trained, where = _train(bundle, train_dir, workdir / "run", seed)
    say(f"    trained in {where}: {trained['status']}, promoted: {trained['promoted']}, "
        f"{trained['duration_s']:.1f} s")

    say("4/4 ftedge evaluate on the user's other clips")
    before = evaluate(bundle, test_dir)
    after = evaluate(workdir / "run", test_dir) if (workdir / "run" / "model.onnx").exists() else before
    result = {
        "data": "synthetic speech (espeak-ng)", "voice": voice, "shots": shots,
        "train_files": trained["samples"]["total"], "test_clips": before["samples"],
        "accuracy_before": round(before["accuracy"], 4), "accuracy_after": round(after["accuracy"], 4),
        "promoted": trained["promoted"], "parity_max_abs_diff": max(manifest["parity"]["max_abs_diff"].values()),
        "train_seconds": trained["duration_s"], "trained_in": where, "run": str(workdir / "run"),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    say(f"accent '{voice}', {result['test_clips']} held-out SYNTHETIC clips: accuracy {before['accuracy']:.1%} "
        f"before → {after['accuracy']:.1%} after personalization ({result['seconds']} s in all)")
    (workdir / "demo-result.json").write_text(json.dumps(result, indent=2))
    return result


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="personalize the shipped keyword model to an unseen accent, end to end (needs the export extra)",
        description=__doc__,
        epilog="example:\n  ftedge demo --voice es --shots 5 --workdir /tmp/ftedge-demo --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--voice", default="es", help="espeak-ng voice of the 'user' (default es; not a training accent)")
    p.add_argument("--shots", type=int, default=5, help="recordings per command word to train on (default 5)")
    p.add_argument("--workdir", type=Path, default=Path("ftedge-demo"), help="where to write data, bundle and run")
    p.add_argument("--seed", type=int, default=0, help="seed for data and training (default 0)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object on the last line")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        raise FtedgeError("the demo exports a PyTorch model first: pip install 'ftedge[export]'") from exc
    say = (lambda _m: None) if args.quiet else (lambda m: print(m, file=sys.stderr if args.json else sys.stdout))
    result = run_demo(args.workdir, args.voice, args.shots, args.seed, say)
    if args.json:
        print(json.dumps(result))
    return 0 if result["accuracy_after"] >= result["accuracy_before"] else 1
