"""Candidate changes, as ablations.EXTRA mixins (measured with paired.py --extra proposal_variants)."""
import tensorflow as tf

import ablations


class FlatMask:
    """`valid_rows` with the support check reduced over flattened rows ([batch, D]):
    the same booleans as `support_mask`, one row reduction instead of a 3-axis one."""

    def valid_rows(self, x, y=None):
        head = self.likelihood
        flat = tf.reshape(tf.convert_to_tensor(x), [tf.shape(x)[0], -1])
        low, high = head.data_range
        ok = tf.math.is_finite(flat) & (flat >= low) & (flat <= high)
        if head.integer_data:
            ok &= tf.equal(tf.floor(flat), flat)
        valid = tf.reduce_all(ok, axis=1)
        y_valid = self.conditioning.valid_rows(y)
        return valid if y_valid is None else valid & y_valid


ablations.EXTRA.update({"flat_mask": FlatMask})


import keras  # noqa: E402


class EpochMeans(keras.metrics.Metric):
    """All of a model's epoch means in one metric: a `[N]` vector of sums and one count
    (two variables, one update each), `result()` a dict of the N means."""

    def __init__(self, names, **kwargs):
        super().__init__(name="epoch_means", **kwargs)
        self.names = tuple(names)
        self.totals = self.add_variable(shape=(len(self.names),), initializer="zeros",
                                        name="totals")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_sums(self, sums, count):
        self.totals.assign_add(sums)
        self.count.assign_add(count)

    def update_state(self, *args, **kwargs):
        raise NotImplementedError

    def result(self):
        means = tf.math.divide_no_nan(tf.convert_to_tensor(self.totals), self.count)
        return dict(zip(self.names, tf.unstack(means)))


class OneMetric:
    """One EpochMeans metric instead of N keras.metrics.Mean trackers (same numbers)."""

    @property
    def metrics(self):
        return [self._ab_means]

    def _update_metrics(self, terms, sample_weight):
        names = self._ab_means.names
        values = tf.stack([terms[name] for name in names])
        sums = tf.reduce_sum(values, axis=1)
        count = tf.cast(tf.shape(values)[1], values.dtype)
        self._ab_means.update_sums(sums, count)
        return self._ab_means.result()


ablations.EXTRA.update({"one_metric": OneMetric})
_build = ablations.build


def build(name, input_shape, seed=0):
    model = _build(name, input_shape, seed)
    if "one_metric" in name:
        object.__setattr__(model, "_ab_means",
                           EpochMeans([t.name for t in model._trackers]))
    return model


ablations.build = build
