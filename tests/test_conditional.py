"""Conditional VAEs: q(z|x, y) and p(x|z, y), checked against hand-wired networks and data."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfvae
from tfvae import objectives


def _model(event_shape=(6,), condition_dim=3, conv=False, seed=0):
    posterior = tfvae.DiagonalGaussianPosterior(2)
    likelihood = tfvae.BernoulliLikelihood(event_shape)
    encoder = (tfvae.ConvEncoder(posterior.params_size, (4,)) if conv
               else tfvae.MLP(posterior.params_size, (8,)))
    return tfvae.VAE(encoder, tfvae.MLP(likelihood.params_size, (8,)), posterior, likelihood,
                     condition_dim=condition_dim, seed=seed)


def _data(event_shape, n=5, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.uniform(size=(n,) + event_shape) > 0.5).astype("float32")
    return x, rng.integers(0, 3, n)


@pytest.mark.parametrize("event_shape, conv", [((6,), False), ((4, 4, 1), True)])
def test_elbo_is_the_hand_wired_conditional_elbo(event_shape, conv):
    model = _model(event_shape, conv=conv)
    x, labels = _data(event_shape)
    onehot = np.eye(3, dtype="float32")[labels]
    if conv:  # y enters a conv encoder as constant extra channels
        encoder_input = np.concatenate(
            [x, np.broadcast_to(onehot[:, None, None, :], (5, 4, 4, 3))], -1)
    else:
        encoder_input = np.concatenate([x, onehot], -1)
    q = model.posterior(model.encoder(tf.constant(encoder_input)))
    eps = np.random.default_rng(1).normal(size=(4, 5, 2)).astype("float32")

    def decode(z):  # z is [L * batch, d], sample-major: row l * batch + b is example b
        return model.likelihood(model.decoder(tf.concat([z, np.tile(onehot, (4, 1))], -1)))

    expected = objectives.elbo(tf.constant(x), q, decode, model.prior.distribution(), noise=eps)
    got = objectives.elbo(tf.constant(x), model.encode(x, y=labels), model.likelihood_fn(
        model.conditioning.prepare(labels)), model.prior.distribution(), noise=eps)
    for key in ("elbo", "reconstruction", "kl"):
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-6, atol=1e-6)
    # One-hot float vectors and integer labels are the same condition.
    np.testing.assert_allclose(model.elbo(x, y=labels, seed=2)["elbo"],
                               model.elbo(x, y=onehot, seed=2)["elbo"], rtol=1e-6)


def test_the_condition_reaches_encoder_and_decoder():
    model = _model()
    x, _ = _data((6,))
    zeros, ones = np.zeros(5, "int64"), np.ones(5, "int64")
    assert np.max(np.abs(model.encode(x, y=zeros).mean() - model.encode(x, y=ones).mean())) > 1e-3
    assert np.max(np.abs(model.sample(5, y=0, seed=0) - model.sample(5, y=1, seed=0))) > 1e-3
    # One label for all n equals n copies of it (same seed: same z).
    np.testing.assert_allclose(model.sample(5, y=2, seed=0), model.sample(5, y=[2] * 5, seed=0))
    np.testing.assert_allclose(model.predict((x, zeros), verbose=0), model((x, zeros)), atol=1e-6)
    np.testing.assert_allclose(model.reconstruct(x, y=zeros), model((x, zeros)), atol=1e-6)


def test_a_label_conditional_model_uses_the_label_on_digits():
    (x, y), (x_val, y_val) = tfvae.data.load_digits()
    x, x_val = (x > 0.5).astype("float32"), (x_val > 0.5).astype("float32")
    model = tfvae.build_vae((8, 8, 1), 2, hidden_units=(64,), seed=0, condition_dim=10)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    history = model.fit(x, y, epochs=25, batch_size=64, validation_data=(x_val, y_val),
                        verbose=0).history
    assert history["val_elbo"][-1] > history["val_elbo"][0] + 5
    right = model.elbo(x_val, y=y_val, num_samples=8, seed=0)["elbo"].numpy().mean()
    wrong = model.elbo(x_val, y=(y_val + 1) % 10, num_samples=8, seed=0)["elbo"].numpy().mean()
    # With a 2-D z, the label carries much of the digit: the wrong one costs nats.
    assert right > wrong + 3.0
    # Class-conditional samples look like their class: nearest class mean in pixel space.
    means = np.stack([x[y == c].mean(0) for c in range(10)])
    samples = model.sample(100, y=np.repeat(np.arange(10), 10), seed=0).numpy()
    nearest = np.argmin(((samples[:, None] - means[None]) ** 2).sum((2, 3, 4)), axis=1)
    assert np.mean(nearest == np.repeat(np.arange(10), 10)) > 0.7


def test_conditional_model_round_trips(tmp_path):
    model = _model()
    x, labels = _data((6,), n=32)
    model.compile(optimizer="adam")
    model.fit(x, labels, epochs=1, batch_size=8, verbose=0)
    path = str(tmp_path / "c.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.condition_dim == 3
    np.testing.assert_allclose(loaded.elbo(x, y=labels, seed=0)["elbo"],
                               model.elbo(x, y=labels, seed=0)["elbo"], rtol=1e-6)


@pytest.mark.parametrize("call, match", [
    (lambda m, x: m.elbo(x), "needs `y`"),
    (lambda m, x: m.elbo(x, y=[0, 1, 2, 3, 0]), r"labels in \[0, 3\)"),
    (lambda m, x: m.elbo(x, y=np.zeros((5, 4), "float32")), r"shape \(3,\) or \(batch, 3\)"),
    (lambda m, x: m.elbo(x, y=np.zeros((5, 1), "int64")), r"shape \(\) or \(batch,\)"),
    (lambda m, x: m.sample(4, y=[0, 1]), r"one condition per example \(4\)"),
    (lambda m, x: m.elbo(x, y=[0, 1]), r"one condition per example \(5\)"),
    (lambda m, x: m.fit(x, np.array([0, 1]), verbose=0), r"one condition per example \(5\)"),
    (lambda m, x: m.decode(np.zeros((5, 2), "float32"), y=[0, 1]), "one condition per example"),
    (lambda m, x: m.elbo(x, y=np.full((5, 3), np.nan, "float32")), "NaN or infinite"),
    (lambda m, x: m.fit(tf.data.Dataset.from_tensor_slices(x).batch(2), verbose=0),
     r"must yield \(x, y\) pairs"),
    (lambda m, x: m.fit(tf.data.Dataset.from_tensor_slices((x, np.zeros((5, 1), "int64"))).batch(2),
                        verbose=0), r"labels of shape \(\) or \(batch,\)"),
    (lambda m, x: m.fit(x, np.zeros(5, "int64"), validation_data=(x,), verbose=0),
     "validation_data y"),
    (lambda m, x: m.fit(x, epochs=1, verbose=0), "needs `y`"),
    (lambda m, x: m((x,)), r"called on \(x, y\)"),
])
def test_conditional_input_errors(call, match):
    model = _model()
    with pytest.raises(ValueError, match=match):
        call(model, _data((6,))[0])


def test_unconditional_models_refuse_y_and_bad_conditions_are_refused():
    x, labels = _data((6,))
    plain = tfvae.build_vae((6,), 2, hidden_units=(4,))
    with pytest.raises(ValueError, match="not conditional"):
        plain.elbo(x, y=labels)
    with pytest.raises(ValueError, match="pseudo-inputs carry no y"):
        tfvae.build_vae((6,), 2, hidden_units=(4,), prior="vamp", condition_dim=3)
    with pytest.raises(ValueError, match="condition_dim"):
        tfvae.build_vae((6,), 2, hidden_units=(4,), condition_dim=0)
    with pytest.raises(ValueError, match="vectors .* or images"):
        tfvae.VAE(tfvae.MLP(4), tfvae.MLP(12), tfvae.DiagonalGaussianPosterior(2),
                  tfvae.BernoulliLikelihood((3, 4)), condition_dim=2)


def test_a_rejected_dataset_leaves_the_model_trainable_and_other_call_forms_work(tmp_path):
    model = _model()
    x, labels = _data((6,), n=8)
    model.compile(optimizer="adam")
    with pytest.raises(ValueError, match="pairs"):
        model.fit(tf.data.Dataset.from_tensor_slices(x).batch(4), verbose=0)
    model.fit(tf.data.Dataset.from_tensor_slices((x, labels)).batch(4), verbose=0)
    np.testing.assert_allclose(model.predict([x, labels], verbose=0), model((x, labels)),
                               atol=1e-6)
    # Keras's own export takes (x, y) for a conditional model.
    model.export(str(tmp_path / "keras_export"), verbose=False)
    loaded = tf.saved_model.load(str(tmp_path / "keras_export"))
    onehot = np.eye(3, dtype="float32")[labels]
    np.testing.assert_allclose(loaded.serve((x, onehot)), model((x, labels)), atol=1e-6)
