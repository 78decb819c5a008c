"""VQ-VAE (van den Oord et al., 2017): a quantised posterior over a learned codebook.

The encoder outputs `z_e` `[batch, latent_dim]`, read as `positions =
latent_dim / code_dim` vectors of size `D = code_dim`. Each is replaced by its
nearest code in a codebook `e` of `K = codebook_size` rows `[K, D]`:

    k_p = argmin_k ‖z_e,p − e_k‖²,    z_q,p = e_{k_p}.

The decoder sees `z_q`; gradients reach the encoder by the straight-through
estimator (`z = z_q + (z_e − sg(z_e))`: the value of z_q, the gradient of z_e).
Per example the posterior adds two terms of its own to every objective's loss
(`loss_terms`, reported by `fit` under `metric_names`):

    codebook   = Σ_p ‖sg(z_e,p) − e_{k_p}‖²        (moves the chosen codes)
    commitment = β_c Σ_p ‖z_e,p − sg(e_{k_p})‖²    (keeps z_e near its codes)

With `ema_decay > 0` the codebook is not learned by gradient: each training
step moves every code to an exponential moving average of the encoder outputs
assigned to it (appendix A.1 of the paper), and the codebook term is dropped.

What the ELBO means here: q(z|x) is a point mass on z_q (one-hot over the K
codes at each position) and p(z) is uniform over the K^positions code
combinations (`UniformCodePrior`), so KL(q ‖ p) = positions · log K for every
example, a constant. The reported `elbo` is `log p(x | z_q) − positions · log K`:
a valid lower bound on log p(x) under that uniform prior, whose only moving part
is the reconstruction term. It is not comparable to a Gaussian VAE's ELBO as a
density model (the paper fits an autoregressive prior over the codes afterwards).

`codebook_usage(model, x)` reports how many codes an encoder actually uses
(perplexity and dead codes).
"""

import math

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfvae import _checks
from tfvae import heads
from tfvae import objectives
from tfvae import priors
from tfvae.hyperparameters import Hyperparameter

tfd = tfp.distributions
tfb = tfp.bijectors

__all__ = ["UniformCodePrior", "VQPosterior", "codebook_usage", "nearest_codes"]

_register = keras.saving.register_keras_serializable(package="tfvae")
# Laplace smoothing of the EMA code counts (Sonnet's `VectorQuantizerEMA` epsilon).
_EMA_EPSILON = 1e-5


def _decay(name, value):
    """A float in [0, 1): the EMA decay (0 turns the EMA off)."""
    value = _checks.non_negative_float(name, value)
    if value >= 1.0:
        raise ValueError(f"Received an invalid value for `{name}`, expected a number in [0, 1) "
                         f"(0: no EMA). Received: {name}={value!r}")
    return value


def _positions(latent_dim, code_dim):
    if latent_dim % code_dim:
        raise ValueError(
            "Received an invalid value for `latent_dim`: a VQ posterior splits z into vectors "
            f"of code_dim={code_dim}, so latent_dim must be a multiple of code_dim. "
            f"Received: latent_dim={latent_dim}, code_dim={code_dim}")
    return latent_dim // code_dim


def nearest_codes(vectors, codebook):
    """Index of the nearest code for each vector.

    Args:
      vectors: `[..., D]` float32.
      codebook: `[K, D]` float32.

    Returns:
      int32 indices `[...]` of `argmin_k ‖v − e_k‖²` (the first on ties).
    """
    # ‖v‖² − 2 v·e + ‖e‖²; ‖v‖² does not change the argmin but keeps distances ≥ 0.
    distances = (tf.reduce_sum(tf.square(vectors), -1, keepdims=True)
                 - 2.0 * tf.tensordot(vectors, codebook, [[-1], [1]])
                 + tf.reduce_sum(tf.square(codebook), -1))
    return tf.cast(tf.argmin(distances, axis=-1), tf.int32)


