"""The adapter for plain ``onnxruntime`` (see ARCHITECTURE.md, "Adapters"): inference sessions, the
portable engine's step sessions, the probe sessions and graph optimization/quantization export needs, the
build's version and providers. With ``ort_training_backend`` (the ort-training engine's adapter) it is the only
code that imports onnxruntime; the module object itself never leaves the two.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys
import tempfile
import types
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ftedge.runtime.engines.providers import full_names
from ftedge.errors import RuntimeBackendError

log = logging.getLogger(__name__)

_INSTALL_HINT = "install the device extra: pip install 'ftedge[device]' (plain onnxruntime; onnxruntime-gpu on CUDA boxes)"


_ORTMODULE = "onnxruntime.training.ortmodule"


def _onnxruntime() -> types.ModuleType:
    """The ``onnxruntime`` module, or a clear error saying how to install it (for the two ORT adapters only)."""
    if "onnxruntime" not in sys.modules:
        # onnxruntime's build-info check imports onnxruntime.training.ortmodule, which imports torch when
        # torch is installed (0.1-1.7 s, and defeats the torch-free training import below). ftedge never
        # uses ORTModule: hide it for that first import only.
        sys.modules.setdefault(_ORTMODULE, None)
    try:
        import onnxruntime
    except ImportError as exc:
        raise RuntimeBackendError(f"onnxruntime is not installed ({exc}); {_INSTALL_HINT}") from exc
    finally:
        if _ORTMODULE in sys.modules and sys.modules[_ORTMODULE] is None:
            del sys.modules[_ORTMODULE]
    onnxruntime.set_default_logger_severity(3)
    return onnxruntime


def has_training_api() -> bool:
    """Whether this onnxruntime build is onnxruntime-training (checked without importing it)."""
    if not is_installed():
        return False
    if "onnxruntime.training" in sys.modules:  # training_api() registered its bare package (no __spec__)
        return True
    return importlib.util.find_spec("onnxruntime.training") is not None


def version() -> str:
    """The installed onnxruntime's version (raises RuntimeBackendError when there is none)."""
    return str(_onnxruntime().__version__)


def is_installed() -> bool:
    """Whether onnxruntime imports here."""
    try:
        _onnxruntime()
    except RuntimeBackendError:
        return False
    return True


def available_providers() -> list[str]:
    return list(_onnxruntime().get_available_providers())


def resolve_providers(requested: Sequence[str] | None) -> tuple[list[str], list[str]]:
    """Requested execution providers that this ORT build has, CPU always last; plus the unavailable ones."""
    have = available_providers()
    wanted = full_names(requested or [])
    chosen = [p for p in wanted if p in have and p != "CPUExecutionProvider"]
    missing = [p for p in wanted if p not in have]
    return chosen + ["CPUExecutionProvider"], missing


def set_seed(seed: int) -> None:
    """Seed ORT's random generators (dropout in training graphs)."""
    _onnxruntime().set_seed(int(seed))


CPU = "CPUExecutionProvider"
# Where an EP keeps the tensors it reads and writes, as OrtValue names the device: GPU EPs their own memory;
# everything else (OpenVINO, QNN, CoreML, NNAPI, XNNPACK, …) host memory, shared with the CPU EP.
_EP_DEVICE = {"CUDAExecutionProvider": "cuda", "TensorrtExecutionProvider": "cuda", "DmlExecutionProvider": "dml"}


def ep_device(providers: Sequence[str]) -> str:
    """The OrtValue device type of a session whose first execution provider leads ``providers``."""
    return _EP_DEVICE.get(providers[0], "cpu") if providers else "cpu"


def _session_options(threads: int | None, prepack: bool = True, profile_prefix: str | None = None) -> Any:
    so = _onnxruntime().SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    if not prepack:  # pre-packed copies of large weights double their memory (LLM graphs)
        so.add_session_config_entry("session.disable_prepacking", "1")
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return so


