"""The agent's deploy worker: validate a ``deploy`` command, run one deploy at a time, always answer.

:meth:`Deployer.submit` checks the arguments (booleans must be JSON booleans, ``file://`` only with
``[deploy] file_root``, signatures required unless ``require_signed = false``) and either raises
:class:`~ftedge.device_agent.commands.Rejected` or starts the single worker thread and returns the
``accepted`` reply. The worker ends every deploy — success, refusal or an unexpected exception — by
calling ``finish(status, code, detail, extra)`` exactly once.
"""

from __future__ import annotations

import logging
import re
import threading
import urllib.parse
from pathlib import Path
from typing import Any, Callable

from ftedge.device_agent.commands import Rejected
from ftedge.device_agent.config import DeployConfig
from ftedge.errors import FtedgeError
from ftedge.device_agent.install import DeployError, _check_name, _redact, deploy_bundle, remove_stale_temp

log = logging.getLogger(__name__)

ARGS = ("url", "sha256", "name", "replace", "allow_downgrade")
_SHA_RE = re.compile(r"[0-9a-fA-F]{64}")
MAX_URL = 4096
Finish = Callable[[str, str, str, dict[str, Any]], None]


class Deployer:
    """One deploy at a time into ``bundle_root``, under the limits of ``cfg``."""

    def __init__(self, cfg: DeployConfig, bundle_root: Path) -> None:
        self.cfg, self.bundle_root = cfg, Path(bundle_root)
        self._busy = threading.Lock()
        self.current: str | None = None  # cmd_id of the running deploy

    def cleanup(self) -> list[Path]:
        """Remove leftovers of deploys a power loss interrupted; call at agent start (none is running)."""
        if not self.bundle_root.is_dir():
            return []
        removed = remove_stale_temp(self.bundle_root)
        if removed:
            log.warning("removed %d leftover(s) of an interrupted deploy from %s", len(removed), self.bundle_root)
        return removed

    def _check(self, args: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(args) - set(ARGS))
        if unknown:
            raise Rejected("bad_args", f"unknown deploy argument(s) {', '.join(map(str, unknown))}; "
                                       f"allowed: {', '.join(ARGS)}")
        url, sha = args.get("url"), args.get("sha256")
        if not isinstance(url, str) or not url or len(url) > MAX_URL:
            raise Rejected("bad_args", f"args.url must be an http(s):// URL string of at most {MAX_URL} characters")
        if not isinstance(sha, str) or not _SHA_RE.fullmatch(sha):
            raise Rejected("bad_args", "args.sha256 must be 64 hex characters: the sha256 `ftedge pack` printed")
        for key in ("replace", "allow_downgrade"):
            if key in args and not isinstance(args[key], bool):
                raise Rejected("bad_args", f"args.{key} must be a JSON boolean (true or false), got {args[key]!r}")
        name = args.get("name")
        if name is not None:
            try:
                _check_name(name, "args.name", DeployError)
            except DeployError as exc:
                raise Rejected("bad_args", str(exc)) from None
        try:
            scheme = urllib.parse.urlsplit(url).scheme.lower()
        except ValueError:
            scheme = ""
        if scheme == "file" and self.cfg.file_root is None:
            raise Rejected("file_url_refused", "file:// deploys are off on this device: serve the archive over "
                                               "https, or set [deploy] file_root = \"/srv/bundles\" in the agent "
                                               "config to allow archives from below that folder")
        if scheme not in ("http", "https", "file"):
            raise Rejected("bad_args", f"cannot deploy from {_redact(url)}: use an http:// or https:// URL")
        if self.cfg.require_signed and not self.cfg.trusted_keys:
            raise Rejected("no_trusted_keys", "this device requires signed bundles but has no trusted keys, so "
                                              "every deploy is refused: add [deploy] trusted_keys = "
                                              "[\"/etc/ftedge/keys/fleet.pub.pem\"] (or opt out with "
                                              "require_signed = false)")
        return {"url": url, "sha256": sha, "name": name, "replace": args.get("replace", False),
                "allow_downgrade": args.get("allow_downgrade", False)}

    def submit(self, cmd_id: str, args: dict[str, Any], finish: Finish) -> tuple[str, str, str, dict[str, Any]]:
        """Validate and start a deploy; return the ``accepted`` reply. Raises Rejected (``busy`` when one runs)."""
        request = self._check(args)
        if not self._busy.acquire(blocking=False):
            raise Rejected("busy", f"deploy {self.current} is still running; send this deploy again when it has "
                                   "answered done or error")
        self.current = cmd_id
        try:
            threading.Thread(target=self._work, args=(cmd_id, request, finish), name="ftedge-deploy",
                             daemon=True).start()
        except BaseException:
            self.current = None
            self._busy.release()
            raise
        return "accepted", "downloading", f"fetching {_redact(request['url'])}", {}

    def _work(self, cmd_id: str, r: dict[str, Any], finish: Finish) -> None:
        shown = _redact(r["url"])
        report: dict[str, Any] = {}
        try:
            path = deploy_bundle(r["url"], r["sha256"], self.bundle_root, name=r["name"],
                                 trusted_keys=list(self.cfg.trusted_keys) if self.cfg.require_signed else None,
                                 max_bytes=self.cfg.max_bytes, replace=r["replace"],
                                 deadline_s=self.cfg.deadline_s, allow_file=self.cfg.file_root is not None,
                                 file_root=self.cfg.file_root, allow_downgrade=r["allow_downgrade"],
                                 keep_replaced=self.cfg.keep_replaced, report=report)
        except FtedgeError as exc:
            log.warning("deploy %s from %s failed: %s", cmd_id, shown, exc)
            result = ("error", "deploy_failed", str(exc), {"reason": getattr(exc, "reason", "deploy")})
        except Exception as exc:  # noqa: BLE001 - every deploy must end in a reply
            log.exception("deploy %s from %s failed unexpectedly", cmd_id, shown)
            result = ("error", "internal", f"deploy failed unexpectedly ({type(exc).__name__}: {exc}); "
                                           "see the agent log, and report it if it repeats", {"reason": "internal"})
        else:
            log.info("deploy %s from %s installed %s", cmd_id, shown, path)
            # `replaced` is what a rollback's args.restore names to bring the old bundle back.
            replaced = report.get("replaced")
            result = ("done", "deployed", f"bundle at {path.name}"
                      + (f"; the one it replaced is kept as {replaced}" if replaced else ""),
                      {"bundle": path.name, "replaced": replaced, "manifest_sha256": report.get("manifest_sha256")})
        finally:
            self.current = None
            self._busy.release()
        try:
            finish(*result)
        except Exception:  # noqa: BLE001
            log.exception("could not send the final reply of deploy %s", cmd_id)
