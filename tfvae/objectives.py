"""Variational objectives as pure functions returning per-example `[batch]` terms, in nats.

Every function takes the posterior q(z|x) as a `tfd.Distribution` with batch
shape `[batch]`, a `decode` callable mapping latents `[n, latent_dim]` to the
likelihood p(x|z) (a distribution with batch shape `[n]`), and the prior p(z).
Functions that sample q take its sampler explicitly: `reparameterize`, the
posterior's own map `ε [L, batch, d] -> z` from standard normal noise
(`tfvae.heads.Posterior.reparameterize` at q's parameters; `tfvae.VAE.
posterior_sampler` gives q and it together); without one, q's own `sample`
(see `posterior_sample`). Nothing is averaged over the batch here; callers take
the batch mean.

Mathematical details:
  For any q, `log p(x) = ELBO(q) + KL(q(z|x) ‖ p(z|x))` with
  `ELBO(q) = E_q[log p(x|z)] − KL(q(z|x) ‖ p(z))`, so `ELBO ≤ log p(x)` with
  equality iff q is the exact posterior. With importance weights
  `w_k = p(x|z_k) p(z_k) / q(z_k|x)`, `z_k ~ q`, the IWAE bound
  `E[log (1/K) Σ_k w_k]` rises with K towards `log p(x)`.
"""

import math

import tensorflow as tf
import tensorflow_probability as tfp

from tfvae import _checks
from tfvae import random as tfvae_random

__all__ = [
    "all_gather",
    "beta_tcvae",
    "chunked_logsumexp",
    "elbo",
    "elbo_from_terms",
    "elbo_gap",
    "iwae",
    "iwae_bound",
    "kl_divergence",
    "KL_METHODS",
    "log_aggregate_posterior",
    "log_importance_weights",
    "log_likelihood",
    "log_likelihood_of_samples",
    "log_normal_per_dimension",
    "posterior_sample",
    "replica_context",
    "replica_offset",
    "sampled_reconstruction",
    "standard_noise",
    "tc_decomposition",
    "tensor_elbo",
]

tfd = tfp.distributions

KL_METHODS = ("auto", "analytic", "mc")


def posterior_sample(posterior, num_samples=1, seed=None, noise=None, offset=0,
                     reparameterize=None):
    """Draws samples z ~ q, `[L] + batch_shape + event_shape`.

    With `reparameterize`, the posterior's own map from standard normal noise
    (`tfvae.heads.Posterior.reparameterize` at q's parameters, or
    `tfvae.VAE.posterior_sampler`'s), z = reparameterize(ε): gradients flow to q's
    parameters and the same noise gives the same z on every backend. ε is the
    explicit `noise`, or drawn from `seed` as `standard_noise` draws it (example
    `b`'s noise depends only on the seed and `offset + b`). Without it, q is
    sampled by its own `sample`: a distribution alone does not say how noise
    maps to z, so explicit `noise` is then refused.

    Args:
      posterior: q(z|x), batch shape `[batch]` (or `[]`), event shape `[d]`.
      num_samples: L, samples per example.
      seed: seed for the noise (see `tfvae.random.make_seed`).
      noise: optional explicit ε of shape `[L, batch, d]` (then `seed` is unused);
        needs `reparameterize`.
      offset: example index of the first row, so noise for example `b` is the
        same however a batch is split (e.g. across replicas).
      reparameterize: optional callable `ε [L, batch, d] -> z [L, batch, d]`.
        Default value: `None` (`posterior.sample`).

    Returns:
      z of shape `[L, batch, d]`.

    Raises:
      ValueError: for explicit `noise` without `reparameterize`.
    """
    if reparameterize is None:
        if noise is not None:
            raise ValueError(
                "Received an invalid value for `noise`: explicit noise needs the posterior's "
                "`reparameterize` (e.g. `VAE.posterior_sampler` or "
                f"`Posterior.reparameterize`); {type(posterior).__name__} alone does not say "
                "how noise maps to z. Pass `reparameterize=...`, or a seed instead of noise. "
                f"Received: noise with shape {tuple(noise.shape)} and reparameterize=None")
        return posterior.sample(num_samples, seed=tfvae_random.make_seed(seed))
    if noise is None:
        noise = _noise_for(posterior, num_samples, seed, offset)
    return reparameterize(tf.convert_to_tensor(noise, tf.float32))


