"""tfvae.evaluation: held-out numbers, KL per dimension and active units (posterior collapse)."""

import numpy as np
import pytest
import tensorflow as tf

import tfvae
from tfvae import evaluation


@pytest.fixture(scope="module")
def digits():
    return tfvae.data.load_digits()


def test_kl_per_dimension_sums_to_the_kl_and_matches_numpy(digits):
    x = digits[1][0][:50]
    model = tfvae.build_vae((8, 8, 1), 4, hidden_units=(16,), seed=3)
    per_dim = evaluation.kl_per_dimension(model, x, batch_size=16)
    q = model.encode(x)
    mu, sigma = q.mean().numpy().astype(np.float64), q.stddev().numpy().astype(np.float64)
    expected = np.mean(0.5 * (mu**2 + sigma**2 - 1 - np.log(sigma**2)), axis=0)
    np.testing.assert_allclose(per_dim, expected, rtol=1e-6)
    np.testing.assert_allclose(per_dim.sum(), model.elbo(x, seed=0)["kl"].numpy().mean(), rtol=1e-5)
    vamp = tfvae.build_vae((8, 8, 1), 3, hidden_units=(16,), prior="vamp", num_components=7, seed=0)
    with pytest.raises(ValueError, match="diagonal Gaussian posterior and a standard normal"):
        evaluation.kl_per_dimension(vamp, x)


def test_collapsed_dimensions_are_inactive():
    # A model whose last two latent dimensions ignore x: zero their encoder weights.
    model = tfvae.build_vae((6,), 4, hidden_units=(8,), seed=0)
    kernel, bias = model.encoder.out.kernel, model.encoder.out.bias
    k, b = kernel.numpy(), bias.numpy()
    k[:, [2, 3, 6, 7]] = 0.0  # μ_3, μ_4 and their scales: constant in x
    b[[2, 3]] = 0.0
    b[[6, 7]] = np.log(np.expm1(1.0))  # σ = 1: exactly the prior
    kernel.assign(k)
    bias.assign(b)
    x = np.random.default_rng(0).uniform(size=(200, 6)).astype("float32")
    count, variances = evaluation.active_units(model, x)
    per_dim = evaluation.kl_per_dimension(model, x)
    assert count == 2 and np.all(variances[2:] == 0)
    np.testing.assert_allclose(per_dim[2:], 0.0, atol=1e-5)
    assert np.all(per_dim[:2] > 1e-3)


def test_evaluate_model_is_the_batchwise_mean_of_the_model_s_own_estimates():
    model = tfvae.build_vae((6,), 3, hidden_units=(8,), seed=1)
    x = (np.random.default_rng(2).uniform(size=(20, 6)) > 0.5).astype("float32")
    result = evaluation.evaluate_model(model, x, num_samples=7, seed=4, batch_size=8)
    # Batches of 8, 8 and 4; batch i uses seed + i (ELBO) and seed + 7919 + i (log p(x)).
    batches = [x[0:8], x[8:16], x[16:20]]
    terms = [model.elbo(b, seed=4 + i) for i, b in enumerate(batches)]
    log_px = np.concatenate([model.log_likelihood(b, num_samples=7, seed=4 + 7919 + i).numpy()
                             for i, b in enumerate(batches)])
    for key in ("elbo", "reconstruction", "kl"):
        expected = np.concatenate([t[key].numpy() for t in terms]).mean()
        assert result[key] == pytest.approx(expected, rel=1e-5, abs=1e-5), key
    assert result["log_px"] == pytest.approx(log_px.mean(), rel=1e-5)
    assert result["elbo_gap"] == pytest.approx(result["log_px"] - result["elbo"], rel=1e-6)
    assert result["likelihood_score"] == "mass"  # binary data under a Bernoulli
    assert result["bits_per_dim"] == pytest.approx(-log_px.mean() / (6 * np.log(2.0)), rel=1e-5)
    # Active units from the posterior means (the raw encoder's first 3 outputs here).
    means = model.encoder(tf.constant(x)).numpy()[:, :3]
    assert result["active_units"] == int(np.sum(means.var(0) > 0.01))
    assert sum(result["kl_per_dimension"]) == pytest.approx(result["kl"], rel=1e-4)
    assert (result["num_examples"], result["num_samples"]) == (20, 7)


