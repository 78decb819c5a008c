"""Encoder and decoder networks: tensor in, tensor out.

Sub-layers take their network's dtype policy, so a network saved under mixed
precision reloads in mixed precision whatever the global policy is then.

Networks know nothing about distributions. An encoder maps data `[batch, ...]`
to the posterior head's parameters `[batch, params_size]`; a decoder maps
latents `[batch, latent_dim]` to the likelihood head's parameters (flat for
`MLP`, `[batch, H, W, C * k]` for `ConvDecoder`). Shapes are taken from the
data in `build`, so nothing assumes 28×28.
"""

import math

import keras
import numpy as np

from tfvae import _checks

__all__ = [
    "ConvDecoder",
    "ConvEncoder",
    "derive_seed",
    "kernel_initializer",
    "MLP",
]

_register = keras.saving.register_keras_serializable(package="tfvae")


def derive_seed(seed, *keys):
    """A seed for one part of a seeded whole: distinct `keys` give unrelated seeds.

    Returns `None` for `seed=None` (unseeded: Keras draws its own). Uses no
    global random state.
    """
    if seed is None:
        return None
    state = np.random.SeedSequence([int(seed), *[int(k) for k in keys]]).generate_state(1)
    return int(state[0]) % (2**31)


def kernel_initializer(seed):
    """Keras's default kernel initializer (Glorot uniform), seeded with `seed` unless `None`."""
    return "glorot_uniform" if seed is None else keras.initializers.GlorotUniform(seed=seed)


def _check_seed(seed):
    return None if seed is None else _checks.non_negative_int("seed", seed)


@_register
class MLP(keras.layers.Layer):
    """A multilayer perceptron that flattens its input.

    Args:
      output_units: width of the final linear layer.
      hidden_units: widths of the hidden layers. Default value: `(256,)`.
      activation: hidden activation. Default value: `"relu"`.
      seed: seed of the initial weights (each layer derives its own from it).
        Default value: `None` (Keras's global random state).

    Input shape: `[batch, ...]`. Output shape: `[batch, output_units]`.
    """

    def __init__(self, output_units, hidden_units=(256,), activation="relu", seed=None,
                 **kwargs):
        super().__init__(**kwargs)
        self.output_units = _checks.positive_int("output_units", output_units)
        self.hidden_units = _checks.int_tuple("hidden_units", hidden_units)
        self.activation = activation
        self.seed = _check_seed(seed)
        self.flatten = keras.layers.Flatten(dtype=self.dtype_policy)
        self.hidden = _dense_stack(self.hidden_units, activation, self.dtype_policy, self.seed)
        self.out = keras.layers.Dense(
            self.output_units, name="output", dtype=self.dtype_policy,
            kernel_initializer=kernel_initializer(derive_seed(self.seed, 0)),
        )

    def build(self, input_shape):
        _build_chain([self.flatten, *self.hidden, self.out], input_shape)

    def call(self, inputs):
        return _apply([self.flatten, *self.hidden, self.out], inputs)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.output_units)

    def get_config(self):
        return {
            **super().get_config(),
            "output_units": self.output_units,
            "hidden_units": list(self.hidden_units),
            "activation": self.activation,
            "seed": self.seed,
        }


# Per-layer seed keys: the output layer is 0, the others count from these bases.
_HIDDEN, _CONV, _DECONV, _PROJECT = 1000, 2000, 3000, 4000


def _dense_stack(units, activation, dtype, seed=None):
    """Hidden `Dense` layers of the given widths."""
    return [
        keras.layers.Dense(u, activation=activation, name=f"hidden_{i}", dtype=dtype,
                           kernel_initializer=kernel_initializer(derive_seed(seed, _HIDDEN + i)))
        for i, u in enumerate(units)
    ]


def _apply(layers, h):
    for layer in layers:
        h = layer(h)
    return h


def _build_chain(layers, input_shape):
    """Builds `layers` in sequence from `input_shape`; returns the final output shape."""
    shape = tuple(input_shape)
    for layer in layers:
        if not layer.built:
            layer.build(shape)
        shape = tuple(layer.compute_output_shape(shape))
    return shape


def _check_image_shape(layer, input_shape):
    if len(input_shape) != 4:
        raise ValueError(
            f"{type(layer).__name__} expects images of shape [batch, height, width, "
            f"channels]. Received: input_shape={tuple(input_shape)}"
        )


