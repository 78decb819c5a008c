"""Small convolutions rewritten as matrix products compute what the convolution nodes compute."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tfvae import onnx_dense


def _model(op, weight, bias, shape, **attributes):
    inputs = ["x", "w"] + (["b"] if bias is not None else [])
    initializers = [numpy_helper.from_array(weight, "w")]
    if bias is not None:
        initializers.append(numpy_helper.from_array(bias, "b"))
    graph = helper.make_graph(
        [helper.make_node(op, inputs, ["c"], name="conv", **attributes),
         helper.make_node("Relu", ["c"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", *shape])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "c", "h", "w"])],
        initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _conv_numpy(x, weight, bias, stride, pads):
    """A direct convolution (cross-correlation, as ONNX `Conv`) in numpy loops."""
    x = np.pad(x, [(0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])])
    out_channels, _, kh, kw = weight.shape
    height = (x.shape[2] - kh) // stride + 1
    width = (x.shape[3] - kw) // stride + 1
    y = np.zeros((len(x), out_channels, height, width))
    for i in range(height):
        for j in range(width):
            patch = x[:, :, i * stride:i * stride + kh, j * stride:j * stride + kw]
            y[:, :, i, j] = np.einsum("bchw,ochw->bo", patch, weight)
    return y + bias[None, :, None, None]


@pytest.mark.parametrize("op, shape, weight_shape, attributes", [
    ("Conv", (3, 5, 4), (6, 3, 3, 3), dict(strides=[2, 2], pads=[1, 1, 1, 1])),
    ("Conv", (4, 3, 3), (2, 2, 2, 2), dict(group=2, pads=[0, 1, 1, 0])),
    ("ConvTranspose", (4, 2, 3), (4, 5, 3, 3), dict(strides=[2, 2], pads=[0, 0, 1, 1])),
])
@pytest.mark.parametrize("with_bias", [True, False])
def test_a_small_convolution_becomes_one_matrix_product_with_the_same_outputs(
        op, shape, weight_shape, attributes, with_bias):
    rng = np.random.default_rng(0)
    weight = rng.standard_normal(weight_shape).astype("float32")
    out_channels = weight_shape[1] * attributes.get("group", 1) if op == "ConvTranspose" else \
        weight_shape[0]
    bias = rng.standard_normal(out_channels).astype("float32") if with_bias else None
    model = _model(op, weight, bias, shape, **attributes)
    x = rng.standard_normal((7, *shape)).astype("float32")
    expected = _run(model, x)
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    assert onnx_dense.dense_convolutions(rewritten) == ["conv"]
    assert {node.op_type for node in rewritten.graph.node} == (
        {"Reshape", "MatMul", "Relu"} | ({"Add"} if with_bias else set()))
    got = _run(rewritten, x)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert _run(rewritten, x[:0]).shape == (0,) + expected.shape[1:]  # an empty batch
    if op == "Conv" and "group" not in attributes:  # the node's own meaning, independently
        direct = _conv_numpy(x, weight, bias if with_bias else np.zeros(out_channels),
                             attributes["strides"][0], attributes["pads"])
        np.testing.assert_allclose(got, np.maximum(direct, 0), rtol=1e-4, atol=1e-4)


def test_large_or_dynamically_shaped_convolutions_stay_convolutions():
    weight = np.ones((2, 3, 3, 3), "float32")
    large = _model("Conv", weight, None, (3, 20, 20), pads=[1, 1, 1, 1])
    assert onnx_dense.dense_convolutions(large, max_elements=1200 * 800 - 1) == []
    assert onnx_dense.dense_convolutions(large, max_elements=1200 * 800) == ["conv"]
    # Enough output channels for ONNX Runtime's blocked kernels: it stays a Conv.
    blocked = _model("Conv", np.ones((onnx_dense.BLOCKED_CHANNELS, 3, 3, 3), "float32"), None,
                     (3, 4, 4), pads=[1, 1, 1, 1])
    assert onnx_dense.dense_convolutions(blocked) == []
    dynamic = _model("Conv", weight, None, (3, "height", "width"), pads=[1, 1, 1, 1])
    assert onnx_dense.dense_convolutions(dynamic) == []
    assert [node.op_type for node in dynamic.graph.node] == ["Conv", "Relu"]


def _conv_transpose_numpy(x, weight, bias, stride, pads, output_padding=(0, 0)):
    """A transposed convolution (ONNX `ConvTranspose`, one group) in numpy loops: each input
    position scatters its kernel-weighted values, then the pads are cut off."""
    batch, _, height, width = x.shape
    _, out_channels, kh, kw = weight.shape
    full = np.zeros((batch, out_channels, (height - 1) * stride + kh + output_padding[0],
                     (width - 1) * stride + kw + output_padding[1]))
    for i in range(height):
        for j in range(width):
            full[:, :, i * stride:i * stride + kh, j * stride:j * stride + kw] += np.einsum(
                "bc,cohw->bohw", x[:, :, i, j], weight)
    out_h = full.shape[2] - pads[0] - pads[2]
    out_w = full.shape[3] - pads[1] - pads[3]
    return full[:, :, pads[0]:pads[0] + out_h, pads[1]:pads[1] + out_w] + bias[None, :, None, None]


@pytest.mark.parametrize("shape, weight_shape, attributes", [
    ((4, 4, 4), (4, 3, 3, 3), dict(strides=[2, 2], pads=[0, 0, 1, 1])),  # Keras "same", k 3
    ((3, 3, 5), (3, 2, 4, 4), dict(strides=[2, 2], pads=[1, 1, 1, 1])),  # k 4: 2 taps per phase
    ((2, 4, 3), (2, 3, 3, 2), dict(strides=[3, 3], pads=[2, 0, 1, 0])),  # empty-ish phases cropped
    ((2, 3, 3), (2, 2, 3, 3), dict(strides=[2, 2], pads=[1, 1, 0, 0], output_padding=[1, 1])),
])
def test_a_larger_strided_transposed_convolution_becomes_a_convolution_per_output_phase(
        shape, weight_shape, attributes):
    rng = np.random.default_rng(1)
    weight = rng.standard_normal(weight_shape).astype("float32")
    bias = rng.standard_normal(weight_shape[1]).astype("float32")
    model = _model("ConvTranspose", weight, bias, shape, **attributes)
    x = rng.standard_normal((5, *shape)).astype("float32")
    expected = _run(model, x)
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    assert onnx_dense.dense_convolutions(rewritten, max_elements=0) == ["conv"]
    ops = [node.op_type for node in rewritten.graph.node]
    assert "ConvTranspose" not in ops and "DepthToSpace" in ops
    # The Relu reading the node's output moved onto each phase's Conv, before the interleave.
    assert ops.index("Relu") < ops.index("DepthToSpace")
    got = _run(rewritten, x)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    direct = _conv_transpose_numpy(x, weight, bias, attributes["strides"][0],
                                   attributes["pads"], attributes.get("output_padding", (0, 0)))
    np.testing.assert_allclose(got, np.maximum(direct, 0), rtol=1e-4, atol=1e-4)
    assert _run(rewritten, x[:0]).shape == (0,) + expected.shape[1:]  # an empty batch
    unchanged = onnx.ModelProto()
    unchanged.CopyFrom(model)
    assert onnx_dense.dense_convolutions(unchanged, max_elements=0, subpixel=False) == []


@pytest.mark.parametrize("attributes", [
    dict(strides=[2, 2], group=2),         # grouped
    dict(strides=[2, 2], dilations=[2, 2]),  # dilated
    dict(strides=[1, 1]),                  # not strided: nothing to gain
    dict(strides=[2, 1]),                  # unequal strides: no DepthToSpace
])
def test_transposed_convolutions_outside_the_sub_pixel_rewrite_stay_as_they_are(attributes):
    weight = np.ones((4, 2, 3, 3), "float32")
    model = _model("ConvTranspose", weight, None, (4, 3, 3), **attributes)
    assert onnx_dense.dense_convolutions(model, max_elements=0) == []
    assert [node.op_type for node in model.graph.node] == ["ConvTranspose", "Relu"]


def test_phases_read_by_a_matrix_product_reach_it_without_the_interleave():
    """`ConvTranspose → Relu → Conv`: the transposed convolution is split into phases and
    the (small) convolution after it, a matrix product, takes the phases as they are."""
    rng = np.random.default_rng(2)
    up = rng.standard_normal((8, 3, 3, 3)).astype("float32")
    up_bias = rng.standard_normal(3).astype("float32")
    out = rng.standard_normal((1, 3, 3, 3)).astype("float32")
    out_bias = rng.standard_normal(1).astype("float32")
    graph = helper.make_graph(
        [helper.make_node("ConvTranspose", ["x", "w", "b"], ["t"], name="up", strides=[2, 2],
                          pads=[0, 0, 1, 1]),
         helper.make_node("Relu", ["t"], ["r"]),
         helper.make_node("Conv", ["r", "v", "c"], ["y"], name="out", pads=[1, 1, 1, 1])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1, 6, 6])],
        [numpy_helper.from_array(value, name) for name, value in
         (("w", up), ("b", up_bias), ("v", out), ("c", out_bias))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((6, 8, 3, 3)).astype("float32")
    hidden = np.maximum(_conv_transpose_numpy(x, up, up_bias, 2, [0, 0, 1, 1]), 0)
    direct = _conv_numpy(hidden, out, out_bias, 1, [1, 1, 1, 1])
    # The dense matrices: up's 72 × 108 entries (too many), out's 108 × 36.
    assert onnx_dense.dense_convolutions(model, max_elements=108 * 36) == ["up", "out"]
    ops = [node.op_type for node in model.graph.node]
    assert "ConvTranspose" not in ops and "DepthToSpace" not in ops and "Concat" not in ops
    assert ops.count("Conv") == 4 and ops.count("MatMul") == 4  # one per phase
    np.testing.assert_allclose(_run(model, x), direct, rtol=1e-4, atol=1e-4)
    assert _run(model, x[:0]).shape == (0, 1, 6, 6)
