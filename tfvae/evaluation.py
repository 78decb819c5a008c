"""Held-out evaluation: ELBO terms, importance-sampled log p(x), the gap, active units."""

import keras
import numpy as np
import tensorflow as tf

from tfvae import _checks
from tfvae import disentanglement
from tfvae import gap
from tfvae import objectives
from tfvae import random as tfvae_random

# The held-out numbers a summary shows (the command's table, report.md), in order;
# keys a model does not report (kl_z1, kl_z2 outside hierarchies) are skipped.
SUMMARY_KEYS = ("elbo", "reconstruction", "kl", "kl_z1", "kl_z2", "mutual_information",
                "marginal_kl", "total_correlation", "dimension_wise_kl", "log_px", "elbo_gap", "approximation_gap", "amortization_gap",
                "bits_per_dim", "active_units", "mig")


def summary(metrics):
    """`[(key, text)]` for the `SUMMARY_KEYS` in `metrics`: floats to 4 decimals, others as is."""
    return [
        (key, f"{metrics[key]:.4f}" if isinstance(metrics[key], float) else str(metrics[key]))
        for key in SUMMARY_KEYS if key in metrics
    ]


def _condition(y, start, batch_size):
    return None if y is None else y[start : start + batch_size]


def active_units(model, x, threshold=0.01, batch_size=256, y=None):
    """Counts latent dimensions whose posterior mean varies across the data.

    A unit is active when `Cov_x(E_q[z_j])` exceeds `threshold` (Burda et al., 2016);
    E_q[z] is `model.latent_code(x)` (the flow's image of the base mean for flows).

    Returns:
      `(count, variances)` with `variances` of shape `[latent_dim]`.
    """
    means = np.concatenate([
        model.latent_code(x[i : i + batch_size], y=_condition(y, i, batch_size)).numpy()
        for i in range(0, len(x), batch_size)
    ])
    variances = means.var(axis=0)
    return int(np.sum(variances > threshold)), variances


def kl_per_dimension(model, x, batch_size=256, y=None):
    """Mean over `x` of KL(q(z_j|x) ‖ p(z_j)) for each latent dimension j, in nats.

    Defined when q is a diagonal Gaussian and p the standard normal, where the
    KL splits over dimensions: `½ (μ_j² + σ_j² − 1 − log σ_j²)`. Dimensions
    near 0 nats carry no information about x (posterior collapse).

    Returns:
      A `[latent_dim]` numpy array that sums to the mean KL per example.
    """
    if not model.posterior.independent_dimensions or not model.prior.has_kl_per_dimension:
        raise ValueError(
            "kl_per_dimension needs a diagonal Gaussian posterior and a standard normal "
            f"prior. Received: {type(model.posterior).__name__} and {type(model.prior).__name__}"
        )
    batch_size = _checks.positive_int("batch_size", batch_size)
    total = np.zeros(model.latent_dim)
    for start in range(0, len(x), batch_size):
        q = model.encode(x[start : start + batch_size], y=_condition(y, start, batch_size))
        mu, sigma = q.mean().numpy().astype(np.float64), q.stddev().numpy().astype(np.float64)
        total += np.sum(model.prior.kl_per_dimension(mu, sigma).numpy(), axis=0)
    return total / len(x)


def _batches(x, y, batch_size, verbose):
    """`(start, x_batch, y_batch)` over `x`, with a progress bar when `verbose`."""
    batch_size = _checks.positive_int("batch_size", batch_size)
    progress = keras.utils.Progbar(len(x), unit_name="example") if verbose else None
    for start in range(0, len(x), batch_size):
        batch = x[start : start + batch_size]
        yield start, batch, _condition(y, start, batch_size)
        if progress is not None:
            progress.add(len(batch))


def encode_dataset(model, x, y=None, batch_size=256, verbose=0):
    """The posterior q(z|x) of every example, as arrays in input order.

    Args:
      model: a `tfvae.VAE`.
      x: data `[n] + event_shape`; y: their conditions, for a conditional model.
      batch_size: examples per batch. Default value: `256`.
      verbose: 1 shows a progress bar. Default value: `0`.

    Returns:
      A dict of numpy arrays with `n` rows: the posterior's parameters under
      the names of the `encode` export graph (`VAE.posterior_outputs`: `mean`,
      `scale` and the flow or hierarchy parameters) and `code`, the
      deterministic code `latent_code(x)` `[n, latent_dim]`.
    """
    parts = {}
    for _, batch, condition in _batches(x, y, batch_size, verbose):
        inputs = model.prepare_inputs(batch, condition)
        outputs = dict(model.posterior_outputs(*inputs), code=model.latent_code(batch, condition))
        for key, value in outputs.items():
            parts.setdefault(key, []).append(np.asarray(value))
    return {key: np.concatenate(values) for key, values in parts.items()}


