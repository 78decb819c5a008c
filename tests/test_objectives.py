"""tfvae.objectives: the ELBO mathematics against closed forms.

`log p(x) = ELBO(q) + KL(q(z|x) ‖ p(z|x))`: checked in one dimension and on a
linear-Gaussian model, where log p(x), the exact posterior and every KL have
closed forms computed here independently with numpy/scipy. Also: free bits per
group, the IWAE objective and the DReG estimator, and the argument checks.
"""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
from scipy import special, stats

import tfvae
from tfvae import objectives

from helpers import BAD_POSITIVE_INTS, invalid, raises, unit_data

tfd = tfp.distributions


def _mvn_diag(loc, scale):
    return tfd.MultivariateNormalDiag(
        loc=tf.constant(loc, tf.float32), scale_diag=tf.constant(scale, tf.float32)
    )


def _gaussian_sampler(q):
    """z = μ + L ε for a TFP Gaussian q: the map a posterior head's `reparameterize` gives."""
    return lambda eps: q.mean() + tf.linalg.matvec(q.scale.to_dense(), eps)


def _standard_normal(d):
    return tfvae.StandardNormalPrior(d).distribution()


def _gaussian_decoder(weight, bias, sigma):
    """p(x|z) = N(W z + b, σ² I) as a `decode` callable."""
    w = tf.constant(weight, tf.float32)
    b = tf.constant(bias, tf.float32)

    def decode(z):
        loc = tf.linalg.matvec(w, z) + b
        return tfd.Independent(tfd.Normal(loc=loc, scale=float(sigma)), reinterpreted_batch_ndims=1)

    return decode


# ---------------------------------------------------------------------------
# KL(q ‖ N(0, I)).


def test_analytic_kl_equals_numpy_closed_form():
    rng = np.random.default_rng(0)
    mu = rng.normal(size=(6, 3))
    sigma = rng.uniform(0.2, 2.0, size=(6, 3))
    q = _mvn_diag(mu, sigma)
    kl = tfvae.kl_divergence(q, _standard_normal(3), kl="analytic").numpy()
    expected = -0.5 * np.sum(1 + np.log(sigma**2) - mu**2 - sigma**2, axis=-1)
    assert kl.shape == (6,)
    np.testing.assert_allclose(kl, expected, rtol=1e-5, atol=1e-5)


def test_analytic_kl_full_covariance_equals_closed_form():
    rng = np.random.default_rng(1)
    d = 3
    mu = rng.normal(size=(2, d))
    tril = np.tril(rng.normal(size=(2, d, d))) + 2 * np.eye(d)
    q = tfd.MultivariateNormalTriL(
        loc=tf.constant(mu, tf.float32), scale_tril=tf.constant(tril, tf.float32)
    )
    cov = tril @ np.swapaxes(tril, -1, -2)
    expected = 0.5 * (
        np.trace(cov, axis1=-2, axis2=-1) + np.sum(mu**2, -1) - d - np.linalg.slogdet(cov)[1]
    )
    kl = tfvae.kl_divergence(q, _standard_normal(d)).numpy()
    np.testing.assert_allclose(kl, expected, rtol=1e-5)


def test_monte_carlo_kl_agrees_within_its_standard_error():
    rng = np.random.default_rng(2)
    mu = rng.normal(size=(4, 2))
    sigma = rng.uniform(0.3, 1.5, size=(4, 2))
    q = _mvn_diag(mu, sigma)
    p = _standard_normal(2)
    num_samples = 100_000
    z = objectives.posterior_sample(q, num_samples, seed=11)
    mc = tfvae.kl_divergence(q, p, z=z, kl="mc").numpy()
    exact = -0.5 * np.sum(1 + np.log(sigma**2) - mu**2 - sigma**2, axis=-1)
    # Independent per-sample log-ratios (scipy) give the estimator's standard error.
    zn = z.numpy().astype(np.float64)
    log_ratio = stats.norm.logpdf(zn, mu, sigma).sum(-1) - stats.norm.logpdf(zn).sum(-1)
    np.testing.assert_allclose(mc, log_ratio.mean(0), rtol=1e-4, atol=1e-4)
    standard_error = log_ratio.std(0) / np.sqrt(num_samples)
    assert np.all(np.abs(mc - exact) < 5 * standard_error)


def test_kl_auto_falls_back_to_monte_carlo_for_a_mixture_prior():
    prior_layer = tfvae.MixtureOfGaussiansPrior(2, num_components=3)
    prior = prior_layer.distribution()
    q = _mvn_diag([[0.3, -0.2]], [[0.5, 0.8]])
    z = objectives.posterior_sample(q, 5000, seed=3)
    auto = tfvae.kl_divergence(q, prior, z=z, kl="auto").numpy()
    expected = np.mean(q.log_prob(z).numpy() - prior.log_prob(z).numpy(), axis=0)
    np.testing.assert_allclose(auto, expected, rtol=1e-5)


# ---------------------------------------------------------------------------
# One dimension: p(z) = N(0, 1), p(x|z) = N(z, 0.5), so p(x) = N(0, 1.5) and
# the exact posterior at x is N(x / 1.5, 1/3).

X1 = 1.0
LOG_PX1 = stats.norm.logpdf(X1, 0.0, np.sqrt(1.5))


def _one_d(q_mean, q_var):
    x = tf.constant([[X1]], tf.float32)
    q = _mvn_diag([[q_mean]], [[np.sqrt(q_var)]])
    decode = _gaussian_decoder([[1.0]], [0.0], np.sqrt(0.5))
    return x, q, decode, _standard_normal(1)


def _kl_1d(m1, v1, m2, v2):
    return 0.5 * (np.log(v2 / v1) + (v1 + (m1 - m2) ** 2) / v2 - 1)


def test_1d_log_evidence_value():
    assert LOG_PX1 == pytest.approx(-1.4550, abs=1e-4)


@pytest.mark.parametrize("num_samples", [1, 7, 1000])
def test_1d_elbo_with_exact_posterior_equals_log_evidence(num_samples):
    # With q the exact posterior, log p(x|z) + log p(z) − log q(z) = log p(x)
    # for every z, so the Monte Carlo-KL ELBO is exact at any sample size.
    x, q, decode, prior = _one_d(X1 / 1.5, 1 / 3)
    terms = tfvae.elbo(x, q, decode, prior, num_samples=num_samples, kl="mc", seed=4)
    np.testing.assert_allclose(terms["elbo"].numpy(), [LOG_PX1], atol=1e-4)


