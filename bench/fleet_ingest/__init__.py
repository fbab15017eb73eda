"""Fleet collector ingest throughput, CPU and memory over a real Mosquitto on loopback (issues 6 and 17).

Reproduce (repo root, host venv; ~1.5-2 min with the defaults on an otherwise idle 2-core box):

    .venv/bin/python -m bench.fleet_ingest                       # every phase, a 60 s soak
    .venv/bin/python -m bench.fleet_ingest --soak-seconds 600    # the 10-minute soak (≈ 11.5 min in all)
    .venv/bin/python -m bench.fleet_ingest --json                # + one JSON object on the last line
    .venv/bin/python -m bench.fleet_ingest --profile max         # cProfile of the collector's threads, no report

Several collectors on PostgreSQL (issue 17; needs the PostgreSQL server package, scripts/dev.sh setup):

    .venv/bin/python -m bench.fleet_ingest --store postgresql --collectors 1,2,3 --devices 1000,10000 \
        --soak-seconds 60 --json --json-out /tmp/fleet_pg.json          # ≈ 3 min
    .venv/bin/python -m bench.fleet_ingest --store postgresql --collectors 3 --devices 10000 --phases soak \
        --soak-seconds 600                                               # the 10-minute soak alone (≈ 10.5 min)
    .venv/bin/python -m bench.fleet_ingest --store postgresql --collectors 1,3 --devices 200 \
        --total-messages 20000 --soak-seconds 20                         # a smoke test (≈ 40 s)

``--store postgresql`` runs, for each ``--devices`` count, the max phase below with the SQLite single
collector (the baseline) and then once per ``--collectors`` count N on PostgreSQL: a fresh Mosquitto, a fresh
database (``CREATE DATABASE`` on one throwaway cluster of tests/helpers/postgres.py for the whole run: loopback, trust
auth, ``fsync``/``synchronous_commit``/``full_page_writes`` off unless ``--pg-durable``), N ``ftedge fleet serve
--db postgresql://… --share-group bench --client-id bench-…-cK --http 127.0.0.1:PORT`` processes (MQTT v5 shared
subscription ``$share/bench/ftedge/v1/+/+/#``; started together, each waited for until its SUBSCRIBE is in the
broker's log), the same publisher configuration: ``--total-messages`` (default 200,000) unique messages per phase
spread over the devices (``total / devices − 2`` telemetry messages each, plus the result and the final job).
Then **paint** on the database of the largest device count with the most collectors (one idle collector of the
group on a fresh broker; first paint as below, and a walk over ``GET /api/devices?limit=500`` following
``Link: …; rel="next"`` that must return every device exactly once, in order, as many as ``X-Total-Count``),
and the **soak** with max(N) collectors and the largest device count (``--soak-rate``, ``--soak-seconds``;
each collector's VmRSS every 10 s while the paced load runs: start, after the warm-up (min(60 s, half the
soak)), end, max, and the least-squares slope after the warm-up in MiB/min; the sample after the generator's
final burst — every device's result and last job at once — is reported apart). Measured per phase: the
ingest rate (as below, from ``SUM(value)`` of the sharded ``messages_total``), CPU seconds over the same window
of the collectors (summed),
of PostgreSQL (the postmaster with its reaped children's cutime/cstime plus every live child — the collectors'
backends, checkpointer, walwriter, autovacuum — less the bench's own polling backend), of Mosquitto and of the
generator (its own process time while publishing), as µs per message and cores used (CPU s / window s); the
whole host's busy cores (/proc/stat) to spot a disturbed run; each collector's peak RSS (ru_maxrss); for
PostgreSQL the backends waiting on a lock at every poll (pg_stat_activity), pg_stat_database's commits,
rollbacks (a deadlock or serialization failure retried by a collector is one) and deadlocks, the server log's
ERROR lines of the phase (a deadlock report names both statements; the cluster lives under the bench's
temporary directory, kept with ``--keep``), the collectors' log warnings, and the share of ``messages_total``
each collector counted (how Mosquitto spread the messages).

What runs where (all on one host, sharing its CPUs):
- **Mosquitto** (``/usr/sbin/mosquitto``), a fresh broker per phase on a free loopback port, persistence off,
  ``max_queued_messages 0`` (no limit: a collector that falls behind must not lose messages at the broker in
  a throughput test; the default 1000 would drop QoS 1 messages beyond 1000 queued for the collector) and
  logging of errors/warnings/notices/subscriptions only (``log_type all`` logs every PUBLISH and costs more
  than the collector).
- **The collector**: the real ``ftedge fleet serve --broker … --db … --http …`` (paho-mqtt client, writer
  thread, ``FleetStore.ingest_batch``, SQLite WAL) in its own process, started by bench/proc_launcher.py.
  Its CPU time is utime+stime of /proc/PID/stat (all threads), its memory VmRSS of /proc/PID/status.
- **The load generator**: ONE separate process (``--publisher``) simulating the fleet with raw MQTT v5 over
  TCP: by default one connection per simulated device (``--devices`` connections, each with its own client
  id; the bench raises its soft RLIMIT_NOFILE to the hard limit, which the generator and Mosquitto inherit,
  and Mosquitto runs with ``max_connections -1``: 10,000 devices need 10,000 descriptors in each; connections
  are opened 50 at a time, each group's CONNACKs awaited, so Mosquitto's listen backlog of 100 never overflows),
  PUBLISH QoS 1 packets encoded from byte templates, PUBACKs read and counted per connection (the
  number in flight per connection is capped by the broker's Receive Maximum from CONNACK). No paho on this
  side: the generator must cost far less CPU than the collector for the collector to be the bottleneck.
  Each device publishes the contract (docs/mqtt.md): ``status`` (retained, online/birth, seq 1),
  ``meta`` (retained, seq 2), ``job`` (retained, running, seq 3), then ``jobs/{job}/progress`` (job, epoch,
  step, loss, metrics.val_accuracy, lr, samples_per_s, rss_mb; epoch = seq so that every progress message is
  its own row), every 100th seq a retained ``job`` snapshot, and at the end ``jobs/{job}/result`` and a final
  retained ``job``. Every message carries the envelope v, ts, dev, boot, seq, hist. About every
  ``--dup-every``-th message is sent twice (same bytes, DUP flag; an outbox replay): device i repeats seq s
  when (s + i) % dup_every = 0 (the offset spreads them over short streams too), right after the original or,
  when the connection's window is full, first thing next time; the collector must drop it.

Phases (one fresh broker + collector + database each):
- **baselines** (a child process, no broker): the same kind of messages fed straight into
  ``FleetStore.ingest_batch`` (a) one transaction per message — the naive collector — and (b) in batches
  of 500 (the collector writer's batch size): the storage layer alone.
- **before**: the max phase with the collector code of an older revision (``--before``, default 09914b8:
  stock paho receive path, PUBACK on receipt, batches of ≤ 500 per 100 ms), loaded from ``git show`` into
  the same kind of child process; same broker, generator and verification.
- **max**: every device publishes ``--messages`` messages as fast as its connection's PUBACK window allows.
  Ingest rate = unique messages committed (``messages_total`` of the collector's database, polled every
  50 ms by a read-only connection) between the first poll that saw a commit and the first poll that saw the
  last one, divided by that wall time. The collector's CPU over the same window gives "cores used".
- **paced**: a fixed offered load (``--rate``, default 10,000 msg/s) for ``--seconds``; reported: achieved
  ingest rate, the commit lag after the last publish, collector CPU per second. Half-way through, the
  dashboard's first paint is measured as in **paint** (the dashboard under ingest load).
- **soak**: ``--soak-rate`` (default 5,000 msg/s) for ``--soak-seconds``; collector VmRSS sampled every 10 s
  (start = first sample after the first commit, end, max).
- **paint**: ``ftedge fleet serve`` on the max phase's database (1,000 devices, each with a job, ~200
  progress rows and a result), idle; tests/helpers/browser.py's ``first_paint`` loads ``/`` five times in one
  headless Chromium (cache disabled) and reads the Performance API's ``first-contentful-paint`` (from
  navigation start; the first load has a cold renderer). Also timed: the whole ``chromium --headless
  --dump-dom URL`` process (browser start-up included).

Correctness after each broker phase (SQLite and PostgreSQL alike; counters summed over the collectors'
shards): for every device, the database's boot row has contiguous = max_seq = the last seq published (every
seq from 1 arrived, none pending), no ``seen`` row is left (nothing beyond contiguous), ``seq_gaps_total`` = 0,
``messages_total`` = sum of last seqs (each (dev, boot, seq) counted once), ``duplicates_total`` = duplicates
sent (a redelivery would add one; the difference is reported) and the number of ``progress`` rows = progress
messages published. Reported explicitly: **lost** (published and acknowledged by the broker but not recorded:
seqs a boot row has not reached less the ``seen`` rows beyond it, plus seqs written off as counted holes and
never filled) and **double counted** (``messages_total`` beyond the unique messages recorded); both must be 0.
"""
