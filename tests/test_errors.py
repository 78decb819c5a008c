"""Bad input fails early with a clear, Keras-style `ValueError`.

The project's rule: the message names the argument, the value received and
what was expected, e.g.::

    Received an invalid value for `latent_dim`, expected a positive integer.
    Received: latent_dim=-3

and never surfaces as a stack trace from deep inside TensorFlow. Each test
checks the exception type and that the message contains the argument's name
(in backticks) and the received value (its repr, or its shape / range for
data). A few contrast tests check that the corresponding good inputs pass, so
the suite cannot pass by everything raising.
"""

import contextlib
import math
import re

import numpy as np
import pytest
import tensorflow as tf

import tfvae
from tfvae import builders
from tfvae import heads
from tfvae import networks
from tfvae import random as tfvae_random

# Values that are not positive integers (0 and negatives, a float, None, a
# numeric string and a bool, which Python treats as an int).
BAD_POSITIVE_INTS = [0, -3, 2.5, None, "64", True]
# Values that are not finite numbers >= 0.
BAD_NON_NEGATIVE_FLOATS = [-1.0, -1e-9, math.nan, math.inf, None, "1.0", True]


def raises(*fragments):
    """`pytest.raises(ValueError)` whose message contains every fragment, in any order."""
    pattern = "(?s)" + "".join(f"(?=.*{re.escape(str(f))})" for f in fragments)
    return pytest.raises(ValueError, match=pattern)


def invalid(name, value, *more):
    """A ValueError naming `name` in backticks and showing `name=repr(value)`."""
    return raises(f"`{name}`", f"{name}={value!r}", *more)


def _bernoulli_data(n=8, d=4, seed=0):
    return np.random.default_rng(seed).uniform(0.0, 1.0, (n, d)).astype("float32")


# ---------------------------------------------------------------------------
# Fixtures: tiny models, each built once per module.


@pytest.fixture(scope="module")
def vec_model():
    model = tfvae.build_vae((4,), 2, hidden_units=(8,), seed=0)
    model.compile(optimizer="adam")
    return model


@pytest.fixture(scope="module")
def img_model():
    model = tfvae.build_vae((3, 3, 1), 2, hidden_units=(8,), seed=0)
    model.compile(optimizer="adam")
    return model


@pytest.fixture(scope="module")
def likelihood_models():
    """One tiny (4,)-data model per likelihood whose data checks differ."""
    models = {}
    for name in (
        "bernoulli",
        "continuous_bernoulli",
        "gaussian",
        "categorical",
        "discretized_logistic",
    ):
        model = tfvae.build_vae((4,), 2, likelihood=name, hidden_units=(8,), seed=0)
        model.compile(optimizer="adam")
        models[name] = model
    return models


def _fresh_vec_model():
    """For tests that may leave a model's compiled train function unusable."""
    model = tfvae.build_vae((4,), 2, hidden_units=(8,), seed=0)
    model.compile(optimizer="adam")
    return model


def _fresh_img_model():
    return tfvae.build_vae((3, 3, 1), 2, hidden_units=(8,), seed=0)


# ---------------------------------------------------------------------------
# The message format itself.


def test_message_is_keras_style():
    with pytest.raises(ValueError) as excinfo:
        tfvae.build_vae((4,), -3)
    assert str(excinfo.value) == (
        "Received an invalid value for `latent_dim`, expected a positive integer. "
        "Received: latent_dim=-3"
    )


# ---------------------------------------------------------------------------
# build_vae arguments.


@pytest.mark.parametrize("latent_dim", BAD_POSITIVE_INTS)
def test_build_vae_bad_latent_dim(latent_dim):
    with invalid("latent_dim", latent_dim, "positive integer"):
        tfvae.build_vae((4,), latent_dim, hidden_units=(8,))


