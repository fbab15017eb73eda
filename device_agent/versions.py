"""Every personalized model the device ever produced, and which one is active.

Layout under ``STATE_DIR/models/``::

    v0001/  model.onnx  model.json  result.json  version.json  [tokenizer.json]
    v0002/  adapter.safetensors  model.json  result.json  version.json   (a causal LM: its LoRA adapter,
            side-loaded onto the decoder of the bundle model.json names; the record's ``model_file``)
            bundle/  the base bundle it was trained on, hard-linked (a ``deploy replace`` of the base cannot
                     take it away; versions of the same base share one copy's disk blocks)
    active.json    {"active": "v0002", "history": ["v0001", "v0002"], "events": [...]}
    active ->      v0002   (a relative symlink to the active version; absent when none is)

A version is staged in a hidden temp directory (files fsynced) and renamed into place, so ``vNNNN/``
is always complete; ``active.json`` is replaced atomically. ``history`` is the activation stack that
``rollback`` pops; ``events`` is an append-only log. ``deactivate()`` sets ``active`` to null and keeps the
history (the box's app falls back to the bundle's shipped model; ``rollback`` or ``activate`` brings a version
back). The ``active`` link follows ``active.json``: it is replaced atomically (a new link renamed over it) after every
write that changes the active id, and re-derived from ``active.json`` when a store is opened (a crash between the
two writes). A reader that opened a version through the link keeps a complete model when the link moves: versions
are immutable folders. ``prune(keep)`` (agent start, ``[retention] keep_versions``) deletes the oldest versions, never the
active one or its predecessor.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ftedge.bundle.hashing import sha256_file

from ftedge.durable import atomic_write_bytes, atomic_write_json, fsync_dir
from ftedge.errors import AgentError

log = logging.getLogger(__name__)

RUN_FILES = ("model.onnx", "model.json", "result.json")
ADAPTER_RUN_FILES = ("adapter.safetensors", "model.json", "result.json")  # causal-LM runs
OPTIONAL_RUN_FILES = ("tokenizer.json", "weights.safetensors")  # preprocessing files; the trained parameters (warm start)
_ID_RE = re.compile(r"v(\d{4,})")
ACTIVE_LINK = "active"  # STATE/models/active -> vNNNN (docs/app.md)
MAX_EVENTS = 1000  # entries of active.json's event log kept (newest first out)
_CHUNK = 1 << 20


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _copy_durable(src: Path, dst: Path) -> str:
    """Copy ``src`` to ``dst``, fsync it; returns the sha256 of the bytes written."""
    h = hashlib.sha256()
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        while chunk := fi.read(_CHUNK):
            h.update(chunk)
            fo.write(chunk)
        fo.flush()
        os.fsync(fo.fileno())
    return h.hexdigest()


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AgentError(f"{what} {path} is unreadable ({exc})") from None


class ModelStore:
    """Versioned personalized models under ``state_dir/models``; thread-safe."""

    def __init__(self, state_dir: str | Path) -> None:
        self.root = Path(state_dir) / "models"
        self.state_path = self.root / "active.json"
        self.link_path = self.root / ACTIVE_LINK
        self._lock = threading.RLock()
        self._repair_link()

    # --- reading -------------------------------------------------------------------------------

    def list(self) -> list[dict[str, Any]]:
        """Every version's record, oldest first, each with ``active``."""
        with self._lock:
            active = self._state()["active"]
            return [{**self._record(v), "active": v == active} for v in self._ids()]

    def get(self, version_id: str) -> dict[str, Any]:
        """One version's record (``version.json`` plus ``active``)."""
        with self._lock:
            return {**self._record(version_id), "active": version_id == self._state()["active"]}

    def active(self) -> dict[str, Any] | None:
        """The active version's record, or None when no version was ever activated."""
        with self._lock:
            active = self._state()["active"]
            return None if active is None else {**self._record(active), "active": True}

    def path(self, version_id: str) -> Path:
        """The model file of ``version_id`` (``model.onnx``, or a causal LM's ``adapter.safetensors``)."""
        with self._lock:
            record = self._record(version_id)
            return self.root / version_id / record.get("model_file", "model.onnx")

    # --- writing -------------------------------------------------------------------------------

    def add_version(self, run_dir: str | Path, job_id: str, note: dict | None = None) -> dict[str, Any]:
        """Store ``run_dir``'s model as a new version; activate it only if its result says ``promoted``.

        Returns the version record plus ``active``/``activated`` and a ``message`` saying what happened.
        """
        run_dir = Path(run_dir)
        if not isinstance(job_id, str) or not job_id:
            raise AgentError(f"job_id must be a non-empty string, got {job_id!r}")
        adapter = (run_dir / ADAPTER_RUN_FILES[0]).is_file() and not (run_dir / "model.onnx").is_file()
        run_files = ADAPTER_RUN_FILES if adapter else RUN_FILES
        model_file = run_files[0]
        missing = [f for f in run_files if not (run_dir / f).is_file()]
        if missing:
            raise AgentError(f"run directory {run_dir} lacks {', '.join(missing)}: only a finished, "
                             "succeeded `ftedge train` run can become a model version")
        result = _read_json(run_dir / "result.json", "run result")
        model_info = _read_json(run_dir / "model.json", "model description")
        if not isinstance(result, dict) or result.get("status") != "succeeded":
            status = result.get("status") if isinstance(result, dict) else None
            raise AgentError(f"run {run_dir} did not succeed (status {status!r}): nothing to store; "
                             "train again")
        promoted = result.get("promoted") is True
        bundle = result.get("bundle")
        bundle = (bundle.get("name") if isinstance(bundle, dict) else None) or (model_info or {}).get("name")
        with self._lock:
            self.root.mkdir(parents=True, exist_ok=True)
            state = self._state()
            parent = state["active"]
            staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))
            try:
                umask = os.umask(0)
                os.umask(umask)
                os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes 0700
                files = run_files + tuple(f for f in OPTIONAL_RUN_FILES if (run_dir / f).is_file())
                digests = {f: _copy_durable(run_dir / f, staging / f) for f in files}
                if adapter:
                    self._pin_base(run_dir / "bundle", staging / "bundle")
                record = {
                    "id": None,
                    "created_at": _now(),
                    "job": job_id,
                    "bundle": bundle,
                    "metrics": result.get("metrics"),
                    "baseline": result.get("baseline"),
                    "gain": result.get("gain"),
                    "promoted": promoted,
                    "sha256": digests[model_file],
                    "size": (staging / model_file).stat().st_size,
                    "model_file": model_file,
                    "parent": parent,
                    "source": str(run_dir.absolute()),
                    "note": note,
                }
                version_id = self._place(staging, record)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)  # our own partial copy, never a version
                raise
            if promoted:
                self._push(state, version_id, "promoted")
                message = f"{version_id} is active (promoted; previously {parent or 'no version'})"
            else:
                state["events"].append({"at": _now(), "action": "stored", "id": version_id, "from": parent})
                self._write_state(state)
                message = (f"{version_id} stored but NOT activated: not promoted (it did not beat the "
                           f"untuned model); {parent or 'no version'} stays active")
            return {**record, "active": promoted, "activated": promoted, "message": message}

    def _pin_base(self, pinned: Path, dst: Path) -> None:
        """Hard-link the base bundle a causal-LM run trained on (the job's pinned copy) into the version, from a
        kept version with the same files where there is one (one copy's blocks per base, whatever the links)."""
        from ftedge.device_agent.jobs import pin_bundle

        try:
            files = json.loads((pinned / "manifest.json").read_text(encoding="utf-8")).get("files")
        except (OSError, ValueError):
            return  # a run without its pinned copy (`ftedge train` outside the agent): the recorded path answers
        for v in reversed(self._ids()):
            try:
                if json.loads((self.root / v / "bundle" / "manifest.json").read_text(encoding="utf-8")).get(
                        "files") == files:
                    pinned = self.root / v / "bundle"
                    break
            except (OSError, ValueError):
                continue
        pin_bundle(pinned, dst)

    def activate(self, version_id: str) -> dict[str, Any]:
        """Make ``version_id`` active (pushed on the history, so ``rollback()`` undoes it)."""
        with self._lock:
            record = self._verified(version_id)
            state = self._state()
            previous = state["active"]
            if previous == version_id:
                return {**record, "active": True, "changed": False, "previous": previous,
                        "message": f"{version_id} is already active"}
            self._push(state, version_id, "activate")
            return {**record, "active": True, "changed": True, "previous": previous,
                    "message": f"{version_id} is active (was {previous or 'no version'})"}

    def prune(self, keep: int) -> list[str]:
        """Delete the oldest versions beyond the newest ``keep``; never the active one or its predecessor
        (what ``rollback()`` returns to). Deleted ids leave the activation history; returns them."""
        with self._lock:
            state = self._state()
            history = state["history"]
            protected = set(history[-2:])
            ids = self._ids()
            newest = set(ids[-keep:]) if keep > 0 else set()
            doomed = [v for v in ids if v not in newest and v not in protected]
            if not doomed:
                return []
            gone = set(doomed)
            kept: list[str] = []
            for v in history:  # drop deleted ids; collapse repeats they leave behind
                if v not in gone and (not kept or kept[-1] != v):
                    kept.append(v)
            state["history"] = kept
            state["events"].append({"at": _now(), "action": "pruned", "ids": doomed})
            self._write_state(state)  # first: a crash now leaves unreferenced folders, never dangling ids
            for v in doomed:
                shutil.rmtree(self.root / v, ignore_errors=True)
            fsync_dir(self.root)
            return doomed

    def deactivate(self) -> dict[str, Any]:
        """Make no version active (the app falls back to the bundle's shipped model); the history is kept, so
        ``rollback()`` re-activates the version active before, and ``rollback(to)``/``activate`` any other."""
        with self._lock:
            state = self._state()
            previous = state["active"]
            if previous is None:
                return {"changed": False, "previous": None, "message": "no version is active"}
            state["active"] = None
            state["events"].append({"at": _now(), "action": "deactivate", "id": None, "from": previous})
            self._write_state(state)
            return {"changed": True, "previous": previous,
                    "message": f"no version is active (was {previous}); the bundle's own model answers"}

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Hold the store for a block; if the block raises, put ``active.json`` back byte for byte (a rollback
        whose bundle part fails must leave the model part as it was). Versions added inside stay on disk."""
        with self._lock:
            before = self.state_path.read_bytes() if self.state_path.exists() else None
            try:
                yield
            except BaseException:
                now = self.state_path.read_bytes() if self.state_path.exists() else None
                if now != before:
                    if before is None:
                        self.state_path.unlink(missing_ok=True)
                    else:
                        atomic_write_bytes(self.state_path, before)
                    self._repair_link()
                raise

    def rollback(self, to: str | None = None) -> dict[str, Any]:
        """Go back to the version active before the current one, or to ``to`` (an earlier active one).

        With no version active (after :meth:`deactivate`), ``rollback()`` re-activates the last active version
        and ``rollback(to)`` any version of the history.
        """
        with self._lock:
            state = self._state()
            history, current = state["history"], state["active"]
            if not history:
                raise AgentError("nothing to roll back to: no version is active"
                                 + (f"; use activate('{to}') to make it active" if to else ""))
            # The versions ``rollback`` may return to: those active before the current one (all when none is).
            before = history[:-1] if current is not None else history
            if to is None:
                if not before:
                    raise AgentError(f"nothing to roll back to: {current} is the first version ever activated")
                index = len(before) - 1
            else:
                self._record(to)
                if to == current:
                    return {**self._record(to), "active": True, "changed": False, "previous": current,
                            "message": f"{to} is already active"}
                earlier = [i for i, v in enumerate(before) if v == to]
                if not earlier:
                    raise AgentError(f"nothing to roll back to: {to} was never active before {current}; "
                                     f"use activate('{to}') to make it active anyway")
                index = earlier[-1]
            target = history[index]
            record = self._verified(target)
            state["history"] = history[:index + 1]
            state["active"] = target
            state["events"].append({"at": _now(), "action": "rollback", "id": target, "from": current})
            self._write_state(state)
            return {**record, "active": True, "changed": True, "previous": current,
                    "message": f"rolled back from {current or 'no version'} to {target}"}

    # --- internals -----------------------------------------------------------------------------

    def _ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        found = [(int(m.group(1)), p.name) for p in self.root.iterdir()
                 if p.is_dir() and (m := _ID_RE.fullmatch(p.name))]
        return [name for _, name in sorted(found)]

    def _unknown(self, version_id: str) -> AgentError:
        ids = self._ids()
        known = ", ".join(ids if len(ids) <= 20 else ids[:5] + ["…"] + ids[-10:]) or "none yet"
        return AgentError(f"unknown model version {version_id!r}; known versions: {known}")

    def _record(self, version_id: str) -> dict[str, Any]:
        if not isinstance(version_id, str) or not _ID_RE.fullmatch(version_id):
            raise self._unknown(version_id)
        path = self.root / version_id / "version.json"
        if not path.is_file():
            raise self._unknown(version_id)
        record = _read_json(path, "model version record")
        if not isinstance(record, dict):
            raise AgentError(f"model version record {path} is not a JSON object")
        return record

    def _verified(self, version_id: str) -> dict[str, Any]:
        """The record, after checking its model.onnx still has the recorded sha256."""
        record = self._record(version_id)
        model = self.root / version_id / record.get("model_file", "model.onnx")
        try:
            digest = sha256_file(model)
        except OSError as exc:
            raise AgentError(f"{model} is unreadable ({exc}); activate another version") from None
        if digest != record.get("sha256"):
            raise AgentError(f"{model} does not match its recorded sha256 (corrupted on disk?); "
                             "activate another version")
        return record

    def _place(self, staging: Path, record: dict[str, Any]) -> str:
        """Write version.json into ``staging`` and rename it to the next free ``vNNNN``."""
        ids = self._ids()
        n = int(ids[-1][1:]) + 1 if ids else 1
        for _ in range(1000):
            version_id = f"v{n:04d}"
            record["id"] = version_id
            data = (json.dumps(record, indent=2) + "\n").encode("utf-8")
            with open(staging / "version.json", "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            fsync_dir(staging)
            try:
                os.rename(staging, self.root / version_id)
            except OSError as exc:  # another process took this number
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                n += 1
                continue
            fsync_dir(self.root)
            return version_id
        raise AgentError(f"no free version number in {self.root}")

    def _state(self) -> dict[str, Any]:
        if not self.state_path.exists():
            return {"active": None, "history": [], "events": []}
        state = _read_json(self.state_path, "model activation state")
        ok = (isinstance(state, dict) and isinstance(state.get("history"), list)
              and isinstance(state.get("events"), list)
              # active is the top of the history, or null (never activated, or deactivated: history kept)
              and state.get("active") in ((state["history"][-1], None) if state["history"] else (None,)))
        if not ok:
            raise AgentError(f"model activation state {self.state_path} is inconsistent: fix it or move it "
                             "away (the versions themselves are intact), then activate a version")
        return state

    def _push(self, state: dict[str, Any], version_id: str, action: str) -> None:
        state["events"].append({"at": _now(), "action": action, "id": version_id, "from": state["active"]})
        if not state["history"] or state["history"][-1] != version_id:  # re-activating after deactivate()
            state["history"].append(version_id)
        state["active"] = version_id
        self._write_state(state)

    def _write_state(self, state: dict[str, Any]) -> None:
        # The event log is an audit trail, not state: keep its newest entries so the file stays small.
        state["events"] = state["events"][-MAX_EVENTS:]
        atomic_write_json(self.state_path, state)
        self._point_link(state["active"])  # after active.json: the file is the truth, the link follows it

    def _point_link(self, version_id: str | None) -> None:
        """Make ``models/active`` point at ``version_id`` (relative), or remove it for None; atomic either way."""
        current = os.readlink(self.link_path) if self.link_path.is_symlink() else None
        if current == version_id:
            return
        if version_id is None:
            self.link_path.unlink(missing_ok=True)
        else:
            tmp = self.root / f"{ACTIVE_LINK}.tmp-{os.getpid()}"
            tmp.unlink(missing_ok=True)
            os.symlink(version_id, tmp)
            fsync_dir(self.root)
            os.replace(tmp, self.link_path)
        fsync_dir(self.root)

    def _repair_link(self) -> None:
        """Re-derive the link from ``active.json`` (a crash between writing the two leaves them apart)."""
        if not self.root.is_dir():
            return
        with self._lock:
            try:
                active = self._state()["active"]
            except AgentError:
                return  # an inconsistent active.json is reported by the calls that read it; the link is left alone
            if self.link_path.exists() and not self.link_path.is_symlink():
                return  # not ours (a folder or file someone put there): never delete it
            try:
                self._point_link(active)
            except OSError as exc:  # e.g. `agent status` run by a user who may not write the state dir
                log.warning("cannot repair %s to follow %s (%s); the agent repairs it on its next start",
                            self.link_path, self.state_path, exc)
