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


def _linear_gaussian_encoder(n=4000, seed=0, scale=(0.2, 0.3)):
    """Gaussian data x ~ N(μ, Σ) in 3-D and a linear encoder q(z|x) = N(Ax + c, diag s²):
    the aggregate posterior is N(Aμ + c, AΣAᵀ + S), so every surgery term has a closed form.

    Returns the model, x `[n, 3]` and the population's terms (a dict)."""
    rng = np.random.default_rng(seed)
    big, small = 3, 2
    a, c, s = rng.normal(size=(small, big)), 0.3 * rng.normal(size=small), np.asarray(scale)
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
    variances = np.diag(agg_cov)
    population = {
        "mutual_information": 0.5 * np.log(np.linalg.det(agg_cov) / np.linalg.det(q_cov)),
        "marginal_kl": 0.5 * (np.trace(agg_cov) + agg_mean @ agg_mean - small
                              - np.log(np.linalg.det(agg_cov))),
        "total_correlation": 0.5 * (np.sum(np.log(variances)) - np.log(np.linalg.det(agg_cov))),
        "dimension_wise_kl": 0.5 * np.sum(variances + agg_mean**2 - 1 - np.log(variances)),
    }
    return model, x, population


def _aggregate_total_correlation(model, x):
    """TC of the Gaussian N(mean of codes, cov of means + mean of S) (the aggregate of a
    linear-Gaussian encoder, from its own sample moments), and its covariance."""
    q = model.encode(x)
    means, variances = q.mean().numpy().astype(np.float64), q.variance().numpy()
    cov = np.cov(means.T, bias=True) + np.diag(variances.mean(axis=0))
    return 0.5 * (np.sum(np.log(np.diag(cov))) - np.log(np.linalg.det(cov))), cov


def test_elbo_surgery_matches_the_closed_forms_of_a_linear_gaussian_encoder():
    model, x, population = _linear_gaussian_encoder()
    assert population["mutual_information"] > 1.0  # the code carries real information here
    got = evaluation.elbo_surgery(model, x, num_samples=2, seed=0)
    # The held-out estimates target the population: the closed forms, within their error
    # (the jackknife over examples) and a small allowance for their O(1/N) Jensen bias.
    for key, expected in population.items():
        assert abs(got[key + "_heldout"] - expected) < 3 * got[key + "_heldout_stderr"] + 0.01, (
            key, got[key + "_heldout"], expected)
    # The two terms add up to the mean KL, which the model computes analytically.
    kl = model.elbo(x, seed=0)["kl"].numpy().mean()
    assert abs(got["kl_estimate"] - kl) < 4 * got["kl_estimate_mc_stderr"]
    assert got["kl_estimate"] == pytest.approx(got["mutual_information"] + got["marginal_kl"])
    # The aggregate is Gaussian with covariance C = AΣAᵀ + S: its total correlation is
    # ½ (Σ_j log C_jj − log det C), and KL(q(z) ‖ p(z)) = TC + Σ_j KL(q(z_j) ‖ p(z_j)).
    total_correlation, agg_cov = _aggregate_total_correlation(model, x)
    assert total_correlation > 0.05  # the aggregate's dimensions do depend on each other
    assert abs(got["total_correlation"] - total_correlation) < (
        4 * got["total_correlation_mc_stderr"] + 0.03)
    for suffix in ("", "_heldout"):
        assert got["total_correlation" + suffix] + got["dimension_wise_kl" + suffix] == (
            pytest.approx(got["marginal_kl" + suffix], abs=1e-3))
    assert got["mi_upper_bound"] == pytest.approx(np.log(4000)) and got["surgery_examples"] == 4000
    assert got["mi_fraction_of_bound"] == pytest.approx(got["mutual_information"] / np.log(4000))
    assert not got["mi_saturated"] and "evaluation set" in got["surgery_target"]
    # The Monte Carlo error of the draws is far below the spread between examples.
    assert got["marginal_kl_mc_stderr"] < got["marginal_kl_example_sd"] / np.sqrt(4000)