@pytest.mark.parametrize(
    "input_shape",
    [(), (0, 8), (4, -1), (2.5,), ("4",), "abc", None, 0, -3, True],
)
def test_build_vae_bad_input_shape(input_shape):
    # An int `n` is accepted as `(n,)`, so the message may show `(-3,)` for
    # -3, which still contains the received value.
    with raises("`input_shape`", repr(input_shape), "shape"):
        tfvae.build_vae(input_shape, 2, hidden_units=(8,))


@pytest.mark.parametrize("likelihood", ["gausian", "Bernoulli", "poisson", None, 3])
def test_build_vae_unknown_likelihood_lists_known_names(likelihood):
    known = [repr(name) for name in builders.LIKELIHOODS]
    with invalid("likelihood", likelihood, *known):
        tfvae.build_vae((4,), 2, likelihood=likelihood, hidden_units=(8,))


@pytest.mark.parametrize(
    "argument, value, choices",
    [
        ("architecture", "transformer", builders.ARCHITECTURES),
        ("architecture", None, builders.ARCHITECTURES),
        ("posterior", "lowrank", tuple(builders.POSTERIORS)),
        ("posterior", "Diagonal", tuple(builders.POSTERIORS)),
        ("prior", "vampire", builders.PRIORS),
        ("prior", None, builders.PRIORS),
    ],
)
def test_build_vae_unknown_names(argument, value, choices):
    with invalid(argument, value, *[repr(c) for c in choices]):
        tfvae.build_vae((4,), 2, hidden_units=(8,), **{argument: value})


@pytest.mark.parametrize("input_shape", [(64,), (8, 8)])
def test_build_vae_conv_needs_images(input_shape):
    with raises("`input_shape`", "conv", repr(input_shape)):
        tfvae.build_vae(input_shape, 2, architecture="conv", filters=(4,))


@pytest.mark.parametrize("hidden_units", [(0,), (8, -1), (2.5,), "abc", (None,)])
def test_build_vae_bad_hidden_units(hidden_units):
    with invalid("hidden_units", hidden_units):
        tfvae.build_vae((4,), 2, hidden_units=hidden_units)


@pytest.mark.parametrize("filters", [(), (0,), (4, -1)])
def test_build_vae_bad_filters(filters):
    with invalid("filters", filters):
        tfvae.build_vae((3, 3, 1), 2, architecture="conv", filters=filters)


@pytest.mark.parametrize("num_components", BAD_POSITIVE_INTS)
def test_build_vae_bad_num_components(num_components):
    with invalid("num_components", num_components):
        tfvae.build_vae(
            (4,), 2, prior="mixture", num_components=num_components, hidden_units=(8,)
        )


@pytest.mark.parametrize("scale", [-1.0, 0.0, math.nan, None])
def test_build_vae_bad_likelihood_scale_names_likelihood_scale(scale):
    # The user passed `likelihood_scale`; a message about `scale` names an
    # argument build_vae does not have.
    with invalid("likelihood_scale", scale):
        tfvae.build_vae((4,), 2, likelihood="gaussian", likelihood_scale=scale, hidden_units=(8,))


# ---------------------------------------------------------------------------
# VAE arguments (through build_vae's **vae_kwargs and directly).


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


@pytest.mark.parametrize("seed", [-1, 2.5, "abc", True])
def test_bad_seed(seed):
    with invalid("seed", seed):
        tfvae.build_vae((4,), 2, hidden_units=(8,), seed=seed)


def _parts(latent_dim=2, event_shape=(4,), encoder_units=None, decoder_units=None):
    posterior = tfvae.DiagonalGaussianPosterior(latent_dim)
    likelihood = tfvae.BernoulliLikelihood(event_shape)
    encoder = tfvae.MLP(encoder_units or posterior.params_size, (8,))
    decoder = tfvae.MLP(decoder_units or likelihood.params_size, (8,))
    return encoder, decoder, posterior, likelihood


def test_vae_prior_latent_dim_mismatch():
    encoder, decoder, posterior, likelihood = _parts(latent_dim=2)
    with raises("`prior`", "latent_dim=2"):
        tfvae.VAE(encoder, decoder, posterior, likelihood, prior=tfvae.StandardNormalPrior(3))


