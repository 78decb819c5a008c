"""tfvae.callbacks: `KLWarmup` sets the model's β schedule, exactly per step;
`StopOnNonFinite` stops a diverging fit; checkpoints and the CSV log are written whole."""

import csv
import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfvae
from tfvae import evaluation

from helpers import invalid, raises, read_events


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
    with raises("`objective`", "no KL term for β, KL warm-up", "objective='iwae'",
                "warmup_epochs=1.0"):
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


# ---------------------------------------------------------------------------
# StopOnNonFinite and the atomic checkpoints (issue 12).

from tfvae import callbacks as callbacks_lib  # noqa: E402
from tfvae import files  # noqa: E402


def _poisoned_dataset(n, bad_epoch, nan_at=5, batch_size=4):
    """A `tf.data` pipeline of `n` examples that holds one NaN example from epoch `bad_epoch`
    (0-based) on: the epoch counter lives in a `tf.Variable` that a callback raises."""
    epoch = tf.Variable(0, dtype=tf.int64)
    x = tf.constant(_data(n).reshape(n, -1))
    index = tf.range(n, dtype=tf.int64)

    def poison(example, i):
        bad = tf.logical_and(tf.equal(i, nan_at), epoch >= bad_epoch)
        return tf.where(bad, tf.fill(tf.shape(example), np.float32("nan")), example)

    dataset = tf.data.Dataset.from_tensor_slices((x, index)).map(poison).batch(batch_size)

    class Count(keras.callbacks.Callback):
        def on_epoch_begin(self, e, logs=None):
            epoch.assign(e)

    return dataset, Count()


def _vector_model():
    model = tfvae.build_vae((30,), 3, hidden_units=(16,), likelihood="gaussian", seed=0)
    return model


