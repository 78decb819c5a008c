"""Two stochastic layers: q(z₁|x) q(z₂|z₁) and p(z₂) p(z₁|z₂) p(x|z₁).

The latent code of a hierarchical `tfvae.VAE` is the concatenation
`z = [z₁, z₂]` (`latent_dim = d₁ + d₂`). Both the posterior and the prior are
a standard normal pushed through a triangular map, so each is an ordinary
`tfd.Distribution` over z with an exact density, reparameterised samples and
explicit-noise sampling; every objective (ELBO with a Monte Carlo KL, IWAE,
the importance-sampled `log p(x)`) and every export path works unchanged. The
decoder sees z₁ only (`HierarchicalPrior.decoder_input`).

Mathematical details:
  Posterior, from ε = [ε₁, ε₂] ~ N(0, I):
    `z₁ = μ₁(x) + σ₁(x) ⊙ ε₁`, `z₂ = μ₂(z₁) + σ₂(z₁) ⊙ ε₂`.
  Prior: `z₂ = ε₂`, `z₁ = m(z₂) + s(z₂) ⊙ ε₁`.
  The ELBO splits by layer:
    `ELBO = E_q[log p(x|z₁)] − KL₁ − KL₂` with
    `KL₁ = E_q[log q(z₁|x) − log p(z₁|z₂)]` and
    `KL₂ = E_q[log q(z₂|z₁) − log p(z₂)]`,
  both estimated on the same samples as the total KL, so `KL₁ + KL₂ = KL`.
"""


import keras
import tensorflow as tf
import tensorflow_probability as tfp

from tfvae import _checks
from tfvae import heads
from tfvae import networks
from tfvae import objectives
from tfvae import priors

__all__ = [
    "HierarchicalPosterior",
    "HierarchicalPrior",
]

tfd = tfp.distributions
tfb = tfp.bijectors

_register = keras.saving.register_keras_serializable(package="tfvae")


def _normal_log_prob(x, loc, scale):
    """`Σ_j log N(x_j; loc_j, scale_j²)` over the last axis."""
    return tf.reduce_sum(objectives.log_normal_per_dimension(x, loc, scale), axis=-1)


def _check_latent_dims(latent_dims):
    dims = _checks.int_tuple("latent_dims", latent_dims, allow_empty=False)
    if len(dims) != 2:
        raise ValueError(
            "Received an invalid value for `latent_dims`, expected two sizes (d1, d2) for "
            f"z1 and z2. Received: latent_dims={latent_dims!r}"
        )
    return dims