def _log_normal(z, loc, scale):
    return -0.5 * np.square((z - loc) / scale) - np.log(scale) - 0.5 * np.log(2 * np.pi)


def _logsumexp(values, axis):
    top = values.max(axis, keepdims=True)
    return np.squeeze(top, axis) + np.log(np.exp(values - top).sum(axis))


def _finite_set_terms(loc, scale, nodes):
    """The surgery terms of the finite mixture q_N of 2-D diagonal Gaussians N(loc_n, scale_n²)
    against N(0, I), by Gauss–Hermite quadrature of each E_{q(z|x_n)}[·] (nodes² points)."""
    t, w = np.polynomial.hermite.hermgauss(nodes)
    t, w = t * np.sqrt(2.0), w / np.sqrt(np.pi)
    grid = np.stack(np.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)
    weights = np.outer(w, w).reshape(-1)
    n = len(loc)
    terms = dict.fromkeys(("mutual_information", "marginal_kl", "kl_estimate",
                           "total_correlation", "dimension_wise_kl"), 0.0)
    for i in range(n):
        z = loc[i] + scale[i] * grid
        per_dimension = _log_normal(z[:, None, :], loc[None], scale[None])  # [K, N, 2]
        own = per_dimension[:, i].sum(-1)
        log_q = _logsumexp(per_dimension.sum(-1), 1) - np.log(n)
        product = (_logsumexp(per_dimension, 1) - np.log(n)).sum(-1)
        log_p = _log_normal(z, 0.0, 1.0).sum(-1)
        for key, values in (("mutual_information", own - log_q), ("marginal_kl", log_q - log_p),
                            ("kl_estimate", own - log_p), ("total_correlation", log_q - product),
                            ("dimension_wise_kl", product - log_p)):
            terms[key] += weights @ values / n
    return terms


@pytest.mark.slow  # 120 surgeries (~10 s)
def test_surgery_monte_carlo_errors_cover_the_finite_set_terms_computed_by_quadrature():
    model, x, _ = _linear_gaussian_encoder(n=20, scale=(0.5, 0.6))
    q = model.encode(x)
    loc, scale = q.mean().numpy().astype(np.float64), q.stddev().numpy().astype(np.float64)
    exact = _finite_set_terms(loc, scale, nodes=60)
    finer = _finite_set_terms(loc, scale, nodes=90)
    for key, value in exact.items():
        assert value == pytest.approx(finer[key], abs=1e-8)  # the quadrature has converged
    replicates = 120
    covered = dict.fromkeys(exact, 0)
    for seed in range(replicates):
        got = evaluation.elbo_surgery(model, x, num_samples=8, seed=seed)
        for key, value in exact.items():
            covered[key] += abs(got[key] - value) <= 1.96 * got[key + "_mc_stderr"]
    for key, count in covered.items():
        assert 0.90 <= count / replicates <= 0.99, (key, count)


def test_heldout_surgery_converges_to_the_population_where_the_finite_set_saturates(caplog):
    # Narrow posteriors: the population's information is about log 20, so 20 examples
    # cannot show it and the finite-set TC and marginal KL absorb what is cut off.
    small, x_small, population = _linear_gaussian_encoder(n=20, scale=(0.08, 0.1))
    assert population["mutual_information"] > np.log(20)
    with caplog.at_level("WARNING", logger="tfvae.surgery"):
        got = evaluation.elbo_surgery(small, x_small, num_samples=4)
    assert got["mi_saturated"] and got["mi_fraction_of_bound"] > 1 - 1 / np.log(20)
    assert any("ceiling log N" in r.getMessage() for r in caplog.records)
    assert got["total_correlation"] > population["total_correlation"] + 0.25
    assert got["marginal_kl"] > population["marginal_kl"] + 0.5
    # Held out, the same 20 examples bracket the population's information from above, with
    # an error that says they are too few.
    assert got["mutual_information_heldout"] > population["mutual_information"] > got[
        "mutual_information"]
    assert got["mutual_information_heldout_stderr"] > 0.5
    # With more examples the held-out estimates reach the population's terms, and the two
    # estimates bracket the information and the marginal KL (InfoNCE / leave-one-out bounds).
    large, x_large, _ = _linear_gaussian_encoder(n=800, scale=(0.08, 0.1))
    got = evaluation.elbo_surgery(large, x_large, num_samples=2)
    for key, expected in population.items():
        assert abs(got[key + "_heldout"] - expected) < 3 * got[key + "_heldout_stderr"] + 0.05, (
            key, got[key + "_heldout"], expected)
    assert got["mutual_information"] < population["mutual_information"] < got[
        "mutual_information_heldout"]
    assert got["marginal_kl_heldout"] < population["marginal_kl"] < got["marginal_kl"]


