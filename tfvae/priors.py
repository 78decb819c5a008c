"""Priors p(z): Keras 3 layers whose `distribution()` returns a TFP distribution.

A prior has `batch_shape` `[]` and `event_shape` `[latent_dim]`, so it
broadcasts against a posterior with `batch_shape` `[batch]`.
"""

import numpy as np
import keras
import tensorflow as tf
import tensorflow_probability as tfp

from tfvae import _checks

__all__ = [
    "MixtureOfGaussiansPrior",
    "Prior",
    "StandardNormalPrior",
    "VampPrior",
]

tfd = tfp.distributions

_register = keras.saving.register_keras_serializable(package="tfvae")


class Prior(keras.layers.Layer):
    """Base class for priors over a `latent_dim`-vector.

    A prior declares what it can do, and `tfvae.VAE` asks it:

    * `can_reparameterize`: `reparameterize(eps)` draws z ~ p(z) from standard
      normal noise alone (then `sample` can be exported as a graph).
    * `has_kl_per_dimension`: `kl_per_dimension(loc, scale)` gives the
      analytic KL of a diagonal Gaussian q per latent dimension.
    * `uses_encoder`: p(z) is computed through the model's own encoder (the
      VampPrior), so it is bound to the model by `attach` and DReG is biased
      for it.
    * `check_posterior(posterior)`, `attach(model)`: its own pairing rules.
    * `export_refusal(graph)`: why an export graph cannot be built with it
      (`sample` needs `can_reparameterize`), or None.
    """

    can_reparameterize = False
    has_kl_per_dimension = False
    uses_encoder = False

    def __init__(self, latent_dim, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.latent_dim = _checks.positive_int("latent_dim", latent_dim)

    def check_posterior(self, posterior):
        """Raises `ValueError` unless this prior can pair with `posterior` (any can)."""

    def export_refusal(self, graph):
        """Why the export graph `graph` cannot be built with this prior, or None."""
        if graph == "sample" and not self.can_reparameterize:
            return (f"{type(self).__name__} cannot be sampled from standard normal noise alone "
                    "(only a prior that declares `can_reparameterize`, such as the standard "
                    "normal or the hierarchy's, exports `sample`)")
        return None

    def attach(self, model):
        """Called once by the `tfvae.VAE` that holds this prior (nothing to do by default)."""

    def kl_from_diagonal_gaussian(self, loc, scale):
        """KL(N(loc, diag(scale²)) ‖ p) per example in closed form, with the numbers of
        `tfd.kl_divergence`; or None (then the model uses the TFP objects)."""
        return None

    def kl_per_dimension(self, loc, scale):
        """KL(N(loc_j, scale_j²) ‖ p(z_j)) per latent dimension, `[..., latent_dim]`.

        Raises:
          NotImplementedError: unless `has_kl_per_dimension`.
        """
        raise NotImplementedError(f"{type(self).__name__} has no per-dimension KL.")

    def distribution(self):
        """Returns p(z) as a `tfd.Distribution` with event shape `[latent_dim]`."""
        raise NotImplementedError

    @property
    def decoder_latent_dim(self):
        """How many leading entries of z the decoder sees (all, except in hierarchies)."""
        return self.latent_dim

    def decoder_input(self, z):
        """The part of z `[..., latent_dim]` that p(x|z) depends on."""
        return z

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

    can_reparameterize = True
    has_kl_per_dimension = True

    def kl_from_diagonal_gaussian(self, loc, scale):
        # TFP's KL between two `MultivariateNormalDiag`s (`mvn_linear_operator.
        # _kl_brute_force`) with p's σ = 1, μ = 0 folded in: the same numbers (also
        # under XLA) and gradients, without TFP's linear-operator ops.
        log_det = tf.reduce_sum(tf.math.log(tf.abs(scale)), axis=-1)
        return -log_det + 0.5 * (
            (-float(self.latent_dim) + tf.reduce_sum(tf.square(scale), axis=-1))
            + tf.reduce_sum(tf.square(loc), axis=-1))

    def kl_per_dimension(self, loc, scale):
        """Mathematical details: `½ (μ_j² + σ_j² − 1) − log σ_j`."""
        return 0.5 * (tf.square(loc) + tf.square(scale) - 1.0) - tf.math.log(scale)

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


@_register
class VampPrior(Prior):
    """The VampPrior: p(z) = (1/K) Σ_k q(z | u_k) at learned pseudo-inputs u_k.

    (Tomczak & Welling, 2018.) The prior is the model's own posterior mixed
    over K pseudo-inputs, so `tfvae.VAE` binds it to its encoder; it has no
    analytic KL and uses the Monte Carlo path. Pseudo-inputs live in the
    encoder's input space (data in [0, 1], or 8-bit levels scaled to [0, 1]).

    Args:
      latent_dim: size of z.
      input_shape: the shape of one encoder input (the data's event shape).
      num_pseudo_inputs: K. Default value: `50`.
      seed: seed of the pseudo-inputs' uniform(0, 1) initial values.
        Default value: `0`.
    """

    def __init__(self, latent_dim, input_shape, num_pseudo_inputs=50, seed=0, **kwargs):
        super().__init__(latent_dim, **kwargs)
        self.input_shape_ = _checks.shape("input_shape", input_shape)
        self.num_pseudo_inputs = _checks.positive_int("num_pseudo_inputs", num_pseudo_inputs)
        self.seed = _checks.non_negative_int("seed", seed)
        shape = (self.num_pseudo_inputs,) + self.input_shape_
        init = np.random.default_rng(self.seed).uniform(size=shape).astype("float32")
        self.pseudo_inputs = self.add_weight(
            shape=shape, initializer=keras.initializers.Constant(init), name="pseudo_inputs"
        )
        self._posterior_fn = None

    uses_encoder = True

    def attach(self, model):
        """Binds the prior to `model`'s posterior; its data shape must be `input_shape`."""
        if self.input_shape_ != model.event_shape:
            raise ValueError(
                "Received an invalid value for `prior`: the VampPrior's input_shape must be "
                f"the data shape {model.event_shape}. Received: input_shape={self.input_shape_}"
            )
        self.bind(lambda u: model.posterior(model.encoder(u, training=False)))

    def bind(self, posterior_fn):
        """Sets the map from encoder inputs `[K, ...]` to q(z|u) (batch shape `[K]`)."""
        self._posterior_fn = posterior_fn

    def distribution(self):
        if self._posterior_fn is None:
            raise ValueError(
                "VampPrior is not bound to an encoder: pass it as `prior` to tfvae.VAE, "
                "which binds it to the model's posterior."
            )
        components = self._posterior_fn(tf.convert_to_tensor(self.pseudo_inputs))
        return tfd.MixtureSameFamily(
            mixture_distribution=tfd.Categorical(logits=tf.zeros([self.num_pseudo_inputs])),
            components_distribution=components,
        )

    def get_config(self):
        return {
            **super().get_config(),
            "input_shape": list(self.input_shape_),
            "num_pseudo_inputs": self.num_pseudo_inputs,
            "seed": self.seed,
        }
