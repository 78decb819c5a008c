"""Training objectives as parts: what a `tfvae.VAE` minimises, declared and registered by name.

A `VAE` holds an `Objective` as it holds a prior. Each training or test step
builds one `StepContext` (the encoder runs once: the posterior's parameters
are in it) and asks the objective for its per-example terms `[batch]`; the
objective reads the model only through its public tensor-level seams
(`posterior`, `prior`, `log_likelihood_fn`, `analytic_kl`, `kl_groups`, ...).
What the model and the command line need to know about an objective, it
declares: its metric names, whether β (and a KL warm-up) and free bits act on
it, whether it gives the encoder a loss of its own, and its hyperparameters.

New objectives register under a name, as TFP registers KL divergences::

    @tfvae.objective_parts.register_objective("my_objective")
    class MyObjective(tfvae.objective_parts.Objective):
        metric_names = ("my_term",)
        hyperparameters = {"my_weight": Hyperparameter(1.0, _checks.non_negative_float,
                                                       "weights my term")}

        def terms(self, model, context):
            terms = elbo_terms(model, context)
            ...
            return terms

after which `build_vae(..., objective="my_objective", my_weight=2.0)` and
`tfvae train --objective my_objective --my-weight 2` train it.
"""

import dataclasses
from typing import Any, Optional

import tensorflow as tf

from tfvae import _checks
from tfvae import objectives
from tfvae import hyperparameters as hyperparameters_lib
from tfvae.hyperparameters import Hyperparameter
from tfvae.hyperparameters import check_values

__all__ = [
    "BetaTCVAE",
    "ELBO",
    "IWAE",
    "Objective",
    "StepContext",
    "elbo_terms",
    "hyperparameters",
    "make_objective",
    "names",
    "objective_class",
    "register_objective",
]

_REGISTRY = {}


def register_objective(name):
    """A class decorator registering an `Objective` subclass under `name`."""

    def register(cls):
        if not (isinstance(cls, type) and issubclass(cls, Objective)):
            raise TypeError(f"register_objective({name!r}) needs an Objective subclass, "
                            f"got {cls!r}")
        for key, spec in cls.hyperparameters.items():
            for other in _REGISTRY.values():
                if key in other.hyperparameters and other.hyperparameters[key] != spec:
                    raise ValueError(f"Hyperparameter {key!r} of {cls.__name__} is declared "
                                     f"differently by {other.__name__}.")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return register


def names():
    """The registered objectives' names, in registration order."""
    return tuple(_REGISTRY)


def objective_class(name):
    """The `Objective` subclass registered as `name` (or `name` itself if it is one)."""
    if isinstance(name, type) and issubclass(name, Objective):
        return name
    if isinstance(name, Objective):
        return type(name)
    return _REGISTRY[_checks.one_of("objective", name, names())]


def hyperparameters():
    """Every registered objective's hyperparameters: name -> `(Hyperparameter, owner name)`."""
    return {key: (spec, owners[0])
            for key, (spec, owners) in hyperparameters_lib.declarations(_REGISTRY).items()}


def make_objective(objective, values=None):
    """The `Objective` for a name (or an instance, returned as it is) and hyperparameter values.

    Values of hyperparameters that belong to other registered objectives must
    be their defaults (they do not act on this objective), and for an instance
    a value given again must equal its own (`tfvae.hyperparameters.route`).

    Args:
      objective: a registered name or an `Objective`.
      values: a dict of hyperparameter values (of any registered objective).

    Returns:
      An `Objective`.
    """
    values = dict(values or {})
    if isinstance(objective, Objective):
        hyperparameters_lib.route("objective", objective.name,
                                  {**_REGISTRY, objective.name: type(objective)}, values,
                                  built=objective.get_config())
        return objective
    cls = objective_class(objective)
    return cls(**hyperparameters_lib.route("objective", cls.name, _REGISTRY, values))