def score_examples(model, x, y=None, num_samples=None, seed=0, batch_size=256, verbose=0,
                   squared_error=True):
    """Per-example scores for anomaly detection, in input order.

    Args:
      model: a `tfvae.VAE`.
      x: data `[n] + event_shape`; y: their conditions, for a conditional model.
      num_samples: importance samples K for `log_px`; `None` skips it.
        Default value: `None`.
      seed: noise seed (batch `i` uses `seed + i` for the ELBO and
        `seed + 7919 + i` for log p(x)). Default value: `0`.
      batch_size: examples per batch. Default value: `256`.
      verbose: 1 shows a progress bar. Default value: `0`.
      squared_error: also score the reconstruction error. Default value: `True`.

    Returns:
      A dict of float64 arrays `[n]`: `elbo`, `reconstruction`, `kl` (and
      `kl_z1`, `kl_z2` for a hierarchy) in nats, `squared_error` (the squared
      distance between x and its deterministic reconstruction, summed over
      the event), and `log_px` when `num_samples` is given.
    """
    if num_samples is not None:
        num_samples = _checks.positive_int("num_samples", num_samples)
    parts = {}
    for i, (_, batch, condition) in enumerate(_batches(x, y, batch_size, verbose)):
        scores = dict(model.elbo(batch, seed=seed + i, y=condition))
        if squared_error:
            error = np.square(np.asarray(batch, np.float64)
                              - np.asarray(model.reconstruct(batch, y=condition), np.float64))
            scores["squared_error"] = error.reshape(len(batch), -1).sum(axis=1)
        if num_samples is not None:
            scores["log_px"] = model.log_likelihood(batch, num_samples=num_samples,
                                                    seed=seed + 7919 + i, y=condition)
        for key, value in scores.items():
            parts.setdefault(key, []).append(np.asarray(value, np.float64))
    return {key: np.concatenate(values) for key, values in parts.items()}


def evaluate_model(model, x, num_samples=100, seed=0, batch_size=256, y=None, verbose=0,
                   surgery_examples=2000):
    """Per-example means of the ELBO terms and of the log-likelihood estimate.

    Args:
      model: a `tfvae.VAE`.
      x: held-out data `[n] + event_shape`.
      num_samples: importance samples K for `log p(x)`. Default value: `100`.
      seed: noise seed. Default value: `0`.
      batch_size: examples per batch. Default value: `256`.
      y: the conditions of `x`, for a conditional model (then `log_px` is
        `log p(x|y)`). Default value: `None`.
      verbose: 1 shows a progress bar over the examples (for long evaluations,
        e.g. K = 5,000 on 10,000 digits). Default value: `0`.
      surgery_examples: the ELBO surgery terms (`elbo_surgery`) use the first
        this many examples (cost: their number squared); `0` skips them.
        Default value: `2000`.

    Returns:
      A dict of floats (nats per example): `elbo`, `reconstruction`, `kl`
      (and `kl_z1`, `kl_z2` for a hierarchy), `log_px`, `elbo_gap`,
      `active_units`, `num_examples`, `num_samples`; the means of
      `score_examples` (same seeds). `likelihood_score` says what `log_px`
      is (`LikelihoodHead.score_kind`: `"mass"`, `"density"` or
      `"cross_entropy"`), and `bits_per_dim` (from `log_px`) is given only
      for a mass, i.e. discrete data. With `surgery_examples`, also the mean
      KL's split `mutual_information` + `marginal_kl` (and their standard
      errors, `mi_upper_bound`, `surgery_examples`) where the posterior allows it.
    """
    num_samples = _checks.positive_int("num_samples", num_samples)
    scores = score_examples(model, x, y=y, num_samples=num_samples, seed=seed,
                            batch_size=batch_size, verbose=verbose, squared_error=False)
    result = {key: float(values.mean()) for key, values in scores.items()}
    result["elbo_gap"] = result["log_px"] - result["elbo"]
    result["likelihood_score"] = model.likelihood.score_kind(x)
    if result["likelihood_score"] == "mass":  # bits only mean something for discrete data
        result["bits_per_dim"] = -result["log_px"] / (np.prod(model.event_shape) * np.log(2.0))
    result["active_units"] = active_units(model, x, y=y)[0]
    try:
        result["kl_per_dimension"] = [
            float(v) for v in kl_per_dimension(model, x, batch_size, y=y)
        ]
    except ValueError:
        pass  # not defined for this posterior / prior pair
    surgery_examples = _checks.non_negative_int("surgery_examples", surgery_examples)
    if surgery_examples and len(x) >= 2:
        n = min(surgery_examples, len(x))
        try:
            result.update(elbo_surgery(model, x[:n], y=None if y is None else y[:n], seed=seed))
        except ValueError:
            pass  # a posterior that cannot score other examples' codes (the hierarchy)
    result["num_examples"] = int(len(x))
    result["num_samples"] = num_samples
    return result