def test_vae_prior_latent_dim_mismatch_shows_received_latent_dim():
    # The repr of a Keras layer does not show its latent_dim, so the message
    # must say what the received prior's latent_dim was.
    encoder, decoder, posterior, likelihood = _parts(latent_dim=2)
    with raises("`prior`", "latent_dim=2", "latent_dim=3"):
        tfvae.VAE(encoder, decoder, posterior, likelihood, prior=tfvae.StandardNormalPrior(3))


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


# ---------------------------------------------------------------------------
# Head, prior and network constructors.


@pytest.mark.parametrize(
    "head", [tfvae.DiagonalGaussianPosterior, tfvae.FullCovarianceGaussianPosterior]
)
@pytest.mark.parametrize("latent_dim", BAD_POSITIVE_INTS)
def test_posterior_bad_latent_dim(head, latent_dim):
    with invalid("latent_dim", latent_dim):
        head(latent_dim=latent_dim)


@pytest.mark.parametrize("min_scale", [-1.0, math.nan, None])
def test_posterior_bad_min_scale(min_scale):
    with invalid("min_scale", min_scale):
        tfvae.DiagonalGaussianPosterior(2, min_scale=min_scale)


@pytest.mark.parametrize("scale", [-1.0, 0.0, math.nan, math.inf, None, True])
def test_gaussian_likelihood_bad_numeric_scale(scale):
    with invalid("scale", scale):
        tfvae.GaussianLikelihood(event_shape=(4,), scale=scale)


@pytest.mark.parametrize("scale", ["learned", "Shared", ""])
def test_gaussian_likelihood_unknown_scale_mode(scale):
    with invalid("scale", scale, "'shared'", "'per_dimension'", "'predicted'"):
        tfvae.GaussianLikelihood(event_shape=(4,), scale=scale)


@pytest.mark.parametrize(
    "head",
    [
        tfvae.BernoulliLikelihood,
        tfvae.ContinuousBernoulliLikelihood,
        tfvae.GaussianLikelihood,
        tfvae.CategoricalPixelLikelihood,
        tfvae.DiscretizedLogisticLikelihood,
    ],
)
@pytest.mark.parametrize("event_shape", [(), (0, 4), "abc", None])
def test_likelihood_bad_event_shape(head, event_shape):
    with invalid("event_shape", event_shape):
        head(event_shape)


@pytest.mark.parametrize(
    "head", [tfvae.CategoricalPixelLikelihood, tfvae.DiscretizedLogisticLikelihood]
)
@pytest.mark.parametrize("num_levels", BAD_POSITIVE_INTS)
def test_integer_likelihood_bad_num_levels(head, num_levels):
    with invalid("num_levels", num_levels):
        head((4,), num_levels=num_levels)


@pytest.mark.parametrize(
    "head", [tfvae.CategoricalPixelLikelihood, tfvae.DiscretizedLogisticLikelihood]
)
def test_integer_likelihood_needs_two_levels(head):
    # With one level, encoder_input divides by num_levels - 1 = 0 and the
    # encoder sees NaN; a 1-level likelihood is meaningless anyway.
    with invalid("num_levels", 1):
        head((4,), num_levels=1)


@pytest.mark.parametrize("num_components", BAD_POSITIVE_INTS)
def test_mixture_prior_bad_num_components(num_components):
    with invalid("num_components", num_components):
        tfvae.MixtureOfGaussiansPrior(2, num_components=num_components)


@pytest.mark.parametrize("seed", [-1, None, "abc", 2.5])
def test_mixture_prior_bad_seed(seed):
    with invalid("seed", seed):
        tfvae.MixtureOfGaussiansPrior(2, num_components=2, seed=seed)


@pytest.mark.parametrize("prior", [tfvae.StandardNormalPrior, tfvae.MixtureOfGaussiansPrior])
@pytest.mark.parametrize("latent_dim", BAD_POSITIVE_INTS)
def test_prior_bad_latent_dim(prior, latent_dim):
    with invalid("latent_dim", latent_dim):
        prior(latent_dim)