def test_1d_elbo_terms_with_analytic_kl():
    m, v = X1 / 1.5, 1 / 3
    x, q, decode, prior = _one_d(m, v)
    num_samples = 200_000
    terms = tfvae.elbo(x, q, decode, prior, num_samples=num_samples, kl="analytic", seed=5)
    np.testing.assert_allclose(terms["kl"].numpy(), [_kl_1d(m, v, 0.0, 1.0)], rtol=1e-5)
    # E_q[log N(x; z, 0.5)] in closed form; log p(x|z) = c − (x − z)², whose
    # standard deviation under q is sqrt(2 v² + 4 (x − m)² v).
    expected_rec = -0.5 * np.log(2 * np.pi * 0.5) - ((X1 - m) ** 2 + v) / (2 * 0.5)
    sd = np.sqrt(2 * v**2 + 4 * (X1 - m) ** 2 * v)
    tolerance = 5 * sd / np.sqrt(num_samples)
    assert abs(terms["reconstruction"].numpy()[0] - expected_rec) < tolerance
    assert abs(terms["elbo"].numpy()[0] - LOG_PX1) < tolerance
    np.testing.assert_allclose(expected_rec - _kl_1d(m, v, 0, 1), LOG_PX1, atol=1e-12)


@pytest.mark.parametrize("q_mean, q_var", [(0.2, 1.0), (1.5, 0.05), (X1 / 1.5, 2.0)])
def test_1d_worse_posterior_has_lower_elbo_and_gap_equals_kl(q_mean, q_var):
    x, q, decode, prior = _one_d(q_mean, q_var)
    num_samples = 200_000
    z = objectives.posterior_sample(q, num_samples, seed=6)
    terms = tfvae.elbo(x, q, decode, prior, num_samples=num_samples, kl="mc", seed=6)
    gap = tfvae.elbo_gap(tf.constant([LOG_PX1], tf.float32), terms["elbo"]).numpy()[0]
    kl_to_posterior = _kl_1d(q_mean, q_var, X1 / 1.5, 1 / 3)
    # The per-sample log-ratio log q(z) − log p(z|x) has this spread under q.
    zn = z.numpy().ravel().astype(np.float64)
    per_sample = stats.norm.logpdf(zn, q_mean, np.sqrt(q_var)) - stats.norm.logpdf(
        zn, X1 / 1.5, np.sqrt(1 / 3)
    )
    tolerance = 5 * per_sample.std() / np.sqrt(num_samples) + 1e-4
    assert abs(gap - kl_to_posterior) < tolerance
    assert kl_to_posterior > 10 * tolerance  # so "strictly lower" is resolved
    assert terms["elbo"].numpy()[0] < LOG_PX1


# ---------------------------------------------------------------------------
# Linear-Gaussian model: p(z) = N(0, I_d), p(x|z) = N(W z + b, σ² I_D).

D, DX, SIGMA = 2, 4, 0.5


@pytest.fixture(scope="module")
def linear_gaussian():
    rng = np.random.default_rng(42)
    w = rng.normal(size=(DX, D))
    b = rng.normal(size=DX)
    x = rng.normal(size=(3, DX)) * 2 + b
    marginal = stats.multivariate_normal(b, w @ w.T + SIGMA**2 * np.eye(DX))
    log_px = marginal.logpdf(x)
    post_cov = np.linalg.inv(np.eye(D) + w.T @ w / SIGMA**2)
    post_mean = (x - b) @ w @ post_cov.T / SIGMA**2
    return dict(w=w, b=b, x=x, log_px=log_px, post_cov=post_cov, post_mean=post_mean)


def _mvn_tril(loc, cov):
    return tfd.MultivariateNormalTriL(
        loc=tf.constant(loc, tf.float32),
        scale_tril=tf.constant(np.linalg.cholesky(cov), tf.float32),
    )


def _lg_parts(lg):
    return (
        tf.constant(lg["x"], tf.float32),
        _gaussian_decoder(lg["w"], lg["b"], SIGMA),
        _standard_normal(D),
    )


def test_linear_gaussian_exact_posterior_makes_elbo_tight(linear_gaussian):
    lg = linear_gaussian
    x, decode, prior = _lg_parts(lg)
    cov = np.broadcast_to(lg["post_cov"], (3, D, D))
    q = _mvn_tril(lg["post_mean"], cov)
    terms = tfvae.elbo(x, q, decode, prior, num_samples=3, kl="mc", seed=1)
    np.testing.assert_allclose(terms["elbo"].numpy(), lg["log_px"], rtol=1e-5, atol=2e-4)


def _random_q(rng, n):
    mean = rng.normal(size=(n, D))
    tril = np.tril(rng.normal(size=(n, D, D)) * 0.5) + np.eye(D) * 0.6
    return mean, tril @ np.swapaxes(tril, -1, -2)


def test_linear_gaussian_elbo_plus_kl_to_posterior_is_log_evidence(linear_gaussian):
    lg = linear_gaussian
    x, decode, prior = _lg_parts(lg)
    mean, cov = _random_q(np.random.default_rng(3), 3)
    q = _mvn_tril(mean, cov)
    num_samples = 64
    terms = tfvae.elbo(x, q, decode, prior, num_samples=num_samples, kl="mc", seed=2)
    # The same samples, scored independently with scipy: the Monte Carlo KL to
    # the exact posterior over those samples closes the identity exactly.
    z = objectives.posterior_sample(q, num_samples, seed=2).numpy().astype(np.float64)
    kl_post = np.array(
        [
            np.mean(
                stats.multivariate_normal(mean[i], cov[i]).logpdf(z[:, i])
                - stats.multivariate_normal(lg["post_mean"][i], lg["post_cov"]).logpdf(z[:, i])
            )
            for i in range(3)
        ]
    )
    np.testing.assert_allclose(terms["elbo"].numpy() + kl_post, lg["log_px"], rtol=1e-5, atol=5e-4)
    assert np.all(kl_post > 0.1)