def test_the_information_estimate_is_bounded_by_log_n(digits):
    model, x, _ = _linear_gaussian_encoder(n=12)
    bias = model.encoder.weights[1].numpy()
    bias[2:] = -30.0  # σ ≈ min_scale: each code identifies its example
    model.encoder.weights[1].assign(bias)
    got = evaluation.elbo_surgery(model, x, num_samples=3)
    assert got["mutual_information"] <= np.log(12) + 1e-6
    assert got["mutual_information"] == pytest.approx(np.log(12), abs=1e-3)
    assert got["mi_saturated"]


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
    assert abs(got["kl_estimate"] - kl) < 4 * got["kl_estimate_mc_stderr"] + 1e-3
    assert "total_correlation" not in got  # q does not factorise over dimensions
    assert got["mutual_information_heldout"] + got["marginal_kl_heldout"] == pytest.approx(
        got["kl_estimate"])
    with pytest.raises(ValueError, match="at least 3 examples"):
        evaluation.elbo_surgery(model, x[:2])
    with pytest.raises(ValueError, match="num_samples.*at least 2 draws"):
        evaluation.elbo_surgery(model, x, num_samples=1)


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


# ----------------------------------------------------------------------------
# Streams: a tf.data.Dataset gives the array path's numbers, batch by batch.

from helpers import invalid, raises  # noqa: E402


def _binary(n, d=6, seed=0):
    return (np.random.default_rng(seed).uniform(size=(n, d)) > 0.5).astype("float32")


@pytest.fixture(scope="module")
def small():
    return tfvae.build_vae((6,), 3, hidden_units=(8,), seed=1)


@pytest.fixture(scope="module")
def conditional():
    return tfvae.build_vae((6,), 3, hidden_units=(8,), condition_dim=3, seed=2)


def _streams(x, labels=None, batch_size=4):
    """The same data as an unbatched and a batched dataset (elements (x, y) with labels)."""
    data = x if labels is None else (x, labels)
    unbatched = tf.data.Dataset.from_tensor_slices(data)
    return {"unbatched": unbatched, "batched": unbatched.batch(batch_size)}


def _assert_metrics(got, want, rel=1e-12):
    """Two `evaluate_model` results: the same keys, strings and counts, floats to `rel`."""
    assert set(got) == set(want)
    for key, value in want.items():
        if isinstance(value, (str, int)):
            assert got[key] == value, key
        else:
            np.testing.assert_allclose(got[key], value, rtol=rel, atol=0, err_msg=key)


def _assert_same(got, want, rtol=1e-12):
    assert set(got) == set(want)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=rtol, atol=0, err_msg=key)


@pytest.mark.parametrize("form", ["unbatched", "batched"])
def test_a_dataset_scores_and_encodes_as_the_array_does(small, form):
    x = _binary(10)
    dataset = _streams(x)[form]
    want = evaluation.score_examples(small, x, num_samples=3, seed=2, batch_size=4)
    _assert_same(evaluation.score_examples(small, dataset, num_samples=3, seed=2, batch_size=4),
                 want, rtol=0)  # same batches, same seeds: the same numbers
    want = evaluation.encode_dataset(small, x, batch_size=4)
    _assert_same(evaluation.encode_dataset(small, dataset, batch_size=4), want, rtol=0)


