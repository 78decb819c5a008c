"""Held-out evaluation: ELBO terms, importance-sampled log p(x), the gap, active units."""

import numpy as np

from tfvae import _checks


def active_units(model, x, threshold=0.01, batch_size=256):
    """Counts latent dimensions whose posterior mean varies across the data.

    A unit is active when `Cov_x(E_q[z_j])` exceeds `threshold` (Burda et al., 2016).

    Returns:
      `(count, variances)` with `variances` of shape `[latent_dim]`.
    """
    means = np.concatenate(
        [model.encode(x[i : i + batch_size]).mean().numpy() for i in range(0, len(x), batch_size)]
    )
    variances = means.var(axis=0)
    return int(np.sum(variances > threshold)), variances


def evaluate_model(model, x, num_samples=100, seed=0, batch_size=256):
    """Per-example means of the ELBO terms and of the log-likelihood estimate.

    Args:
      model: a `tfvae.VAE`.
      x: held-out data `[n] + event_shape`.
      num_samples: importance samples K for `log p(x)`. Default value: `100`.
      seed: noise seed. Default value: `0`.
      batch_size: examples per batch. Default value: `256`.

    Returns:
      A dict of floats (nats per example): `elbo`, `reconstruction`, `kl`,
      `log_px`, `elbo_gap`, `bits_per_dim` (from `log_px`), and
      `active_units`, `num_examples`, `num_samples`.
    """
    num_samples = _checks.positive_int("num_samples", num_samples)
    batch_size = _checks.positive_int("batch_size", batch_size)
    totals = {"elbo": 0.0, "reconstruction": 0.0, "kl": 0.0, "log_px": 0.0}
    for i, start in enumerate(range(0, len(x), batch_size)):
        batch = x[start : start + batch_size]
        terms = model.elbo(batch, seed=seed + i)
        for key in ("elbo", "reconstruction", "kl"):
            totals[key] += float(np.sum(terms[key].numpy()))
        log_px = model.log_likelihood(batch, num_samples=num_samples, seed=seed + 7919 + i)
        totals["log_px"] += float(np.sum(log_px.numpy()))
    n = len(x)
    result = {key: value / n for key, value in totals.items()}
    result["elbo_gap"] = result["log_px"] - result["elbo"]
    result["bits_per_dim"] = -result["log_px"] / (np.prod(model.event_shape) * np.log(2.0))
    result["active_units"] = active_units(model, x)[0]
    result["num_examples"] = int(n)
    result["num_samples"] = num_samples
    return result
