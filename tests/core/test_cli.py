"""The command line as a user meets it: help, exit codes, inspect output."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ftedge.cli import main


@pytest.mark.parametrize("command", ["export", "inspect"])
def test_help_explains_every_option_with_an_example(capsys, command):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "example" in out
    assert f"ftedge {command} " in out
    parser_opts = {"export": ["--input", "--output", "--head", "--num-classes", "--labels", "--labels-file",
                              "--trainable", "--loss", "--optimizer", "--lr", "--opset", "--no-split",
                              "--quantize-backbone", "--skip-parity", "--tolerance", "--json", "--quiet", "--force"],
                   "inspect": ["--json"]}[command]
    for opt in parser_opts:
        assert opt in out, f"{opt} missing from `ftedge {command} --help`"


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().err


def test_usage_error_exits_2(capsys):
    assert main(["export"]) == 2
    assert "required" in capsys.readouterr().err


def test_console_script_runs_as_module():
    proc = subprocess.run([sys.executable, "-m", "ftedge", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("ftedge ")


def test_inspect_shows_what_is_inside(capsys, cnn_bundle):
    assert main(["inspect", str(cnn_bundle)]) == 0
    out = capsys.readouterr().out
    for needle in ["layout split", "x float32 [batch, 101, 40]", "labels   4: yes, no, up, down",
                   "classifier.1.weight", "verified yes", "portable/step.onnx", "engines  portable", "parity"]:
        assert needle in out, needle


def test_inspect_json_is_the_verified_manifest(capsys, cnn_bundle):
    assert main(["inspect", str(cnn_bundle), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["verified"] is True
    required = ["schema_version", "name", "created_by", "producer", "inputs", "output", "labels", "task", "loss",
                "optimizer", "trainable", "frozen", "layout", "roles", "files", "parity", "preprocessing"]
    assert not [k for k in required if k not in data]
    assert set(data["producer"]) >= {"torch", "onnx", "onnxruntime", "opset"}
    for rel, entry in data["files"].items():
        assert len(entry["sha256"]) == 64 and entry["size"] > 0, rel
    assert set(data["roles"].values()) <= set(data["files"])


def test_export_json_prints_manifest(capsys, tmp_path):
    from tests.helpers.common import ZOO

    assert main(["export", f"{ZOO}:mlp", "-o", str(tmp_path / "b"), "--input", "x:float32:1,20", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["trainable"] == ["out.weight", "out.bias"]


def test_every_exit_code_has_help_text_in_ftedge_help(capsys):
    from ftedge import errors

    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    codes = {v for k, v in vars(errors).items() if k.startswith("EXIT_") and isinstance(v, int)}
    assert codes == set(errors.EXIT_CODES) and len(codes) >= 8
    for code in codes:
        assert errors.EXIT_CODES[code].strip(), code
        assert f"{code:>3}  {errors.EXIT_CODES[code]}" in out
    exit_codes = {cls.exit_code for cls in vars(errors).values()
                  if isinstance(cls, type) and issubclass(cls, errors.FtedgeError)}
    assert exit_codes <= codes  # every error class maps to a documented code


def test_an_unexpected_exception_is_an_internal_error_without_traceback(capsys, cnn_bundle, monkeypatch):
    import ftedge.bundle.cli as bundle_cli

    def broken(*_a, **_k):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(bundle_cli, "summary", broken)
    assert main(["inspect", str(cnn_bundle)]) == 70
    err = capsys.readouterr().err
    assert err.startswith("error: internal error (ZeroDivisionError: boom); rerun with --debug")
    assert "Traceback" not in err
    assert main(["inspect", str(cnn_bundle), "--debug"]) == 70
    assert "Traceback" in capsys.readouterr().err


TRAP = ("from pathlib import Path\n"
        "Path(__file__).with_name('EXECUTED').write_text('code from examples/demo ran')\n"
        "def register(sub):\n"
        "    p = sub.add_parser('demo')\n"
        "    p.add_argument('--marker-option')\n"
        "    p.set_defaults(handler=lambda a: 7)\n")


def _trap(root) -> object:  # noqa: ANN001
    demo = root / "examples" / "demo"
    demo.mkdir(parents=True)
    (demo / "demo.py").write_text(TRAP)
    return demo / "EXECUTED"


def test_no_command_runs_a_demo_found_in_the_working_directory(device_python, tmp_path):
    """An installed (non-editable) ftedge run in a folder holding examples/demo/demo.py -- a shared folder, a
    data directory -- must not execute it: not for `ftedge demo`, and not to build the parser of other commands."""
    marker = _trap(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "FTEDGE_EXAMPLES"}
    for argv in (["inspect", "--help"], ["agent", "--help"], ["--version"], ["demo", "--help"]):
        proc = subprocess.run([device_python, "-m", "ftedge", *argv], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=120)
        assert not marker.exists(), f"`ftedge {' '.join(argv)}` executed ./examples/demo/demo.py"
        assert proc.returncode in (0, 1), proc.stderr
    assert "FTEDGE_EXAMPLES" in proc.stderr  # `ftedge demo` without a demo says where it looks


def test_the_demo_is_loaded_only_when_ftedge_demo_runs(tmp_path, monkeypatch, capsys):
    marker = _trap(tmp_path)
    monkeypatch.setenv("FTEDGE_EXAMPLES", str(tmp_path / "examples"))
    assert main(["inspect", "--help"]) == 0
    assert not marker.exists()
    assert main(["demo", "--help"]) == 0 and "--marker-option" in capsys.readouterr().out
    assert marker.exists()
    assert main(["demo", "--marker-option", "x"]) == 7
    assert main(["demo", "--no-such-option"]) == 2
