"""Regenerate the seed files of tests/fuzz/corpus/ that are written by code (run from the repo root).

``python tests/fuzz/make_corpus.py wav|bundle|deploy|commands|collector``. The files are committed; the
regression inputs (``regress-*``) each reproduce a bug a harness found — keep them when regenerating.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np

CORPUS = Path(__file__).resolve().parent / "corpus"
ROOT = Path(__file__).resolve().parents[2]


def _wav(path: Path, samples: bytes, rate: int, tag: int = 1, bits: int = 16, ch: int = 1,
         extensible: bool = False) -> None:
    block = ch * bits // 8
    fmt = struct.pack("<HHIIHH", 0xFFFE if extensible else tag, ch, rate, (rate * block) & 0xFFFFFFFF, block, bits)
    if extensible:
        fmt += struct.pack("<HHIH", 22, bits, 0x4, tag) + b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
    body = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(samples)) + samples
    path.write_bytes(b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WAVE" + body)


def wav() -> None:
    d = CORPUS / "wav"
    d.mkdir(parents=True, exist_ok=True)
    t = np.arange(4000) / 16000
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    subprocess.run(["espeak-ng", "-w", str(d / "espeak-yes-22k.wav"), "yes"], check=True)
    with open(d / "espeak-stdout-no.wav", "wb") as f:  # streaming writer: bogus RIFF/data sizes
        subprocess.run(["espeak-ng", "--stdout", "no"], check=True, stdout=f)
    with wave.open(str(d / "stdlib-s16-stereo-16k.wav"), "wb") as w:
        w.setnchannels(2), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes(np.round(np.stack([tone, -tone], 1) * 32767).astype("<i2").tobytes())
    _wav(d / "u8-8k.wav", (np.round(tone[::2] * 127) + 128).astype(np.uint8).tobytes(), 8000, bits=8)
    _wav(d / "f32-16k.wav", tone.astype("<f4").tobytes(), 16000, tag=3, bits=32)
    v = np.round(tone * (2**23 - 1)).astype("<i4").view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    _wav(d / "s24-extensible-16k.wav", v, 16000, bits=24, extensible=True)
    # Regression inputs (found by this harness; fixed in runtime/data/audio.py).
    noise = (np.random.default_rng(0).standard_normal(2000) * 8000).astype("<i2").tobytes()
    _wav(d / "regress-rate-1hz.wav", noise, 1)  # resampling 1 Hz -> 16 kHz allocated 634 MiB
    big = np.concatenate([np.full((30, 2), 3e38), np.full((3200, 2), 0.1)]).astype("<f4").tobytes()
    _wav(d / "regress-float-huge.wav", big, 16000, tag=3, bits=32, ch=2)  # downmix overflowed: ValueError NaN



def _bundle_doc(base: str, edit=None, ops=()) -> bytes:
    root = ROOT / "tests" / "data" / "bundle_v1" if base == "bundle_v1" else CORPUS.parent / "bases" / base
    text = (root / "manifest.json").read_text()
    if edit is not None:
        m = json.loads(text)
        edit(m)
        text = json.dumps(m, indent=2)
    return json.dumps({"base": base, "manifest": text, "ops": [list(o) for o in ops]}, indent=1).encode()


def bundle() -> None:
    d = CORPUS / "bundle"
    d.mkdir(parents=True, exist_ok=True)
    for base in ("bundle_v1", "mlp_v2"):
        (d / f"{base}-as-exported.json").write_bytes(_bundle_doc(base))
    (d / "mlp_v2-extra-file-and-symlink.json").write_bytes(
        _bundle_doc("mlp_v2", ops=[("extra", "portable/extra.onnx", 10), ("symlink_out", "backbone.onnx", 0)]))
    (d / "bundle_v1-checkpoint-is-dir.json").write_bytes(_bundle_doc("bundle_v1", ops=[("dir", "head/checkpoint", 0)]))
    (d / "bundle_v1-role-escapes.json").write_bytes(
        _bundle_doc("bundle_v1", lambda m: m["roles"].update(backbone="../../../etc/passwd")))
    # Regression inputs for bugs in bundle/loader.py and runtime/data/samples.py (strict xfail in tests/test_fuzz.py).
    (d / "regress-files-entry-null.json").write_bytes(
        _bundle_doc("bundle_v1", lambda m: m["files"].update({"backbone.onnx": None})))
    (d / "regress-no-output.json").write_bytes(_bundle_doc("mlp_v2", lambda m: m.pop("output")))
    (d / "regress-inputs-null.json").write_bytes(_bundle_doc("bundle_v1", lambda m: m.update(inputs=None)))
    (d / "regress-schema-version-list.json").write_bytes(
        _bundle_doc("bundle_v1", lambda m: m.update(schema_version=[1])))
    (d / "regress-roles-int.json").write_bytes(_bundle_doc("bundle_v1", lambda m: m.update(roles=5)))
    (d / "regress-preprocessing-list.json").write_bytes(
        _bundle_doc("mlp_v2", lambda m: m.update(preprocessing=["a"])))


def _member(name: str, kind: bytes, size: int = 0, link: str = "", fmt: int = 1) -> bytes:
    import tarfile
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, size, link
    return info.tobuf(format=fmt)


def deploy() -> None:
    """Real `ftedge pack` archives, hostile variants of them, and the long-header memory-bomb shapes."""
    import gzip
    import tarfile
    import zlib
    d = CORPUS / "deploy"
    d.mkdir(parents=True, exist_ok=True)
    for base, src in (("bundle_v1", ROOT / "tests" / "data" / "bundle_v1"), ("mlp_v2", CORPUS.parent / "bases" / "mlp_v2")):
        subprocess.run([str(ROOT / ".venv" / "bin" / "ftedge"), "pack", str(src), "-o", str(d / f"{base}-packed.tar.gz")],
                       check=True, capture_output=True)
    tar = gzip.decompress((d / "bundle_v1-packed.tar.gz").read_bytes()).rstrip(b"\0")
    end = b"\0" * 1024
    hostile = {
        "symlink-to-etc-passwd": _member("bundle_v1/backbone2.onnx", tarfile.SYMTYPE, link="/etc/passwd"),
        "hardlink-escape": _member("bundle_v1/h", tarfile.LNKTYPE, link="../../etc/passwd"),
        "char-device": _member("bundle_v1/zero", tarfile.CHRTYPE),
        "fifo": _member("bundle_v1/fifo", tarfile.FIFOTYPE),
        "dotdot-path": _member("bundle_v1/../../evil", tarfile.REGTYPE, size=0),
        "absolute-path": _member("/tmp/ftedge-evil", tarfile.REGTYPE, size=0),
        "second-top-level": _member("other/manifest.json", tarfile.REGTYPE, size=0),
        "pax-long-name": _member("bundle_v1/" + "n" * 5000, tarfile.REGTYPE, size=0, fmt=tarfile.PAX_FORMAT),
        "gnu-long-name": _member("bundle_v1/" + "n" * 5000, tarfile.REGTYPE, size=0, fmt=tarfile.GNU_FORMAT),
    }
    for name, member in hostile.items():
        (d / f"{name}.tar.gz").write_bytes(gzip.compress(tar + member + end, mtime=0))
    # A header that declares far more than the archive holds (truncated stream).
    (d / "huge-declared-size.tar.gz").write_bytes(
        gzip.compress(tar + _member("bundle_v1/big", tarfile.REGTYPE, size=8 * 2**30 - 1) + b"x" * 512, mtime=0))
    # Memory-bomb shapes (issue 12 finding 1): a PAX / GNU long-name header whose payload is 70 MiB of zeros,
    # in its own gzip member (~70 KiB compressed), followed by the real bundle.
    for name, kind in (("regress-pax-header-70mib", tarfile.XHDTYPE), ("regress-gnu-longname-70mib", tarfile.GNUTYPE_LONGNAME)):
        comp = zlib.compressobj(9, zlib.DEFLATED, 31)
        chunks = [comp.compress(_member("././@LongLink", kind, size=70 * 2**20, fmt=tarfile.USTAR_FORMAT))]
        chunks += [comp.compress(b"\0" * 2**20) for _ in range(70)]
        (d / f"{name}.tar.gz").write_bytes(b"".join(chunks) + comp.flush() + gzip.compress(tar + end, mtime=0))


def commands() -> None:
    """Real command payloads (as `fleet send` / tests/agent_harness.py send them) and hostile ones."""
    d = CORPUS / "commands"
    d.mkdir(parents=True, exist_ok=True)
    cmds = {
        "train-ok": ("train", {"cmd_id": "c1", "args": {"bundle": "mlp", "data": "blobs.npz", "epochs": 2, "lr": 0.01}}),
        "train-all-options": ("train", {"cmd_id": "c2", "args": {
            "bundle": "mlp", "data": "blobs.npz", "epochs": 3, "batch_size": 16, "lr": 0.01, "mode": "cached",
            "patience": 2, "max_seconds": 60, "val_fraction": 0.2, "seed": 1, "min_gain": 0.0, "schedule": "cosine",
            "backbone": "fp32", "embed_batch_size": 64, "engine": "portable"}}),
        "train-dotdot": ("train", {"cmd_id": "c3", "args": {"bundle": "../outside/b", "data": "blobs.npz"}}),
        "train-symlink-out": ("train", {"cmd_id": "c4", "args": {"bundle": "evil", "data": "evil"}}),
        "train-absolute": ("train", {"cmd_id": "c5", "args": {"bundle": "/etc", "data": "/etc/passwd"}}),
        "train-huge-batch": ("train", {"cmd_id": "c6", "args": {"bundle": "mlp", "data": "blobs.npz",
                                                                 "embed_batch_size": 1000000000}}),
        "train-string-bool": ("train", {"cmd_id": "c7", "args": {"bundle": "mlp", "data": "blobs.npz", "epochs": "2"}}),
        "train-unknown-arg": ("train", {"cmd_id": "c8", "args": {"bundle": "mlp", "data": "blobs.npz", "rm": "-rf"}}),
        "cancel-dotdot": ("cancel", {"cmd_id": "c9", "args": {"job": "../../state/replies"}}),
        "cancel-ok": ("cancel", {"cmd_id": "c10", "args": {"job": "j20260101-120000-a1b2c3"}}),
        "ping": ("ping", {"cmd_id": "c11", "args": {}}),
        "deploy": ("deploy", {"cmd_id": "c12", "args": {"url": "file:///etc/passwd", "sha256": "0" * 64}}),
        "expired": ("status", {"cmd_id": "c13", "args": {}, "expires": 1}),
    }
    for name, (verb, body) in cmds.items():
        (d / f"{name}.txt").write_bytes(verb.encode() + b"\n" + json.dumps(body).encode())
    raw = {"malformed-json": b"train\n{\"cmd_id\": ", "not-utf8": b"train\n\xff\xfe{}", "array": b"train\n[1, 2]",
           "nan": b"train\n{\"cmd_id\": \"n\", \"args\": {\"bundle\": \"mlp\", \"data\": \"blobs.npz\", \"lr\": NaN}}",
           "deep-nesting": b"train\n" + b"[" * 100000,
           "train-nul-byte": b"train\n" + json.dumps({"cmd_id": "z1", "args": {"bundle": "ml\u0000p", "data": "blobs.npz"}}).encode(),
           "train-long-name": b"train\n" + json.dumps({"cmd_id": "z2", "args": {"bundle": "x" * 300, "data": "blobs.npz"}}).encode()}
    for name, payload in raw.items():
        (d / f"{name}.txt").write_bytes(payload)


def collector() -> None:
    """Batches as an agent publishes them (recorded shapes of the MQTT contract, docs/mqtt.md) and hostile ones."""
    d = CORPUS / "collector"
    d.mkdir(parents=True, exist_ok=True)
    root, ts = "ftedge/v1/demo/dev-001/", 1767000000000

    def env(seq: int, boot: str = "b1", **body: object) -> str:
        return json.dumps({**body, "v": 1, "ts": ts + seq, "dev": "dev-001", "boot": boot, "seq": seq, "hist": False})

    def write(name: str, msgs: list) -> None:
        (d / f"{name}.jsonl").write_text("\n".join(json.dumps(m) for m in msgs) + "\n")

    life = [
        [root + "status", env(1, state="online", reason="birth"), True],
        [root + "meta", env(2, agent="0.1.0", models=[], active_version=None), True],
        [root + "job", env(3, job="j1", status="running"), True],
        [root + "jobs/j1/progress", env(4, job="j1", epoch=1, metrics={"loss": 0.9, "accuracy": 0.5}), False],
        [root + "jobs/j1/result", env(5, job="j1", status="succeeded", promoted=True, duration_s=3.2,
                                       baseline={"accuracy": 0.4}, final={"accuracy": 0.9}), False],
        [root + "cmdres/host", env(6, cmd_id="c1", status="done", code="ok", detail="pong"), False],
        [root + "status", json.dumps({"state": "offline", "reason": "lwt", "v": 1, "ts": ts, "dev": "dev-001",
                                      "boot": "b1", "seq": 0, "hist": False, "will": True}), True],
    ]
    write("agent-lifecycle", life)
    write("seq-hole-and-new-boot", [life[0], life[3], [root + "status", env(1, "b2", state="online", reason="birth"), False]])
    # issue 12 finding 9 shapes: non-object metrics/baseline, a string loss
    write("regress-metrics-not-object", [life[0], [root + "jobs/j1/progress", env(4, job="j1", epoch=1, metrics=[1, 2]), False]])
    write("regress-baseline-not-object", [life[0], [root + "jobs/j1/result", env(5, job="j1", status="succeeded",
                                                                              promoted=True, baseline="x", final=3), False]])
    write("regress-loss-string", [life[0], [root + "jobs/j1/progress", env(4, job="j1", epoch=1,
                                                                        metrics={"loss": "high"}), False]])
    write("boot-at-1970", [[root + "status", json.dumps({"state": "online", "reason": "birth", "v": 1, "ts": 5,
                                                          "dev": "dev-001", "boot": "b0", "seq": 1, "hist": False}), False]])


if __name__ == "__main__":
    globals()[sys.argv[1]]()
