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


def roll_out(host: Any, bundle_dir: Path, archive: Path, devices: list[tuple[str, str]],
             canary: str, train: dict[str, Any], say: Callable[[str], None], timeout: float = 300) -> dict[str, Any]:
    """Pack ``bundle_dir``, start the rollout on ``host`` (the collector's :class:`~ftedge.fleet.rollout.host.RolloutHost`)
    and follow it to the end; returns ``status --json``'s document."""
    from ftedge.bundle.pack import pack_bundle
    from ftedge.fleet.rollout import plan
    from ftedge.fleet.rollout.cli import describe, launch, render
    from ftedge.fleet.rollout.records import RolloutRecords

    sha = pack_bundle(bundle_dir, archive)
    spec = launch(host.store, archive, devices, host.bundles.root, say=lambda m: say(f"    {m}"), name=f"kws2-{sha[:8]}",
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