@pytest.mark.parametrize("network", [tfvae.MLP, tfvae.ConvEncoder])
@pytest.mark.parametrize("output_units", BAD_POSITIVE_INTS)
def test_network_bad_output_units(network, output_units):
    with invalid("output_units", output_units):
        network(output_units=output_units)


@pytest.mark.parametrize("hidden_units", [(0,), (8, -1), "abc"])
def test_mlp_bad_hidden_units(hidden_units):
    with invalid("hidden_units", hidden_units):
        tfvae.MLP(4, hidden_units=hidden_units)


@pytest.mark.parametrize("output_shape", [(8, 8), (8, 8, 1, 1), (8,)])
def test_conv_decoder_output_shape_must_be_hwc(output_shape):
    with invalid("output_shape", output_shape, "(height, width, channels)"):
        tfvae.ConvDecoder(output_shape=output_shape)


@pytest.mark.parametrize("output_shape", [(8, 8, 0), (), "abc", None])
def test_conv_decoder_bad_output_shape(output_shape):
    with invalid("output_shape", output_shape):
        tfvae.ConvDecoder(output_shape=output_shape)


@pytest.mark.parametrize("kernel_size", BAD_POSITIVE_INTS)
def test_conv_networks_bad_kernel_size(kernel_size):
    with invalid("kernel_size", kernel_size):
        tfvae.ConvEncoder(4, kernel_size=kernel_size)
    with invalid("kernel_size", kernel_size):
        tfvae.ConvDecoder((8, 8, 1), kernel_size=kernel_size)


# ---------------------------------------------------------------------------
# Data of the wrong shape on a built model.

_X_METHODS = {
    "encode": lambda m, x: m.encode(x),
    "elbo": lambda m, x: m.elbo(x),
    "reconstruct": lambda m, x: m.reconstruct(x),
    "iwae_bound": lambda m, x: m.iwae_bound(x, k=2),
    "log_likelihood": lambda m, x: m.log_likelihood(x, num_samples=2),
    "fit": lambda m, x: m.fit(x, epochs=1, batch_size=4, verbose=0),
    "evaluate": lambda m, x: m.evaluate(x, batch_size=4, verbose=0),
    "predict": lambda m, x: m.predict(x, batch_size=4, verbose=0),
}


@pytest.mark.parametrize("method", sorted(_X_METHODS))
@pytest.mark.parametrize("shape", [(8, 5), (8,), (8, 4, 1), (8, 2, 2)])
def test_vector_model_wrong_x_shape(vec_model, method, shape):
    x = np.full(shape, 0.5, "float32")
    with raises("`x`", "(4,)", repr(shape)):
        _X_METHODS[method](vec_model, x)


@pytest.mark.parametrize("method", sorted(_X_METHODS))
@pytest.mark.parametrize("shape", [(8, 3, 3), (8, 9), (8, 3, 3, 2), (8, 4, 4, 1), (3, 3, 1)])
def test_image_model_wrong_x_shape(img_model, method, shape):
    x = np.full(shape, 0.5, "float32")
    with raises("`x`", "(3, 3, 1)", repr(shape)):
        _X_METHODS[method](img_model, x)


@pytest.mark.parametrize("method", ["encode", "elbo", "reconstruct"])
def test_wrong_x_shape_as_tensor_and_list(vec_model, method):
    with raises("`x`", "(4,)", "(2, 5)"):
        _X_METHODS[method](vec_model, tf.fill((2, 5), 0.5))
    with raises("`x`", "(4,)", "(2, 5)"):
        _X_METHODS[method](vec_model, [[0.5] * 5] * 2)


@pytest.mark.parametrize("method", ["fit", "evaluate"])
def test_wrong_x_shape_as_tensor_in_fit_and_evaluate(method):
    model = _fresh_vec_model()
    # Traced inputs have an unknown batch size, so only check the event part.
    with raises("`x`", "(4,)", ", 5)"):
        _X_METHODS[method](model, tf.fill((8, 5), 0.5))


