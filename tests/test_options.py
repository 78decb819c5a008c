"""tfvae.options: the cross-option rules, on part classes (names, before building) and on
instances alike, directly and through `build_vae` / `tfvae.VAE`."""

import pytest

import tfvae
from tfvae import flows
from tfvae import heads
from tfvae import hierarchy
from tfvae import objective_parts
from tfvae import options
from tfvae import priors

from helpers import BAD_NON_NEGATIVE_FLOATS, BAD_POSITIVE_INTS, invalid, raises

D = 3  # latent size of the instances below


def _instances():
    """One instance of every posterior and prior class, latent size `D` (hierarchy: 2 + 1)."""
    return {
        heads.DiagonalGaussianPosterior: heads.DiagonalGaussianPosterior(D),
        heads.FullCovarianceGaussianPosterior: heads.FullCovarianceGaussianPosterior(D),
        flows.IAFPosterior: flows.IAFPosterior(D, hidden_units=4, context_dim=2),
        flows.PlanarFlowPosterior: flows.PlanarFlowPosterior(D),
        hierarchy.HierarchicalPosterior: hierarchy.HierarchicalPosterior((2, 1), hidden_units=4),
        priors.StandardNormalPrior: priors.StandardNormalPrior(D),
        priors.MixtureOfGaussiansPrior: priors.MixtureOfGaussiansPrior(D, num_components=2),
        priors.VampPrior: priors.VampPrior(D, (4,), num_pseudo_inputs=2),
        hierarchy.HierarchicalPrior: hierarchy.HierarchicalPrior((2, 1), hidden_units=4),
    }


INSTANCES = _instances()
POSTERIORS = [heads.DiagonalGaussianPosterior, heads.FullCovarianceGaussianPosterior,
              flows.IAFPosterior, flows.PlanarFlowPosterior, hierarchy.HierarchicalPosterior]
PRIORS = [priors.StandardNormalPrior, priors.MixtureOfGaussiansPrior, priors.VampPrior,
          hierarchy.HierarchicalPrior]
FORMS = pytest.mark.parametrize("form", ["class", "instance"])


def _part(cls, form):
    return cls if form == "class" else INSTANCES[cls]


def _outcome(fn):
    """`("ok", result)` or `("error", message)` of calling `fn()`."""
    try:
        return "ok", fn()
    except ValueError as error:
        return "error", str(error)


# ---------------------------------------------------------------------------
# check_objective.


@pytest.mark.parametrize("objective", ["vae", "IWAE", "", None, 1])
def test_objective_must_be_a_known_name(objective):
    with invalid("objective", objective, "'elbo'", "'iwae'"):
        options.check_objective(objective)


@pytest.mark.parametrize("kwargs", [{"beta": 2.0}, {"beta": 0.0}, {"free_bits": 0.5},
                                    {"warmup_epochs": 3.0}])
def test_iwae_refuses_each_knob_the_bound_ignores(kwargs):
    with raises("`objective`", "no KL term", "objective='iwae'",
                *[f"{k}={v}" for k, v in kwargs.items()]):
        options.check_objective("iwae", **kwargs)


def test_objective_passes_where_the_knobs_apply():
    assert options.check_objective("iwae") == "iwae"
    assert options.check_objective("iwae", beta=1.0, free_bits=0.0, warmup_epochs=0.0) == "iwae"
    assert options.check_objective("elbo", beta=4.0, free_bits=0.5, warmup_epochs=2.0) == "elbo"


def test_knobs_the_iwae_bound_ignores_are_refused():
    # (KLWarmup's refusal: test_callbacks.py; RunConfig's: test_runs.py.)
    for kwargs in ({"beta": 2.0}, {"free_bits": 0.5}):
        with pytest.raises(ValueError, match="no KL term"):
            tfvae.build_vae((4,), 2, hidden_units=(4,), objective="iwae", **kwargs)


def test_beta_tcvae_takes_beta_and_warm_up_but_not_free_bits():
    assert options.check_objective("beta_tcvae", beta=4.0, warmup_epochs=2.0) == "beta_tcvae"
    with raises("`free_bits`", "no single KL for free bits", "free_bits=0.5",
                "objective='beta_tcvae'"):
        options.check_objective("beta_tcvae", free_bits=0.5)


# β-TCVAE's hyperparameters and rules (`objective_parts.BetaTCVAE`, `options.check_factorised`).

TC_WEIGHTS = ("mi_weight", "tc_weight", "dwkl_weight")