def test_progress_bar_shows_the_examples_and_leaves_the_numbers_alone(capsys):
    model = tfvae.build_vae((4,), 2, hidden_units=(4,), seed=0)
    x = (np.random.default_rng(0).uniform(size=(30, 4)) > 0.5).astype("float32")
    quiet = tfvae.evaluation.evaluate_model(model, x, num_samples=5, batch_size=8)
    capsys.readouterr()
    loud = tfvae.evaluation.evaluate_model(model, x, num_samples=5, batch_size=8, verbose=1)
    assert "30/30" in capsys.readouterr().out
    assert loud == quiet


@pytest.mark.parametrize("posterior, extra", [("diagonal", set()), ("full", set()),
                                              ("iaf", None), ("hierarchical", None)])
def test_encode_dataset_gives_every_examples_posterior_in_input_order(digits, posterior, extra):
    x = digits[1][0][:11]
    model = tfvae.build_vae((8, 8, 1), 4, hidden_units=(16,), posterior=posterior, seed=1)
    codes = evaluation.encode_dataset(model, x, batch_size=4)  # 3 batches, the last partial
    assert all(len(value) == 11 for value in codes.values())
    np.testing.assert_allclose(codes["code"], model.latent_code(x).numpy(), rtol=1e-5, atol=1e-6)
    if extra is not None:  # Gaussian q: the TFP distribution's own mean and scale
        q = model.encode(x)
        np.testing.assert_allclose(codes["mean"], q.mean().numpy(), rtol=1e-5, atol=1e-6)
        scale = codes["scale"]
        covariance = scale @ np.swapaxes(scale, -1, -2) if scale.ndim == 3 else None
        if covariance is None:
            np.testing.assert_allclose(scale, q.stddev().numpy(), rtol=1e-5)
        else:
            np.testing.assert_allclose(covariance, q.covariance().numpy(), rtol=1e-4, atol=1e-6)
        assert set(codes) == {"mean", "scale", "code"} | extra
    else:  # flows and hierarchies: the head's own parameters, in order
        parameters = model.posterior_outputs(*model.prepare_inputs(x))
        assert set(codes) == set(parameters) | {"code"}
        for key, value in parameters.items():
            np.testing.assert_allclose(codes[key], value.numpy(), rtol=1e-5, atol=1e-6)


def test_score_examples_are_per_example_and_in_input_order(digits):
    x = digits[1][0][:9]
    model = tfvae.build_vae((8, 8, 1), 3, hidden_units=(16,), seed=2)
    scores = evaluation.score_examples(model, x, num_samples=20, batch_size=4, seed=5)
    assert set(scores) == {"elbo", "reconstruction", "kl", "squared_error", "log_px"}
    # The deterministic scores against independent computations.
    q = model.encode(x)
    np.testing.assert_allclose(
        scores["kl"], q.kl_divergence(model.prior.distribution()).numpy(), rtol=1e-5)
    error = ((x - model.reconstruct(x).numpy()) ** 2).reshape(9, -1).sum(axis=1)
    np.testing.assert_allclose(scores["squared_error"], error, rtol=1e-5)
    np.testing.assert_allclose(scores["elbo"], scores["reconstruction"] - scores["kl"], rtol=1e-6)
    # Input order: the deterministic scores follow a permutation of the examples.
    order = np.random.default_rng(0).permutation(9)
    permuted = evaluation.score_examples(model, x[order], batch_size=4)
    assert "log_px" not in permuted
    for key in ("kl", "squared_error"):
        np.testing.assert_allclose(permuted[key], scores[key][order], rtol=1e-5)
    # The sampled ones: batch i uses seed + i (ELBO) and seed + 7919 + i (log p(x)).
    for i, start in enumerate(range(0, 9, 4)):
        batch = x[start : start + 4]
        np.testing.assert_allclose(scores["elbo"][start : start + 4],
                                   model.elbo(batch, seed=5 + i)["elbo"].numpy(), rtol=1e-5)
        np.testing.assert_allclose(scores["log_px"][start : start + 4],
                                   model.log_likelihood(batch, num_samples=20,
                                                        seed=5 + 7919 + i).numpy(), rtol=1e-5)
    means = evaluation.evaluate_model(model, x, num_samples=20, batch_size=4, seed=5)
    for key in ("elbo", "reconstruction", "kl", "log_px"):
        assert means[key] == pytest.approx(scores[key].mean(), rel=1e-6)


