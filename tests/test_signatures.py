"""tfvae.signatures: a model's call input specs, and Keras' own export of conditional models."""

import numpy as np
import tensorflow as tf

import tfvae


def test_input_specs_are_x_or_x_and_y_with_a_dynamic_batch():
    plain = tfvae.build_vae((3, 2, 1), 2, hidden_units=(4,), seed=0)
    spec = plain.input_specs()
    assert isinstance(spec, tf.TensorSpec)
    assert spec.shape.as_list() == [None, 3, 2, 1] and spec.dtype == tf.float32
    assert spec.name == "x"
    conditional = tfvae.build_vae((5,), 2, hidden_units=(4,), seed=0, condition_dim=4)
    x_spec, y_spec = conditional.input_specs()
    assert x_spec.shape.as_list() == [None, 5] and x_spec.name == "x"
    assert y_spec.shape.as_list() == [None, 4] and y_spec.dtype == tf.float32
    assert y_spec.name == "y"


def test_keras_export_of_a_conditional_model_takes_x_and_y(tmp_path):
    posterior = tfvae.DiagonalGaussianPosterior(2)
    likelihood = tfvae.BernoulliLikelihood((6,))
    model = tfvae.VAE(tfvae.MLP(posterior.params_size, (8,)), tfvae.MLP(6, (8,)), posterior,
                      likelihood, condition_dim=3, seed=0)
    rng = np.random.default_rng(0)
    x = (rng.uniform(size=(8, 6)) > 0.5).astype("float32")
    labels = rng.integers(0, 3, 8)
    # Keras's own export takes (x, y) for a conditional model.
    model.export(str(tmp_path / "keras_export"), verbose=False)
    loaded = tf.saved_model.load(str(tmp_path / "keras_export"))
    onehot = np.eye(3, dtype="float32")[labels]
    np.testing.assert_allclose(loaded.serve((x, onehot)), model((x, labels)), atol=1e-6)
    # With a dynamic batch.
    np.testing.assert_allclose(loaded.serve((x[:3], onehot[:3])), model((x[:3], labels[:3])),
                               atol=1e-6)
