"""The suite's own layout: tests live in folders by room, and the shared conftest imports nothing heavy (a fleet or
agent test does not pay for numpy, onnx or torch)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers.common import ROOT

ROOMS = {"core", "bundle", "export", "runtime", "agent", "fleet", "e2e", "fuzz"}


def test_tests_live_in_room_folders():
    loose = [p.name for p in (ROOT / "tests").glob("test_*.py")]
    assert not loose, f"put these in a room folder ({sorted(ROOMS)}): {loose}"
    rooms = {p.parent.relative_to(ROOT / "tests").parts[0] for p in (ROOT / "tests").rglob("test_*.py")}
    assert rooms == ROOMS, rooms ^ ROOMS


def test_conftest_imports_no_numpy_onnx_or_torch():
    code = ("import sys, tests.conftest; "
            "print(sorted(m for m in ('numpy', 'onnx', 'onnxruntime', 'torch', 'ftedge.export') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", f"tests/conftest.py imports {out.stdout.strip()}: import it inside the fixture"


def test_the_zoo_export_cache_restores_only_what_the_same_code_exported(tmp_path, monkeypatch):
    """A zoo bundle is exported for real once; a farm with the same code, libraries and spec restores it (the same
    bytes); a different spec, libraries, or a change to a source file the export imported is a miss (code it never
    imports is not a dependency); a failed export is not kept; `off` disables the cache."""
    from tests.helpers import bundle_cache, bundle_farm
    from tests.helpers.common import ZOO
    from tests.helpers.zoo import FAMILIES

    monkeypatch.setenv("FTEDGE_TEST_BUNDLE_CACHE", str(tmp_path / "cache"))
    specs = {"mlp": (ZOO, *FAMILIES["mlp-mse"]), "broken": (ZOO, "broken_factory", ["--input", "x:float32:1,4"])}
    runs = []
    for k in range(2):
        farm = bundle_farm.BundleFarm(tmp_path / f"farm{k}", specs, workers=1)
        runs.append((farm, {n: farm.get(n) for n in specs}))
        farm.close()
    (first, done1), (second, done2) = runs
    assert done1["mlp"].returncode == 0 and done2["mlp"].returncode == 0
    assert done1["broken"].returncode != 0 and done2["broken"].returncode != 0  # exported again: never cached
    assert (first.cached, second.cached) == (0, 1)
    def tree(root):  # noqa: ANN001, ANN202
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    exported, restored = tree(tmp_path / "farm0" / "mlp"), tree(tmp_path / "farm1" / "mlp")
    assert "manifest.json" in exported and restored == exported
    key = bundle_cache.key(ZOO, *FAMILIES["mlp-mse"])
    assert key != bundle_cache.key(ZOO, "mlp", ["--input", "x:float32:1,20"])  # another spec
    entry = tmp_path / "cache" / key
    deps = json.loads((entry / "deps.json").read_text())
    assert {"export/bundle_writer.py", "src/ftedge/cli.py", "tests/helpers/zoo.py"} <= set(deps), sorted(deps)[:20]
    never = {"device_agent/agent.py", "device_agent/jobs.py", "fleet/store.py", "runtime/tasks/classify/trainer.py"}
    assert not never & set(deps)   # an export never imports them: changing them keeps the cache
    assert bundle_cache.restore(key, tmp_path / "again", []) is not None
    deps["export/bundle_writer.py"] = "0" * 64                                       # an imported source changed
    (entry / "deps.json").write_text(json.dumps(deps))
    assert bundle_cache.restore(key, tmp_path / "stale", []) is None and not (tmp_path / "stale").exists()
    monkeypatch.setattr(bundle_cache, "code_digest", lambda: "other code")
    assert bundle_cache.key(ZOO, *FAMILIES["mlp-mse"]) != key                   # other libraries or pyproject
    monkeypatch.setenv("FTEDGE_TEST_BUNDLE_CACHE", "off")
    assert bundle_cache.cache_dir() is None and bundle_cache.restore(key, tmp_path / "x", []) is None
