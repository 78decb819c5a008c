"""The ELBO gap split into its approximation and amortization parts.

Cremer, Li & Duvenaud, "Inference Suboptimality in Variational Autoencoders"
(2018): for each x and the posterior family Q of a model's head,

    log p(x) − ELBO(q_φ) = [log p(x) − ELBO(q*)] + [ELBO(q*) − ELBO(q_φ)]
                         = approximation gap    + amortization gap,

where q_φ(·|x) is what the encoder outputs and q* the best member of Q for
this x (found here by optimising the head's per-example parameters with the
decoder, the prior and any weights of the head frozen). The approximation gap
is `KL(q* ‖ p(z|x))`, the price of the family; the amortization gap is the
price of predicting q from x with one network instead of optimising it per x.

Numbers to trust: q* is optimised until a stated criterion holds or a step
budget runs out (`fit_posterior`), and examples that did not converge are
flagged, never averaged in silently; log p(x) is importance-sampled from a
defensive mixture around q* (`tfvae.marginal`), whose weights have finite
variance even where q* is narrower than the posterior; and every estimate
carries its Monte Carlo standard error for its own target, the examples held
fixed (the spread between examples is a different number: see
`tfvae.evaluation.gap_decomposition`).
"""

import logging
import math

import numpy as np
import tensorflow as tf

from tfvae import _checks
from tfvae import compiled
from tfvae import marginal
from tfvae import objectives
from tfvae import random as tfvae_random

__all__ = [
    "decompose_gap",
    "fit_posterior",
    "optimize_posterior",
]

logger = logging.getLogger(__name__)


def _compiled(model, key, build):
    """`build(model_ref)` compiled once per `(model, key)` (`tfvae.compiled`): the key
    holds the Python values the graph is built from (sample counts, the KL method)."""
    return compiled.model_function(model, ("gap",) + key, build, autograph=False)


def _elbo_fn(model, x, y, num_samples):
    """`(raw [batch, params_size], seed) -> ELBO [batch]` with the model's KL method."""
    decode, prior = model.likelihood_fn(y), model.prior.distribution()

    def elbo(raw, seed):
        posterior, reparameterize = model.posterior.sampler(model.posterior.parameters(raw))
        return objectives.elbo(x, posterior, decode, prior, num_samples=num_samples,
                               kl=model.kl_method, seed=seed,
                               reparameterize=reparameterize)["elbo"]

    return elbo


def optimize_posterior(model, x, y=None, steps=300, learning_rate=0.02, num_samples=8, seed=0):
    """Per-example posterior parameters that maximise the ELBO, the decoder frozen.

    Starts from the encoder's output and takes `steps` Adam steps on every
    example's raw head parameters at once (one compiled loop; fresh noise
    each step), on a `num_samples`-sample ELBO estimate, with the step size
    decaying linearly from `learning_rate` to 0 so the noisy iterates settle.
    Nothing checks that `steps` were enough: `fit_posterior` (what
    `decompose_gap` uses) runs until converged and says which examples were not.

    Args:
      model: a `tfvae.VAE`.
      x: data `[batch] + event_shape`.
      y: the condition, for a conditional model.
      steps: Adam steps. Default value: `300`.
      learning_rate: Adam's step size. Default value: `0.02`.
      num_samples: posterior samples per ELBO estimate. Default value: `8`.
      seed: noise seed. Default value: `0`.

    Returns:
      `(raw, trace)`: the optimised raw parameters `[batch, params_size]`
      (feed them to `model.posterior.parameters`) and the batch-mean ELBO
      estimate at every step, `[steps]` (numpy).
    """
    steps = _checks.positive_int("steps", steps)
    learning_rate = _checks.positive_float("learning_rate", learning_rate)
    num_samples = _checks.positive_int("num_samples", num_samples)
    x, y = model.prepare_inputs(x, y)
    run = _adam_window(model, x, y, num_samples, tfvae_random.make_seed(seed))
    raw = tf.stop_gradient(model.encoder_output(x, y))
    zeros = tf.zeros_like(raw)
    raw, _, _, _, trace = run(raw, zeros, zeros, tf.constant(0), tf.constant(steps),
                              tf.constant(learning_rate), tf.constant(1.0))
    return raw, trace.numpy()


def _adam_window(model, x, y, num_samples, seed):
    """A compiled `(raw, m, v, step, steps, rate, decay) -> (raw, m, v, average, trace)`:
    `steps` Adam steps from global step `step`, the i-th of size
    `rate · (1 − decay · (i + 1) / (steps + 1))` (`decay` 0: constant, 1: down
    to ~0); `average` is the mean of the iterates (Polyak averaging: the noise
    of the steps averages out) and `trace` the batch-mean ELBO estimate per step."""
    run = _compiled(model, ("adam", num_samples, model.kl_method),
                    lambda ref: _adam_steps(ref, num_samples))
    return lambda *args: run(x, y, seed, *args)


