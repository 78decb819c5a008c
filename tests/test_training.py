"""tfvae.training: the `Trainer` mixin (fit / evaluate / predict, their pre-checks, exact
metrics, seeds) and `BetaSchedule`."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfvae
from tfvae.training import BetaSchedule

from helpers import assert_wrong_x_shape_refused, data_for as _data_for, tiny_model as _tiny
from helpers import TRAINING_METHODS, X_METHODS, invalid, raises, unit_data


def _fresh_vec_model():
    """For tests that may leave a model's compiled train function unusable."""
    model = tfvae.build_vae((4,), 2, hidden_units=(8,), seed=0)
    model.compile(optimizer="adam")
    return model


def _fresh_img_model():
    return tfvae.build_vae((3, 3, 1), 2, hidden_units=(8,), seed=0)


# ---------------------------------------------------------------------------
# BetaSchedule against its closed form.


def _closed_form(start, end, steps, first_step, t):
    """β(t) = start + (end − start) · min((t − first_step) / steps, 1), and β = start before
    `first_step`."""
    return start + (end - start) * min(max((t - first_step) / steps, 0.0), 1.0)


@pytest.mark.parametrize("start, end, steps, first_step", [
    (0.0, 1.0, 8.0, 0.0), (0.25, 1.0, 3.0, 5.0), (2.0, 0.5, 10.0, 7.0), (0.0, 1.0, 0.5, 0.0),
    (1.0, 1.0, 4.0, 0.0),
])
def test_beta_at_is_the_closed_form_at_every_step(start, end, steps, first_step):
    vector = tf.constant(BetaSchedule(start, end, steps, first_step).as_vector())
    beta_at = tf.function(BetaSchedule.beta_at)  # as in the compiled train step
    for t in range(0, 25):
        expected = _closed_form(start, end, steps, first_step, t)
        for fn in (BetaSchedule.beta_at, beta_at):
            got = float(fn(vector, tf.constant(t, tf.int64), tf.constant(9.0)))
            assert got == pytest.approx(expected, abs=1e-6), (t, got, expected)


def test_without_steps_beta_stays_current():
    vector = tf.constant(BetaSchedule().as_vector())
    assert not BetaSchedule().active and BetaSchedule(steps=1).active
    for t in (0, 3, 1000):
        assert float(BetaSchedule.beta_at(vector, t, tf.constant(0.7))) == pytest.approx(0.7)


def test_schedule_vector_round_trip_and_checks():
    schedule = BetaSchedule(0.1, 0.9, 12.0, 4.0)
    assert schedule.as_vector() == pytest.approx([0.1, 0.9, 12.0, 4.0])
    assert BetaSchedule.from_vector(np.array(schedule.as_vector(), "float32")) == BetaSchedule(
        *np.float32(schedule.as_vector()).tolist())
    assert BetaSchedule.from_vector([[0, 1], [8, 2]]) == BetaSchedule(0.0, 1.0, 8.0, 2.0)
    for name in ("start", "end", "steps"):
        with invalid(name, -1.0, "finite number >= 0"):
            BetaSchedule(**{name: -1.0})


def test_the_model_stores_its_schedule_and_fit_follows_it():
    x = _data_for("bernoulli", n=20)
    model = _tiny()
    model.set_beta_schedule(0.2, 0.6, 4, first_step=0)
    assert model.get_beta_schedule() == BetaSchedule(
        *np.float32([0.2, 0.6, 4.0, 0.0]).tolist())
    assert float(model.beta.numpy()) == pytest.approx(0.2)
    seen = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(float(self.model.beta.numpy()))

    model.compile(optimizer="adam")
    model.fit(x, epochs=2, batch_size=5, verbose=0, callbacks=[Record()])
    # β is set before each step from the optimizer's iterations t = 0, 1, 2, ...
    expected = [_closed_form(0.2, 0.6, 4.0, 0.0, t) for t in range(8)]
    np.testing.assert_allclose(seen, expected, atol=1e-6)
    model.set_beta_schedule(0.0, 1.0, 0)  # off: β keeps its value
    assert not model.get_beta_schedule().active
    assert float(model.beta.numpy()) == pytest.approx(0.6)


@pytest.mark.parametrize("steps_per_execution, jit_compile", [
    (1, False), pytest.param(3, True, marks=pytest.mark.slow)])
