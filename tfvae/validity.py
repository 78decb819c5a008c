"""Invalid in, NaN out: the rows of per-example results that cannot be scored become NaN.

`tfvae.VAE.valid_rows` says which examples can be scored (graph-safe, so it holds
under XLA and in exported graphs, where asserts cannot be relied on); `where_valid`
masks the others.
"""

import tensorflow as tf

__all__ = [
    "where_valid",
]


def where_valid(valid, values):
    """`values` (a tensor `[batch, ...]` or a structure of them) with NaN rows where the
    boolean `valid` `[batch]` is false: "invalid in, NaN out" (`VAE.valid_rows`, export
    graphs)."""

    def mask(value):
        shape = tf.concat([tf.shape(valid), tf.ones([value.shape.rank - 1], tf.int32)], 0)
        return tf.where(tf.reshape(valid, shape), value, tf.constant(float("nan"), value.dtype))

    return tf.nest.map_structure(mask, values)
