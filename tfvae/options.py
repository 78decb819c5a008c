"""Which options go together: the one home of tfvae's cross-argument rules.

`tfvae.VAE`, `tfvae.build_vae` and the command line's `RunConfig` all call
these functions, so a rule is stated once. Rules that depend on a part (a
posterior or a prior) read only the capabilities the part declares
(`Posterior.check_kl_groups`, `Posterior.dreg_unbiased`,
`Prior.uses_encoder`, ...), so they work on classes (names, before anything
is built) and on instances alike.
"""

import logging

from tfvae import _checks
from tfvae import objective_parts

__all__ = [
    "BINARIZE",
    "check_architecture",
    "check_binarize",
    "check_condition_dim",
    "check_dreg",
    "check_factorised",
    "check_free_bits_groups",
    "check_objective",
    "check_prior_name",
    "check_top_latent_dim",
    "execution",
    "LR_SCHEDULES",
    "resolve_binarize",
]

# How a run's learning rate moves over its epochs (`tfvae.training.learning_rate_schedule`).
LR_SCHEDULES = ("constant", "cosine")


def check_objective(objective, beta=1.0, free_bits=0.0, warmup_epochs=0.0):
    """β, free bits and KL warm-up act on a KL term: the objective (a name, class or
    instance of `tfvae.objective_parts`) must declare one (`kl_weighted`) and, for free
    bits, that free bits can clamp it (`free_bits`).

    Returns:
      `objective`, checked (a name stays a name).
    """
    cls = objective_parts.objective_class(objective)
    name = cls.name
    if not cls.free_bits and cls.kl_weighted and free_bits > 0:
        raise ValueError(
            f"Received an invalid value for `free_bits`: {cls.without_free_bits} Use "
            f"{_free_bits_objectives()}, or free_bits=0. Received: free_bits={free_bits}, "
            f"objective={name!r}"
        )
    if not cls.kl_weighted and (beta != 1.0 or free_bits > 0 or warmup_epochs > 0):
        raise ValueError(
            f"Received an invalid value for `objective`: {cls.without_kl} for β, KL warm-up "
            f"or free bits to act on. Use {_free_bits_objectives()}, or beta=1 and "
            f"free_bits=0 without warm-up. Received: objective={name!r}, beta={beta}, "
            f"free_bits={free_bits}, warmup_epochs={warmup_epochs}"
        )
    return objective


def _free_bits_objectives():
    return " or ".join(f"objective={name!r}" for name in objective_parts.names()
                       if objective_parts.objective_class(name).free_bits)


def check_dreg(gradient_estimator, posterior, prior):
    """DReG needs a q whose density depends on the encoder only through its parameters
    (no weights of q's own, no encoder inside p(z))."""
    if gradient_estimator != "dreg":
        return
    own_weights = not isinstance(posterior, type) and bool(posterior.trainable_variables)
    if not posterior.dreg_unbiased or own_weights or prior.uses_encoder:
        raise ValueError(
            "Received an invalid value for `gradient_estimator`: 'dreg' stops gradients "
            "through q's parameters only, so it is biased when q or p(z) has weights of its "
            f"own (here {_checks.type_name(posterior)} / {_checks.type_name(prior)}). Use "
            "gradient_estimator='standard'. Received: gradient_estimator='dreg'"
        )


def check_factorised(posterior, prior, objective):
    """An objective that splits the KL per latent dimension (β-TCVAE) needs q(z|x) =
    Π_j q(z_j|x) Gaussian (`posterior.independent_dimensions`) and a prior that factorises
    over the same dimensions (`prior.has_kl_per_dimension`); parts as classes or instances,
    `objective` an `Objective` (its `name` and `label` name it)."""
    if not posterior.independent_dimensions:
        raise ValueError(
            f"Received an invalid value for `objective`: {objective.label} estimates log q(z_j) per "
            "latent dimension, so it needs a posterior with independent Gaussian dimensions (a "
            f"diagonal Gaussian). Received: objective={objective.name!r} with "
            f"{_checks.type_name(posterior)}"
        )
    if not prior.has_kl_per_dimension:
        raise ValueError(
            f"Received an invalid value for `objective`: {objective.label}'s dimension-wise KL needs a "
            "prior that factorises over latent dimensions (a standard normal). Received: "
            f"objective={objective.name!r} with {_checks.type_name(prior)}"
        )