def _adam_steps(model_ref, num_samples):
    """`_adam_window`'s loop, with x, y and the seed as leading arguments."""
    beta1, beta2, epsilon = 0.9, 0.999, 1e-8

    def run(x, y, seed, raw, m, v, step, steps, rate, decay):
        elbo = _elbo_fn(model_ref(), x, y, num_samples)

        def body(i, raw, m, v, total, trace):
            t = step + i
            with tf.GradientTape() as tape:
                tape.watch(raw)
                value = elbo(raw, tfvae_random.fold_in(seed, t))
                loss = -tf.reduce_sum(value)  # examples are independent: no 1/batch
            g = tape.gradient(loss, raw)
            m = beta1 * m + (1.0 - beta1) * g
            v = beta2 * v + (1.0 - beta2) * tf.square(g)
            count = tf.cast(t + 1, tf.float32)
            m_hat, v_hat = m / (1.0 - beta1**count), v / (1.0 - beta2**count)
            fraction = tf.cast(i + 1, tf.float32) / tf.cast(steps + 1, tf.float32)
            raw = raw - rate * (1.0 - decay * fraction) * m_hat / (tf.sqrt(v_hat) + epsilon)
            return i + 1, raw, m, v, total + raw, trace.write(i, tf.reduce_mean(value))

        _, raw, m, v, total, trace = tf.while_loop(
            lambda i, *_: i < steps, body,
            (tf.constant(0), raw, m, v, tf.zeros_like(raw), tf.TensorArray(tf.float32, size=steps)))
        return raw, m, v, total / tf.cast(steps, raw.dtype), trace.stack()

    return run


