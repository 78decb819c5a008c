"""`build_vae`: common VAEs from a data shape, a latent size and a likelihood name."""

import numpy as np

from tfvae import _checks
from tfvae import flows
from tfvae import heads
from tfvae import hyperparameters as hyperparameters_lib
from tfvae import hierarchy
from tfvae import networks
from tfvae import objective_parts
from tfvae import options
from tfvae import priors
from tfvae import vq
from tfvae.model import VAE

__all__ = [
    "ARCHITECTURES",
    "build_vae",
    "hyperparameters",
    "likelihood_and_name",
    "likelihood_of",
    "LIKELIHOODS",
    "MAX_PARAMETERS",
    "part_classes",
    "POSTERIORS",
    "PRIORS",
]

LIKELIHOODS = {
    "bernoulli": lambda shape, scale: heads.BernoulliLikelihood(shape),
    "continuous_bernoulli": lambda shape, scale: heads.ContinuousBernoulliLikelihood(shape),
    "gaussian": lambda shape, scale: heads.GaussianLikelihood(shape, scale=scale),
    "gaussian_shared": lambda shape, scale: heads.GaussianLikelihood(shape, scale="shared"),
    "gaussian_per_dimension": lambda shape, scale: heads.GaussianLikelihood(
        shape, scale="per_dimension"
    ),
    "gaussian_predicted": lambda shape, scale: heads.GaussianLikelihood(shape, scale="predicted"),
    "categorical": lambda shape, scale: heads.CategoricalPixelLikelihood(shape),
    "discretized_logistic": lambda shape, scale: heads.DiscretizedLogisticLikelihood(shape),
}
POSTERIORS = {
    "diagonal": heads.DiagonalGaussianPosterior,
    "full": heads.FullCovarianceGaussianPosterior,
    "iaf": flows.IAFPosterior,
    "planar": flows.PlanarFlowPosterior,
    "hierarchical": hierarchy.HierarchicalPosterior,
    "vq": vq.VQPosterior,
}
# Prior names -> classes; a factory builds one (latent size, data shape, components, seed).
PRIORS = {
    "standard_normal": priors.StandardNormalPrior,
    "mixture": priors.MixtureOfGaussiansPrior,
    "vamp": priors.VampPrior,
}
ARCHITECTURES = ("mlp", "conv")

_PRIOR_FACTORIES = {
    "standard_normal": lambda latent_dim, input_shape, num_components, seed: (
        priors.StandardNormalPrior(latent_dim)),
    "mixture": lambda latent_dim, input_shape, num_components, seed: (
        priors.MixtureOfGaussiansPrior(latent_dim, num_components=num_components, seed=seed)),
    "vamp": lambda latent_dim, input_shape, num_components, seed: (
        priors.VampPrior(latent_dim, input_shape, num_pseudo_inputs=num_components, seed=seed)),
}

# Seed keys of build_vae's parts (`networks.derive_seed(seed, key)`).
_ENCODER, _DECODER, _POSTERIOR, _PRIOR = range(4)


def hyperparameters():
    """Every named part's own hyperparameters, for `RunConfig` fields and `tfvae train` flags:
    name -> `(Hyperparameter, kind, owner)` with kind `"objective"` or `"posterior"` and
    owner the part's registered name (`tfvae.hyperparameters`)."""
    declared = {key: (spec, "objective", owner)
                for key, (spec, owner) in objective_parts.hyperparameters().items()}
    for key, (spec, owners) in hyperparameters_lib.declarations(POSTERIORS).items():
        declared.setdefault(key, (spec, "posterior", ", ".join(owners)))
    return declared


def part_classes(posterior, prior):
    """The classes `build_vae` builds for the names `posterior` and `prior`.

    The option rules in `tfvae.options` read their capabilities, so a
    configuration can be checked by name before anything is built. A
    hierarchical posterior brings its own prior, `tfvae.HierarchicalPrior`.
    """
    posterior_class = POSTERIORS[posterior]
    if posterior_class is hierarchy.HierarchicalPosterior:
        return posterior_class, hierarchy.HierarchicalPrior
    if posterior_class.own_prior is not None:
        return posterior_class, posterior_class.own_prior
    return posterior_class, PRIORS[prior]