@_register
class VQPosterior(heads.Posterior):
    """q(z|x): the encoder's output quantised to the nearest codes of a learned codebook.

    A deterministic posterior (a point mass at z_q); see the module docstring
    for the losses, the EMA option and what the ELBO means.

    Args:
      latent_dim: size of z, a multiple of `code_dim` (positions × D).
      codebook_size: K, the number of codes. Default value: `64`.
      code_dim: D, the size of each code. Default value: `2`.
      commitment_weight: β_c, the weight of the commitment loss. Default value: `0.25`.
      ema_decay: γ in [0, 1): update the codebook by exponential moving averages
        with this decay instead of the codebook loss (0: off). Default value: `0.0`.
      seed: seed of the codebook's initial values (N(0, 1)). Default value:
        `None` (random).
    """

    hyperparameters = {
        "codebook_size": Hyperparameter(64, _checks.positive_int,
                                        "K, the number of codes", type=int),
        "code_dim": Hyperparameter(2, _checks.positive_int, "D, the size of each code "
                                   "(latent_dim / D positions)", type=int),
        "commitment_weight": Hyperparameter(0.25, _checks.non_negative_float,
                                            "β_c, the weight of the commitment loss"),
        "ema_decay": Hyperparameter(0.0, _decay, "learn the codebook by moving averages "
                                    "with this decay instead of the codebook loss (0: off)"),
    }
    seeded = True
    dreg_unbiased = False  # the codebook is q's own weights
    has_density = False  # a point mass at z_q: no density over z (ELBO surgery declines it)

    def __init__(self, latent_dim, codebook_size=64, code_dim=2, commitment_weight=0.25,
                 ema_decay=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.latent_dim = _checks.positive_int("latent_dim", latent_dim)
        self.codebook_size = _checks.positive_int("codebook_size", codebook_size)
        self.code_dim = _checks.positive_int("code_dim", code_dim)
        self.commitment_weight = _checks.non_negative_float("commitment_weight",
                                                            commitment_weight)
        self.ema_decay = _decay("ema_decay", ema_decay)
        self.seed = None if seed is None else _checks.non_negative_int("seed", seed)
        self.positions = _positions(self.latent_dim, self.code_dim)
        self.event_shape = (self.latent_dim,)
        init = np.random.default_rng(self.seed).standard_normal(
            (self.codebook_size, self.code_dim)).astype("float32")
        ema = self.ema_decay > 0
        aggregation = "only_first_replica" if ema else "none"
        self.codebook = self.add_weight(shape=init.shape, initializer=keras.initializers.Constant(
            init), trainable=not ema, aggregation=aggregation, name="codebook")
        self.ema_count = self.ema_sum = None
        if ema:
            self.ema_count = self.add_weight(shape=(self.codebook_size,), initializer="ones",
                                             trainable=False, aggregation=aggregation,
                                             name="ema_count")
            self.ema_sum = self.add_weight(shape=init.shape,
                                           initializer=keras.initializers.Constant(init),
                                           trainable=False, aggregation=aggregation,
                                           name="ema_sum")

    def build(self, input_shape):
        self.built = True  # the codebook is created in __init__

    @property
    def metric_names(self):
        """`codebook` and `commitment` (only `commitment` with the EMA update)."""
        return ("commitment",) if self.ema_decay > 0 else ("codebook", "commitment")

    @property
    def params_size(self):
        return self.latent_dim

    def _split(self, z):
        """`[..., latent_dim]` → `[..., positions, D]`."""
        return tf.reshape(z, tf.concat([tf.shape(z)[:-1], [self.positions, self.code_dim]], 0))

    def lookup(self, codes):
        """z `[..., latent_dim]` from integer codes `[..., positions]` (clipped to [0, K))."""
        codes = tf.clip_by_value(tf.cast(codes, tf.int32), 0, self.codebook_size - 1)
        z = tf.gather(tf.convert_to_tensor(self.codebook), codes)
        return tf.reshape(z, tf.concat([tf.shape(codes)[:-1], [self.latent_dim]], 0))

    def _parameters(self, flat):
        """`z_e` (the encoder's output), `codes` (int32 `[batch, positions]`) and `z_q`."""
        codes = nearest_codes(self._split(flat), tf.convert_to_tensor(self.codebook))
        return {"z_e": flat, "codes": codes, "z_q": self.lookup(codes)}

    def reparameterize(self, parameters, eps):
        """z_q with straight-through gradients, `z_q + (z_e − sg(z_e))` (the value of z_q
        exactly; no gradient to the codebook), broadcast to `eps`'s shape (ignored otherwise)."""
        z_e = parameters["z_e"]
        z = tf.stop_gradient(parameters["z_q"]) + (z_e - tf.stop_gradient(z_e))
        return tf.broadcast_to(z, tf.shape(eps))

    def distribution(self, parameters):
        """A point mass at z_q, event shape `[latent_dim]`."""
        return tfd.Independent(tfd.Deterministic(parameters["z_q"]), reinterpreted_batch_ndims=1)

    def closed_form_mean(self, parameters):
        return parameters["z_q"]

    def analytic_kl(self, parameters, prior):
        """KL(one-hot q ‖ uniform p) = positions · log K per example, `[batch]`."""
        kl = self.positions * math.log(self.codebook_size)
        return tf.zeros_like(parameters["z_e"][:, 0]) + kl

    def default_prior(self):
        """`UniformCodePrior` over this posterior's codes."""
        return UniformCodePrior(self.latent_dim, self.codebook_size, self.code_dim)

    def check_prior(self, prior):
        if not (isinstance(prior, UniformCodePrior) and prior.latent_dim == self.latent_dim
                and prior.codebook_size == self.codebook_size
                and prior.code_dim == self.code_dim):
            raise ValueError(
                "Received an invalid value for `prior`: a VQ posterior pairs with its own "
                f"UniformCodePrior(latent_dim={self.latent_dim}, codebook_size="
                f"{self.codebook_size}, code_dim={self.code_dim}) (leave `prior` unset). "
                f"Received: prior={prior!r}")

    def loss_terms(self, parameters, training=False):
        """The codebook (without EMA) and commitment losses per example `[batch]`; with
        `ema_decay` and `training`, also moves the codebook (`update_ema`)."""
        z_e, z_q = parameters["z_e"], parameters["z_q"]
        terms = {"commitment": self.commitment_weight * tf.reduce_sum(
            tf.square(z_e - tf.stop_gradient(z_q)), axis=-1)}
        if self.ema_decay > 0:
            if training:
                self.update_ema(z_e, parameters["codes"])
        else:
            terms["codebook"] = tf.reduce_sum(tf.square(tf.stop_gradient(z_e) - z_q), axis=-1)
        return terms

    def update_ema(self, z_e, codes):
        """One EMA step of the codebook from encoder outputs `z_e` `[batch, latent_dim]` and
        their codes `[batch, positions]` (summed over replicas under `tf.distribute`).

        Mathematical details: with `n_k` the vectors assigned to code k and `s_k` their
        sum, `N_k ← γ N_k + (1 − γ) n_k`, `S_k ← γ S_k + (1 − γ) s_k` and
        `e_k = S_k / Ñ_k`, where `Ñ_k = (N_k + ε) / (Σ N + K ε) · Σ N` (Laplace smoothing
        keeps unused codes finite).
        """
        vectors = tf.reshape(tf.stop_gradient(z_e), [-1, self.code_dim])
        finite = tf.cast(tf.reduce_all(tf.math.is_finite(vectors), axis=-1), tf.float32)
        one_hot = tf.one_hot(tf.reshape(codes, [-1]), self.codebook_size) * finite[:, None]
        counts = tf.reduce_sum(one_hot, axis=0)
        sums = tf.matmul(one_hot, tf.where(finite[:, None] > 0, vectors, 0.0), transpose_a=True)
        replica = objectives.replica_context()
        if replica is not None:
            counts, sums = replica.all_reduce(tf.distribute.ReduceOp.SUM, [counts, sums])
        decay = self.ema_decay
        count = decay * tf.convert_to_tensor(self.ema_count) + (1.0 - decay) * counts
        total = decay * tf.convert_to_tensor(self.ema_sum) + (1.0 - decay) * sums
        n = tf.reduce_sum(count)
        smoothed = (count + _EMA_EPSILON) / (n + self.codebook_size * _EMA_EPSILON) * n
        self.ema_count.assign(count)
        self.ema_sum.assign(total)
        self.codebook.assign(total / smoothed[:, None])

    # Export: `encode` gives the codes, `decode` takes them.

    def export_outputs(self, parameters):
        """`codes` `[B, positions]` (float32 integers, so that bad rows can be NaN) and
        `mean` = z_q `[B, latent_dim]`."""
        return {"codes": tf.cast(parameters["codes"], tf.float32), "mean": parameters["z_q"]}

    def decode_input_spec(self):
        """The `decode` graph takes codes `[B, positions]`, float32 integers in [0, K)."""
        return tf.TensorSpec((None, self.positions), tf.float32, name="codes")

    def latent_from_decode_input(self, value):
        return self.lookup(value)

    def decode_input_of(self, parameters):
        """The codes of `parameters` as the `decode` graph takes them, float32 `[B, positions]`."""
        return tf.cast(parameters["codes"], tf.float32)

    def decode_input_rows(self, value):
        """Rows of integers in [0, K) (a row reduction: min, max and Σ (c − ⌊c⌋) = 0)."""
        integers = tf.equal(tf.reduce_sum(value - tf.floor(value), axis=1), 0.0)
        return (integers & (tf.reduce_min(value, axis=1) >= 0.0)
                & (tf.reduce_max(value, axis=1) <= self.codebook_size - 1.0))

    def get_config(self):
        return {**super().get_config(), "latent_dim": self.latent_dim,
                "codebook_size": self.codebook_size, "code_dim": self.code_dim,
                "commitment_weight": self.commitment_weight, "ema_decay": self.ema_decay,
                "seed": self.seed}


@_register
class UniformCodePrior(priors.Prior):
    """p(z): each of the `latent_dim / code_dim` positions takes one of the K codes of the
    model's `VQPosterior`, uniformly and independently.

    Bound to the posterior's codebook by `attach` (the `tfvae.VAE` holding both
    calls it). `reparameterize(eps)` maps standard normal noise to codes,
    `k_p = min(⌊K Φ(ε_p,1)⌋, K − 1)` (the first noise entry of each position; Φ
    the standard normal CDF), so `sample` exports as a graph.

    Args:
      latent_dim: size of z.
      codebook_size: K. Default value: `64`.
      code_dim: D. Default value: `2`.
    """

    can_reparameterize = True

    def __init__(self, latent_dim, codebook_size=64, code_dim=2, **kwargs):
        super().__init__(latent_dim, **kwargs)
        self.codebook_size = _checks.positive_int("codebook_size", codebook_size)
        self.code_dim = _checks.positive_int("code_dim", code_dim)
        self.positions = _positions(self.latent_dim, self.code_dim)
        self._posterior = None

    def check_posterior(self, posterior):
        if not isinstance(posterior, VQPosterior):
            raise ValueError("Received an invalid value for `posterior`: a UniformCodePrior is "
                             "a prior over a VQPosterior's codes. Received: posterior="
                             f"{_checks.type_name(posterior)}")

    def attach(self, model):
        """Binds the prior to `model.posterior`'s codebook."""
        self.bind(model.posterior)

    def bind(self, posterior):
        """Uses `posterior` (a `VQPosterior`)'s codebook."""
        self.check_posterior(posterior)
        self._posterior = posterior

    def _bound(self):
        if self._posterior is None:
            raise ValueError("UniformCodePrior is not bound to a codebook: pass it to tfvae.VAE "
                             "with a VQPosterior, which binds it.")
        return self._posterior

    def codes_from_noise(self, eps):
        """Codes `[..., positions]` (int32) from standard normal `eps` `[..., latent_dim]`."""
        first = tf.reshape(eps, tf.concat([tf.shape(eps)[:-1], [self.positions, self.code_dim]],
                                          0))[..., 0]
        uniform = 0.5 * (1.0 + tf.math.erf(first / math.sqrt(2.0)))
        codes = tf.floor(uniform * self.codebook_size)
        return tf.cast(tf.clip_by_value(codes, 0.0, self.codebook_size - 1.0), tf.int32)

    def reparameterize(self, eps):
        return self._bound().lookup(self.codes_from_noise(eps))

    def distribution(self):
        """p(z) as a TFP distribution: per position a uniform mixture of point masses at
        the K codes, reshaped to `[latent_dim]`. `log_prob` is `−positions · log K` at
        points of the code grid (−inf elsewhere)."""
        codebook = tf.convert_to_tensor(self._bound().codebook)
        k, p = self.codebook_size, self.positions
        per_position = tfd.MixtureSameFamily(
            mixture_distribution=tfd.Categorical(logits=tf.zeros([p, k])),
            components_distribution=tfd.Independent(
                tfd.Deterministic(tf.broadcast_to(codebook, [p, k, self.code_dim])), 1))
        return tfd.TransformedDistribution(
            tfd.Independent(per_position, 1),
            tfb.Reshape(event_shape_out=[self.latent_dim], event_shape_in=[p, self.code_dim]))

    def get_config(self):
        return {**super().get_config(), "codebook_size": self.codebook_size,
                "code_dim": self.code_dim}


# The prior class this posterior brings (`default_prior`; defined after it).
VQPosterior.own_prior = UniformCodePrior


def codebook_usage(model, x, batch_size=1000):
    """How much of a VQ model's codebook the encoder uses on data `x`.

    Args:
      model: a `tfvae.VAE` with a `VQPosterior`.
      x: data `[n] + event_shape` (numpy), or `(x, y)` for a conditional model.
      batch_size: examples encoded at once. Default value: `1000`.

    Returns:
      A dict: `counts` (int array `[K]`: how often each code is chosen, over all
      examples and positions), `perplexity` (`exp(−Σ_k p_k log p_k)` of the code
      frequencies p: K if all codes are used equally, 1 if one is used) and
      `dead_codes` (codes never chosen).
    """
    posterior = model.posterior
    if not isinstance(posterior, VQPosterior):
        raise ValueError("Received an invalid value for `model`, expected a VAE with a "
                         f"VQPosterior. Received: a model with {type(posterior).__name__}")
    batch_size = _checks.positive_int("batch_size", batch_size)
    x, y = x if isinstance(x, tuple) else (x, None)
    counts = np.zeros(posterior.codebook_size, np.int64)
    for start in range(0, len(x), batch_size):
        xb, yb = model.prepare_inputs(x[start:start + batch_size],
                                      None if y is None else y[start:start + batch_size])
        codes = np.asarray(model.posterior_parameters(xb, yb)["codes"]).reshape(-1)
        counts += np.bincount(codes, minlength=posterior.codebook_size)
    p = counts / max(counts.sum(), 1)
    nonzero = p[p > 0]
    return {"counts": counts, "perplexity": float(np.exp(-np.sum(nonzero * np.log(nonzero)))),
            "dead_codes": int(np.sum(counts == 0))}
