"""Which options go together: the one home of tfvae's cross-argument rules.

`tfvae.VAE`, `tfvae.build_vae` and the command line's `RunConfig` all call
these functions, so a rule is stated once. Rules that depend on a part (a
posterior or a prior) read only the capabilities the part declares
(`Posterior.check_kl_groups`, `Posterior.dreg_unbiased`,
`Prior.uses_encoder`, ...), so they work on classes (names, before anything
is built) and on instances alike.
"""

from tfvae import _checks

OBJECTIVES = ("elbo", "iwae", "beta_tcvae")
# The objectives with a KL term for β (and a KL warm-up) to weight.
KL_WEIGHTED_OBJECTIVES = ("elbo", "beta_tcvae")
TC_WEIGHTS = ("mi_weight", "tc_weight", "dwkl_weight")
GRADIENT_ESTIMATORS = ("standard", "dreg")
# How a run's learning rate moves over its epochs (`tfvae.training.learning_rate_schedule`).
LR_SCHEDULES = ("constant", "cosine")


def check_objective(objective, beta=1.0, free_bits=0.0, warmup_epochs=0.0):
    """The IWAE bound has no KL term: β, free bits and KL warm-up need the ELBO (β and
    warm-up also apply to β-TCVAE's decomposed KL; free bits do not).

    Returns:
      `objective`, checked.
    """
    objective = _checks.one_of("objective", objective, OBJECTIVES)
    if objective == "beta_tcvae" and free_bits > 0:
        raise ValueError(
            "Received an invalid value for `free_bits`: β-TCVAE splits the KL into index-code "
            "MI, total correlation and dimension-wise KL, with no single KL for free bits to "
            "clamp. Use objective='elbo', or free_bits=0. Received: free_bits="
            f"{free_bits}, objective='beta_tcvae'"
        )
    if objective == "iwae" and (beta != 1.0 or free_bits > 0 or warmup_epochs > 0):
        raise ValueError(
            "Received an invalid value for `objective`: the IWAE bound has no KL term for β, "
            "KL warm-up or free bits to act on. Use objective='elbo', or beta=1 and "
            f"free_bits=0 without warm-up. Received: objective='iwae', beta={beta}, "
            f"free_bits={free_bits}, warmup_epochs={warmup_epochs}"
        )
    return objective


def check_gradient_estimator(gradient_estimator, objective, posterior, prior):
    """DReG needs the IWAE objective and a q whose density depends on the encoder
    only through its parameters (no weights of q's own, no encoder inside p(z)).

    Returns:
      `gradient_estimator`, checked.
    """
    gradient_estimator = _checks.one_of(
        "gradient_estimator", gradient_estimator, GRADIENT_ESTIMATORS)
    if gradient_estimator != "dreg":
        return gradient_estimator
    if objective != "iwae":
        raise ValueError(
            "Received an invalid value for `gradient_estimator`: 'dreg' needs "
            f"objective='iwae'. Received: gradient_estimator='dreg', objective={objective!r}"
        )
    own_weights = not isinstance(posterior, type) and bool(posterior.trainable_variables)
    if not posterior.dreg_unbiased or own_weights or prior.uses_encoder:
        raise ValueError(
            "Received an invalid value for `gradient_estimator`: 'dreg' stops gradients "
            "through q's parameters only, so it is biased when q or p(z) has weights of its "
            f"own (here {_checks.type_name(posterior)} / {_checks.type_name(prior)}). Use "
            "gradient_estimator='standard'. Received: gradient_estimator='dreg'"
        )
    return gradient_estimator


def check_free_bits_groups(groups, free_bits, objective, posterior, prior, latent_dim):
    """Free bits per group of latent dimensions (`groups`; `None`: per example).

    Returns:
      The number of groups, or `None`.
    """
    if groups is None:
        return None
    groups = _checks.positive_int("free_bits_groups", groups)
    if not free_bits or objective != "elbo":
        raise ValueError(
            "Received an invalid value for `free_bits_groups`: it says how `free_bits` "
            "applies to the ELBO's KL, so it needs free_bits > 0 and objective='elbo'. "
            f"Received: free_bits_groups={groups}, free_bits={free_bits}, "
            f"objective={objective!r}"
        )
    posterior.check_kl_groups(groups, prior, latent_dim)
    return groups


def check_condition_dim(condition_dim, prior, event_shape=None, name="condition_dim"):
    """A conditional model needs vector or image data and a prior that carries no encoder.

    `name` is the argument the caller's user set (`RunConfig` says `conditional`).

    Returns:
      `condition_dim` checked, or `None`.
    """
    if condition_dim is None:
        return None
    condition_dim = _checks.positive_int("condition_dim", condition_dim)
    if event_shape is not None and len(event_shape) not in (1, 3):
        raise ValueError(
            f"Received an invalid value for `{name}`: conditioning needs vectors "
            f"(d,) or images (height, width, channels). Received: {name}="
            f"{condition_dim} for data of shape {tuple(event_shape)}"
        )
    if prior.uses_encoder:
        shown = True if name == "conditional" else condition_dim
        raise ValueError(
            f"Received an invalid value for `{name}`: a {_checks.type_name(prior)}'s pseudo-inputs "
            f"carry no labels y. Use another prior. Received: {name}={shown}"
        )
    return condition_dim


def check_prior_name(posterior, prior):
    """`build_vae` names: a hierarchy's prior is its own p(z2) p(z1|z2), named 'standard_normal'."""
    if posterior == "hierarchical" and prior != "standard_normal":
        raise ValueError(
            "Received an invalid value for `prior`: a hierarchical model's prior is "
            "p(z2) p(z1|z2) with a standard normal p(z2); use prior='standard_normal'. "
            f"Received: prior={prior!r}"
        )