def test_an_unconditional_model_carries_a_dataset_s_labels(small):
    x, labels = _binary(10), np.arange(10) % 4
    dataset = _streams(x, labels)["batched"]
    parts = list(evaluation.iter_scores(small, dataset, seed=2, batch_size=4))
    assert [len(part["index"]) for part in parts] == [4, 4, 2]
    assert list(parts[0]) == ["index", "label", "elbo", "reconstruction", "kl", "squared_error"]
    np.testing.assert_array_equal(np.concatenate([p["index"] for p in parts]), np.arange(10))
    scores = evaluation.score_examples(small, dataset, seed=2)
    np.testing.assert_array_equal(scores["label"], labels)
    want = evaluation.score_examples(small, x, seed=2, batch_size=4)  # labels: not for the model
    _assert_same({k: v for k, v in scores.items() if k != "label"}, want, rtol=0)
    codes = evaluation.encode_dataset(small, dataset)
    np.testing.assert_array_equal(codes["label"], labels)
    np.testing.assert_allclose(codes["code"], small.latent_code(x).numpy(), rtol=1e-5, atol=1e-6)


def test_a_conditional_model_takes_a_dataset_s_y_as_its_condition(conditional):
    x, labels = _binary(9, seed=3), np.array([0, 1, 2] * 3)
    dataset = _streams(x, labels)["unbatched"]
    want = evaluation.score_examples(conditional, x, y=labels, num_samples=2, batch_size=4)
    got = evaluation.score_examples(conditional, dataset, num_samples=2, batch_size=4)
    np.testing.assert_array_equal(got.pop("label"), labels)
    _assert_same(got, want, rtol=0)
    _assert_metrics(evaluation.evaluate_model(conditional, dataset, num_samples=2, batch_size=4),
                    evaluation.evaluate_model(conditional, x, y=labels, num_samples=2,
                                              batch_size=4))
    with raises("`x`", "(x, y) elements for a conditional model", "condition_dim=3"):
        evaluation.score_examples(conditional, tf.data.Dataset.from_tensor_slices(x))


@pytest.mark.parametrize("form", ["unbatched", "batched"])
def test_evaluate_model_on_a_dataset_gives_the_array_s_numbers(small, form):
    x = _binary(11, seed=4)
    x[:, 0] = 0.5  # grey values: a cross-entropy, not a mass (all batches must be 0/1)
    x[3, 0] = x[9, 0] = 1.0
    dataset = _streams(x, np.zeros(11, "int64"))[form]
    want = evaluation.evaluate_model(small, x, num_samples=3, seed=1, batch_size=4,
                                     surgery_examples=6)
    got = evaluation.evaluate_model(small, dataset, num_samples=3, seed=1, batch_size=4,
                                    surgery_examples=6)
    _assert_metrics(got, want)
    assert got["likelihood_score"] == "cross_entropy"
    assert (got["num_examples"], got["surgery_examples"]) == (11, 6)
    # The means are those of the per-example scores (float64 sums).
    scores = evaluation.score_examples(small, x, num_samples=3, seed=1, batch_size=4)
    for key in ("elbo", "reconstruction", "kl", "log_px"):
        assert got[key] == pytest.approx(scores[key].mean(), rel=1e-12), key


def test_evaluate_model_folds_active_units_and_kl_per_dimension_into_its_pass(small):
    x = _binary(13, seed=5)
    result = evaluation.evaluate_model(small, x, num_samples=2, batch_size=5)
    assert result["active_units"] == evaluation.active_units(small, x, batch_size=5)[0]
    np.testing.assert_array_equal(result["kl_per_dimension"],
                                  evaluation.kl_per_dimension(small, x, batch_size=5))


def test_score_kind_of_a_stream_is_a_running_and_over_its_batches(small):
    x = _binary(12, seed=6)
    assert evaluation.evaluate_model(small, x, num_samples=2, batch_size=4)[
        "likelihood_score"] == "mass"
    x[10, 2] = 0.25  # one grey value in the last batch only
    got = evaluation.evaluate_model(small, _streams(x)["batched"], num_samples=2)
    assert got["likelihood_score"] == small.likelihood.score_kind(x) == "cross_entropy"
    assert "bits_per_dim" not in got