@_register
class ConvEncoder(keras.layers.Layer):
    """Strided convolutions, then a linear layer.

    Each convolution halves height and width (`padding="same"`, stride 2), so
    any H×W×C image works.

    Args:
      output_units: width of the final linear layer.
      filters: channels of each stride-2 convolution. Default value: `(32, 64)`.
      kernel_size: convolution kernel size. Default value: `3`.
      dense_units: widths of hidden linear layers after flattening.
        Default value: `()`.
      activation: hidden activation. Default value: `"relu"`.
      seed: seed of the initial weights (each layer derives its own from it).
        Default value: `None` (Keras's global random state).

    Input shape: `[batch, H, W, C]`. Output shape: `[batch, output_units]`.
    """

    def __init__(
        self,
        output_units,
        filters=(32, 64),
        kernel_size=3,
        dense_units=(),
        activation="relu",
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.output_units = _checks.positive_int("output_units", output_units)
        self.filters = _checks.int_tuple("filters", filters, allow_empty=False)
        self.kernel_size = _checks.positive_int("kernel_size", kernel_size)
        self.dense_units = _checks.int_tuple("dense_units", dense_units)
        self.activation = activation
        self.seed = _check_seed(seed)
        self.convs = [
            keras.layers.Conv2D(
                f, self.kernel_size, strides=2, padding="same", activation=activation,
                name=f"conv_{i}", dtype=self.dtype_policy,
                kernel_initializer=kernel_initializer(derive_seed(self.seed, _CONV + i)),
            )
            for i, f in enumerate(self.filters)
        ]
        self.flatten = keras.layers.Flatten(dtype=self.dtype_policy)
        self.hidden = _dense_stack(self.dense_units, activation, self.dtype_policy, self.seed)
        self.out = keras.layers.Dense(
            self.output_units, name="output", dtype=self.dtype_policy,
            kernel_initializer=kernel_initializer(derive_seed(self.seed, 0)),
        )

    def build(self, input_shape):
        _check_image_shape(self, input_shape)
        _build_chain([*self.convs, self.flatten, *self.hidden, self.out], input_shape)

    def call(self, inputs):
        return _apply([*self.convs, self.flatten, *self.hidden, self.out], inputs)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.output_units)

    def get_config(self):
        return {
            **super().get_config(),
            "output_units": self.output_units,
            "filters": list(self.filters),
            "kernel_size": self.kernel_size,
            "dense_units": list(self.dense_units),
            "activation": self.activation,
            "seed": self.seed,
        }


@_register
class ConvDecoder(keras.layers.Layer):
    """A linear layer to a small feature map, then stride-2 transposed convolutions.

    The feature map starts at `ceil(H / 2**n) × ceil(W / 2**n)` for `n =
    len(filters)` upsamplings and is cropped to exactly `H × W` before a final
    convolution to `C` output channels, so any target size works.

    Args:
      output_shape: `(H, W, C)` of the output (C counts parameters, e.g.
        image channels times the likelihood's parameters per pixel).
      filters: channels of each transposed convolution. Default value: `(64, 32)`.
      kernel_size: convolution kernel size. Default value: `3`.
      dense_units: widths of hidden linear layers before the feature map.
        Default value: `()`.
      activation: hidden activation. Default value: `"relu"`.
      seed: seed of the initial weights (each layer derives its own from it).
        Default value: `None` (Keras's global random state).

    Input shape: `[batch, latent_dim]`. Output shape: `[batch, H, W, C]`.
    """

    def __init__(
        self,
        output_shape,
        filters=(64, 32),
        kernel_size=3,
        dense_units=(),
        activation="relu",
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.target_shape = _checks.shape("output_shape", output_shape)
        if len(self.target_shape) != 3:
            raise ValueError(
                "Received an invalid value for `output_shape`, expected (height, "
                f"width, channels). Received: output_shape={output_shape!r}"
            )
        self.filters = _checks.int_tuple("filters", filters, allow_empty=False)
        self.kernel_size = _checks.positive_int("kernel_size", kernel_size)
        self.dense_units = _checks.int_tuple("dense_units", dense_units)
        self.activation = activation
        self.seed = _check_seed(seed)
        height, width, channels = self.target_shape
        n = len(self.filters)
        self._start = (math.ceil(height / 2**n), math.ceil(width / 2**n))
        self.hidden = _dense_stack(self.dense_units, activation, self.dtype_policy, self.seed)
        self.project = keras.layers.Dense(
            self._start[0] * self._start[1] * self.filters[0],
            activation=activation,
            name="project",
            dtype=self.dtype_policy,
            kernel_initializer=kernel_initializer(derive_seed(self.seed, _PROJECT)),
        )
        self.reshape = keras.layers.Reshape(self._start + (self.filters[0],), dtype=self.dtype_policy)
        self.deconvs = [
            keras.layers.Conv2DTranspose(
                f, self.kernel_size, strides=2, padding="same", activation=activation,
                name=f"deconv_{i}", dtype=self.dtype_policy,
                kernel_initializer=kernel_initializer(derive_seed(self.seed, _DECONV + i)),
            )
            for i, f in enumerate(self.filters)
        ]
        self.out = keras.layers.Conv2D(
            channels, self.kernel_size, padding="same", name="output", dtype=self.dtype_policy,
            kernel_initializer=kernel_initializer(derive_seed(self.seed, 0)),
        )

    def build(self, input_shape):
        shape = _build_chain([*self.hidden, self.project, self.reshape, *self.deconvs], input_shape)
        height, width, _ = self.target_shape
        self.out.build((shape[0], height, width, shape[-1]))

    def call(self, inputs):
        h = _apply([*self.hidden, self.project, self.reshape, *self.deconvs], inputs)
        height, width, _ = self.target_shape
        if tuple(h.shape[1:3]) != (height, width):  # (no copy where nothing is cropped)
            h = h[:, :height, :width, :]
        return self.out(h)

    def compute_output_shape(self, input_shape):
        return (input_shape[0],) + self.target_shape

    def get_config(self):
        return {
            **super().get_config(),
            "output_shape": list(self.target_shape),
            "filters": list(self.filters),
            "kernel_size": self.kernel_size,
            "dense_units": list(self.dense_units),
            "activation": self.activation,
            "seed": self.seed,
        }