def test_linear_gaussian_elbo_below_log_evidence_by_closed_form_kl(linear_gaussian):
    lg = linear_gaussian
    x, decode, prior = _lg_parts(lg)
    mean, cov = _random_q(np.random.default_rng(4), 3)
    q = _mvn_tril(mean, cov)
    num_samples = 100_000
    terms = tfvae.elbo(x, q, decode, prior, num_samples=num_samples, kl="analytic", seed=3)
    w, b = lg["w"], lg["b"]
    # E_q[log N(x; W z + b, σ² I)] and KL(q ‖ p(z|x)) in closed form.
    resid = x.numpy() - mean @ w.T - b
    expected_rec = -0.5 * DX * np.log(2 * np.pi * SIGMA**2) - (
        np.sum(resid**2, -1) + np.trace(w @ cov @ w.T, axis1=-2, axis2=-1)
    ) / (2 * SIGMA**2)
    prec = np.linalg.inv(lg["post_cov"])
    diff = lg["post_mean"] - mean
    kl_post = 0.5 * (
        np.trace(prec @ cov, axis1=-2, axis2=-1)
        + np.einsum("ni,ij,nj->n", diff, prec, diff)
        - D
        + np.linalg.slogdet(lg["post_cov"])[1]
        - np.linalg.slogdet(cov)[1]
    )
    # Standard error of the reconstruction estimate, from the code's own samples.
    z = objectives.posterior_sample(q, 2000, seed=9)
    per_sample = objectives.log_likelihood_of_samples(x, z, decode).numpy()
    tolerance = 5 * per_sample.std(0) / np.sqrt(num_samples)
    assert np.all(np.abs(terms["reconstruction"].numpy() - expected_rec) < tolerance)
    elbo = terms["elbo"].numpy()
    assert np.all(np.abs(elbo + kl_post - lg["log_px"]) < tolerance)
    assert np.all(elbo < lg["log_px"] - 10 * tolerance)


def test_iwae_bound_rises_with_k_towards_log_evidence(linear_gaussian):
    lg = linear_gaussian
    _, decode, prior = _lg_parts(lg)
    repeats = 1000
    x = tf.constant(np.repeat(lg["x"], repeats, axis=0), tf.float32)
    # A deliberately poor q: the posterior mean shifted, the variance tripled.
    mean = np.repeat(lg["post_mean"] + 0.3, repeats, axis=0)
    cov = np.broadcast_to(3 * lg["post_cov"], (len(mean), D, D))
    q = _mvn_tril(mean, cov)
    means, errors = [], []
    for k in (1, 3, 10, 30):
        bound = tfvae.iwae_bound(x, q, decode, prior, k, seed=k).numpy().reshape(3, repeats)
        means.append(bound.mean(1))
        errors.append(bound.std(1) / np.sqrt(repeats))
    means, errors = np.array(means), np.array(errors)
    # Each step up in k raises the expected bound by more than the noise.
    assert np.all(np.diff(means, axis=0) > 3 * np.sqrt(errors[1:] ** 2 + errors[:-1] ** 2))
    assert np.all(means < lg["log_px"] + 3 * errors)
    # K = 1 is the ELBO (Monte Carlo KL): same expectation.
    elbo = tfvae.elbo(x, q, decode, prior, kl="analytic", num_samples=64, seed=0)["elbo"]
    np.testing.assert_allclose(
        elbo.numpy().reshape(3, repeats).mean(1), means[0], atol=5 * errors[0].max()
    )


def test_log_likelihood_estimate_converges_to_exact(linear_gaussian):
    lg = linear_gaussian
    x, decode, prior = _lg_parts(lg)
    q = _mvn_tril(lg["post_mean"] + 0.3, np.broadcast_to(3 * lg["post_cov"], (3, D, D)))
    errors = {}
    for k in (10, 20_000):
        estimate = tfvae.log_likelihood(x, q, decode, prior, k, seed=5, chunk_size=2000,
                                        reparameterize=_gaussian_sampler(q))
        errors[k] = np.abs(estimate.numpy() - lg["log_px"])
    assert np.all(errors[20_000] < 0.02)
    assert errors[20_000].mean() < errors[10].mean()


def test_iwae_chunking_does_not_change_the_estimate(linear_gaussian):
    lg = linear_gaussian
    x, decode, prior = _lg_parts(lg)
    q = _mvn_tril(lg["post_mean"], np.broadcast_to(2 * lg["post_cov"], (3, D, D)))
    one = tfvae.iwae_bound(x, q, decode, prior, 100, seed=1).numpy()
    # Chunks use folded seeds, so compare the chunked computation with a direct
    # log-mean-exp over exactly the same chunk draws.
    chunked = tfvae.iwae_bound(x, q, decode, prior, 100, seed=1, chunk_size=30).numpy()
    seed = tfvae.random.make_seed(1)
    log_w = tf.concat(
        [
            objectives.log_importance_weights(
                x, q, decode, prior, min(30, 100 - s), seed=tfvae.random.fold_in(seed, s)
            )
            for s in range(0, 100, 30)
        ],
        0,
    ).numpy().astype(np.float64)
    lme = np.log(np.mean(np.exp(log_w - log_w.max(0)), 0)) + log_w.max(0)
    np.testing.assert_allclose(chunked, lme, rtol=1e-5)
    assert one.shape == chunked.shape == (3,)


# ---------------------------------------------------------------------------
# Loss: β, free bits, and the textbook Bernoulli VAE loss.


def test_loss_applies_beta_and_free_bits():
    x, q, decode, prior = _one_d(0.2, 0.5)
    base = tfvae.elbo(x, q, decode, prior, num_samples=4, seed=8)
    kl = base["kl"].numpy()
    for beta, free_bits in [(0.0, 0.0), (0.25, 0.0), (2.0, 0.0), (1.0, kl[0] + 1.0), (3.0, 0.01)]:
        terms = tfvae.elbo(
            x, q, decode, prior, num_samples=4, seed=8, beta=beta, free_bits=free_bits
        )
        expected = -base["reconstruction"].numpy() + beta * np.maximum(kl, free_bits)
        np.testing.assert_allclose(terms["loss"].numpy(), expected, rtol=1e-6)
        np.testing.assert_allclose(terms["elbo"].numpy(), base["elbo"].numpy(), rtol=1e-6)