def _ep_name(providers: Sequence[str]) -> str:
    return providers[0].removesuffix("ExecutionProvider") if providers else "CPU"


class _Session:
    """An ``InferenceSession`` on a provider list, with what the session actually did recorded in
    :meth:`placement`.

    Where another EP leads the list, the first run is profiled (then profiling stops): ORT's profile names the EP
    that ran every node, so ``cpu_fallback_nodes`` counts what the session placed on the CPU EP — measured, not
    guessed from an op list (an EP's fused subgraph counts as one node). Where that EP cannot load the graph, or
    fails running it, the session is reopened on the CPU EP with a warning and the reason is reported
    (``fallback``); on the CPU EP alone a failure is a :class:`RuntimeBackendError` naming the graph.
    """

    def __init__(self, path: str | Path, providers: Sequence[str] | None, threads: int | None, prepack: bool) -> None:
        self.path = Path(path)
        self.requested = list(providers or [CPU])
        self._args = (threads, prepack)
        self.fallback: str | None = None
        self.nodes: int | None = None
        self.cpu_fallback_nodes: int | None = 0 if self.requested[0] == CPU else None
        self._profiled = False
        try:
            self.session = self._open(self.requested)
        except Exception as exc:  # ORT raises its own exception types
            if self.requested[0] == CPU:
                raise RuntimeBackendError(f"ONNX Runtime cannot load {path}: {exc}") from exc
            self._fall_back("cannot load", exc)

    def _open(self, providers: list[str]) -> Any:
        threads, prepack = self._args
        prefix = None
        if providers[0] != CPU:
            prefix = os.path.join(tempfile.gettempdir(), f"ftedge-placement-{os.getpid()}-{id(self)}")
        sess = _onnxruntime().InferenceSession(str(self.path), sess_options=_session_options(threads, prepack, prefix),
                                               providers=providers)
        self._profiled = prefix is not None
        return sess

    def _fall_back(self, what: str, exc: BaseException) -> None:
        """Reopen on the CPU EP after the leading EP failed ``what`` (load / run) this graph."""
        ep = _ep_name(self.requested)
        reason = f"the {ep} execution provider {what} {self.path.name}: {' '.join(str(exc).split())[:400]}"
        log.warning("%s; running this graph on the CPU execution provider instead", reason)
        try:
            self.session = self._open([CPU])
        except Exception as exc2:
            raise RuntimeBackendError(f"ONNX Runtime cannot load {self.path}: {exc2}") from exc2
        self.fallback = reason
        self.nodes = None
        self.cpu_fallback_nodes = None

    def _count_placement(self) -> None:
        """After the first profiled run: the nodes the session ran, and how many on the CPU EP."""
        self._profiled = False
        try:
            path = self.session.end_profiling()
        except Exception:  # noqa: BLE001 - placement is a report; a failed profile never fails the run
            return
        try:
            with open(path, encoding="utf-8") as f:
                events = json.load(f)
            placed = {e["name"]: e.get("args", {}).get("provider") for e in events if e.get("cat") == "Node"}
            self.nodes = len(placed)
            self.cpu_fallback_nodes = sum(1 for p in placed.values() if p == CPU)
        except (OSError, ValueError, KeyError, TypeError):
            pass
        finally:
            try:
                os.unlink(path)
            except OSError:
                pass

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    def placement(self) -> dict[str, Any]:
        """What this session ran on: ``providers`` (the session's list), ``cpu_fallback_nodes`` (nodes the CPU EP
        ran although another EP led the list; None until the first run), ``nodes`` (nodes after partitioning,
        when profiled) and ``fallback`` (why the whole graph moved to the CPU EP, or None)."""
        out: dict[str, Any] = {"requested": self.requested, "providers": self.providers,
                               "cpu_fallback_nodes": self.cpu_fallback_nodes}
        if self.nodes is not None:
            out["nodes"] = self.nodes
        out["fallback"] = self.fallback
        return out

    def _guarded(self, call: Any) -> Any:
        """``call()`` on the session; the leading EP's failure moves this graph to the CPU EP (once)."""
        try:
            out = call()
        except Exception as exc:
            if self.providers[0] == CPU:
                what = f"{_ep_name(self.requested)} fell back to CPU; " if self.fallback else ""
                raise RuntimeBackendError(f"ONNX Runtime failed running {self.path.name} ({what}"
                                          f"{' '.join(str(exc).split())[:600]})") from exc
            self._fall_back("failed running", exc)
            return None
        if self._profiled:
            self._count_placement()
        return out


