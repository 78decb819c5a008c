"""IWAE training: the objective, the DReG gradient estimator, and `VAE(objective="iwae")`."""

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import tfvae
from tfvae import objectives

tfd = tfp.distributions


def _linear_gaussian(rng, dx=4, d=2, sigma=0.5):
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
    decode = _linear_gaussian(rng)
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
    decode = _linear_gaussian(rng)
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


@pytest.fixture(scope="module")
def digits():
    return tfvae.data.load_digits()


@pytest.mark.parametrize("estimator", ["standard", "dreg"])
def test_vae_trains_on_the_iwae_bound(digits, estimator, tmp_path):
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
    model.save(tmp_path / "iwae.keras")
    loaded = keras.saving.load_model(tmp_path / "iwae.keras")
    assert (loaded.objective, loaded.k, loaded.gradient_estimator) == ("iwae", 8, estimator)
    np.testing.assert_array_equal(loaded.iwae_bound(x_val[:5], k=8, seed=1),
                                  model.iwae_bound(x_val[:5], k=8, seed=1))


def test_dreg_training_is_the_same_eagerly_and_under_xla(digits):
    x = digits[0][0][:96]
    losses = {}
    for mode in ("eager", "xla"):
        model = tfvae.build_vae((8, 8, 1), 3, hidden_units=(16,), seed=2, objective="iwae", k=4,
                                gradient_estimator="dreg")
        model.compile(optimizer=keras.optimizers.Adam(1e-2), run_eagerly=mode == "eager",
                      jit_compile=mode == "xla")
        losses[mode] = model.fit(x, epochs=2, batch_size=32, shuffle=False, verbose=0).history["loss"]
    np.testing.assert_allclose(losses["xla"], losses["eager"], rtol=2e-4)


def test_dreg_needs_the_iwae_objective():
    with pytest.raises(ValueError, match="'dreg' needs objective='iwae'"):
        tfvae.build_vae((4,), 2, gradient_estimator="dreg")


@pytest.mark.parametrize("extra", [{"posterior": "iaf"}, {"prior": "vamp", "num_components": 3}])
def test_dreg_is_refused_where_it_would_be_biased(extra):
    # DReG stops gradients through q's parameters only; an IAF's own weights or a
    # VampPrior's encoder dependence would still carry score-function terms.
    with pytest.raises(ValueError, match="'dreg' stops gradients through q's parameters only"):
        tfvae.build_vae((4,), 2, hidden_units=(8,), objective="iwae", gradient_estimator="dreg", **extra)


def test_knobs_the_iwae_bound_ignores_are_refused():
    for kwargs in ({"beta": 2.0}, {"free_bits": 0.5}):
        with pytest.raises(ValueError, match="no KL term"):
            tfvae.build_vae((4,), 2, hidden_units=(4,), objective="iwae", **kwargs)
    model = tfvae.build_vae((4,), 2, hidden_units=(4,), objective="iwae", k=2)
    model.compile(optimizer="adam")
    with pytest.raises(ValueError, match="KLWarmup needs a model trained on the ELBO"):
        model.fit(np.zeros((8, 4), "float32"), epochs=1, verbose=0, callbacks=[tfvae.KLWarmup(1)])
    from tfvae import runs

    with pytest.raises(ValueError, match="no KL term"):
        runs.RunConfig(objective="iwae", warmup_epochs=5).validate()