def _elbo_draws(model, x, y, num_samples, repeats):
    """A callable `(raws, seed) -> [len(raws), repeats, batch]` ELBO draws: `repeats`
    independent means of `num_samples // repeats` samples each, the same noise
    for every `raws` entry (common random numbers: differences between them have
    a small error). Compiled once; call it as often as needed."""
    per_repeat = max(1, num_samples // repeats)
    elbo = _compiled(model, ("elbo", per_repeat, model.kl_method), lambda ref: (
        lambda x, y, raw, seed: _elbo_fn(ref(), x, y, per_repeat)(raw, seed)))

    def draws(raws, seed):
        return np.stack([
            np.stack([elbo(x, y, raw, tfvae_random.fold_in(seed, r)).numpy()
                      for r in range(repeats)])
            for raw in raws]).astype(np.float64)

    return draws


def _stderr(draws):
    """Standard error of the mean over axis -2 of `[..., repeats, batch]` draws."""
    return draws.std(axis=-2, ddof=1) / math.sqrt(draws.shape[-2])


def fit_posterior(model, x, y=None, max_steps=4000, learning_rate=0.02, num_samples=8,
                  tolerance=0.01, window=100, check_samples=64, seed=0):
    """Per-example posterior parameters that maximise the ELBO, run until converged.

    Adam on every example's raw head parameters at once (the decoder frozen;
    fresh noise each step; a `num_samples`-sample ELBO estimate) at a constant
    step size, in windows of `window` steps, each window's iterates averaged
    (Polyak averaging). After each window, each example's gain — the ELBO of
    this window's average minus that of the previous window's (the encoder's
    output before the first) — is measured with common random numbers
    (`check_samples` samples, the same noise for both). An example has
    converged once the upper end of that gain's interval (gain + 2 standard
    errors) is below `tolerance` nats. The loop stops when every example has
    converged or `max_steps` are used up, and returns the last window's
    averages.

    Convergence is a stopping rule, not a certificate: a window gain below
    `tolerance` bounds what is left only where the ELBO keeps improving at a
    comparable rate (no long flat valleys); examples that never met it are
    flagged, and their ELBO(q*) is a lower bound on the family's best.

    Args:
      model: a `tfvae.VAE`.
      x: data `[batch] + event_shape`.
      y: the condition, for a conditional model.
      max_steps: the most Adam steps. Default value: `4000`.
      learning_rate: Adam's step size. Default value: `0.02`.
      num_samples: posterior samples per ELBO estimate. Default value: `8`.
      tolerance: nats of ELBO gain per window below which an example counts
        as converged. Default value: `0.01`.
      window: steps per window (between convergence checks); at most half of
        `max_steps`. Default value: `100`.
      check_samples: posterior samples per convergence check (in 8 repeats,
        for the gain's standard error). Default value: `64`.
      seed: noise seed. Default value: `0`.

    Returns:
      A dict: `raw` (the optimised raw parameters `[batch, params_size]`,
      a tensor; feed them to `model.posterior.parameters`), `converged`
      (`[batch]` bool: the criterion held at some check), `gain` and
      `gain_stderr` (`[batch]`, nats: each example's gain at the last check
      and its standard error), `trace` (batch-mean ELBO estimate per step,
      numpy `[steps]`) and `steps` (the number taken).
    """
    max_steps = _checks.positive_int("max_steps", max_steps)
    learning_rate = _checks.positive_float("learning_rate", learning_rate)
    num_samples = _checks.positive_int("num_samples", num_samples)
    tolerance = _checks.positive_float("tolerance", tolerance)
    window = _checks.positive_int("window", window)
    check_samples = _checks.positive_int("check_samples", check_samples)
    x, y = model.prepare_inputs(x, y)
    window = max(1, min(window, max_steps // 2))
    seed = tfvae_random.make_seed(seed)
    check_seed = tfvae_random.fold_in(seed, 2**30)
    run = _adam_window(model, x, y, num_samples, seed)
    check_draws = _elbo_draws(model, x, y, check_samples, repeats=8)
    raw = average = tf.stop_gradient(model.encoder_output(x, y))
    m = v = tf.zeros_like(raw)
    batch = int(raw.shape[0])
    converged = np.zeros(batch, bool)
    gain = gain_se = np.full(batch, np.nan)
    traces, step = [], 0
    while step < max_steps and not converged.all():
        steps = min(window, max_steps - step)
        previous = average
        raw, m, v, average, trace = run(raw, m, v, tf.constant(step), tf.constant(steps),
                                        tf.constant(learning_rate), tf.constant(0.0))
        traces.append(trace.numpy())
        draws = check_draws((previous, average), tfvae_random.fold_in(check_seed, step))
        step += steps
        difference = draws[1] - draws[0]
        gain, gain_se = difference.mean(axis=0), _stderr(difference)
        converged |= gain + 2.0 * gain_se < tolerance
    logger.info("q* optimised for %d steps: %d of %d examples converged", step,
                int(converged.sum()), batch)
    return {"raw": average, "converged": converged, "gain": gain, "gain_stderr": gain_se,
            "trace": np.concatenate(traces), "steps": step}


def _log_likelihood(model, x, y, raw, num_samples, seed, rows=10000, defensive_fraction=0.5):
    """log p(x) `[batch]`, its standard error and ESS, with q(z; raw) in a defensive mixture.

    Samples are drawn in chunks of about `rows` decoder inputs (chunk × batch),
    as `VAE.log_likelihood` does with its default 100 × 100: memory does not
    grow with the number of examples (a VampPrior's density holds
    chunk × batch × latent_dim × pseudo-inputs values at once).
    """
    chunk_size = max(1, rows // max(1, len(x)))

    def build(model_ref):
        def estimate(x, y, raw, seed):
            model = model_ref()
            posterior, reparameterize = model.posterior.sampler(model.posterior.parameters(raw))
            return marginal.defensive_log_likelihood(
                x, posterior, model.likelihood_fn(y), model.prior.distribution(), num_samples,
                seed=seed, chunk_size=chunk_size, defensive_fraction=defensive_fraction,
                reparameterize=reparameterize)

        return estimate

    estimate = _compiled(model, ("log_px", num_samples, chunk_size, defensive_fraction), build)
    return {key: value.numpy().astype(np.float64)
            for key, value in estimate(x, y, raw, seed).items()}


def decompose_gap(model, x, y=None, steps=4000, learning_rate=0.02, num_samples=8,
                  eval_samples=1000, log_px_samples=1000, seed=0, *, tolerance=0.01,
                  window=100, check_samples=64, defensive_fraction=0.5):
    """Splits each example's ELBO gap into approximation and amortization gaps.

    q* is optimised per example until converged or `steps` are used up
    (`fit_posterior`); log p(x) is importance-sampled with a defensive mixture
    of q* and a wide Student-t around it (`tfvae.marginal`), so its error bar
    holds even where the diagonal q* is narrower than the posterior.

    Every estimate comes with its Monte Carlo standard error for its own
    target, these examples held fixed: the ELBOs of q_φ and of the returned
    q* (independent repeats), log p(x) (delta method over the importance
    weights), the gap and both parts (from the independent or, for the
    amortization gap, paired estimates). The spread between examples is not
    in them. What they do not cover is the optimiser's residual: for a
    converged example ELBO(q*) is below the family's best by about
    `tolerance` or less. For the others (`converged` False) `elbo_optimized`
    is a lower bound, so `amortization_gap` is a lower bound, and their
    `log_px` and `approximation_gap` are unreliable: q* is then far from the
    posterior, the importance samples can miss its mass while the weights'
    sample variance looks small, and the approximation gap is typically
    overstated (issue 21: 116 nats for a true 0.44 after 300 steps).

    Args:
      model: a `tfvae.VAE` whose posterior parameters are a tensor (any tfvae head).
      x: data `[batch] + event_shape`.
      y: the condition, for a conditional model.
      steps: the most optimisation steps per example (see `fit_posterior`'s
        `max_steps`). Default value: `4000`.
      learning_rate, num_samples, tolerance, window, check_samples: the
        per-example optimisation (see `fit_posterior`).
      eval_samples: posterior samples for the final ELBO of q_φ and of q*
        (in 40 repeats, for the standard errors). Default value: `1000`.
      log_px_samples: importance samples K for log p(x). Default value: `1000`.
      seed: noise seed. Default value: `0`.
      defensive_fraction: the share of log p(x)'s samples from the wide
        Student-t (`tfvae.marginal.defensive_log_likelihood`). Default value: `0.5`.

    Returns:
      A dict of per-example numpy arrays `[batch]`: `log_px`, `elbo` (q_φ),
      `elbo_optimized` (q*), `gap` (= log_px − elbo), `approximation_gap`
      (log_px − elbo_optimized), `amortization_gap` (elbo_optimized − elbo),
      their Monte Carlo standard errors `log_px_stderr`, `elbo_stderr`,
      `elbo_optimized_stderr`, `gap_stderr`, `approximation_gap_stderr`,
      `amortization_gap_stderr`, `log_px_ess` (the importance weights'
      effective sample size), `converged` (bool), `final_gain` (ELBO gained
      over the last checked window) and `raw_optimized` (q*'s raw head
      parameters, `[batch, params_size]`); and `num_unconverged` (int), `steps`
      (steps taken), `optimization_trace` `[steps]` (batch-mean ELBO per Adam
      step) and `last_improvement` (nats of batch-mean ELBO gained over the
      last 10 % of steps).
    """
    eval_samples = _checks.positive_int("eval_samples", eval_samples)
    log_px_samples = _checks.positive_int("log_px_samples", log_px_samples)
    seed = _checks.non_negative_int("seed", seed)
    defensive_fraction = _checks.open_fraction("defensive_fraction", defensive_fraction)
    xt, yt = model.prepare_inputs(x, y)
    fit = fit_posterior(model, xt, y, max_steps=steps, learning_rate=learning_rate,
                        num_samples=num_samples, tolerance=tolerance, window=window,
                        check_samples=check_samples, seed=seed)
    raw_phi = model.encoder_output(xt, yt)
    eval_seed = tfvae_random.make_seed(seed + 1)
    repeats = max(2, min(40, eval_samples))
    draws = _elbo_draws(model, xt, yt, eval_samples, repeats)((raw_phi, fit["raw"]), eval_seed)
    elbo, elbo_star = draws.mean(axis=1)
    elbo_se, star_se = _stderr(draws)
    amortization_se = _stderr(draws[1] - draws[0])  # paired: the same noise for both
    px = _log_likelihood(model, xt, yt, fit["raw"], max(2, log_px_samples),
                         tfvae_random.fold_in(eval_seed, 2**30),
                         defensive_fraction=defensive_fraction)
    log_px, log_px_se = px["log_px"], px["stderr"]
    trace = fit["trace"]
    window = max(1, len(trace) // 10)
    last_improvement = float(np.mean(trace[-window:]) - np.mean(trace[-2 * window:-window])
                             ) if len(trace) >= 2 * window else float("nan")
    converged = fit["converged"]
    if not converged.all():
        logger.warning("%d of %d examples did not converge in %d steps (raise `steps`): their "
                       "amortization gap is a lower bound, their log p(x) and approximation "
                       "gap unreliable", int((~converged).sum()), len(converged), fit["steps"])
    return {
        "log_px": log_px,
        "elbo": elbo,
        "elbo_optimized": elbo_star,
        "gap": log_px - elbo,
        "approximation_gap": log_px - elbo_star,
        "amortization_gap": elbo_star - elbo,
        "log_px_stderr": log_px_se,
        "elbo_stderr": elbo_se,
        "elbo_optimized_stderr": star_se,
        "gap_stderr": np.sqrt(log_px_se**2 + elbo_se**2),
        "approximation_gap_stderr": np.sqrt(log_px_se**2 + star_se**2),
        "amortization_gap_stderr": amortization_se,
        "log_px_ess": px["ess"],
        "converged": converged,
        "final_gain": fit["gain"],
        "raw_optimized": fit["raw"].numpy(),
        "num_unconverged": int((~converged).sum()),
        "steps": fit["steps"],
        "optimization_trace": trace,
        "last_improvement": last_improvement,
    }
