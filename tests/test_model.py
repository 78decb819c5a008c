"""tfvae.model: `tfvae.VAE`'s constructor checks, its public seams (posterior_parameters,
decoder_parameters, decode_mean, likelihood_fn, elbo_terms, objective_terms,
encoder_variables), gradients, serialisation of each likelihood, and the data methods
(encode, decode, elbo, sample, reconstruct, iwae_bound, log_likelihood)."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

import tfvae
from tfvae import objectives

from helpers import assert_wrong_x_shape_refused, data_for as _data_for, tiny_model as _tiny
from helpers import BAD_NON_NEGATIVE_FLOATS, BAD_POSITIVE_INTS, MODEL_METHODS, X_METHODS
from helpers import invalid, raises, unit_data


def _softplus(x):
    return np.logaddexp(0.0, x)


# ---------------------------------------------------------------------------
# Constructor checks (through build_vae's **vae_kwargs and directly).


@pytest.mark.parametrize("beta", BAD_NON_NEGATIVE_FLOATS)
def test_bad_beta(beta):
    with invalid("beta", beta, "finite number >= 0"):
        tfvae.build_vae((4,), 2, hidden_units=(8,), beta=beta)


@pytest.mark.parametrize("free_bits", BAD_NON_NEGATIVE_FLOATS)
def test_bad_free_bits(free_bits):
    with invalid("free_bits", free_bits):
        tfvae.build_vae((4,), 2, hidden_units=(8,), free_bits=free_bits)


@pytest.mark.parametrize("num_samples", BAD_POSITIVE_INTS)
def test_bad_num_samples(num_samples):
    with invalid("num_samples", num_samples, "positive integer"):
        tfvae.build_vae((4,), 2, hidden_units=(8,), num_samples=num_samples)


@pytest.mark.parametrize("kl", ["exact", "Analytic", "", None, 1])
def test_bad_kl_method(kl):
    with invalid("kl", kl, "'auto'", "'analytic'", "'mc'"):
        tfvae.build_vae((4,), 2, hidden_units=(8,), kl=kl)


def _parts(latent_dim=2, event_shape=(4,), encoder_units=None, decoder_units=None):
    posterior = tfvae.DiagonalGaussianPosterior(latent_dim)
    likelihood = tfvae.BernoulliLikelihood(event_shape)
    encoder = tfvae.MLP(encoder_units or posterior.params_size, (8,))
    decoder = tfvae.MLP(decoder_units or likelihood.params_size, (8,))
    return encoder, decoder, posterior, likelihood


@pytest.mark.parametrize("argument", ["posterior", "likelihood", "prior"])
def test_vae_rejects_names_instead_of_layers(argument):
    encoder, decoder, posterior, likelihood = _parts()
    kwargs = dict(
        encoder=encoder, decoder=decoder, posterior=posterior, likelihood=likelihood
    )
    kwargs[argument] = "diagonal"
    with invalid(argument, "diagonal"):
        tfvae.VAE(**kwargs)


def test_vae_encoder_output_size_mismatch():
    encoder, decoder, posterior, likelihood = _parts(latent_dim=2, encoder_units=5)
    with raises("`encoder`", "params_size", "4", "5", "DiagonalGaussianPosterior"):
        tfvae.VAE(encoder, decoder, posterior, likelihood)


def test_vae_decoder_output_size_mismatch():
    encoder, decoder, posterior, likelihood = _parts(event_shape=(4,), decoder_units=6)
    with raises("`decoder`", "params_size", "4", "6", "BernoulliLikelihood"):
        tfvae.VAE(encoder, decoder, posterior, likelihood)


def test_good_vae_arguments_pass():
    model = tfvae.build_vae(
        [4], np.int64(2), hidden_units=[8], beta=0.0, free_bits=0.5, num_samples=2, kl="mc",
        seed=3,
    )
    assert model.latent_dim == 2 and model.event_shape == (4,)
    assert model.num_samples == 2 and model.free_bits == 0.5 and model.kl_method == "mc"
    encoder, decoder, posterior, likelihood = _parts()
    vae = tfvae.VAE(encoder, decoder, posterior, likelihood, prior=tfvae.StandardNormalPrior(2))
    assert vae.latent_dim == 2


# ---------------------------------------------------------------------------
# The public seams, against independent computations.


def _gaussian_model(**kwargs):
    """A vector VAE with a fixed-σ (0.1) Gaussian likelihood: every density has a scipy form."""
    return tfvae.build_vae((5,), 3, likelihood="gaussian", likelihood_scale=0.1,
                           hidden_units=(8,), seed=0, **kwargs)


def _hand_terms(model, x, eps, beta, free_bits):
    """The ELBO terms from the raw networks, numpy and scipy: z = μ + σ ε, a Gaussian
    log-likelihood averaged over the L samples, and the closed-form KL to N(0, I)."""
    raw = model.encoder(tf.constant(x)).numpy().astype(np.float64)
    mu, sigma = raw[:, :3], _softplus(raw[:, 3:]) + 1e-5
    z = mu + sigma * eps  # [L, batch, d]
    L, batch, _ = eps.shape
    means = model.decoder(tf.constant(z.reshape(L * batch, 3), tf.float32)).numpy()
    means = means.reshape(L, batch, 5).astype(np.float64)
    reconstruction = stats.norm.logpdf(x[None], means, 0.1).sum(-1).mean(0)
    kl = (0.5 * (mu**2 + sigma**2 - 1.0) - np.log(sigma)).sum(-1)
    return {"reconstruction": reconstruction, "kl": kl, "elbo": reconstruction - kl,
            "loss": -reconstruction + beta * np.maximum(kl, free_bits)}


def test_elbo_terms_with_explicit_noise_are_the_hand_computed_terms():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 5)).astype("float32")
    eps = rng.normal(size=(4, 6, 3))
    # The KL's median as free bits, so max(kl, free_bits) acts on half the examples.
    probe = _gaussian_model()
    free_bits = float(np.median(_hand_terms(probe, x, eps, 1.0, 0.0)["kl"]))
    model = _gaussian_model(beta=0.5, free_bits=free_bits)
    for got, want in zip(model.trainable_weights, probe.trainable_weights):  # the same seed
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    expected = _hand_terms(model, x, eps, 0.5, free_bits)
    assert 0 < np.sum(expected["kl"] < free_bits) < 6
    terms = model.elbo_terms(tf.constant(x), noise=tf.constant(eps, tf.float32))
    assert set(terms) == {"loss", "elbo", "reconstruction", "kl"}
    for key, value in expected.items():
        assert terms[key].shape == (6,)
        np.testing.assert_allclose(terms[key], value, rtol=1e-5, atol=1e-4, err_msg=key)
    # The noise decides the terms; the seed is then unused.
    again = model.elbo_terms(tf.constant(x), seed=123, noise=tf.constant(eps, tf.float32))
    np.testing.assert_array_equal(again["elbo"], terms["elbo"])
    # The ELBO objective's terms are the ELBO terms at the same seed.
    seed = tfvae.random.make_seed(5)
    objective = model.objective_terms(tf.constant(x), seed=seed)
    for key, value in model.elbo_terms(tf.constant(x), seed=seed).items():
        np.testing.assert_array_equal(objective[key], value)


def _hand_tc_terms(model, x, eps, dataset_size):
    """β-TCVAE's mi, tc, dwkl from the raw encoder with numpy: the aggregate posterior by
    minibatch stratified sampling (self weight 1/N, the others (N − 1) / (N (M − 1)))."""
    raw = model.encoder(tf.constant(x)).numpy().astype(np.float64)
    mu, sigma = raw[:, :3], _softplus(raw[:, 3:]) + 1e-5
    z = mu + sigma * eps  # [L, M, d]
    m = len(x)
    weights = np.full((m, m), (dataset_size - 1) / (dataset_size * (m - 1)))
    np.fill_diagonal(weights, 1.0 / dataset_size)
    log_q = stats.norm.logpdf(z[:, :, None, :], mu[None, None], sigma[None, None])  # [L, M, M, d]
    log_qz = np.log(np.sum(weights * np.exp(log_q.sum(-1)), -1))
    log_qz_product = np.log(np.sum(weights[..., None] * np.exp(log_q), -2)).sum(-1)
    log_qz_x = stats.norm.logpdf(z, mu, sigma).sum(-1)
    log_pz = stats.norm.logpdf(z).sum(-1)
    return {"mi": (log_qz_x - log_qz).mean(0), "tc": (log_qz - log_qz_product).mean(0),
            "dwkl": (log_qz_product - log_pz).mean(0)}


def test_tc_terms_with_explicit_noise_are_the_hand_computed_terms():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 5)).astype("float32")
    eps = rng.normal(size=(2, 6, 3))
    model = _gaussian_model(objective="beta_tcvae", beta=0.5, mi_weight=0.3, tc_weight=6.0,
                            dwkl_weight=2.0, dataset_size=40, num_samples=2)
    expected = {**_hand_terms(model, x, eps, 0.5, 0.0), **_hand_tc_terms(model, x, eps, 40)}
    expected["loss"] = -expected["reconstruction"] + 0.5 * (
        0.3 * expected["mi"] + 6.0 * expected["tc"] + 2.0 * expected["dwkl"])
    terms = model.objective_terms(tf.constant(x), noise=tf.constant(eps, tf.float32))
    assert set(terms) == set(expected) == {"loss", "elbo", "reconstruction", "kl", "mi", "tc", "dwkl"}
    for key, value in expected.items():
        assert terms[key].shape == (6,)
        np.testing.assert_allclose(terms[key], value, rtol=1e-5, atol=2e-4, err_msg=key)
    # The ELBO's own terms are the ELBO objective's, and one encoder pass serves both.
    elbo = model.elbo_terms(tf.constant(x), noise=tf.constant(eps, tf.float32))
    for key in ("elbo", "reconstruction", "kl"):
        np.testing.assert_allclose(terms[key], elbo[key], rtol=1e-6, err_msg=key)
    seed = tfvae.random.make_seed(5)
    objective = model.objective_terms(tf.constant(x), seed=seed)
    context = model.step_context(tf.constant(x), seed=seed)
    for key, value in model.objective.terms(model, context).items():
        np.testing.assert_array_equal(objective[key], value)


@pytest.mark.slow
def test_tc_terms_in_a_graph_leave_invalid_rows_out_of_the_aggregate():
    # Row 2 is NaN: its terms are NaN, and the other rows' terms are those of the batch
    # without it (their aggregate posterior is over the 4 valid examples).
    model = _tiny("bernoulli", objective="beta_tcvae", dataset_size=100)
    x = _data_for("bernoulli", n=5)
    broken = x.copy()
    broken[2, 1, 1, 0] = np.nan
    eps = np.random.default_rng(0).normal(size=(1, 5, 3)).astype("float32")
    terms = tf.function(lambda x, eps: model.objective_terms(x, noise=eps), jit_compile=True)
    got = terms(tf.constant(broken), tf.constant(eps))
    want = terms(tf.constant(np.delete(x, 2, 0)), tf.constant(np.delete(eps, 2, 1)))
    for key in ("loss", "elbo", "reconstruction", "kl", "mi", "tc", "dwkl"):
        assert np.isnan(got[key][2].numpy()), key
        np.testing.assert_allclose(np.delete(got[key].numpy(), 2), want[key].numpy(), rtol=1e-5,
                                   atol=1e-5, err_msg=key)


def test_tc_terms_ask_the_parts_what_they_can_do():
    # The objective's own rules read the parts of a model built for another objective.
    model = tfvae.build_vae((4,), 2, hidden_units=(4,), posterior="full", seed=0)
    with raises("`objective`", "independent Gaussian dimensions", "FullCovarianceGaussianPosterior"):
        tfvae.objective_parts.BetaTCVAE().check(model.posterior, model.prior)


def test_beta_tcvae_config_round_trips_and_old_configs_load_with_the_defaults():
    model = tfvae.build_vae((4,), 2, hidden_units=(4,), objective="beta_tcvae", mi_weight=0.5,
                            tc_weight=6.0, dwkl_weight=0.0, dataset_size=70, beta=2.0, seed=0)
    config = model.get_config()
    assert {k: config[k] for k in ("objective", "mi_weight", "tc_weight", "dwkl_weight",
                                   "dataset_size", "beta")} == {
        "objective": "beta_tcvae", "mi_weight": 0.5, "tc_weight": 6.0, "dwkl_weight": 0.0,
        "dataset_size": 70, "beta": 2.0}
    rebuilt = tfvae.VAE.from_config(config)
    assert rebuilt.get_config() == config
    assert [m.name for m in rebuilt.metrics] == ["loss", "elbo", "reconstruction", "kl", "mi",
                                                 "tc", "dwkl"]
    # A config written before β-TCVAE existed (no such keys) loads as a plain ELBO model,
    # and so does one from 0.2.0, which wrote every objective's options beside "elbo".
    old = tfvae.build_vae((4,), 2, hidden_units=(4,), seed=0).get_config()
    assert "mi_weight" not in old and old["objective"] == "elbo"
    loaded = tfvae.VAE.from_config(old)
    assert loaded.objective.name == "elbo" and not hasattr(loaded.objective, "mi_weight")
    v020 = {**old, "k": 5, "gradient_estimator": "standard", "mi_weight": 1.0, "tc_weight": 1.0,
            "dwkl_weight": 1.0, "dataset_size": None}
    assert tfvae.VAE.from_config(v020).get_config() == old


def test_parameters_means_and_likelihood_fn_match_the_raw_networks():
    model = _gaussian_model()
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(size=(4, 5)), tf.float32)
    raw = model.encoder(x).numpy().astype(np.float64)
    parameters = model.posterior_parameters(x)
    assert set(parameters) == {"loc", "scale"}
    np.testing.assert_allclose(parameters["loc"], raw[:, :3], rtol=1e-6)
    np.testing.assert_allclose(parameters["scale"], _softplus(raw[:, 3:]) + 1e-5, rtol=1e-6)
    np.testing.assert_allclose(model.latent_code(x.numpy()), raw[:, :3], rtol=1e-6)

    z = rng.normal(size=(4, 3)).astype("float32")
    out = model.decoder(tf.constant(z)).numpy()
    decoded = model.decoder_parameters(tf.constant(z))
    np.testing.assert_allclose(decoded["loc"], out, rtol=1e-6)
    np.testing.assert_allclose(model.decode_mean(tf.constant(z)), out, rtol=1e-6)
    np.testing.assert_allclose(model.decode(z).mean(), out, rtol=1e-6)
    x_np = x.numpy().astype(np.float64)
    log_p = model.likelihood_fn()(tf.constant(z)).log_prob(x)
    np.testing.assert_allclose(log_p, stats.norm.logpdf(x_np, out, 0.1).sum(-1), rtol=1e-5)
    # q(z|x) as a distribution: the same parameters.
    q = model.encode(x.numpy())
    np.testing.assert_allclose(q.mean(), parameters["loc"], rtol=1e-6)
    np.testing.assert_allclose(q.stddev(), parameters["scale"], rtol=1e-6)


def test_encoder_variables_are_q_s_own():
    model = tfvae.build_vae((5,), 3, hidden_units=(8,), posterior="iaf", seed=0)
    ids = {id(v) for v in model.encoder_variables}
    expected = model.encoder.trainable_variables + model.posterior.trainable_variables
    assert ids == {id(v) for v in expected} and len(model.posterior.trainable_variables) > 0
    assert not ids & {id(v) for v in model.decoder.trainable_variables}
    assert ids < {id(v) for v in model.trainable_variables}


# ---------------------------------------------------------------------------
# Gradients.


@pytest.mark.parametrize(
    "likelihood, architecture, extra",
    [
        ("bernoulli", "mlp", {}),
        ("gaussian_per_dimension", "conv", {}),
        ("gaussian_shared", "mlp", {"posterior": "full"}),
        ("discretized_logistic", "conv", {"prior": "mixture", "num_components": 2}),
        ("categorical", "mlp", {}),
        ("continuous_bernoulli", "conv", {}),
    ],
)
def test_gradients_reach_every_trainable_variable(likelihood, architecture, extra):
    model = _tiny(likelihood, architecture, **extra)
    x = tf.constant(_data_for(likelihood))
    with tf.GradientTape() as tape:
        loss = -tf.reduce_mean(model.elbo(x, seed=1)["elbo"])
    variables = model.trainable_variables
    gradients = tape.gradient(loss, variables)
    names = [v.path for v, g in zip(variables, gradients) if g is None or not np.any(g.numpy())]
    assert not names, f"no gradient reaches {names}"
    encoder_and_decoder = model.encoder.trainable_variables + model.decoder.trainable_variables
    assert {id(v) for v in encoder_and_decoder} <= {id(v) for v in variables}


# ---------------------------------------------------------------------------
# Serialisation of each kind of likelihood (the conformance registry covers the variants).


@pytest.mark.slow
@pytest.mark.parametrize(
    "likelihood, architecture, extra",
    [
        ("bernoulli", "mlp", {}),
        ("gaussian_per_dimension", "conv", {"posterior": "full"}),
        ("discretized_logistic", "mlp", {"prior": "mixture", "num_components": 3}),
    ],
)
def test_keras_file_round_trip_gives_identical_outputs(tmp_path, likelihood, architecture, extra):
    model = _tiny(likelihood, architecture, beta=0.5, free_bits=0.1, **extra)
    x = _data_for(likelihood, n=16)
    model.compile(optimizer="adam")
    model.fit(x, epochs=1, batch_size=8, verbose=0)
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, tfvae.VAE)
    assert loaded.get_config()["free_bits"] == pytest.approx(0.1)
    assert float(loaded.beta.numpy()) == pytest.approx(0.5)
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
    for key in ("elbo", "reconstruction", "kl"):
        np.testing.assert_array_equal(model.elbo(x, seed=4)[key], loaded.elbo(x, seed=4)[key])
    np.testing.assert_array_equal(model.sample(3, seed=2), loaded.sample(3, seed=2))
    np.testing.assert_array_equal(model.reconstruct(x), loaded.reconstruct(x))
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))
    # The loaded model keeps training.
    loaded.compile(optimizer="adam")
    assert np.isfinite(loaded.fit(x, epochs=1, batch_size=8, verbose=0).history["loss"][0])


# ---------------------------------------------------------------------------
# Data methods.


def test_encode_decode_shapes_and_distributions():
    model = _tiny(architecture="conv")
    x = _data_for("bernoulli", n=4)
    q = model.encode(x)
    assert q.batch_shape == (4,) and q.event_shape == (3,)
    p = model.decode(q.mean())
    assert p.batch_shape == (4,) and p.event_shape == (6, 5, 1)
    np.testing.assert_allclose(model.reconstruct(x), p.mean(), rtol=1e-6)
    np.testing.assert_allclose(model(x), p.mean(), rtol=1e-6)
    samples = model.sample(5, seed=1)
    assert samples.shape == (5, 6, 5, 1)
    assert np.all((samples.numpy() >= 0) & (samples.numpy() <= 1))
    np.testing.assert_array_equal(samples, model.sample(5, seed=1))
    assert not np.allclose(samples, model.sample(5, seed=2))
    binary = model.sample(5, seed=1, mean=False).numpy()
    assert set(np.unique(binary)) <= {0.0, 1.0}


def test_sample_follows_the_prior_through_the_decoder():
    model = _tiny()
    n = 4000
    # Decoding z ~ p(z) with the same seed the model uses internally.
    z = objectives.posterior_sample(model.prior.distribution(), n, seed=9,
                                    reparameterize=model.prior.reparameterize).numpy()
    assert abs(z.mean()) < 5 / np.sqrt(n * 3) and abs(z.var() - 1) < 0.1
    expected = model.decode(z).mean().numpy()
    np.testing.assert_allclose(model.sample(n, seed=9), expected, rtol=1e-6)


def test_log_likelihood_is_above_elbo_and_iwae_between():
    model = _tiny()
    x = _data_for("bernoulli", n=6)
    log_px = model.log_likelihood(x, num_samples=20000, seed=0).numpy()
    elbo = model.elbo(x, num_samples=500, seed=0)["elbo"].numpy()
    # E[IWAE_20] per example, from 50 independent draws (x repeated: each row gets its own noise).
    draws = model.iwae_bound(np.concatenate([x] * 50), k=20, seed=0).numpy().reshape(50, len(x))
    iwae, stderr = draws.mean(axis=0), draws.std(axis=0, ddof=1) / np.sqrt(50)
    # ELBO < E[IWAE_20] <= log p(x) for every example, within the estimates' errors.
    assert np.all(elbo < iwae) and np.all(iwae < log_px + 3 * stderr + 0.01)


def test_model_groups_split_latent_dimensions_evenly():
    model = tfvae.build_vae((5,), 5, hidden_units=(8,), free_bits=0.3, free_bits_groups=2, seed=0)
    x = (np.random.default_rng(0).uniform(size=(7, 5)) > 0.5).astype("float32")
    parameters = model.posterior_parameters(tf.constant(x))
    groups = model.posterior.kl_groups(parameters, model.prior, model.free_bits_groups)(None).numpy()
    mu, sigma = parameters["loc"].numpy(), parameters["scale"].numpy()
    per_dim = 0.5 * (mu**2 + sigma**2 - 1.0) - np.log(sigma)
    np.testing.assert_allclose(groups, np.stack([per_dim[:, :3].sum(-1), per_dim[:, 3:].sum(-1)], -1),
                               rtol=1e-5, atol=1e-6)
    model.compile(optimizer="adam")
    history = model.fit(x, epochs=2, verbose=0).history
    assert np.isfinite(history["loss"]).all()
    assert model.get_config()["free_bits_groups"] == 2


# ---------------------------------------------------------------------------
# Bad data and arguments for the data methods (fit / evaluate / predict: test_training).


@pytest.mark.parametrize("method", MODEL_METHODS)
@pytest.mark.parametrize("shape", [(8, 5), (8,), (8, 4, 1), (8, 2, 2)])
def test_vector_model_wrong_x_shape(vec_model, method, shape):
    assert_wrong_x_shape_refused(X_METHODS[method], vec_model, shape, "(4,)")


@pytest.mark.parametrize("method", MODEL_METHODS)
@pytest.mark.parametrize("shape", [(8, 3, 3), (8, 9), (8, 3, 3, 2), (8, 4, 4, 1), (3, 3, 1)])
def test_image_model_wrong_x_shape(img_model, method, shape):
    assert_wrong_x_shape_refused(X_METHODS[method], img_model, shape, "(3, 3, 1)")


@pytest.mark.parametrize("method", ["encode", "elbo", "reconstruct"])
def test_wrong_x_shape_as_tensor_and_list(vec_model, method):
    with raises("`x`", "(4,)", "(2, 5)"):
        X_METHODS[method](vec_model, tf.fill((2, 5), 0.5))
    with raises("`x`", "(4,)", "(2, 5)"):
        X_METHODS[method](vec_model, [[0.5] * 5] * 2)


@pytest.mark.parametrize("shape", [(2, 3), (2, 1), (2,), (2, 2, 1), (2, 0)])
def test_decode_wrong_z_shape(vec_model, shape):
    z = np.zeros(shape, "float32")
    with raises("`z`", "(batch, 2)", repr(shape)):
        vec_model.decode(z)


@pytest.mark.parametrize("n", BAD_POSITIVE_INTS)
def test_sample_bad_n(vec_model, n):
    with invalid("n", n, "positive integer"):
        vec_model.sample(n)


@pytest.mark.parametrize("num_samples", BAD_POSITIVE_INTS)
def test_log_likelihood_bad_num_samples(vec_model, num_samples):
    with invalid("num_samples", num_samples):
        vec_model.log_likelihood(unit_data(n=2), num_samples=num_samples)


@pytest.mark.parametrize("num_samples", [0, -3, 2.5, "64", True])
def test_elbo_bad_num_samples(vec_model, num_samples):
    with invalid("num_samples", num_samples):
        vec_model.elbo(unit_data(n=2), num_samples=num_samples)


def test_good_data_passes(vec_model, img_model):
    x = unit_data()
    x[0, :2] = [0.0, 1.0]  # the closed interval's end points are valid
    assert vec_model.encode(x).mean().shape == (8, 2)
    assert vec_model.elbo(x)["elbo"].shape == (8,)
    assert vec_model.reconstruct(tf.constant(x)).shape == (8, 4)
    assert vec_model.decode(np.zeros((3, 2), "float32")).batch_shape == (3,)
    assert vec_model.sample(1).shape == (1, 4)
    assert vec_model.iwae_bound(x, k=1).shape == (8,)
    assert vec_model.log_likelihood(x, num_samples=1).shape == (8,)
    x_img = np.full((2, 3, 3, 1), 0.5, "float32")
    assert img_model.elbo(x_img)["elbo"].shape == (2,)


# ---------------------------------------------------------------------------
# VAE(objective="iwae").


@pytest.mark.slow
@pytest.mark.parametrize("estimator", ["standard", "dreg"])
def test_vae_trains_on_the_iwae_bound(digits, estimator):
    (x_train, _), (x_val, _) = digits
    model = tfvae.build_vae((8, 8, 1), 4, hidden_units=(64,), seed=0, objective="iwae", k=8,
                            gradient_estimator=estimator)
    model.compile(optimizer=keras.optimizers.Adam(2e-3))
    before = model.evaluate(x_val, verbose=0, return_dict=True)
    history = model.fit(x_train, epochs=3, batch_size=64, validation_data=(x_val,), verbose=0).history
    assert {"iwae", "elbo", "val_iwae", "val_elbo"} <= set(history)
    # Over 359 held-out digits the 8-sample bound is above the ELBO every epoch.
    assert all(i > e for i, e in zip(history["val_iwae"], history["val_elbo"]))
    assert history["val_iwae"][-1] > before["iwae"] + 10
    np.testing.assert_allclose(history["loss"], -np.asarray(history["iwae"]), rtol=1e-5)
    # (Saving, and training under XLA: test_conformance.py, variants "iwae", "iwae_dreg".)


@pytest.mark.parametrize("bad", ["nan", "levels"])
def test_in_a_graph_invalid_rows_give_nan_outputs_and_the_rest_is_unchanged(bad):
    """Inside a graph (XLA), where eager checks cannot run: a row with NaN, or 8-bit
    levels given to a Bernoulli model, gets NaN reconstructions and ELBO terms; the
    other rows equal what the model gives for them alone."""
    model = _tiny("bernoulli")
    x = _data_for("bernoulli", n=5)
    broken = x.copy()
    broken[2, 1, 1, 0] = np.nan if bad == "nan" else 255.0
    call = tf.function(lambda x: model(x), jit_compile=True)
    terms = tf.function(lambda x: model.elbo_terms(x, noise=tf.zeros((1, 5, 3))),
                        jit_compile=True)
    out, expected = call(tf.constant(broken)).numpy(), call(tf.constant(x)).numpy()
    assert np.isnan(out[2]).all()
    np.testing.assert_allclose(np.delete(out, 2, 0), np.delete(expected, 2, 0), rtol=1e-6)
    got, want = terms(tf.constant(broken)), terms(tf.constant(x))
    for key in ("loss", "elbo", "reconstruction", "kl"):
        assert np.isnan(got[key][2].numpy())
        np.testing.assert_allclose(np.delete(got[key].numpy(), 2), np.delete(want[key].numpy(), 2),
                                   rtol=1e-6)
    np.testing.assert_array_equal(model.valid_rows(tf.constant(broken)).numpy(),
                                  [True, True, False, True, True])
