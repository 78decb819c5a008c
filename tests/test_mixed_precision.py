"""Mixed precision: networks in float16/bfloat16, distributions, log-probs and KL in float32."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfvae


# Multi-epoch training on the digits in three precisions: the whole module is slow.
pytestmark = pytest.mark.slow

@pytest.fixture
def policy(request):
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(request.param)
    yield request.param
    keras.mixed_precision.set_global_policy(previous)


@pytest.fixture(scope="module")
def digits():
    return tfvae.data.load_digits()


def _train(digits, architecture="conv", epochs=4, jit=False):
    (x_train, _), (x_val, _) = digits
    model = tfvae.build_vae((8, 8, 1), 8, hidden_units=(64,), filters=(16, 32),
                            architecture=architecture, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(2e-3), jit_compile=jit)
    history = model.fit(x_train, epochs=epochs, batch_size=64, verbose=0).history
    return model, history, model.evaluate(x_val, verbose=0, return_dict=True)


@pytest.fixture(scope="module")
def float32_reference(digits):
    return _train(digits)[2]


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"], indirect=True)
def test_low_precision_networks_float32_densities(policy, digits, float32_reference):
    model, history, result = _train(digits)
    low = "bfloat16" if policy == "mixed_bfloat16" else "float16"
    assert model.encoder.compute_dtype == low and model.decoder.compute_dtype == low
    assert model.posterior.compute_dtype == "float32" and model.likelihood.compute_dtype == "float32"
    assert all(v.dtype == "float32" for v in model.trainable_variables)
    x = digits[1][0][:16]
    assert model.encoder(x).dtype == low
    terms = model.elbo(x, seed=0)
    assert all(t.dtype == tf.float32 for t in terms.values())
    assert model.encode(x).dtype == tf.float32 and model.decode(model.encode(x).mean()).dtype == tf.float32
    # float16 trains with dynamic loss scaling; bfloat16 has float32's range and needs none.
    is_scaled = isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert is_scaled == (policy == "mixed_float16")
    assert np.all(np.isfinite(history["loss"]))
    # Close to the float32 run: low precision changes the held-out ELBO by far
    # less than training moved it (about 18 nats in these epochs).
    assert abs(result["elbo"] - float32_reference["elbo"]) < 0.5


@pytest.mark.parametrize("policy", ["mixed_bfloat16"], indirect=True)
def test_low_precision_with_xla_and_save_load(policy, digits, tmp_path):
    model, history, _ = _train(digits, architecture="mlp", epochs=1, jit=True)
    assert np.all(np.isfinite(history["loss"]))
    model.save(tmp_path / "m.keras")
    keras.mixed_precision.set_global_policy("float32")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.encoder.compute_dtype == "bfloat16"
    x = digits[1][0][:8]
    np.testing.assert_array_equal(loaded.elbo(x, seed=1)["elbo"], model.elbo(x, seed=1)["elbo"])
