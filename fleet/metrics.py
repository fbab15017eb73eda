"""The collector's Prometheus exposition (``GET /metrics``): the fleet's series from the database, and this
collector process's own series (label ``instance``)."""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable, Iterator

from .headline import of_progress
from .validate import number

log = logging.getLogger(__name__)

ROLLOUT_WINDOW_S = 86400   # finished rollouts stay in /metrics this long after their last change

COLLECTOR_STATS = (("received", "messages received from the broker"),
                   ("processed", "messages written (their batch committed or refused)"),
                   ("batches", "write transactions of received messages"),
                   ("errors", "batches or gap checks that failed"),
                   ("resyncs", "resync commands sent after counted holes"),
                   ("connections", "connections to the broker (reconnects included)"),
                   ("unacked", "messages whose acknowledgement to the broker failed"))


def process_stats() -> dict[str, float]:
    """This process's resident memory (``VmRSS`` of /proc/self/status, bytes; absent where there is no /proc)
    and CPU time (user + system, seconds)."""
    t = os.times()
    out = {"cpu_seconds": t.user + t.system}
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    out["resident_memory_bytes"] = float(line.split()[1]) * 1024   # "VmRSS:  1234 kB"
                    break
    except (OSError, ValueError, IndexError):
        pass
    return out


def prometheus_text(store: Any, instance: str | None = None,
                    stats: Callable[[], dict[str, Any]] | None = None,
                    bundles: dict[str, Any] | None = None) -> bytes:
    """Exposition of fleet state; one series per device at most (bounded cardinality, no job labels).

    Per device: ``ftedge_device_up``, ``ftedge_device_last_seen_timestamp_seconds``, the counters
    ``ftedge_device_messages_total``, ``ftedge_device_seq_gaps_total``, ``ftedge_device_seq_late_fills_total``
    (which box loses telemetry) and, from its latest epoch,
    ``ftedge_job_loss``, ``ftedge_job_val_accuracy``, ``ftedge_job_val_map50`` (detectors) and
    ``ftedge_job_val_headline`` (label ``metric``: the job's headline metric, :mod:`~ftedge.fleet.headline`).
    Rollouts (:func:`rollout_families`): ``ftedge_rollout_devices``, ``ftedge_rollout_wave``,
    ``ftedge_rollout_state`` and ``ftedge_rollout_leader``. Personalization (:func:`personalization_families`):
    ``ftedge_personalization_runs_total``, ``ftedge_personalization_promotions_total`` and
    ``ftedge_policy_devices``.

    The device gauges and ``ftedge_messages*`` counters are the fleet's (from the database, the same on every
    collector sharing it). With ``instance`` (the collector's name), this process's own figures follow,
    labelled ``instance``: ``ftedge_collector_{received,processed,batches,errors,resyncs,connections,
    unacked}_total`` from ``stats()`` (the Collector's ``stats``), ``ftedge_collector_resident_memory_bytes``
    and ``ftedge_collector_cpu_seconds_total``.

    ``bundles`` (the HTTP server's :meth:`~ftedge.fleet.http.FleetHTTPServer.bundle_stats`: ``requests``, HTTP
    code -> count, and ``bytes``) adds this process's ``ftedge_bundle_requests_total{code}`` and
    ``ftedge_bundle_bytes_total`` (labelled ``instance`` too when given)."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    class _Fleet:
        def collect(self):  # noqa: ANN202 - prometheus_client protocol
            up = GaugeMetricFamily("ftedge_device_up", "1 if the device's last status is online", labels=["fleet", "device"])
            seen = GaugeMetricFamily("ftedge_device_last_seen_timestamp_seconds", "last message from the device",
                                     labels=["fleet", "device"])
            loss = GaugeMetricFamily("ftedge_job_loss", "training loss of the device's latest epoch", labels=["fleet", "device"])
            acc = GaugeMetricFamily("ftedge_job_val_accuracy", "validation accuracy of the device's latest epoch",
                                    labels=["fleet", "device"])
            map50 = GaugeMetricFamily("ftedge_job_val_map50", "validation mAP@0.5 of the device's latest epoch "
                                      "(detectors)", labels=["fleet", "device"])
            headline = GaugeMetricFamily("ftedge_job_val_headline", "validation value of the headline metric (label "
                                         "metric) the device's latest epoch reports", labels=["fleet", "device", "metric"])
            dev_msgs = CounterMetricFamily("ftedge_device_messages", "unique messages of the device",
                                           labels=["fleet", "device"])
            dev_gaps = CounterMetricFamily("ftedge_device_seq_gaps", "seq holes counted for the device (missing "
                                           "after the reorder window; see ftedge_device_seq_late_fills)",
                                           labels=["fleet", "device"])
            dev_late = CounterMetricFamily("ftedge_device_seq_late_fills", "messages of the device that arrived "
                                           "after their hole was counted", labels=["fleet", "device"])
            for fleet, device, state, last_seen, metrics, *counts in store.device_gauges():   # no meta/job bodies
                lab = [str(fleet), str(device)]
                for fam, value in zip((dev_msgs, dev_gaps, dev_late), counts):
                    fam.add_metric(lab, float(value or 0))
                up.add_metric(lab, 1.0 if state == "online" else 0.0)
                if isinstance(last_seen, int) and not isinstance(last_seen, bool):
                    seen.add_metric(lab, last_seen / 1000.0)
                m = metrics if isinstance(metrics, dict) else {}
                inner = m.get("metrics") if isinstance(m.get("metrics"), dict) else {}
                for fam, value in ((loss, m.get("loss")), (acc, inner.get("val_accuracy")), (map50, inner.get("val_map50"))):
                    if number(value) is not None:   # a row stored before validation may hold anything
                        fam.add_metric(lab, number(value))
                if metrics is not None:
                    h = of_progress(m)
                    if h.value is not None:
                        headline.add_metric([*lab, h.metric], h.value)
            c = store.counters()
            yield from (up, seen, loss, acc, map50, headline, dev_msgs, dev_gaps, dev_late)
            yield from rollout_families(store)
            yield from personalization_families(store)
            for name, key, doc in (("ftedge_messages", "messages_total", "device messages ingested"),
                                   ("ftedge_messages_duplicate", "duplicates_total", "duplicates dropped (dev, boot, seq)"),
                                   ("ftedge_messages_malformed", "malformed_total",
                                    "device messages refused: bad envelope, body field types or size"),
                                   ("ftedge_messages_rejected", "rejected_total",
                                    "messages of devices beyond the devices-per-fleet cap"),
                                   ("ftedge_seq_gaps", "seq_gaps_total", ("holes counted in devices' seqs (missing "
                                    "after the reorder window, and no collector of the group could still deliver "
                                    "them)")),
                                   ("ftedge_seq_late_fills", "late_fills_total", ("messages that arrived after their "
                                    "hole was counted (a hole filled later was delay, not loss)"))):
                fam = CounterMetricFamily(name, doc)
                fam.add_metric([], float(c.get(key, 0)))
                yield fam
            if instance is not None:
                yield from _collector_families(str(instance), stats)
            if bundles is not None:
                yield from _bundle_families(instance, bundles)

    registry = CollectorRegistry()
    registry.register(_Fleet())
    return generate_latest(registry)


def personalization_families(store: Any) -> list[Any]:
    """Personalization (issue 36): ``ftedge_personalization_runs_total{trigger}`` and
    ``ftedge_personalization_promotions_total{trigger}`` (fleet-wide, every trigger of the contract, 0 included:
    :mod:`~ftedge.fleet.personalization`) and ``ftedge_policy_devices{state}`` (devices per policy state of
    their latest meta, every state, 0 included; devices without a policy are not counted). Two queries whatever
    the fleet's size."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    totals = store.personalization_totals()
    runs = CounterMetricFamily("ftedge_personalization_runs", "training jobs that reported a result, by what "
                               "started them (command: fleet train, a rollout, ftedge send; policy: the box's own "
                               "personalization policy)", labels=["trigger"])
    promotions = CounterMetricFamily("ftedge_personalization_promotions", "training jobs whose model was promoted "
                                     "(it beat the untuned model and, warm-started, the active one), by trigger",
                                     labels=["trigger"])
    for fam, key in ((runs, "runs"), (promotions, "promotions")):
        for trigger, n in totals[key].items():
            fam.add_metric([trigger], float(n))
    devices = GaugeMetricFamily("ftedge_policy_devices", "devices whose latest meta reports their personalization "
                                "policy in this state", labels=["state"])
    for st, n in store.policy_states().items():
        devices.add_metric([st], float(n))
    return [runs, promotions, devices]


