"""The demo's second act: a new signed bundle goes to the fleet as a staged rollout with a training campaign.

The collector publishes the archive (served at ``/bundles/<sha256>.tar.gz`` with a URL signed for each box),
deploys it to a canary box first, which trains it on its own clips; only if the canary's personalized model
beats its untuned one (and no box fails) do the other boxes get it, in the next wave. Each wave's verdict is
printed as the collector judges it (docs/rollouts.md).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from ftedge.errors import FtedgeError


class RolloutDriverHost:
    """What the collector process adds for rollouts: the bundle folder, the URL key and the driver thread."""

    def __init__(self, workdir: Path, store: Any, collector: Any) -> None:
        from ftedge.fleet.bundle_store import BundleStore
        from ftedge.fleet.url_signing import load_or_create_key

        self.dir = workdir / "fleet-bundles"
        self.bundles = BundleStore(self.dir)
        self.key = load_or_create_key(self.dir / ".url-key")
        self.store, self.collector = store, collector
        self.driver = None

    def start(self, public_url: str) -> None:
        import time as _t

        from ftedge.fleet.rollout.driver import RolloutDriver
        from ftedge.fleet.url_signing import bundle_url

        def url_for(sha: str, fleet: str, device: str, rollout: str, expires: int) -> str:
            return bundle_url(public_url, self.key, sha, f"{fleet}/{device}", rollout, expires)

        c = self.collector
        self.driver = RolloutDriver(self.store, lambda f, d, v, a, cmd, e: c.publish_command(
            f, d, v, a, cmd_id=cmd, expiry_s=max(1, int(e / 1000 - _t.time())), expires_ms=e),
            holder="ftedge-demo-collector", url_for=url_for, tick_s=0.25).start()

    def stop(self) -> None:
        if self.driver is not None:
            self.driver.stop()


def roll_out(host: RolloutDriverHost, bundle_dir: Path, archive: Path, devices: list[tuple[str, str]],
             canary: str, train: dict[str, Any], say: Callable[[str], None], timeout: float = 300) -> dict[str, Any]:
    """Pack ``bundle_dir``, start the rollout and follow it to the end; returns ``status --json``'s document."""
    from ftedge.bundle.pack import pack_bundle
    from ftedge.fleet.rollout import plan
    from ftedge.fleet.rollout.cli import describe, launch, render
    from ftedge.fleet.rollout.records import RolloutRecords

    sha = pack_bundle(bundle_dir, archive)
    spec = launch(host.store, archive, devices, host.dir, say=lambda m: say(f"    {m}"), name=f"kws2-{sha[:8]}",
                  canary_devices=[canary], waves=[1.0], train=train, max_regressions=0.34, wave_timeout_s=timeout)
    records = RolloutRecords(host.store)
    deadline, shown = time.monotonic() + timeout, 0
    while True:
        r = records.get(spec.name)
        for v in r.verdicts[shown:]:
            say(f"    verdict — {v['line']}")
        shown = len(r.verdicts)
        if r.finished:
            break
        if time.monotonic() > deadline:
            raise FtedgeError(f"rollout {spec.name} is still {r.state} after {timeout:g} s: see "
                              f"`ftedge fleet rollout status {spec.name}` and the boxes' agent.log")
        time.sleep(0.25)
    doc = describe(records, spec.name)
    for line in render(doc).splitlines():
        say(f"    {line}")
    if r.state != plan.DONE:
        say(f"    the rollout did not finish: {r.reason}")
    return doc