def _tc(objective, **values):
    made = objective_parts.make_objective(objective, values)
    return tuple(getattr(made, name, None) for name in TC_WEIGHTS + ("dataset_size",))


def test_tc_weights_default_to_the_plain_decomposition():
    assert _tc("beta_tcvae") == (1.0, 1.0, 1.0, None)
    assert _tc("beta_tcvae", mi_weight=0.0, tc_weight=6, dwkl_weight=2.5,
               dataset_size=100) == (0.0, 6.0, 2.5, 100)


@pytest.mark.parametrize("name", TC_WEIGHTS)
@pytest.mark.parametrize("value", BAD_NON_NEGATIVE_FLOATS)
def test_tc_weights_must_be_finite_and_non_negative(name, value):
    with invalid(name, value, "a finite number >= 0"):
        _tc("beta_tcvae", **{name: value})


@pytest.mark.parametrize("dataset_size", BAD_POSITIVE_INTS[:3] + BAD_POSITIVE_INTS[4:])
def test_dataset_size_must_be_a_positive_integer(dataset_size):
    with invalid("dataset_size", dataset_size, "a positive integer"):
        _tc("beta_tcvae", dataset_size=dataset_size)


@pytest.mark.parametrize("objective", ["elbo", "iwae"])
@pytest.mark.parametrize("name, value", [("mi_weight", 0.0), ("tc_weight", 6.0),
                                         ("dwkl_weight", 2.0), ("dataset_size", 1000)])
def test_tc_options_need_the_beta_tcvae_objective(objective, name, value):
    with raises(f"`{name}`", "needs objective='beta_tcvae'", f"{name}={value}",
                f"objective={objective!r}"):
        _tc(objective, **{name: value})
    # At their defaults they are no one's business.
    assert _tc(objective, **{name: 1.0 if name != "dataset_size" else None})[-1] is None


@FORMS
@pytest.mark.parametrize("posterior", POSTERIORS)
@pytest.mark.parametrize("prior", PRIORS[:3])
def test_beta_tcvae_needs_independent_dimensions_and_a_factorised_prior(form, posterior, prior):
    outcome = _outcome(lambda: objective_parts.BetaTCVAE().check(_part(posterior, form),
                                                                 _part(prior, form)))
    if posterior is heads.DiagonalGaussianPosterior and prior is priors.StandardNormalPrior:
        assert outcome == ("ok", None)
        return
    assert outcome[0] == "error"
    culprit = prior if posterior is heads.DiagonalGaussianPosterior else posterior
    for fragment in ("`objective`", "objective='beta_tcvae'", culprit.__name__):
        assert fragment in outcome[1]
    # The other objectives do not care.
    for name in ("elbo", "iwae"):
        assert objective_parts.make_objective(name).check(_part(posterior, form),
                                                          _part(prior, form)) is None


def test_beta_tcvae_rules_through_build_vae_and_vae():
    with raises("`objective`", "independent Gaussian dimensions", "FullCovarianceGaussianPosterior"):
        tfvae.build_vae((4,), 2, hidden_units=(4,), objective="beta_tcvae", posterior="full")
    with raises("`objective`", "factorises over latent dimensions", "MixtureOfGaussiansPrior"):
        tfvae.VAE(tfvae.MLP(4), tfvae.MLP(4), tfvae.DiagonalGaussianPosterior(2),
                  tfvae.BernoulliLikelihood((4,)),
                  prior=tfvae.MixtureOfGaussiansPrior(2, num_components=2), objective="beta_tcvae")
    with invalid("tc_weight", -6.0):
        tfvae.build_vae((4,), 2, hidden_units=(4,), objective="beta_tcvae", tc_weight=-6.0)
    with raises("`tc_weight`", "needs objective='beta_tcvae'"):
        tfvae.build_vae((4,), 2, hidden_units=(4,), tc_weight=6.0)
    with raises("`free_bits`", "objective='beta_tcvae'"):
        tfvae.build_vae((4,), 2, hidden_units=(4,), objective="beta_tcvae", free_bits=0.5)


# ---------------------------------------------------------------------------
# IWAE's gradient estimator (`objective_parts.IWAE`, `options.check_dreg`).


@pytest.mark.parametrize("estimator", ["DReG", "reinforce", None])
def test_gradient_estimator_must_be_a_known_name(estimator):
    with invalid("gradient_estimator", estimator, "'standard'", "'dreg'"):
        objective_parts.make_objective("iwae", {"gradient_estimator": estimator})