def test_wrong_x_shape_as_dataset_in_fit():
    model = _fresh_vec_model()
    dataset = tf.data.Dataset.from_tensor_slices(np.full((8, 5), 0.5, "float32")).batch(4)
    with raises("`x`", "(4,)", ", 5)"):
        model.fit(dataset, epochs=1, verbose=0)


@pytest.mark.parametrize(
    "make_model, bad_call, good_call",
    [
        (
            _fresh_vec_model,
            lambda m: m.fit(tf.fill((8, 5), 0.5), epochs=1, verbose=0),
            lambda m: m.fit(_bernoulli_data(), epochs=1, batch_size=4, verbose=0),
        ),
        (
            _fresh_vec_model,
            lambda m: m.fit(
                tf.data.Dataset.from_tensor_slices(tf.fill((8, 5), 0.5)).batch(4),
                epochs=1,
                verbose=0,
            ),
            lambda m: m.fit(_bernoulli_data(), epochs=1, batch_size=4, verbose=0),
        ),
        (
            _fresh_img_model,
            # Missing channel axis: the same 9 values per example.
            lambda m: m.predict(np.full((8, 3, 3), 0.5, "float32"), verbose=0),
            lambda m: m.predict(np.full((8, 3, 3, 1), 0.5, "float32"), verbose=0),
        ),
    ],
    ids=["fit_tensor", "fit_dataset", "predict_array"],
)
def test_model_still_works_after_a_rejected_call(make_model, bad_call, good_call):
    # A call with bad data must leave the model usable: calling again with
    # good data should work, not fail inside a tf.function that was traced
    # (or relaxed to an unknown shape) for the bad data. Whether the bad call
    # raises a clear error is tested above; here it only must not break the model.
    model = make_model()
    with contextlib.suppress(ValueError):
        bad_call(model)
    good_call(model)


@pytest.mark.parametrize("shape", [(2, 3), (2, 1), (2,), (2, 2, 1), (2, 0)])
def test_decode_wrong_z_shape(vec_model, shape):
    z = np.zeros(shape, "float32")
    with raises("`z`", "(batch, 2)", repr(shape)):
        vec_model.decode(z)


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
            _bernoulli_data(), validation_data=validation_data, epochs=1, verbose=0
        )


def test_fit_wrong_validation_data_shape_as_tensor():
    model = _fresh_vec_model()
    with raises("`validation_data`", "(4,)", ", 5)"):
        model.fit(
            _bernoulli_data(),
            validation_data=(tf.fill((8, 5), 0.5),),
            epochs=1,
            batch_size=4,
            verbose=0,
        )


# ---------------------------------------------------------------------------
# Data values the likelihood cannot score.


def _out_of_unit_range():
    x = _bernoulli_data()
    x[0, 0], x[1, 1] = -0.5, 2.0
    return x


@pytest.mark.parametrize("likelihood", ["bernoulli", "continuous_bernoulli"])
@pytest.mark.parametrize("method", ["encode", "elbo", "reconstruct", "fit", "evaluate"])
def test_unit_interval_likelihood_rejects_values_outside_0_1(
    likelihood_models, likelihood, method
):
    model = likelihood_models[likelihood]
    head = type(model.likelihood).__name__
    with raises("`x`", head, "[0.0, 1.0]", "-0.5", "2.0"):
        _X_METHODS[method](model, _out_of_unit_range())


def test_bernoulli_rejects_unscaled_8bit_pixels(likelihood_models):
    x = np.random.default_rng(0).integers(0, 256, (8, 4)).astype("uint8")
    x[0, 0], x[0, 1] = 0, 255
    model = likelihood_models["bernoulli"]
    with raises("`x`", "BernoulliLikelihood", "[0.0, 1.0]", "255"):
        model.fit(x, epochs=1, verbose=0)
    with raises("`x`", "BernoulliLikelihood", "[0.0, 1.0]", "255"):
        model.elbo(x)