def test_history_records_beta_and_the_learning_rate_at_each_epochs_last_step(
        steps_per_execution, jit_compile):
    """Without any callback: the in-graph β warm-up and a learning-rate schedule, read back
    from `history` at each epoch's end against their closed forms."""
    x = _data_for("bernoulli", n=20)  # 4 steps of 5 per epoch
    model = _tiny()
    model.set_beta_schedule(0.0, 1.0, 10, first_step=0)
    schedule = keras.optimizers.schedules.ExponentialDecay(0.01, decay_steps=4, decay_rate=0.5)
    model.compile(optimizer=keras.optimizers.Adam(schedule), jit_compile=jit_compile,
                  steps_per_execution=steps_per_execution)
    history = model.fit(x, epochs=3, batch_size=5, verbose=0, shuffle=False).history
    # After epoch e the last step was t = 4e + 3 (β set before it); the optimizer has
    # then taken 4(e + 1) steps, and the learning rate is the schedule's at that count.
    np.testing.assert_allclose(history["beta"], [_closed_form(0.0, 1.0, 10.0, 0.0, 4 * e + 3)
                                                 for e in range(3)], atol=1e-6)
    np.testing.assert_allclose(history["learning_rate"], [0.01 * 0.5 ** (e + 1) for e in range(3)],
                               rtol=1e-6)
    iwae = _tiny(objective="iwae", k=2)
    iwae.compile(optimizer="adam")
    assert "beta" not in iwae.fit(x, epochs=1, batch_size=5, verbose=0).history  # no KL term


# ---------------------------------------------------------------------------
# fit / evaluate.


@pytest.mark.slow
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


@pytest.mark.slow
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


def test_the_first_fit_traces_the_train_step_once(monkeypatch):
    """The optimizer's variables exist before Keras traces the step (`_build_optimizer`): a
    first trace that created them would make TensorFlow trace the step a second time."""
    model = tfvae.build_vae((4,), 2, hidden_units=(8,), seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    assert not model.optimizer.built
    traces, step = [], tfvae.VAE.train_step

    def counted(self, data):
        traces.append(self.optimizer.built)
        return step(self, data)

    monkeypatch.setattr(tfvae.VAE, "train_step", counted)
    model.fit(unit_data(8, 4), epochs=2, batch_size=4, shuffle=False, verbose=0)
    assert traces == [True]  # one trace, with Adam's moments already there
    assert model.optimizer.iterations.numpy() == 4


@pytest.mark.slow
def test_same_seed_same_training_different_seed_differs():
    x = _data_for("bernoulli", n=32)

    def run(seed):
        model = _tiny(seed=seed)
        model.compile(optimizer="adam")
        return model.fit(x, epochs=2, batch_size=16, shuffle=False, verbose=0).history["loss"]

    np.testing.assert_allclose(run(7), run(7), rtol=1e-6)
    assert not np.allclose(run(7), run(8), rtol=1e-6)


def test_training_noise_depends_on_the_step_only_not_on_validation_passes():
    """A step's noise is a function of (seed, optimizer step): the validation passes between
    epochs (which draw noise too) do not change what training draws."""
    x = _data_for("bernoulli", n=24)

    def weights(**kwargs):
        model = _tiny(seed=3)
        model.compile(optimizer="adam")
        model.fit(x, epochs=3, batch_size=8, shuffle=False, verbose=0, **kwargs)
        return model.get_weights()

    for a, b in zip(weights(), weights(validation_data=x[:8])):
        np.testing.assert_array_equal(a, b)


def test_beta_tcvae_epoch_metrics_are_per_example_means_of_its_terms(digits):
    _, (x_val, _) = digits
    model = tfvae.build_vae((8, 8, 1), 3, hidden_units=(16,), seed=1, objective="beta_tcvae",
                            beta=0.5, mi_weight=2.0, tc_weight=6.0, dwkl_weight=0.5,
                            dataset_size=1000)
    model.compile(optimizer="adam")
    # 359 examples in batches of 50: a short last batch.
    reported = model.evaluate(x_val, batch_size=50, verbose=0, return_dict=True)
    assert set(reported) == {"loss", "elbo", "reconstruction", "kl", "mi", "tc", "dwkl"}
    assert all(np.isfinite(v) for v in reported.values())
    # The loss is linear in the terms, so their per-example means obey it too.
    penalty = 2.0 * reported["mi"] + 6.0 * reported["tc"] + 0.5 * reported["dwkl"]
    np.testing.assert_allclose(reported["loss"], -reported["reconstruction"] + 0.5 * penalty,
                               rtol=1e-4)
    np.testing.assert_allclose(reported["elbo"], reported["reconstruction"] - reported["kl"],
                               rtol=1e-4)
    # The analytic KL is deterministic: its epoch mean is exact.
    np.testing.assert_allclose(reported["kl"], model.elbo(x_val, seed=0)["kl"].numpy().mean(),
                               rtol=1e-4)


@pytest.mark.slow
def test_beta_tcvae_trains_the_same_under_xla_and_steps_per_execution(digits):
    (x_train, _), _ = digits
    x = x_train[:96]
    histories = {}
    for mode, jit_compile, steps in (("graph", False, 1), ("xla", True, 2)):
        model = tfvae.build_vae((8, 8, 1), 3, hidden_units=(16,), seed=4, objective="beta_tcvae",
                                tc_weight=6.0, dataset_size=len(x))
        model.set_beta_schedule(0.0, 1.0, 5, first_step=0)  # β warms the whole penalty up
        model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=jit_compile,
                      steps_per_execution=steps)
        assert model.jit_compile is jit_compile
        histories[mode] = model.fit(x, epochs=3, batch_size=32, shuffle=False, verbose=0).history
    graph, xla = histories["graph"], histories["xla"]
    assert set(xla) == set(graph) == {"loss", "elbo", "reconstruction", "kl", "mi", "tc", "dwkl",
                                      "beta", "learning_rate"}
    for key, values in graph.items():
        assert np.isfinite(values).all(), key
        np.testing.assert_allclose(xla[key], values, rtol=2e-4, atol=2e-4, err_msg=key)
    # 3 steps per epoch: β after epoch e was set before step t = 3e + 2.
    np.testing.assert_allclose(graph["beta"], [min((3 * e + 2) / 5, 1.0) for e in range(3)],
                               atol=1e-6)
    assert graph["elbo"][-1] > graph["elbo"][0]  # it trained, so agreeing means something


