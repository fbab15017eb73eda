"""The import rules of ARCHITECTURE.md, checked on the source: which package may import which, and which
modules alone may import a third-party client (paho, onnxruntime, sqlite3, psycopg) or define an error class."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers.common import ROOT

PACKAGES = {"export": "export", "bundle": "bundle", "runtime": "runtime", "device_agent": "device_agent",
            "fleet": "fleet", "mqtt": "mqtt", "core": "src/ftedge"}

# package -> ftedge packages (and third-party roots) it must never import
FORBIDDEN = {
    "bundle": {"ftedge.export", "ftedge.runtime", "ftedge.device_agent", "ftedge.fleet", "ftedge.mqtt", "torch"},
    "runtime": {"ftedge.export", "ftedge.device_agent", "ftedge.fleet", "ftedge.mqtt", "torch"},
    "device_agent": {"ftedge.export", "ftedge.fleet", "torch"},
    "mqtt": {"ftedge.export", "ftedge.runtime", "ftedge.device_agent", "ftedge.fleet", "ftedge.bundle", "torch"},
    "fleet": {"ftedge.export", "ftedge.runtime", "ftedge.device_agent", "torch"},
    "core": {"ftedge.export", "ftedge.runtime", "ftedge.device_agent", "ftedge.fleet", "torch"},
}
CORE_LAZY_OK = {"src/ftedge/cli.py"}  # the CLI registers every subcommand (lazily, inside a function)


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / PACKAGES[package]).rglob("*.py"))


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
    return out


def _hits(module: str, roots: set[str]) -> bool:
    return any(module == r or module.startswith(r + ".") for r in roots)


def _rel(p: Path) -> str:
    return p.relative_to(ROOT).as_posix()


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_packages_import_only_what_the_architecture_allows(package):
    bad = [f"{_rel(p)}:{line} imports {mod}" for p in _modules(package) if _rel(p) not in CORE_LAZY_OK
           for line, mod in _imports(p) if _hits(mod, FORBIDDEN[package])]
    assert not bad, "import rule broken (see ARCHITECTURE.md):\n" + "\n".join(bad)


def _importers(root: str) -> set[str]:
    return {_rel(p) for pkg in PACKAGES for p in _modules(pkg) if any(_hits(m, {root}) for _l, m in _imports(p))}


# Only these modules may import the client; the sets are exact, so a new importer fails the test, and so does
# an adapter that no longer needs listing (shrink the set with it).
ADAPTERS = {
    "sqlite3": {"src/ftedge/sqlite_db.py"},
    "cryptography": {"bundle/signing.py"},
    # onnxruntime: one adapter per engine (plain onnxruntime; onnxruntime-training's API and artifact builder)
    "onnxruntime": {"runtime/engines/ort_backend.py", "runtime/engines/ort_training_backend.py"},
    # paho: the shared adapter, plus the collector's fast receive path (it subclasses paho's client and reads
    # its internals, which is why the fleet extra pins paho's minor version)
    "paho": {"mqtt/client.py", "fleet/fast_receive.py"},
    # psycopg: the PostgreSQL fleet store's adapter (imported only for --db postgresql://…)
    "psycopg": {"fleet/postgres_db.py"},
}


@pytest.mark.parametrize("client", sorted(ADAPTERS))
def test_only_the_adapter_imports_a_third_party_client(client):
    assert _importers(client) == ADAPTERS[client]


ORT_ADAPTERS = ADAPTERS["onnxruntime"]


def test_the_onnxruntime_module_object_never_leaves_its_adapters():
    """Outside the two ORT adapters, code calls their named functions; the raw module (``_onnxruntime``, the
    old ``ort()``) stays inside them."""
    bad = []
    for pkg in PACKAGES:
        for p in _modules(pkg):
            if _rel(p) in ORT_ADAPTERS:
                continue
            for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
                names = []
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ftedge.runtime.engines.ort"):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.Attribute):
                    names = [node.attr]
                bad += [f"{_rel(p)}:{node.lineno} uses {n}" for n in names if n in ("_onnxruntime", "ort")]
    assert not bad, "the onnxruntime module escapes its adapters:\n" + "\n".join(bad)


def test_every_error_class_lives_in_errors_py():
    bad = []
    for pkg in PACKAGES:
        for p in _modules(pkg):
            if _rel(p) == "src/ftedge/errors.py":
                continue
            for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ClassDef) and any(
                        isinstance(b, ast.Name) and (b.id.endswith("Error") or b.id == "Exception")
                        for b in node.bases):
                    bad.append(f"{_rel(p)}:{node.lineno} class {node.name}")
    assert not bad, "error classes outside src/ftedge/errors.py:\n" + "\n".join(bad)


def test_the_agent_dispatches_every_contract_verb_from_one_table():
    from ftedge.device_agent import agent, commands

    assert set(agent._VERBS) == set(commands.VERBS)


# export may use, of the device runtime, only what verifies a bundle as the device will run it: the onnxruntime
# adapters, and the two pure contracts its parity checks feed to PyTorch (the chat format the device renders
# prompts with, the anchor-free targets the device trains on) — never trainers, data loaders or the CLI.
EXPORT_MAY_USE = {"ftedge.runtime.engines.ort_backend", "ftedge.runtime.engines.ort_training_backend",
                  "ftedge.runtime.tasks.lm.chat", "ftedge.runtime.tasks.detect.targets"}


def test_export_imports_only_bundle_core_and_the_runtime_adapters():
    bad = []
    for p in _modules("export"):
        tree = ast.parse(p.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            mods: list[str] = []
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                # `from ftedge.runtime.engines import ort_backend` names the module in the alias
                mods = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for mod in mods:
                if _hits(mod, {"ftedge.device_agent", "ftedge.fleet", "ftedge.mqtt"}):
                    bad.append(f"{_rel(p)}:{node.lineno} imports {mod}")
            if isinstance(node, ast.ImportFrom) and node.module and _hits(node.module, {"ftedge.runtime"}):
                full = {node.module} | {f"{node.module}.{a.name}" for a in node.names}
                if not full & EXPORT_MAY_USE:
                    bad.append(f"{_rel(p)}:{node.lineno} imports {node.module}")
            if isinstance(node, ast.Import):
                bad += [f"{_rel(p)}:{node.lineno} imports {a.name}" for a in node.names
                        if _hits(a.name, {"ftedge.runtime"}) and a.name not in EXPORT_MAY_USE]
    assert not bad, "export imports device code it may not (ARCHITECTURE.md):\n" + "\n".join(bad)


# Task names live in the task table and its two registries; everywhere else dispatches through them.
REGISTRIES = {"bundle/tasks.py", "runtime/tasks/__init__.py", "export/tasks/__init__.py"}


def test_no_module_outside_the_registries_compares_a_task_name():
    from ftedge.bundle.tasks import all_tasks

    names = {n for t in all_tasks() for n in (t.name, *t.aliases)}
    bad = []
    for pkg in PACKAGES:
        for p in _modules(pkg):
            if _rel(p) in REGISTRIES:
                continue
            for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
                if not isinstance(node, ast.Compare):
                    continue
                consts = []
                for side in (node.left, *node.comparators):
                    elts = side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]
                    consts += [e.value for e in elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
                bad += [f"{_rel(p)}:{node.lineno} compares {c!r}" for c in consts if c in names]
    assert not bad, "task-name comparisons outside the registries (dispatch through ftedge.runtime.tasks / " \
                    "ftedge.export.tasks):\n" + "\n".join(bad)


def test_every_package_folder_is_in_pyproject_packages():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    listed = set(project["packages"])
    dirs = {name: Path(folder) for name, folder in project["package-dir"].items()}
    found = set()
    for name, folder in dirs.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((name, *rel)))
    assert found == listed, f"missing from pyproject.toml: {sorted(found - listed)}; stale: {sorted(listed - found)}"


# The fleet reads an archive's manifest and hashes it when a rollout starts; it never loads, verifies or unpacks a
# bundle (the devices do, against their own trusted keys).
FLEET_MAY_USE_OF_BUNDLE = {"ftedge.bundle.archive", "ftedge.bundle.hashing"}


def test_the_fleet_uses_of_the_bundle_format_only_the_archive_reader_and_the_hash():
    bad = [f"{_rel(p)}:{line} imports {mod}" for p in _modules("fleet") for line, mod in _imports(p)
           if _hits(mod, {"ftedge.bundle"}) and mod not in FLEET_MAY_USE_OF_BUNDLE]
    assert not bad, "the fleet imports bundle code it may not (ARCHITECTURE.md):\n" + "\n".join(bad)