def _noise_for(posterior, num_samples, seed, offset):
    """`standard_noise` shaped `[L] + batch_shape + event_shape` for the distribution
    `posterior` (a reshape: a `[batch]` posterior gets `standard_noise` as it is)."""
    batch_size = posterior.batch_shape.num_elements()
    if batch_size is None:
        batch_size = tf.reduce_prod(posterior.batch_shape_tensor())
    event_size = posterior.event_shape.num_elements()
    if event_size is None:
        event_size = tf.reduce_prod(posterior.event_shape_tensor())
    noise = standard_noise(batch_size, num_samples, event_size, seed, offset)
    if posterior.batch_shape.rank == 1 and posterior.event_shape.rank == 1:
        return noise
    return tf.reshape(noise, tf.concat([[num_samples], posterior.batch_shape_tensor(),
                                        posterior.event_shape_tensor()], 0))


def standard_noise(batch_size, num_samples, event_size, seed=None, offset=0):
    """Standard normal ε `[L, batch, d]` for `batch` examples, drawn example-major so
    example `b`'s noise depends only on `(seed, offset + b)` (the noise every sampler
    of tfvae pushes through a posterior's `reparameterize`)."""
    noise = tfvae_random.standard_normal(
        [batch_size, num_samples, event_size], tfvae_random.make_seed(seed),
        offset=offset * num_samples * event_size,
    )
    if isinstance(num_samples, int) and num_samples == 1:
        return tf.reshape(noise, [1, batch_size, event_size])  # the same layout
    return tf.transpose(noise, [1, 0, 2])


def kl_divergence(posterior, prior, z=None, kl="auto"):
    """KL(q(z|x) ‖ p(z)) per example.

    Args:
      posterior: q(z|x), batch shape `[batch]`.
      prior: p(z), batch shape `[]` or `[batch]`.
      z: samples `[L, batch, d]` from q, needed for the Monte Carlo estimate.
      kl: `"analytic"` (TFP's registered closed form, error if none),
        `"mc"` (`mean_l log q(z_l) − log p(z_l)`), or `"auto"` (analytic when
        registered, else Monte Carlo). Default value: `"auto"`.

    Returns:
      `[batch]` KL in nats.
    """
    _checks.one_of("kl", kl, KL_METHODS)
    if kl in ("auto", "analytic"):
        try:
            return tfd.kl_divergence(posterior, prior)
        except NotImplementedError:
            if kl == "analytic":
                raise ValueError(
                    "Received an invalid value for `kl`: no analytic KL is registered "
                    f"between {type(posterior).__name__} and {type(prior).__name__}. "
                    "Use kl='auto' or kl='mc'. Received: kl='analytic'"
                ) from None
    if z is None:
        raise ValueError("A Monte Carlo KL needs posterior samples `z`. Received: z=None")
    return tf.reduce_mean(posterior.log_prob(z) - prior.log_prob(z), axis=0)


def _tile_data(x, num_samples):
    """`[batch, ...]` -> `[L * batch, ...]`, sample-major like `tf.reshape(z, [-1, d])`."""
    multiples = tf.concat([[num_samples], tf.ones([tf.rank(x) - 1], tf.int32)], 0)
    return tf.tile(x, multiples)


def log_likelihood_of_samples(x, z, decode, tiled_x=None):
    """`log p(x | z_l)` for samples `z` of shape `[L, batch, d]`; returns `[L, batch]`.

    `tiled_x`: x already repeated L times (`[L · batch, ...]`, sample-major),
    when a caller scores many chunks of L samples. Default value: `None`.
    """
    num_samples, batch = tf.shape(z)[0], tf.shape(z)[1]
    z_flat = tf.reshape(z, tf.concat([[num_samples * batch], tf.shape(z)[2:]], 0))
    likelihood = decode(z_flat)
    if tiled_x is None:
        tiled_x = _tile_data(tf.cast(x, tf.float32), num_samples)
    log_px_z = likelihood.log_prob(tiled_x)
    return tf.reshape(log_px_z, [num_samples, batch])


