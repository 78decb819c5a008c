"""tfvae.conditioning and conditional VAEs: q(z|x, y) and p(x|z, y), checked against numpy and
hand-wired networks."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfvae
from tfvae import objectives
from tfvae.conditioning import Conditioning

from helpers import BAD_POSITIVE_INTS, invalid, raises

C = 3


# ---------------------------------------------------------------------------
# Conditioning on its own, against numpy.


def test_unconditional_takes_no_y_and_leaves_inputs_alone():
    conditioning = Conditioning(None)
    assert not conditioning.active and conditioning.condition_dim is None
    assert conditioning.prepare(None, 4) is None
    assert conditioning.spec() is None
    x = tf.constant(np.arange(6.0).reshape(2, 3), tf.float32)
    assert conditioning.split(x) == (x, None)
    assert conditioning.encoder_input(x, None) is x
    assert conditioning.decoder_input(x, None) is x
    with raises("`y`", "not conditional", "condition_dim=None", "Received: y of type list"):
        conditioning.prepare([0, 1], 2)


@pytest.mark.parametrize("condition_dim", BAD_POSITIVE_INTS[:3] + BAD_POSITIVE_INTS[4:])
def test_condition_dim_must_be_a_positive_integer(condition_dim):
    with invalid("condition_dim", condition_dim):
        Conditioning(condition_dim)


@pytest.mark.parametrize("labels", [[2, 0, 1, 1], np.array([2, 0, 1, 1], "int64"),
                                    np.array([2, 0, 1, 1], "uint8"),
                                    tf.constant([2, 0, 1, 1], tf.int32)],
                         ids=["list", "int64", "uint8", "tensor"])
def test_labels_are_one_hot_encoded(labels):
    y = Conditioning(C).prepare(labels, 4)
    assert y.dtype == tf.float32 and y.shape == (4, C)
    np.testing.assert_array_equal(y, np.eye(C, dtype="float32")[[2, 0, 1, 1]])


def test_one_label_or_vector_is_repeated_for_the_batch():
    conditioning = Conditioning(C)
    np.testing.assert_array_equal(conditioning.prepare(1, 5), np.tile([[0.0, 1.0, 0.0]], (5, 1)))
    np.testing.assert_array_equal(conditioning.prepare(np.int64(2), 2), [[0, 0, 1], [0, 0, 1]])
    vector = np.array([0.25, -1.0, 3.0], "float32")
    np.testing.assert_array_equal(conditioning.prepare(vector, 4), np.tile(vector, (4, 1)))
    # Without a batch size a single condition is one row.
    np.testing.assert_array_equal(conditioning.prepare(0), [[1.0, 0.0, 0.0]])


def test_float_vectors_are_used_as_given():
    vectors = np.random.default_rng(0).normal(size=(4, C))
    y = Conditioning(C).prepare(vectors, 4)  # float64 in, float32 out
    assert y.dtype == tf.float32
    np.testing.assert_allclose(y, vectors.astype("float32"))


@pytest.mark.parametrize("y, fragments", [
    (None, ["needs `label`", "condition_dim=3", "label=None"]),
    ([0, 1, 3, 1], ["labels in [0, 3)", "values in [0, 3]"]),
    ([-1, 0, 0, 0], ["labels in [0, 3)", "values in [-1, 0]"]),
    ([0, 1], ["one condition per example (4)", "2 rows"]),
    (np.zeros((4, 1), "int64"), ["labels of shape () or (batch,)", "(4, 1)"]),
    (np.zeros((4, 4), "float32"), ["shape (3,) or (batch, 3)", "(4, 4)", "float32"]),
    (np.zeros((2, 2, 3), "float32"), ["shape (3,) or (batch, 3)", "(2, 2, 3)"]),
    (np.array(["a", "b", "c", "d"]), ["integer labels or float vectors", "dtype <U1"]),
    (np.full((4, 3), np.nan, "float32"), ["finite condition vectors", "NaN or infinite"]),
    (np.array([[0.0, np.inf, 0.0]] * 4), ["NaN or infinite"]),
])
def test_bad_conditions_name_the_argument(y, fragments):
    with raises("`label`", *fragments):
        Conditioning(C).prepare(y, 4, name="label")


def test_labels_out_of_range_fail_in_a_graph_too():
    prepare = tf.function(lambda y: Conditioning(C).prepare(y, 2))
    np.testing.assert_array_equal(prepare(tf.constant([2, 0])), [[0, 0, 1], [1, 0, 0]])
    with pytest.raises(tf.errors.InvalidArgumentError, match="labels must be < 3"):
        prepare(tf.constant([3, 0]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="labels must be >= 0"):
        prepare(tf.constant([-1, 0]))


def test_labels_out_of_range_get_nan_rows_under_xla_where_asserts_are_dropped():
    prepare = tf.function(lambda y: Conditioning(C).prepare(y, 4), jit_compile=True)
    y = prepare(tf.constant([2, 3, -1, 0])).numpy()
    np.testing.assert_array_equal(y[[0, 3]], [[0, 0, 1], [1, 0, 0]])
    assert np.isnan(y[1]).all() and np.isnan(y[2]).all()  # not one_hot's silent zero rows
    np.testing.assert_array_equal(Conditioning.valid_rows(y), [True, False, False, True])
    assert Conditioning.valid_rows(None) is None


def test_a_user_pipeline_with_a_bad_label_gives_nan_terms_for_that_row_under_xla():
    model = tfvae.build_vae((4,), 2, hidden_units=(8,), condition_dim=C, seed=0)
    model.compile(optimizer="adam", jit_compile=True)
    x = np.random.default_rng(0).uniform(size=(6, 4)).astype("float32")
    labels = np.array([0, 1, 2, 0, 1, 2])
    good = model.evaluate(tf.data.Dataset.from_tensor_slices((x, labels)).batch(6),
                          verbose=0, return_dict=True)
    assert np.isfinite(good["loss"])
    bad = labels.copy()
    bad[4] = 7  # a label the model has no class for
    result = model.evaluate(tf.data.Dataset.from_tensor_slices((x, bad)).batch(6), verbose=0,
                            return_dict=True)
    assert np.isnan(result["loss"]) and np.isnan(result["elbo"])
    # The same row through the tensor seams: only that row's terms are NaN.
    step = tf.function(lambda x, y: model.elbo_terms(x, model.conditioning.prepare(y, 6),
                                                     seed=0)["elbo"], jit_compile=True)
    elbo = step(tf.constant(x), tf.constant(bad)).numpy()
    assert np.isnan(elbo[4]) and np.isfinite(np.delete(elbo, 4)).all()


@pytest.mark.parametrize("shape, dtype", [((), "int32"), ((5,), "int64"), ((3,), "float32"),
                                          ((None, 3), "float32"), ((5, 3), "float64")])
def test_check_spec_accepts_labels_and_vectors(shape, dtype):
    assert Conditioning(C).check_spec(shape, dtype) is None


@pytest.mark.parametrize("shape, dtype", [((5, 1), "int32"), ((None, 4), "float32"), ((), "float32"),
                                          ((5, 3), "string"), ((2, 5, 3), "float32")])
def test_check_spec_refuses_other_shapes_and_dtypes(shape, dtype):
    with raises("`y`", str(tuple(shape))):
        Conditioning(C).check_spec(shape, dtype)


def test_encoder_input_appends_y_to_vectors_and_as_channels_to_images():
    conditioning = Conditioning(C)
    rng = np.random.default_rng(1)
    y = np.eye(C, dtype="float32")[[1, 2]]
    vectors = rng.normal(size=(2, 5)).astype("float32")
    np.testing.assert_array_equal(conditioning.encoder_input(tf.constant(vectors), tf.constant(y)),
                                  np.concatenate([vectors, y], -1))
    images = rng.normal(size=(2, 4, 3, 2)).astype("float32")
    got = conditioning.encoder_input(tf.constant(images), tf.constant(y)).numpy()
    assert got.shape == (2, 4, 3, 2 + C)
    np.testing.assert_array_equal(got[..., :2], images)
    for b in range(2):  # every pixel carries the example's y
        np.testing.assert_array_equal(got[b, ..., 2:], np.broadcast_to(y[b], (4, 3, C)))


def test_decoder_input_repeats_y_for_sample_major_latents():
    y = np.eye(C, dtype="float32")[[0, 2]]
    z = np.random.default_rng(2).normal(size=(3 * 2, 4)).astype("float32")  # L = 3 samples, batch 2
    got = Conditioning.decoder_input(tf.constant(z), tf.constant(y)).numpy()
    # Row l * batch + b is example b.
    expected = np.concatenate([z, y[np.arange(6) % 2]], -1)
    np.testing.assert_array_equal(got, expected)


def test_split_and_spec_of_a_conditional_model():
    conditioning = Conditioning(C)
    x, y = np.zeros((2, 4)), np.zeros(2)
    assert conditioning.split((x, y)) == (x, y) and conditioning.split([x, y]) == (x, y)
    for inputs in (x, (x,), (x, y, y)):
        with raises("`inputs`", "called on (x, y)"):
            conditioning.split(inputs)
    spec = conditioning.spec()
    assert spec.shape.as_list() == [None, C] and spec.dtype == tf.float32 and spec.name == "y"


# ---------------------------------------------------------------------------
# Conditional VAEs.


def _model(event_shape=(6,), condition_dim=C, conv=False, seed=0):
    posterior = tfvae.DiagonalGaussianPosterior(2)
    likelihood = tfvae.BernoulliLikelihood(event_shape)
    encoder = (tfvae.ConvEncoder(posterior.params_size, (4,)) if conv
               else tfvae.MLP(posterior.params_size, (8,)))
    return tfvae.VAE(encoder, tfvae.MLP(likelihood.params_size, (8,)), posterior, likelihood,
                     condition_dim=condition_dim, seed=seed)


def _data(event_shape, n=5, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.uniform(size=(n,) + event_shape) > 0.5).astype("float32")
    return x, rng.integers(0, C, n)


@pytest.mark.parametrize("event_shape, conv", [((6,), False), ((4, 4, 1), True)])
def test_elbo_is_the_hand_wired_conditional_elbo(event_shape, conv):
    model = _model(event_shape, conv=conv)
    x, labels = _data(event_shape)
    onehot = np.eye(C, dtype="float32")[labels]
    if conv:  # y enters a conv encoder as constant extra channels
        encoder_input = np.concatenate(
            [x, np.broadcast_to(onehot[:, None, None, :], (5, 4, 4, C))], -1)
    else:
        encoder_input = np.concatenate([x, onehot], -1)
    parameters = model.posterior.parameters(model.encoder(tf.constant(encoder_input)))
    q = model.posterior.distribution(parameters)
    eps = np.random.default_rng(1).normal(size=(4, 5, 2)).astype("float32")

    def decode(z):  # z is [L * batch, d], sample-major: row l * batch + b is example b
        return model.likelihood(model.decoder(tf.concat([z, np.tile(onehot, (4, 1))], -1)))

    expected = objectives.elbo(tf.constant(x), q, decode, model.prior.distribution(), noise=eps,
                               reparameterize=lambda e: parameters["loc"] + parameters["scale"] * e)
    got_q, got_sampler = model.posterior_sampler(*model.prepare_inputs(x, labels))
    got = objectives.elbo(tf.constant(x), got_q, model.likelihood_fn(
        model.conditioning.prepare(labels)), model.prior.distribution(), noise=eps,
        reparameterize=got_sampler)
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


@pytest.mark.slow
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


def test_unconditional_models_refuse_y():
    x, labels = _data((6,))
    plain = tfvae.build_vae((6,), 2, hidden_units=(4,))
    with pytest.raises(ValueError, match="not conditional"):
        plain.elbo(x, y=labels)


def test_a_rejected_dataset_leaves_the_model_trainable_and_other_call_forms_work():
    model = _model()
    x, labels = _data((6,), n=8)
    model.compile(optimizer="adam")
    with pytest.raises(ValueError, match="pairs"):
        model.fit(tf.data.Dataset.from_tensor_slices(x).batch(4), verbose=0)
    history = model.fit(tf.data.Dataset.from_tensor_slices((x, labels)).batch(4), verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    np.testing.assert_allclose(model.predict([x, labels], verbose=0), model((x, labels)),
                               atol=1e-6)


def test_float_labels_one_per_example_are_refused_not_read_as_one_vector():
    # 0.2.0 read ten float labels as one 10-vector for every row (issue 20 finding 10).
    model = tfvae.build_vae((4,), 2, hidden_units=(8,), condition_dim=10, seed=0)
    x = (np.arange(40).reshape(10, 4) % 2).astype("float32")
    with raises("`y`", "look like class labels", "astype(int)"):
        model.elbo(x, y=np.arange(10.0))
    # A genuine single vector (not one whole number per example) is still taken.
    vector = np.full(10, 0.1)
    assert model.elbo(x, y=vector)["elbo"].shape == (10,)