def test_bernoulli_negative_elbo_is_textbook_bce_plus_kl():
    model = tfvae.build_vae((4, 4, 1), 3, likelihood="bernoulli", hidden_units=(16,), seed=0)
    x = np.random.default_rng(0).uniform(size=(5, 4, 4, 1)).astype("float32")
    terms = model.elbo(x, num_samples=1, seed=21)
    # Independent numpy computation on the same network outputs and noise.
    q, sampler = model.posterior_sampler(*model.prepare_inputs(x))
    mu, sigma = q.mean().numpy(), q.stddev().numpy()
    z = objectives.posterior_sample(q, 1, seed=21, reparameterize=sampler)[0]
    np.testing.assert_allclose(z.numpy(), mu + sigma * ((z.numpy() - mu) / sigma), rtol=1e-6)
    logits = model.decoder(z).numpy().reshape(5, -1).astype(np.float64)
    xf = x.reshape(5, -1)
    bce = np.sum(np.maximum(logits, 0) - logits * xf + np.log1p(np.exp(-np.abs(logits))), -1)
    kl = -0.5 * np.sum(1 + np.log(sigma**2) - mu**2 - sigma**2, -1)
    np.testing.assert_allclose(-terms["elbo"].numpy(), bce + kl, rtol=1e-5)
    np.testing.assert_allclose(terms["kl"].numpy(), kl, rtol=1e-5)


def test_reparameterised_samples_follow_the_posterior():
    # z = μ + L ε must have the posterior's mean and covariance.
    mean = np.array([[0.5, -1.0]])
    cov = np.array([[[1.0, 0.6], [0.6, 2.0]]])
    q = _mvn_tril(mean, cov)
    n = 200_000
    z = objectives.posterior_sample(q, n, seed=12).numpy()[:, 0].astype(np.float64)
    assert z.shape == (n, 2)
    np.testing.assert_allclose(z.mean(0), mean[0], atol=5 * np.sqrt(2.0 / n))
    np.testing.assert_allclose(np.cov(z.T), cov[0], atol=0.03)


