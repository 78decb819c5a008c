"""Convolutions in an ONNX graph rewritten for ONNX Runtime's CPU kernels.

ONNX Runtime's CPU `ConvTranspose` runs one small GEMM and a col2im per image
(it gains nothing from a second intra-op thread), and its `Conv` with few
output channels pads them to a block of 16, so a batch of tiny feature maps
(tfvae's conv networks on 8×8 digits: a 2×2×64 map, an 8×8×32 map to one
channel) costs several times what TensorFlow's oneDNN kernels take.
`dense_convolutions` rewrites each `Conv` / `ConvTranspose` with constant
weights and static feature-map shapes (a `Conv` with `BLOCKED_CHANNELS` or
more output channels stays: ORT's blocked NCHWc kernels run it well) two ways:

* **One matrix product.** A convolution is a linear map of its whole input: on
  an input of `C × H × W` values it is `x ↦ x · M + b` with `M` of shape
  `[C·H·W, C'·H'·W']`. A node whose `M` has at most `MAX_ELEMENTS` entries
  becomes `Reshape → MatMul(M) → Add(b) → Reshape`: one large GEMM for the
  whole batch. `M` is computed by ONNX Runtime itself, running the node
  (without its bias) on the identity basis, so strides, pads, dilations, groups
  and output padding mean exactly what they meant in the node.
* **One convolution per output phase.** A larger strided `ConvTranspose`
  (stride s in both directions, one group, no dilation) is s² ordinary
  convolutions of its input, one per output phase: output position
  `o = q·s + r` (before the pads) sums `x[q − j] · w[j·s + r]` over the taps j
  of phase r. Each phase becomes a `Conv` with its own taps, flipped (ORT's
  blocked kernels, parallel over the batch; no multiplications by zero), and
  `Concat → DepthToSpace(s)` (→ `Slice` where the pads crop) interleaves them —
  unless a rewritten matrix product alone reads the result: then each phase
  goes straight into it (one `MatMul` per phase, rows of `M` permuted to the
  phase's layout, and a `Sum`), since the interleave is a permutation and
  ORT's `DepthToSpace` copies slowly. The phase `Conv`s are checked against
  the node on random input, and the node stays if they differ.

A `Relu` that alone reads a rewritten node's output moves before the final
`Reshape` / interleave (the element-wise op commutes with them), where ONNX
Runtime fuses it into the `Gemm` / `Conv`. The rewritten graph sums in another
order, so outputs move by float rounding only (~1e-6).
"""


import numpy as np

__all__ = [
    "BLOCKED_CHANNELS",
    "dense_convolutions",
    "MAX_ELEMENTS",
]

# The largest dense matrix (entries) a convolution is replaced by: 1 MiB of float32.
MAX_ELEMENTS = 1 << 18
# A `Conv` with at least this many output channels stays a `Conv`: ONNX Runtime runs it
# with its blocked (NCHWc) kernels, faster than the dense matrix (which multiplies zeros).
BLOCKED_CHANNELS = 16
_OPS = ("Conv", "ConvTranspose")
# Largest |rewritten − node| on the check's random input, relative to the output's scale.
_CHECK_TOLERANCE = 1e-4


def _static_shape(value_info):
    dims = value_info.type.tensor_type.shape.dim
    shape = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    return shape if len(shape) == 4 and all(shape[1:]) else None