def test_running_moments_equal_numpy_s_variance_for_any_split():
    rng = np.random.default_rng(0)
    # A large mean and a small spread: a sum-of-squares formula would lose it all.
    values = 1e8 + rng.normal(size=(101, 3)) * np.array([1e-3, 1.0, 0.0])
    moments = evaluation.RunningMoments()
    for start, stop in ((0, 1), (1, 2), (2, 40), (40, 40), (40, 100), (100, 101)):
        moments.update(values[start:stop])
    np.testing.assert_allclose(moments.variance, values.var(axis=0), rtol=1e-9, atol=0)
    np.testing.assert_allclose(moments.mean, values.mean(axis=0), rtol=1e-15)
    assert moments.count == 101 and moments.variance[2] == 0.0


def test_active_units_on_a_dataset_equal_numpy_s_variance_of_the_codes(small):
    x = _binary(21, seed=7)
    codes = small.latent_code(x).numpy().astype(np.float64)
    count, variances = evaluation.active_units(small, _streams(x)["batched"], threshold=0.001)
    np.testing.assert_allclose(variances, codes.var(axis=0), rtol=1e-5, atol=1e-12)
    assert count == int(np.sum(codes.var(axis=0) > 0.001))
    np.testing.assert_allclose(evaluation.kl_per_dimension(small, _streams(x)["unbatched"]),
                               evaluation.kl_per_dimension(small, x), rtol=1e-12)


class _Source:
    """A Python generator of `batches` batches of 4 examples that counts what it produced."""

    def __init__(self, batches=10, d=6):
        self.batches, self.d, self.produced = batches, d, 0

    def __call__(self):
        for i in range(self.batches):
            self.produced += 1
            yield _binary(4, self.d, seed=i)

    def dataset(self):
        spec = tf.TensorSpec((None, self.d), tf.float32)
        return tf.data.Dataset.from_generator(self, output_signature=spec)


def test_evaluate_model_reads_a_dataset_once(small):
    source = _Source(batches=5)
    x = np.concatenate([_binary(4, seed=i) for i in range(5)])
    got = evaluation.evaluate_model(small, source.dataset(), num_samples=2, batch_size=4,
                                    surgery_examples=6, seed=3)
    assert source.produced == 5  # one pass, the surgery examples kept on the way
    want = evaluation.evaluate_model(small, x, num_samples=2, batch_size=4, surgery_examples=6,
                                     seed=3)
    _assert_metrics(got, want)


def test_the_per_example_generators_read_their_source_lazily(small):
    # tf.data's generator dataset reads up to 2 elements ahead of its consumer.
    source = _Source(batches=10)
    parts = evaluation.iter_scores(small, source.dataset())
    first = next(parts)
    assert len(first["elbo"]) == 4 and source.produced <= 1 + 2
    next(parts)
    assert source.produced <= 2 + 2
    source = _Source(batches=10)
    next(evaluation.iter_encodings(small, source.dataset()))
    assert source.produced <= 1 + 2
    source = _Source(batches=10)
    x, y = evaluation.first_examples(small, source.dataset(), num_examples=6)
    assert x.shape == (6, 6) and y is None and source.produced <= 2 + 2


def test_a_progress_bar_without_a_known_total(small, capsys):
    parts = list(evaluation.iter_encodings(small, _Source(batches=3).dataset(), verbose=1))
    assert len(parts) == 3 and "12/Unknown" in capsys.readouterr().out


def test_the_gap_split_takes_the_first_examples_of_a_dataset(small, monkeypatch):
    x, labels = _binary(12, seed=8), np.arange(12)
    seen = []
    monkeypatch.setattr(evaluation.gap, "decompose_gap", lambda model, x, y, seed, **kwargs: (
        seen.append((x, y)) or {key: np.zeros(len(x)) for key in (
            "approximation_gap", "amortization_gap", "log_px", "elbo", "elbo_optimized")}
        | {"last_improvement": 0.0}))
    result = evaluation.gap_decomposition(small, _streams(x, labels, 2)["batched"], num_examples=5)
    assert result["gap_examples"] == 5
    np.testing.assert_array_equal(seen[0][0], x[:5])
    assert seen[0][1] is None  # an unconditional model's labels are not its condition


