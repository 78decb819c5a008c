"""tfvae.builders: `build_vae` builds what it names and checks its arguments.

Bad arguments fail early with a clear, Keras-style `ValueError` (see helpers.py): the
message names the argument in backticks and shows the value received.
"""

import math

import numpy as np
import pytest

import tfvae
from tfvae import builders
from tfvae import heads
from tfvae import hierarchy

from helpers import BAD_POSITIVE_INTS, invalid, raises


def test_message_is_keras_style():
    with pytest.raises(ValueError) as excinfo:
        tfvae.build_vae((4,), -3)
    assert str(excinfo.value) == (
        "Received an invalid value for `latent_dim`, expected a positive integer. "
        "Received: latent_dim=-3"
    )


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


@pytest.mark.parametrize("seed", [-1, 2.5, "abc", True])
def test_bad_seed(seed):
    with invalid("seed", seed):
        tfvae.build_vae((4,), 2, hidden_units=(8,), seed=seed)


@pytest.mark.parametrize("top_latent_dim", [0, -2, 1.5])
def test_bad_top_latent_dim(top_latent_dim):
    with invalid("top_latent_dim", top_latent_dim):
        tfvae.build_vae((4,), 2, hidden_units=(8,), posterior="hierarchical",
                        top_latent_dim=top_latent_dim)


def test_good_build_arguments_pass():
    conv = tfvae.build_vae((3, 3, 1), 2, architecture="conv", filters=(4,))
    assert conv.event_shape == (3, 3, 1)


# ---------------------------------------------------------------------------
# What the names build.


@pytest.mark.parametrize("name", list(builders.LIKELIHOODS))
def test_each_likelihood_name_builds_its_head(name):
    model = tfvae.build_vae((2, 3, 1), 2, likelihood=name, architecture="conv", filters=(2,),
                            likelihood_scale=0.25)
    head = model.likelihood
    expected = {"bernoulli": heads.BernoulliLikelihood,
                "continuous_bernoulli": heads.ContinuousBernoulliLikelihood,
                "categorical": heads.CategoricalPixelLikelihood,
                "discretized_logistic": heads.DiscretizedLogisticLikelihood}
    if name.startswith("gaussian"):
        assert type(head) is heads.GaussianLikelihood
    else:  # a name added later: the class its registry entry builds
        assert type(head) is expected.get(name, type(builders.likelihood_of(name)))
    assert builders.likelihood_of(name).support == head.support
    assert head.event_shape == (2, 3, 1)
    if name.startswith("gaussian"):
        assert head.scale == {"gaussian": 0.25}.get(name, name[len("gaussian_"):])
    # The conv decoder emits every element's parameters as channels.
    out = model.decoder(np.zeros((1, 2), "float32"))
    assert tuple(out.shape) == (1, 2, 3, head.params_per_element)


@pytest.mark.parametrize("name", list(builders.POSTERIORS))
def test_each_posterior_name_builds_its_head_and_prior(name):
    model = tfvae.build_vae((4,), 4, posterior=name, hidden_units=(8,))
    assert type(model.posterior) is builders.POSTERIORS[name]
    assert model.encoder.output_units == model.posterior.params_size
    if name == "hierarchical":  # z1 has latent_dim; z2 defaults to latent_dim // 2
        assert model.posterior.latent_dims == (4, 2)
        assert type(model.prior) is hierarchy.HierarchicalPrior
        assert model.latent_dim == 6
    else:  # the default prior name: N(0, I), or the prior a posterior brings (VQ's)
        assert type(model.prior) is builders.part_classes(name, "standard_normal")[1]
        assert model.latent_dim == 4


def test_prior_names_and_mirrored_widths():
    model = tfvae.build_vae((4,), 2, prior="vamp", num_components=3, hidden_units=(8, 5))
    assert type(model.prior) is tfvae.VampPrior and model.prior.num_pseudo_inputs == 3
    assert model.prior.input_shape_ == (4,)
    assert [layer.units for layer in model.encoder.hidden] == [8, 5]
    assert [layer.units for layer in model.decoder.hidden] == [5, 8]
    mixture = tfvae.build_vae((4,), 2, prior="mixture", num_components=4, hidden_units=(8,))
    assert type(mixture.prior) is tfvae.MixtureOfGaussiansPrior
    assert mixture.prior.num_components == 4
    top = tfvae.build_vae((4,), 1, posterior="hierarchical", top_latent_dim=3, hidden_units=(8,))
    assert top.posterior.latent_dims == (1, 3)


@pytest.mark.parametrize("extra, culprit", [
    ({"posterior": "full"}, "FullCovarianceGaussianPosterior"),
    ({"posterior": "iaf"}, "IAFPosterior"),
    ({"posterior": "planar"}, "PlanarFlowPosterior"),
    ({"posterior": "hierarchical"}, "HierarchicalPosterior"),
    ({"prior": "mixture"}, "MixtureOfGaussiansPrior"),
    ({"prior": "vamp"}, "VampPrior"),
])
def test_beta_tcvae_names_that_do_not_factorise_are_refused(extra, culprit):
    with raises("`objective`", "objective='beta_tcvae'", culprit):
        tfvae.build_vae((4,), 2, hidden_units=(4,), num_components=2, objective="beta_tcvae",
                        **extra)


def test_build_vae_passes_the_beta_tcvae_options_to_the_model():
    model = tfvae.build_vae((4,), 2, hidden_units=(4,), objective="beta_tcvae", mi_weight=0.5,
                            tc_weight=6.0, dwkl_weight=2.0, dataset_size=1000, seed=0)
    objective = model.objective
    assert (objective.name, objective.mi_weight, objective.tc_weight, objective.dwkl_weight,
            objective.dataset_size) == ("beta_tcvae", 0.5, 6.0, 2.0, 1000)
    assert [m.name for m in model.metrics] == ["loss", "elbo", "reconstruction", "kl", "mi", "tc",
                                               "dwkl"]


@pytest.mark.parametrize("kwargs", [{"latent_dim": 4_000_000_000},
                                    {"latent_dim": 2, "hidden_units": (3_000_000_000,)}])
def test_widths_that_would_not_fit_in_memory_are_refused_before_allocation(kwargs):
    # 0.2.0 failed deep in TensorFlow with ResourceExhaustedError (issue 20 finding 12).
    with raises("`hidden_units` / `latent_dim`", "weights", "GiB"):
        tfvae.build_vae((8, 8, 1), **kwargs)


def test_a_flows_number_of_steps_is_reachable_by_name():
    # One declaration (`flows.FLOW_STEPS`) shared by both flows: build_vae, RunConfig, the CLI.
    assert tfvae.build_vae((4,), 2, hidden_units=(4,), posterior="iaf",
                           num_steps=3).posterior.num_steps == 3
    assert tfvae.build_vae((4,), 2, hidden_units=(4,), posterior="planar",
                           num_steps=2).posterior.num_steps == 2
    assert tfvae.build_vae((4,), 2, hidden_units=(4,), posterior="planar").posterior.num_steps == 4
    with raises("`num_steps`", "posterior='iaf' or posterior='planar'", "num_steps=3",
                "posterior='diagonal'"):
        tfvae.build_vae((4,), 2, hidden_units=(4,), num_steps=3)
    with invalid("num_steps", 0):
        tfvae.build_vae((4,), 2, hidden_units=(4,), posterior="iaf", num_steps=0)
    from tfvae import runs

    config = runs.RunConfig(posterior="planar", num_steps=6).validate()
    assert builders.build_vae(**config.model_kwargs((4,))).posterior.num_steps == 6
