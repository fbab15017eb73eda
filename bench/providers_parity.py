"""50 portable training steps of a bundle's step graph on the CPU EP and on the OpenVINO EP (CPU fallback on),
same feeds: prints the max relative loss difference. Run in the OpenVINO venv (scripts/dev.sh setup):

    .venv-openvino/bin/python -m bench.providers_parity BUNDLE_DIR

Random SYNTHETIC head inputs (seeded), labels ``arange(B) % 3`` (random 0/1 floats for float targets), lr 1e-3 (the bundle's optimizer), no clipping; mask inputs all ones.
Groundwork for issue 35 (the runtime cannot put the step on an EP yet); docs/openvino-probe.md quotes it.
"""
import sys, numpy as np, onnxruntime as o
from safetensors.numpy import load_file
d = sys.argv[1]
init = load_file(f"{d}/portable/init.safetensors")
def run(prov):
    s = o.InferenceSession(f"{d}/portable/step.onnx", providers=prov)
    ins = {i.name: i for i in s.get_inputs()}
    st = {}
    for n in ins:
        if n[:2] in ("p:", "m:", "v:", "b:"):
            st[n] = init[n[2:]].copy() if n[:2] in ("p:", "b:") else np.zeros_like(init[n[2:]])
    rng = np.random.default_rng(0)
    B = 8
    feats = {n: rng.standard_normal([B if x == "batch" else x for x in i.shape]).astype(np.float32)
             for n, i in ins.items() if i.type == "tensor(float)" and n[:2] not in ("p:", "m:", "v:", "b:") and "batch" in i.shape and n not in ("weights", "labels")}
    lab = ins["labels"]
    labels = ((np.arange(B) % 3).astype(np.int64) if lab.type == "tensor(int64)" else
              rng.integers(0, 2, [B if x == "batch" else x for x in lab.shape]).astype(np.float32))
    losses = []
    for step in range(50):
        f = dict(st, lr=np.array(1e-3, np.float32), lr_wd=np.array(0, np.float32), max_grad_norm=np.array(0, np.float32),
                 labels=labels, weights=np.ones(B, np.float32), **feats)
        f = {k: v for k, v in f.items() if k in ins}
        for k in ins:
            if k not in f and k.startswith("mask"): f[k] = np.ones([B if x == "batch" else x for x in ins[k].shape], np.float32)
        out = dict(zip([x.name for x in s.get_outputs()], s.run(None, f)))
        st = {k: out[k + "_out"] for k in st}
        losses.append(float(out["loss"]))
    return np.array(losses)
a = run(["CPUExecutionProvider"]); b = run(["OpenVINOExecutionProvider", "CPUExecutionProvider"])
rel = np.abs(a - b) / np.maximum(np.abs(a), 1e-3)
print(d.split("/")[-1], "loss0", a[0], "loss49", a[-1], "max rel diff OV vs CPU over 50 steps", rel.max())