def test_bernoulli_rejects_out_of_range_validation_data(likelihood_models):
    model = likelihood_models["bernoulli"]
    with raises("`validation_data`", "BernoulliLikelihood", "2.0"):
        model.fit(
            _bernoulli_data(), validation_data=(_out_of_unit_range(),), epochs=1, verbose=0
        )


def test_bernoulli_rejects_out_of_range_tensor_in_fit():
    # An eager tf.Tensor is as concrete as a NumPy array, so fit can check it.
    model = _fresh_vec_model()
    with raises("`x`", "BernoulliLikelihood", "-0.5", "2.0"):
        model.fit(tf.constant(_out_of_unit_range()), epochs=1, batch_size=4, verbose=0)


@pytest.mark.parametrize("likelihood", ["categorical", "discretized_logistic"])
@pytest.mark.parametrize("method", ["encode", "elbo", "fit", "evaluate"])
def test_integer_likelihood_rejects_data_scaled_to_0_1(likelihood_models, likelihood, method):
    model = likelihood_models[likelihood]
    head = type(model.likelihood).__name__
    with raises("`x`", head, "integer levels", "0..255"):
        _X_METHODS[method](model, _bernoulli_data())


@pytest.mark.parametrize("likelihood", ["categorical", "discretized_logistic"])
@pytest.mark.parametrize("bad", [-1.0, 256.0])
def test_integer_likelihood_rejects_levels_out_of_range(likelihood_models, likelihood, bad):
    x = np.full((8, 4), 7.0, "float32")
    x[3, 2] = bad
    head = type(likelihood_models[likelihood].likelihood).__name__
    with raises("`x`", head, "[0, 255]", repr(bad)):
        likelihood_models[likelihood].elbo(x)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("method", ["encode", "elbo", "fit", "evaluate"])
def test_gaussian_likelihood_rejects_non_finite_data(likelihood_models, bad, method):
    x = _bernoulli_data()
    x[2, 3] = bad
    with raises("`x`", "GaussianLikelihood", "NaN or infinity"):
        _X_METHODS[method](likelihood_models["gaussian"], x)


# ---------------------------------------------------------------------------
# Objectives, generation and evaluation arguments.


def _posterior_and_decode(model, n=3):
    x = tf.constant(_bernoulli_data(n=n))
    return x, model.encode(x), model.likelihood_fn()


def test_kl_analytic_without_registered_kl(vec_model):
    x, q, _ = _posterior_and_decode(vec_model)
    mixture = tfvae.MixtureOfGaussiansPrior(2, num_components=3).distribution()
    with raises("`kl`", "kl='analytic'", "kl='auto'", "kl='mc'"):
        tfvae.kl_divergence(q, mixture, kl="analytic")


@pytest.mark.parametrize("kl", ["exact", None])
def test_kl_divergence_unknown_method(vec_model, kl):
    _, q, _ = _posterior_and_decode(vec_model)
    with invalid("kl", kl, "'auto'", "'analytic'", "'mc'"):
        tfvae.kl_divergence(q, vec_model.prior.distribution(), kl=kl)


def test_kl_mc_needs_samples(vec_model):
    _, q, _ = _posterior_and_decode(vec_model)
    with raises("`z`", "z=None"):
        tfvae.kl_divergence(q, vec_model.prior.distribution(), kl="mc")


def test_mixture_prior_with_analytic_kl_fails_clearly():
    model = tfvae.build_vae((4,), 2, prior="mixture", num_components=2, hidden_units=(8,),
                            kl="analytic")
    with raises("`kl`", "kl='auto'", "kl='mc'"):
        model.elbo(_bernoulli_data(n=2))


@pytest.mark.parametrize("k", BAD_POSITIVE_INTS)
def test_iwae_bound_bad_k(vec_model, k):
    x, q, decode = _posterior_and_decode(vec_model)
    with invalid("k", k):
        tfvae.iwae_bound(x, q, decode, vec_model.prior.distribution(), k=k)
    with invalid("k", k):
        vec_model.iwae_bound(x, k=k)


