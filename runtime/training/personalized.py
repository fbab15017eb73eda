"""Write the personalized model: backbone + tuned head as one plain inference ONNX graph."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Sequence

from ftedge.errors import RuntimeBackendError
from ftedge.bundle.loader import Bundle
from ftedge.durable import atomic_write_bytes, atomic_writer

HEAD_PREFIX = "head::"


def _onnx():  # noqa: ANN202 - onnx ships with onnxruntime-training (pinned 1.17.0)
    try:
        import onnx
        import onnx.compose
    except ImportError as exc:
        raise RuntimeBackendError(f"the onnx package is missing ({exc}); pip install 'ftedge[device]'") from exc
    return onnx


# Protobuf field numbers (onnx.proto) of what the merge rewrites; everything else is copied byte for byte.
_M_IR, _M_PRODUCER, _M_PRODUCER_VERSION, _M_GRAPH, _M_OPSET, _M_METADATA = 1, 2, 3, 7, 8, 14
_G_NAME, _G_INITIALIZER, _G_INPUT, _G_OUTPUT, _G_VALUE_INFO = 2, 5, 11, 12, 13
_T_DIMS, _T_DATA_TYPE, _T_NAME = 1, 2, 8  # TensorProto
_CHUNK = 1 << 20


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise RuntimeBackendError("truncated ONNX file (bad varint); re-export the bundle")
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _fields(f: BinaryIO, start: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
    """(field number, wire type, field start, value start, field end) of each protobuf field in ``f[start:end]``,
    read through small seeks: the weights themselves are never loaded."""
    pos = start
    while pos < end:
        f.seek(pos)
        head = f.read(20)  # a key and a length varint take at most 15 bytes
        key, i = _varint(head, 0)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, j = _varint(head, i)
            value, stop = pos + i, pos + j
        elif wire == 1:
            value = pos + i
            stop = value + 8
        elif wire == 2:
            n, j = _varint(head, i)
            value = pos + j
            stop = value + n
        elif wire == 5:
            value = pos + i
            stop = value + 4
        else:
            raise RuntimeBackendError(f"unsupported protobuf wire type {wire} in the backbone; re-export the bundle")
        if stop > end:
            raise RuntimeBackendError("truncated ONNX file (a field runs past its end); re-export the bundle")
        yield number, wire, pos, value, stop
        pos = stop


def _read(f: BinaryIO, start: int, end: int) -> bytes:
    f.seek(start)
    return f.read(end - start)


def _never() -> bool:
    return False


def _copy(f: BinaryIO, out: BinaryIO, start: int, end: int, should_stop: Callable[[], bool] = _never) -> None:
    f.seek(start)
    left = end - start
    while left:
        if should_stop():
            from ftedge.runtime.data.cache import StopRequested

            raise StopRequested("writing the personalized model stopped on request (cancel or shutdown)")
        chunk = f.read(min(left, _CHUNK))
        if not chunk:
            raise RuntimeBackendError("truncated ONNX file; re-export the bundle")
        out.write(chunk)
        left -= len(chunk)


def write_merged(backbone_path: Path, head_path: Path, bundle: Bundle, out: BinaryIO,
                 should_stop: Callable[[], bool] = _never, outputs: Sequence[str] | None = None) -> None:
    """Backbone graph + head inference graph, joined on the head inputs (inputs/outputs keep their names),
    written to ``out``; its outputs are the head's ``outputs`` (default: the bundle's output).

    The backbone is spliced at the protobuf level: its nodes and weights are copied from the file in chunks
    and never parsed (a transformer backbone is ~90 MB; parsing and re-serializing it tripled the peak
    memory of a training run). Only the small head is handled as an ``onnx`` message.
    """
    onnx = _onnx()
    head = onnx.compose.add_prefix(onnx.load(str(head_path)), HEAD_PREFIX)
    joins = {HEAD_PREFIX + s.name: s.name for s in bundle.head_inputs}
    out_names = {HEAD_PREFIX + n: n for n in (outputs or [bundle.output.name])}
    for node in head.graph.node:
        for i, name in enumerate(node.input):
            name = out_names.get(name, name)
            node.input[i] = joins.get(name, name)
        for i, name in enumerate(node.output):
            node.output[i] = out_names.get(name, name)
    with open(backbone_path, "rb") as f:
        size = f.seek(0, 2)
        model_fields = list(_fields(f, 0, size))
        graph_fields = [g for number, _, _, value, stop in model_fields if number == _M_GRAPH
                        for g in _fields(f, value, stop)]
        model_inputs = {}
        for number, _, _, value, stop in graph_fields:
            if number == _G_INPUT:
                vi = onnx.ValueInfoProto.FromString(_read(f, value, stop))
                model_inputs[vi.name] = vi
        opsets: dict[str, int] = {}
        ir_version = head.ir_version
        for number, _, _, value, stop in model_fields:
            if number == _M_OPSET:
                imp = onnx.OperatorSetIdProto.FromString(_read(f, value, stop))
                opsets[imp.domain] = max(opsets.get(imp.domain, 0), imp.version)
            elif number == _M_IR:
                ir_version = max(ir_version, _varint(_read(f, value, stop), 0)[0])
        for imp in head.opset_import:
            opsets[imp.domain] = max(opsets.get(imp.domain, 0), imp.version)
        head_inputs = {vi.name[len(HEAD_PREFIX):]: vi for vi in head.graph.input}
        tail = onnx.GraphProto(name=f"{bundle.name}-personalized")
        for spec in bundle.inputs:  # passthrough inputs feed the head directly
            vi = model_inputs.get(spec.name) or head_inputs.get(spec.name)
            if vi is not None:
                tail.input.add().CopyFrom(vi)
                tail.input[-1].name = spec.name
        for o in head.graph.output:
            if o.name in out_names:
                tail.output.add().CopyFrom(o)
                tail.output[-1].name = out_names[o.name]
        tail.node.extend(head.graph.node)  # after the backbone's nodes: still topologically sorted
        tail.initializer.extend(head.graph.initializer)
        tail_bytes = tail.SerializeToString()
        top = onnx.ModelProto(ir_version=min(ir_version, 10), producer_name="ftedge")
        top.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in opsets.items())
        out.write(top.SerializeToString())
        for number, _, start, _, stop in model_fields:
            if number not in (_M_IR, _M_PRODUCER, _M_PRODUCER_VERSION, _M_GRAPH, _M_OPSET, _M_METADATA):
                _copy(f, out, start, stop)
        keep = [(start, stop) for number, _, start, _, stop in graph_fields
                if number not in (_G_NAME, _G_INPUT, _G_OUTPUT, _G_VALUE_INFO)]
        length = sum(stop - start for start, stop in keep) + len(tail_bytes)
        out.write(_encode_varint(_M_GRAPH << 3 | 2) + _encode_varint(length))
        for start, stop in keep:
            _copy(f, out, start, stop, should_stop)
        out.write(tail_bytes)


def _tensor_header(f: BinaryIO, start: int, end: int) -> tuple[str, int, list[int]]:
    """(name, data type, dims) of the TensorProto in ``f[start:end]`` without reading its data."""
    name, dtype, dims = "", 0, []
    for number, _, _, value, stop in _fields(f, start, end):
        if number == _T_NAME:
            name = _read(f, value, stop).decode()
        elif number == _T_DATA_TYPE:
            dtype = _varint(_read(f, value, stop), 0)[0]
        elif number == _T_DIMS:
            raw, pos = _read(f, value, stop), 0
            while pos < len(raw):  # packed (wire type 2) holds several varints, unpacked one
                d, pos = _varint(raw, pos)
                dims.append(d)
    return name, dtype, dims


def check_merged(path: Path) -> None:
    """``onnx.checker`` on a written model with each initializer replaced by a graph input of its type and
    shape: the whole structure (nodes, names, opsets, inputs, outputs) is checked, the weights never loaded."""
    onnx = _onnx()
    skeleton, graph, weights = bytearray(), bytearray(), []
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        for number, _, start, value, stop in _fields(f, 0, size):
            if number != _M_GRAPH:
                skeleton += _read(f, start, stop)
                continue
            for g_number, _, g_start, g_value, g_stop in _fields(f, value, stop):
                if g_number == _G_INITIALIZER:
                    weights.append(_tensor_header(f, g_value, g_stop))
                else:
                    graph += _read(f, g_start, g_stop)
    model = onnx.ModelProto.FromString(bytes(skeleton))
    model.graph.ParseFromString(bytes(graph))
    for name, dtype, dims in weights:
        model.graph.input.append(onnx.helper.make_tensor_value_info(name, dtype, dims))
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise RuntimeBackendError(f"the personalized model {path.name} is not a valid ONNX graph ({exc}); nothing was "
                                  "replaced. Re-export the bundle; if it persists, report it with the bundle") from exc


# Files a model's preprocessing reads at run time (role in the bundle); they travel with model.onnx so a run
# directory (or a device agent's model version) can be evaluated on raw data without its bundle.
SIDE_FILES = ("tokenizer",)


def copy_side_files(bundle: Bundle, out_dir: Path) -> list[str]:
    """Copy the bundle's preprocessing files (e.g. ``tokenizer.json``) into ``out_dir``; returns their names."""
    copied = []
    for role in SIDE_FILES:
        rel = (bundle.manifest.get("roles") or {}).get(role)
        if rel:
            atomic_write_bytes(Path(out_dir) / Path(rel).name, bundle.file(role).read_bytes())
            copied.append(Path(rel).name)
    return copied


