"""The condition y of a conditional VAE, as one object the model holds.

`Conditioning(None)` is the unconditional case: it takes no y and leaves
encoder and decoder inputs alone. `Conditioning(C)` turns labels or vectors
into a float `[batch, C]` tensor, appends it to the encoder's input (as
constant extra channels for images) and to the decoder's input, and checks
every y a user passes.
"""

import numpy as np
import tensorflow as tf

from tfvae import _checks

__all__ = [
    "Conditioning",
]


class Conditioning:
    """How a model sees its condition y.

    Args:
      condition_dim: the size of y, or `None` for an unconditional model.
        Integer y are labels in `[0, condition_dim)`, one-hot encoded; float y
        are vectors `[condition_dim]` or `[batch, condition_dim]`.
    """

    def __init__(self, condition_dim=None):
        self.condition_dim = (
            None if condition_dim is None else _checks.positive_int("condition_dim", condition_dim)
        )

    @property
    def active(self):
        """Whether the model is conditional (takes a y)."""
        return self.condition_dim is not None

    def prepare(self, y, batch_size=None, name="y"):
        """`y` as a float `[batch, condition_dim]` tensor (`None` when not `active`).

        Integer `y` (a label, or labels `[batch]`) is one-hot encoded; float `y`
        (`[condition_dim]` or `[batch, condition_dim]`) is used as given. A
        single label or vector is repeated `batch_size` times.

        Raises:
          ValueError: for a y the model cannot take, naming `name`.
        """
        c = self.condition_dim
        if c is None:
            if y is not None:
                raise ValueError(
                    f"Received an invalid value for `{name}`: this model is not conditional "
                    f"(condition_dim=None), so it takes no `{name}`. Received: {name} of type "
                    f"{type(y).__name__}"
                )
            return None
        if y is None:
            raise ValueError(
                f"Received an invalid value for `{name}`: this model is conditional "
                f"(condition_dim={c}), so it needs `{name}`: integer labels (batch,) or "
                f"float vectors (batch, {c}). Received: {name}=None"
            )
        if not tf.is_tensor(y):
            y = np.asarray(y)
            if y.dtype.kind not in "iuf":
                raise ValueError(
                    f"Received an invalid value for `{name}`, expected integer labels or "
                    f"float vectors. Received: {name} with dtype {y.dtype}"
                )
            y = tf.convert_to_tensor(y if y.dtype.kind == "f" else y.astype("int32"))
        self.check_spec(y.shape, y.dtype, name)
        single = y.shape.rank == 0 or (y.shape.rank == 1 and not y.dtype.is_integer)
        if single and y.shape.rank == 1 and tf.executing_eagerly() and _look_like_labels(
                y, batch_size):
            raise ValueError(
                f"Received an invalid value for `{name}`: float values with one per example "
                f"look like class labels, but a 1-D float `{name}` is one condition vector "
                f"for every example. Pass integer labels ({name}.astype(int)) or vectors of "
                f"shape (batch, {c}). Received: {name} with dtype {y.dtype.name} and values "
                f"{y.numpy()[:5].tolist()}")
        rows = None if single else y.shape[0]
        if isinstance(batch_size, int) and rows is not None and rows != batch_size:
            raise ValueError(
                f"Received an invalid value for `{name}`, expected one condition per example "
                f"({batch_size}), or a single label or vector for all. Received: {name} with "
                f"{rows} rows"
            )
        y = self._one_hot(y, name) if y.dtype.is_integer else self._vectors(y, name)
        if y.shape.rank == 1:
            y = tf.tile(y[None], [1 if batch_size is None else batch_size, 1])
        return y

    def _one_hot(self, y, name):
        c = self.condition_dim
        if tf.executing_eagerly():
            values = y.numpy()
            if values.size and (values.min() < 0 or values.max() >= c):
                raise ValueError(
                    f"Received an invalid value for `{name}`, expected labels in [0, {c}). "
                    f"Received: {name} with values in [{values.min()}, {values.max()}]"
                )
        else:
            checks = [
                tf.debugging.assert_non_negative(y, message=f"`{name}`: labels must be >= 0"),
                tf.debugging.assert_less(
                    y, tf.cast(c, y.dtype), message=f"`{name}`: labels must be < {c}"),
            ]
            with tf.control_dependencies(checks):
                y = tf.identity(y)
        # XLA drops asserts: an out-of-range label also gets a NaN row (not
        # one_hot's all-zero row), so that the model's outputs for it are NaN
        # (`valid_rows`) and a training run stops on the non-finite loss.
        in_range = (y >= 0) & (y < tf.cast(c, y.dtype))
        nan = tf.where(in_range, 0.0, float("nan"))
        return tf.one_hot(tf.cast(y, tf.int32), c) + nan[..., None]

    @staticmethod
    def _vectors(y, name):
        y = tf.cast(y, tf.float32)
        if tf.executing_eagerly() and not np.all(np.isfinite(y.numpy())):
            raise ValueError(
                f"Received an invalid value for `{name}`, expected finite condition "
                f"vectors. Received: {name} with NaN or infinite values"
            )
        return y

    @staticmethod
    def valid_rows(y):
        """Whether each prepared condition row `[batch, C]` is finite (`None` for no y).

        Out-of-range labels were given NaN rows by `prepare`, so this marks them too.
        """
        if y is None:
            return None
        return tf.reduce_all(tf.math.is_finite(y), axis=-1)

    def check_spec(self, shape, dtype, name="y"):
        """Checks the shape and dtype of a condition: labels `()`/`(batch,)` or vectors."""
        c = self.condition_dim
        shape = tf.TensorShape(shape)
        if tf.as_dtype(dtype).is_integer:
            if shape.rank not in (0, 1):
                raise ValueError(
                    f"Received an invalid value for `{name}`, expected integer labels of shape "
                    f"() or (batch,). Received: {name} with shape {tuple(shape)}"
                )
        elif not tf.as_dtype(dtype).is_floating or shape.rank not in (1, 2) or shape[-1] != c:
            raise ValueError(
                f"Received an invalid value for `{name}`, expected integer labels or float "
                f"vectors of shape ({c},) or (batch, {c}). Received: {name} with shape "
                f"{tuple(shape)} and dtype {tf.as_dtype(dtype).name}"
            )

    def split(self, inputs):
        """`inputs` is x, or `(x, y)` for a conditional model: returns `(x, y or None)`."""
        if not self.active:
            return inputs, None
        if not isinstance(inputs, (tuple, list)) or len(inputs) != 2:
            raise ValueError(
                "Received an invalid value for `inputs`: a conditional model is called on "
                f"(x, y). Received: inputs of type {type(inputs).__name__}"
            )
        return inputs[0], inputs[1]

    def encoder_input(self, h, y):
        """Appends the prepared `y` `[batch, C]` to the encoder's input `h`."""
        if y is None:
            return h
        if h.shape.rank == 2:
            return tf.concat([h, tf.cast(y, h.dtype)], axis=-1)
        # Images: y as constant extra channels.
        y_map = tf.cast(y, h.dtype)[:, None, None, :] * tf.ones_like(h[..., :1])
        return tf.concat([h, y_map], axis=-1)

    @staticmethod
    def decoder_input(z, y):
        """Appends the prepared `y` to latents `z`, which may hold L samples per example
        sample-major (`[L * batch, d]`)."""
        if y is None:
            return z
        repeats = tf.shape(z)[0] // tf.shape(y)[0]
        return tf.concat([z, tf.tile(tf.cast(y, z.dtype), [repeats, 1])], axis=-1)

    def spec(self):
        """The float `y [None, condition_dim]` tensor spec export graphs take (`None` if inactive)."""
        if not self.active:
            return None
        return tf.TensorSpec((None, self.condition_dim), tf.float32, name="y")


def _look_like_labels(y, batch_size):
    """Whether a 1-D float `y` (one condition vector) is more likely a batch's labels:
    one whole number per example, some above 1 (not a one-hot or probability vector)."""
    values = y.numpy()
    return (isinstance(batch_size, int) and batch_size > 1 and len(values) == batch_size
            and np.all(np.isfinite(values)) and np.all(values == np.round(values))
            and values.max() > 1)