@pytest.mark.parametrize("chunk_size", [0, -3, 2.5, "64"])
def test_iwae_bound_bad_chunk_size(vec_model, chunk_size):
    x, q, decode = _posterior_and_decode(vec_model)
    with invalid("chunk_size", chunk_size):
        tfvae.iwae_bound(x, q, decode, vec_model.prior.distribution(), k=4, chunk_size=chunk_size)


@pytest.mark.parametrize("n", BAD_POSITIVE_INTS)
def test_sample_bad_n(vec_model, n):
    with invalid("n", n, "positive integer"):
        vec_model.sample(n)


@pytest.mark.parametrize("num_samples", BAD_POSITIVE_INTS)
def test_log_likelihood_bad_num_samples(vec_model, num_samples):
    with invalid("num_samples", num_samples):
        vec_model.log_likelihood(_bernoulli_data(n=2), num_samples=num_samples)


@pytest.mark.parametrize("chunk_size", [0, -3, 2.5, "64"])
def test_log_likelihood_bad_chunk_size(vec_model, chunk_size):
    with invalid("chunk_size", chunk_size):
        vec_model.log_likelihood(_bernoulli_data(n=2), num_samples=4, chunk_size=chunk_size)


def test_log_likelihood_chunk_size_none_means_one_chunk(vec_model):
    x = _bernoulli_data(n=2)
    one_chunk = vec_model.log_likelihood(x, num_samples=4, chunk_size=None, seed=1)
    np.testing.assert_allclose(one_chunk, vec_model.iwae_bound(x, k=4, seed=1), rtol=1e-6)


@pytest.mark.parametrize("num_samples", [0, -3, 2.5, "64", True])
def test_elbo_bad_num_samples(vec_model, num_samples):
    with invalid("num_samples", num_samples):
        vec_model.elbo(_bernoulli_data(n=2), num_samples=num_samples)


# ---------------------------------------------------------------------------
# Callbacks, data and random.


@pytest.mark.parametrize("epochs", [0, -3, math.nan, math.inf, None, "64", True])
def test_kl_warmup_bad_epochs(epochs):
    with invalid("epochs", epochs):
        tfvae.KLWarmup(epochs=epochs)


@pytest.mark.parametrize("argument", ["start", "end"])
@pytest.mark.parametrize("value", [-1.0, math.nan, None])
def test_kl_warmup_bad_start_end(argument, value):
    with invalid(argument, value):
        tfvae.KLWarmup(epochs=1, **{argument: value})


@pytest.mark.parametrize(
    "validation_fraction", [1.5, 0, 1, 1.0, -0.1, math.nan, True, None, "abc", "0.5"]
)
def test_load_digits_bad_validation_fraction(validation_fraction):
    with invalid("validation_fraction", validation_fraction, "(0, 1)"):
        tfvae.data.load_digits(validation_fraction=validation_fraction)


@pytest.mark.parametrize("seed", [-1, 2.5, None, "abc"])
def test_load_digits_bad_seed(seed):
    with invalid("seed", seed):
        tfvae.data.load_digits(seed=seed)


@pytest.mark.parametrize(
    "seed, shape",
    [
        (tf.constant([1, 2, 3]), "(3,)"),
        (np.array([[1, 2], [3, 4]]), "(2, 2)"),
        (tf.constant(7), "()"),
        (2.5, "()"),
    ],
    ids=["shape3", "shape2x2", "scalar_tensor", "float"],
)
def test_make_seed_bad_shape(seed, shape):
    with raises("`seed`", "[2]", shape):
        tfvae_random.make_seed(seed)


# ---------------------------------------------------------------------------
# Contrast: the corresponding good inputs pass.