def elbo(
    x,
    posterior,
    decode,
    prior,
    *,
    num_samples=1,
    kl="auto",
    beta=1.0,
    free_bits=0.0,
    seed=None,
    noise=None,
    offset=0,
    group_kl=None,
    free_bits_by_group=True,
    reparameterize=None,
):
    """The evidence lower bound and its terms, per example.

    Mathematical details:
      `reconstruction = (1/L) Σ_l log p(x | z_l)`, `z_l ~ q(z|x)` reparameterised;
      `kl = KL(q(z|x) ‖ p(z))` (see `kl_divergence`);
      `elbo = reconstruction − kl`;
      `loss = −reconstruction + β · max(kl, free_bits)` (what training
      minimises; with β = 1 and no free bits, `loss = −elbo`).
      With `group_kl`, the KL splits into G groups `kl_g` (latent dimensions
      or layers) and free bits apply per group on the batch mean (Kingma et
      al., 2016): `penalty_b = Σ_g (kl_gb if mean_b kl_g > free_bits else
      free_bits)`, whose batch mean is `Σ_g max(mean_b kl_g, free_bits)`.

    Args:
      x: data `[batch] + event_shape`.
      posterior: q(z|x) with batch shape `[batch]`.
      decode: callable `z [n, d] -> p(x|z)` with batch shape `[n]`.
      prior: p(z).
      num_samples: L ≥ 1. Default value: `1`.
      kl: `"auto" | "analytic" | "mc"`. Default value: `"auto"`.
      beta: KL weight β ≥ 0 in `loss` (the reported `elbo` is always β = 1).
        Default value: `1.0`.
      free_bits: nats of KL per example that are not penalised (KL
        thresholding). Default value: `0.0`.
      seed: noise seed. noise: explicit ε `[L, batch, d]` (needs
        `reparameterize`). offset, reparameterize: see `posterior_sample`.
        Default value of `reparameterize`: `None` (q's own `sample`).
      group_kl: optional callable `z [L, batch, d] -> [batch, G]`, the KL of
        each group of latents (summing to `kl`). Default value: `None`.
      free_bits_by_group: with `group_kl`, apply free bits per group (else
        the groups are only reported). The batch mean is over the global
        batch under a `tf.distribute` strategy. Default value: `True`.

    Returns:
      A dict of `[batch]` tensors: `elbo`, `reconstruction`, `kl`, `loss`,
      and with `group_kl`, `kl_groups` of shape `[batch, G]`.
    """
    z = posterior_sample(posterior, num_samples, seed=seed, noise=noise, offset=offset,
                         reparameterize=reparameterize)
    reconstruction = tf.reduce_mean(log_likelihood_of_samples(x, z, decode), axis=0)
    kl_term = kl_divergence(posterior, prior, z=z, kl=kl)
    return elbo_from_terms(reconstruction, kl_term, z, beta=beta, free_bits=free_bits,
                           group_kl=group_kl, free_bits_by_group=free_bits_by_group)


def tensor_elbo(x, reparameterize, log_likelihood, kl_term, latent_dim, *, num_samples=1,
                seed=None, noise=None, offset=0, **penalty):
    """`elbo` from tensors, for a posterior whose KL to the prior is analytic.

    The same numbers as `elbo` with the same noise, without building TFP
    objects on the training path: `z = reparameterize(ε)` (`ε [L, batch, d]`),
    `log_likelihood(z [L·batch, d], x [L·batch, ...]) -> [L·batch]`, and the
    closed-form `kl_term` `[batch]` (or a callable `z [L, batch, d] -> [batch]`, e.g.
    `kl_divergence` at z, for a Monte Carlo KL). `penalty`: `beta`, `free_bits`,
    `group_kl`, `free_bits_by_group` as in `elbo`.
    """
    z, reconstruction = sampled_reconstruction(x, reparameterize, log_likelihood, latent_dim,
                                               num_samples, seed, noise, offset)
    if callable(kl_term):
        kl_term = kl_term(z)
    return elbo_from_terms(reconstruction, kl_term, z, **penalty)


def sampled_reconstruction(x, reparameterize, log_likelihood, latent_dim, num_samples=1,
                           seed=None, noise=None, offset=0):
    """`z = reparameterize(ε)` for `ε [L, batch, d]` (explicit `noise`, or drawn from
    `seed`) and the per-example `reconstruction = (1/L) Σ_l log p(x | z_l)` `[batch]`.

    `log_likelihood(z [L·batch, d], x [L·batch, ...]) -> [L·batch]`.

    Returns:
      `(z [L, batch, d], reconstruction [batch])`.
    """
    batch_size = x.shape[0] if x.shape[0] is not None else tf.shape(x)[0]
    if noise is None:
        noise = standard_noise(batch_size, num_samples, latent_dim, seed, offset)
    else:
        noise = tf.convert_to_tensor(noise, tf.float32)
        num_samples = noise.shape[0] if noise.shape[0] is not None else tf.shape(noise)[0]
    z = reparameterize(noise)
    single = isinstance(num_samples, int) and num_samples == 1
    x = tf.cast(x, tf.float32)
    log_px_z = log_likelihood(tf.reshape(z, [num_samples * batch_size, latent_dim]),
                              x if single else _tile_data(x, num_samples))
    reconstruction = log_px_z if single else tf.reduce_mean(
        tf.reshape(log_px_z, [num_samples, batch_size]), axis=0)
    return z, reconstruction