@pytest.mark.parametrize("objective", ["elbo", "beta_tcvae"])
def test_dreg_needs_the_iwae_objective_whatever_the_parts(objective):
    with raises("`gradient_estimator`", "needs objective='iwae'", f"objective={objective!r}"):
        objective_parts.make_objective(objective, {"gradient_estimator": "dreg"})


def test_an_objective_instance_keeps_its_values_and_refuses_other_ones():
    iwae = objective_parts.IWAE(k=5)
    # Given again with the same value, or left out: the instance as it is.
    assert objective_parts.make_objective(iwae, {"k": 5}) is iwae
    assert objective_parts.make_objective(iwae, {}) is iwae
    with raises("`k`", "already sets k=5", "k=10"):
        objective_parts.make_objective(iwae, {"k": 10})
    # Another objective's hyperparameter at its default is no change; off it, refused.
    assert objective_parts.make_objective(iwae, {"tc_weight": 1.0}) is iwae
    with raises("`tc_weight`", "needs objective='beta_tcvae'", "objective='iwae'"):
        objective_parts.make_objective(iwae, {"tc_weight": 6.0})


@FORMS
@pytest.mark.parametrize("posterior", POSTERIORS[:4])
@pytest.mark.parametrize("prior", PRIORS[:3])
def test_dreg_is_refused_exactly_when_q_or_p_has_weights_of_its_own(form, posterior, prior):
    biased = posterior is flows.IAFPosterior or prior is priors.VampPrior
    dreg = objective_parts.make_objective("iwae", {"gradient_estimator": "dreg"})
    outcome = _outcome(lambda: dreg.check(_part(posterior, form), _part(prior, form)))
    if biased:
        assert outcome[0] == "error"
        for fragment in ("`gradient_estimator`", "stops gradients through q's parameters only",
                         posterior.__name__, prior.__name__):
            assert fragment in outcome[1]
    else:
        assert outcome == ("ok", None)
    # The standard estimator goes with anything.
    assert objective_parts.IWAE().check(_part(posterior, form), _part(prior, form)) is None


@FORMS
def test_dreg_is_refused_for_a_hierarchy(form):
    with raises("stops gradients through q's parameters only", "HierarchicalPosterior"):
        options.check_dreg("dreg", _part(hierarchy.HierarchicalPosterior, form),
                           _part(hierarchy.HierarchicalPrior, form))


def test_an_instance_with_weights_of_its_own_is_refused_though_its_class_is_not():
    class WeightedPosterior(heads.DiagonalGaussianPosterior):
        def __init__(self, latent_dim, **kwargs):
            super().__init__(latent_dim, **kwargs)
            self.shift = self.add_weight(shape=(latent_dim,), initializer="zeros", name="shift")

    assert WeightedPosterior.dreg_unbiased  # its class declares it unbiased ...
    prior = priors.StandardNormalPrior(D)
    assert options.check_dreg("dreg", WeightedPosterior, prior) is None
    with raises("stops gradients through q's parameters only", "WeightedPosterior"):
        options.check_dreg("dreg", WeightedPosterior(D), prior)  # ... it has a weight


def test_dreg_needs_the_iwae_objective():
    with pytest.raises(ValueError, match="needs objective='iwae'"):
        tfvae.build_vae((4,), 2, gradient_estimator="dreg")


@pytest.mark.parametrize("extra", [{"posterior": "iaf"}, {"prior": "vamp", "num_components": 3}])
def test_dreg_is_refused_where_it_would_be_biased(extra):
    # DReG stops gradients through q's parameters only; an IAF's own weights or a
    # VampPrior's encoder dependence would still carry score-function terms.
    with pytest.raises(ValueError, match="'dreg' stops gradients through q's parameters only"):
        tfvae.build_vae((4,), 2, hidden_units=(8,), objective="iwae", gradient_estimator="dreg", **extra)


# ---------------------------------------------------------------------------
# check_free_bits_groups.


def test_no_groups_is_none_whatever_the_parts():
    for posterior in POSTERIORS:
        for prior in PRIORS:
            assert options.check_free_bits_groups(None, 0.0, "iwae", posterior, prior, D) is None


@pytest.mark.parametrize("groups", BAD_POSITIVE_INTS[:3] + BAD_POSITIVE_INTS[4:])
def test_groups_must_be_a_positive_integer(groups):
    with invalid("free_bits_groups", groups, "positive integer"):
        options.check_free_bits_groups(groups, 0.5, "elbo", heads.DiagonalGaussianPosterior,
                                       priors.StandardNormalPrior, D)


