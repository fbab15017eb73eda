"""The box's own app: whatever model version the agent made active, served without a restart (docs/app.md).

``ActiveModel(state_dir)`` opens the version ``STATE/models/active.json`` names (the folder ``STATE/models/active``
links to) with onnxruntime, or the bundle's shipped model when no version is active and ``bundle=`` is given.
Every call checks, at most every :data:`CHECK_INTERVAL_S`, whether ``active.json`` changed (one ``os.stat``);
when the active id changed, the new model is opened *before* the old is dropped and swapped in under a lock, so a
thread calling :meth:`ActiveModel.predict` in a loop never sees an error or a half-opened model: each call runs
whole on the old or the new one. Versions are immutable folders, so the old model stays complete while calls on
it finish. A new version that cannot be opened (corrupt, missing files) leaves the old one serving and is reported
in :attr:`ActiveModel.last_error` (and logged); so is a deactivation without ``bundle=`` to fall back to.

Torch-free, like the rest of the device runtime; ``ftedge.runtime`` exports it lazily (importing the package
never imports numpy or onnxruntime).
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ftedge.bundle.hashing import sha256_file
from ftedge.bundle.tasks import Task, bundle_task

from ftedge.errors import DataError, FtedgeError

log = logging.getLogger(__name__)

CHECK_INTERVAL_S = 0.2      # how often a call may stat active.json: a promotion serves within ~this + open time
_ID_RE = re.compile(r"v\d{4,}")
# Which method answers with a model, by its task's device package (ftedge.runtime.tasks): classify serves
# classification and regression (predict), lm causal LMs (generate), detect detectors (detect).
METHODS = {"classify": "predict", "lm": "generate", "detect": "detect"}


def method_of(task: Task) -> str | None:
    """The ActiveModel method answering with a model of ``task`` (None: it cannot serve that task yet)."""
    return METHODS.get(task.package)


class _Opened:
    """One opened model (a version or the bundle's own) and what it can answer."""

    def __init__(self, version: str | None, source: Path, task: Task) -> None:
        self.version, self.source = version, source
        self.task, self.method = task.name, method_of(task)
        self.lock = threading.Lock()   # one call at a time on one model (training-engine sessions are not reentrant)
        self.predict_fn: Callable[[dict[str, np.ndarray]], np.ndarray] | None = None
        self.io: Any = None
        self.lm: Any = None
        self.detector: Any = None

    def describe(self) -> str:
        return self.version or f"the bundle's own model ({self.source})"


def _open_target(version: str | None, source: Path, providers: list[str] | None, trusted_keys: Any) -> _Opened:
    """Open a model version folder (``version`` set) or a bundle folder; FtedgeError saying why not."""
    if version is not None:
        record = _version_record(source)
        model = source / record.get("model_file", "model.onnx")
        try:
            digest = sha256_file(model)
        except OSError as exc:
            raise FtedgeError(f"model version {version}: {model.name} is unreadable ({exc}); roll back or "
                              "activate another version") from None
        if digest != record.get("sha256"):
            raise FtedgeError(f"model version {version}: {model.name} does not match its recorded sha256 "
                              "(corrupted on disk?); roll back or activate another version")
    elif not (source / "manifest.json").is_file():
        raise FtedgeError(f"bundle {source} has no manifest.json: pass the bundle folder `ftedge export` wrote")
    # The task from the folder's own description (no hashing); each opener verifies what it opens, once.
    opened = _Opened(version, source, bundle_task(source))
    opener = _OPENERS.get(opened.method or "")
    if opener is None:
        raise FtedgeError(f"{opened.describe()} is a {opened.task!r} model, which ActiveModel cannot serve yet")
    opener(opened, source, providers, trusted_keys)
    return opened


def _version_record(folder: Path) -> dict[str, Any]:
    try:
        record = json.loads((folder / "version.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FtedgeError(f"model version {folder.name}: version.json is unreadable ({exc}); roll back or "
                          "activate another version") from None
    if not isinstance(record, dict):
        raise FtedgeError(f"model version {folder.name}: version.json is not a JSON object")
    return record


def _open_classifier(opened: _Opened, source: Path, providers: list[str] | None, trusted_keys: Any) -> None:
    from ftedge.runtime.data.samples import ModelIO

    if opened.version is not None:  # a version: model.onnx + model.json (the bundle's inputs, output, labels, preprocessing)
        from ftedge.runtime.engines.ort_backend import InferenceModel

        try:
            spec = json.loads((source / "model.json").read_text(encoding="utf-8"))
            out_name = spec["output"]["name"]
            opened.io = ModelIO.from_manifest(spec, source)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise FtedgeError(f"model version {opened.version}: model.json is unusable ({exc!r}); roll back or "
                              "activate another version") from None
        model = InferenceModel(source / "model.onnx", providers)

        def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
            return model.run(feeds, [out_name])[out_name]
        opened.predict_fn = run
    else:  # the bundle's own (untuned) model
        from ftedge.bundle.loader import load_bundle
        from ftedge.runtime.engines.session import BundleSession

        bundle = load_bundle(source, trusted_keys=trusted_keys)
        session = BundleSession(bundle, providers)
        opened.io = ModelIO.from_manifest(bundle.manifest, bundle.path)
        opened.predict_fn = session.predict
        session.model  # noqa: B018 - open the engine now, not on the first call after the swap


def _open_lm(opened: _Opened, source: Path, providers: list[str] | None, trusted_keys: Any) -> None:
    from ftedge.runtime.tasks.lm.model import open_lm

    opened.lm = open_lm(source, providers, trusted_keys=trusted_keys)  # a version: its adapter on its pinned base


def _open_detector(opened: _Opened, source: Path, providers: list[str] | None, trusted_keys: Any) -> None:
    from ftedge.runtime.tasks.detect.detector import Detector

    if opened.version is None and trusted_keys:  # the Detector verifies the files, not the signature
        from ftedge.bundle.loader import load_bundle

        load_bundle(source, trusted_keys=trusted_keys)

    opened.detector = Detector(source, list(providers) if providers else None)


_OPENERS: dict[str, Callable[..., None]] = {"predict": _open_classifier, "generate": _open_lm,
                                            "detect": _open_detector}


def _scores(logits: np.ndarray, loss: str) -> np.ndarray:
    """Class probabilities: softmax for single-label, per-label sigmoid for multi-label (bce) models."""
    z = np.asarray(logits, dtype=np.float64)
    if loss == "bce":
        return 1.0 / (1.0 + np.exp(-z))
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


class ActiveModel:
    """The active model version of a device (``state_dir``), reloaded when the agent changes it.

    ``bundle``: a bundle folder answering while no version is active (else that is an error at construction).
    ``providers``: onnxruntime execution providers (default CPU). ``trusted_keys``: verify the bundle's signature.
    """

    def __init__(self, state_dir: str | Path, bundle: str | Path | None = None,
                 providers: Sequence[str] | None = None, trusted_keys: Any = None) -> None:
        self.state_dir = Path(state_dir)
        self.models_dir = self.state_dir / "models"
        self.state_path = self.models_dir / "active.json"
        self.bundle = None if bundle is None else Path(bundle)
        self.providers = list(providers) if providers else None
        self.trusted_keys = trusted_keys
        self.last_error: str | None = None
        self._swap = threading.Lock()      # guards _current
        self._check = threading.Lock()     # one thread checks/opens at a time; the others keep serving
        self._next_check = 0.0
        self._seen = self._signature()
        self._current = self._open(self._active_id())

    # -- public ------------------------------------------------------------------------------------------
    @property
    def version(self) -> str | None:
        """The id of the version answering (``vNNNN``), or None while the bundle's own model answers."""
        self._maybe_reload()
        return self._current.version

    @property
    def task(self) -> str:
        """The task of the model answering: classification, regression, causal-lm or detection."""
        return self._current.task

    def reload(self) -> str | None:
        """Check ``active.json`` now and switch if the active version changed; returns the version answering.
        Raises the reason when the new one cannot be opened (the old one keeps answering)."""
        with self._check:
            self._seen = self._signature()
            self._next_check = time.monotonic() + CHECK_INTERVAL_S
            if not self._refresh():
                raise FtedgeError(str(self.last_error))
        return self._current.version

    def predict(self, samples: Sequence[str | Path | dict[str, Any]]) -> list[dict[str, Any]]:
        """Per sample ``{"label", "score", "scores"}`` (classification) or ``{"value"}`` (regression).

        A sample is a file path (decoded with the model's own preprocessing: .wav, .png/.jpg, .txt, .npy …) or a
        dict of already-decoded arrays of ONE sample, ``{input name: array}``. DataError names a bad sample.
        """
        from ftedge.runtime.data.intake import conform_arrays, decode_sample

        m = self._serving("predict")
        if isinstance(samples, (str, Path, dict)):
            raise DataError("predict takes a list of samples (file paths or dicts of arrays); wrap one in [ ]")
        if not samples:
            return []
        decoded = []
        for s in samples:
            try:
                decoded.append(conform_arrays(s, m.io) if isinstance(s, dict) else decode_sample(s, m.io))
            except DataError as exc:
                raise DataError(f"{s if not isinstance(s, dict) else 'sample'}: {exc}") from None
        feeds = {spec.name: np.stack([d[spec.name] for d in decoded]) for spec in m.io.inputs}
        with m.lock:
            out = np.asarray(m.predict_fn(feeds))  # type: ignore[misc]
        if not (m.io.classification or m.io.loss == "bce"):  # a regression loss (mse, l1): values
            return [{"value": float(r[0]) if r.size == 1 else r.tolist()} for r in out.reshape(len(decoded), -1)]
        probs = _scores(out.reshape(len(decoded), -1), m.io.loss)
        labels = m.io.labels or [str(i) for i in range(probs.shape[1])]
        results = []
        for p in probs:
            best = int(np.argmax(p))
            results.append({"label": labels[best], "score": float(p[best]),
                            "scores": {name: float(v) for name, v in zip(labels, p)}})
        return results

    def generate(self, prompt: str, **sampling: Any) -> dict[str, Any]:
        """A causal-LM version's answer: ``{"text", "tokens", "stopped", "prompt_tokens", "seconds", "version"}``.
        ``sampling``: ``system``, ``max_new_tokens``, ``temperature``, ``top_p``, ``top_k``, ``seed`` …"""
        m = self._serving("generate")
        with m.lock:
            gen = m.lm.answer(prompt, **sampling)
        return {"text": gen.text, "tokens": len(gen.ids), "stopped": gen.stopped,
                "prompt_tokens": gen.prompt_tokens, "seconds": round(gen.seconds, 3), "version": m.version}

    def detect(self, images: Sequence[str | Path], threshold: float = 0.0) -> list[dict[str, Any]]:
        """A detection version's boxes per image: ``{"file", "detections": [{"label", "score", "box"}]}``."""
        m = self._serving("detect")
        if isinstance(images, (str, Path)):
            raise DataError("detect takes a list of image paths; wrap one in [ ]")
        with m.lock:
            dets, skipped = m.detector.detect([Path(p) for p in images], threshold)
        if skipped:
            raise DataError("; ".join(f"{s['file']}: {s['reason']}" for s in skipped))
        return [d.to_json(m.detector.names) for d in dets]

    # -- internals -----------------------------------------------------------------------------------------
    def _serving(self, method: str) -> _Opened:
        self._maybe_reload()
        with self._swap:
            m = self._current
        if m.method != method:
            raise FtedgeError(f"{method}() does not fit {m.describe()}: it is a {m.task} model; use {m.method}()")
        return m

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.state_path)
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def _maybe_reload(self) -> None:
        if time.monotonic() < self._next_check or not self._check.acquire(blocking=False):
            return  # checked recently, or another thread is checking/opening: keep serving the current model
        try:
            self._next_check = time.monotonic() + CHECK_INTERVAL_S
            sig = self._signature()
            if sig != self._seen:
                self._seen = sig
                self._refresh()
        finally:
            self._check.release()

    def _refresh(self) -> bool:
        """Open the active target if it differs from the one answering; False (and ``last_error``) on failure."""
        try:
            wanted = self._active_id()
            if wanted == self._current.version:
                return True
            new = self._open(wanted)
        except Exception as exc:  # noqa: BLE001 - whatever broke, the model answering keeps answering
            self.last_error = f"{exc}; still serving {self._current.describe()}"
            log.warning("active model not switched: %s", self.last_error)
            return False
        with self._swap:
            old, self._current = self._current, new
        self.last_error = None
        log.info("active model: now %s (was %s)", new.describe(), old.describe())
        return True

    def _active_id(self) -> str | None:
        if not self.state_path.exists():
            return None
        try:
            state = json.loads(self.state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise FtedgeError(f"{self.state_path} is unreadable ({exc})") from None
        active = state.get("active") if isinstance(state, dict) else None
        if active is not None and not (isinstance(active, str) and _ID_RE.fullmatch(active)):
            raise FtedgeError(f"{self.state_path} names no valid version ({active!r})")
        return active

    def _open(self, version: str | None) -> _Opened:
        if version is not None:
            return _open_target(version, self.models_dir / version, self.providers, self.trusted_keys)
        if self.bundle is None:
            raise FtedgeError(f"no model version is active in {self.models_dir} and no bundle to fall back to: "
                              "pass ActiveModel(..., bundle=BUNDLE_DIR), or promote/activate a version")
        return _open_target(None, self.bundle, self.providers, self.trusted_keys)