def elbo_from_terms(reconstruction, kl_term, z, *, beta=1.0, free_bits=0.0, group_kl=None,
                    free_bits_by_group=True):
    """`elbo`'s result from its per-example `reconstruction` and `kl` (`[batch]`) and the
    samples `z` `[L, batch, d]` (for `group_kl`); see `elbo` for the arguments."""
    kl_penalty = kl_term
    extra = {}
    has_free_bits = tf.is_tensor(free_bits) or free_bits > 0
    if group_kl is not None:
        extra["kl_groups"] = group_kl(z)
    if group_kl is not None and free_bits_by_group and has_free_bits:
        kl_groups = extra["kl_groups"]
        free = tf.cast(free_bits, kl_groups.dtype)
        active = _global_batch_mean(kl_groups) > free
        kl_penalty = tf.reduce_sum(tf.where(active, kl_groups, free), axis=-1)
    elif has_free_bits:
        # (Only then: a Monte Carlo KL estimate may be negative, and clamping it
        # at 0 would bias the β = 1 loss away from −ELBO.)
        kl_penalty = tf.maximum(kl_term, tf.cast(free_bits, kl_term.dtype))
    return {
        "elbo": reconstruction - kl_term,
        "reconstruction": reconstruction,
        "kl": kl_term,
        "loss": -reconstruction + tf.cast(beta, kl_term.dtype) * kl_penalty,
        **extra,
    }


def _global_batch_mean(values):
    """`[batch, G]` -> `[1, G]` mean over the batch, across all replicas when distributed."""
    total = tf.reduce_sum(tf.stop_gradient(values), axis=0, keepdims=True)
    count = tf.cast(tf.shape(values)[0], values.dtype)
    replica = replica_context()
    if replica is not None:
        total, count = replica.all_reduce(tf.distribute.ReduceOp.SUM, [total, count])
    return total / count


def iwae(
    x,
    posterior,
    decode,
    prior,
    k,
    *,
    kl="auto",
    seed=None,
    offset=0,
    stopped_posterior=None,
    group_kl=None,
    reparameterize=None,
):
    """The importance-weighted bound as a training objective, with the ELBO beside it.

    Mathematical details:
      With `z_k ~ q(z|x)` reparameterised and
      `log w_k = log p(x|z_k) + log p(z_k) − log q(z_k|x)`:
      `iwae = log (1/K) Σ_k w_k`; `reconstruction = (1/K) Σ_k log p(x|z_k)`;
      `kl = KL(q ‖ p)`; `elbo = reconstruction − kl` (from the same samples);
      `loss = −iwae`. With `stopped_posterior` (q with its parameters under
      `stop_gradient`), `log q` uses it and `loss_encoder` is the doubly
      reparameterised (DReG) surrogate `−Σ_k stop(w̃_k²) log w_k`
      (Tucker et al., 2019; `w̃` the normalised weights): use its gradient for
      the encoder's variables and `loss`'s for the decoder's and prior's.

    Args:
      x, posterior, decode, prior: as in `elbo`.
      k: importance samples K ≥ 1.
      kl: how the reported `kl` is computed. Default value: `"auto"`.
      seed, offset: as in `elbo`.
      stopped_posterior: q with stopped parameters, for the DReG estimator.
        Default value: `None` (the standard IWAE gradient).
      group_kl: as in `elbo`, reported only (`kl_groups`). Default value: `None`.
      reparameterize: optional `ε [K, batch, d] -> z`, the posterior's own map from
        standard normal noise (see `posterior_sample`). Default value: `None`
        (q's own `sample`).

    Returns:
      A dict of `[batch]` tensors: `iwae`, `elbo`, `reconstruction`, `kl`,
      `loss`, `loss_encoder` with `stopped_posterior` and `kl_groups`
      (`[batch, G]`) with `group_kl`.
    """
    k = _checks.positive_int("k", k)
    z = posterior_sample(posterior, k, seed=seed, offset=offset, reparameterize=reparameterize)
    log_px_z = log_likelihood_of_samples(x, z, decode)
    scoring_posterior = posterior if stopped_posterior is None else stopped_posterior
    log_w = log_px_z + prior.log_prob(z) - scoring_posterior.log_prob(z)
    bound = tf.reduce_logsumexp(log_w, axis=0) - math.log(k)
    reconstruction = tf.reduce_mean(log_px_z, axis=0)
    kl_term = kl_divergence(posterior, prior, z=z, kl=kl)
    terms = {
        "iwae": bound,
        "elbo": reconstruction - kl_term,
        "reconstruction": reconstruction,
        "kl": kl_term,
        "loss": -bound,
    }
    if group_kl is not None:
        terms["kl_groups"] = group_kl(z)
    if stopped_posterior is not None:
        normalized = tf.stop_gradient(tf.nn.softmax(log_w, axis=0))
        terms["loss_encoder"] = -tf.reduce_sum(tf.square(normalized) * log_w, axis=0)
    return terms