@dataclasses.dataclass(frozen=True)
class StepContext:
    """Everything one step's objective needs about its batch, computed once.

    Attributes:
      x: data `[batch] + event_shape`, float32.
      y: the prepared condition `[batch, C]`, or None.
      training: whether the networks run in training mode.
      parameters: the posterior head's named parameters for x (the encoder's
        one pass of the step).
      valid: boolean `[batch]`, the rows that can be scored (`VAE.valid_rows`).
      seed: the step's noise seed (a `[2]` int tensor or an int), or None.
      offset: the index of this replica's first example in the global batch,
        so each example's noise does not depend on how the batch is split.
      noise: explicit standard normal noise `[L, batch, latent_dim]`, or None.
    """

    x: Any
    y: Any
    training: bool
    parameters: dict
    valid: Any
    seed: Any = None
    offset: Any = 0
    noise: Optional[Any] = None

    def global_batch(self, tensors):
        """`tensors` (a structure of `[batch, ...]` tensors) for the global batch under a
        `tf.distribute` strategy, and this replica's offset in it (the step's `offset`;
        `objectives.all_gather`)."""
        return objectives.all_gather(tensors, offset=self.offset)


class Objective:
    """The base of training objectives: per-example terms from one `StepContext`.

    Class attributes (declarations the model, `tfvae.options` and the command
    line read):
      name: the registered name (set by `register_objective`).
      metric_names: the terms `fit` reports beside `loss`, `elbo`,
        `reconstruction` and `kl`.
      kl_weighted: whether β (and a KL warm-up) weight a KL term.
      free_bits: whether free bits can clamp its KL.
      encoder_loss: whether `terms` gives the encoder a surrogate of its own
        (`loss_encoder`, whose gradient replaces `loss`'s for the encoder's
        variables).
      label: its name in prose ("β-TCVAE").
      without_kl: for objectives that are not `kl_weighted`, the clause saying so
        in error messages.
      without_free_bits: for `kl_weighted` objectives without `free_bits`, the
        sentence saying why.
      hyperparameters: name -> `tfvae.hyperparameters.Hyperparameter`.
    """

    name = None
    metric_names = ()
    kl_weighted = True
    free_bits = False
    encoder_loss = False
    label = None
    without_kl = "it has no KL term"
    without_free_bits = "It has no single KL for free bits to clamp."
    hyperparameters = {}

    def __init__(self, **values):
        self._values = check_values(self.hyperparameters, values)
        for key, value in self._values.items():
            setattr(self, key, value)

    def check(self, posterior, prior):
        """Raises a `ValueError` if this objective cannot train with these parts (classes
        or instances; the rules read only their declared capabilities)."""

    def terms(self, model, context):
        """The per-example terms `[batch]`: a dict with `loss`, `elbo`, `reconstruction`,
        `kl` and one entry per `metric_names` (and `loss_encoder` if `encoder_loss`),
        plus `kl_groups` `[batch, G]` when the posterior reports groups."""
        raise NotImplementedError

    def get_config(self):
        """The hyperparameters' values (a `VAE`'s config holds them beside `objective`)."""
        return dict(self._values)

    def __repr__(self):
        values = ", ".join(f"{key}={value!r}" for key, value in self._values.items())
        return f"{type(self).__name__}({values})"


def elbo_terms(model, context, num_samples=None, return_z=False):
    """The ELBO's terms for `context` (`objectives.tensor_elbo`): z from the posterior's
    `reparameterize`, the likelihood at z, and the KL in closed form when the posterior
    writes it out (`model.analytic_kl`), else `objectives.kl_divergence` at z (TFP's
    registered KL, or Monte Carlo).

    Args:
      model: a `tfvae.VAE`.
      context: a `StepContext`.
      num_samples: L. Default value: the model's `num_samples`.
      return_z: also return the samples z `[L, batch, latent_dim]` the terms were
        computed at (for objectives that add a term of z, such as an MMD, without a
        second encoder pass or draw). Default value: `False`.

    Returns:
      A dict of `[batch]` tensors `loss`, `elbo`, `reconstruction`, `kl` (and
      `kl_groups` `[batch, G]`); with `return_z`, the pair `(terms, z)`.
    """
    parameters = context.parameters
    kl = model.analytic_kl(parameters)
    if kl is None:
        # q's own sampler: a flow's log q(z) then reads its noise back, not inverting it.
        posterior, sample = model.posterior.sampler(parameters)
        prior = model.prior.distribution()
        kl = lambda z: objectives.kl_divergence(posterior, prior, z=z, kl=model.kl_method)  # noqa: E731
    else:
        sample = lambda eps: model.posterior.reparameterize(parameters, eps)  # noqa: E731
    z, reconstruction = objectives.sampled_reconstruction(
        context.x, sample, model.log_likelihood_fn(context.y, context.training),
        model.latent_dim, num_samples or model.num_samples, context.seed, context.noise,
        context.offset)
    terms = objectives.elbo_from_terms(
        reconstruction, kl(z) if callable(kl) else kl, z, beta=tf.convert_to_tensor(model.beta),
        free_bits=model.free_bits, group_kl=model.kl_groups(parameters),
        free_bits_by_group=model.free_bits_groups is not None)
    return (terms, z) if return_z else terms


