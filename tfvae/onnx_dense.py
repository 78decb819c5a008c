"""Small convolutions in an ONNX graph as one matrix product each.

ONNX Runtime's CPU `ConvTranspose` runs one small GEMM and a col2im per image,
and its `Conv` with few output channels is slow too, so a batch of tiny
feature maps (tfvae's conv networks on 8×8 digits: a 2×2×64 map, an 8×8×32
map to one channel) costs several times what TensorFlow's oneDNN kernels
take. A convolution is a linear map of its whole input: on an input of
`C × H × W` values it is `x ↦ x · M + b` with `M` of shape
`[C·H·W, C'·H'·W']`. `dense_convolutions` replaces every `Conv` /
`ConvTranspose` whose `M` has at most `MAX_ELEMENTS` entries by
`Reshape → MatMul(M) → Add(b) → Reshape`: one large GEMM for the whole batch.

`M` is computed by ONNX Runtime itself, running the node (without its bias) on
the identity basis, so strides, pads, dilations, groups and output padding mean
exactly what they meant in the node; each entry is one kernel weight or a
zero (a sum of at most one product per pair of input and output positions for
tfvae's stride ≤ kernel convolutions), and the bias `b` is the node's
per-channel bias repeated over positions. The product sums in another order,
so outputs move by float rounding only (~1e-6).
"""

import numpy as np

# The largest dense matrix (entries) a convolution is replaced by: 1 MiB of float32.
MAX_ELEMENTS = 1 << 18
_OPS = ("Conv", "ConvTranspose")


def _static_shape(value_info):
    dims = value_info.type.tensor_type.shape.dim
    shape = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    return shape if len(shape) == 4 and all(shape[1:]) else None


def _node_output(node, weight, input_shape):
    """Runs `node` (bias dropped) on the identity basis of its `[C, H, W]` input: `[C·H·W,
    C', H', W']`."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    channels, height, width = input_shape
    size = channels * height * width
    single = helper.make_node(node.op_type, ["x", "w"], ["y"], name="single")
    single.attribute.extend(node.attribute)
    graph = helper.make_graph(
        [single], "dense", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                          [None, channels, height, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    basis = np.eye(size, dtype=np.float32).reshape(size, channels, height, width)
    return session.run(None, {"x": basis})[0]


def dense_convolutions(proto, max_elements=None):
    """Replaces, in place, each float `Conv` / `ConvTranspose` of `proto` (an ONNX
    `ModelProto`) with constant weights, a constant or absent bias and an input of
    static `[*, C, H, W]` shape whose dense matrix has at most `max_elements` entries
    (default `MAX_ELEMENTS`), by `Reshape → MatMul → Add → Reshape`. Returns the names
    of the replaced nodes."""
    import onnx

    if max_elements is None:
        max_elements = MAX_ELEMENTS
    from onnx import helper, numpy_helper

    inferred = onnx.shape_inference.infer_shapes(proto)
    shapes = {value.name: value for value in list(inferred.graph.value_info)
              + list(inferred.graph.input) + list(inferred.graph.output)}
    initializers = {t.name: t for t in proto.graph.initializer}
    replaced, nodes = [], []
    for node in proto.graph.node:
        if node.op_type not in _OPS or len(node.input) < 2 or node.input[1] not in initializers:
            nodes.append(node)
            continue
        bias_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
        shape = _static_shape(shapes[node.input[0]]) if node.input[0] in shapes else None
        weight = numpy_helper.to_array(initializers[node.input[1]])
        if (shape is None or weight.dtype != np.float32
                or (bias_name is not None and bias_name not in initializers)):
            nodes.append(node)
            continue
        size = int(np.prod(shape[1:]))
        out_shape = _static_shape(shapes[node.output[0]]) if node.output[0] in shapes else None
        if out_shape is None or size * int(np.prod(out_shape[1:])) > max_elements:
            nodes.append(node)
            continue
        response = _node_output(node, weight, shape[1:])
        if list(response.shape[1:]) != out_shape[1:]:
            nodes.append(node)
            continue
        matrix = response.reshape(size, -1)
        prefix = f"{node.name or node.output[0]}_dense"
        new = {f"{prefix}_matrix": matrix,
               f"{prefix}_rows": np.array([-1, size], np.int64),
               f"{prefix}_shape": np.array([-1, *out_shape[1:]], np.int64)}
        nodes.append(helper.make_node("Reshape", [node.input[0], f"{prefix}_rows"],
                                      [f"{prefix}_flat"], name=f"{prefix}_flatten"))
        product = f"{prefix}_product"
        nodes.append(helper.make_node("MatMul", [f"{prefix}_flat", f"{prefix}_matrix"],
                                      [product], name=f"{prefix}_matmul"))
        if bias_name is not None:
            bias = numpy_helper.to_array(initializers[bias_name]).astype(np.float32)
            new[f"{prefix}_bias"] = np.repeat(bias, int(np.prod(out_shape[2:])))
            nodes.append(helper.make_node("Add", [product, f"{prefix}_bias"],
                                          [f"{prefix}_biased"], name=f"{prefix}_add"))
            product = f"{prefix}_biased"
        nodes.append(helper.make_node("Reshape", [product, f"{prefix}_shape"], [node.output[0]],
                                      name=f"{prefix}_unflatten"))
        proto.graph.initializer.extend(numpy_helper.from_array(value, name)
                                       for name, value in new.items())
        replaced.append(node.name)
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    if replaced:  # weights the replaced nodes alone used
        used = {name for node in proto.graph.node for name in node.input}
        kept = [t for t in proto.graph.initializer if t.name in used]
        del proto.graph.initializer[:]
        proto.graph.initializer.extend(kept)
        onnx.checker.check_model(proto)
    return replaced