def log_importance_weights(x, posterior, decode, prior, num_samples, seed=None, noise=None,
                           tiled_x=None, reparameterize=None):
    """`log w_k = log p(x|z_k) + log p(z_k) − log q(z_k|x)`, `z_k ~ q`; shape `[K, batch]`
    (`tiled_x`: see `log_likelihood_of_samples`; `noise`, `reparameterize`: see
    `posterior_sample`)."""
    z = posterior_sample(posterior, num_samples, seed=seed, noise=noise,
                         reparameterize=reparameterize)
    log_px_z = log_likelihood_of_samples(x, z, decode, tiled_x)
    return log_px_z + prior.log_prob(z) - posterior.log_prob(z)


def iwae_bound(x, posterior, decode, prior, k, *, seed=None, chunk_size=None,
               reparameterize=None):
    """The importance-weighted bound `log (1/K) Σ_k w_k` per example (Burda et al., 2016).

    `K = 1` is the ELBO with a Monte Carlo KL; as `K → ∞` it converges to
    `log p(x)`. Samples are drawn in chunks of `chunk_size` and combined with a
    stable log-sum-exp, so large K fits in memory.

    Args:
      x: data `[batch] + event_shape`.
      posterior, decode, prior: as in `elbo`.
      k: number of importance samples K ≥ 1.
      seed: noise seed (chunk c's noise is `standard_noise` from `fold_in(seed, first
        sample of c)`).
      chunk_size: samples per chunk. Default value: `K` (one chunk).
      reparameterize: q's sampler (see `posterior_sample`). Default value: `None`
        (q's own `sample`).

    Returns:
      `[batch]` bound in nats.
    """
    k = _checks.positive_int("k", k)
    chunk_size = k if chunk_size is None else _checks.positive_int("chunk_size", chunk_size)
    chunk_size = min(chunk_size, k)
    seed = tfvae_random.make_seed(seed)

    # x repeated for a full chunk once, not once per chunk.
    tiled_x = _tile_data(tf.cast(x, tf.float32), chunk_size)

    def chunk(start, n):
        """`log Σ_{k in chunk} w_k` `[batch]` for the `n` samples from `start` on."""
        chunk_seed = tfvae_random.fold_in(seed, start)
        log_w = log_importance_weights(x, posterior, decode, prior, n, seed=chunk_seed,
                                       tiled_x=tiled_x if n == chunk_size else None,
                                       reparameterize=reparameterize)
        return tf.reduce_logsumexp(log_w, axis=0)

    return chunked_logsumexp(chunk, k, chunk_size, x.shape[:1]) - math.log(k)


def chunked_logsumexp(chunk, count, chunk_size, element_shape=None):
    """`log Σ` over `count` samples scored `chunk_size` at a time, combined stably.

    Args:
      chunk: `(start, n) -> [..., batch]`, the log-sum-exp of the `n` samples
        from `start` on (each chunk draws its own noise from `start`).
      count: the number of samples, ≥ 1.
      chunk_size: samples per chunk, ≤ `count`.
      element_shape: the static shape of `chunk`'s result, if known (kept
        through the graph loop). Default value: `None`.

    Returns:
      `chunk`'s shape: the log-sum-exp over all `count` samples. Eagerly the full
      chunks run as a Python loop; in a graph, as one `tf.while_loop` body,
      however many there are.
    """
    full, rest = divmod(count, chunk_size)
    parts = []
    if full and tf.executing_eagerly():
        parts.append(tf.stack([chunk(start, chunk_size)
                               for start in range(0, full * chunk_size, chunk_size)]))
    elif full:
        def body(i, array):
            return i + 1, array.write(i, chunk(i * chunk_size, chunk_size))

        _, array = tf.while_loop(
            lambda i, _: i < full, body,
            (tf.constant(0), tf.TensorArray(tf.float32, size=full, element_shape=element_shape)))
        parts.append(array.stack())
    if rest:
        parts.append(chunk(full * chunk_size, rest)[None])
    return tf.reduce_logsumexp(tf.concat(parts, axis=0), axis=0)


def log_likelihood(x, posterior, decode, prior, num_samples=1000, *, seed=None, chunk_size=100,
                   reparameterize=None):
    """Importance-sampled estimate of `log p(x)` per example, with q(z|x) as proposal.

    This is the IWAE bound at large K: consistent (it converges to `log p(x)`)
    and biased low by O(1/K). Arguments as in `iwae_bound`.

    Returns:
      `[batch]` estimate in nats.
    """
    num_samples = _checks.positive_int("num_samples", num_samples)
    return iwae_bound(x, posterior, decode, prior, num_samples, seed=seed, chunk_size=chunk_size,
                      reparameterize=reparameterize)


def elbo_gap(log_px, elbo_value):
    """`log p(x) − ELBO = KL(q(z|x) ‖ p(z|x))` per example (≥ 0 up to estimation noise)."""
    return log_px - elbo_value


