"""ELBO surgery: the mean KL split over an evaluation set's aggregate posterior.

Hoffman & Johnson (2016) split the mean KL over N examples into what the code
carries about the example and how far the aggregate posterior is from the
prior; Chen et al. (2018) split the second part again:

    E_n KL(q(z|x_n) ‖ p(z)) = I_q(x; z) + KL(q(z) ‖ p(z))
                            = I_q(x; z) + TC(q(z)) + Σ_j KL(q(z_j) ‖ p(z_j)).

`elbo_surgery` estimates every term twice from one matrix of posterior
densities `log q(z_m | x_n)` between the draws and the examples:

* for **the evaluation set's aggregate posterior** `q_N(z) = (1/N) Σ_n q(z|x_n)`
  (the finite-set target; its information is at most log N), with the Monte
  Carlo error of the draws for that target;
* for **the population's aggregate posterior** `q(z) = E_x q(z|x)`, by
  leaving each example out of the mixture its own codes are scored under
  (`*_heldout`), with a grouped-jackknife standard error over the examples.
"""

import logging

import numpy as np
import tensorflow as tf

from tfvae import _checks
from tfvae import objectives
from tfvae import random as tfvae_random

__all__ = [
    "aggregate_log_density",
    "elbo_surgery",
    "JACKKNIFE_GROUPS",
    "SATURATION_NATS",
    "surgery_refusal",
    "TARGET",
]

logger = logging.getLogger(__name__)

# The information estimate is called saturated (and a warning logged) when it is
# within this many nats of its ceiling log N. exp(log N − I) is about the number of
# examples among whose posteriors a typical code is shared; the fewer, the more the
# code's own example dominates q_N(z), and what the ceiling cuts off the
# information reappears as marginal KL and total correlation. Measured on the
# shapes (README): 0.1 nats from the ceiling the set's TC was 1.7 nats above the
# population's, 1.3–1.6 nats from it still 0.2–0.3 nats above (about double).
SATURATION_NATS = 2.0

# Groups of examples for the jackknife of the held-out estimates (fewer for small N).
JACKKNIFE_GROUPS = 20

TARGET = ("the evaluation set's aggregate posterior q_N(z) = (1/N) Σ_n q(z|x_n); "
          "*_heldout: the population's q(z) = E_x q(z|x), each example left out of "
          "the mixture its codes are scored under")

def surgery_refusal(model):
    """Why ELBO surgery does not apply to `model`, or None (it does).

    The surgery scores every example's codes under the other examples' posterior
    densities; a posterior that declares no density over z (`has_density`
    false: a point mass, whose log q(z|x_m) is −inf off its own point) has no
    such terms, and its estimates would be inf or NaN.
    """
    if not model.posterior.has_density:
        return (f"{type(model.posterior).__name__}'s q(z|x) is a point mass with no density "
                "over z (has_density is False): log q(z|x_m) is -inf wherever z is not x_m's "
                "own code, so the aggregate posterior's density terms are not defined")
    return None


def aggregate_log_density(model, x, z, y=None, chunk_size=256):
    """`log q(z)` of the aggregate posterior `q(z) = (1/N) Σ_n q(z|x_n)` over the N examples of `x`.

    Args:
      model: a `tfvae.VAE`; its posterior's `log_prob` must score any z under
        every example's q at once (it broadcasts over examples).
      x: data `[N] + event_shape`; y: their conditions, for a conditional model.
      z: latents `[M, latent_dim]`.
      chunk_size: latents scored against all N posteriors at a time (memory
        `chunk_size × N`). Default value: `256`.

    Returns:
      A float32 tensor `[M]`: `logsumexp_n log q(z_m|x_n) − log N`.
    """
    chunk_size = _checks.positive_int("chunk_size", chunk_size)
    posterior, _ = model.posterior_sampler(*model.prepare_inputs(x, y))
    z = tf.convert_to_tensor(z, tf.float32)
    chunks = [tf.reduce_logsumexp(_score_all(model, posterior, z[i : i + chunk_size]), axis=1)
              for i in range(0, int(z.shape[0]), chunk_size)]
    return tf.concat(chunks, 0) - np.log(len(x))


