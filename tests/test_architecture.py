"""The import rules of ARCHITECTURE.md, checked on the source: which package may import which, and which
modules alone may import a third-party client (paho, onnxruntime, sqlite3, psycopg) or define an error class."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
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
    "onnxruntime": {"runtime/ort_backend.py", "runtime/ort_training_backend.py"},
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
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ftedge.runtime.ort"):
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


def test_module_docstrings_cite_only_documents_the_repo_has():
    bad = []
    for pkg in PACKAGES:
        for p in _modules(pkg):
            doc = ast.get_docstring(ast.parse(p.read_text(encoding="utf-8"))) or ""
            for name in ("DESIGN.md", "ARCHITECTURE.md", "BENCHMARKS.md", "SECURITY.md", "README.md"):
                if name in doc and not (ROOT / name).is_file():
                    bad.append(f"{_rel(p)} cites {name}")
    assert not bad, "\n".join(bad)


def test_the_agent_dispatches_every_contract_verb_from_one_table():
    from ftedge.device_agent import agent, commands

    assert set(agent._VERBS) == set(commands.VERBS)
