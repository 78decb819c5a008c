"""Two-layer hierarchical VAEs: exact densities, per-layer KL terms, and the bound by quadrature.

With one latent per layer, log p(x), the exact ELBO and KL(q ‖ p(z|x)) are
integrals over a 2-D grid, computed here in numpy from the model's networks
and scipy's normal density, independently of the TFP distributions tfvae builds.
"""

import numpy as np
import pytest
import tensorflow as tf
from scipy import special, stats

import tfvae
from tfvae import objectives
from tfvae.hierarchy import HierarchicalPosterior, HierarchicalPrior


def _model(dims=(1, 1), data_dim=3, seed=0):
    posterior = HierarchicalPosterior(dims, hidden_units=8)
    model = tfvae.VAE(
        tfvae.MLP(posterior.params_size, (8,), activation="tanh"),
        tfvae.MLP(data_dim, (8,), activation="tanh"),
        posterior,
        tfvae.BernoulliLikelihood((data_dim,)),
        seed=seed,
    )
    # Random generative weights, so p(z1|z2) and p(x|z1) matter; a broad q
    # (σ ≈ 1.5 at small encoder weights) keeps the importance weights light-tailed.
    rng = np.random.default_rng(seed)
    for variable in model.decoder.trainable_variables:
        variable.assign(rng.normal(size=variable.shape).astype("float32") * 0.6)
    for variable in model.prior.trainable_variables:
        variable.assign(rng.normal(size=variable.shape).astype("float32") * 0.25)
    for variable in model.encoder.trainable_variables + model.posterior.trainable_variables:
        variable.assign(rng.normal(size=variable.shape).astype("float32") * 0.1)
    bias = model.encoder.out.bias
    bias.assign(np.concatenate([np.zeros(dims[0]), np.full(dims[0], np.log(np.expm1(1.5)))])
                .astype("float32"))
    return model


def _gaussian(network, h):
    loc, scale = network(tf.constant(h, tf.float32))
    return loc.numpy().astype(np.float64), scale.numpy().astype(np.float64)


def test_densities_and_samples_match_the_two_layer_formulas():
    model = _model(dims=(2, 3), data_dim=4)
    x = np.array([[0, 1, 1, 0], [1, 1, 0, 0]], np.float32)
    parameters = model.posterior_parameters(tf.constant(x))
    q, sampler = model.posterior.sampler(parameters)
    eps = np.random.default_rng(1).normal(size=(6, 2, 5)).astype("float32")
    z = objectives.posterior_sample(q, noise=eps, reparameterize=sampler).numpy()

    mu1, s1 = parameters["loc"].numpy(), parameters["scale"].numpy()
    z1 = mu1 + s1 * eps[..., :2]
    mu2, s2 = _gaussian(model.posterior.top, z1)
    np.testing.assert_allclose(z, np.concatenate([z1, mu2 + s2 * eps[..., 2:]], -1), atol=1e-5)

    # log q at fresh tensors (no bijector cache), against scipy.
    expected = stats.norm.logpdf(z[..., :2], mu1, s1).sum(-1) + stats.norm.logpdf(
        z[..., 2:], mu2, s2).sum(-1)
    np.testing.assert_allclose(q.log_prob(tf.constant(z)), expected, rtol=1e-5, atol=1e-4)

    # The prior generates z2 first, then z1 given z2.
    zp = model.prior.reparameterize(tf.constant(eps)).numpy()
    m1, sd1 = _gaussian(model.prior.bottom, eps[..., 2:])
    np.testing.assert_allclose(zp[..., 2:], eps[..., 2:])
    np.testing.assert_allclose(zp[..., :2], m1 + sd1 * eps[..., :2], atol=1e-5)
    expected_p = stats.norm.logpdf(zp[..., :2], m1, sd1).sum(-1) + stats.norm.logpdf(
        zp[..., 2:]).sum(-1)
    log_p = model.prior.distribution().log_prob(tf.constant(zp))
    np.testing.assert_allclose(log_p, expected_p, rtol=1e-5, atol=1e-4)

    # The layer terms are the two factors of each density.
    layers_q = model.posterior.layer_log_probs(parameters, tf.constant(z))
    np.testing.assert_allclose(sum(layers_q), expected, rtol=1e-5, atol=1e-4)
    layers_p = model.prior.layer_log_probs(tf.constant(zp))
    np.testing.assert_allclose(sum(layers_p), expected_p, rtol=1e-5, atol=1e-4)