def gap_decomposition(model, x, y=None, num_examples=500, seed=0, **kwargs):
    """The ELBO gap split into approximation and amortization parts (`tfvae.gap`), as means.

    Optimises q per example for the first `num_examples` of `x` (the
    optimisation costs hundreds of ELBO evaluations per example).

    Args:
      model: a `tfvae.VAE`.
      x: held-out data; y: their conditions, for a conditional model.
      num_examples: how many examples (from the start of `x`). Default value: `500`.
      seed: noise seed. Default value: `0`.
      **kwargs: passed to `tfvae.gap.decompose_gap` (`steps`, `eval_samples`, ...).

    Returns:
      A dict of floats: `approximation_gap`, `amortization_gap`, `gap_log_px`,
      `gap_elbo`, `elbo_optimized` (means over the examples, nats), their
      standard errors `*_stderr` over examples, `gap_last_improvement` and
      `gap_examples`.
    """
    n = min(_checks.positive_int("num_examples", num_examples), len(x))
    parts = gap.decompose_gap(model, x[:n], y=None if y is None else y[:n], seed=seed, **kwargs)
    result = {"gap_examples": n, "gap_last_improvement": parts["last_improvement"]}
    for key, name in (("approximation_gap", "approximation_gap"),
                      ("amortization_gap", "amortization_gap"), ("log_px", "gap_log_px"),
                      ("elbo", "gap_elbo"), ("elbo_optimized", "elbo_optimized")):
        values = np.asarray(parts[key], np.float64)
        result[name] = float(values.mean())
        result[name + "_stderr"] = float(values.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0
    return result


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
    posterior = model.posterior.distribution(model.posterior_parameters(*model.prepare_inputs(x, y)))
    z = tf.convert_to_tensor(z, tf.float32)
    try:
        chunks = [tf.reduce_logsumexp(posterior.log_prob(z[i : i + chunk_size, None, :]), axis=1)
                  for i in range(0, int(z.shape[0]), chunk_size)]
    except (ValueError, tf.errors.InvalidArgumentError) as error:
        raise ValueError(
            "The aggregate posterior needs a posterior whose log_prob scores any z under "
            f"every example's q. Received: {type(model.posterior).__name__} "
            f"({error.__class__.__name__})"
        ) from None
    return tf.concat(chunks, 0) - np.log(len(x))


def elbo_surgery(model, x, y=None, num_samples=1, seed=0, chunk_size=256):
    """The mean KL split into index-code information and the aggregate posterior's KL.

    Mathematical details (Hoffman & Johnson, "ELBO surgery", 2016): with the
    aggregate posterior `q(z) = (1/N) Σ_n q(z|x_n)` over the N examples of `x`,

        E_n KL(q(z|x_n) ‖ p(z)) = I_q(x; z) + KL(q(z) ‖ p(z)),

    `I_q(x; z) = E_n E_{q(z|x_n)}[log q(z|x_n) − log q(z)]`. Both are
    estimated with `num_samples` draws `z ~ q(z|x_m)` per example and
    `log q(z) = logsumexp_n log q(z|x_n) − log N`, a batched log-mean-exp
    over the whole set (cost N² · num_samples posterior densities, in chunks
    of `chunk_size` draws). Since `log q(z) ≥ log q(z|x_m) − log N`, the
    information estimate is at most `log N` (returned as `mi_upper_bound`): on
    small sets a code can carry more than the estimate can show. The two
    terms add up to a Monte Carlo estimate of the mean KL (`kl_estimate`).

    Args:
      model: a `tfvae.VAE` (see `aggregate_log_density`).
      x: data `[N] + event_shape`, N ≥ 2; y: their conditions, for a
        conditional model.
      num_samples: draws per example. Default value: `1`.
      seed: noise seed. Default value: `0`.
      chunk_size: draws scored against all N posteriors at a time. Default
        value: `256`.

    Returns:
      A dict of floats in nats: `mutual_information`, `marginal_kl`,
      `kl_estimate` (their sum) and their standard errors `*_stderr` over
      the draws, `mi_upper_bound` (`log N`) and `surgery_examples` (N). When
      q has independent dimensions and p factorises over them, also the
      split `marginal_kl = total_correlation + dimension_wise_kl` (Chen et
      al., 2018) on the same draws, with `log q(z_j)` by the same mixture.
    """
    num_samples = _checks.positive_int("num_samples", num_samples)
    chunk_size = _checks.positive_int("chunk_size", chunk_size)
    n = len(x)
    if n < 2:
        raise ValueError(
            "Received an invalid value for `x`, expected at least 2 examples (the aggregate "
            f"posterior is a mixture over them). Received: x with {n} examples"
        )
    parameters = model.posterior_parameters(*model.prepare_inputs(x, y))
    noise = tf.random.stateless_normal([num_samples, n, model.latent_dim],
                                       seed=tfvae_random.make_seed(seed))
    z = model.posterior.reparameterize(parameters, noise)  # [S, N, d]
    own = tf.reshape(model.posterior.distribution(parameters).log_prob(z), [-1])  # log q(z|x_m)
    z = tf.reshape(z, [-1, model.latent_dim])
    log_q = aggregate_log_density(model, x, z, y=y, chunk_size=chunk_size)
    prior = model.prior.distribution()
    parts = {
        "mutual_information": (own - log_q).numpy().astype(np.float64),
        "marginal_kl": (log_q - prior.log_prob(z)).numpy().astype(np.float64),
    }
    parts["kl_estimate"] = parts["mutual_information"] + parts["marginal_kl"]
    if model.posterior.independent_dimensions and model.prior.has_kl_per_dimension:
        # β-TCVAE's split of the aggregate posterior's KL (Chen et al., 2018), on the
        # same draws: KL(q(z) ‖ p(z)) = TC + Σ_j KL(q(z_j) ‖ p(z_j)).
        draws = tf.reshape(z, [num_samples, n, model.latent_dim])
        product = tf.concat([
            tf.reduce_sum(objectives.log_aggregate_posterior(
                draws[:, i : i + chunk_size], parameters["loc"], parameters["scale"],
                dataset_size=n, self_index=tf.range(i, min(i + chunk_size, n)))[1], axis=-1)
            for i in range(0, n, chunk_size)], axis=1)  # Σ_j log q(z_j), [S, N]
        product = tf.reshape(product, [-1]).numpy().astype(np.float64)
        parts["total_correlation"] = log_q.numpy().astype(np.float64) - product
        parts["dimension_wise_kl"] = product - prior.log_prob(z).numpy().astype(np.float64)
    result = {"mi_upper_bound": float(np.log(n)), "surgery_examples": n}
    for key, values in parts.items():
        result[key] = float(values.mean())
        result[key + "_stderr"] = float(values.std(ddof=1) / np.sqrt(len(values)))
    return result


def disentanglement_metrics(model, x, factors, names, y=None, num_bins=20, batch_size=256):
    """The Mutual Information Gap of the model's posterior means for known factors.

    Args:
      model: a `tfvae.VAE`.
      x: data `[n] + event_shape`, row for row with `factors`; y: their
        conditions, for a conditional model.
      factors: integer factors `[n, K]` (e.g. `tfvae.data.load_factors`).
      names: the K factor names.
      num_bins: bins per code dimension (`disentanglement.mig`). Default value: `20`.
      batch_size: examples per encoder batch. Default value: `256`.

    Returns:
      A dict of floats: `mig` and, per factor, `mig_<name>` (its gap).
    """
    codes = encode_dataset(model, x, y=y, batch_size=batch_size)["mean"]
    result = disentanglement.mig(codes, factors, num_bins=num_bins)
    return {"mig": float(result.score),
            **{f"mig_{name}": float(gap_) for name, gap_ in zip(names, result.gaps)}}