@FORMS
@pytest.mark.parametrize("free_bits, objective", [(0.0, "elbo"), (0.5, "iwae"), (0.0, "iwae")])
def test_groups_need_free_bits_and_the_elbo(form, free_bits, objective):
    with raises("`free_bits_groups`", "needs free_bits > 0 and objective='elbo'",
                f"free_bits={free_bits}", f"objective={objective!r}"):
        options.check_free_bits_groups(2, free_bits, objective,
                                       _part(heads.DiagonalGaussianPosterior, form),
                                       _part(priors.StandardNormalPrior, form), D)


@FORMS
@pytest.mark.parametrize("posterior", POSTERIORS[:4])
@pytest.mark.parametrize("prior", PRIORS[:3])
def test_groups_need_a_diagonal_posterior_and_a_standard_normal_prior(form, posterior, prior):
    outcome = _outcome(lambda: options.check_free_bits_groups(
        2, 0.5, "elbo", _part(posterior, form), _part(prior, form), D))
    if posterior is heads.DiagonalGaussianPosterior and prior is priors.StandardNormalPrior:
        assert outcome == ("ok", 2)
    else:
        assert outcome[0] == "error"
        for fragment in ("`free_bits_groups`", "diagonal Gaussian posterior and a standard normal",
                         posterior.__name__, prior.__name__):
            assert fragment in outcome[1]


@FORMS
def test_at_most_one_group_per_latent_dimension(form):
    args = (_part(heads.DiagonalGaussianPosterior, form), _part(priors.StandardNormalPrior, form))
    assert options.check_free_bits_groups(D, 0.5, "elbo", *args, D) == D
    with raises("`free_bits_groups`", f"at most latent_dim={D}", f"free_bits_groups={D + 1}"):
        options.check_free_bits_groups(D + 1, 0.5, "elbo", *args, D)


@FORMS
@pytest.mark.parametrize("groups", [1, 3])
def test_a_hierarchy_has_one_group_per_layer(form, groups):
    args = (_part(hierarchy.HierarchicalPosterior, form), _part(hierarchy.HierarchicalPrior, form))
    assert options.check_free_bits_groups(2, 0.5, "elbo", *args, D) == 2
    with raises("`free_bits_groups`", "its 2 layers", f"free_bits_groups={groups}"):
        options.check_free_bits_groups(groups, 0.5, "elbo", *args, D)


@pytest.mark.parametrize("posterior", POSTERIORS)
@pytest.mark.parametrize("prior", PRIORS)
@pytest.mark.parametrize("groups", [1, 2, 4])
def test_classes_and_instances_get_the_same_answer(posterior, prior, groups):
    def check(form):
        return _outcome(lambda: options.check_free_bits_groups(
            groups, 0.5, "elbo", _part(posterior, form), _part(prior, form), D))

    assert check("class") == check("instance")


@pytest.mark.parametrize("kwargs, match", [
    ({"free_bits_groups": 0, "free_bits": 0.1}, "free_bits_groups"),
    ({"free_bits_groups": 2}, "needs free_bits > 0"),
    ({"free_bits_groups": 2, "free_bits": 0.1, "objective": "iwae"}, "objective='elbo'"),
    ({"free_bits_groups": 4, "free_bits": 0.1}, "at most latent_dim=3"),
    ({"free_bits_groups": 2, "free_bits": 0.1, "posterior": "full"}, "diagonal Gaussian posterior"),
    ({"free_bits_groups": 2, "free_bits": 0.1, "prior": "mixture"}, "standard normal prior"),
])
def test_free_bits_groups_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tfvae.build_vae((4,), 3, hidden_units=(4,), **kwargs)


# ---------------------------------------------------------------------------
# check_condition_dim.


def test_no_condition_is_none():
    assert options.check_condition_dim(None, priors.VampPrior, (3, 4)) is None


@pytest.mark.parametrize("condition_dim", BAD_POSITIVE_INTS[:3] + BAD_POSITIVE_INTS[4:])
def test_condition_dim_must_be_a_positive_integer(condition_dim):
    with invalid("condition_dim", condition_dim, "positive integer"):
        options.check_condition_dim(condition_dim, priors.StandardNormalPrior, (4,))