def _quadrature(model, x, half_width=8.0, n=321):
    """log p(x), the exact ELBO and KL(q ‖ p(z|x)) per example on a 2-D grid."""
    grid = np.linspace(-half_width, half_width, n)
    z1, z2 = [g.reshape(-1, 1) for g in np.meshgrid(grid, grid, indexing="ij")]
    cell = np.log(grid[1] - grid[0]) * 2
    z = np.concatenate([z1, z2], -1).astype("float32")
    logits = model.decoder(tf.constant(z[:, :1])).numpy().astype(np.float64)
    m1, s1 = _gaussian(model.prior.bottom, z2)
    log_prior = stats.norm.logpdf(z1, m1, s1)[:, 0] + stats.norm.logpdf(z2)[:, 0]
    parameters = model.posterior_parameters(tf.constant(x))
    mu, sd = parameters["loc"].numpy(), parameters["scale"].numpy()
    mu2, sd2 = _gaussian(model.posterior.top, z1)
    results = []
    for b in range(len(x)):
        log_lik = np.sum(x[b] * logits - np.logaddexp(0.0, logits), axis=-1)
        log_joint = log_lik + log_prior
        log_px = special.logsumexp(log_joint) + cell
        log_q = stats.norm.logpdf(z1[:, 0], mu[b, 0], sd[b, 0]) + stats.norm.logpdf(
            z2[:, 0], mu2[:, 0], sd2[:, 0])
        q = np.exp(log_q + cell)
        assert abs(q.sum() - 1.0) < 1e-3  # the grid holds q
        elbo = np.sum(q * (log_joint - log_q))
        kl_posterior = np.sum(q * (log_q - (log_joint - log_px)))
        results.append((log_px, elbo, kl_posterior))
    return np.array(results).T


@pytest.mark.slow
def test_elbo_iwae_and_log_px_agree_with_quadrature():
    model = _model()
    x = np.array([[1, 0, 1], [0, 0, 1], [1, 1, 1]], np.float32)
    log_px, elbo, kl_posterior = _quadrature(model, x)
    np.testing.assert_allclose(elbo + kl_posterior, log_px, atol=1e-6)  # the identity
    assert np.all(kl_posterior > 0.05)  # q is not the exact posterior here

    # Monte Carlo ELBO from tfvae's distributions vs the quadrature ELBO.
    q, sampler = model.posterior_sampler(tf.constant(x))
    log_w = objectives.log_importance_weights(
        tf.constant(x), q, model.likelihood_fn(), model.prior.distribution(), 20000, seed=3,
        reparameterize=sampler).numpy()
    standard_error = log_w.std(0) / np.sqrt(len(log_w))
    assert np.all(np.abs(log_w.mean(0) - elbo) < 5 * standard_error)

    # The same ELBO through the model, with per-layer terms that add up.
    terms = {k: v.numpy() for k, v in model.elbo(x, num_samples=20000, seed=4).items()}
    assert np.all(np.abs(terms["elbo"] - elbo) < 5 * standard_error + 1e-3)
    np.testing.assert_allclose(terms["kl_z1"] + terms["kl_z2"], terms["kl"], atol=1e-4)

    # Importance weighting closes the gap; the estimate converges to log p(x).
    # E[IWAE_K] over 400 independent draws per example: ELBO < E[IWAE_5] <
    # E[IWAE_50] ≤ log p(x) (one draw may exceed log p(x); its mean may not).
    repeated = np.repeat(x, 400, axis=0)
    means = {}
    for k in (5, 50):
        draws = model.iwae_bound(repeated, k=k, seed=5).numpy().reshape(3, 400)
        means[k] = draws.mean(1)
        assert np.all(means[k] < log_px + 3 * draws.std(1) / np.sqrt(400))
    assert np.all(elbo < means[5]) and np.all(means[5] < means[50])
    np.testing.assert_allclose(model.log_likelihood(x, num_samples=5000, seed=6), log_px,
                               atol=0.02)


def test_top_layer_kl_is_the_expected_analytic_kl_of_q_z2_given_z1():
    model = _model(seed=1)
    x = np.array([[1, 0, 0]], np.float32)
    parameters = model.posterior_parameters(tf.constant(x))
    mu, sd = parameters["loc"].numpy()[0, 0], parameters["scale"].numpy()[0, 0]
    # E_{q(z1|x)}[KL(q(z2|z1) ‖ N(0, 1))] by Gauss–Hermite quadrature over z1.
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)
    m2, s2 = _gaussian(model.posterior.top, (mu + sd * nodes)[:, None])
    kl = 0.5 * (m2**2 + s2**2 - 1.0) - np.log(s2)
    expected = np.sum(weights * kl[:, 0]) / np.sqrt(2 * np.pi)
    samples = model.elbo(np.repeat(x, 4000, 0), num_samples=1, seed=7)["kl_z2"].numpy()
    assert abs(samples.mean() - expected) < 5 * samples.std() / np.sqrt(len(samples))


@pytest.mark.slow
def test_hierarchical_model_trains_and_reports_layers():
    import keras

    rng = np.random.default_rng(0)
    x = (rng.uniform(size=(128, 6)) < np.linspace(0.1, 0.9, 6)).astype("float32")
    posterior = HierarchicalPosterior((3, 2), hidden_units=16)
    model = tfvae.VAE(tfvae.MLP(posterior.params_size, (16,)), tfvae.MLP(6, (16,)), posterior,
                      tfvae.BernoulliLikelihood((6,)), seed=0)
    model.compile(optimizer=keras.optimizers.Adam(0.01))
    history = model.fit(x, epochs=15, batch_size=32, verbose=0).history
    assert {"kl_z1", "kl_z2"} <= set(history)
    assert history["loss"][-1] < history["loss"][0] - 0.3
    np.testing.assert_allclose(np.add(history["kl_z1"], history["kl_z2"]), history["kl"],
                               rtol=1e-4, atol=1e-4)
    assert model.sample(5, seed=0).shape == (5, 6)
    # (Saving and loading: test_conformance.py, variant "hierarchical".)


