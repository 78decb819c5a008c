"""log p(x) by defensive importance sampling, with its Monte Carlo error and effective sample size.

Importance sampling with a proposal q narrower than the posterior p(z|x) is
consistent but its weights `w = p(x, z) / q(z)` can have infinite variance:
for Gaussians that happens as soon as `2 Σ_post⁻¹ − Σ_q⁻¹` is not positive
definite, e.g. for the KL-optimal diagonal q of a posterior with strong
partial correlations. Then log p̂ is biased low by more than its apparent
error and the sample standard error means nothing (Cremer et al.'s
approximation gap comes out too small).

The defensive mixture (Hesterberg, 1995) fixes that: the proposal

    r(z) = α q(z) + (1 − α) t(z),

with t a multivariate Student-t (ν degrees of freedom) centred on q's mean with
q's covariance inflated by `scale²`. A Student-t's polynomial tails dominate
every Gaussian tail, so with a Gaussian-tailed prior and a bounded likelihood
the weights are bounded and have finite variance; where q is good, its share α
of the samples keeps the estimate nearly as sharp as with q alone (weights at
most 1/α times theirs). The samples are stratified (exactly αK from q, the
rest from t) and every sample is weighted by the mixture density, which keeps
the estimate of p(x) unbiased (the "deterministic mixture" estimator).

Mathematical details:
  `p̂ = (1/K) Σ_k w_k`, `w_k = p(x|z_k) p(z_k) / r(z_k)`;
  `Var p̂ = Σ_j K_j s_j² / K²` (s_j² the sample variance of the weights drawn
  from component j); the standard error of `log p̂` is the delta method's
  `sqrt(Var p̂) / p̂`, and log p̂ is biased low by about half its square;
  ESS = (Σ w)² / Σ w².
"""

import math

import tensorflow as tf

from tfvae import _checks
from tfvae import objectives
from tfvae import random as tfvae_random

__all__ = [
    "defensive_log_likelihood",
    "log_likelihood_from_weights",
    "proposal_moments",
    "student_t_log_prob",
    "student_t_sample",
]


def proposal_moments(proposal, num_samples=256, seed=None, jitter=1e-6, reparameterize=None):
    """Mean `[batch, d]` and covariance `[batch, d, d]` of a posterior, from its samples.

    Uses `num_samples` draws (works for every family, flows included; drawn through
    `reparameterize`, q's sampler, when given: see `objectives.posterior_sample`);
    `jitter` is added to the covariance's diagonal so it always has a Cholesky factor.
    """
    z = objectives.posterior_sample(proposal, num_samples, seed=seed,
                                    reparameterize=reparameterize)  # [M, batch, d]
    mean = tf.reduce_mean(z, axis=0)
    centred = z - mean
    cov = tf.einsum("mbi,mbj->bij", centred, centred) / (num_samples - 1.0)
    return mean, cov + jitter * tf.eye(tf.shape(mean)[-1], dtype=cov.dtype)


def student_t_log_prob(z, loc, scale_tril, df):
    """log density of a multivariate Student-t at `z [..., batch, d]` (`loc [batch, d]`,
    `scale_tril [batch, d, d]`, `df` > 0 degrees of freedom); returns `[..., batch]`."""
    d = tf.cast(tf.shape(loc)[-1], z.dtype)
    delta = z - loc
    batch_rank = len(delta.shape) - 2
    tril = tf.broadcast_to(scale_tril, tf.concat([tf.shape(delta)[:batch_rank],
                                                  tf.shape(scale_tril)], 0))
    solved = tf.linalg.triangular_solve(tril, delta[..., None], lower=True)[..., 0]
    mahalanobis = tf.reduce_sum(tf.square(solved), axis=-1)
    log_det = tf.reduce_sum(tf.math.log(tf.abs(tf.linalg.diag_part(scale_tril))), axis=-1)
    return (tf.math.lgamma((df + d) / 2.0) - math.lgamma(df / 2.0)
            - d / 2.0 * math.log(df * math.pi) - log_det
            - (df + d) / 2.0 * tf.math.log1p(mahalanobis / df))


def student_t_sample(loc, scale_tril, df, num_samples, seed):
    """`[num_samples, batch, d]` draws of the Student-t above; `df` must be an integer
    (the χ² variate is a sum of `df` squared normals from tfvae's counter-based noise)."""
    batch, d = tf.shape(loc)[0], tf.shape(loc)[1]
    eps = tfvae_random.standard_normal([num_samples, batch, d], tfvae_random.fold_in(seed, 0))
    chi = tfvae_random.standard_normal([df, num_samples, batch], tfvae_random.fold_in(seed, 1))
    radius = tf.sqrt(tf.reduce_sum(tf.square(chi), axis=0) / float(df))  # [n, batch]
    return loc + tf.einsum("bij,nbj->nbi", scale_tril, eps) / radius[..., None]