@pytest.mark.parametrize("likelihood, x, kind", [
    ("bernoulli", np.array([[0.0, 1.0, 1.0]]), "mass"),
    ("bernoulli", np.array([[0.0, 0.5, 1.0]]), "cross_entropy"),  # grey values: not normalised
    ("continuous_bernoulli", np.array([[0.0, 0.5, 1.0]]), "density"),
    ("gaussian", np.array([[-2.0, 0.5, 3.0]]), "density"),
    ("categorical", np.array([[0.0, 7.0, 255.0]]), "mass"),
    ("discretized_logistic", np.array([[0.0, 7.0, 255.0]]), "mass"),
])
def test_bits_per_dim_only_for_discrete_data(likelihood, x, kind):
    model = tfvae.build_vae((3,), 2, hidden_units=(4,), likelihood=likelihood, seed=0)
    x = np.repeat(x, 4, axis=0).astype("float32")
    assert model.likelihood.score_kind(x) == kind
    result = evaluation.evaluate_model(model, x, num_samples=3)
    assert result["likelihood_score"] == kind
    assert ("bits_per_dim" in result) == (kind == "mass")


def _linear_gaussian_encoder(n=4000, seed=0):
    """Gaussian data x ~ N(μ, Σ) in 3-D and a linear encoder q(z|x) = N(Ax + c, diag s²):
    the aggregate posterior is N(Aμ + c, AΣAᵀ + S), so both surgery terms have closed forms."""
    rng = np.random.default_rng(seed)
    big, small = 3, 2
    a, c, s = rng.normal(size=(small, big)), 0.3 * rng.normal(size=small), np.array([0.2, 0.3])
    mu, root = rng.normal(size=big), 0.5 * rng.normal(size=(big, big))
    cov_x = root @ root.T + 0.2 * np.eye(big)
    x = rng.multivariate_normal(mu, cov_x, size=n).astype("float32")
    posterior = tfvae.DiagonalGaussianPosterior(small)
    encoder = tfvae.MLP(posterior.params_size, (), name="encoder")
    model = tfvae.VAE(encoder, tfvae.MLP(big, (), name="decoder"), posterior,
                      tfvae.GaussianLikelihood((big,), scale=1.0), seed=0)
    kernel, bias = np.zeros((big, 2 * small)), np.zeros(2 * small)
    kernel[:, :small], bias[:small] = a.T, c
    bias[small:] = np.log(np.expm1(s - posterior.min_scale))  # σ = softplus(raw) + min_scale
    encoder.weights[0].assign(kernel.astype("float32"))
    encoder.weights[1].assign(bias.astype("float32"))
    q_cov = np.diag(s**2)
    agg_mean, agg_cov = a @ mu + c, a @ cov_x @ a.T + q_cov
    mutual_information = 0.5 * np.log(np.linalg.det(agg_cov) / np.linalg.det(q_cov))
    marginal_kl = 0.5 * (np.trace(agg_cov) + agg_mean @ agg_mean - small
                         - np.log(np.linalg.det(agg_cov)))
    return model, x, mutual_information, marginal_kl


def _aggregate_total_correlation(model, x):
    """TC of the Gaussian N(mean of codes, cov of means + mean of S) (the aggregate of a
    linear-Gaussian encoder, from its own sample moments), and its covariance."""
    q = model.encode(x)
    means, variances = q.mean().numpy().astype(np.float64), q.variance().numpy()
    cov = np.cov(means.T, bias=True) + np.diag(variances.mean(axis=0))
    return 0.5 * (np.sum(np.log(np.diag(cov))) - np.log(np.linalg.det(cov))), cov


