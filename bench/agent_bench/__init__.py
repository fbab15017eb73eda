"""Device agent costs on loopback, against a real Mosquitto broker started by this bench.

Reproduce (repo root, host venv; about 2 minutes on an otherwise idle 2-core box with the defaults):

    .venv/bin/python -m bench.agent_bench                 # the four measurements, Markdown report on stdout
    .venv/bin/python -m bench.agent_bench --json          # + one JSON object on the last line
    .venv/bin/python -m bench.agent_bench --idle-s 5 --repeat 1 --messages 2000    # quick check

What runs where. The bench (host venv) starts Mosquitto (tests/helpers/broker.py's Broker: loopback, free port,
persistence on), exports one bundle with the CLI, signed with a key from `ftedge keygen` (bench/signing.py; every
agent config trusts it in `[deploy] trusted_keys`: the agent refuses unsigned bundles), writes a SYNTHETIC dataset
and runs a persistent MQTT v5 subscriber (the "collector", QoS 1, clean_start=False, in this process). Everything
measured runs in its own process with the DEVICE interpreter: `.venv-device/bin/python` (no torch) with PYTHONPATH
pointing at a throw-away symlink tree of this working copy laid out by pyproject.toml's package-dir (src/ftedge +
runtime/ + bundle/ + mqtt/ + device_agent/ ...; bench/device_venv.py), because the device venv holds a non-editable
install, a snapshot of whatever tree it was installed from. If .venv-device is missing or cannot import the agent,
the host venv runs them (the report's "device python" line says which). All children get OMP_NUM_THREADS=2. Before
the measurements, one untimed epoch of the same cached-mode job through the CLI (default engine) warms the page cache.

1. Agent idle: `python -m ftedge agent run --config X`; once its birth (status) AND meta messages reached the
   collector, CPU = delta(utime+stime) of /proc/PID/stat over --idle-s seconds (all threads; % of ONE core)
   and RSS = VmRSS of /proc/PID/status sampled every second (the maximum is reported, in MB = 10^6 bytes).
2. Telemetry overhead of a cached-mode job: the same training (bundle `ftedge export tests/helpers/zoo.py:cnn`,
   --samples SYNTHETIC clips, --epochs, batch 32, --mode cached, seed 0) run
     (a) as `ftedge train ... --cache-dir FRESH` (the agent has no --no-cache: its jobs always use
         STATE/cache, cold here, so (a) does the same cache work); (a0) the same with --no-cache, for reference;
     (b) as an agent job, sent as the MQTT `train` command to a freshly started agent (fresh state dir).
   overhead = (median duration_s of (b) - median duration_s of (a)) / median duration_s of (a); duration_s is
   the trainer's own clock (Trainer start to result). Also shown: the same on duration_s - load_s (the agent
   imported onnxruntime at start-up for its meta message; the CLI pays that import inside load_s), the
   command-to-result-message wall time of (b) and the whole-process wall time of (a). Runs are round-robin.
3. Outbox throughput: a worker process builds a real `Agent` from a config (Outbox + MqttLink + pump
   thread, exactly as `agent run`), waits until it is connected and its birth/meta are acknowledged, then
   calls `agent.publish("progress", ...)` --messages times (~250-byte bodies like a job's progress) from its
   main thread while the pump publishes; rate = messages / (first enqueue -> outbox depth 0). Every enqueue
   is a durable SQLite commit (WAL, synchronous=FULL: one fsync per message) on the filesystem shown.
4. Outage replay: the same worker, connected; the bench stops the broker (SIGTERM), the worker waits until
   the agent noticed, enqueues --messages messages, then the bench restarts the broker (same port and
   persistence file). Time from the broker start command until the outbox is empty AND the collector holds
   all messages' distinct seqs. It includes the agent's reconnect back-off (paho, 1 s doubling to 30 s,
   mqtt_link.py), which depends on how long the broker was down; the breakdown is reported.

Everything is on one host over loopback: no network latency, no TLS, broker and clients share the CPUs.
ALL DATA IS SYNTHETIC (Gaussian noise + a class-dependent level); the model is tests/helpers/zoo.py's small CNN.
"""
