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
"""

import math

import numpy as np
import tensorflow as tf

from tfvae import _checks
from tfvae import objectives
from tfvae import random as tfvae_random


def _elbo_fn(model, x, y, num_samples):
    """`(raw [batch, params_size], seed) -> ELBO [batch]` with the model's KL method."""
    decode, prior = model.likelihood_fn(y), model.prior.distribution()

    def elbo(raw, seed):
        posterior = model.posterior.distribution(model.posterior.parameters(raw))
        return objectives.elbo(x, posterior, decode, prior, num_samples=num_samples,
                               kl=model.kl_method, seed=seed)["elbo"]

    return elbo


def optimize_posterior(model, x, y=None, steps=300, learning_rate=0.02, num_samples=8, seed=0):
    """Per-example posterior parameters that maximise the ELBO, the decoder frozen.

    Starts from the encoder's output and takes `steps` Adam steps on every
    example's raw head parameters at once (one compiled loop; fresh noise
    each step), on a `num_samples`-sample ELBO estimate, with the step size
    decaying linearly from `learning_rate` to 0 so the noisy iterates settle.

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
    elbo = _elbo_fn(model, x, y, num_samples)
    seed = tfvae_random.make_seed(seed)
    beta1, beta2, epsilon = 0.9, 0.999, 1e-8

    @tf.function
    def run(raw):
        def body(t, raw, m, v, trace):
            with tf.GradientTape() as tape:
                tape.watch(raw)
                value = elbo(raw, tfvae_random.fold_in(seed, t))
                loss = -tf.reduce_sum(value)  # examples are independent: no 1/batch
            g = tape.gradient(loss, raw)
            m = beta1 * m + (1.0 - beta1) * g
            v = beta2 * v + (1.0 - beta2) * tf.square(g)
            step = tf.cast(t + 1, tf.float32)
            m_hat, v_hat = m / (1.0 - beta1**step), v / (1.0 - beta2**step)
            rate = learning_rate * (1.0 - step / (steps + 1.0))  # decays to ~0: settles
            raw = raw - rate * m_hat / (tf.sqrt(v_hat) + epsilon)
            return t + 1, raw, m, v, trace.write(t, tf.reduce_mean(value))

        zeros = tf.zeros_like(raw)
        _, raw, _, _, trace = tf.while_loop(
            lambda t, *_: t < steps, body,
            (tf.constant(0), raw, zeros, zeros, tf.TensorArray(tf.float32, size=steps)))
        return raw, trace.stack()

    raw, trace = run(tf.stop_gradient(model.encoder_output(x, y)))
    return raw, trace.numpy()


def _elbo_estimate(model, x, y, raw, num_samples, seed, repeats=10):
    """Per-example ELBO `[batch]` and its standard error, from `repeats` independent means."""
    elbo = tf.function(_elbo_fn(model, x, y, max(1, num_samples // repeats)))
    draws = np.stack([elbo(raw, tfvae_random.fold_in(seed, r)).numpy() for r in range(repeats)])
    return draws.mean(axis=0), draws.std(axis=0, ddof=1) / math.sqrt(repeats)


def _log_likelihood(model, x, y, raw, num_samples, seed, rows=10000):
    """Importance-sampled log p(x) `[batch]` with q(z; raw) as the proposal.

    Samples are drawn in chunks of about `rows` decoder inputs (chunk × batch),
    as `VAE.log_likelihood` does with its default 100 × 100: memory does not
    grow with the number of examples (a VampPrior's density holds
    chunk × batch × latent_dim × pseudo-inputs values at once).
    """
    chunk_size = max(1, rows // max(1, len(x)))

    @tf.function
    def estimate(raw):
        posterior = model.posterior.distribution(model.posterior.parameters(raw))
        return objectives.log_likelihood(x, posterior, model.likelihood_fn(y),
                                         model.prior.distribution(), num_samples, seed=seed,
                                         chunk_size=chunk_size)

    return estimate(raw).numpy()


def decompose_gap(model, x, y=None, steps=300, learning_rate=0.02, num_samples=8,
                  eval_samples=1000, log_px_samples=1000, seed=0):
    """Splits each example's ELBO gap into approximation and amortization gaps.

    Args:
      model: a `tfvae.VAE` whose posterior parameters are a tensor (any tfvae head).
      x: data `[batch] + event_shape`.
      y: the condition, for a conditional model.
      steps, learning_rate, num_samples: the per-example optimisation (see
        `optimize_posterior`).
      eval_samples: posterior samples for the final ELBO of q_φ and of q*.
        Default value: `1000`.
      log_px_samples: importance samples K for log p(x), with q* as the
        proposal (closer to the posterior than q_φ, so a lower-variance
        estimate). Default value: `1000`.
      seed: noise seed. Default value: `0`.

    Returns:
      A dict of per-example numpy arrays `[batch]`: `log_px`, `elbo` (q_φ),
      `elbo_optimized` (q*), `gap` (= log_px − elbo), `approximation_gap`
      (log_px − elbo_optimized), `amortization_gap` (elbo_optimized − elbo),
      and `elbo_stderr`, `elbo_optimized_stderr` (the Monte Carlo standard
      errors of the two ELBO estimates); plus `optimization_trace` `[steps]`
      (batch-mean ELBO per Adam step) and `last_improvement` (nats of
      batch-mean ELBO gained over the last 10 % of steps: near 0 when the
      optimisation has converged).
    """
    eval_samples = _checks.positive_int("eval_samples", eval_samples)
    seed = _checks.non_negative_int("seed", seed)
    xt, yt = model.prepare_inputs(x, y)
    raw_star, trace = optimize_posterior(model, xt, y, steps, learning_rate, num_samples, seed)
    raw_phi = model.encoder_output(xt, yt)
    seed = tfvae_random.make_seed(seed + 1)
    elbo, elbo_se = _elbo_estimate(model, xt, yt, raw_phi, eval_samples, seed)
    elbo_star, star_se = _elbo_estimate(model, xt, yt, raw_star, eval_samples, seed)
    log_px = _log_likelihood(model, xt, yt, raw_star, log_px_samples, seed)
    window = max(1, len(trace) // 10)
    last_improvement = float(np.mean(trace[-window:]) - np.mean(trace[-2 * window:-window])
                             ) if len(trace) >= 2 * window else float("nan")
    return {
        "log_px": log_px,
        "elbo": elbo,
        "elbo_optimized": elbo_star,
        "gap": log_px - elbo,
        "approximation_gap": log_px - elbo_star,
        "amortization_gap": elbo_star - elbo,
        "elbo_stderr": elbo_se,
        "elbo_optimized_stderr": star_se,
        "optimization_trace": trace,
        "last_improvement": last_improvement,
    }