def rollout_families(store: Any, now_ms: int | None = None) -> list[Any]:
    """The rollouts' series, from three queries whatever their number (the rollouts shown, their device counts,
    the lease). Shown: rollouts not finished, and those finished (last changed) in the last
    ``ROLLOUT_WINDOW_S``; every state of a rollout and of its devices has a series (0 when none), so a series
    does not vanish when its count drops to 0. A rollout table that cannot be read costs these series only
    (logged), never the fleet's."""
    from prometheus_client.core import GaugeMetricFamily

    from .rollout.plan import DEVICE_STATES, ROLLOUT_STATES
    from .rollout.records import RolloutRecords

    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    window = f"rollouts not finished, and those finished in the last {ROLLOUT_WINDOW_S // 3600} h"
    devices = GaugeMetricFamily("ftedge_rollout_devices", f"devices of the rollout in each state ({window})",
                                labels=["rollout", "state"])
    wave = GaugeMetricFamily("ftedge_rollout_wave", f"the wave the rollout drives, 0 = the canary ({window})",
                             labels=["rollout"])
    state = GaugeMetricFamily("ftedge_rollout_state", f"1 for the rollout's current state, 0 for the others "
                              f"({window})", labels=["rollout", "state"])
    leader = GaugeMetricFamily("ftedge_rollout_leader", "1 for the collector holding the lease on driving "
                               "rollouts (0: its lease ran out and no collector renewed it)", labels=["holder"])
    try:
        records = RolloutRecords(store)
        shown = records.current(now_ms - ROLLOUT_WINDOW_S * 1000)
        counts = records.counts_of([r.name for r in shown])
        lease = records.leader()
    except Exception:  # noqa: BLE001 - the fleet's series must not depend on the rollout tables
        log.exception("/metrics: could not read the rollouts; their series are left out")
        return [devices, wave, state, leader]
    per: dict[tuple[str, str], int] = {}
    for (name, _, st), n in counts.items():
        per[(name, st)] = per.get((name, st), 0) + n
    for r in shown:
        for st in DEVICE_STATES:
            devices.add_metric([r.name, st], float(per.get((r.name, st), 0)))
        wave.add_metric([r.name], float(r.wave))
        for st in ROLLOUT_STATES:
            state.add_metric([r.name, st], 1.0 if r.state == st else 0.0)
    if lease is not None:
        leader.add_metric([str(lease[0])], 1.0 if lease[1] > now_ms else 0.0)
    return [devices, wave, state, leader]