class InferenceModel(_Session):
    """A plain ``InferenceSession`` with name-keyed inputs and outputs."""

    def __init__(self, path: str | Path, providers: Sequence[str] | None = None, threads: int | None = None,
                 prepack: bool = True) -> None:
        super().__init__(path, providers, threads, prepack)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        names = list(outputs or self.output_names)
        picked = {k: feeds[k] for k in self.input_names}
        values = self._guarded(lambda: self.session.run(names, picked))
        if values is None:  # the EP failed: once more on the CPU EP
            values = self._guarded(lambda: self.session.run(names, picked))
        return dict(zip(names, values))


class StepSession(_Session):
    """A graph run step after step with its state kept as OrtValues on the session's device.

    ``state`` maps input names to OrtValues; each run feeds them plus the batch, and the outputs named
    ``<input>_out`` replace them, with no numpy round trip.
    """

    def __init__(self, path: str | Path, providers: Sequence[str] | None = None, threads: int | None = None,
                 prepack: bool = True) -> None:
        super().__init__(path, providers, threads, prepack)
        # initializers that are also graph inputs: bound when given, their stored value otherwise
        self.overridable = [i.name for i in self.session.get_overridable_initializers()]
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    @property
    def device(self) -> str:
        return ep_device(self.providers)

    def to_device(self, value: np.ndarray) -> Any:
        # np.asarray(order="C"), not np.ascontiguousarray: that one makes a 0-d array 1-d, which the CPU EP
        # tolerates and the OpenVINO EP refuses ("the model input (shape=[]) and the tensor (shape=(1))")
        return _onnxruntime().OrtValue.ortvalue_from_numpy(np.asarray(value, order="C"), self.device, 0)

    def _bind_and_run(self, state: dict[str, Any], feeds: dict[str, np.ndarray], fetch: Sequence[str]) -> Any:
        binding = self.session.io_binding()
        for name in self.overridable:
            if name in state:
                binding.bind_ortvalue_input(name, state[name])
        for name in self.input_names:
            if name in state:
                binding.bind_ortvalue_input(name, state[name])
            else:
                binding.bind_cpu_input(name, np.asarray(feeds[name], order="C"))   # 0-d stays 0-d
        for name in self.output_names:
            binding.bind_output(name, "cpu" if name in fetch else self.device)
        self.session.run_with_iobinding(binding)
        return binding

    def run(self, state: dict[str, Any], feeds: dict[str, np.ndarray], fetch: Sequence[str],
            keep: Sequence[str] = ()) -> dict[str, Any]:
        """Run once; ``state`` is updated in place from the ``_out`` outputs; returns ``fetch`` as numpy and
        ``keep`` as OrtValues left on the session's device (e.g. a KV cache fed to the next run)."""
        before = self.device
        binding = self._guarded(lambda: self._bind_and_run(state, feeds, fetch))
        if binding is None:  # the EP failed: the state moves to the CPU EP's memory, and the step runs again
            if before != self.device:
                for name, value in state.items():
                    state[name] = self.to_device(value.numpy())
            binding = self._guarded(lambda: self._bind_and_run(state, feeds, fetch))
        outs = dict(zip(self.output_names, binding.get_outputs()))
        for name in state:
            if name + "_out" in outs:
                state[name] = outs[name + "_out"]
        return {name: outs[name].numpy() for name in fetch} | {name: outs[name] for name in keep}


