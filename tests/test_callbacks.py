"""tfvae.callbacks: `KLWarmup` sets the model's β schedule, exactly per step."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfvae

from helpers import invalid


def _tiny(**kwargs):
    kwargs.setdefault("seed", 0)
    return tfvae.build_vae((6, 5, 1), 3, hidden_units=(16,), **kwargs)


def _data(n):
    return np.random.default_rng(0).uniform(size=(n, 6, 5, 1)).astype("float32")


@pytest.mark.parametrize("epochs", [0, -3, math.nan, math.inf, None, "64", True])
def test_kl_warmup_bad_epochs(epochs):
    with invalid("epochs", epochs):
        tfvae.KLWarmup(epochs=epochs)


@pytest.mark.parametrize("argument", ["start", "end"])
@pytest.mark.parametrize("value", [-1.0, math.nan, None])
def test_kl_warmup_bad_start_end(argument, value):
    with invalid(argument, value):
        tfvae.KLWarmup(epochs=1, **{argument: value})


@pytest.mark.parametrize("steps_per_epoch", [0, -1, 2.5])
def test_kl_warmup_bad_steps_per_epoch(steps_per_epoch):
    with invalid("steps_per_epoch", steps_per_epoch):
        tfvae.KLWarmup(epochs=1, steps_per_epoch=steps_per_epoch)


def test_good_arguments_and_beta_at_the_closed_form():
    assert tfvae.KLWarmup(epochs=0.5).epochs == 0.5
    warmup = tfvae.KLWarmup(epochs=4, start=0.2, end=1.0)
    for progress in (-1.0, 0.0, 0.5, 1.0, 3.9, 4.0, 10.0):
        expected = 0.2 + 0.8 * min(max(progress / 4, 0.0), 1.0)
        assert warmup.beta_at(progress) == pytest.approx(expected)


def test_kl_warmup_schedules_beta_and_the_loss_follows_it():
    x = _data(40)
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


@pytest.mark.slow
def test_kl_warmup_is_exact_per_step_with_steps_per_execution_and_xla():
    x = _data(40)
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


@pytest.mark.slow
def test_kl_warmup_resumes_where_it_stopped(tmp_path):
    x = _data(40)
    model = _tiny()
    model.compile(optimizer="adam")
    warmup = tfvae.KLWarmup(epochs=4)
    model.fit(x, epochs=1, batch_size=10, verbose=0, callbacks=[warmup])
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    history = loaded.fit(x, epochs=2, batch_size=10, verbose=0, callbacks=[tfvae.KLWarmup(epochs=4)])
    # 16 warm-up steps; after 4 + 8 steps β = 11/16 (the step-11 value).
    np.testing.assert_allclose(history.history["beta"], [7 / 16, 11 / 16], atol=1e-6)


def test_kl_warmup_needs_the_elbo_and_a_known_epoch_length():
    model = tfvae.build_vae((4,), 2, hidden_units=(4,), objective="iwae", k=2)
    model.compile(optimizer="adam")
    with pytest.raises(ValueError, match="KLWarmup needs a model trained on the ELBO"):
        model.fit(np.zeros((8, 4), "float32"), epochs=1, verbose=0, callbacks=[tfvae.KLWarmup(1)])
    plain = tfvae.build_vae((4,), 2, hidden_units=(4,), seed=0)
    plain.compile(optimizer="adam")
    unknown_length = tf.data.Dataset.from_generator(
        lambda: iter([np.zeros((2, 4), "float32")] * 3),
        output_signature=tf.TensorSpec((None, 4), tf.float32))
    with pytest.raises(ValueError, match="cannot tell the number of steps per epoch"):
        plain.fit(unknown_length, epochs=1, verbose=0, callbacks=[tfvae.KLWarmup(1)])
    # Told the epoch length, it warms up over it: 3 steps per epoch, 2 epochs.
    seen = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(float(self.model.beta.numpy()))

    history = plain.fit(unknown_length, epochs=2, verbose=0,
                        callbacks=[tfvae.KLWarmup(2, steps_per_epoch=3), Record()])
    assert plain.get_beta_schedule() == tfvae.training.BetaSchedule(0.0, 1.0, 6.0, 0.0)
    np.testing.assert_allclose(seen[:3], [0.0, 1 / 6, 2 / 6], atol=1e-6)
    # (Keras counts one more optimizer iteration when an unknown-length epoch runs
    # out of data, so later steps of the schedule run one step ahead per epoch.)
    assert len(seen) == 6 and history.history["beta"][-1] == pytest.approx(1.0)
