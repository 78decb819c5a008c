"""tfvae.marginal: defensive importance sampling of log p(x), against scipy and closed forms.

The model is linear-Gaussian, p(z) = N(0, I), p(x|z) = N(Wz + b, σ²I), with a
posterior whose partial correlations are 0.75, and the proposal is the
KL-optimal diagonal Gaussian q* (posterior mean, variances 1/diag Λ). Its
importance weights have infinite variance (2Λ − diag Λ is not positive
definite), so log p̂ with q* alone is biased low by more than its apparent
error; the defensive mixture's intervals must cover the exact log p(x).
"""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
from scipy import stats

from tfvae import marginal
from tfvae import objectives

tfd = tfp.distributions


def test_student_t_density_matches_scipy():
    rng = np.random.default_rng(0)
    loc = rng.normal(size=(3, 2))
    tril = np.tril(rng.normal(size=(3, 2, 2))) + 2 * np.eye(2)
    z = rng.normal(size=(5, 3, 2)) * 3
    got = marginal.student_t_log_prob(tf.constant(z, tf.float32), tf.constant(loc, tf.float32),
                                      tf.constant(tril, tf.float32), 4.0).numpy()
    for b in range(3):
        want = stats.multivariate_t(loc[b], tril[b] @ tril[b].T, df=4).logpdf(z[:, b])
        np.testing.assert_allclose(got[:, b], want, rtol=1e-5, atol=1e-5)


def test_student_t_samples_have_the_t_moments():
    loc = tf.constant([[1.0, -2.0]])
    tril = tf.constant([[[1.0, 0.0], [0.5, 2.0]]])
    z = marginal.student_t_sample(loc, tril, 6, 200000, tf.constant([3, 4])).numpy()[:, 0]
    np.testing.assert_allclose(z.mean(0), [1.0, -2.0], atol=0.02)
    want = 6 / 4 * np.array([[1.0, 0.5], [0.5, 4.25]])  # ν/(ν − 2) L Lᵀ
    np.testing.assert_allclose(np.cov(z.T), want, rtol=0.05)


def _correlated_problem(n=20, d=3, data_dim=5, sigma=0.5, rho=0.75, seed=0):
    rng = np.random.default_rng(seed)
    precision = 8.0 * ((1 - rho) * np.eye(d) + rho)
    rotation = np.linalg.qr(rng.normal(size=(data_dim, data_dim)))[0][:, :d]
    w = rotation @ (sigma * np.linalg.cholesky(precision - np.eye(d)).T)
    b = rng.normal(size=data_dim)
    x = (rng.normal(size=(n, d)) @ w.T + b + sigma * rng.normal(size=(n, data_dim)))
    cov = np.linalg.inv(precision)
    means = (cov @ w.T @ (x - b).T / sigma**2).T
    log_px = stats.multivariate_normal(b, w @ w.T + sigma**2 * np.eye(data_dim)).logpdf(x)
    q_star = tfd.MultivariateNormalDiag(
        means.astype("float32"), np.tile(1 / np.sqrt(np.diag(precision)), (n, 1)).astype("float32"))
    wt, bt = tf.constant(w.T, tf.float32), tf.constant(b, tf.float32)

    def decode(z):
        return tfd.Independent(tfd.Normal(z @ wt + bt, sigma), 1)

    return x.astype("float32"), q_star, decode, tfd.MultivariateNormalDiag(tf.zeros(d)), log_px


@pytest.mark.slow
def test_defensive_intervals_cover_log_px_where_q_star_alone_does_not():
    x, q_star, decode, prior, log_px = _correlated_problem(rho=0.75)  # partial correlations −0.75
    k = 1000
    defensive = tf.function(lambda seed: marginal.defensive_log_likelihood(
        x, q_star, decode, prior, k, seed=seed, chunk_size=500), autograph=False)
    plain = tf.function(lambda seed: marginal.log_likelihood_from_weights(
        objectives.log_importance_weights(x, q_star, decode, prior, k, seed=seed)),
        autograph=False)
    z_defensive, z_plain, ess = [], [], []
    for seed in range(10):
        got = defensive(tf.constant([seed, 1]))
        z_defensive.append((got["log_px"].numpy() - log_px) / got["stderr"].numpy())
        ess.append(got["ess"].numpy())
        alone = plain(tf.constant([seed, 2]))
        z_plain.append((alone["log_px"].numpy() - log_px) / alone["stderr"].numpy())
    z_defensive, z_plain = np.concatenate(z_defensive), np.concatenate(z_plain)
    # 200 intervals each: the defensive ones hold their nominal 95 %; q* alone's do not
    # (heavy-tailed weights: the sample variance misses the rare large ones).
    assert 0.90 <= np.mean(np.abs(z_defensive) < 1.96) <= 0.99
    assert abs(np.mean(z_defensive)) < 0.25  # no bias beyond a fraction of the error
    assert np.mean(np.abs(z_plain) < 1.96) < 0.8 and np.mean(z_plain) < -0.4
    assert np.all(np.concatenate(ess) > 0.1 * k) and np.all(np.concatenate(ess) <= k)


def test_with_the_posterior_itself_as_q_the_estimate_is_sharp_and_within_its_error():
    # rho = 0: the posterior is diagonal, so q* is the posterior and q*'s weights all
    # equal p(x); only the Student-t's half of the samples varies.
    x, q_star, decode, prior, log_px = _correlated_problem(n=4, rho=0.0)
    got = marginal.defensive_log_likelihood(x, q_star, decode, prior, 200, seed=0)
    error, stderr = got["log_px"].numpy() - log_px, got["stderr"].numpy()
    assert np.all(np.abs(error) < 4 * stderr + 1e-4) and np.all(stderr < 0.05)
    assert np.all(got["ess"].numpy() > 100)  # at least q*'s 100 equal weights


@pytest.mark.parametrize("kwargs, match", [
    ({"num_samples": 1}, "num_samples"), ({"defensive_fraction": 1.0}, "defensive_fraction"),
    ({"scale": 0.0}, "scale"), ({"df": 0}, "df"),
])
def test_bad_arguments_name_themselves(kwargs, match):
    x, q_star, decode, prior, _ = _correlated_problem(n=2)
    with pytest.raises(ValueError, match=match):
        marginal.defensive_log_likelihood(x, q_star, decode, prior, **{"num_samples": 10, **kwargs})
