"""Priors p(z): Keras 3 layers whose `distribution()` returns a TFP distribution.

A prior has `batch_shape` `[]` and `event_shape` `[latent_dim]`, so it
broadcasts against a posterior with `batch_shape` `[batch]`.
"""

import numpy as np
import keras
import tensorflow as tf
import tensorflow_probability as tfp

from tfvae import _checks

tfd = tfp.distributions

_register = keras.saving.register_keras_serializable(package="tfvae")


class Prior(keras.layers.Layer):
    """Base class for priors over a `latent_dim`-vector."""

    def __init__(self, latent_dim, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.latent_dim = _checks.positive_int("latent_dim", latent_dim)

    def distribution(self):
        """Returns p(z) as a `tfd.Distribution` with event shape `[latent_dim]`."""
        raise NotImplementedError

    def reparameterize(self, eps):
        """z ~ p(z) as a function of standard normal `eps` `[..., latent_dim]`.

        Raises:
          NotImplementedError: if Gaussian noise alone cannot drive this prior.
        """
        raise NotImplementedError(
            f"{type(self).__name__} cannot be sampled from standard normal noise alone."
        )

    def get_config(self):
        return {**super().get_config(), "latent_dim": self.latent_dim}


@_register
class StandardNormalPrior(Prior):
    """p(z) = N(0, I). Its KL against Gaussian posteriors is analytic."""

    def distribution(self):
        zeros = tf.zeros([self.latent_dim], tf.float32)
        return tfd.MultivariateNormalDiag(loc=zeros, scale_diag=tf.ones_like(zeros))

    def reparameterize(self, eps):
        return eps


@_register
class MixtureOfGaussiansPrior(Prior):
    """A learnable mixture p(z) = Σ_k π_k N(z; μ_k, diag(σ_k²)).

    No analytic KL(q‖p) exists for a mixture, so objectives estimate it by
    Monte Carlo from the posterior samples.

    Args:
      latent_dim: size of z.
      num_components: number of mixture components K. Default value: `10`.
      seed: seed for the initial component means (drawn from N(0, I)).
        Default value: `0`.
    """

    def __init__(self, latent_dim, num_components=10, seed=0, **kwargs):
        super().__init__(latent_dim, **kwargs)
        self.num_components = _checks.positive_int("num_components", num_components)
        self.seed = _checks.non_negative_int("seed", seed)
        k, d = self.num_components, self.latent_dim
        init_locs = np.random.default_rng(self.seed).standard_normal((k, d)).astype("float32")
        self.logits = self.add_weight(shape=(k,), initializer="zeros", name="logits")
        self.locs = self.add_weight(
            shape=(k, d), initializer=keras.initializers.Constant(init_locs), name="locs"
        )
        self.raw_scales = self.add_weight(
            shape=(k, d),
            initializer=keras.initializers.Constant(float(np.log(np.expm1(1.0)))),
            name="raw_scales",
        )

    def distribution(self):
        return tfd.MixtureSameFamily(
            mixture_distribution=tfd.Categorical(logits=tf.convert_to_tensor(self.logits)),
            components_distribution=tfd.MultivariateNormalDiag(
                loc=tf.convert_to_tensor(self.locs),
                scale_diag=tf.nn.softplus(tf.convert_to_tensor(self.raw_scales)) + 1e-4,
            ),
        )

    def get_config(self):
        return {
            **super().get_config(),
            "num_components": self.num_components,
            "seed": self.seed,
        }