def test_the_mig_takes_the_first_examples_of_a_dataset(small):
    x = _binary(12, seed=8)
    factors = np.arange(8)[:, None] % 2
    want = evaluation.disentanglement_metrics(small, x[:8], factors, ["parity"], num_bins=4)
    got = evaluation.disentanglement_metrics(small, _streams(x)["unbatched"], factors, ["parity"],
                                             num_bins=4, batch_size=3)
    assert got == pytest.approx(want, rel=1e-6) and got["disentanglement_examples"] == 8


@pytest.mark.slow
def test_the_gap_split_of_a_dataset_is_that_of_its_first_examples(small):
    x = _binary(12, seed=8)
    kwargs = dict(num_examples=5, steps=3, eval_samples=4, log_px_samples=4, seed=0)
    want = evaluation.gap_decomposition(small, x, **kwargs)
    got = evaluation.gap_decomposition(small, _streams(x, batch_size=2)["batched"], **kwargs)
    assert got == pytest.approx(want, rel=1e-5) and got["gap_examples"] == 5


@pytest.mark.parametrize("make, fragments", [
    (lambda x: (x, np.zeros(len(x))), ["`y`", "None when `x` is a tf.data.Dataset",
                                       "y of type ndarray"]),
    (lambda x: (tf.data.Dataset.from_tensor_slices({"image": x}), None),
     ["`x`", "elements are x or (x, y)", "element_spec"]),
    (lambda x: (tf.data.Dataset.from_tensor_slices((x, x, x)), None), ["`x`", "(x, y)"]),
    (lambda x: (tf.data.Dataset.from_tensor_slices(x[:, :, None]).batch(2), None),
     ["`x`", "(batch,) + (6,)", "shape=(None, 6, 1)"]),
    (lambda x: (iter(x), None), ["`x`", "an array (n,) + event_shape or a tf.data.Dataset",
                                 "x of type"]),
])
def test_bad_streams_are_refused_naming_the_argument(small, make, fragments):
    x = _binary(4)
    data, y = make(x)
    if y is not None:
        data = tf.data.Dataset.from_tensor_slices(data[0])
    for call in (lambda: evaluation.batches(small, data, y),
                 lambda: evaluation.score_examples(small, data, y),
                 lambda: evaluation.evaluate_model(small, data, y=y, num_samples=2)):
        with raises(*fragments):
            call()
    with invalid("batch_size", 0):
        evaluation.batches(small, x, batch_size=0)


def test_evaluating_no_examples_is_refused(small):
    empty = tf.data.Dataset.from_tensor_slices(np.zeros((0, 6), "float32"))
    with raises("`x`", "at least one example", "x with 0 examples"):
        evaluation.evaluate_model(small, empty, num_samples=2)
    with raises("`x`", "at least one example"):
        evaluation.first_examples(small, empty, num_examples=3)


def test_the_generators_check_their_arguments_before_reading_any_data(small):
    source = _Source(batches=3)
    with invalid("num_samples", 0):
        evaluation.iter_scores(small, source.dataset(), num_samples=0)  # not advanced
    with invalid("batch_size", -1):
        evaluation.iter_encodings(small, source.dataset(), batch_size=-1)
    with raises("`y`", "None when `x` is a tf.data.Dataset"):
        evaluation.iter_scores(small, source.dataset(), y=np.zeros(12))
    assert source.produced == 0


@pytest.mark.parametrize("rows", [8, 12])
def test_array_conditions_must_number_one_per_example(rows):
    # 0.2.0 sliced a longer y silently out of step with x (issue 20 finding 10).
    model = tfvae.build_vae((4,), 2, hidden_units=(8,), condition_dim=3, seed=0)
    x = np.zeros((10, 4), "float32")
    y = np.arange(rows) % 3
    with raises("`y`", "one condition per example of x (10)", f"{rows} rows"):
        evaluation.score_examples(model, x, y=y)
    with raises("`y`", f"{rows} rows"):
        evaluation.encode_dataset(model, x, y=y)