@pytest.mark.parametrize("steps_per_execution", [1, 3])
def test_stop_on_non_finite_stops_a_user_pipeline_with_a_nan_example(steps_per_execution):
    dataset, count = _poisoned_dataset(40, bad_epoch=1)
    model = _vector_model()
    model.compile(optimizer="adam", steps_per_execution=steps_per_execution)
    stop = callbacks_lib.StopOnNonFinite()
    seen = []

    class Batches(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append((count_epoch[0], batch))

        def on_epoch_begin(self, e, logs=None):
            count_epoch[0] = e

    count_epoch = [0]
    # `fit`'s own data checks see only arrays; a pipeline goes straight to the graph.
    history = model.fit(dataset, epochs=5, verbose=0, callbacks=[count, stop, Batches()])
    assert stop.diverged_epoch == 2 and math.isnan(stop.value)
    assert len(history.history["loss"]) == 2  # epoch 2 ended early, no epoch 3
    # It stopped within the execution holding the NaN example (batch 1 of 10).
    assert max(batch for epoch, batch in seen if epoch == 1) < 1 + steps_per_execution


def test_stop_on_non_finite_checks_the_epoch_logs_too():
    stop = callbacks_lib.StopOnNonFinite()
    stop.set_model(_vector_model())
    stop.model.stop_training = False  # as `fit` sets it
    stop.on_train_begin()
    stop.on_epoch_begin(0)
    stop.on_epoch_end(0, {"loss": 1.0})
    assert stop.diverged_epoch is None and not stop.model.stop_training
    stop.on_epoch_begin(1)
    stop.on_train_batch_end(0, {"elbo": float("nan")})  # not the monitored entry
    assert stop.diverged_epoch is None
    stop.on_epoch_end(1, {"loss": float("inf")})
    assert stop.diverged_epoch == 2 and stop.value == math.inf and stop.model.stop_training
    with invalid("monitor", ""):
        callbacks_lib.StopOnNonFinite(monitor="")


@pytest.mark.slow
def test_checkpoints_keep_the_last_finite_model_when_training_diverges(tmp_path):
    dataset, count = _poisoned_dataset(40, bad_epoch=2)
    model = _vector_model()
    model.compile(optimizer="adam")
    last = str(tmp_path / "last.keras")
    best = str(tmp_path / "model.keras")
    saved = []
    callbacks = [
        count, callbacks_lib.StopOnNonFinite(),
        callbacks_lib.AtomicCSVLogger(str(tmp_path / "history.csv")),
        callbacks_lib.AtomicModelCheckpoint(best, monitor="elbo", mode="max"),
        callbacks_lib.AtomicModelCheckpoint(last, on_save=saved.append),
    ]
    model.fit(dataset, epochs=5, verbose=0, callbacks=callbacks)
    assert saved == [last, last]  # epochs 1 and 2; not the NaN epoch 3
    for path in (last, best):
        loaded = keras.saving.load_model(path)
        assert all(np.all(np.isfinite(w)) for w in loaded.get_weights())
        assert files.read_model_metadata(path)["epoch"] == 2
    # The model itself did diverge.
    assert not all(np.all(np.isfinite(w)) for w in model.get_weights())
    rows = (tmp_path / "history.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,") and len(rows) == 4 and "nan" in rows[3]
    assert sorted(os.listdir(tmp_path)) == ["history.csv", "last.keras", "model.keras"]


def test_a_checkpoint_is_not_written_for_non_finite_logs_or_weights(tmp_path):
    model = _vector_model()
    model.compile(optimizer="adam")
    path = str(tmp_path / "m.keras")
    checkpoint = callbacks_lib.AtomicModelCheckpoint(path, monitor="val_elbo",
                                                     initial_value_threshold=-10.0)
    checkpoint.set_model(model)
    checkpoint.on_epoch_end(0, {"loss": 1.0, "val_elbo": -11.0})  # not better than -10
    assert not os.path.exists(path)
    checkpoint.on_epoch_end(1, {"loss": float("nan"), "val_elbo": -5.0})
    assert not os.path.exists(path)
    checkpoint.on_epoch_end(2, {"loss": 1.0, "val_elbo": -5.0})
    assert files.read_model_metadata(path) == {"epoch": 3, "val_elbo": -5.0}
    before = open(path, "rb").read()
    model.weights[0].assign(np.full(model.weights[0].shape, np.nan, "float32"))
    checkpoint.on_epoch_end(3, {"loss": 1.0, "val_elbo": -1.0})
    assert open(path, "rb").read() == before and checkpoint.best == -5.0
    with invalid("path", "m.h5"):
        callbacks_lib.AtomicModelCheckpoint("m.h5")


def test_the_csv_logger_appends_to_and_rewrites_a_whole_file(tmp_path):
    path = str(tmp_path / "history.csv")
    logger = callbacks_lib.AtomicCSVLogger(path)
    logger.on_train_begin()
    logger.on_epoch_end(0, {"loss": 2.0, "elbo": -2.0})
    resumed = callbacks_lib.AtomicCSVLogger(path, append=True)
    resumed.on_train_begin()
    resumed.on_epoch_end(1, {"loss": 1.5, "elbo": -1.5, "beta": 1.0})  # a new key is dropped
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert rows == [{"epoch": "0", "elbo": "-2.0", "loss": "2.0"},
                    {"epoch": "1", "elbo": "-1.5", "loss": "1.5"}]
    assert os.listdir(tmp_path) == ["history.csv"]


# ---------------------------------------------------------------------------
# TensorBoard: Keras's scalars and tfvae's LatentSummaries, read back from the event files.


@pytest.mark.slow
def test_in_a_plain_fit_scalars_match_history_and_latent_summaries_are_written(tmp_path):
    (x, _), (x_val, _) = tfvae.data.load_digits()
    x, x_val = x[:256], x_val[:64]
    model = tfvae.build_vae(x.shape[1:], 3, hidden_units=(16,), seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    callbacks = [tfvae.KLWarmup(2), keras.callbacks.TensorBoard(str(tmp_path / "logs")),
                 tfvae.LatentSummaries(tmp_path / "logs" / "latent", x_val, every=2)]
    history = model.fit(x, epochs=3, batch_size=64, validation_data=(x_val,), callbacks=callbacks,
                        verbose=0).history
    train = read_events(str(tmp_path / "logs" / "train"))
    val = read_events(str(tmp_path / "logs" / "validation"))
    for key in ("loss", "elbo", "reconstruction", "kl", "beta"):
        np.testing.assert_allclose([train[f"epoch_{key}"][e] for e in range(3)], history[key], rtol=1e-6)
    for key in ("loss", "elbo", "reconstruction", "kl"):
        np.testing.assert_allclose([val[f"epoch_{key}"][e] for e in range(3)], history["val_" + key], rtol=1e-6)
    assert "epoch_learning_rate" in train
    latent = read_events(str(tmp_path / "logs" / "latent"))
    assert set(latent["reconstructions"]) == {0, 2}  # epochs 0 and 2 (the last)
    codes = model.latent_code(x_val).numpy()
    # the last histogram of z0 covers all codes of the final model
    hist = latent["posterior_mean/z0"][2]  # [buckets, 3]: left, right, count
    assert hist[:, 2].sum() == len(x_val)
    np.testing.assert_allclose([hist[0, 0], hist[-1, 1]], [codes[:, 0].min(), codes[:, 0].max()], rtol=1e-5)
    kl = evaluation.kl_per_dimension(model, x_val)
    np.testing.assert_allclose([latent[f"kl_per_dimension/z{j}"][2] for j in range(3)], kl, rtol=1e-5)


def test_surgery_logs_refuse_a_point_mass_posterior_before_training():
    # A VQ-VAE's q(z|x) has no density, so the surgery cannot apply: fit stops before its
    # first step, with the reason, instead of after a whole epoch.
    model = tfvae.build_vae((4,), 2, posterior="vq", codebook_size=4, hidden_units=(4,), seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    x = (np.random.default_rng(0).uniform(size=(8, 4)) < 0.5).astype("float32")
    with pytest.raises(ValueError, match="SurgeryLogs does not apply.*has_density is False"):
        model.fit(x, epochs=1, batch_size=4, verbose=0,
                  callbacks=[tfvae.SurgeryLogs(x, num_examples=8)])
    assert int(model.optimizer.iterations.numpy()) == 0
