"""Importance-sampled bounds of a `tfvae.VAE`, compiled: the IWAE bound and log p(x).

`Bounds` is a mixin before `keras.Model`. It uses the model's public seams
(`prepare_inputs`, `posterior_sampler`, `likelihood_fn`, `prior`) and runs
`objectives.iwae_bound` as one cached `tf.function` per (K, chunk): the
encoder once, then an in-graph loop over chunks of samples.
"""

import tensorflow as tf

from tfvae import _checks
from tfvae import objectives
from tfvae import random as tfvae_random

__all__ = [
    "Bounds",
]


class Bounds:
    """`iwae_bound` and `log_likelihood` for a `tfvae.VAE`."""

    def iwae_bound(self, x, k=50, seed=None, chunk_size=None, y=None):
        """The IWAE bound with `k` importance samples, per example (`[batch]`)."""
        return self._bound(x, y, seed, "k", k, chunk_size)

    def log_likelihood(self, x, num_samples=1000, seed=None, chunk_size=100, y=None):
        """Importance-sampled estimate of `log p(x)` (or `log p(x|y)`) per example (`[batch]`).

        Runs as one compiled graph per `(num_samples, chunk_size)`: the encoder
        once, then a loop over chunks of `chunk_size` samples per example
        (memory `batch × chunk_size` decoder outputs), the same numbers as
        `objectives.log_likelihood` eagerly.
        """
        return self._bound(x, y, seed, "num_samples", num_samples, chunk_size)

    def _bound(self, x, y, seed, k_name, k, chunk_size):
        k = _checks.positive_int(k_name, k)
        chunk_size = k if chunk_size is None else min(
            _checks.positive_int("chunk_size", chunk_size), k)
        x, y = self.prepare_inputs(x, y)
        key = (k, chunk_size)
        functions = self.__dict__.setdefault("_bound_functions", {})  # not tracked
        if key not in functions:
            def bound(x, y, seed):
                posterior, reparameterize = self.posterior_sampler(x, y)
                return objectives.iwae_bound(x, posterior, self.likelihood_fn(y),
                                             self.prior.distribution(), k, seed=seed,
                                             chunk_size=chunk_size, reparameterize=reparameterize)

            # (No XLA: on CPU oneDNN's matmuls beat XLA's; benchmarks/bench_log_likelihood.py.)
            functions[key] = tf.function(bound, reduce_retracing=True)
        return functions[key](x, y, tfvae_random.make_seed(seed))
