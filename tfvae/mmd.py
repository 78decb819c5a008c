"""InfoVAE / MMD-VAE (Zhao et al., 2019): the ELBO plus a maximum mean discrepancy between
the aggregate posterior q(z) and the prior p(z), registered as the objective `"mmd"`.

Per example the loss is

    −reconstruction + β · KL(q(z|x) ‖ p(z)) + λ · MMD²(q(z), p(z))

with β the model's `beta` and λ the hyperparameter `mmd_weight`. β = 0 is the
MMD-VAE of Zhao et al.; their InfoVAE objective
`(1 − α) KL + (α + λ_Zhao − 1) MMD` is this with β = 1 − α and
`mmd_weight` = α + λ_Zhao − 1. The ELBO (`elbo`, `reconstruction`, `kl`) is
reported as for the plain model, beside `mmd`.

The MMD is a property of the batch, not of one example: it compares the
posterior samples z of the whole (global, under `tf.distribute`) batch with as
many samples of the prior, drawn from the step's seed. It enters the per-
example terms through `mmd_terms`, whose mean over the batch's valid examples
is the unbiased estimate of MMD² (a U-statistic; Gretton et al., 2012, eq. 3).

    model = tfvae.build_vae((64,), 8, objective="mmd", mmd_weight=1000.0, beta=0.0)
    tfvae train --objective mmd --mmd-weight 1000 --beta 0
"""

import tensorflow as tf

from tfvae import _checks
from tfvae import objective_parts
from tfvae import random as tfvae_random
from tfvae.hyperparameters import Hyperparameter

__all__ = ["KERNELS", "MMD", "PRIOR_STREAM", "bandwidth", "kernel_matrix", "mmd", "mmd_terms",
           "prior_samples"]

KERNELS = ("rbf", "imq")
# The prior's noise is drawn from `fold_in(seed, PRIOR_STREAM)`: a stream of its own, apart
# from the posterior's noise (drawn from the seed itself).
PRIOR_STREAM = 0x4D4D44  # "MMD"


def bandwidth(latent_dim, prior_scale=1.0):
    """The kernels' scale C = 2 · d · σ² for d latent dimensions and a prior of scale σ.

    This is the usual choice for a standard normal prior (Tolstikhin et al., 2018,
    WAE): E‖z − z'‖² = 2 · d · σ² for two independent prior samples, so the kernel
    sees distances on the scale of the prior.
    """
    return 2.0 * float(latent_dim) * float(prior_scale) ** 2


def kernel_matrix(x, y, kernel="rbf", scale=1.0):
    """k(x_a, y_b) for every pair of rows.

    Mathematical details, with r = ‖x_a − y_b‖² and C = `scale`:
      RBF (Gaussian): `k = exp(−r / C)`;
      IMQ (inverse multiquadric): `k = C / (C + r)`.
    Both are characteristic kernels, so MMD² = 0 only when the two distributions
    are equal; the IMQ's heavier tails keep gradients alive for distant samples.

    Args:
      x: `[n, d]`.
      y: `[m, d]`.
      kernel: `"rbf"` or `"imq"`. Default value: `"rbf"`.
      scale: C > 0 (`bandwidth`). Default value: `1.0`.

    Returns:
      `[n, m]`.
    """
    kernel = _checks.one_of("kernel", kernel, KERNELS)
    squared = tf.reduce_sum(tf.square(x[:, None, :] - y[None, :, :]), axis=-1)
    scale = tf.cast(scale, squared.dtype)
    if kernel == "rbf":
        return tf.exp(-squared / scale)
    return scale / (scale + squared)


def mmd_terms(z, prior_z, kernel="rbf", scale=1.0, valid=None):
    """Per-example terms whose mean over the valid examples is the unbiased MMD² estimate.

    Mathematical details: with n valid examples i, each with L posterior samples
    `z_il` (the rows of an aggregate posterior sample), m prior samples `y_b`,
    `K̄(i, j) = (1/L²) Σ_{l,l'} k(z_il, z_jl')` and `P(i) = (1/(L m)) Σ_{l,b} k(z_il, y_b)`,
    example i's term is
      `t_i = (1/(n − 1)) Σ_{j ≠ i} K̄(i, j) + (1/(m (m − 1))) Σ_{a ≠ b} k(y_a, y_b) − 2 P(i)`,
    so `(1/n) Σ_i t_i` is Gretton et al.'s (2012) unbiased MMD²_u: pairs of samples of
    the same example (which are not independent draws of q(z)) and pairs of a prior
    sample with itself are left out. It can be slightly negative. With n = 1 the first
    sum is 0.

    Args:
      z: posterior samples `[L, B, d]` of every example of the batch.
      prior_z: prior samples `[m, d]`, m ≥ 2.
      kernel: `"rbf"` or `"imq"` (`kernel_matrix`). Default value: `"rbf"`.
      scale: the kernel's C (`bandwidth`). Default value: `1.0`.
      valid: optional boolean `[B]`: examples to leave out (their z may be NaN; they
        enter no other example's term, and their own term is meaningless).
        Default value: `None` (all).

    Returns:
      `[B]`.
    """
    z = tf.convert_to_tensor(z)
    prior_z = tf.cast(prior_z, z.dtype)
    num_samples, batch, dim = tf.shape(z)[0], tf.shape(z)[1], tf.shape(z)[2]
    if valid is None:
        valid = tf.ones([batch], tf.bool)
    # Invalid rows become zeros first, so neither their values nor NaN gradients leak.
    z = tf.where(valid[None, :, None], z, tf.zeros_like(z))
    flat = tf.reshape(z, [-1, dim])  # [L·B, d], sample-major
    within = tf.reshape(kernel_matrix(flat, flat, kernel, scale),
                        [num_samples, batch, num_samples, batch])
    within = tf.reduce_mean(within, axis=[0, 2])  # K̄ [B, B]
    others = valid[None, :] & ~tf.eye(batch, dtype=tf.bool)
    count = tf.reduce_sum(tf.cast(valid, z.dtype))
    qq = (tf.reduce_sum(tf.where(others, within, tf.zeros_like(within)), axis=1)
          / tf.maximum(count - 1.0, 1.0))
    cross = tf.reduce_mean(
        tf.reshape(kernel_matrix(flat, prior_z, kernel, scale), [num_samples, batch, -1]),
        axis=[0, 2])  # P [B]
    pp_matrix = kernel_matrix(prior_z, prior_z, kernel, scale)
    m = tf.cast(tf.shape(prior_z)[0], z.dtype)
    pp = (tf.reduce_sum(pp_matrix) - tf.linalg.trace(pp_matrix)) / (m * (m - 1.0))
    return qq + pp - 2.0 * cross