def test_without_free_bits_the_loss_is_exactly_minus_elbo_even_for_negative_mc_kl():
    # A Monte Carlo KL estimate can be negative for a given sample; with no free
    # bits it must not be clamped, or the β = 1 loss would be biased.
    prior_layer = tfvae.MixtureOfGaussiansPrior(2, num_components=3)
    q = _mvn_diag([[0.3, -0.2]] * 64, [[1.2, 1.1]] * 64)
    decode = _gaussian_decoder([[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0], 1.0)
    x = tf.zeros([64, 2])
    terms = tfvae.elbo(x, q, decode, prior_layer.distribution(), kl="mc", seed=2)
    assert np.any(terms["kl"].numpy() < 0)
    np.testing.assert_allclose(terms["loss"], -terms["elbo"], rtol=1e-6, atol=1e-6)


def test_explicit_noise_is_never_silently_replaced():
    # A distribution alone does not say how noise maps to z: explicit noise needs the
    # posterior's sampler, for a Gaussian as for a mixture.
    mixture = tfvae.MixtureOfGaussiansPrior(2, num_components=3).distribution()
    for dist in (mixture, _standard_normal(2)):
        with pytest.raises(ValueError, match="`noise`: explicit noise needs"):
            objectives.posterior_sample(dist, 1, noise=tf.zeros([1, 2]))
    # With a seed it falls back to the distribution's own (seeded) sampler.
    a = objectives.posterior_sample(mixture, 4, seed=3).numpy()
    np.testing.assert_array_equal(a, objectives.posterior_sample(mixture, 4, seed=3).numpy())


SAMPLED_POSTERIORS = {
    "diagonal": lambda: tfvae.DiagonalGaussianPosterior(3),
    "full": lambda: tfvae.FullCovarianceGaussianPosterior(3),
    "iaf": lambda: tfvae.IAFPosterior(3, num_steps=2, hidden_units=8, context_dim=2),
    "planar": lambda: tfvae.PlanarFlowPosterior(3, num_steps=2),
    "hierarchical": lambda: tfvae.HierarchicalPosterior((2, 1), hidden_units=8, seed=0),
}


@pytest.mark.parametrize("name", SAMPLED_POSTERIORS)
def test_every_posterior_is_sampled_through_its_reparameterize(name):
    rng = np.random.default_rng(4)
    head = SAMPLED_POSTERIORS[name]()
    parameters = head.parameters(tf.constant(rng.normal(size=(4, head.params_size)), tf.float32))
    q, sampler = head.sampler(parameters)
    # Explicit noise: z is the head's own reparameterisation, and q scores it as it
    # scores the same points given afresh (read back from the flow vs inverted).
    eps = tf.constant(rng.normal(size=(5, 4, 3)), tf.float32)
    z = objectives.posterior_sample(q, 5, noise=eps, reparameterize=sampler)
    np.testing.assert_allclose(z, head.reparameterize(parameters, eps), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(q.log_prob(z), q.log_prob(tf.constant(z.numpy())), atol=1e-4)

    # The IWAE bound in chunks, recomputed here: chunk c's noise is tfvae's counter-based
    # draw `[batch, n, d]` (example-major) from fold_in(seed, first sample of c), pushed
    # through `reparameterize`; log w = log N(x; W z, σ²) + log N(z; 0, I) − log q(z).
    x = rng.normal(size=(4, 2)).astype("float32")
    weight = rng.normal(size=(2, 3))
    decode = _gaussian_decoder(weight, [0.0, 0.0], 0.7)
    k, chunk, seed = 7, 3, 5
    got = objectives.iwae_bound(tf.constant(x), q, decode, _standard_normal(3), k, seed=seed,
                                chunk_size=chunk, reparameterize=sampler).numpy()
    log_w = []
    for start in range(0, k, chunk):
        n = min(chunk, k - start)
        noise = tfvae.random.standard_normal(
            [4, n, 3], tfvae.random.fold_in(tfvae.random.make_seed(seed), start)).numpy()
        z = head.reparameterize(parameters, np.transpose(noise, (1, 0, 2))).numpy()
        log_q = head.distribution(parameters).log_prob(tf.constant(z)).numpy()
        z = z.astype(np.float64)
        log_px = stats.norm.logpdf(x[None], z @ weight.T, 0.7).sum(-1)
        log_w.append(log_px + stats.norm.logpdf(z).sum(-1) - log_q)
    expected = special.logsumexp(np.concatenate(log_w), axis=0) - np.log(k)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
    # Without the sampler, explicit noise is refused.
    with pytest.raises(ValueError, match="`noise`: explicit noise needs"):
        objectives.log_importance_weights(tf.constant(x), q, decode, _standard_normal(3), 2,
                                          noise=eps[:2])


# ---------------------------------------------------------------------------
# Free bits per group of latents (Kingma et al., 2016), against numpy.


def _kl_per_dim(loc, scale):
    return 0.5 * (loc**2 + scale**2 - 1.0) - np.log(scale)


def test_group_penalty_is_the_sum_of_clamped_batch_means_and_stops_inactive_gradients():
    rng = np.random.default_rng(0)
    loc = tf.Variable((rng.normal(size=(6, 4)) * [[2.0, 2.0, 0.05, 0.05]]).astype("float32"))
    scale = tf.constant(np.full((6, 4), 0.9, "float32"))
    x = tf.constant((rng.uniform(size=(6, 3)) > 0.5).astype("float32"))
    kernel = tf.constant(rng.normal(size=(4, 3)).astype("float32"))

    def decode(z):
        return tfvae.BernoulliLikelihood((3,))(z @ kernel)

    def groups(z):  # two groups: dims {0, 1} (informative) and {2, 3} (nearly collapsed)
        per_dim = 0.5 * (loc**2 + scale**2 - 1.0) - tf.math.log(scale)
        return tf.stack([tf.reduce_sum(per_dim[:, :2], -1), tf.reduce_sum(per_dim[:, 2:], -1)], -1)

    prior = tfvae.StandardNormalPrior(4).distribution()
    free_bits = 0.5
    with tf.GradientTape() as tape:
        q = tfvae.DiagonalGaussianPosterior(4).distribution({"loc": loc, "scale": scale})
        terms = objectives.elbo(x, q, decode, prior, free_bits=free_bits, group_kl=groups, seed=0)
        loss = tf.reduce_mean(terms["loss"])
    kl_groups = np.stack([_kl_per_dim(loc.numpy(), 0.9)[:, :2].sum(-1),
                          _kl_per_dim(loc.numpy(), 0.9)[:, 2:].sum(-1)], -1)
    np.testing.assert_allclose(terms["kl_groups"], kl_groups, rtol=1e-5)
    group_means = kl_groups.mean(0)
    assert group_means[0] > free_bits > group_means[1]  # one active, one clamped group
    expected = -terms["reconstruction"].numpy().mean() + np.maximum(group_means, free_bits).sum()
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    np.testing.assert_allclose(terms["kl"], kl_groups.sum(-1), rtol=1e-5)  # the reported KL
    # The clamped group's KL gets no gradient: only the likelihood pulls dims 2, 3.
    gradient = tape.gradient(loss, loc).numpy()
    with tf.GradientTape() as tape:
        q = tfvae.DiagonalGaussianPosterior(4).distribution({"loc": loc, "scale": scale})
        reconstruction_only = -tf.reduce_mean(
            objectives.elbo(x, q, decode, prior, seed=0)["reconstruction"])
    reference = tape.gradient(reconstruction_only, loc).numpy()
    np.testing.assert_allclose(gradient[:, 2:], reference[:, 2:], rtol=1e-5, atol=1e-7)
    assert np.max(np.abs(gradient[:, :2] - reference[:, :2])) > 1e-3


# ---------------------------------------------------------------------------
# IWAE training: the objective and the DReG gradient estimator.


def _iwae_linear_gaussian(rng, dx=4, d=2, sigma=0.5):
    w = tf.constant(rng.normal(size=(dx, d)), tf.float32)
    b = tf.constant(rng.normal(size=dx), tf.float32)

    def decode(z):
        return tfd.Independent(tfd.Normal(tf.linalg.matvec(w, z) + b, sigma), 1)

    return decode


def _gradient_samples(estimator, replicates=600, k=16):
    """Per-replicate gradients of the IWAE objective w.r.t. q's parameters.

    Row r of the batch is the same example with its own copy of q's parameters,
    so the gradient w.r.t. row r is the r-th independent estimate.
    """
    rng = np.random.default_rng(0)
    decode = _iwae_linear_gaussian(rng)
    x = tf.constant(np.tile(rng.normal(size=(1, 4)) * 2, (replicates, 1)), tf.float32)
    loc = tf.Variable(np.tile([[0.3, -0.2]], (replicates, 1)), dtype=tf.float32)
    raw_scale = tf.Variable(np.zeros((replicates, 2)), dtype=tf.float32)
    prior = tfvae.StandardNormalPrior(2).distribution()
    with tf.GradientTape() as tape:
        q = tfd.MultivariateNormalDiag(loc, tf.nn.softplus(raw_scale))
        stopped = None
        if estimator == "dreg":
            stopped = tfd.MultivariateNormalDiag(
                tf.stop_gradient(loc), tf.stop_gradient(tf.nn.softplus(raw_scale)))
        terms = objectives.iwae(x, q, decode, prior, k, seed=3, stopped_posterior=stopped)
        loss = tf.reduce_sum(terms["loss_encoder" if estimator == "dreg" else "loss"])
    grads = tape.gradient(loss, [loc, raw_scale])
    return np.concatenate([g.numpy() for g in grads], axis=1).astype(np.float64)


def test_dreg_encoder_gradient_is_unbiased_with_lower_variance():
    standard = _gradient_samples("standard")
    dreg = _gradient_samples("dreg")
    n = len(standard)
    # Same expectation: the difference of the means is within 5 standard errors.
    standard_error = np.sqrt(standard.var(0) / n + dreg.var(0) / n)
    assert np.all(np.abs(standard.mean(0) - dreg.mean(0)) < 5 * standard_error)
    # DReG removes the score-function term, so its variance is clearly smaller.
    assert np.all(dreg.std(0) < 0.7 * standard.std(0))


def test_iwae_terms_agree_with_the_bound_and_elbo_functions():
    rng = np.random.default_rng(1)
    decode = _iwae_linear_gaussian(rng)
    x = tf.constant(rng.normal(size=(3, 4)), tf.float32)
    q = tfd.MultivariateNormalDiag(tf.constant(rng.normal(size=(3, 2)), tf.float32),
                                   tf.constant([[0.5, 0.8]] * 3, tf.float32))
    prior = tfvae.StandardNormalPrior(2).distribution()
    terms = objectives.iwae(x, q, decode, prior, 10, seed=5)
    log_w = objectives.log_importance_weights(x, q, decode, prior, 10, seed=5).numpy()
    expected = np.log(np.mean(np.exp(log_w.astype(np.float64)), axis=0))
    np.testing.assert_allclose(terms["iwae"], expected, rtol=1e-5)
    np.testing.assert_allclose(terms["loss"], -terms["iwae"], rtol=1e-6)
    np.testing.assert_allclose(terms["elbo"], terms["reconstruction"] - terms["kl"], rtol=1e-6)
    np.testing.assert_allclose(terms["kl"], tfd.kl_divergence(q, prior), rtol=1e-6)


# ---------------------------------------------------------------------------
# β-TCVAE: the KL split into MI, total correlation and dimension-wise KL, against numpy.


def _np_mss(z, loc, scale, dataset_size):
    """Numpy MSS estimates of log q(z_i) `[M]` and log q(z_ij) `[M, d]` for one sample
    z `[M, d]` per example: weight 1/N for x_i itself, (N − 1)/(N (M − 1)) for the others."""
    m = len(loc)
    log_q = stats.norm.logpdf(z[:, None, :], loc[None], scale[None])  # [M, M, d]
    weights = np.full((m, m), (dataset_size - 1) / (dataset_size * (m - 1)))
    np.fill_diagonal(weights, 1.0 / dataset_size)
    log_qz = np.log(np.sum(weights * np.exp(log_q.sum(-1)), axis=1))
    log_qz_dims = np.log(np.sum(weights[..., None] * np.exp(log_q), axis=1))
    return log_qz, log_qz_dims


def _tc_batch(m=5, d=3, seed=0):
    rng = np.random.default_rng(seed)
    loc = rng.normal(size=(m, d)) * 0.8
    scale = rng.uniform(0.4, 1.3, size=(m, d))
    eps = rng.standard_normal((m, d))
    return loc, scale, loc + scale * eps


@pytest.mark.parametrize("dataset_size", [5, 40, 10_000])
def test_mss_log_aggregate_posterior_matches_numpy(dataset_size):
    loc, scale, z = _tc_batch()
    log_qz, log_qz_dims = objectives.log_aggregate_posterior(
        tf.constant(z[None], tf.float32), tf.constant(loc, tf.float32),
        tf.constant(scale, tf.float32), dataset_size=dataset_size)
    expected, expected_dims = _np_mss(z, loc, scale, dataset_size)
    assert log_qz.shape == (1, 5) and log_qz_dims.shape == (1, 5, 3)
    np.testing.assert_allclose(log_qz[0], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(log_qz_dims[0], expected_dims, rtol=1e-5, atol=1e-5)


def test_mss_with_the_whole_dataset_is_the_exact_mixture():
    # dataset_size=None: the batch is the dataset, q(z) = (1/M) Σ_k q(z|x_k) exactly.
    loc, scale, z = _tc_batch(m=4, d=2, seed=1)
    log_qz, log_qz_dims = objectives.log_aggregate_posterior(
        tf.constant(z[None], tf.float32), tf.constant(loc, tf.float32),
        tf.constant(scale, tf.float32))
    log_q = stats.norm.logpdf(z[:, None, :], loc[None], scale[None])
    np.testing.assert_allclose(log_qz[0], np.log(np.mean(np.exp(log_q.sum(-1)), 1)), rtol=1e-5)
    np.testing.assert_allclose(log_qz_dims[0], np.log(np.mean(np.exp(log_q), 1)), rtol=1e-5)
    # A dataset smaller than the batch cannot be: N is raised to M.
    small, _ = objectives.log_aggregate_posterior(
        tf.constant(z[None], tf.float32), tf.constant(loc, tf.float32),
        tf.constant(scale, tf.float32), dataset_size=2)
    np.testing.assert_allclose(small, log_qz, rtol=1e-6)


def test_mss_estimate_of_q_z_is_unbiased_over_the_batches_holding_the_example():
    # A dataset of N = 6 posteriors; example 0 in a batch of M = 3 drawn without
    # replacement: averaged over all C(5, 2) batches, the MSS estimate of q(z_0) (not its
    # log) is the exact mixture (1/N) Σ_n q(z_0|x_n).
    import itertools

    loc, scale, z = _tc_batch(m=6, d=2, seed=2)
    estimates, estimates_dims = [], []
    for others in itertools.combinations(range(1, 6), 2):
        batch = [0, *others]
        log_qz, log_qz_dims = objectives.log_aggregate_posterior(
            tf.constant(z[None, :1], tf.float32), tf.constant(loc[batch], tf.float32),
            tf.constant(scale[batch], tf.float32), dataset_size=6)
        estimates.append(np.exp(np.float64(log_qz[0, 0])))
        estimates_dims.append(np.exp(np.float64(log_qz_dims[0, 0])))
    log_q = stats.norm.logpdf(z[0][None], loc, scale)  # [N, d]
    np.testing.assert_allclose(np.mean(estimates), np.mean(np.exp(log_q.sum(-1))), rtol=1e-5)
    np.testing.assert_allclose(np.mean(estimates_dims, 0), np.mean(np.exp(log_q), 0), rtol=1e-5)


def test_mss_leaves_invalid_examples_out_of_the_aggregate():
    loc, scale, z = _tc_batch(m=5, d=2, seed=3)
    valid = np.array([True, False, True, True, False])
    bad_loc = loc.copy()
    bad_loc[~valid] = np.nan
    log_qz, log_qz_dims = objectives.log_aggregate_posterior(
        tf.constant(z[None], tf.float32), tf.constant(bad_loc, tf.float32),
        tf.constant(scale, tf.float32), dataset_size=30, valid=tf.constant(valid))
    expected, expected_dims = _np_mss(z[valid], loc[valid], scale[valid], 30)
    np.testing.assert_allclose(log_qz.numpy()[0, valid], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(log_qz_dims.numpy()[0, valid], expected_dims, rtol=1e-5, atol=1e-5)
    assert np.isnan(log_qz.numpy()[0, ~valid]).all()


def test_tc_decomposition_telescopes_to_log_q_over_p_per_example():
    loc, scale, _ = _tc_batch(m=6, d=3, seed=4)
    eps = np.random.default_rng(5).standard_normal((3, 6, 3))
    z = loc + scale * eps  # [L, M, d]
    terms = objectives.tc_decomposition(
        tf.constant(z, tf.float32), tf.constant(loc, tf.float32), tf.constant(scale, tf.float32),
        _standard_normal(3).log_prob, dataset_size=1000)
    log_ratio = np.mean(np.sum(stats.norm.logpdf(z, loc, scale) - stats.norm.logpdf(z), -1), 0)
    total = terms["mi"] + terms["tc"] + terms["dwkl"]
    assert total.shape == (6,)
    np.testing.assert_allclose(total, log_ratio, rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(terms["log_ratio"], log_ratio, rtol=1e-5, atol=2e-5)
    # Each term against numpy (sample by sample, then the mean over the 3 samples).
    per_sample = [_np_mss(z[l], loc, scale, 1000) for l in range(3)]
    log_qz = np.stack([p[0] for p in per_sample])
    log_qz_product = np.stack([p[1].sum(-1) for p in per_sample])
    mi = np.mean(stats.norm.logpdf(z, loc, scale).sum(-1) - log_qz, 0)
    tc = np.mean(log_qz - log_qz_product, 0)
    np.testing.assert_allclose(terms["mi"], mi, rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(terms["tc"], tc, rtol=1e-5, atol=2e-5)


def test_minibatch_tc_terms_are_biased_as_documented_against_the_whole_set():
    # N = 96 posteriors, one draw each; the whole-set split (M = N, exact mixture) against
    # the mean over 6 random partitions into batches of M = 16 (dataset_size = N): the
    # per-draw sum is the same, but log q̂ is biased low, so mi reads high and dwkl low
    # (tc, the difference of two low estimates, may move either way: here it reads high).
    n, m, d = 96, 16, 3
    rng = np.random.default_rng(8)
    loc = rng.normal(size=(n, d))
    scale = rng.uniform(0.1, 0.3, size=(n, d))
    z = (loc + scale * rng.standard_normal((n, d)))[None]
    prior = _standard_normal(d).log_prob
    as_tensor = lambda a: tf.constant(a, tf.float32)  # noqa: E731
    whole = objectives.tc_decomposition(as_tensor(z), as_tensor(loc), as_tensor(scale), prior,
                                        dataset_size=n)
    whole = {key: value.numpy().mean() for key, value in whole.items()}
    differences = []
    for _ in range(6):
        order = rng.permutation(n)
        parts = [objectives.tc_decomposition(as_tensor(z[:, rows]), as_tensor(loc[rows]),
                                             as_tensor(scale[rows]), prior, dataset_size=n)
                 for rows in np.split(order, n // m)]
        differences.append({key: np.concatenate([p[key].numpy() for p in parts]).mean()
                            - whole[key] for key in ("mi", "tc", "dwkl")})
    mean = {key: np.mean([d_[key] for d_ in differences]) for key in ("mi", "tc", "dwkl")}
    spread = {key: np.std([d_[key] for d_ in differences], ddof=1) / np.sqrt(6) for key in mean}
    assert mean["mi"] > 5 * spread["mi"] and mean["mi"] > 0.1
    assert mean["dwkl"] < -5 * spread["dwkl"]
    assert mean["mi"] + mean["tc"] + mean["dwkl"] == pytest.approx(0.0, abs=1e-4)


def _linear_decoder_parts(d, D, seed):
    rng = np.random.default_rng(seed)
    weight = rng.normal(size=(D, d))
    bias = rng.normal(size=D) * 0.1
    sigma = 0.7
    w, b = tf.constant(weight, tf.float32), tf.constant(bias, tf.float32)

    def log_likelihood(z, x):
        mean = tf.linalg.matvec(w, z) + b
        return tf.reduce_sum(tfd.Normal(mean, sigma).log_prob(x), -1)

    return weight, bias, sigma, log_likelihood


def test_beta_tcvae_loss_applies_its_weights_as_written():
    m, d, D, n = 6, 3, 4, 50
    loc, scale, _ = _tc_batch(m=m, d=d, seed=6)
    x = np.random.default_rng(7).normal(size=(m, D))
    eps = np.random.default_rng(8).standard_normal((1, m, d))
    weight, bias, sigma, log_likelihood = _linear_decoder_parts(d, D, 9)
    loc_t, scale_t = tf.constant(loc, tf.float32), tf.constant(scale, tf.float32)
    # Independent numpy terms on the same noise.
    z = loc + scale * eps[0]
    reconstruction = stats.norm.logpdf(x, z @ weight.T + bias, sigma).sum(-1)
    log_qz, log_qz_dims = _np_mss(z, loc, scale, n)
    log_qz_x = stats.norm.logpdf(z, loc, scale).sum(-1)
    log_pz = stats.norm.logpdf(z).sum(-1)
    mi, tc, dwkl = log_qz_x - log_qz, log_qz - log_qz_dims.sum(-1), log_qz_dims.sum(-1) - log_pz
    for beta, alpha, beta_tc, gamma in [(1.0, 1.0, 1.0, 1.0), (0.7, 0.5, 6.0, 2.0),
                                        (1.0, 0.0, 0.0, 0.0), (2.0, 1.0, 10.0, 0.0)]:
        terms = objectives.beta_tcvae(
            tf.constant(x, tf.float32), loc_t, scale_t, lambda e: loc_t + scale_t * e,
            log_likelihood, _standard_normal(d).log_prob, noise=eps, beta=beta,
            mi_weight=alpha, tc_weight=beta_tc, dwkl_weight=gamma, dataset_size=n)
        assert set(terms) == {"loss", "elbo", "reconstruction", "kl", "mi", "tc", "dwkl"}
        for key, want in [("reconstruction", reconstruction), ("mi", mi), ("tc", tc),
                          ("dwkl", dwkl), ("kl", log_qz_x - log_pz)]:
            np.testing.assert_allclose(terms[key], want, rtol=1e-5, atol=5e-5, err_msg=key)
        expected = -reconstruction + beta * (alpha * mi + beta_tc * tc + gamma * dwkl)
        np.testing.assert_allclose(terms["loss"], expected, rtol=1e-5, atol=1e-4)


def test_beta_tcvae_with_unit_weights_is_minus_elbo_in_expectation():
    # α = β_TC = γ = 1: the loss is −log p(x|z) + log q(z|x) − log p(z) sample by sample,
    # so its mean over L samples converges to −ELBO (closed form for a linear-Gaussian
    # decoder); the tolerance is 5 standard errors of the per-sample loss.
    m, d, D, num = 3, 2, 3, 20_000
    loc, scale, _ = _tc_batch(m=m, d=d, seed=10)
    x = np.random.default_rng(11).normal(size=(m, D))
    eps = np.random.default_rng(12).standard_normal((num, m, d))
    weight, bias, sigma, log_likelihood = _linear_decoder_parts(d, D, 13)
    loc_t, scale_t = tf.constant(loc, tf.float32), tf.constant(scale, tf.float32)
    kl = 0.5 * np.sum(loc**2 + scale**2 - 1 - np.log(scale**2), -1)
    terms = objectives.beta_tcvae(
        tf.constant(x, tf.float32), loc_t, scale_t, lambda e: loc_t + scale_t * e,
        log_likelihood, _standard_normal(d).log_prob, kl_term=tf.constant(kl, tf.float32),
        noise=eps, dataset_size=100)
    z = loc + scale * eps
    per_sample = (-stats.norm.logpdf(x, z @ weight.T + bias, sigma).sum(-1)
                  + stats.norm.logpdf(z, loc, scale).sum(-1) - stats.norm.logpdf(z).sum(-1))
    np.testing.assert_allclose(terms["loss"], per_sample.mean(0), rtol=1e-4, atol=1e-3)
    residual = x - loc @ weight.T - bias
    expected_reconstruction = (-0.5 * D * np.log(2 * np.pi * sigma**2) - (
        np.sum(residual**2, -1) + np.sum((weight**2) @ (scale**2).T, 0)) / (2 * sigma**2))
    minus_elbo = -expected_reconstruction + kl
    standard_error = per_sample.std(0) / np.sqrt(num)
    assert np.all(np.abs(terms["loss"].numpy() - minus_elbo) < 5 * standard_error)
    np.testing.assert_allclose(terms["elbo"], terms["reconstruction"] - kl, rtol=1e-6)
    np.testing.assert_allclose(terms["mi"] + terms["tc"] + terms["dwkl"],
                               per_sample.mean(0) + terms["reconstruction"], rtol=1e-4, atol=1e-3)


def test_global_batch_is_the_batch_itself_on_one_device():
    loc, scale = tf.ones([3, 2]), 2 * tf.ones([3, 2])
    got_loc, got_scale, valid, offset = objectives.global_batch(loc, scale)
    assert got_loc is loc and got_scale is scale and valid is None and offset == 0


# ---------------------------------------------------------------------------
# Bad arguments.


@pytest.fixture(scope="module")
def vec_model():
    return tfvae.build_vae((4,), 2, hidden_units=(8,), seed=0)


def _posterior_and_decode(model, n=3):
    x = tf.constant(unit_data(n=n))
    return x, model.encode(x), model.likelihood_fn()


def test_kl_analytic_without_registered_kl(vec_model):
    x, q, _ = _posterior_and_decode(vec_model)
    mixture = tfvae.MixtureOfGaussiansPrior(2, num_components=3).distribution()
    with raises("`kl`", "kl='analytic'", "kl='auto'", "kl='mc'"):
        tfvae.kl_divergence(q, mixture, kl="analytic")


@pytest.mark.parametrize("kl", ["exact", None])
def test_kl_divergence_unknown_method(vec_model, kl):
    _, q, _ = _posterior_and_decode(vec_model)
    with invalid("kl", kl, "'auto'", "'analytic'", "'mc'"):
        tfvae.kl_divergence(q, vec_model.prior.distribution(), kl=kl)


def test_kl_mc_needs_samples(vec_model):
    _, q, _ = _posterior_and_decode(vec_model)
    with raises("`z`", "z=None"):
        tfvae.kl_divergence(q, vec_model.prior.distribution(), kl="mc")


def test_mixture_prior_with_analytic_kl_fails_clearly():
    model = tfvae.build_vae((4,), 2, prior="mixture", num_components=2, hidden_units=(8,),
                            kl="analytic")
    with raises("`kl`", "kl='auto'", "kl='mc'"):
        model.elbo(unit_data(n=2))


@pytest.mark.parametrize("k", BAD_POSITIVE_INTS)
def test_iwae_bound_bad_k(vec_model, k):
    x, q, decode = _posterior_and_decode(vec_model)
    with invalid("k", k):
        tfvae.iwae_bound(x, q, decode, vec_model.prior.distribution(), k=k)
    with invalid("k", k):
        vec_model.iwae_bound(x, k=k)


@pytest.mark.parametrize("chunk_size", [0, -3, 2.5, "64"])
def test_iwae_bound_bad_chunk_size(vec_model, chunk_size):
    x, q, decode = _posterior_and_decode(vec_model)
    with invalid("chunk_size", chunk_size):
        tfvae.iwae_bound(x, q, decode, vec_model.prior.distribution(), k=4, chunk_size=chunk_size)


@pytest.mark.parametrize("chunk_size", [0, -3, 2.5, "64"])
def test_log_likelihood_bad_chunk_size(vec_model, chunk_size):
    with invalid("chunk_size", chunk_size):
        vec_model.log_likelihood(unit_data(n=2), num_samples=4, chunk_size=chunk_size)


def test_log_likelihood_chunk_size_none_means_one_chunk(vec_model):
    x = unit_data(n=2)
    one_chunk = vec_model.log_likelihood(x, num_samples=4, chunk_size=None, seed=1)
    np.testing.assert_allclose(one_chunk, vec_model.iwae_bound(x, k=4, seed=1), rtol=1e-6)


def test_good_objective_arguments_pass(vec_model):
    x, q, decode = _posterior_and_decode(vec_model)
    mixture = tfvae.MixtureOfGaussiansPrior(2, num_components=3).distribution()
    z = tfvae.objectives.posterior_sample(q, 2, seed=0)
    assert tfvae.kl_divergence(q, mixture, z=z, kl="auto").shape == (3,)
    assert tfvae.kl_divergence(q, vec_model.prior.distribution(), kl="analytic").shape == (3,)
    bound = tfvae.iwae_bound(x, q, decode, vec_model.prior.distribution(), k=3, chunk_size=2)
    assert bound.shape == (3,)
