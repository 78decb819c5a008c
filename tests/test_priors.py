"""Tests for tfvae.priors against independent numpy/scipy formulas: densities, capabilities,
constructor checks, and the VampPrior."""

import numpy as np
import pytest
import keras
import scipy.special as sp
import scipy.stats as st
import tensorflow as tf
import tensorflow_probability as tfp

import tfvae
from tfvae import heads
from tfvae import priors

from helpers import BAD_POSITIVE_INTS, invalid

tfd = tfp.distributions

BATCH = 5


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(4321)


def softplus(x):
    return np.logaddexp(0.0, x)


def _randomize(prior, seed=0):
    """Moves every weight of `prior` away from its initial value."""
    rng = np.random.default_rng(seed)
    for w in prior.weights:
        w.assign(rng.normal(0.0, 1.0, size=w.shape).astype(np.float32))
    return prior


def np_mixture_log_prob(prior, z):
    """log Σ_k π_k N(z; μ_k, diag(σ_k²)) from the prior's weights, σ = softplus(raw) + 1e-4."""
    logits = prior.logits.numpy().astype(np.float64)
    locs = prior.locs.numpy().astype(np.float64)
    scales = softplus(prior.raw_scales.numpy().astype(np.float64)) + 1e-4
    log_weights = sp.log_softmax(logits)  # [K]
    components = st.norm.logpdf(z[:, None, :], locs[None], scales[None]).sum(-1)  # [B, K]
    return sp.logsumexp(log_weights + components, axis=-1)


# ---------------------------------------------------------------------------
# Standard normal.


@pytest.mark.parametrize("latent_dim", [1, 3])
def test_standard_normal_shapes_and_log_prob(latent_dim):
    dist = priors.StandardNormalPrior(latent_dim).distribution()
    assert isinstance(dist, tfd.Distribution)
    assert dist.batch_shape.as_list() == []
    assert dist.event_shape.as_list() == [latent_dim]
    z = np.random.default_rng(0).normal(0.0, 2.0, size=(BATCH, latent_dim))
    log_prob = dist.log_prob(tf.constant(z, tf.float32))
    assert log_prob.shape == (BATCH,)
    assert log_prob.dtype == tf.float32
    expected = st.norm.logpdf(z).sum(-1)
    np.testing.assert_allclose(log_prob.numpy(), expected, rtol=1e-5, atol=1e-5)
    expected_mvn = st.multivariate_normal(np.zeros(latent_dim), np.eye(latent_dim)).logpdf(z)
    np.testing.assert_allclose(log_prob.numpy(), np.reshape(expected_mvn, [BATCH]), rtol=1e-5)


def test_standard_normal_analytic_kl_against_diagonal_posterior():
    # KL(N(μ, diag σ²) ‖ N(0, I)) = ½ Σ (σ² + μ² − 1 − 2 log σ); the prior broadcasts over the batch.
    d = 3
    rng = np.random.default_rng(1)
    params = rng.standard_normal((BATCH, 2 * d)).astype(np.float32)
    posterior = heads.DiagonalGaussianPosterior(d)(tf.constant(params))
    kl = tfd.kl_divergence(posterior, priors.StandardNormalPrior(d).distribution()).numpy()
    mu = params[:, :d].astype(np.float64)
    sigma = softplus(params[:, d:].astype(np.float64)) + 1e-5
    expected = 0.5 * (sigma**2 + mu**2 - 1.0 - 2.0 * np.log(sigma)).sum(-1)
    assert kl.shape == (BATCH,)
    np.testing.assert_allclose(kl, expected, rtol=1e-4, atol=1e-5)


