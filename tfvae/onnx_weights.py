"""Each weight once across several ONNX graphs: one shared external-data file.

tfvae exports one ONNX graph per task (`encode`, `decode`, `reconstruct`,
`sample`), and the graphs share networks: the decoder's weights are in three of
them. `share_weights` moves every weight-like initializer of the graphs (a
floating-point, int8 or uint8 tensor with at least `MIN_ELEMENTS` elements) into one file
beside them, stored once per distinct content, and makes each graph refer to it
with ONNX's external-data fields (`location`, `offset`, `length`). ONNX Runtime
and `onnx.load` read such graphs from their path unchanged; the file must stay
beside the graphs (`location` is relative to the graph's directory).

Identical tensors are found by content (dtype, shape and bytes), so the same
weight converted into two graphs is stored once whatever it is called there.
"""

import hashlib
import os

from tfvae import files

__all__ = [
    "ALIGNMENT",
    "external_ranges",
    "graph_bytes",
    "MIN_ELEMENTS",
    "share_weights",
]

# Smaller tensors (shape constants, scalars) stay inside the graphs.
MIN_ELEMENTS = 2
# Offsets in the shared file are multiples of this (aligned loads).
ALIGNMENT = 64


def _is_weight(tensor):
    from onnx import TensorProto

    # Floats, and the int8 / uint8 weights of quantized graphs (not int64 shapes).
    weight_types = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16,
                    TensorProto.BFLOAT16, TensorProto.INT8, TensorProto.UINT8}
    elements = 1
    for size in tensor.dims:
        elements *= size
    return (tensor.data_type in weight_types and elements >= MIN_ELEMENTS
            and tensor.data_location != TensorProto.EXTERNAL)


def _bytes(tensor):
    from onnx import numpy_helper

    return numpy_helper.to_array(tensor).tobytes()


def share_weights(paths, weights_path):
    """Rewrites the ONNX graphs at `paths` to keep their weights in `weights_path`, once.

    Every initializer for which `_is_weight` holds (int8 weights too, for
    quantized graphs) is written to `weights_path` (a new file in the graphs'
    directory) at most once per distinct content and replaced in each graph by
    a reference to it; the graphs are written back in place, fsynced.

    Args:
      paths: the `.onnx` files, all in one directory.
      weights_path: the shared file to create, in that directory.

    Returns:
      `{"file": basename, "bytes": size, "tensors": distinct tensors stored,
      "references": initializers that refer to them}`.

    Raises:
      ValueError: if a graph is not in `weights_path`'s directory.
    """
    import onnx
    from onnx import TensorProto

    directory = os.path.dirname(os.path.abspath(weights_path))
    for path in paths:
        if os.path.dirname(os.path.abspath(path)) != directory:
            raise ValueError(
                f"Received an invalid value for `paths`: every graph must be in {directory} "
                f"beside the weights file. Received: {path!r}")
    location = os.path.basename(weights_path)
    stored = {}  # content digest → (offset, length)
    references = 0
    protos = {path: onnx.load(path) for path in paths}
    with open(weights_path, "wb") as f:
        for path, proto in protos.items():
            for tensor in proto.graph.initializer:
                if not _is_weight(tensor):
                    continue
                data = _bytes(tensor)
                key = hashlib.sha256(
                    repr((tensor.data_type, list(tensor.dims))).encode() + data).hexdigest()
                if key not in stored:
                    offset = f.tell()
                    padding = -offset % ALIGNMENT
                    f.write(b"\0" * padding)
                    stored[key] = (offset + padding, len(data))
                    f.write(data)
                offset, length = stored[key]
                tensor.ClearField("raw_data")
                for field in ("float_data", "int32_data", "int64_data", "double_data",
                              "uint64_data", "string_data"):
                    tensor.ClearField(field)
                del tensor.external_data[:]
                for name, value in (("location", location), ("offset", str(offset)),
                                    ("length", str(length))):
                    entry = tensor.external_data.add()
                    entry.key, entry.value = name, value
                tensor.data_location = TensorProto.EXTERNAL
                references += 1
        files.fsync_file(f)
    for path, proto in protos.items():
        with open(path, "wb") as f:
            f.write(proto.SerializeToString())
            files.fsync_file(f)
        onnx.checker.check_model(path)  # by path: the external data is checked too
    return {"file": location, "bytes": os.path.getsize(weights_path), "tensors": len(stored),
            "references": references}


def external_ranges(path):
    """`{(location, offset, length)}`: the external-data ranges the graph at `path` reads."""
    import onnx
    from onnx import TensorProto

    proto = onnx.load(path, load_external_data=False)
    ranges = set()
    for tensor in proto.graph.initializer:
        if tensor.data_location == TensorProto.EXTERNAL:
            info = {entry.key: entry.value for entry in tensor.external_data}
            ranges.add((info["location"], int(info.get("offset", 0)),
                        int(info.get("length", -1))))
    return ranges




def graph_bytes(path):
    """What the graph at `path` needs on its own: its file plus its distinct external ranges."""
    return os.path.getsize(path) + sum(length for _, _, length in external_ranges(path))