def defensive_log_likelihood(x, proposal, decode, prior, num_samples=1000, *, seed=None,
                             defensive_fraction=0.25, scale=2.0, df=4, chunk_size=100,
                             moment_samples=256, reparameterize=None):
    """Importance-sampled log p(x) per example with a defensive mixture proposal.

    Args:
      x: data `[batch] + event_shape`.
      proposal: q(z|x), batch shape `[batch]`, event shape `[d]` (e.g. the
        per-example optimised q* of `tfvae.gap`); its `log_prob` must score any z.
      decode: callable `z [n, d] -> p(x|z)` with batch shape `[n]`.
      prior: p(z).
      num_samples: importance samples K ≥ 2 per example. Default value: `1000`.
      seed: noise seed.
      defensive_fraction: 1 − α, the share of samples drawn from the Student-t.
        Default value: `0.25`.
      scale: the Student-t's scale matrix is `scale²` × q's covariance.
        Default value: `2.0`.
      df: the Student-t's degrees of freedom (an integer ≥ 1). Default value: `4`.
      chunk_size: samples scored at a time per example. Default value: `100`.
      moment_samples: draws of q for its mean and covariance. Default value: `256`.
      reparameterize: q's sampler `ε [n, batch, d] -> z` (see
        `objectives.posterior_sample`). Default value: `None` (q's own `sample`).

    Returns:
      A dict of `[batch]` float32 tensors: `log_px` (log p̂), `stderr` (its
      Monte Carlo standard error for log p(x), delta method), `ess` (the
      effective sample size of the weights, at most K).
    """
    num_samples = _checks.positive_int("num_samples", num_samples)
    if num_samples < 2:
        raise ValueError("Received an invalid value for `num_samples`, expected an integer "
                         f">= 2 (a standard error needs two samples). Received: {num_samples}")
    defensive_fraction = _checks.open_fraction("defensive_fraction", defensive_fraction)
    scale = _checks.positive_float("scale", scale)
    df = _checks.positive_int("df", df)
    chunk_size = min(_checks.positive_int("chunk_size", chunk_size), num_samples)
    counts = [num_samples - max(1, round(defensive_fraction * num_samples)), 0]
    counts[1] = num_samples - counts[0]
    if counts[0] < 1:
        counts = [1, num_samples - 1]
    seed = tfvae_random.make_seed(seed)
    log_alpha = [math.log(counts[0] / num_samples), math.log(counts[1] / num_samples)]
    mean, cov = proposal_moments(proposal, moment_samples, tfvae_random.fold_in(seed, 0),
                                 reparameterize=reparameterize)
    tril = scale * tf.linalg.cholesky(cov)
    x = tf.cast(x, tf.float32)

    def log_weights(z):
        log_r = tf.reduce_logsumexp(tf.stack([
            log_alpha[0] + proposal.log_prob(z),
            log_alpha[1] + student_t_log_prob(z, mean, tril, float(df))]), axis=0)
        return (objectives.log_likelihood_of_samples(x, z, decode) + prior.log_prob(z)
                - log_r)

    def draw(component, n, chunk_seed):
        if component == 0:
            return objectives.posterior_sample(proposal, n, seed=chunk_seed,
                                               reparameterize=reparameterize)
        return student_t_sample(mean, tril, df, n, chunk_seed)

    sums = []  # per component: (log Σ w, log Σ w²), [batch] each
    for component, count in enumerate(counts):
        component_seed = tfvae_random.fold_in(seed, component + 1)

        def chunk(start, n, component=component, component_seed=component_seed):
            log_w = log_weights(draw(component, n, tfvae_random.fold_in(component_seed, start)))
            return tf.stack([tf.reduce_logsumexp(log_w, 0), tf.reduce_logsumexp(2.0 * log_w, 0)])

        # [2, batch]: log Σ w and log Σ w² over the component's samples.
        sums.append(objectives.chunked_logsumexp(chunk, count, chunk_size))
    return _combine(sums, counts)


def _combine(sums, counts):
    """log p̂, its standard error and the ESS from each component's log Σ w and log Σ w²."""
    s1 = tf.stack([tf.cast(s[0], tf.float64) for s in sums])  # [J, batch]
    s2 = tf.stack([tf.cast(s[1], tf.float64) for s in sums])
    k = tf.constant(counts, tf.float64)[:, None]
    total = float(sum(counts))
    log_sum = tf.reduce_logsumexp(s1, axis=0)
    log_px = log_sum - math.log(total)
    # Relative to p̂: each component's mean and mean square of w / p̂.
    mean = tf.exp(s1 - tf.math.log(k) - log_px)
    square = tf.exp(s2 - tf.math.log(k) - 2.0 * log_px)
    variance = tf.maximum(square - tf.square(mean), 0.0) * k / tf.maximum(k - 1.0, 1.0)
    relative_variance = tf.reduce_sum(k * variance, axis=0) / total**2
    ess = tf.exp(2.0 * log_sum - tf.reduce_logsumexp(s2, axis=0))
    return {"log_px": tf.cast(log_px, tf.float32),
            "stderr": tf.cast(tf.sqrt(relative_variance), tf.float32),
            "ess": tf.cast(ess, tf.float32)}


def log_likelihood_from_weights(log_w):
    """log p̂, its standard error and ESS from log weights `[K, batch]` drawn from one
    proposal (numpy or tensor): the same formulas with one component."""
    log_w = tf.convert_to_tensor(log_w, tf.float32)
    k = int(log_w.shape[0])
    sums = [tf.stack([tf.reduce_logsumexp(log_w, 0), tf.reduce_logsumexp(2.0 * log_w, 0)])]
    return _combine(sums, [k])