def _collector_families(instance: str, stats: Callable[[], dict[str, Any]] | None) -> Iterator[Any]:
    """The per-process series of one collector (label ``instance``)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    got = dict(stats() or {}) if stats is not None else {}
    for key, doc in COLLECTOR_STATS:
        if number(got.get(key)) is not None:
            fam = CounterMetricFamily(f"ftedge_collector_{key}", f"{doc} (this collector process)",
                                      labels=["instance"])
            fam.add_metric([instance], number(got[key]))
            yield fam
    proc = process_stats()
    if "resident_memory_bytes" in proc:
        fam = GaugeMetricFamily("ftedge_collector_resident_memory_bytes", "resident memory (VmRSS) of the collector "
                                "process", labels=["instance"])
        fam.add_metric([instance], proc["resident_memory_bytes"])
        yield fam
    fam = CounterMetricFamily("ftedge_collector_cpu_seconds", "CPU time (user + system) of the collector process",
                              labels=["instance"])
    fam.add_metric([instance], proc["cpu_seconds"])
    yield fam


def _bundle_families(instance: str | None, got: dict[str, Any]) -> Iterator[Any]:
    """This process's bundle downloads: requests by HTTP code, and body bytes sent."""
    from prometheus_client.core import CounterMetricFamily

    inst = [] if instance is None else [str(instance)]
    labels = [] if instance is None else ["instance"]
    fam = CounterMetricFamily("ftedge_bundle_requests", "bundle download requests (GET and HEAD of "
                              "/bundles/...) by HTTP code (403: URL not signed, expired or for another bundle)",
                              labels=[*labels, "code"])
    for code, count in sorted((got.get("requests") or {}).items()):
        fam.add_metric([*inst, str(code)], float(count))
    yield fam
    fam = CounterMetricFamily("ftedge_bundle_bytes", "bytes of bundle archives sent", labels=labels)
    fam.add_metric(inst, float(got.get("bytes") or 0))
    yield fam