def test_beta_zero_makes_the_loss_the_negative_reconstruction():
    x = _data_for("bernoulli", n=16)
    model = _tiny(beta=0.0)
    model.compile(optimizer="adam")
    result = model.evaluate(x, batch_size=16, verbose=0, return_dict=True)
    np.testing.assert_allclose(result["loss"], -result["reconstruction"], rtol=1e-6)
    assert result["kl"] > 0


# ---------------------------------------------------------------------------
# fit / evaluate / predict refuse data of the wrong shape before Keras traces.


@pytest.mark.parametrize("method", TRAINING_METHODS)
@pytest.mark.parametrize("shape", [(8, 5), (8,), (8, 4, 1), (8, 2, 2)])
def test_vector_model_wrong_x_shape(vec_model, method, shape):
    assert_wrong_x_shape_refused(X_METHODS[method], vec_model, shape, "(4,)")


@pytest.mark.parametrize("method", TRAINING_METHODS)
@pytest.mark.parametrize("shape", [(8, 3, 3), (8, 9), (8, 3, 3, 2), (8, 4, 4, 1), (3, 3, 1)])
def test_image_model_wrong_x_shape(img_model, method, shape):
    assert_wrong_x_shape_refused(X_METHODS[method], img_model, shape, "(3, 3, 1)")


@pytest.mark.parametrize("method", ["fit", "evaluate"])
def test_wrong_x_shape_as_tensor_in_fit_and_evaluate(method):
    model = _fresh_vec_model()
    # Traced inputs have an unknown batch size, so only check the event part.
    with raises("`x`", "(4,)", ", 5)"):
        X_METHODS[method](model, tf.fill((8, 5), 0.5))


def test_wrong_x_shape_as_dataset_in_fit():
    model = _fresh_vec_model()
    dataset = tf.data.Dataset.from_tensor_slices(np.full((8, 5), 0.5, "float32")).batch(4)
    with raises("`x`", "(4,)", ", 5)"):
        model.fit(dataset, epochs=1, verbose=0)


def _fit_good(model):
    history = model.fit(unit_data(), epochs=1, batch_size=4, shuffle=False, verbose=0).history
    return np.concatenate([history["loss"], *[w.ravel() for w in model.get_weights()]])


def _predict_good(model):
    return model.predict(np.full((8, 3, 3, 1), 0.5, "float32"), verbose=0)