def test_standard_normal_analytic_kl_against_full_covariance_posterior():
    # KL(N(μ, Σ) ‖ N(0, I)) = ½ (tr Σ + μᵀμ − d − log det Σ).
    d = 3
    rng = np.random.default_rng(2)
    head = heads.FullCovarianceGaussianPosterior(d)
    posterior = head(tf.constant(rng.standard_normal((BATCH, head.params_size)).astype(np.float32)))
    kl = tfd.kl_divergence(posterior, priors.StandardNormalPrior(d).distribution()).numpy()
    mu = posterior.loc.numpy().astype(np.float64)
    tril = posterior.scale_tril.numpy().astype(np.float64)
    cov = tril @ np.swapaxes(tril, -1, -2)
    expected = 0.5 * (
        np.trace(cov, axis1=-2, axis2=-1) + (mu**2).sum(-1) - d - np.linalg.slogdet(cov)[1]
    )
    np.testing.assert_allclose(kl, expected, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------
# Mixture of Gaussians.


@pytest.mark.parametrize("latent_dim, num_components", [(2, 3), (4, 1), (3, 10)])
def test_mixture_shapes_and_log_prob(latent_dim, num_components):
    prior = _randomize(priors.MixtureOfGaussiansPrior(latent_dim, num_components))
    dist = prior.distribution()
    assert dist.batch_shape.as_list() == []
    assert dist.event_shape.as_list() == [latent_dim]
    z = np.random.default_rng(3).normal(0.0, 1.5, size=(BATCH, latent_dim))
    log_prob = dist.log_prob(tf.constant(z, tf.float32))
    assert log_prob.shape == (BATCH,)
    assert log_prob.dtype == tf.float32
    np.testing.assert_allclose(
        log_prob.numpy(), np_mixture_log_prob(prior, z), rtol=1e-4, atol=1e-4
    )


def test_mixture_initial_state():
    latent_dim, k = 3, 4
    prior = priors.MixtureOfGaussiansPrior(latent_dim, num_components=k, seed=7)
    # Uniform mixture weights and unit scales (up to the 1e-4 floor) at initialisation.
    np.testing.assert_allclose(sp.softmax(prior.logits.numpy()), np.full(k, 1.0 / k), rtol=1e-6)
    scales = softplus(prior.raw_scales.numpy().astype(np.float64)) + 1e-4
    np.testing.assert_allclose(scales, 1.0 + 1e-4, rtol=1e-5)
    # Means are distinct, deterministic in `seed` and change with it.
    locs = prior.locs.numpy()
    assert locs.shape == (k, latent_dim)
    assert len(np.unique(locs.round(5), axis=0)) == k
    same = priors.MixtureOfGaussiansPrior(latent_dim, num_components=k, seed=7)
    other = priors.MixtureOfGaussiansPrior(latent_dim, num_components=k, seed=8)
    np.testing.assert_array_equal(same.locs.numpy(), locs)
    assert not np.allclose(other.locs.numpy(), locs)


def test_mixture_variables_are_trainable_and_receive_gradients():
    prior = _randomize(priors.MixtureOfGaussiansPrior(2, num_components=3), seed=4)
    variables = prior.trainable_variables
    assert len(variables) == 3
    assert {tuple(v.shape) for v in variables} == {(3,), (3, 2)}
    assert all(v.trainable for v in prior.weights)
    assert prior.non_trainable_weights == []
    z = tf.constant(np.random.default_rng(5).standard_normal((BATCH, 2)).astype(np.float32))
    with tf.GradientTape() as tape:
        loss = -tf.reduce_mean(prior.distribution().log_prob(z))
    grads = tape.gradient(loss, variables)
    for v, g in zip(variables, grads):
        assert g is not None, v.name
        assert np.any(g.numpy() != 0), v.name


@pytest.mark.parametrize(
    "head",
    [heads.DiagonalGaussianPosterior(2), heads.FullCovarianceGaussianPosterior(2)],
    ids=["diagonal", "full_covariance"],
)
def test_mixture_has_no_analytic_kl(head):
    posterior = head(tf.zeros([BATCH, head.params_size]))
    mixture = priors.MixtureOfGaussiansPrior(2, num_components=3).distribution()
    with pytest.raises(NotImplementedError):
        tfd.kl_divergence(posterior, mixture)


def test_mixture_broadcasts_against_posterior_samples():
    d = 3
    posterior = heads.DiagonalGaussianPosterior(d)(tf.zeros([BATCH, 2 * d]))
    prior = _randomize(priors.MixtureOfGaussiansPrior(d, num_components=2), seed=6)
    z = posterior.sample(7, seed=3)  # [7, B, d]
    log_prob = prior.distribution().log_prob(z).numpy()
    assert log_prob.shape == (7, BATCH)
    expected = np_mixture_log_prob(prior, z.numpy().reshape(-1, d).astype(np.float64))
    np.testing.assert_allclose(log_prob.reshape(-1), expected, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------
# Serialisation.


PRIORS = [
    pytest.param(lambda: priors.StandardNormalPrior(3), id="standard_normal"),
    pytest.param(
        lambda: _randomize(priors.MixtureOfGaussiansPrior(3, num_components=4, seed=2), seed=9),
        id="mixture",
    ),
]


@pytest.mark.parametrize("make", PRIORS)
@pytest.mark.parametrize("route", ["serialize_keras_object", "get_config"])
def test_serialization_round_trip(make, route):
    prior = make()
    if route == "serialize_keras_object":
        restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(prior))
    else:
        restored = type(prior).from_config(prior.get_config())
    assert type(restored) is type(prior)
    assert restored is not prior
    assert restored.latent_dim == prior.latent_dim
    assert len(restored.weights) == len(prior.weights)
    if prior.weights:
        restored.set_weights(prior.get_weights())
    z = tf.constant(np.random.default_rng(10).standard_normal((BATCH, 3)).astype(np.float32))
    np.testing.assert_array_equal(
        restored.distribution().log_prob(z).numpy(), prior.distribution().log_prob(z).numpy()
    )


def test_mixture_config_keeps_structure():
    prior = priors.MixtureOfGaussiansPrior(3, num_components=4, seed=2)
    restored = priors.MixtureOfGaussiansPrior.from_config(prior.get_config())
    assert restored.num_components == 4
    assert restored.seed == 2
    assert [tuple(w.shape) for w in restored.weights] == [tuple(w.shape) for w in prior.weights]
    # Same seed: the restored layer starts from the same component means.
    np.testing.assert_array_equal(restored.locs.numpy(), prior.locs.numpy())


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_priors_stay_float32_under_mixed_precision(dtype):
    previous = keras.mixed_precision.global_policy()
    try:
        keras.mixed_precision.set_global_policy(f"mixed_{dtype}")
        for prior in (priors.StandardNormalPrior(2), priors.MixtureOfGaussiansPrior(2, 3)):
            assert all(w.dtype == "float32" for w in prior.weights)
            dist = prior.distribution()
            assert dist.dtype == tf.float32
            assert dist.log_prob(tf.zeros([BATCH, 2])).dtype == tf.float32
    finally:
        keras.mixed_precision.set_global_policy(previous)


# ---------------------------------------------------------------------------
# Capabilities: what tfvae.VAE, tfvae.options and tfvae.export ask a prior.


def test_standard_normal_capabilities_and_kl_per_dimension():
    prior = priors.StandardNormalPrior(3)
    assert prior.can_reparameterize and prior.has_kl_per_dimension and not prior.uses_encoder
    rng = np.random.default_rng(11)
    loc = rng.normal(size=(BATCH, 3))
    scale = rng.uniform(0.2, 2.0, size=(BATCH, 3))
    got = prior.kl_per_dimension(tf.constant(loc, tf.float32), tf.constant(scale, tf.float32))
    # KL(N(μ, σ²) ‖ N(0, 1)) = log(1/σ) + (σ² + μ²)/2 − 1/2, per dimension.
    expected = np.log(1.0 / scale) + (scale**2 + loc**2) / 2.0 - 0.5
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # One dimension at a time, scipy-free: the 1-D analytic KL from TFP.
    one_d = tfd.kl_divergence(tfd.Normal(loc.astype("float32"), scale.astype("float32")),
                              tfd.Normal(0.0, 1.0)).numpy()
    np.testing.assert_allclose(got, one_d, rtol=1e-5, atol=1e-6)
    eps = tf.constant(rng.normal(size=(2, 3)), tf.float32)
    np.testing.assert_array_equal(prior.reparameterize(eps), eps)
    assert prior.decoder_latent_dim == 3
    np.testing.assert_array_equal(prior.decoder_input(eps), eps)
    assert prior.check_posterior(heads.FullCovarianceGaussianPosterior(3)) is None


@pytest.mark.parametrize("make", [
    lambda: priors.MixtureOfGaussiansPrior(2, num_components=3),
    lambda: priors.VampPrior(2, (4,), num_pseudo_inputs=3),
], ids=["mixture", "vamp"])
def test_priors_without_noise_sampling_or_per_dimension_kl_say_so(make):
    prior = make()
    assert not prior.can_reparameterize and not prior.has_kl_per_dimension
    assert prior.uses_encoder == isinstance(prior, priors.VampPrior)
    with pytest.raises(NotImplementedError, match="cannot be sampled from standard normal noise"):
        prior.reparameterize(tf.zeros([1, 2]))
    with pytest.raises(NotImplementedError, match="has no per-dimension KL"):
        prior.kl_per_dimension(tf.zeros([1, 2]), tf.ones([1, 2]))


def test_attach_binds_the_vamp_prior_to_the_model_s_encoder():
    prior = priors.VampPrior(2, (4,), num_pseudo_inputs=3)
    posterior, likelihood = heads.DiagonalGaussianPosterior(2), heads.BernoulliLikelihood((4,))
    model = tfvae.VAE(tfvae.MLP(4, (8,)), tfvae.MLP(4, (8,)), posterior, likelihood, prior)
    # p(z) is the mean of q(z|u_k) at the pseudo-inputs, through the model's own encoder.
    q = model.encode(prior.pseudo_inputs.numpy())
    z = tf.constant(np.random.default_rng(0).normal(size=(5, 2)), tf.float32)
    mu, sigma = q.mean().numpy().astype(np.float64), q.stddev().numpy().astype(np.float64)
    per_component = st.norm.logpdf(z.numpy()[:, None, :], mu[None], sigma[None]).sum(-1)
    expected = sp.logsumexp(per_component, axis=1) - np.log(3)
    np.testing.assert_allclose(prior.distribution().log_prob(z), expected, rtol=1e-5, atol=1e-5)
    # The base prior needs no binding.
    assert priors.StandardNormalPrior(2).attach(model) is None


# ---------------------------------------------------------------------------
# Constructor arguments.


@pytest.mark.parametrize("num_components", BAD_POSITIVE_INTS)
def test_mixture_prior_bad_num_components(num_components):
    with invalid("num_components", num_components):
        priors.MixtureOfGaussiansPrior(2, num_components=num_components)


@pytest.mark.parametrize("seed", [-1, None, "abc", 2.5])
def test_mixture_prior_bad_seed(seed):
    with invalid("seed", seed):
        priors.MixtureOfGaussiansPrior(2, num_components=2, seed=seed)


@pytest.mark.parametrize("prior", [priors.StandardNormalPrior, priors.MixtureOfGaussiansPrior])
@pytest.mark.parametrize("latent_dim", BAD_POSITIVE_INTS)
def test_prior_bad_latent_dim(prior, latent_dim):
    with invalid("latent_dim", latent_dim):
        prior(latent_dim)


def test_good_prior_arguments_pass():
    assert priors.MixtureOfGaussiansPrior(2, num_components=1).num_components == 1


# ---------------------------------------------------------------------------
# The VampPrior.


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
    per_component = st.norm.logpdf(z[:, None, :], mu[None], sigma[None]).sum(-1)
    expected = sp.logsumexp(per_component, axis=1) - np.log(len(u))
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


@pytest.mark.slow
def test_vamp_model_fits(digits):
    (x_train, _), (x_val, _) = digits
    model = _vamp_model(num=10)
    model.compile(optimizer=keras.optimizers.Adam(2e-3))
    before = model.evaluate(x_val, verbose=0, return_dict=True)
    history = model.fit(x_train, epochs=3, batch_size=64, verbose=0).history
    after = model.evaluate(x_val, verbose=0, return_dict=True)
    assert after["elbo"] > before["elbo"] + 5
    np.testing.assert_allclose(history["loss"], -np.asarray(history["elbo"]), rtol=1e-5)
    # (Saving and SavedModel export without `sample`: test_conformance.py, variant "vamp".)


def test_unbound_vamp_prior_and_wrong_shape_are_clear_errors():
    prior = priors.VampPrior(3, (8, 8, 1), num_pseudo_inputs=4)
    with pytest.raises(ValueError, match="not bound to an encoder"):
        prior.distribution()
    with pytest.raises(ValueError, match="input_shape must be the data shape"):
        tfvae.VAE(tfvae.MLP(6), tfvae.MLP(16), tfvae.DiagonalGaussianPosterior(3),
                  tfvae.BernoulliLikelihood((16,)), prior)