def _session(nodes, initializers, input_shape, opset=17):
    """An ONNX Runtime session (one thread) of `nodes` from input `x [*, *input_shape]` to `y`."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        nodes, "check", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                       [None, *input_shape])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.asarray(value), name) for name, value in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def _single(node, bias=None):
    """`node` alone, reading `x`, `w` (and `b`) and writing `y`: `(nodes, initializers)`."""
    from onnx import helper

    inputs = ["x", "w"] + (["b"] if bias is not None else [])
    single = helper.make_node(node.op_type, inputs, ["y"], name="single")
    single.attribute.extend(node.attribute)
    return [single], ({} if bias is None else {"b": bias})


def _node_output(node, weight, input_shape):
    """Runs `node` (bias dropped) on the identity basis of its `[C, H, W]` input: `[C·H·W,
    C', H', W']`."""
    nodes, _ = _single(node)
    session = _session(nodes, {"w": weight}, input_shape)
    size = int(np.prod(input_shape))
    basis = np.eye(size, dtype=np.float32).reshape(size, *input_shape)
    return session.run(None, {"x": basis})[0]


def _attributes(node):
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _dense(prefix, sources, target, matrix, bias, out_shape, activation):
    """`Reshape → MatMul → [Add] → [activation] → Reshape`: `(nodes, initializers)`.

    `sources` are `(name, rows)`: the input tensors, each flattened to `[B, len(rows)]`;
    `rows` picks each flattened value's row of `matrix` (−1: a value the product ignores).
    Several sources give one `MatMul` each and their `Sum`."""
    from onnx import helper

    new = {f"{prefix}_shape": np.array([-1, *out_shape], np.int64)}
    nodes, products = [], []
    for index, (source, rows) in enumerate(sources):
        name = prefix if len(sources) == 1 else f"{prefix}{index}"
        block = np.where(rows[:, None] >= 0, matrix[np.maximum(rows, 0)], 0).astype(np.float32)
        new[f"{name}_matrix"] = block
        new[f"{name}_rows"] = np.array([-1, len(rows)], np.int64)
        nodes.append(helper.make_node("Reshape", [source, f"{name}_rows"], [f"{name}_flat"],
                                      name=f"{name}_flatten"))
        nodes.append(helper.make_node("MatMul", [f"{name}_flat", f"{name}_matrix"],
                                      [f"{name}_product"], name=f"{name}_matmul"))
        products.append(f"{name}_product")
    product = products[0]
    if len(products) > 1:
        product = f"{prefix}_product"
        nodes.append(helper.make_node("Sum", products, [product], name=f"{prefix}_sum"))
    if bias is not None:
        new[f"{prefix}_bias"] = np.repeat(bias, int(np.prod(out_shape[1:])))
        nodes.append(helper.make_node("Add", [product, f"{prefix}_bias"], [f"{prefix}_biased"],
                                      name=f"{prefix}_add"))
        product = f"{prefix}_biased"
    if activation is not None:
        nodes.append(helper.make_node(activation, [product], [f"{prefix}_activated"],
                                      name=f"{prefix}_{activation.lower()}"))
        product = f"{prefix}_activated"
    nodes.append(helper.make_node("Reshape", [product, f"{prefix}_shape"], [target],
                                  name=f"{prefix}_unflatten"))
    return nodes, new


def _phase_grid(stride, pad_begin, out_size):
    """One spatial dimension of the sub-pixel rewrite: `(first, count, crop)` — the first
    and the number of positions q of the phases' grid the node's output needs, and where
    the output starts on the interleaved grid (`(first + i)·s + r − pad_begin` is output
    position `i·s + r − crop`)."""
    first, last = pad_begin // stride, (pad_begin + out_size - 1) // stride
    return first, last - first + 1, pad_begin - first * stride


def _phase_conv(prefix, source, weight, bias, stride, phase, grids, in_shape):
    """The `Conv` computing output phase `phase = (r_h, r_w)` of a transposed convolution
    on the grid `grids`: `(node, initializers)`, or `None` if it needs negative pads."""
    from onnx import helper

    # A phase without taps (kernel < stride) gets one zero tap: its outputs are the bias.
    weight = np.pad(weight, [(0, 0), (0, 0), (0, max(stride - weight.shape[2], 0)),
                             (0, max(stride - weight.shape[3], 0))])
    rows = list(range(phase[0], weight.shape[2], stride))
    cols = list(range(phase[1], weight.shape[3], stride))
    pads = []
    for taps, (first, count, _), size in zip((len(rows), len(cols)), grids, in_shape[1:]):
        left = taps - 1 - first
        pads.append((left, count - size - left + taps - 1))
    if min(min(p) for p in pads) < 0:
        return None
    # kernel[c, ci, m_h, m_w] = w[ci, c, rows[J_h − 1 − m_h], cols[J_w − 1 − m_w]]: flipped taps.
    kernel = weight[:, :, rows[::-1]][:, :, :, cols[::-1]].transpose(1, 0, 2, 3)
    name = f"{prefix}_phase{phase[0]}{phase[1]}"
    new = {f"{name}_kernel": np.ascontiguousarray(kernel)}
    inputs = [source, f"{name}_kernel"]
    if bias is not None:
        new[f"{name}_bias"] = bias
        inputs.append(f"{name}_bias")
    node = helper.make_node("Conv", inputs, [name], name=name, kernel_shape=list(kernel.shape[2:]),
                            pads=[pads[0][0], pads[1][0], pads[0][1], pads[1][1]])
    return node, new


def _phases(prefix, source, node, weight, bias, in_shape, out_shape, activation):
    """A strided `ConvTranspose` as one `Conv` (→ [activation]) per output phase:
    `(nodes, initializers, phases, grid)`, `phases` a list of `(output name, rows)` —
    `rows[i]` is where value i of the phase's flattened `[C', Q_h, Q_w]` output lies in
    the node's flattened `[C', H', W']` output (−1: cropped by the pads), `grid` what
    `_interleaved` needs — or `None` where the node is not of that kind."""
    from onnx import helper

    attributes = _attributes(node)
    strides = list(attributes.get("strides", [1, 1]))
    auto_pad = attributes.get("auto_pad", b"NOTSET")
    if (attributes.get("group", 1) != 1 or any(d != 1 for d in attributes.get("dilations", [1, 1]))
            or auto_pad not in (b"NOTSET", "NOTSET") or "output_shape" in attributes
            or len(strides) != 2 or strides[0] != strides[1] or strides[0] < 2):
        return None
    stride = strides[0]
    pads = list(attributes.get("pads", [0, 0, 0, 0]))
    grids = [_phase_grid(stride, pads[axis], out_shape[1 + axis]) for axis in (0, 1)]
    (_, count_h, crop_h), (_, count_w, crop_w) = grids
    channels, height, width = out_shape
    nodes, new, phases = [], {}, []
    for phase in [(r_h, r_w) for r_h in range(stride) for r_w in range(stride)]:
        conv = _phase_conv(prefix, source, weight, bias, stride, phase, grids, in_shape)
        if conv is None:
            return None
        nodes.append(conv[0])
        new.update(conv[1])
        output = conv[0].output[0]
        if activation is not None:  # on each phase, where ONNX Runtime fuses it into the Conv
            nodes.append(helper.make_node(activation, [output], [f"{output}_activated"],
                                          name=f"{output}_{activation.lower()}"))
            output = f"{output}_activated"
        c, q_h, q_w = np.meshgrid(np.arange(channels), np.arange(count_h), np.arange(count_w),
                                  indexing="ij")
        o_h, o_w = q_h * stride + phase[0] - crop_h, q_w * stride + phase[1] - crop_w
        inside = (o_h >= 0) & (o_h < height) & (o_w >= 0) & (o_w < width)
        rows = np.where(inside, (c * height + o_h) * width + o_w, -1).ravel()
        phases.append((output, rows))
    return nodes, new, phases, (crop_h, crop_w, count_h, count_w)


def _interleaved(prefix, phases, target, stride, grid, out_shape, opset):
    """The phases' outputs (`_phases`) as the transposed convolution's output `target`:
    `Concat` (channel (r_h·s + r_w)·C' + c: DepthToSpace's DCR order) → `DepthToSpace`
    → [`Slice`, where the pads crop the interleaved `grid` `(crop_h, crop_w, Q_h, Q_w)`]."""
    from onnx import helper

    crop_h, crop_w, count_h, count_w = grid
    cropped = (crop_h, crop_w, count_h * stride, count_w * stride) != (0, 0, *out_shape[1:])
    nodes = [helper.make_node("Concat", [name for name, _ in phases], [f"{prefix}_phases"],
                              name=f"{prefix}_concat", axis=1)]
    mode = {"mode": "DCR"} if opset >= 11 else {}  # DepthToSpace-1 is DCR
    nodes.append(helper.make_node("DepthToSpace", [f"{prefix}_phases"],
                                  [f"{prefix}_grid" if cropped else target],
                                  name=f"{prefix}_depth_to_space", blocksize=stride, **mode))
    new = {}
    if cropped:
        new[f"{prefix}_starts"] = np.array([crop_h, crop_w], np.int64)
        new[f"{prefix}_ends"] = np.array([crop_h + out_shape[1], crop_w + out_shape[2]], np.int64)
        new[f"{prefix}_axes"] = np.array([2, 3], np.int64)
        nodes.append(helper.make_node(
            "Slice", [f"{prefix}_grid", f"{prefix}_starts", f"{prefix}_ends", f"{prefix}_axes"],
            [target], name=f"{prefix}_crop"))
    return nodes, new


def _agrees(node, weight, bias, in_shape, nodes, initializers, opset):
    """Whether the rewrite `nodes` (from `x` to `y`, activation left out) computes what
    `node` computes, on random input."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, *in_shape)).astype(np.float32)
    single, single_initializers = _single(node, bias)
    expected = _session(single, {"w": weight, **single_initializers}, in_shape).run(
        None, {"x": x})[0]
    got = _session(nodes, initializers, in_shape, max(opset, 11)).run(None, {"x": x})[0]
    scale = max(float(np.abs(expected).max()), 1.0)
    return got.shape == expected.shape and float(np.abs(got - expected).max()) <= (
        _CHECK_TOLERANCE * scale)


def _plan(node, shapes, initializers, consumers, graph_outputs, max_elements, subpixel, opset):
    """What `node` becomes: `None` (it stays), or a dict with its `kind` (`"dense"`: its
    `matrix`; `"phases"`: `_phases`' nodes, initializers, phases and grid), its `bias`,
    `target` (the tensor the rewrite writes) and `relu` (the `Relu` it absorbs, if any)."""
    from onnx import numpy_helper

    if node.op_type not in _OPS or len(node.input) < 2 or node.input[1] not in initializers:
        return None
    bias_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
    shape = _static_shape(shapes[node.input[0]]) if node.input[0] in shapes else None
    out_shape = _static_shape(shapes[node.output[0]]) if node.output[0] in shapes else None
    weight = numpy_helper.to_array(initializers[node.input[1]])
    if (shape is None or out_shape is None or weight.dtype != np.float32
            or (bias_name is not None and bias_name not in initializers)):
        return None
    bias = (None if bias_name is None
            else numpy_helper.to_array(initializers[bias_name]).astype(np.float32))
    readers = consumers.get(node.output[0], [])
    relu = (readers[0] if len(readers) == 1 and readers[0].op_type == "Relu"
            and node.output[0] not in graph_outputs else None)
    plan = {"bias": bias, "relu": relu, "out_shape": out_shape[1:],
            "target": relu.output[0] if relu is not None else node.output[0]}
    activation = "Relu" if relu is not None else None
    size = int(np.prod(shape[1:]))
    blocked = node.op_type == "Conv" and out_shape[1] >= BLOCKED_CHANNELS
    if not blocked and size * int(np.prod(out_shape[1:])) <= max_elements:
        response = _node_output(node, weight, shape[1:])
        if list(response.shape[1:]) != out_shape[1:]:
            return None
        return {**plan, "kind": "dense", "matrix": response.reshape(size, -1), "size": size}
    if not subpixel or node.op_type != "ConvTranspose":
        return None
    prefix = f"{node.name or node.output[0]}_subpixel"
    rewrite = _phases(prefix, node.input[0], node, weight, bias, shape[1:], out_shape[1:],
                      activation)
    if rewrite is None:
        return None
    # The rewrite, checked against the node itself (without the activation).
    check, check_initializers, phases, grid = _phases(prefix, "x", node, weight, bias,
                                                      shape[1:], out_shape[1:], None)
    stride = _attributes(node)["strides"][0]
    interleave, interleave_initializers = _interleaved(prefix, phases, "y", stride, grid,
                                                       out_shape[1:], opset)
    if not _agrees(node, weight, bias, shape[1:], check + interleave,
                   {**check_initializers, **interleave_initializers}, opset):
        return None
    nodes, new, phases, grid = rewrite
    return {**plan, "kind": "phases", "prefix": prefix, "nodes": nodes, "initializers": new,
            "phases": phases, "grid": grid, "stride": stride}


def dense_convolutions(proto, max_elements=None, subpixel=True):
    """Rewrites, in place, each float `Conv` / `ConvTranspose` of `proto` (an ONNX
    `ModelProto`) with constant weights, a constant or absent bias and input and output
    of static `[*, C, H, W]` shapes: as `Reshape → MatMul → Add → Reshape` where its dense
    matrix has at most `max_elements` entries (default `MAX_ELEMENTS`), else (a strided
    `ConvTranspose`, with `subpixel`) as one `Conv` per output phase, interleaved by
    `DepthToSpace` — or, where a rewritten matrix product alone reads it, handed to that
    product as they are (the product's matrix rows permuted instead). A `Relu` reading
    only the node's output is folded into the rewrite. Returns the names of the rewritten
    nodes."""
    import onnx
    from onnx import numpy_helper

    if max_elements is None:
        max_elements = MAX_ELEMENTS
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 17)
    inferred = onnx.shape_inference.infer_shapes(proto)
    shapes = {value.name: value for value in list(inferred.graph.value_info)
              + list(inferred.graph.input) + list(inferred.graph.output)}
    initializers = {t.name: t for t in proto.graph.initializer}
    graph_outputs = {value.name for value in proto.graph.output}
    consumers = {}
    for node in proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    plans = {}
    for node in proto.graph.node:
        plan = _plan(node, shapes, initializers, consumers, graph_outputs, max_elements,
                     subpixel, opset)
        if plan is not None:
            plans[id(node)] = plan
    # Phases that only a dense rewrite reads go to it as they are: no interleave.
    handed = {}
    for plan in plans.values():
        if plan["kind"] != "phases":
            continue
        readers = consumers.get(plan["target"], [])
        reader = plans.get(id(readers[0])) if len(readers) == 1 else None
        if (reader is not None and reader["kind"] == "dense"
                and readers[0].input[0] == plan["target"]
                and plan["target"] not in graph_outputs):
            handed[plan["target"]] = plan["phases"]
        else:
            interleave, new = _interleaved(plan["prefix"], plan["phases"], plan["target"],
                                           plan["stride"], plan["grid"], plan["out_shape"],
                                           opset)
            plan["nodes"] = plan["nodes"] + interleave
            plan["initializers"] = {**plan["initializers"], **new}
    replaced, nodes, absorbed = [], [], set()
    for node in proto.graph.node:
        if id(node) in absorbed:
            continue
        plan = plans.get(id(node))
        if plan is None:
            nodes.append(node)
            continue
        activation = "Relu" if plan["relu"] is not None else None
        if plan["kind"] == "dense":
            sources = handed.get(node.input[0], [(node.input[0], np.arange(plan["size"]))])
            new_nodes, new = _dense(f"{node.name or node.output[0]}_dense", sources,
                                    plan["target"], plan["matrix"], plan["bias"],
                                    plan["out_shape"], activation)
        else:
            new_nodes, new = plan["nodes"], plan["initializers"]
        nodes.extend(new_nodes)
        if plan["relu"] is not None:
            absorbed.add(id(plan["relu"]))
        proto.graph.initializer.extend(numpy_helper.from_array(np.asarray(value), name)
                                       for name, value in new.items())
        replaced.append(node.name)
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    if replaced:  # weights the replaced nodes alone used; shapes of names no longer made
        used = {name for node in proto.graph.node for name in node.input}
        kept = [t for t in proto.graph.initializer if t.name in used]
        del proto.graph.initializer[:]
        proto.graph.initializer.extend(kept)
        made = {name for node in proto.graph.node for name in node.output}
        kept_info = [v for v in proto.graph.value_info if v.name in made]
        del proto.graph.value_info[:]
        proto.graph.value_info.extend(kept_info)
        onnx.checker.check_model(proto)
    return replaced
