"""What a collector process adds for rollouts: the bundle folder it serves, the key that signs download URLs,
and the driver thread (``ftedge fleet serve`` and the demo use it alike)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .driver import TICK_S, RolloutDriver


class RolloutHost:
    """``bundle_dir`` None: this collector serves no bundles (rollouts with an external ``--url`` still run);
    ``key_file`` None: ``bundle_dir/.url-key``."""

    def __init__(self, store: Any, collector: Any, bundle_dir: Path | None, key_file: Path | None = None,
                 holder: str | None = None, tick_s: float = TICK_S) -> None:
        from ftedge.fleet.bundle_store import BundleStore
        from ftedge.fleet.url_signing import load_or_create_key

        self.store, self.collector, self.tick_s = store, collector, tick_s
        self.holder = holder or collector.settings.client_id
        self.bundles = BundleStore(bundle_dir) if bundle_dir is not None else None
        key_path = key_file or (Path(bundle_dir) / ".url-key" if bundle_dir is not None else None)
        self.key = load_or_create_key(key_path) if key_path is not None else None
        self.driver: RolloutDriver | None = None

    def start(self, public_url: str) -> RolloutHost:
        """Start driving rollouts; devices fetch bundles from ``public_url`` (this collector's HTTP address)."""
        from ftedge.fleet.url_signing import bundle_url

        public, key, c = public_url.rstrip("/"), self.key, self.collector
        url_for = None
        if key is not None and self.bundles is not None:
            def url_for(sha: str, fleet: str, device: str, rollout: str, expires: int) -> str:
                return bundle_url(public, key, sha, f"{fleet}/{device}", rollout, expires)

        def send(fleet: str, device: str, verb: str, args: dict, cmd_id: str, expires_ms: int) -> str:
            return c.publish_command(fleet, device, verb, args, cmd_id=cmd_id, expires_ms=expires_ms,
                                     expiry_s=max(1, int(expires_ms / 1000 - time.time())))

        self.driver = RolloutDriver(self.store, send, holder=self.holder, url_for=url_for, tick_s=self.tick_s).start()
        return self

    def stop(self) -> None:
        if self.driver is not None:
            self.driver.stop()