@FORMS
@pytest.mark.parametrize("event_shape", [(3, 4), (2, 2, 2, 1)])
def test_condition_needs_vectors_or_images(form, event_shape):
    with raises("`condition_dim`", "vectors (d,) or images", "condition_dim=2",
                str(tuple(event_shape))):
        options.check_condition_dim(2, _part(priors.StandardNormalPrior, form), event_shape)


@FORMS
@pytest.mark.parametrize("prior", PRIORS)
def test_condition_needs_a_prior_without_an_encoder(form, prior):
    outcome = _outcome(lambda: options.check_condition_dim(2, _part(prior, form), (4,)))
    if prior is priors.VampPrior:
        assert outcome[0] == "error"
        assert "VampPrior's pseudo-inputs carry no labels y" in outcome[1]
        assert "condition_dim=2" in outcome[1]
    else:
        assert outcome == ("ok", 2)
    # Without an event shape only the prior is checked.
    assert options.check_condition_dim(5, priors.StandardNormalPrior) == 5


def test_condition_rules_through_build_vae_and_vae():
    with pytest.raises(ValueError, match="pseudo-inputs carry no labels y"):
        tfvae.build_vae((6,), 2, hidden_units=(4,), prior="vamp", condition_dim=3)
    with pytest.raises(ValueError, match="condition_dim"):
        tfvae.build_vae((6,), 2, hidden_units=(4,), condition_dim=0)
    with pytest.raises(ValueError, match="vectors .* or images"):
        tfvae.VAE(tfvae.MLP(4), tfvae.MLP(12), tfvae.DiagonalGaussianPosterior(2),
                  tfvae.BernoulliLikelihood((3, 4)), condition_dim=2)


# ---------------------------------------------------------------------------
# check_prior_name and check_top_latent_dim (names, as build_vae and the CLI take them).


@pytest.mark.parametrize("prior", ["mixture", "vamp"])
def test_a_hierarchy_takes_only_the_standard_normal_prior_name(prior):
    with invalid("prior", prior, "use prior='standard_normal'", "p(z2) p(z1|z2)"):
        options.check_prior_name("hierarchical", prior)
    assert options.check_prior_name("hierarchical", "standard_normal") is None
    assert options.check_prior_name("diagonal", prior) is None


def test_top_latent_dim_needs_a_hierarchy():
    assert options.check_top_latent_dim(None, "diagonal") is None
    assert options.check_top_latent_dim(None, "hierarchical") is None
    assert options.check_top_latent_dim(2, "hierarchical") == 2
    with raises("`top_latent_dim`", "needs posterior='hierarchical'", "top_latent_dim=2",
                "posterior='iaf'"):
        options.check_top_latent_dim(2, "iaf")


@pytest.mark.parametrize("top_latent_dim", [-3, 2.5, "2", True])
def test_top_latent_dim_must_be_a_positive_integer(top_latent_dim):
    with invalid("top_latent_dim", top_latent_dim):
        options.check_top_latent_dim(top_latent_dim, "hierarchical")


def test_the_name_rules_match_build_vae():
    # build_vae states these two rules too: the same names must fail the same way.
    with raises("`prior`", "use prior='standard_normal'", "prior='mixture'"):
        tfvae.build_vae((4,), 2, hidden_units=(4,), posterior="hierarchical", prior="mixture")
    with raises("`top_latent_dim`", "needs posterior='hierarchical'", "top_latent_dim=2"):
        tfvae.build_vae((4,), 2, hidden_units=(4,), top_latent_dim=2)


# ---------------------------------------------------------------------------
# check_architecture (build_vae's input shape) and execution (a run's compile settings).


@pytest.mark.parametrize("input_shape", [(64,), (8, 8), (2, 2, 2, 1)])
def test_conv_needs_images(input_shape):
    with pytest.raises(ValueError) as error:
        options.check_architecture("conv", input_shape)
    assert str(error.value) == (
        "Received an invalid value for `input_shape`: architecture='conv' needs images "
        f"(height, width, channels). Received: input_shape={input_shape}")


@pytest.mark.parametrize("architecture, input_shape", [
    ("mlp", (64,)), ("mlp", (8, 8)), ("mlp", (8, 8, 1)), ("mlp", (2, 2, 2, 1)),
    ("conv", (8, 8, 1)), ("conv", (5, 7, 3))])
def test_an_mlp_takes_any_shape_and_conv_takes_images(architecture, input_shape):
    assert options.check_architecture(architecture, input_shape) == architecture