def probe_session(model_bytes: bytes) -> Any:
    """An unoptimized CPU session over a serialized model, for export's graph probes (tensor shapes, per-sample
    checks): no graph rewrites, so every named tensor stays observable. ``.run(names, feeds)`` as ORT's."""
    so = _onnxruntime().SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = _onnxruntime().GraphOptimizationLevel.ORT_DISABLE_ALL
    return _onnxruntime().InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])


def optimize_basic(src: str | Path, dst: str | Path) -> None:
    """Write ``src`` with ORT's provider-independent (basic) optimizations applied (constant folding,
    redundant-node removal) to ``dst``; any box's ORT loads the result."""
    so = _onnxruntime().SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = _onnxruntime().GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(dst)
    try:
        _onnxruntime().InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise RuntimeBackendError(f"ONNX Runtime cannot load {src}: {exc}") from exc


def quantize_nbits(model: Any, bits: int = 4, block_size: int = 32, exclude: Sequence[str] = ()) -> Any:
    """Weight-only ``bits``-bit MatMulNBits quantization (symmetric, accuracy_level 4: int8 activations inside
    the kernel) of an ``onnx.ModelProto``'s MatMul weights, nodes in ``exclude`` kept fp32; returns the new
    ModelProto. Raises RuntimeBackendError with ORT's reason."""
    _onnxruntime()
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    try:
        q = MatMulNBitsQuantizer(model, bits=bits, block_size=block_size, is_symmetric=True, accuracy_level=4,
                                 nodes_to_exclude=list(exclude))
        q.process()
    except Exception as exc:
        raise RuntimeBackendError(f"ONNX Runtime's {bits}-bit quantizer failed: {exc}") from exc
    return q.model.model


def quantize_weights(src: str | Path, dst: str | Path, op_types: Sequence[str], signed: bool = True,
                     exclude: Sequence[str] = ()) -> None:
    """Dynamic quantization of the weights of ``op_types`` nodes (int8, or uint8 with ``signed=False``);
    nodes named in ``exclude`` stay fp32. Raises RuntimeBackendError with ORT's reason."""
    _onnxruntime()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    try:
        quantize_dynamic(str(src), str(dst), op_types_to_quantize=list(op_types),
                         weight_type=QuantType.QInt8 if signed else QuantType.QUInt8, nodes_to_exclude=list(exclude))
    except Exception as exc:
        raise RuntimeBackendError(f"ONNX Runtime's quantizer failed on {src}: {exc}") from exc


def quantize_static_qdq(src: str | Path, dst: str | Path, calibration: Sequence[dict[str, Any]],
                        op_types: Sequence[str], exclude: Sequence[str] = (), method: str = "minmax") -> None:
    """Static int8 quantization in QDQ form: per-channel int8 weights and uint8 activations whose ranges are
    calibrated by running ``calibration`` (feeds of the graph's inputs) through it, written as
    QuantizeLinear/DequantizeLinear pairs around each ``op_types`` node (what NPU-class EPs fuse into int8 kernels).
    ``method``: "minmax" or "percentile" (99.999th). Nodes named in ``exclude`` stay fp32. Raises
    RuntimeBackendError with ORT's reason."""
    _onnxruntime()
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}

    class _Feeds(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(calibration)

        def get_next(self) -> dict | None:
            return next(self._it, None)

    pre = Path(dst).with_suffix(".pre.onnx")
    try:
        # shape inference (+ ORT's basic optimizations) so the quantizer knows every tensor's type
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(dst), _Feeds(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=methods[method], op_types_to_quantize=list(op_types),
                        nodes_to_exclude=list(exclude))
    except Exception as exc:
        raise RuntimeBackendError(f"ONNX Runtime's static (QDQ) quantizer failed on {src}: {exc}") from exc
    finally:
        pre.unlink(missing_ok=True)