def check_top_latent_dim(top_latent_dim, posterior):
    """`top_latent_dim` sets z2's size (`None`: unset), so it needs a hierarchy."""
    if top_latent_dim is None:
        return None
    if posterior != "hierarchical":
        raise ValueError(
            "Received an invalid value for `top_latent_dim`: it sets z2's size, so it needs "
            f"posterior='hierarchical'. Received: top_latent_dim={top_latent_dim!r}, "
            f"posterior={posterior!r}"
        )
    return _checks.positive_int("top_latent_dim", top_latent_dim)


def check_tc_weights(objective, mi_weight=1.0, tc_weight=1.0, dwkl_weight=1.0, dataset_size=None,
                     posterior=None, prior=None):
    """β-TCVAE's weights α (`mi_weight`), β_TC (`tc_weight`), γ (`dwkl_weight`) and the
    dataset size N of its aggregate-posterior estimate.

    The weights and N apply to `objective="beta_tcvae"` only (elsewhere they must be
    left at 1 and None). The decomposition needs q(z|x) = Π_j q(z_j|x) Gaussian
    (`posterior.independent_dimensions`) and a prior that factorises over the same
    dimensions (`prior.has_kl_per_dimension`); `posterior` and `prior` may be
    classes or instances (`None`: not checked).

    Returns:
      `(mi_weight, tc_weight, dwkl_weight, dataset_size)`, checked.
    """
    weights = tuple(_checks.non_negative_float(name, value) for name, value in
                    zip(TC_WEIGHTS, (mi_weight, tc_weight, dwkl_weight)))
    if dataset_size is not None:
        dataset_size = _checks.positive_int("dataset_size", dataset_size)
    if objective != "beta_tcvae":
        for name, value in zip(TC_WEIGHTS, weights):
            if value != 1.0:
                raise ValueError(
                    f"Received an invalid value for `{name}`: it weights a term of the "
                    "β-TCVAE objective, so it needs objective='beta_tcvae'. Received: "
                    f"{name}={value}, objective={objective!r}"
                )
        if dataset_size is not None:
            raise ValueError(
                "Received an invalid value for `dataset_size`: it sizes β-TCVAE's estimate of "
                "the aggregate posterior, so it needs objective='beta_tcvae'. Received: "
                f"dataset_size={dataset_size}, objective={objective!r}"
            )
        return weights + (dataset_size,)
    if posterior is not None and not posterior.independent_dimensions:
        raise ValueError(
            "Received an invalid value for `objective`: β-TCVAE estimates log q(z_j) per latent "
            "dimension, so it needs a posterior with independent Gaussian dimensions (a "
            f"diagonal Gaussian). Received: objective='beta_tcvae' with "
            f"{_checks.type_name(posterior)}"
        )
    if prior is not None and not prior.has_kl_per_dimension:
        raise ValueError(
            "Received an invalid value for `objective`: β-TCVAE's dimension-wise KL needs a "
            "prior that factorises over latent dimensions (a standard normal). Received: "
            f"objective='beta_tcvae' with {_checks.type_name(prior)}"
        )
    return weights + (dataset_size,)


# ---------------------------------------------------------------------------
# binarize × likelihood. The rules read the likelihood's declarations
# (`LikelihoodHead.binarize_modes`, `auto_binarize`, `support`), so a new likelihood
# brings its own answer; `likelihood` may be a head class or instance.

# `binarize`: "auto" (see `resolve_binarize`), "none", or a Bernoulli(x) draw of [0, 1]
# data, once ("static") or afresh every batch ("dynamic").
BINARIZE = ("auto", "none", "static", "dynamic")


def check_binarize(binarize, likelihood, name=None):
    """`binarize` must be "auto" or one of the modes the likelihood accepts
    (`likelihood.binarize_modes`; level likelihoods model levels, not binary data).

    Args:
      binarize: one of `BINARIZE`.
      likelihood: a likelihood head class or instance.
      name: what the user called the likelihood (e.g. `"categorical"`), for the
        message. Default value: the class name.

    Returns:
      `binarize`, checked.
    """
    binarize = _checks.one_of("binarize", binarize, BINARIZE)
    if binarize == "auto" or binarize in likelihood.binarize_modes:
        return binarize
    label = name if name is not None else _checks.type_name(likelihood)
    # A class whose support depends on its arguments (levels) has no `describe` yet.
    describe = getattr(likelihood.support, "describe", None)
    what = (f"accepts binarize in {likelihood.binarize_modes}"
            if "none" not in likelihood.binarize_modes else
            f"models {describe()}, not binary data" if describe else "models no binary data")
    raise ValueError(f"Received an invalid value for `binarize`: the {label!r} likelihood "
                     f"{what}. Received: binarize={binarize!r}")


def resolve_binarize(binarize, likelihood, grey, name=None):
    """What `binarize` means for a likelihood and its data, checked (`check_binarize`).

    `"auto"` is `"static"` when the likelihood declares `auto_binarize` (a
    Bernoulli, which would otherwise score grey values with a cross-entropy, not
    a likelihood) and the data are grey, else `"none"`; other modes are returned
    as given.

    Args:
      binarize: one of `BINARIZE`.
      likelihood: a likelihood head class or instance.
      grey: whether the data hold values strictly between 0 and 1 (all in [0, 1]):
        a bool, or a function returning one, called only when `"auto"` needs it
        (so a stream is probed only then).
      name: the likelihood's name for messages (see `check_binarize`).

    Returns:
      `"none"`, `"static"` or `"dynamic"`.
    """
    binarize = check_binarize(binarize, likelihood, name)
    if binarize != "auto":
        return binarize
    if not likelihood.auto_binarize:
        return "none"
    return "static" if (grey() if callable(grey) else grey) else "none"
