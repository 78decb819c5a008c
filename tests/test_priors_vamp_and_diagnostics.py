"""The VampPrior and posterior-collapse diagnostics (KL per dimension, active units)."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import special, stats

import tfvae
from tfvae import evaluation


@pytest.fixture(scope="module")
def digits():
    return tfvae.data.load_digits()


def _vamp_model(num=7):
    return tfvae.build_vae((8, 8, 1), 3, hidden_units=(16,), prior="vamp", num_components=num, seed=0)


def test_vamp_prior_is_the_mean_of_posteriors_at_the_pseudo_inputs():
    model = _vamp_model()
    u = model.prior.pseudo_inputs.numpy()
    q = model.encode(u)  # the pseudo-inputs are in [0, 1], a valid encoder input here
    mu, sigma = q.mean().numpy().astype(np.float64), q.stddev().numpy().astype(np.float64)
    z = np.random.default_rng(0).normal(size=(11, 3))
    # log (1/K) Σ_k Π_j N(z_j; μ_kj, σ_kj), independently with scipy.
    per_component = stats.norm.logpdf(z[:, None, :], mu[None], sigma[None]).sum(-1)
    expected = special.logsumexp(per_component, axis=1) - np.log(len(u))
    log_p = model.prior.distribution().log_prob(tf.constant(z, tf.float32)).numpy()
    np.testing.assert_allclose(log_p, expected, rtol=1e-5)


def test_vamp_prior_kl_is_monte_carlo_and_trains_the_pseudo_inputs(digits):
    model = _vamp_model()
    x = digits[1][0][:32]
    with tf.GradientTape() as tape:
        kl = tf.reduce_mean(model.elbo(x, seed=1)["kl"])
    grad = tape.gradient(kl, model.prior.pseudo_inputs)
    assert grad is not None and np.any(grad.numpy() != 0)
    with pytest.raises(ValueError, match="no analytic KL"):
        tfvae.kl_divergence(model.encode(x), model.prior.distribution(), kl="analytic")


def test_vamp_model_fits_saves_and_exports(digits, tmp_path):
    (x_train, _), (x_val, _) = digits
    model = _vamp_model(num=10)
    model.compile(optimizer=keras.optimizers.Adam(2e-3))
    before = model.evaluate(x_val, verbose=0, return_dict=True)
    history = model.fit(x_train, epochs=3, batch_size=64, verbose=0).history
    after = model.evaluate(x_val, verbose=0, return_dict=True)
    assert after["elbo"] > before["elbo"] + 5
    np.testing.assert_allclose(history["loss"], -np.asarray(history["elbo"]), rtol=1e-5)
    model.save(tmp_path / "vamp.keras")
    loaded = keras.saving.load_model(tmp_path / "vamp.keras")
    np.testing.assert_array_equal(loaded.elbo(x_val[:6], seed=2)["elbo"],
                                  model.elbo(x_val[:6], seed=2)["elbo"])
    path = tfvae.export.export_saved_model(model, str(tmp_path / "sm"), "vamp")
    assert "sample" not in tf.saved_model.load(path).signatures  # needs more than Gaussian noise


def test_unbound_vamp_prior_and_wrong_shape_are_clear_errors():
    prior = tfvae.VampPrior(3, (8, 8, 1), num_pseudo_inputs=4)
    with pytest.raises(ValueError, match="not bound to an encoder"):
        prior.distribution()
    with pytest.raises(ValueError, match="input_shape must be the data shape"):
        tfvae.VAE(tfvae.MLP(6), tfvae.MLP(16), tfvae.DiagonalGaussianPosterior(3),
                  tfvae.BernoulliLikelihood((16,)), prior)


def test_kl_per_dimension_sums_to_the_kl_and_matches_numpy(digits):
    x = digits[1][0][:50]
    model = tfvae.build_vae((8, 8, 1), 4, hidden_units=(16,), seed=3)
    per_dim = evaluation.kl_per_dimension(model, x, batch_size=16)
    q = model.encode(x)
    mu, sigma = q.mean().numpy().astype(np.float64), q.stddev().numpy().astype(np.float64)
    expected = np.mean(0.5 * (mu**2 + sigma**2 - 1 - np.log(sigma**2)), axis=0)
    np.testing.assert_allclose(per_dim, expected, rtol=1e-6)
    np.testing.assert_allclose(per_dim.sum(), model.elbo(x, seed=0)["kl"].numpy().mean(), rtol=1e-5)
    with pytest.raises(ValueError, match="diagonal Gaussian posterior and a standard normal"):
        evaluation.kl_per_dimension(_vamp_model(), x)


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
