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
    dynamic = _model("Conv", weight, None, (3, "height", "width"), pads=[1, 1, 1, 1])
    assert onnx_dense.dense_convolutions(dynamic) == []
    assert [node.op_type for node in dynamic.graph.node] == ["Conv", "Relu"]