# ---------------------------------------------------------------------------
# β-TCVAE: the KL term decomposed (Chen et al., 2018).


def log_normal_per_dimension(z, loc, scale):
    """`log N(z_j; loc_j, scale_j²)` elementwise (broadcasting), in nats."""
    standardized = (z - loc) / scale
    return -0.5 * tf.square(standardized) - tf.math.log(scale) - 0.5 * math.log(2.0 * math.pi)


def replica_context():
    """The replica context when several replicas train in sync, else None (the one test
    for "distributed" that steps, metrics and objectives share)."""
    replica = tf.distribute.get_replica_context()
    if replica is not None and replica.num_replicas_in_sync > 1:
        return replica
    return None


def replica_offset(batch_size):
    """The index of this replica's first example in the global batch: the sum of the batch
    sizes of the replicas before it (0 without several replicas in sync)."""
    replica = replica_context()
    if replica is None:
        return 0
    sizes = replica.all_gather(tf.reshape(batch_size, [1]), axis=0)  # [replicas]
    return tf.reduce_sum(sizes[:replica.replica_id_in_sync_group])


def all_gather(tensors, offset=None):
    """`tensors` (a structure of `[batch, ...]` tensors) for the global batch, and the index
    of this replica's first example in it.

    Under a `tf.distribute` strategy with several replicas in sync every tensor is
    all-gathered along its first axis (gradients flow back to the replica that
    computed each row); otherwise the tensors are returned as they are, with offset 0.
    Objectives whose terms depend on the whole batch (an aggregate posterior, an MMD)
    use it so that N replicas reproduce one device.

    Args:
      tensors: a structure of `[batch, ...]` tensors (None members stay None).
      offset: this replica's offset when the caller knows it (a step's
        `StepContext.offset`), sparing an all-gather of the batch sizes.

    Returns:
      `(gathered, offset)`.
    """
    replica = replica_context()
    if replica is None:
        return tensors, 0
    if offset is None:
        offset = replica_offset(tf.shape(tf.nest.flatten(tensors)[0])[0])

    def gather(t):
        if t is None:
            return None
        if t.dtype == tf.bool:
            return replica.all_gather(tf.cast(t, tf.float32), axis=0) > 0.5
        return replica.all_gather(t, axis=0)

    gathered = tf.nest.map_structure(gather, tensors)
    return gathered, offset


def global_batch(loc, scale, valid=None):
    """The posterior parameters of every example of the global batch, and where this
    replica's examples sit in it.

    Under a `tf.distribute` strategy with several replicas in sync the
    parameters are all-gathered (gradients flow back to the replica that
    computed them); otherwise they are returned as they are.

    Args:
      loc, scale: this replica's `[batch, d]` parameters.
      valid: optional boolean `[batch]`: rows that may enter the aggregate.

    Returns:
      `(loc, scale, valid, offset)`: `[B, d]`, `[B, d]`, boolean `[B]` (or None) for
      the global batch of B examples, and the index of this replica's first
      example in it.
    """
    (loc, scale, valid), offset = all_gather((loc, scale, valid))
    return loc, scale, valid, offset