def _score_all(model, posterior, z):
    """`log q(z_m | x_n)` `[M, N]` for latents `[M, d]` under every example's posterior."""
    try:
        return posterior.log_prob(z[:, None, :])
    except (ValueError, tf.errors.InvalidArgumentError) as error:
        raise ValueError(
            "The aggregate posterior needs a posterior whose log_prob scores any z under "
            f"every example's q. Received: {type(model.posterior).__name__} "
            f"({error.__class__.__name__})"
        ) from None


def _logsumexp(values, axis):
    """Float64 log-sum-exp of numpy `values` along `axis` (−inf where all are −inf)."""
    top = np.max(values, axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        return np.squeeze(top, axis) + np.log(np.sum(np.exp(values - top), axis=axis))


class _Densities:
    """Per draw, the log-sum-exp of its posterior densities over groups of examples.

    For draw i (of example e_i) and each group g of `size` consecutive examples,
    `groups[i, g]` is `logsumexp_{m ∈ g, m ≠ e_i} log q(z_i | x_m)` and `own[i]`
    is `log q(z_i | x_{e_i})` (float64 numpy, a trailing `[d]` for per-dimension
    densities): every aggregate below (the whole set, the set without e_i,
    without e_i and a group) is a log-sum-exp of these.
    """

    def __init__(self, log_q, example, size, num_groups):
        log_q = tf.convert_to_tensor(log_q)  # [M, N] or [M, N, d]
        n = int(log_q.shape[1])
        example = tf.constant(example, tf.int32)
        is_self = tf.one_hot(example, n, on_value=True, off_value=False, dtype=tf.bool)
        if log_q.shape.rank == 3:
            is_self = is_self[:, :, None]
        self.own = tf.gather(log_q, example, batch_dims=1).numpy().astype(np.float64)
        masked = tf.where(is_self, tf.constant(-np.inf, log_q.dtype), log_q)
        padding = [[0, 0], [0, size * num_groups - n]] + [[0, 0]] * (log_q.shape.rank - 2)
        masked = tf.pad(masked, padding, constant_values=-np.inf)
        grouped = tf.reshape(masked, [-1, num_groups, size] + log_q.shape[2:].as_list())
        self.groups = tf.reduce_logsumexp(grouped, axis=2).numpy().astype(np.float64)


def elbo_surgery(model, x, y=None, num_samples=2, seed=0, chunk_size=256,
                 saturation_nats=SATURATION_NATS):
    """The mean KL split into index-code information and the aggregate posterior's KL.

    Mathematical details (Hoffman & Johnson, 2016; Chen et al., 2018): with
    `S = num_samples` draws `z_ns ~ q(z|x_n)` per example, every term is a mean
    over the draws of a per-draw value, e.g. `log q(z|x_n) − log q̂(z)` for the
    information, `log q̂(z) − log p(z)` for the marginal KL, `log q̂(z) −
    Σ_j log q̂(z_j)` for the total correlation and `Σ_j log q̂(z_j) − log p(z)`
    for the dimension-wise KL, with `q̂` one of two aggregate posteriors:

    * `q_N(z) = (1/N) Σ_m q(z|x_m)`, the evaluation set's mixture (the target
      of `mutual_information`, `marginal_kl`, `total_correlation`,
      `dimension_wise_kl`). The densities are exact, so the only error is the
      Monte Carlo error of the draws, `*_mc_stderr = √(Σ_n s_n² / S) / N`
      with `s_n²` the variance of example n's S values (hence S ≥ 2).
      `*_example_sd` is the spread of the per-example values across the
      examples, not an error. The information is at most `log N`
      (`mi_upper_bound`; it is InfoNCE's lower bound on the population's
      I(x; z), Poole et al., 2019): as it approaches log N the set cannot
      show more, and what it cuts off reappears as marginal KL and total
      correlation. `mi_fraction_of_bound` is I / log N; `mi_saturated` is set
      (and a warning logged) when log N − I < `saturation_nats`.
    * `q_{−n}(z) = (1/(N−1)) Σ_{m≠n} q(z|x_m)` at the codes of x_n, the
      population's aggregate posterior estimated without the example being
      scored (the `*_heldout` terms; the information so estimated is the
      leave-one-out upper bound of Poole et al., 2019). These converge to the
      population quantities as N grows. Their error for that target,
      `*_heldout_stderr`, is a delete-a-group jackknife over
      `min(20, N)` groups of examples (each replicate drops a group from both
      the scored examples and the mixtures), so it counts both the draws and
      the choice of examples. Not counted: the O(1/N) bias of `log q̂` by
      Jensen's inequality, which pushes the held-out information up and its
      marginal KL down (the finite-set ones err the other way, so the two
      bracket the population's I and KL(q(z) ‖ p(z)) in expectation).

    `kl_estimate` (information plus marginal KL, the same under both) is a
    Monte Carlo estimate of the mean KL. Cost: N² · S posterior densities, in
    chunks of `chunk_size` draws.

    Args:
      model: a `tfvae.VAE` (see `aggregate_log_density`).
      x: data `[N] + event_shape`, N ≥ 3; y: their conditions, for a
        conditional model.
      num_samples: draws per example S ≥ 2. Default value: `2`.
      seed: noise seed. Default value: `0`.
      chunk_size: draws scored against all N posteriors at a time. Default
        value: `256`.
      saturation_nats: the distance of the information estimate from log N
        under which it is called saturated. Default value: `2.0`.

    Returns:
      A dict: `surgery_target` (a sentence naming both targets),
      `surgery_examples` (N), `mi_upper_bound` (log N), `mi_fraction_of_bound`,
      `mi_saturated`, `saturation_nats`, and floats in nats: for the finite
      set `mutual_information`, `marginal_kl`, `kl_estimate` with their
      `*_mc_stderr` and `*_example_sd`, and for the population
      `mutual_information_heldout`, `marginal_kl_heldout` with their
      `*_heldout_stderr`. When q has independent dimensions and p factorises
      over them, also `total_correlation` and `dimension_wise_kl` (with the
      same suffixes, and `*_heldout` versions), `log q(z_j)` by the same
      mixtures.

    Raises:
      ValueError: fewer than 3 examples, `num_samples` < 2, or a posterior
        that cannot score other examples' codes (`surgery_refusal`).
    """
    refusal = surgery_refusal(model)
    if refusal:
        raise ValueError(f"ELBO surgery does not apply to this model: {refusal}.")
    num_samples = _checks.positive_int("num_samples", num_samples)
    if num_samples < 2:
        raise ValueError(
            "Received an invalid value for `num_samples`, expected at least 2 draws per "
            "example (the Monte Carlo error is estimated from their spread). Received: "
            f"num_samples={num_samples}")
    chunk_size = _checks.positive_int("chunk_size", chunk_size)
    saturation_nats = _checks.non_negative_float("saturation_nats", saturation_nats)
    n = len(x)
    if n < 3:
        raise ValueError(
            "Received an invalid value for `x`, expected at least 3 examples (the aggregate "
            "posterior is a mixture over them, and the held-out one leaves one out). "
            f"Received: x with {n} examples")
    d = model.latent_dim
    parameters = model.posterior_parameters(*model.prepare_inputs(x, y))
    noise = tf.random.stateless_normal([num_samples, n, d], seed=tfvae_random.make_seed(seed))
    z = tf.reshape(model.posterior.reparameterize(parameters, noise), [-1, d])  # [S·N, d]
    example = np.tile(np.arange(n), num_samples)  # the example each draw came from
    per_dimension = model.posterior.independent_dimensions and model.prior.has_kl_per_dimension
    size = -(-n // min(JACKKNIFE_GROUPS, n))  # examples per group (the last may have fewer)
    num_groups = -(-n // size)
    bounds = np.minimum(np.arange(num_groups + 1) * size, n)
    # q with independent dimensions is Π_j N(loc_j, scale_j²): its joint density is the
    # sum of the per-dimension ones (no distribution object needed).
    posterior = None if per_dimension else model.posterior.distribution(parameters)
    joint, dims = [], []
    for i in range(0, num_samples * n, chunk_size):
        rows = slice(i, i + chunk_size)
        if per_dimension:
            log_q = objectives.log_normal_per_dimension(
                z[rows][:, None, :], parameters["loc"][None], parameters["scale"][None])
            dims.append(_Densities(log_q, example[rows], size, num_groups))
            log_q = tf.reduce_sum(log_q, axis=-1)
        else:
            log_q = _score_all(model, posterior, z[rows])
        joint.append(_Densities(log_q, example[rows], size, num_groups))
    own, groups = (np.concatenate([getattr(c, k) for c in joint]) for k in ("own", "groups"))
    log_p = np.asarray(model.prior.distribution().log_prob(z), np.float64)
    group_of = np.searchsorted(bounds, example, side="right") - 1
    group_sizes = np.diff(bounds)

    def aggregates(own_, groups_):
        """`log q̂` per draw under the set, the set without e_i, and per deleted group."""
        finite = _logsumexp(np.concatenate([groups_, own_[:, None]], axis=1), axis=1)
        heldout = _logsumexp(groups_, axis=1)
        deleted = []
        for g in range(num_groups):
            kept = np.delete(groups_, g, axis=1)
            deleted.append(_logsumexp(kept, axis=1) - np.log(n - group_sizes[g] - 1))
        return finite - np.log(n), heldout - np.log(n - 1), deleted

    log_q, log_q_out, log_q_deleted = aggregates(own, groups)
    finite = {"mutual_information": own - log_q, "marginal_kl": log_q - log_p,
              "kl_estimate": own - log_p}
    heldout = {"mutual_information": [own - log_q_out] + [own - v for v in log_q_deleted],
               "marginal_kl": [log_q_out - log_p] + [v - log_p for v in log_q_deleted]}
    if per_dimension:
        own_d, groups_d = (np.concatenate([getattr(c, k) for c in dims])
                           for k in ("own", "groups"))  # [S·N, d], [S·N, G, d]
        log_qd, log_qd_out, log_qd_deleted = aggregates(own_d, groups_d)
        product, product_out = log_qd.sum(-1), log_qd_out.sum(-1)
        products_deleted = [v.sum(-1) for v in log_qd_deleted]
        finite["total_correlation"] = log_q - product
        finite["dimension_wise_kl"] = product - log_p
        heldout["total_correlation"] = [log_q_out - product_out] + [
            a - b for a, b in zip(log_q_deleted, products_deleted)]
        heldout["dimension_wise_kl"] = [product_out - log_p] + [
            b - log_p for b in products_deleted]

    mi = float(finite["mutual_information"].mean())
    bound = float(np.log(n))
    result = {"surgery_target": TARGET, "surgery_examples": n, "mi_upper_bound": bound,
              "mi_fraction_of_bound": mi / bound,
              "mi_saturated": bool(bound - mi < saturation_nats),
              "saturation_nats": saturation_nats}
    for key, values in finite.items():
        per_example = values.reshape(num_samples, n)
        result[key] = float(per_example.mean())
        within = per_example.var(axis=0, ddof=1).sum()
        result[key + "_mc_stderr"] = float(np.sqrt(within / num_samples) / n)
        result[key + "_example_sd"] = float(per_example.mean(axis=0).std(ddof=1))
    for key, (values, *replicates) in heldout.items():
        result[key + "_heldout"] = float(values.mean())
        estimates = np.array([v[group_of != g].mean() for g, v in enumerate(replicates)])
        spread = np.sum(np.square(estimates - estimates.mean()))
        result[key + "_heldout_stderr"] = float(np.sqrt((num_groups - 1) / num_groups * spread))
    if result["mi_saturated"]:
        logger.warning(
            "ELBO surgery: the information estimate %.3f nats is within %.2f nats of its "
            "ceiling log N = %.3f (N = %d examples): the set cannot show more, and the "
            "marginal KL and total correlation are inflated by what it cuts off. Use more "
            "examples; the *_heldout estimates (the population's aggregate posterior) err "
            "the other way.",
            mi, saturation_nats, bound, n)
    if per_dimension and (result["dimension_wise_kl"] < 0
                          or result["dimension_wise_kl_heldout"] < 0):
        logger.warning(
            "ELBO surgery: a dimension-wise KL estimate is negative (%.4f on the set, %.4f "
            "held out), which a KL cannot be: Monte Carlo error (set) or the downward "
            "Jensen bias of log q(z_j) (held out); read it as about 0.",
            result["dimension_wise_kl"], result["dimension_wise_kl_heldout"])
    return result