def test_elbo_surgery_matches_the_closed_forms_of_a_linear_gaussian_encoder():
    model, x, mutual_information, marginal_kl = _linear_gaussian_encoder()
    assert mutual_information > 1.0  # the code carries real information here
    got = evaluation.elbo_surgery(model, x, num_samples=2, seed=0)
    # Closed forms are population values; the 4,000 data points add O(1/√N) noise.
    for key, expected in (("mutual_information", mutual_information),
                          ("marginal_kl", marginal_kl)):
        assert abs(got[key] - expected) < 4 * got[key + "_stderr"] + 0.03, (key, got[key], expected)
    # The two terms add up to the mean KL, which the model computes analytically.
    kl = model.elbo(x, seed=0)["kl"].numpy().mean()
    assert abs(got["kl_estimate"] - kl) < 4 * got["kl_estimate_stderr"]
    assert got["kl_estimate"] == pytest.approx(got["mutual_information"] + got["marginal_kl"])
    # The aggregate is Gaussian with covariance C = AΣAᵀ + S: its total correlation is
    # ½ (Σ_j log C_jj − log det C), and KL(q(z) ‖ p(z)) = TC + Σ_j KL(q(z_j) ‖ p(z_j)).
    total_correlation, agg_cov = _aggregate_total_correlation(model, x)
    assert total_correlation > 0.05  # the aggregate's dimensions do depend on each other
    assert abs(got["total_correlation"] - total_correlation) < (
        4 * got["total_correlation_stderr"] + 0.03)
    assert got["total_correlation"] + got["dimension_wise_kl"] == pytest.approx(
        got["marginal_kl"], abs=1e-3)
    assert got["mi_upper_bound"] == pytest.approx(np.log(4000)) and got["surgery_examples"] == 4000


def test_the_information_estimate_is_bounded_by_log_n(digits):
    model, x, _, _ = _linear_gaussian_encoder(n=12)
    bias = model.encoder.weights[1].numpy()
    bias[2:] = -30.0  # σ ≈ min_scale: each code identifies its example
    model.encoder.weights[1].assign(bias)
    got = evaluation.elbo_surgery(model, x, num_samples=3)
    assert got["mutual_information"] <= np.log(12) + 1e-6
    assert got["mutual_information"] == pytest.approx(np.log(12), abs=1e-3)


@pytest.mark.parametrize("posterior", ["diagonal", "full", "iaf", "planar"])
def test_aggregate_log_density_is_the_mixture_of_the_examples_posteriors(digits, posterior):
    x = digits[1][0][:6]
    model = tfvae.build_vae((8, 8, 1), 4, hidden_units=(16,), posterior=posterior, seed=0)
    z = np.random.default_rng(0).normal(size=(5, 4)).astype("float32")
    hierarchy = tfvae.build_vae((8, 8, 1), 4, hidden_units=(16,), posterior="hierarchical", seed=0)
    with pytest.raises(ValueError, match="scores any z under every example's q"):
        evaluation.aggregate_log_density(hierarchy, x, z)  # its q scores its own batch only
    # Independently: each example's q on its own, evaluated at every z.
    per_example = np.stack([model.encode(x[n : n + 1]).log_prob(z).numpy() for n in range(6)], 1)
    expected = np.log(np.mean(np.exp(per_example.astype(np.float64)), axis=1))
    got = evaluation.aggregate_log_density(model, x, z, chunk_size=2)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4, atol=1e-4)


def test_elbo_surgery_terms_add_up_to_the_mean_kl_on_a_full_covariance_model(digits):
    x = digits[1][0][:40]
    model = tfvae.build_vae((8, 8, 1), 3, hidden_units=(16,), posterior="full", seed=0)
    got = evaluation.elbo_surgery(model, x, num_samples=8)
    kl = model.elbo(x, seed=0)["kl"].numpy().mean()
    assert abs(got["kl_estimate"] - kl) < 4 * got["kl_estimate_stderr"] + 1e-3
    with pytest.raises(ValueError, match="at least 2 examples"):
        evaluation.elbo_surgery(model, x[:1])


def test_evaluate_model_reports_the_surgery_terms_of_its_first_examples(digits):
    x = digits[1][0][:30]
    model = tfvae.build_vae((8, 8, 1), 3, hidden_units=(16,), seed=0)
    result = evaluation.evaluate_model(model, x, num_samples=3, surgery_examples=20, seed=1)
    direct = evaluation.elbo_surgery(model, x[:20], seed=1)
    for key in ("mutual_information", "marginal_kl", "kl_estimate", "mi_upper_bound"):
        assert result[key] == pytest.approx(direct[key], rel=1e-6)
    assert result["surgery_examples"] == 20
    skipped = evaluation.evaluate_model(model, x, num_samples=3, surgery_examples=0)
    assert "mutual_information" not in skipped
    hierarchy = tfvae.build_vae((8, 8, 1), 4, hidden_units=(16,), posterior="hierarchical", seed=0)
    assert "mutual_information" not in evaluation.evaluate_model(hierarchy, x, num_samples=3)