def mmd(z, prior_z, kernel="rbf", scale=1.0, valid=None):
    """The unbiased MMD² estimate between the samples `z` `[L, B, d]` (or `[B, d]`, one
    sample per example) and `prior_z` `[m, d]`: the mean of `mmd_terms` over the valid
    examples. A scalar."""
    z = tf.convert_to_tensor(z)
    if z.shape.rank == 2:
        z = z[None]
    terms = mmd_terms(z, prior_z, kernel, scale, valid)
    if valid is None:
        return tf.reduce_mean(terms)
    weights = tf.cast(valid, terms.dtype)
    return (tf.reduce_sum(tf.where(valid, terms, tf.zeros_like(terms)))
            / tf.maximum(tf.reduce_sum(weights), 1.0))


def prior_samples(prior, num, seed):
    """`num` samples `[num, latent_dim]` of `prior` (a `tfvae.Prior` that
    `can_reparameterize`): `prior.reparameterize(ε)` with ε the standard normal draw
    `tfvae.random.standard_normal([num, latent_dim], fold_in(seed, PRIOR_STREAM))`, the
    same on every replica and with and without XLA."""
    seed = tfvae_random.fold_in(tfvae_random.make_seed(seed), PRIOR_STREAM)
    eps = tfvae_random.standard_normal(tf.stack([num, prior.latent_dim]), seed)
    return prior.reparameterize(eps)


@objective_parts.register_objective("mmd")
class MMD(objective_parts.Objective):
    """InfoVAE / MMD-VAE: `−reconstruction + β · max(KL, free_bits) + λ · mmd` per example.

    `mmd` (also reported as a metric) is example i's `mmd_terms` entry, computed on
    the global batch: the posterior samples z of the ELBO's own draw (the encoder
    runs once) against `max(B, 2)` samples of the prior for a global batch of B
    (`prior_samples` with the step's seed), with the kernel scale C = 2 · d
    (`bandwidth`, σ = 1). Its batch mean is the unbiased MMD² estimate, so N
    replicas reproduce one device. Rows that are not valid enter no other row's term.

    Hyperparameters:
      mmd_weight: λ ≥ 0. Default value: `1000.0`, the scale commonly used for MMD-VAEs
        on MNIST: a batch's MMD² is O(10⁻³–10⁻¹), small beside a reconstruction of tens
        of nats, so a weight near 1 would leave q(z) unconstrained.
      mmd_kernel: `"rbf"` or `"imq"`. Default value: `"rbf"`.
    """

    metric_names = ("mmd",)
    label = "InfoVAE (MMD)"
    free_bits = True
    hyperparameters = {
        "mmd_weight": Hyperparameter(1000.0, _checks.non_negative_float,
                                     "InfoVAE: λ, the weight of the MMD² between q(z) and p(z)"),
        "mmd_kernel": Hyperparameter("rbf", None, "InfoVAE: the MMD's kernel, Gaussian (rbf) "
                                     "or inverse multiquadric (imq)", type=str, choices=KERNELS),
    }

    def check(self, posterior, prior):
        """The prior must be sampled from noise alone (`can_reparameterize`)."""
        if not prior.can_reparameterize:
            name = prior.__name__ if isinstance(prior, type) else type(prior).__name__
            raise ValueError(
                "Received an invalid value for `prior`: the MMD objective compares posterior "
                "samples with prior samples drawn from standard normal noise, and "
                f"{name} cannot be sampled that way (can_reparameterize is False). Use the "
                "standard normal prior (prior='standard_normal') or another objective. "
                f"Received: prior={name}, objective='mmd'")

    def terms(self, model, context):
        terms, z = objective_parts.elbo_terms(model, context, return_z=True)
        local = tf.shape(z)[1]
        # [L, b, d] -> the global batch [L, B, d] (gathered along the batch axis).
        (z_all, valid_all), offset = context.global_batch(
            (tf.transpose(z, [1, 0, 2]), context.valid))
        z_all = tf.transpose(z_all, [1, 0, 2])
        prior_z = prior_samples(model.prior, tf.maximum(tf.shape(z_all)[1], 2), context.seed)
        every = mmd_terms(z_all, prior_z, self.mmd_kernel, bandwidth(model.latent_dim),
                          valid_all)
        own = tf.gather(every, offset + tf.range(local))
        terms["mmd"] = own
        terms["loss"] = terms["loss"] + tf.cast(self.mmd_weight, own.dtype) * own
        return terms
