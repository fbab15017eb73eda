"""The shared helpers: durable files (ftedge.durable) and SQLite (ftedge.sqlite_db), and their users."""

from __future__ import annotations

import json
import os
import sqlite3

import pytest
from ftedge.export.bundle_writer import BundleStage

from ftedge import durable, sqlite_db
from ftedge.errors import CacheError, FtedgeError


def _failing_second_rename(monkeypatch):
    real, calls = os.rename, []

    def rename(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:
            raise OSError(28, "No space left on device (injected)")
        return real(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    return calls


def test_swap_dir_puts_the_old_folder_back_when_the_second_rename_fails(tmp_path, monkeypatch):
    target, staged = tmp_path / "b", tmp_path / ".b.new"
    target.mkdir(), staged.mkdir()
    (target / "f").write_text("old"), (staged / "f").write_text("new")
    calls = _failing_second_rename(monkeypatch)
    with pytest.raises(OSError, match="injected"):
        durable.swap_dir(staged, target)
    assert len(calls) == 3 and (target / "f").read_text() == "old" and (staged / "f").read_text() == "new"


def test_swap_dir_returns_the_backup_and_installs_the_new_folder(tmp_path):
    target, staged = tmp_path / "b", tmp_path / ".b.new"
    target.mkdir(), staged.mkdir()
    (target / "f").write_text("old"), (staged / "f").write_text("new")
    old = durable.swap_dir(staged, target, tmp_path / "b.replaced")
    assert (target / "f").read_text() == "new" and (old / "f").read_text() == "old" and not staged.exists()
    assert durable.swap_dir(tmp_path / "b.replaced", tmp_path / "fresh") is None


def test_a_bundle_export_whose_final_rename_fails_leaves_the_old_bundle_in_place(tmp_path, monkeypatch):
    target = tmp_path / "bundle"
    target.mkdir()
    (target / "manifest.json").write_text('{"old": true}')
    stage = BundleStage(target, force=True)
    stage.path("model.onnx").write_bytes(b"new model")
    _failing_second_rename(monkeypatch)
    with pytest.raises(OSError, match="injected"):
        stage.commit({"name": "new"})
    assert json.loads((target / "manifest.json").read_text()) == {"old": True}


def test_atomic_writer_keeps_the_old_file_and_no_temp_when_the_write_fails(tmp_path):
    path = tmp_path / "state.json"
    durable.atomic_write_json(path, {"v": 1})
    with pytest.raises(RuntimeError):
        with durable.atomic_writer(path) as f:
            f.write(b"half")
            raise RuntimeError("crash mid-write")
    assert json.loads(path.read_text()) == {"v": 1} and sorted(os.listdir(tmp_path)) == ["state.json"]
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


class _DbError(FtedgeError):
    pass


STEPS = ["CREATE TABLE a (x INTEGER);", "ALTER TABLE a ADD COLUMN y TEXT; CREATE INDEX a_y ON a (y);"]


def test_migrate_applies_each_step_once_and_refuses_a_newer_file(tmp_path):
    db = sqlite_db.connect(tmp_path / "t.db", error=_DbError, what="test db")
    assert sqlite_db.migrate(db, STEPS[:1], error=_DbError, what="t", newer_hint="upgrade") == 0
    assert sqlite_db.migrate(db, STEPS, error=_DbError, what="t", newer_hint="upgrade") == 1
    assert sqlite_db.schema_version(db) == 2 and db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.execute("INSERT INTO a VALUES (1, 'one')")
    with pytest.raises(_DbError, match="schema 2, newer than this ftedge understands \\(1\\); upgrade"):
        sqlite_db.migrate(db, STEPS[:1], error=_DbError, what="t", newer_hint="upgrade")


def test_a_failing_migration_step_rolls_back_whole(tmp_path):
    db = sqlite_db.connect(tmp_path / "t.db", error=_DbError, what="test db")
    with pytest.raises(sqlite_db.Error):
        sqlite_db.migrate(db, ["CREATE TABLE a (x); CREATE TABLE b (y); INSERT INTO nowhere VALUES (1);"],
                          error=_DbError, what="t", newer_hint="upgrade")
    assert sqlite_db.schema_version(db) == 0
    assert db.execute("SELECT name FROM sqlite_master").fetchall() == []


def test_connect_reports_an_unusable_path_as_the_callers_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(_DbError, match="cannot open test db .*check that the directory exists"):
        sqlite_db.connect(tmp_path / "file" / "t.db", error=_DbError, what="test db")


def test_an_embedding_cache_from_before_schema_versions_opens_and_keeps_its_rows(tmp_path):
    from ftedge.runtime.data.cache import SCHEMA_VERSION, EmbeddingCache

    old = sqlite3.connect(tmp_path / "embeddings.sqlite")  # the layout ftedge wrote before the cache had a version
    old.execute("CREATE TABLE emb (backbone TEXT, sample TEXT, data BLOB, PRIMARY KEY (backbone, sample))")
    old.execute("INSERT INTO emb VALUES ('bb', 's1', x'0102')")
    old.commit(), old.close()
    cache = EmbeddingCache(tmp_path)
    assert cache.lookup("bb", ["s1"]) == {"s1": b"\x01\x02"}
    assert sqlite_db.schema_version(cache.db) == SCHEMA_VERSION == 1
    cache.close()
    newer = sqlite3.connect(tmp_path / "embeddings.sqlite")
    newer.execute("PRAGMA user_version = 7"), newer.close()
    with pytest.raises(CacheError, match="newer than this ftedge.*delete the file"):
        EmbeddingCache(tmp_path)


def test_processes_opening_a_new_file_together_migrate_it_once(tmp_path):
    """A collector and `fleet rollout start` may open a fresh fleet database at the same moment: each step runs
    once (the version is read again under the write lock), never twice ("table … already exists")."""
    import subprocess
    import sys

    import time

    code = ("import sys, time; from ftedge import sqlite_db; from ftedge.errors import FtedgeError\n"
            "db = sqlite_db.connect(sys.argv[1], error=FtedgeError, what='t')\n"
            "time.sleep(max(0.0, float(sys.argv[2]) - time.time()))\n"   # all at once

            "steps = ['CREATE TABLE a (x INTEGER); SELECT 1;'] + [f'CREATE TABLE t{i} (x INTEGER);' for i in range(30)]\n"
            "sqlite_db.migrate(db, steps, error=FtedgeError, what='t', newer_hint='')\n"
            "print(sqlite_db.schema_version(db))\n")
    for attempt in range(3):
        path = tmp_path / f"race{attempt}.sqlite"
        start = str(time.time() + 2.0)
        procs = [subprocess.Popen([sys.executable, "-c", code, str(path), start], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(4)]
        outs = [p.communicate(60) for p in procs]
        assert all(p.returncode == 0 for p in procs), [o[1][-500:] for o in outs]
        assert {o[0].strip() for o in outs} == {"31"}