def test_build_vae_states_the_architecture_rule_in_the_same_words():
    with pytest.raises(ValueError) as direct:
        options.check_architecture("conv", (6,))
    with pytest.raises(ValueError) as built:
        tfvae.build_vae((6,), 2, architecture="conv", filters=(4,))
    assert str(built.value) == str(direct.value)


@pytest.mark.parametrize("jit_compile, steps, architecture, gpu, expected", [
    (None, 16, "mlp", False, (True, 16)),   # unset: XLA for an MLP ...
    (None, 16, "conv", False, (False, 16)),  # ... not for a conv net on a CPU ...
    (None, 16, "conv", True, (True, 16)),   # ... but on a GPU
    (False, 4, "mlp", False, (False, 4)),   # what is asked for is kept
    (True, 1, "conv", False, (True, 1)),
])
def test_execution_without_a_strategy_resolves_only_an_unset_jit_compile(
        jit_compile, steps, architecture, gpu, expected, caplog):
    with caplog.at_level("INFO", logger="tfvae.options"):
        result = options.execution(jit_compile, steps, architecture, gpu=gpu)
    assert result == expected and type(result[0]) is bool
    assert caplog.records == []


@pytest.mark.parametrize("strategy", ["mirrored", "multiworker"])
@pytest.mark.parametrize("jit_compile, steps, architecture, shown", [
    (None, 16, "mlp", "jit_compile=None -> False, steps_per_execution=16 -> 1"),
    (True, 1, "conv", "jit_compile=True -> False, steps_per_execution=1 -> 1"),
    (False, 3, "mlp", "jit_compile=False -> False, steps_per_execution=3 -> 1"),
])
def test_a_strategy_turns_off_xla_and_multi_step_calls_and_says_why(
        strategy, jit_compile, steps, architecture, shown, caplog):
    with caplog.at_level("INFO", logger="tfvae.options"):
        assert options.execution(jit_compile, steps, architecture, strategy=strategy,
                                 gpu=True) == (False, 1)
    [record] = caplog.records
    assert record.levelname == "INFO"
    for fragment in (f"strategy={strategy!r}", shown, "Keras 3 on TensorFlow fails"):
        assert fragment in record.getMessage()


@pytest.mark.parametrize("jit_compile, architecture", [(False, "mlp"), (None, "conv")])
def test_a_strategy_says_nothing_when_nothing_changes(jit_compile, architecture, caplog):
    with caplog.at_level("INFO", logger="tfvae.options"):
        assert options.execution(jit_compile, 1, architecture, strategy="mirrored") == (False, 1)
    assert caplog.records == []


# ---------------------------------------------------------------------------
# binarize × likelihood: read from the likelihood's declarations, classes or instances.


def _never_called():
    raise AssertionError("the data were probed though the answer did not depend on them")


@pytest.mark.parametrize("mode", ["none", "static", "dynamic"])
def test_binarize_modes_pass_for_likelihoods_of_unit_interval_data(mode):
    for likelihood in (heads.BernoulliLikelihood, heads.GaussianLikelihood((2,))):
        assert options.check_binarize(mode, likelihood) == mode
        assert options.resolve_binarize(mode, likelihood, _never_called) == mode


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_level_likelihoods_refuse_binarisation_naming_what_they_model(mode):
    with raises("`binarize`", "the 'categorical' likelihood models 8-bit levels, not binary "
                f"data. Received: binarize={mode!r}"):
        options.check_binarize(mode, heads.CategoricalPixelLikelihood((2,)), "categorical")
    with raises("'DiscretizedLogisticLikelihood' likelihood models integer levels [0, 15]"):
        options.resolve_binarize(mode, heads.DiscretizedLogisticLikelihood((2,), 16), True)
    with raises("'CategoricalPixelLikelihood' likelihood models no binary data"):  # a class
        options.check_binarize(mode, heads.CategoricalPixelLikelihood)


def test_auto_binarises_grey_data_only_for_a_likelihood_that_declares_it():
    assert options.resolve_binarize("auto", heads.BernoulliLikelihood, True) == "static"
    assert options.resolve_binarize("auto", heads.BernoulliLikelihood((2,)),
                                    lambda: False) == "none"
    for likelihood in (heads.ContinuousBernoulliLikelihood, heads.GaussianLikelihood,
                       heads.CategoricalPixelLikelihood((2,))):
        assert options.resolve_binarize("auto", likelihood, _never_called) == "none"
    with invalid("binarize", "sometimes"):
        options.resolve_binarize("sometimes", heads.BernoulliLikelihood, True)