def log_aggregate_posterior(z, loc, scale, *, dataset_size=None, self_index=None, valid=None):
    """Minibatch-stratified estimates of `log q(z)` and `log q(z_j)` at samples `z`.

    The aggregate posterior `q(z) = (1/N) Σ_n q(z|x_n)` over a dataset of N
    examples is estimated at `z_i ~ q(z|x_i)` from the M examples of the
    batch by minibatch stratified sampling (MSS, Chen et al., 2018, App. C):
    x_i stands for itself (weight 1/N) and the other M − 1 examples of the
    batch for the remaining N − 1 (weight (N − 1) / (N (M − 1)) each).
    Given x_i and a batch drawn without replacement, the estimate of q(z_i)
    is then unbiased (its logarithm is biased low by Jensen's inequality),
    and it is exact when the batch is the whole dataset (N = M). We use MSS
    rather than minibatch-weighted sampling (MWS) because MWS, as Chen et al.
    write it, weighs every example 1/(N M): weights that sum to 1/N, not one,
    so its log q(z) is low by between log M (each z_i's own posterior
    dominates) and log N (the posteriors overlap) nats, and the reported MI,
    TC and dimension-wise KL move by multiples of that. (Chen et al.'s
    reference MSS code splits the non-self weight differently; both
    weightings sum to one.) The gradients of the estimate depend on N only
    through the ratio of the self weight to the others.

    Mathematical details:
      `log q(z_i) ≈ logsumexp_k [log w_ik + log q(z_i | x_k)]` and, per
      dimension, `log q(z_ij) ≈ logsumexp_k [log w_ik + log q(z_ij | x_k)]`,
      with `w_ii = 1/N` and `w_ik = (N − 1) / (N (M − 1))` for k ≠ i, where
      `log q(z | x_k) = Σ_j log N(z_j; loc_kj, scale_kj²)` (a posterior with
      independent dimensions). M counts the `valid` examples; N is raised to
      M if smaller; with M = 1 only the self term remains (`q(z_i|x_i) / N`).

    Args:
      z: samples `[L, M_local, d]`, `z[:, i]` drawn from example `self_index[i]`'s
        posterior.
      loc, scale: the posterior parameters `[M, d]` of every example of the
        batch (the global batch under a distribution strategy).
      dataset_size: N. Default value: `None` (N = M: the batch is treated as
        the whole dataset, so q(z) is the batch's mixture of posteriors).
      self_index: `[M_local]` int indices into `loc`. Default value:
        `range(M_local)`.
      valid: optional boolean `[M]`: examples to leave out of the aggregate
        (their parameters may be NaN). Default value: `None` (all).

    Returns:
      `(log_qz, log_qz_dims)` of shapes `[L, M_local]` and `[L, M_local, d]`.
    """
    m_local = tf.shape(z)[1]
    if self_index is None:
        self_index = tf.range(m_local)
    # [L, M_local, M, d]: log q(z_ij | x_k) for every example k of the batch.
    log_q = log_normal_per_dimension(z[:, :, None, :], loc[None, None], scale[None, None])
    columns = tf.range(tf.shape(loc)[0])
    is_self = tf.equal(tf.cast(self_index, columns.dtype)[:, None], columns[None, :])  # [M_local, M]
    if valid is None:
        count = tf.cast(tf.shape(loc)[0], z.dtype)
        keep = tf.ones_like(is_self)
    else:
        count = tf.reduce_sum(tf.cast(valid, z.dtype))
        keep = tf.broadcast_to(valid[None, :], tf.shape(is_self)) | is_self
    size = count if dataset_size is None else tf.maximum(tf.cast(dataset_size, z.dtype), count)
    log_self = -tf.math.log(size)
    log_other = (tf.math.log(size - 1.0) - tf.math.log(size)
                 - tf.math.log(tf.maximum(count - 1.0, 1.0)))
    log_w = tf.where(is_self, log_self, log_other)
    log_w = tf.where(keep, log_w, tf.constant(-math.inf, z.dtype))[None, :, :]  # [1, M_local, M]
    # Left-out columns get weight 0 and no NaN from their parameters.
    log_q = tf.where(keep[None, :, :, None], log_q, tf.zeros_like(log_q))
    log_qz = tf.reduce_logsumexp(log_w + tf.reduce_sum(log_q, axis=-1), axis=2)
    log_qz_dims = tf.reduce_logsumexp(log_w[..., None] + log_q, axis=2)
    return log_qz, log_qz_dims


def tc_decomposition(z, loc, scale, log_prior, *, dataset_size=None, valid=None):
    """The KL term split into index-code MI, total correlation and dimension-wise KL.

    Mathematical details (Chen et al., 2018, eq. 2), per example, averaged
    over the L samples `z_l ~ q(z|x)`:
      `mi = log q(z|x) − log q(z)`, `tc = log q(z) − Σ_j log q(z_j)`,
      `dwkl = Σ_j log q(z_j) − Σ_j log p(z_j)`,
    with `log q(z)` and `log q(z_j)` estimated from the batch
    (`log_aggregate_posterior`). For a factorised prior the three telescope:
    `mi + tc + dwkl = log q(z|x) − log p(z)` exactly, a Monte Carlo estimate of
    `KL(q(z|x) ‖ p(z))`, whatever the aggregate estimates. Under a
    `tf.distribute` strategy, the aggregate is over the global batch
    (`global_batch`).

    The split itself is a **minibatch estimate** with a known bias: q̂(z) is
    unbiased but `log q̂(z)` and `log q̂(z_j)` are biased low (Jensen's
    inequality), the more so the narrower the posteriors and the smaller the
    batch next to N. So `mi` is biased up, `dwkl` down — it can come out
    negative, which a KL cannot be — and `tc` (a difference of two low
    estimates) either way: an independent check measured +0.73, −0.52 and
    −0.21 nats at N = 2,000, M = 64 (tfvae issue 21); the test
    `test_minibatch_tc_terms_are_biased_as_documented_against_the_whole_set`
    sees mi and tc high, dwkl low at N = 96, M = 16. These numbers steer
    the training loss; to report the terms, estimate them on a whole set
    (`tfvae.evaluation.elbo_surgery`, or `tfvae.SurgeryLogs` at epoch end).

    Args:
      z: samples `[L, batch, d]` of this replica's examples.
      loc, scale: their diagonal Gaussian posterior parameters `[batch, d]`.
      log_prior: callable `z [L, batch, d] -> log p(z)` `[L, batch]`, for a prior
        that factorises over dimensions (`log p(z) = Σ_j log p(z_j)`).
      dataset_size: N for `log_aggregate_posterior`. Default value: `None`.
      valid: optional boolean `[batch]` (rows kept out of the aggregate).

    Returns:
      A dict of `[batch]` tensors `mi`, `tc`, `dwkl` and `log_ratio`, the mean
      over samples of `log q(z|x) − log p(z)`.
    """
    all_loc, all_scale, all_valid, offset = global_batch(loc, scale, valid)
    self_index = offset + tf.range(tf.shape(loc)[0])
    log_qz, log_qz_dims = log_aggregate_posterior(
        z, all_loc, all_scale, dataset_size=dataset_size, self_index=self_index, valid=all_valid)
    log_qz_x = tf.reduce_sum(log_normal_per_dimension(z, loc[None], scale[None]), axis=-1)
    log_pz = log_prior(z)
    log_qz_product = tf.reduce_sum(log_qz_dims, axis=-1)
    return {
        "mi": tf.reduce_mean(log_qz_x - log_qz, axis=0),
        "tc": tf.reduce_mean(log_qz - log_qz_product, axis=0),
        "dwkl": tf.reduce_mean(log_qz_product - log_pz, axis=0),
        "log_ratio": tf.reduce_mean(log_qz_x - log_pz, axis=0),
    }