class _ConditionalGaussian(keras.layers.Layer):
    """A small network `h [..., d_in] -> (loc, scale) [..., d_out]` (tensor in, tensors out)."""

    def __init__(self, input_dim, output_dim, hidden_units, min_scale, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.output_dim = output_dim
        self.min_scale = min_scale
        self.hidden = keras.layers.Dense(
            hidden_units, activation="elu", name="hidden", dtype=self.dtype_policy,
            kernel_initializer=networks.kernel_initializer(networks.derive_seed(seed, 0)))
        self.out = keras.layers.Dense(2 * output_dim, name="output", dtype=self.dtype_policy,
                                      kernel_initializer=keras.initializers.VarianceScaling(
                                          0.1, seed=networks.derive_seed(seed, 1)))
        self.hidden.build((None, input_dim))
        self.out.build((None, hidden_units))
        self.built = True

    def call(self, h):
        out = tf.cast(self.out(self.hidden(h)), tf.float32)
        loc, raw_scale = out[..., : self.output_dim], out[..., self.output_dim :]
        return loc, tf.nn.softplus(raw_scale + heads._inverse_softplus(1.0)) + self.min_scale


class _TwoLayerMap(tfb.Bijector):
    """ε = [ε₁, ε₂] ↦ z = [z₁, z₂] with z_first = a + b ⊙ ε_first and the other
    layer an affine function of z_first's noise, conditioned on z_first.

    `first_fn()` gives (a, b) for the layer generated first; `second_fn(z_first)`
    gives the second layer's (loc, scale). `first` is 0 when z₁ comes first (the
    posterior) and 1 when z₂ does (the prior).
    """

    def __init__(self, dims, first, first_fn, second_fn, name="two_layer_map"):
        parameters = dict(locals())
        self._dims, self._first = dims, first
        self._first_fn, self._second_fn = first_fn, second_fn
        super().__init__(forward_min_event_ndims=1, parameters=parameters, name=name)

    def _split(self, v):
        d1 = self._dims[0]
        return v[..., :d1], v[..., d1:]

    def _order(self, pair):
        return pair if self._first == 0 else pair[::-1]

    def _forward(self, eps):
        e_first, e_second = self._order(self._split(eps))
        loc, scale = self._first_fn()
        z_first = loc + scale * e_first
        loc2, scale2 = self._second_fn(z_first)
        z_second = loc2 + scale2 * e_second
        return tf.concat(self._order((z_first, z_second)), axis=-1)

    def _inverse(self, z):
        z_first, z_second = self._order(self._split(z))
        loc, scale = self._first_fn()
        loc2, scale2 = self._second_fn(z_first)
        e = ((z_first - loc) / scale, (z_second - loc2) / scale2)
        return tf.concat(self._order(e), axis=-1)

    def _inverse_log_det_jacobian(self, z):
        z_first, _ = self._order(self._split(z))
        _, scale = self._first_fn()
        _, scale2 = self._second_fn(z_first)
        log_scale = tf.reduce_sum(tf.math.log(scale), axis=-1)
        return -(log_scale + tf.reduce_sum(tf.math.log(scale2), axis=-1))


def _mismatch(posterior, prior):
    return ValueError(
        "Received an invalid value for `prior`: a HierarchicalPosterior needs a "
        "HierarchicalPrior with the same latent_dims, and vice versa. Received: "
        f"posterior={type(posterior).__name__} with latent_dims="
        f"{getattr(posterior, 'latent_dims', None)}, prior={type(prior).__name__} with "
        f"latent_dims={getattr(prior, 'latent_dims', None)}"
    )


@_register
class HierarchicalPosterior(heads.Posterior):
    """q(z₁, z₂|x) = N(z₁; μ₁(x), σ₁²(x)) · N(z₂; μ₂(z₁), σ₂²(z₁)), over z = [z₁, z₂].

    The encoder outputs `[μ₁, s₁]` (`σ₁ = softplus(s₁) + min_scale`); the head
    owns the small network for q(z₂|z₁).

    Args:
      latent_dims: `(d1, d2)`, the sizes of z₁ and z₂.
      hidden_units: width of the q(z₂|z₁) network. Default value: `64`.
      min_scale: lower bound on every σ. Default value: `1e-5`.
      seed: seed of the q(z₂|z₁) network's initial weights. Default value:
        `None` (Keras's global random state).
    """

    layer_names = ("z1", "z2")
    dreg_unbiased = False  # q(z2|z1) has weights of its own

    def __init__(self, latent_dims, hidden_units=64, min_scale=1e-5, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.latent_dims = _check_latent_dims(latent_dims)
        self.hidden_units = _checks.positive_int("hidden_units", hidden_units)
        self.min_scale = _checks.non_negative_float("min_scale", min_scale)
        self.seed = None if seed is None else _checks.non_negative_int("seed", seed)
        self.latent_dim = sum(self.latent_dims)
        self.event_shape = (self.latent_dim,)
        d1, d2 = self.latent_dims
        self.top = _ConditionalGaussian(d1, d2, self.hidden_units, self.min_scale, seed=self.seed,
                                        name="q_z2_given_z1", dtype=self.dtype_policy)

    def build(self, input_shape):
        self.built = True  # the q(z2|z1) network is built in __init__

    @property
    def params_size(self):
        return 2 * self.latent_dims[0]

    def _parameters(self, flat):
        loc, raw_scale = tf.split(flat, 2, axis=-1)
        return {"loc": loc, "scale": tf.nn.softplus(raw_scale) + self.min_scale}

    def _map(self, parameters):
        return _TwoLayerMap(self.latent_dims, 0, lambda: (parameters["loc"], parameters["scale"]),
                            self.top, name="hierarchical_posterior")

    def distribution(self, parameters):
        loc = parameters["loc"]
        zeros = tf.concat([tf.zeros_like(loc), tf.zeros_like(loc[..., :1]) + tf.zeros(
            [self.latent_dims[1]])], axis=-1)
        base = tfd.MultivariateNormalDiag(loc=zeros, scale_diag=tf.ones_like(zeros))
        return tfd.TransformedDistribution(base, self._map(parameters))

    def reparameterize(self, parameters, eps):
        """z = [z₁, z₂] from standard normal `eps` `[..., d1 + d2]`."""
        return self._map(parameters).forward(eps)

    def sampler(self, parameters):
        """q and `reparameterize` through q's own map (TFP caches the noise for log q)."""
        q = self.distribution(parameters)
        return q, q.bijector.forward

    def layer_log_probs(self, parameters, z):
        """`[log q(z₁|x), log q(z₂|z₁)]`, each of shape `z.shape[:-1]`."""
        d1 = self.latent_dims[0]
        z1, z2 = z[..., :d1], z[..., d1:]
        loc2, scale2 = self.top(z1)
        return [_normal_log_prob(z1, parameters["loc"], parameters["scale"]),
                _normal_log_prob(z2, loc2, scale2)]

    def default_prior(self):
        seed = None if self.seed is None else networks.derive_seed(self.seed, 1)
        return HierarchicalPrior(self.latent_dims, hidden_units=self.hidden_units, seed=seed)

    def check_prior(self, prior):
        if getattr(prior, "latent_dims", None) != self.latent_dims:
            raise _mismatch(self, prior)
        super().check_prior(prior)

    def kl_groups(self, parameters, prior, num_groups):
        """The per-layer KL terms `[KL_z1, KL_z2]` on the ELBO's own samples (whatever
        `num_groups`: they are always reported, and clamped only when asked)."""

        def layer_kls(z):
            log_q = self.layer_log_probs(parameters, z)
            log_p = prior.layer_log_probs(z)
            return tf.stack([tf.reduce_mean(q - p, axis=0) for q, p in zip(log_q, log_p)], -1)

        return layer_kls

    def get_config(self):
        return {
            **super().get_config(),
            "latent_dims": list(self.latent_dims),
            "hidden_units": self.hidden_units,
            "min_scale": self.min_scale,
            "seed": self.seed,
        }


@_register
class HierarchicalPrior(priors.Prior):
    """p(z₁, z₂) = N(z₂; 0, I) · N(z₁; m(z₂), s²(z₂)), over z = [z₁, z₂].

    The decoder of a model with this prior sees z₁ only (`decoder_input`).

    Args:
      latent_dims: `(d1, d2)`, the sizes of z₁ and z₂.
      hidden_units: width of the p(z₁|z₂) network. Default value: `64`.
      min_scale: lower bound on s. Default value: `1e-5`.
      seed: seed of the p(z₁|z₂) network's initial weights. Default value:
        `None` (Keras's global random state).
    """

    def __init__(self, latent_dims, hidden_units=64, min_scale=1e-5, seed=None, **kwargs):
        dims = _check_latent_dims(latent_dims)
        super().__init__(sum(dims), **kwargs)
        self.latent_dims = dims
        self.hidden_units = _checks.positive_int("hidden_units", hidden_units)
        self.min_scale = _checks.non_negative_float("min_scale", min_scale)
        self.seed = None if seed is None else _checks.non_negative_int("seed", seed)
        d1, d2 = dims
        self.bottom = _ConditionalGaussian(d2, d1, self.hidden_units, self.min_scale,
                                           seed=self.seed, name="p_z1_given_z2",
                                           dtype=self.dtype_policy)

    can_reparameterize = True

    def check_posterior(self, posterior):
        if getattr(posterior, "latent_dims", None) != self.latent_dims:
            raise _mismatch(posterior, self)

    @property
    def decoder_latent_dim(self):
        return self.latent_dims[0]

    def decoder_input(self, z):
        return z[..., : self.latent_dims[0]]

    def _map(self):
        d2 = self.latent_dims[1]
        return _TwoLayerMap(self.latent_dims, 1,
                            lambda: (tf.zeros([d2]), tf.ones([d2])), self.bottom,
                            name="hierarchical_prior")

    def distribution(self):
        zeros = tf.zeros([self.latent_dim], tf.float32)
        base = tfd.MultivariateNormalDiag(loc=zeros, scale_diag=tf.ones_like(zeros))
        return tfd.TransformedDistribution(base, self._map())

    def reparameterize(self, eps):
        return self._map().forward(eps)

    def layer_log_probs(self, z):
        """`[log p(z₁|z₂), log p(z₂)]`, each of shape `z.shape[:-1]`."""
        d1 = self.latent_dims[0]
        z1, z2 = z[..., :d1], z[..., d1:]
        loc1, scale1 = self.bottom(z2)
        return [_normal_log_prob(z1, loc1, scale1),
                _normal_log_prob(z2, tf.zeros_like(z2), tf.ones_like(z2))]

    def get_config(self):
        config = super().get_config()
        config.pop("latent_dim")
        return {
            **config,
            "latent_dims": list(self.latent_dims),
            "hidden_units": self.hidden_units,
            "min_scale": self.min_scale,
            "seed": self.seed,
        }