def _reference_moments(model, x, num_samples, seed):
    """E_q[z] and Var_q[z] per example by TFP's own sampler of q (not `reparameterize`),
    float64 `[n, d]` each."""
    q = model.posterior.distribution(model.posterior_parameters(*model.prepare_inputs(x)))
    z = q.sample(num_samples, seed=seed).numpy().astype(np.float64)
    return z.mean(axis=0), z.var(axis=0)


def test_active_units_of_a_flow_measure_the_variance_of_its_posterior_mean(digits):
    x = digits[1][0][:100]
    model = tfvae.build_vae((8, 8, 1), 3, hidden_units=(16,), posterior="planar", seed=0)
    assert model.posterior.closed_form_mean(
        model.posterior_parameters(*model.prepare_inputs(x[:2]))) is None
    means, variances = _reference_moments(model, x, 20000, seed=1)
    want = means.var(axis=0)
    codes = model.latent_code(x).numpy().var(axis=0)  # the flow's image of the base mean
    assert np.max(np.abs(codes - want)) > 0.004  # is not E_q[z]: the test can tell them apart
    _, got = evaluation.active_units(model, x, threshold=0.0, num_samples=4000)
    np.testing.assert_allclose(got, want, atol=1.5e-3)
    # With few draws per example the mean's own noise is subtracted: unbiased over seeds.
    few = np.array([evaluation.active_units(model, x, num_samples=4, seed=s)[1]
                    for s in range(10)])
    error = few.std(axis=0, ddof=1) / np.sqrt(10)
    assert np.all(np.abs(few.mean(axis=0) - want) < 4 * error + 1e-3), (few.mean(0), want, error)
    uncorrected_bias = 0.99 * variances.mean(axis=0) / 4  # (n − 1)/n · E Var_q(z) / S
    assert np.all(4 * error + 1e-3 < uncorrected_bias)  # the test would see it
    with pytest.raises(ValueError, match="num_samples"):
        evaluation.active_units(model, x, num_samples=1)


def test_active_units_of_a_gaussian_use_its_closed_form_mean(digits):
    x = digits[1][0][:50]
    model = tfvae.build_vae((8, 8, 1), 3, hidden_units=(16,), posterior="full", seed=0)
    _, got = evaluation.active_units(model, x, threshold=0.0, num_samples=2)
    np.testing.assert_allclose(got, model.encode(x).mean().numpy().astype(np.float64).var(0),
                               rtol=1e-5)


@pytest.mark.slow  # trains (~5-10 s on a busy machine)
def test_surgery_logs_put_the_held_out_set_s_terms_in_the_epoch_logs(digits):
    (x_train, _), (x_val, _) = digits
    model = tfvae.build_vae((8, 8, 1), 3, hidden_units=(16,), objective="beta_tcvae",
                            dataset_size=len(x_train), seed=0)
    model.compile(optimizer="adam")
    logs = tfvae.SurgeryLogs(x_val, num_examples=40, every=5)
    history = model.fit(x_train[:128], epochs=2, batch_size=64, verbose=0,
                        callbacks=[logs]).history
    # Only the last epoch (before `every`): the surgery of the first 40 examples, as
    # elbo_surgery gives it.
    assert len(history["surgery_mi"]) == 1 and len(history["mi"]) == 2
    want = evaluation.elbo_surgery(model, x_val[:40], seed=0)
    for short, key in (("mi", "mutual_information"), ("tc", "total_correlation"),
                       ("dwkl", "dimension_wise_kl"), ("marginal_kl", "marginal_kl")):
        assert history[f"surgery_{short}"][-1] == pytest.approx(want[key], rel=1e-6)
        assert history[f"surgery_{short}_heldout"][-1] == pytest.approx(want[key + "_heldout"],
                                                                        rel=1e-6)