def beta_tcvae(x, loc, scale, reparameterize, log_likelihood, log_prior, *, kl_term=None,
               num_samples=1, seed=None, noise=None, offset=0, beta=1.0, mi_weight=1.0,
               tc_weight=1.0, dwkl_weight=1.0, dataset_size=None, valid=None):
    """The β-TCVAE objective and its terms, per example (Chen et al., 2018).

    Mathematical details:
      With `z_l = reparameterize(ε_l)`, `ε_l ~ N(0, I)`, and `mi`, `tc`, `dwkl`
      from `tc_decomposition`:
      `reconstruction = (1/L) Σ_l log p(x | z_l)`;
      `loss = −reconstruction + β · (α · mi + β_TC · tc + γ · dwkl)` with
      α = `mi_weight`, β_TC = `tc_weight`, γ = `dwkl_weight`, and β the model's
      KL weight (1 unless a KL warm-up runs). With α = β_TC = γ = β = 1 the loss is
      `−reconstruction + log q(z|x) − log p(z)`, whose expectation is −ELBO.
      `kl` and `elbo = reconstruction − kl` are reported as for the ELBO
      (`kl_term`, the closed form, when given, else the Monte Carlo
      `log q(z|x) − log p(z)`).

    Args:
      x: data `[batch] + event_shape`.
      loc, scale: diagonal Gaussian posterior parameters `[batch, d]`.
      reparameterize: `ε [L, batch, d] -> z`, the posterior's.
      log_likelihood: `(z [L·batch, d], x [L·batch, ...]) -> [L·batch]`.
      log_prior: `z [L, batch, d] -> [L, batch]`, a prior factorised over dimensions.
      kl_term: optional closed-form KL `[batch]`. Default value: `None`.
      num_samples, seed, noise, offset: as in `tensor_elbo`.
      beta: weight of the whole decomposed KL (the warm-up's β). Default value: `1.0`.
      mi_weight, tc_weight, dwkl_weight: α, β_TC, γ ≥ 0. Default values: `1.0`.
      dataset_size, valid: as in `tc_decomposition`.

    Returns:
      A dict of `[batch]` tensors: `loss`, `elbo`, `reconstruction`, `kl`, `mi`,
      `tc`, `dwkl`.
    """
    z, reconstruction = sampled_reconstruction(x, reparameterize, log_likelihood, loc.shape[-1],
                                               num_samples, seed, noise, offset)
    terms = tc_decomposition(z, loc, scale, log_prior, dataset_size=dataset_size, valid=valid)
    kl = terms.pop("log_ratio") if kl_term is None else kl_term
    terms.pop("log_ratio", None)
    dtype = reconstruction.dtype
    penalty = (tf.cast(mi_weight, dtype) * terms["mi"] + tf.cast(tc_weight, dtype) * terms["tc"]
               + tf.cast(dwkl_weight, dtype) * terms["dwkl"])
    return {
        "loss": -reconstruction + tf.cast(beta, dtype) * penalty,
        "elbo": reconstruction - kl,
        "reconstruction": reconstruction,
        "kl": kl,
        **terms,
    }
