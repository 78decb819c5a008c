"""tfvae.VAE: training with fit/evaluate, gradients, serialisation, XLA, β warm-up."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfvae
from tfvae import objectives


@pytest.fixture(scope="module")
def digits():
    return tfvae.data.load_digits()


def _tiny(likelihood="bernoulli", architecture="mlp", **kwargs):
    kwargs.setdefault("hidden_units", (16,))
    kwargs.setdefault("filters", (4, 8))
    kwargs.setdefault("seed", 0)
    return tfvae.build_vae((6, 5, 1), 3, likelihood=likelihood, architecture=architecture, **kwargs)


def _data_for(likelihood, n=8, seed=0):
    x = np.random.default_rng(seed).uniform(size=(n, 6, 5, 1)).astype("float32")
    if likelihood in ("categorical", "discretized_logistic"):
        return np.round(x * 255)
    return x


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
# fit / evaluate.


def test_fit_raises_held_out_elbo_on_digits(digits):
    (x_train, _), (x_val, _) = digits
    keras.utils.set_random_seed(0)
    model = tfvae.build_vae((8, 8, 1), 8, hidden_units=(128, 64), seed=0)
    model.compile(optimizer=keras.optimizers.Adam(2e-3))
    before = model.evaluate(x_val, batch_size=256, verbose=0, return_dict=True)
    history = model.fit(
        x_train, epochs=6, batch_size=64, validation_data=(x_val,), verbose=0
    ).history
    after = model.evaluate(x_val, batch_size=256, verbose=0, return_dict=True)
    for key in ("loss", "elbo", "reconstruction", "kl"):
        assert key in history and "val_" + key in history
    # An untrained Bernoulli decoder scores ~64 log 2 = 44 nats per digit; a
    # few epochs must gain clearly more than noise.
    assert before["elbo"] < -40
    assert after["elbo"] > before["elbo"] + 12
    np.testing.assert_allclose(after["loss"], -after["elbo"], rtol=1e-5)
    np.testing.assert_allclose(after["elbo"], after["reconstruction"] - after["kl"], rtol=1e-4)


def test_evaluate_reports_per_example_means_over_uneven_batches(digits):
    _, (x_val, _) = digits
    model = tfvae.build_vae((8, 8, 1), 4, hidden_units=(32,), seed=3)
    model.compile(optimizer="adam")
    # Batches of 50 over 359 examples: the last batch is short, and a mean of
    # batch means would weight its examples 50/9 times too much.
    reported = model.evaluate(x_val, batch_size=50, verbose=0, return_dict=True)
    # The analytic KL is deterministic, so its epoch mean must be exact.
    kl = model.elbo(x_val, seed=0)["kl"].numpy()
    np.testing.assert_allclose(reported["kl"], kl.mean(), rtol=1e-4)
    # The ELBO uses one noise draw per example: compare with a 500-sample
    # reference within five standard errors of a one-sample mean.
    reference = model.elbo(x_val, num_samples=500, seed=0)["elbo"].numpy()
    single = np.stack([model.elbo(x_val, num_samples=1, seed=s)["elbo"].numpy() for s in range(5)])
    standard_error = single.std(0).mean() / np.sqrt(len(x_val))
    assert abs(reported["elbo"] - reference.mean()) < 5 * standard_error + 1e-3


def test_labels_and_sample_weights_are_accepted(digits):
    (x_train, y_train), _ = digits
    model = tfvae.build_vae((8, 8, 1), 2, hidden_units=(16,), seed=0)
    model.compile(optimizer="adam")
    weights = np.ones(len(x_train[:128]), "float32")
    history = model.fit(x_train[:128], y_train[:128], sample_weight=weights, epochs=1,
                        batch_size=32, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    # A zero weight removes an example from the metric: evaluating with the
    # second half weighted 0 equals evaluating on the first half alone (no `y`
    # needed: tfvae passes placeholder labels so Keras keeps the weights).
    x = x_train[:64]
    model.compile(optimizer="adam")
    single = model.evaluate(x, batch_size=64, verbose=0, return_dict=True)
    kl_single = single["kl"]
    doubled = np.concatenate([x, x_train[64:128]])
    w = np.concatenate([np.ones(64), np.zeros(64)]).astype("float32")
    weighted = model.evaluate(doubled, sample_weight=w, batch_size=128, verbose=0, return_dict=True)
    np.testing.assert_allclose(weighted["kl"], kl_single, rtol=1e-5)


def test_jit_compile_gives_the_same_losses_as_eager():
    x = _data_for("bernoulli", n=48, seed=1)
    histories = {}
    for mode in ("eager", "graph", "xla"):
        model = _tiny("bernoulli", "conv", seed=5)
        model.compile(
            optimizer=keras.optimizers.Adam(1e-2),
            run_eagerly=(mode == "eager"),
            jit_compile=(mode == "xla"),
        )
        histories[mode] = model.fit(x, epochs=3, batch_size=16, shuffle=False, verbose=0).history
    for mode in ("graph", "xla"):
        for key in ("loss", "kl", "reconstruction"):
            np.testing.assert_allclose(histories[mode][key], histories["eager"][key], rtol=2e-4)
    # The losses changed, so the comparison covers several real updates.
    assert histories["eager"]["loss"][0] != histories["eager"]["loss"][-1]


def test_same_seed_same_training_different_seed_differs():
    x = _data_for("bernoulli", n=32)

    def run(seed):
        model = _tiny(seed=seed)
        model.compile(optimizer="adam")
        return model.fit(x, epochs=2, batch_size=16, shuffle=False, verbose=0).history["loss"]

    np.testing.assert_allclose(run(7), run(7), rtol=1e-6)
    assert not np.allclose(run(7), run(8), rtol=1e-6)


# ---------------------------------------------------------------------------
# β and KL warm-up.


def test_kl_warmup_schedules_beta_and_the_loss_follows_it():
    x = _data_for("bernoulli", n=40)
    model = _tiny()
    model.compile(optimizer="adam")
    warmup = tfvae.KLWarmup(epochs=2, start=0.0, end=1.0)
    seen = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(float(self.model.beta.numpy()))

    history = model.fit(x, epochs=3, batch_size=10, verbose=0, callbacks=[warmup, Record()])
    # Four steps per epoch; β rises linearly over the first eight steps.
    np.testing.assert_allclose(seen[:8], np.arange(8) / 8.0, atol=1e-6)
    np.testing.assert_allclose(seen[8:], 1.0)
    np.testing.assert_allclose(history.history["beta"], [0.375, 0.875, 1.0], atol=1e-6)
    assert warmup.beta_at(1.0) == pytest.approx(0.5)


def test_beta_zero_makes_the_loss_the_negative_reconstruction():
    x = _data_for("bernoulli", n=16)
    model = _tiny(beta=0.0)
    model.compile(optimizer="adam")
    result = model.evaluate(x, batch_size=16, verbose=0, return_dict=True)
    np.testing.assert_allclose(result["loss"], -result["reconstruction"], rtol=1e-6)
    assert result["kl"] > 0


# ---------------------------------------------------------------------------
# Serialisation.


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
# API surface.


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
    z = objectives.posterior_sample(model.prior.distribution(), n, seed=9).numpy()
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


def test_kl_warmup_is_exact_per_step_with_steps_per_execution_and_xla():
    x = _data_for("bernoulli", n=40)
    model = _tiny()
    model.compile(optimizer="adam", steps_per_execution=3, jit_compile=True)
    history = model.fit(x, epochs=3, batch_size=10, verbose=0, callbacks=[tfvae.KLWarmup(epochs=2)])
    # β is computed in the compiled step (β_k = k / 8 at step k), so the epoch
    # logs match the per-step schedule although callbacks run every 3 steps.
    np.testing.assert_allclose(history.history["beta"], [0.375, 0.875, 1.0], atol=1e-6)
    # The loss really used β: with β < 1, loss = −reconstruction + β·KL < −elbo.
    model.set_beta_schedule(0.25, 0.25, 1)
    terms = model.elbo_terms(tf.constant(x), seed=tf.constant([1, 2]))
    np.testing.assert_allclose(
        terms["loss"], -terms["reconstruction"] + float(model.beta.numpy()) * terms["kl"], rtol=1e-6
    )


def test_kl_warmup_resumes_where_it_stopped(tmp_path):
    x = _data_for("bernoulli", n=40)
    model = _tiny()
    model.compile(optimizer="adam")
    warmup = tfvae.KLWarmup(epochs=4)
    model.fit(x, epochs=1, batch_size=10, verbose=0, callbacks=[warmup])
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    history = loaded.fit(x, epochs=2, batch_size=10, verbose=0, callbacks=[tfvae.KLWarmup(epochs=4)])
    # 16 warm-up steps; after 4 + 8 steps β = 11/16 (the step-11 value).
    np.testing.assert_allclose(history.history["beta"], [7 / 16, 11 / 16], atol=1e-6)
