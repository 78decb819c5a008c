"""Held-out evaluation: ELBO terms, importance-sampled log p(x), the gap, active units."""

import keras
import numpy as np

from tfvae import _checks
from tfvae import gap

# The held-out numbers a summary shows (the command's table, report.md), in order;
# keys a model does not report (kl_z1, kl_z2 outside hierarchies) are skipped.
SUMMARY_KEYS = ("elbo", "reconstruction", "kl", "kl_z1", "kl_z2", "log_px", "elbo_gap",
                "approximation_gap", "amortization_gap", "bits_per_dim", "active_units")


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


def evaluate_model(model, x, num_samples=100, seed=0, batch_size=256, y=None, verbose=0):
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

    Returns:
      A dict of floats (nats per example): `elbo`, `reconstruction`, `kl`
      (and `kl_z1`, `kl_z2` for a hierarchy), `log_px`, `elbo_gap`,
      `bits_per_dim` (from `log_px`), and `active_units`, `num_examples`,
      `num_samples`.
    """
    num_samples = _checks.positive_int("num_samples", num_samples)
    batch_size = _checks.positive_int("batch_size", batch_size)
    totals = {"log_px": 0.0}
    progress = keras.utils.Progbar(len(x), unit_name="example") if verbose else None
    for i, start in enumerate(range(0, len(x), batch_size)):
        batch, condition = x[start : start + batch_size], _condition(y, start, batch_size)
        terms = model.elbo(batch, seed=seed + i, y=condition)
        for key, value in terms.items():
            totals[key] = totals.get(key, 0.0) + float(np.sum(value.numpy()))
        log_px = model.log_likelihood(batch, num_samples=num_samples, seed=seed + 7919 + i,
                                      y=condition)
        totals["log_px"] += float(np.sum(log_px.numpy()))
        if progress is not None:
            progress.add(len(batch))
    n = len(x)
    result = {key: value / n for key, value in totals.items()}
    result["elbo_gap"] = result["log_px"] - result["elbo"]
    result["bits_per_dim"] = -result["log_px"] / (np.prod(model.event_shape) * np.log(2.0))
    result["active_units"] = active_units(model, x, y=y)[0]
    try:
        result["kl_per_dimension"] = [
            float(v) for v in kl_per_dimension(model, x, batch_size, y=y)
        ]
    except ValueError:
        pass  # not defined for this posterior / prior pair
    result["num_examples"] = int(n)
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