def bake_initializers(head_path: Path, values: dict, out: Path) -> None:
    """Write ``head_path`` with the initializers named in ``values`` replaced by them and no longer graph inputs
    (the portable engine's ``head.onnx`` takes its trainable parameters as overridable inputs)."""
    onnx = _onnx()
    from onnx import numpy_helper

    model = onnx.load(str(head_path))
    for i, init in enumerate(model.graph.initializer):
        if init.name in values:
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(values[init.name], init.name))
    keep = [vi for vi in model.graph.input if vi.name not in values]
    del model.graph.input[:]
    model.graph.input.extend(keep)
    onnx.save(model, str(out))


def write_personalized(bundle: Bundle, model, out: Path, backbone_role: str = "backbone",  # noqa: ANN001
                       should_stop: Callable[[], bool] = _never, outputs: Sequence[str] | None = None) -> None:
    """``out`` ← the model as trained (current parameters of ``model``, any engine), written atomically; the files its
    preprocessing needs (``tokenizer.json``) are copied next to it first. ``should_stop`` is asked per copied
    chunk of the backbone (StopRequested; nothing is replaced)."""
    out = Path(out)
    copy_side_files(bundle, out.parent)
    with tempfile.TemporaryDirectory() as tmp:
        head = Path(tmp) / "head.onnx"
        model.export_inference(head, [bundle.output.name])
        if bundle.layout != "split":
            atomic_write_bytes(out, head.read_bytes())
            return
        with atomic_writer(out) as f:
            write_merged(bundle.file(backbone_role), head, bundle, f, should_stop, outputs)
            f.flush()
            check_merged(Path(f.name))
