"""Counter-based random numbers that are identical eagerly, in graphs and under XLA.

TensorFlow's stateless samplers use different kernels with and without XLA,
so the same seed gives different noise under ``jit_compile=True``. tfvae draws
its reparameterisation noise from a small counter-based generator built only
from integer and elementary float ops instead: element ``i`` of a draw depends
only on ``(seed, offset + i)``, whatever the device, compiler or batch split.

Mathematical details:
  ``h_i = fmix32(fmix32(fmix32((2i + c) * φ ^ k0) + k1) ^ k0)`` (MurmurHash3's
  finaliser, φ the golden-ratio constant) gives two 24-bit uniforms
  ``u_1, u_2`` in (0, 1) per element (``c = 0, 1``), and Box–Muller turns them
  into ``sqrt(-2 log u_1) cos(2π u_2) ~ N(0, 1)``.
"""

import numpy as np
import tensorflow as tf

__all__ = [
    "example_uniform",
    "fold_in",
    "make_seed",
    "standard_normal",
]

_U32 = tf.uint32
_GOLDEN = 0x9E3779B9


def _fmix32(h):
    """MurmurHash3's 32-bit finaliser (a bijection with full avalanche)."""
    h = tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, tf.constant(16, _U32)))
    h = h * tf.constant(0x85EBCA6B, _U32)
    h = tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, tf.constant(13, _U32)))
    h = h * tf.constant(0xC2B2AE35, _U32)
    return tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, tf.constant(16, _U32)))


def make_seed(seed=None):
    """Returns a `[2]` int32 seed tensor.

    Args:
      seed: None (a fresh random seed), a Python int, or a `[2]` integer tensor.

    Returns:
      An int32 tensor of shape `[2]`.
    """
    if seed is None:
        return tf.constant(np.random.randint(0, 2**31 - 1, size=2), tf.int32)
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        seed = int(seed)
        return tf.constant([seed % (2**31), (seed // (2**31)) % (2**31)], tf.int32)
    seed = tf.convert_to_tensor(seed)
    if seed.shape.rank != 1 or (seed.shape[0] is not None and seed.shape[0] != 2):
        raise ValueError(
            "Received an invalid value for `seed`, expected None, an int or an "
            f"integer tensor of shape [2]. Received: seed with shape {seed.shape}"
        )
    return tf.cast(seed, tf.int32)


def _keys(seed):
    seed = tf.bitcast(make_seed(seed), _U32)
    k0 = _fmix32(seed[0] + tf.constant(_GOLDEN, _U32))
    k1 = _fmix32(tf.bitwise.bitwise_xor(seed[1], k0) + tf.constant(0x7F4A7C15, _U32))
    return k0, k1


def _hash(counter, k0, k1):
    h = _fmix32(tf.bitwise.bitwise_xor(counter * tf.constant(_GOLDEN, _U32), k0))
    h = _fmix32(h + k1)
    return _fmix32(tf.bitwise.bitwise_xor(h, k0))


def fold_in(seed, data):
    """Derives a new `[2]` seed from `seed` and an integer `data` (e.g. a step)."""
    k0, k1 = _keys(seed)
    data = tf.cast(tf.convert_to_tensor(data), _U32)
    a = _hash(data, k0, k1)
    b = _hash(data + tf.constant(0x632BE5AB, _U32), k1, k0)
    return tf.bitcast(tf.stack([a, b]), tf.int32)


def standard_normal(shape, seed, offset=0, dtype=tf.float32):
    """Draws standard normal noise.

    Args:
      shape: the output shape (list or 1-D int tensor).
      seed: see `make_seed`.
      offset: index of the first element; element `i` of the result equals
        element `offset + i` of a larger draw with the same seed.
      dtype: float dtype of the result.

    Returns:
      A tensor of `shape` with i.i.d. N(0, 1) entries.
    """
    k0, k1 = _keys(seed)
    n = tf.reduce_prod(tf.convert_to_tensor(shape, tf.int32))
    index = tf.range(n)
    if not (isinstance(offset, int) and offset == 0):
        index = index + tf.cast(offset, tf.int32)
    # Counters 2i and 2i + 1 side by side, hashed in one pass: [n, 2].
    counters = tf.cast(index, _U32)[:, None] * tf.constant(2, _U32) + tf.constant([0, 1], _U32)
    bits = tf.bitwise.right_shift(_hash(counters, k0, k1), tf.constant(8, _U32))
    u1, u2 = tf.unstack((tf.cast(bits, tf.float32) + 0.5) * 2.0**-24, axis=1)
    z = tf.sqrt(-2.0 * tf.math.log(u1)) * tf.cos((2.0 * np.pi) * u2)
    return tf.cast(tf.reshape(z, shape), dtype)


def example_uniform(seed, ids, event_shape):
    """Uniform noise in (0, 1) that is a pure function of `(seed, example id, position)`.

    Each example's draw depends only on the seed and its own id, never on the
    batch it arrives in, its position in the stream, the worker that reads it
    or the epoch: static binarisation of streamed data (`tfvae.sources`) draws
    `x_bin = 1[u < x]` with it, so an example gets the same binary image every
    time it is read, and different examples get independent draws.

    Args:
      seed: see `make_seed`.
      ids: int64 example ids `[batch]` (any values; 64 bits are used).
      event_shape: the shape of one example (a list or 1-D int tensor).

    Returns:
      float32 `[batch] + event_shape`: i.i.d. uniforms with 24 random bits each.
    """
    k0, k1 = _keys(seed)
    ids = tf.cast(tf.convert_to_tensor(ids), tf.int64)
    low = tf.cast(tf.bitwise.bitwise_and(ids, tf.constant(0xFFFFFFFF, tf.int64)), _U32)
    high = tf.cast(tf.bitwise.right_shift(ids, tf.constant(32, tf.int64)), _U32)
    # A key pair per example, from both halves of its id.
    r0 = _hash(low, k0, _hash(high, k1, k0))[:, None]
    r1 = _hash(high + tf.constant(0x632BE5AB, _U32), r0[:, 0], k1)[:, None]
    size = tf.reduce_prod(tf.convert_to_tensor(event_shape, tf.int32))
    bits = tf.bitwise.right_shift(_hash(tf.cast(tf.range(size), _U32)[None, :], r0, r1),
                                  tf.constant(8, _U32))
    u = (tf.cast(bits, tf.float32) + 0.5) * 2.0**-24
    return tf.reshape(u, tf.concat([tf.shape(ids), tf.reshape(event_shape, [-1])], 0))