@pytest.mark.parametrize(
    "make_model, bad_call, good_call",
    [
        (
            _fresh_vec_model,
            lambda m: m.fit(tf.fill((8, 5), 0.5), epochs=1, verbose=0),
            _fit_good,
        ),
        (
            _fresh_vec_model,
            lambda m: m.fit(
                tf.data.Dataset.from_tensor_slices(tf.fill((8, 5), 0.5)).batch(4),
                epochs=1,
                verbose=0,
            ),
            _fit_good,
        ),
        (
            _fresh_img_model,
            # Missing channel axis: the same 9 values per example.
            lambda m: m.predict(np.full((8, 3, 3), 0.5, "float32"), verbose=0),
            _predict_good,
        ),
    ],
    ids=["fit_tensor", "fit_dataset", "predict_array"],
)
def test_model_still_works_after_a_rejected_call(make_model, bad_call, good_call):
    # A call with bad data must be refused with a clear ValueError and leave the
    # model usable: calling again with good data must work, not fail inside a
    # tf.function that was traced (or relaxed to an unknown shape) for the bad
    # data, and must give exactly what a model that never saw the bad call gives.
    model = make_model()
    with pytest.raises(ValueError, match="Received an invalid value for `x`"):
        bad_call(model)
    got = good_call(model)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, good_call(make_model()), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "validation_data",
    [
        np.full((8, 5), 0.5, "float32"),
        (np.full((8, 5), 0.5, "float32"),),
        (np.full((8, 5), 0.5, "float32"), None),
        (np.full((8, 4, 1), 0.5, "float32"),),
    ],
    ids=["array", "tuple1", "tuple2", "rank3"],
)
def test_fit_wrong_validation_data_shape(vec_model, validation_data):
    arrays = validation_data if isinstance(validation_data, tuple) else (validation_data,)
    with raises("`validation_data`", "(4,)", repr(arrays[0].shape)):
        vec_model.fit(
            unit_data(), validation_data=validation_data, epochs=1, verbose=0
        )


def test_fit_wrong_validation_data_shape_as_tensor():
    model = _fresh_vec_model()
    with raises("`validation_data`", "(4,)", ", 5)"):
        model.fit(
            unit_data(),
            validation_data=(tf.fill((8, 5), 0.5),),
            epochs=1,
            batch_size=4,
            verbose=0,
        )


def test_good_data_passes_fit_evaluate_and_predict(vec_model):
    x = unit_data()
    x[0, :2] = [0.0, 1.0]  # the closed interval's end points are valid
    history = vec_model.fit(
        x, validation_data=(x,), epochs=1, batch_size=4, verbose=0
    )
    assert np.isfinite(history.history["val_loss"][-1])
    assert np.isfinite(vec_model.evaluate(x, batch_size=4, verbose=0)[0])
    x_img = np.full((2, 3, 3, 1), 0.5, "float32")
    # A fresh model: the shared one's predict function was traced for bad data.
    assert _fresh_img_model().predict(x_img, verbose=0).shape == (2, 3, 3, 1)


# ---------------------------------------------------------------------------
# The learning-rate schedule of a run (`--lr-schedule`).


def _cosine(lr0, total, t):
    """The cosine decay to 0.1 · lr0 over `total` steps, written out (numpy)."""
    done = np.minimum(t, total) / total
    return lr0 * (0.1 + 0.9 * 0.5 * (1.0 + np.cos(np.pi * done)))


def test_the_cosine_schedule_is_its_closed_form_at_the_start_middle_and_end():
    schedule = tfvae.training.learning_rate_schedule("cosine", 3e-3, 40)
    steps = np.array([0, 7, 20, 33, 40, 41, 400])
    got = np.array([float(schedule(int(t))) for t in steps])
    np.testing.assert_allclose(got, _cosine(3e-3, 40, steps), rtol=1e-6)
    # The three landmarks: lr0 at the first step, the mean of lr0 and 0.1 lr0 halfway,
    # 0.1 lr0 from the last step on.
    np.testing.assert_allclose(got[[0, 2, 4, 6]], [3e-3, 0.55 * 3e-3, 3e-4, 3e-4], rtol=1e-6)
    # Saved with the optimizer (a .keras file holds its config), read back the same.
    again = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule))
    assert float(again(20)) == pytest.approx(float(schedule(20)), rel=1e-7)
    assert tfvae.training.learning_rate_schedule("constant", 3e-3, None) == 3e-3


@pytest.mark.parametrize("args, name, value", [
    (("linear", 1e-3, 10), "lr_schedule", "linear"),
    (("cosine", 0.0, 10), "learning_rate", 0.0),
    (("cosine", 1e-3, 0), "total_steps", 0),
])
def test_a_bad_learning_rate_schedule_is_refused_by_name(args, name, value):
    with invalid(name, value):
        tfvae.training.learning_rate_schedule(*args)