@register_objective("elbo")
class ELBO(Objective):
    """The evidence lower bound, `−reconstruction + β · max(KL, free_bits)` per example."""

    label = "ELBO"
    free_bits = True

    def terms(self, model, context):
        return elbo_terms(model, context)


@register_objective("iwae")
class IWAE(Objective):
    """The importance-weighted bound with `k` samples (Burda et al., 2016), reported beside
    the ELBO's terms; `gradient_estimator="dreg"` gives the encoder the doubly
    reparameterised surrogate (Tucker et al., 2019)."""

    metric_names = ("iwae",)
    label = "IWAE"
    kl_weighted = False
    without_kl = "the IWAE bound has no KL term"
    hyperparameters = {
        "k": Hyperparameter(5, _checks.positive_int, "importance samples K of the IWAE bound",
                            type=int),
        "gradient_estimator": Hyperparameter(
            "standard", None, "IWAE encoder gradients: standard or doubly reparameterised",
            type=str, choices=("standard", "dreg")),
    }

    @property
    def encoder_loss(self):
        return self.gradient_estimator == "dreg"

    def check(self, posterior, prior):
        from tfvae import options  # options reads this module's declarations

        options.check_dreg(self.gradient_estimator, posterior, prior)

    def terms(self, model, context):
        parameters = context.parameters
        stopped = None
        if self.encoder_loss:
            stopped = model.posterior.distribution(tf.nest.map_structure(tf.stop_gradient,
                                                                         parameters))
        posterior, sample = model.posterior.sampler(parameters)
        return objectives.iwae(
            context.x, posterior, model.likelihood_fn(context.y, context.training),
            model.prior.distribution(), self.k, kl=model.kl_method, seed=context.seed,
            offset=context.offset, stopped_posterior=stopped,
            group_kl=model.kl_groups(parameters), reparameterize=sample)


@register_objective("beta_tcvae")
class BetaTCVAE(Objective):
    """β-TCVAE's decomposed KL (Chen et al., 2018): `−reconstruction + β · (α · mi + β_TC ·
    tc + γ · dwkl)` (`objectives.beta_tcvae`), with the aggregate posterior estimated on
    the global batch under a `tf.distribute` strategy."""

    metric_names = ("mi", "tc", "dwkl")
    label = "β-TCVAE"
    without_free_bits = ("β-TCVAE splits the KL into index-code MI, total correlation and "
                         "dimension-wise KL, with no single KL for free bits to clamp.")
    hyperparameters = {
        "mi_weight": Hyperparameter(1.0, _checks.non_negative_float, "β-TCVAE: α, the weight "
                                    "of the index-code mutual information"),
        "tc_weight": Hyperparameter(1.0, _checks.non_negative_float, "β-TCVAE: the weight of "
                                    "the total correlation (the 'β' of β-TCVAE)"),
        "dwkl_weight": Hyperparameter(1.0, _checks.non_negative_float, "β-TCVAE: γ, the weight "
                                      "of the dimension-wise KL"),
        "dataset_size": Hyperparameter(None, _checks.positive_int, "the training examples N "
                                       "that β-TCVAE's aggregate posterior averages over "
                                       "(a run sets it)", type=int, flag=False),
    }

    def check(self, posterior, prior):
        from tfvae import options  # options reads this module's declarations

        options.check_factorised(posterior, prior, self)

    def terms(self, model, context):
        parameters = context.parameters
        return objectives.beta_tcvae(
            context.x, parameters["loc"], parameters["scale"],
            lambda eps: model.posterior.reparameterize(parameters, eps),
            model.log_likelihood_fn(context.y, context.training),
            model.prior.distribution().log_prob, kl_term=model.analytic_kl(parameters),
            num_samples=model.num_samples, seed=context.seed, noise=context.noise,
            offset=context.offset, beta=tf.convert_to_tensor(model.beta),
            mi_weight=self.mi_weight, tc_weight=self.tc_weight, dwkl_weight=self.dwkl_weight,
            dataset_size=self.dataset_size, valid=context.valid)