def test_the_decoder_sees_z1_only():
    model = _model(dims=(2, 2), data_dim=3)
    z = np.random.default_rng(0).normal(size=(4, 4)).astype("float32")
    moved = z.copy()
    moved[:, 2:] += 3.0
    np.testing.assert_array_equal(model.decode(z).mean(), model.decode(moved).mean())


@pytest.mark.parametrize("kwargs, match", [
    ({"prior": tfvae.StandardNormalPrior(2)}, "HierarchicalPrior with the same latent_dims"),
    ({"prior": HierarchicalPrior((1, 2))}, "same latent_dims"),
    ({"free_bits_groups": 3, "free_bits": 1.0}, "its 2 layers"),
])
def test_mismatched_hierarchies_are_clear_errors(kwargs, match):
    posterior = HierarchicalPosterior((1, 1))
    with pytest.raises(ValueError, match=match):
        tfvae.VAE(tfvae.MLP(2, (4,)), tfvae.MLP(3, (4,)), posterior,
                  tfvae.BernoulliLikelihood((3,)), **kwargs)


@pytest.mark.parametrize("latent_dims", [(3,), (1, 2, 3), (0, 2), "ab"])
def test_latent_dims_are_checked(latent_dims):
    with pytest.raises(ValueError, match="latent_dims"):
        HierarchicalPosterior(latent_dims)


def test_a_hierarchy_clamps_the_total_kl_per_example_unless_grouped():
    x = (np.random.default_rng(1).uniform(size=(6, 5)) > 0.5).astype("float32")
    losses = {}
    for groups in (None, 2):
        model = tfvae.build_vae((5,), 3, hidden_units=(8,), posterior="hierarchical",
                                free_bits=4.0, free_bits_groups=groups, seed=0)
        terms = model.elbo_terms(tf.constant(x), seed=3)
        losses[groups] = terms["loss"].numpy()
        kl_groups = np.stack([terms["kl_z1"].numpy(), terms["kl_z2"].numpy()], -1)
        reconstruction = terms["reconstruction"].numpy()
    np.testing.assert_allclose(losses[None], -reconstruction + np.maximum(kl_groups.sum(-1), 4.0),
                               rtol=1e-5)
    active = kl_groups.mean(0) > 4.0
    expected = -reconstruction + np.where(active, kl_groups, 4.0).sum(-1)
    np.testing.assert_allclose(losses[2], expected, rtol=1e-5)


def test_hierarchy_capabilities_and_layer_kl_terms():
    posterior = HierarchicalPosterior((2, 1), hidden_units=4)
    assert posterior.layer_names == ("z1", "z2") and not posterior.dreg_unbiased
    assert not posterior.independent_dimensions
    prior = posterior.default_prior()
    assert type(prior) is HierarchicalPrior and prior.latent_dims == (2, 1)
    assert prior.can_reparameterize and not prior.has_kl_per_dimension and not prior.uses_encoder
    assert prior.decoder_latent_dim == 2
    model = _model(dims=(2, 1), data_dim=3)
    x = np.array([[1, 0, 1], [0, 1, 1]], np.float32)
    parameters = model.posterior_parameters(tf.constant(x))
    z = tf.constant(np.random.default_rng(3).normal(size=(4, 2, 3)), tf.float32)
    # kl_groups gives [KL_z1, KL_z2] on the given samples, whatever the number of groups.
    for groups in (None, 2):
        got = model.posterior.kl_groups(parameters, model.prior, groups)(z).numpy()
        log_q = model.posterior.layer_log_probs(parameters, z)
        log_p = model.prior.layer_log_probs(z)
        expected = np.stack([np.mean(q - p, axis=0) for q, p in zip(log_q, log_p)], -1)
        assert got.shape == (2, 2)
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_evaluation_says_why_a_hierarchy_gets_no_elbo_surgery():
    # Its q(z|x) cannot score other examples' codes at once: evaluate_model reports the
    # reason instead of leaving the surgery out silently, and the other metrics stand.
    model = _model()
    x = (np.random.default_rng(1).uniform(size=(6, 3)) < 0.5).astype("float32")
    from tfvae import evaluation

    metrics = evaluation.evaluate_model(model, x, num_samples=4, seed=0)
    assert "aggregate posterior" in metrics["surgery_skipped"]
    assert "HierarchicalPosterior" in metrics["surgery_skipped"]
    assert np.isfinite(metrics["elbo"]) and metrics["num_examples"] == 6
