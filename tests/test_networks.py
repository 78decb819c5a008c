"""Tests for tfvae.networks: shapes, an independent numpy forward pass, config round
trips, gradient flow and constructor checks."""

import math

import numpy as np
import pytest
import keras
import tensorflow as tf

from tfvae import heads
from tfvae import networks

from helpers import BAD_POSITIVE_INTS, invalid

BATCH = 3


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(2024)


def _inputs(shape, seed=0):
    return tf.constant(np.random.default_rng(seed).standard_normal((BATCH, *shape)), tf.float32)


def _relu(x):
    return np.maximum(x, 0.0)


# ---------------------------------------------------------------------------
# MLP.


@pytest.mark.parametrize("input_shape", [(5,), (3, 4, 2)], ids=["vector", "image"])
@pytest.mark.parametrize("hidden_units", [(), (6,), (6, 4)])
def test_mlp_output_shape_and_numpy_forward_pass(input_shape, hidden_units):
    mlp = networks.MLP(7, hidden_units=hidden_units)
    x = _inputs(input_shape)
    y = mlp(x)
    assert tuple(y.shape) == (BATCH, 7)
    assert tuple(mlp.compute_output_shape((None, *input_shape))) == (None, 7)
    assert len(mlp.trainable_variables) == 2 * (len(hidden_units) + 1)
    # Independent forward pass: row-major flatten, relu hidden layers, linear output.
    h = x.numpy().reshape(BATCH, -1).astype(np.float64)
    for layer in mlp.hidden:
        h = _relu(h @ layer.kernel.numpy() + layer.bias.numpy())
    expected = h @ mlp.out.kernel.numpy() + mlp.out.bias.numpy()
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------
# Convolutional encoder and decoder.


@pytest.mark.parametrize("image_shape", [(7, 5, 3), (8, 8, 1), (1, 1, 1)])
@pytest.mark.parametrize("filters", [(4,), (4, 3), (2, 3, 4)])
def test_conv_encoder_output_shape(image_shape, filters):
    encoder = networks.ConvEncoder(6, filters=filters)
    y = encoder(_inputs(image_shape))
    assert tuple(y.shape) == (BATCH, 6)
    assert tuple(encoder.compute_output_shape((None, *image_shape))) == (None, 6)
    # Each stride-2 "same" convolution maps n -> ceil(n / 2).
    h, w, _ = image_shape
    for _ in filters:
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    assert tuple(encoder.out.kernel.shape) == (h * w * filters[-1], 6)


@pytest.mark.parametrize("input_shape", [(5,), (4, 4)], ids=["rank2", "rank3"])
def test_conv_encoder_rejects_non_image_input(input_shape):
    encoder = networks.ConvEncoder(4, filters=(2,))
    with pytest.raises(ValueError, match="height, width, channels"):
        encoder(_inputs(input_shape))


@pytest.mark.parametrize("output_shape", [(7, 5, 6), (8, 8, 1), (1, 1, 2), (9, 3, 1)])
@pytest.mark.parametrize("filters", [(4,), (4, 3)])
def test_conv_decoder_output_shape(output_shape, filters):
    decoder = networks.ConvDecoder(output_shape, filters=filters)
    y = decoder(_inputs((2,)))
    assert tuple(y.shape) == (BATCH, *output_shape)
    assert tuple(decoder.compute_output_shape((None, 2))) == (None, *output_shape)
    assert np.all(np.isfinite(y.numpy()))
    n = len(filters)
    start = math.ceil(output_shape[0] / 2**n) * math.ceil(output_shape[1] / 2**n)
    assert tuple(decoder.project.kernel.shape) == (2, start * filters[0])


def test_conv_decoder_default_filters():
    y = networks.ConvDecoder((7, 5, 6))(_inputs((3,)))
    assert tuple(y.shape) == (BATCH, 7, 5, 6)


@pytest.mark.parametrize("output_shape", [(8, 8), (8,), (2, 2, 2, 1)])
def test_conv_decoder_rejects_non_image_output_shape(output_shape):
    with pytest.raises(ValueError, match="output_shape"):
        networks.ConvDecoder(output_shape)


@pytest.mark.parametrize(
    "head",
    [
        heads.GaussianLikelihood((7, 5, 3), scale="predicted"),
        heads.DiscretizedLogisticLikelihood((7, 5, 3), num_levels=5),
        heads.CategoricalPixelLikelihood((7, 5, 1), num_levels=5),
    ],
    ids=["gaussian_predicted", "discretized_logistic", "categorical"],
)
def test_conv_decoder_feeds_likelihood_head(head):
    h, w, c = head.event_shape
    decoder = networks.ConvDecoder((h, w, c * head.params_per_element), filters=(4, 3))
    dist = head(decoder(_inputs((2,))))
    assert dist.batch_shape.as_list() == [BATCH]
    assert tuple(dist.event_shape.as_list()) == (h, w, c)