def test_good_constructor_arguments_pass():
    model = tfvae.build_vae(
        [4], np.int64(2), hidden_units=[8], beta=0.0, free_bits=0.5, num_samples=2, kl="mc",
        seed=3,
    )
    assert model.latent_dim == 2 and model.event_shape == (4,)
    assert model.num_samples == 2 and model.free_bits == 0.5 and model.kl_method == "mc"
    conv = tfvae.build_vae((3, 3, 1), 2, architecture="conv", filters=(4,))
    assert conv.event_shape == (3, 3, 1)
    assert tfvae.DiagonalGaussianPosterior(latent_dim=1).params_size == 2
    assert tfvae.GaussianLikelihood((4,), scale=0.5).scale == 0.5
    assert tfvae.GaussianLikelihood((4,), scale="shared").scale == "shared"
    assert tfvae.CategoricalPixelLikelihood((4,), num_levels=2).params_size == 8
    assert tfvae.MixtureOfGaussiansPrior(2, num_components=1).num_components == 1
    assert tfvae.MLP(output_units=1).output_units == 1
    assert tfvae.ConvDecoder(output_shape=(8, 8, 1)).target_shape == (8, 8, 1)
    assert tfvae.KLWarmup(epochs=0.5).epochs == 0.5
    encoder, decoder, posterior, likelihood = _parts()
    vae = tfvae.VAE(encoder, decoder, posterior, likelihood, prior=tfvae.StandardNormalPrior(2))
    assert vae.latent_dim == 2


def test_good_data_passes(vec_model, img_model):
    x = _bernoulli_data()
    x[0, :2] = [0.0, 1.0]  # the closed interval's end points are valid
    assert vec_model.encode(x).mean().shape == (8, 2)
    assert vec_model.elbo(x)["elbo"].shape == (8,)
    assert vec_model.reconstruct(tf.constant(x)).shape == (8, 4)
    assert vec_model.decode(np.zeros((3, 2), "float32")).batch_shape == (3,)
    assert vec_model.sample(1).shape == (1, 4)
    assert vec_model.iwae_bound(x, k=1).shape == (8,)
    assert vec_model.log_likelihood(x, num_samples=1).shape == (8,)
    history = vec_model.fit(
        x, validation_data=(x,), epochs=1, batch_size=4, verbose=0
    )
    assert np.isfinite(history.history["val_loss"][-1])
    assert np.isfinite(vec_model.evaluate(x, batch_size=4, verbose=0)[0])
    x_img = np.full((2, 3, 3, 1), 0.5, "float32")
    assert img_model.elbo(x_img)["elbo"].shape == (2,)
    # A fresh model: the shared one's predict function was traced for bad data.
    assert _fresh_img_model().predict(x_img, verbose=0).shape == (2, 3, 3, 1)


def test_good_integer_and_gaussian_data_pass(likelihood_models):
    levels = np.random.default_rng(0).integers(0, 256, (4, 4)).astype("float32")
    levels[0, :2] = [0, 255]
    for name in ("categorical", "discretized_logistic"):
        assert np.all(np.isfinite(likelihood_models[name].elbo(levels)["elbo"].numpy()))
    gaussian = np.random.default_rng(0).normal(size=(4, 4)).astype("float32") * 10
    assert likelihood_models["gaussian"].elbo(gaussian)["elbo"].shape == (4,)


def test_good_objective_arguments_pass(vec_model):
    x, q, decode = _posterior_and_decode(vec_model)
    mixture = tfvae.MixtureOfGaussiansPrior(2, num_components=3).distribution()
    z = tfvae.objectives.posterior_sample(q, 2, seed=0)
    assert tfvae.kl_divergence(q, mixture, z=z, kl="auto").shape == (3,)
    assert tfvae.kl_divergence(q, vec_model.prior.distribution(), kl="analytic").shape == (3,)
    bound = tfvae.iwae_bound(x, q, decode, vec_model.prior.distribution(), k=3, chunk_size=2)
    assert bound.shape == (3,)
    assert tfvae_random.make_seed(tf.constant([1, 2])).shape == (2,)
    assert tfvae_random.make_seed(5).shape == (2,)
    (x_train, _), (x_val, _) = tfvae.data.load_digits(validation_fraction=0.5)
    assert abs(len(x_train) - len(x_val)) <= 1