def check_free_bits_groups(groups, free_bits, objective, posterior, prior, latent_dim):
    """Free bits per group of latent dimensions (`groups`; `None`: per example).

    Returns:
      The number of groups, or `None`.
    """
    if groups is None:
        return None
    groups = _checks.positive_int("free_bits_groups", groups)
    cls = objective_parts.objective_class(objective)
    if not free_bits or not cls.free_bits:
        raise ValueError(
            "Received an invalid value for `free_bits_groups`: it says how `free_bits` "
            f"applies to the ELBO's KL, so it needs free_bits > 0 and {_free_bits_objectives()}. "
            f"Received: free_bits_groups={groups}, free_bits={free_bits}, "
            f"objective={cls.name!r}"
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
    """`build_vae` names: a hierarchy's prior is its own p(z2) p(z1|z2), named 'standard_normal';
    a posterior that declares `own_prior` (VQ) takes no prior name but the default."""
    if posterior == "hierarchical" and prior != "standard_normal":
        raise ValueError(
            "Received an invalid value for `prior`: a hierarchical model's prior is "
            "p(z2) p(z1|z2) with a standard normal p(z2); use prior='standard_normal'. "
            f"Received: prior={prior!r}"
        )
    from tfvae import builders  # builders reads this module's rules

    own = builders.POSTERIORS[posterior].own_prior if posterior in builders.POSTERIORS else None
    if own is not None and prior != "standard_normal":
        raise ValueError(
            f"Received an invalid value for `prior`: posterior={posterior!r} brings its own "
            f"prior ({own.__name__}); leave `prior` at its default. Received: prior={prior!r}"
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


logger = logging.getLogger(__name__)


def check_architecture(architecture, input_shape):
    """A convolutional network needs images `(height, width, channels)`; an MLP takes any shape.

    Args:
      architecture: `"mlp"` or `"conv"` (the name itself is checked by `build_vae`).
      input_shape: the shape of one example, as a tuple.

    Returns:
      `architecture`, unchanged.

    Raises:
      ValueError: `architecture="conv"` and `input_shape` is not 3-D.
    """
    if architecture == "conv" and len(input_shape) != 3:
        raise ValueError(
            "Received an invalid value for `input_shape`: architecture='conv' needs images "
            f"(height, width, channels). Received: input_shape={tuple(input_shape)}"
        )
    return architecture


def execution(jit_compile, steps_per_execution, architecture, strategy="default", gpu=False):
    """How a run's train step is compiled: XLA or not, and training steps per compiled call.

    The rules:

    * `jit_compile=None` means XLA for an MLP, and for a conv net only on a GPU
      (measured in benchmarks/README.md: on a CPU XLA's convolutions are slower than
      oneDNN's).
    * Under any `tf.distribute` strategy but `"default"`, XLA is off and
      `steps_per_execution` is 1: Keras 3 on TensorFlow fails with either under a
      strategy (XLA: variables on several devices; multi-step loops: unfed
      placeholders). When this changes what was asked, it is logged at INFO (the
      CLI shows tfvae's INFO messages) with the values asked for and the reason.

    Args:
      jit_compile: `True`, `False`, or `None` (choose by `architecture` and `gpu`).
      steps_per_execution: training steps per compiled call asked for (a positive int).
      architecture: `"mlp"` or `"conv"`.
      strategy: the run's `--strategy` name (`"default"`, `"mirrored"`, `"multiworker"`).
        Default value: `"default"`.
      gpu: whether TensorFlow sees a GPU. Default value: `False`.

    Returns:
      `(jit_compile, steps_per_execution)`: the values to compile with (a bool and an int).
    """
    asked = jit_compile
    if jit_compile is None:
        jit_compile = architecture == "mlp" or bool(gpu)
    if strategy != "default" and (jit_compile or steps_per_execution > 1):
        logger.info(
            "distributed training: turning off XLA and steps_per_execution (strategy=%r: "
            "jit_compile=%s -> False, steps_per_execution=%d -> 1), because Keras 3 on "
            "TensorFlow fails with either under a tf.distribute strategy",
            strategy, asked, steps_per_execution)
        return False, 1
    return jit_compile, steps_per_execution


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