# ---------------------------------------------------------------------------
# Config round trips and gradients, for every network.


NETWORKS = [
    pytest.param(lambda: networks.MLP(4, hidden_units=(6, 5)), (5,), id="mlp_vector"),
    pytest.param(lambda: networks.MLP(4, hidden_units=(6,), activation="tanh"), (3, 4, 2), id="mlp_image"),
    pytest.param(lambda: networks.ConvEncoder(4, filters=(3, 2)), (7, 5, 3), id="conv_encoder"),
    pytest.param(
        lambda: networks.ConvEncoder(4, filters=(3,), kernel_size=2, dense_units=(5,), activation="tanh"),
        (8, 8, 1),
        id="conv_encoder_dense",
    ),
    pytest.param(lambda: networks.ConvDecoder((7, 5, 6), filters=(3, 2)), (2,), id="conv_decoder"),
    pytest.param(
        lambda: networks.ConvDecoder((8, 8, 1), filters=(3,), kernel_size=2, dense_units=(5,)),
        (2,),
        id="conv_decoder_dense",
    ),
]


@pytest.mark.parametrize("make, input_shape", NETWORKS)
@pytest.mark.parametrize("route", ["get_config", "serialize_keras_object"])
def test_config_round_trip_with_copied_weights(make, input_shape, route):
    network = make()
    x = _inputs(input_shape)
    expected = network(x).numpy()
    if route == "get_config":
        restored = type(network).from_config(network.get_config())
    else:
        restored = keras.saving.deserialize_keras_object(
            keras.saving.serialize_keras_object(network)
        )
    assert type(restored) is type(network)
    assert restored.get_config() == network.get_config()
    fresh = restored(x).numpy()
    assert fresh.shape == expected.shape
    assert not np.allclose(fresh, expected)  # freshly initialised, so the copy below matters
    assert [tuple(w.shape) for w in restored.weights] == [tuple(w.shape) for w in network.weights]
    restored.set_weights(network.get_weights())
    np.testing.assert_allclose(restored(x).numpy(), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("make, input_shape", NETWORKS)
def test_gradients_reach_every_trainable_variable(make, input_shape):
    network = make()
    x = _inputs(input_shape)
    network(x)  # build
    variables = network.trainable_variables
    n_layers = (
        len(getattr(network, "convs", []))
        + len(getattr(network, "deconvs", []))
        + len(network.hidden)
        + 1  # output layer
        + (1 if hasattr(network, "project") else 0)
    )
    assert len(variables) == 2 * n_layers  # a kernel and a bias per layer
    with tf.GradientTape() as tape:
        y = network(x)
        weights = tf.constant(np.random.default_rng(1).standard_normal(y.shape), tf.float32)
        loss = tf.reduce_sum(y * weights)
    grads = tape.gradient(loss, variables)
    for v, g in zip(variables, grads):
        assert g is not None, v.path
        assert np.any(g.numpy() != 0), v.path


# ---------------------------------------------------------------------------
# Constructor arguments.


@pytest.mark.parametrize("network", [networks.MLP, networks.ConvEncoder])
@pytest.mark.parametrize("output_units", BAD_POSITIVE_INTS)
def test_network_bad_output_units(network, output_units):
    with invalid("output_units", output_units):
        network(output_units=output_units)


@pytest.mark.parametrize("hidden_units", [(0,), (8, -1), "abc"])
def test_mlp_bad_hidden_units(hidden_units):
    with invalid("hidden_units", hidden_units):
        networks.MLP(4, hidden_units=hidden_units)


@pytest.mark.parametrize("output_shape", [(8, 8), (8, 8, 1, 1), (8,)])
def test_conv_decoder_output_shape_must_be_hwc(output_shape):
    with invalid("output_shape", output_shape, "(height, width, channels)"):
        networks.ConvDecoder(output_shape=output_shape)


@pytest.mark.parametrize("output_shape", [(8, 8, 0), (), "abc", None])
def test_conv_decoder_bad_output_shape(output_shape):
    with invalid("output_shape", output_shape):
        networks.ConvDecoder(output_shape=output_shape)


@pytest.mark.parametrize("kernel_size", BAD_POSITIVE_INTS)
def test_conv_networks_bad_kernel_size(kernel_size):
    with invalid("kernel_size", kernel_size):
        networks.ConvEncoder(4, kernel_size=kernel_size)
    with invalid("kernel_size", kernel_size):
        networks.ConvDecoder((8, 8, 1), kernel_size=kernel_size)


def test_good_network_arguments_pass():
    assert networks.MLP(output_units=1).output_units == 1
    assert networks.ConvDecoder(output_shape=(8, 8, 1)).target_shape == (8, 8, 1)