# The most weights build_vae makes for the MLPs (float32: 4 GiB), checked before any
# allocation, so a mistyped width is one line instead of a ResourceExhaustedError.
MAX_PARAMETERS = 2**30


def _check_size(input_shape, latent_dim, hidden_units, posterior_size, likelihood_size):
    """Refuses MLPs with more than `MAX_PARAMETERS` weights, naming the widths."""
    inputs = int(np.prod(input_shape))
    encoder = (inputs,) + hidden_units + (posterior_size,)
    decoder = (latent_dim,) + tuple(reversed(hidden_units)) + (likelihood_size,)
    count = sum(a * b + b for widths in (encoder, decoder) for a, b in zip(widths, widths[1:]))
    if count > MAX_PARAMETERS:
        raise ValueError(
            f"Received an invalid value for `hidden_units` / `latent_dim`: the MLPs would have "
            f"{count:,} weights ({count * 4 / 2**30:,.0f} GiB), more than {MAX_PARAMETERS:,}. "
            f"Received: hidden_units={hidden_units}, latent_dim={latent_dim}")


def build_vae(
    input_shape,
    latent_dim,
    likelihood="bernoulli",
    architecture="mlp",
    hidden_units=(256, 128),
    filters=(32, 64),
    posterior="diagonal",
    prior="standard_normal",
    num_components=10,
    likelihood_scale=0.1,
    top_latent_dim=None,
    **vae_kwargs,
):
    """Builds a `tfvae.VAE` for data of shape `input_shape`.

    Args:
      input_shape: shape of one example, e.g. `(8, 8, 1)` or `(64,)`.
      latent_dim: size of z.
      likelihood: one of `LIKELIHOODS` (`"bernoulli"`, `"continuous_bernoulli"`,
        `"gaussian"` (fixed σ = `likelihood_scale`), `"gaussian_shared"`,
        `"gaussian_per_dimension"`, `"gaussian_predicted"`, `"categorical"`,
        `"discretized_logistic"`), or a likelihood head whose `event_shape` is
        `input_shape` (e.g. a `tfvae.TabularLikelihood` for table rows).
        Default value: `"bernoulli"`.
      architecture: `"mlp"` or `"conv"` (images `(H, W, C)` only).
        Default value: `"mlp"`.
      hidden_units: MLP widths (the decoder mirrors them). Default value: `(256, 128)`.
      filters: conv encoder channels (the decoder mirrors them). Default value: `(32, 64)`.
      posterior: `"diagonal"` or `"full"` covariance Gaussian, `"iaf"` (a
        diagonal Gaussian through inverse autoregressive flow steps), `"planar"`
        (through 4 amortised planar flow steps), or
        `"hierarchical"` (two stochastic layers z₁ → z₂: `latent_dim` is z₁'s
        size, the one the decoder sees, and `top_latent_dim` z₂'s; `prior`
        must then be `"standard_normal"`, the prior of z₂).
        Default value: `"diagonal"`.
      prior: `"standard_normal"`, `"mixture"` (learnable mixture of Gaussians) or
        `"vamp"` (VampPrior). Default value: `"standard_normal"`.
      num_components: mixture components, or VampPrior pseudo-inputs. Default value: `10`.
      likelihood_scale: σ of the fixed `"gaussian"` likelihood. Default value: `0.1`.
      top_latent_dim: size of z₂ for `posterior="hierarchical"`. Default
        value: `max(1, latent_dim // 2)`.
      **vae_kwargs: the chosen posterior's own hyperparameters (its class's
        `hyperparameters`), and the rest passed to `tfvae.VAE` (`num_samples`,
        `beta`, `free_bits`, `free_bits_groups`, `kl`, `seed`, `objective` and
        its hyperparameters, `condition_dim`, `name`). `seed` also seeds the
        initial weights (every part derives its own seed from it), so the same
        seed builds the same model; it sets no process-global random state.

    Returns:
      A built `tfvae.VAE`.
    """
    input_shape = _checks.shape("input_shape", input_shape)
    latent_dim = _checks.positive_int("latent_dim", latent_dim)
    if not isinstance(likelihood, heads.LikelihoodHead):
        _checks.one_of("likelihood", likelihood, tuple(LIKELIHOODS))
    elif tuple(likelihood.event_shape) != input_shape:
        raise ValueError(
            "Received an invalid value for `likelihood`: its event_shape "
            f"{tuple(likelihood.event_shape)} differs from input_shape={input_shape}.")
    _checks.one_of("architecture", architecture, ARCHITECTURES)
    _checks.one_of("posterior", posterior, tuple(POSTERIORS))
    _checks.one_of("prior", prior, PRIORS)
    likelihood_scale = _checks.positive_float("likelihood_scale", likelihood_scale)
    options.check_architecture(architecture, input_shape)
    options.check_prior_name(posterior, prior)
    top = options.check_top_latent_dim(top_latent_dim, posterior)
    posterior_options = hyperparameters_lib.route("posterior", posterior, POSTERIORS,
                                                  vae_kwargs)
    seed = vae_kwargs.get("seed")
    if seed is not None:
        seed = _checks.non_negative_int("seed", seed)
    part_seed = lambda key: networks.derive_seed(seed, key)  # noqa: E731

    likelihood_head = (likelihood if isinstance(likelihood, heads.LikelihoodHead)
                       else LIKELIHOODS[likelihood](input_shape, likelihood_scale))
    if posterior == "hierarchical":
        dims = (latent_dim, max(1, latent_dim // 2) if top is None else top)
        posterior_head = hierarchy.HierarchicalPosterior(dims, seed=part_seed(_POSTERIOR))
        prior_layer = hierarchy.HierarchicalPrior(dims, seed=part_seed(_PRIOR))
    else:
        posterior_class = POSTERIORS[posterior]
        posterior_head = (
            posterior_class(latent_dim, seed=part_seed(_POSTERIOR), **posterior_options)
            if posterior_class.seeded else
            posterior_class(latent_dim, **posterior_options))
        # A posterior that declares `own_prior` brings its prior (`default_prior()`).
        prior_layer = (posterior_head.default_prior()
                       if posterior_class.own_prior is not None else
                       _PRIOR_FACTORIES[prior](latent_dim, input_shape, num_components,
                                               0 if seed is None else part_seed(_PRIOR)))

    if architecture == "mlp":
        hidden_units = _checks.int_tuple("hidden_units", hidden_units)
        _check_size(input_shape, latent_dim, hidden_units, posterior_head.params_size,
                    likelihood_head.params_size)
        encoder = networks.MLP(posterior_head.params_size, hidden_units,
                               seed=part_seed(_ENCODER), name="encoder")
        decoder = networks.MLP(likelihood_head.params_size, tuple(reversed(hidden_units)),
                               seed=part_seed(_DECODER), name="decoder")
    else:
        filters = _checks.int_tuple("filters", filters, allow_empty=False)
        height, width, channels = input_shape
        encoder = networks.ConvEncoder(posterior_head.params_size, filters,
                                       seed=part_seed(_ENCODER), name="encoder")
        decoder = networks.ConvDecoder(
            (height, width, channels * likelihood_head.params_per_element),
            tuple(reversed(filters)),
            seed=part_seed(_DECODER),
            name="decoder",
        )
    return VAE(encoder, decoder, posterior_head, likelihood_head, prior_layer, **vae_kwargs)


def likelihood_of(likelihood, event_shape=(1,)):
    """The likelihood head `likelihood` stands for, to read its declarations (`support`,
    `prepare_data`, `binarize_modes`, `auto_binarize`) before a model exists.

    Args:
      likelihood: a `LikelihoodHead` (returned as is) or a name of `LIKELIHOODS`.
      event_shape: the shape the named head is built for (its declarations do not
        depend on it). Default value: `(1,)`.

    Returns:
      A `LikelihoodHead` (a named one is built: a learned σ makes a variable, so inside
      a traced function pass a head instead of a name).
    """
    if isinstance(likelihood, heads.LikelihoodHead):
        return likelihood
    _checks.one_of("likelihood", likelihood, LIKELIHOODS)
    return LIKELIHOODS[likelihood](event_shape, 1.0)


def likelihood_and_name(likelihood):
    """`(head, name)`: `likelihood_of(likelihood)`, and the name it was given by (for
    messages), or `None` when a head was given."""
    return likelihood_of(likelihood), likelihood if isinstance(likelihood, str) else None
