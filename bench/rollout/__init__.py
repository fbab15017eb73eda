"""Staged rollouts (issue 34): time per wave, the collector's CPU per device, database rows per device, and what a
10⁵-box rollout would cost.

Reproduce (repo root, host venv; ~3 min with the defaults on an otherwise idle 2-core box):

    .venv/bin/python -m bench.rollout                          # every phase: 1,000 simulated boxes, 10 real agents
    .venv/bin/python -m bench.rollout --json --json-out /tmp/rollout.json
    .venv/bin/python -m bench.rollout --quick                  # a smoke run (~30 s): 200 boxes, no agents
    .venv/bin/python -m bench.rollout --devices 10000 --phases sim --fast-tick 0   # a bigger simulated fleet

What runs where (one host):
- **Mosquitto**, one per part (bench/fleet_ingest's configuration: no queue limit, no per-PUBLISH logging).
- **The collector side** in its own process (``--host``, bench/rollout/host.py): the real ``Collector`` on a fresh
  SQLite file and a ``RolloutDriver`` wired as ``ftedge fleet serve`` wires them (commands expire with the wave);
  its CPU is utime+stime of /proc/PID/stat over the rollout (ingest of every answer, publishing of every command,
  the driver's ticks). Each ``tick()`` is wrapped: wall and thread-CPU time per tick, p50/p95 over the rollout.
- **The simulated fleet** (SYNTHETIC): tests/helpers/rollout_sim.py's ``FleetSim`` in the bench's process, N boxes
  on one MQTT connection answering deploy/train/rollback like an agent (accepted then done/error; a job result
  with accuracy before → after). Each box, seeded: its deploy fails (``--fail-rate``), it never answers and is
  offline (``--offline-rate``), its training regresses (``--regress-rate``).

Parts:
- **sim**: a rollout to every box: canary 1%, waves 10%,50%,100%, ``--train``, ``--max-failures 5%``,
  ``--min-devices 20``, ``--max-regressions 20%``, ``--wave-timeout`` (default 5 s: the offline boxes close each
  wave at that timeout, so the wave time is bounded by it; the time to the wave's last *answer* —
  ``replies.ts``/``results.ts`` of its commands — is reported beside it). Once with the driver's default tick
  (1 s), once with ``--fast-tick`` (0.1 s). Per wave: devices, start → verdict (the verdict's ``at_ms``; a wave
  starts at the previous verdict), start → last answer, commands sent by verb (counted in the host's ``send``).
  In all: the collector's CPU, µs per device, commands, tick p50/p95, rows per device (``rollouts``,
  ``rollout_devices``, ``replies``, ``results``, ``progress``; after − before the rollout) and their bytes per
  device (SQLite ``dbstat``: pages of each table and its indexes).
- **baseline**: the same boxes the old way, ``ftedge fleet train``-style (fleet/fanout.py ``fan_out``): deploy to
  every box at once, wait for the deploys, train every box that installed it, follow the jobs; its wall time and
  the collector's CPU are the denominators of the ratios.
- **halt**: the sim rollout with ``--halt-regress-rate`` (default 40%) of boxes regressing: a wave halts and rolls
  back; the time to the verdict and to the rollbacks' answers.
- **ticks**: the driver's tick against wave size without a broker (bench/rollout/ticks.py): one wave of N devices
  (``--tick-sizes``, default 1k,10k,50k,100k), the send / wait / resolve ticks and the tick of the done rollout,
  with the time split over the records' queries.
- **agents**: ``--agents`` real ``ftedge agent run`` processes (bench/rollout/agents.py), a signed ``mlp`` bundle
  served by a throwaway ``http.server`` and started with the real CLI ``ftedge fleet rollout start --url … --wait``.

Then the model (bench/rollout/capacity.py): a 10⁵-box rollout from the per-device CPU/rows/bytes and the tick cost
at each wave's size.
"""
