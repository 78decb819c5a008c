"""A part's own hyperparameters, declared once and reachable by name.

An objective (`tfvae.objective_parts`) or a posterior (`tfvae.heads.Posterior`) declares the
hyperparameters it takes as a dict of `Hyperparameter`s; `tfvae.VAE` and
`tfvae.build_vae` route keyword arguments of those names to the part, its
`get_config` writes them back, and the command line's `RunConfig` fields and
flags are derived from the same declarations, so a new part's options need no
hand-kept list anywhere else.
"""

import dataclasses
from typing import Any, Callable, Optional

from tfvae import _checks

__all__ = ["Hyperparameter", "check_values", "declarations", "route"]


@dataclasses.dataclass(frozen=True)
class Hyperparameter:
    """One hyperparameter of a part.

    Attributes:
      default: the value when it is not given (also `RunConfig`'s default).
      check: `(name, value) -> value`, e.g. `tfvae._checks.positive_int`.
      help: what it is, for `--help` and, in parentheses, the message refusing it
        on a part that does not take it ("β-TCVAE: the weight of the total
        correlation").
      type: the Python type of the value on the command line (`int`, `float`,
        `str`).
      choices: the allowed values of a string option. Default value: `None`.
      flag: whether `tfvae train` offers it as `--name` (`False` for values the
        run fills in itself, such as β-TCVAE's dataset size). Default value:
        `True`.
    """

    default: Any
    check: Callable[[str, Any], Any]
    help: str
    type: type = float
    choices: Optional[tuple] = None
    flag: bool = True

    def validate(self, name, value):
        """`value` checked (`None` stays `None` when that is the default)."""
        if value is None and self.default is None:
            return None
        if self.choices is not None:
            return _checks.one_of(name, value, self.choices)
        return self.check(name, value)


def check_values(declared, values):
    """Checks `values` (a dict) against `declared` (name -> `Hyperparameter`).

    Returns:
      Every declared hyperparameter's value: the given one, checked, or its default.
    """
    unknown = sorted(set(values) - set(declared))
    if unknown:
        raise ValueError(
            f"Received an invalid value for `{unknown[0]}`: not a hyperparameter of this part, "
            f"expected one of {sorted(declared)}. Received: {unknown[0]}={values[unknown[0]]!r}")
    return {name: spec.validate(name, values.get(name, spec.default))
            for name, spec in declared.items()}


def declarations(classes):
    """Every hyperparameter some part class declares, and the parts that declare it.

    Args:
      classes: registered name -> part class (each with a `hyperparameters` dict).

    Returns:
      name -> `(Hyperparameter, owners)`: the first declaring part's declaration, and
      the registered names of every part that declares it (e.g. the flows share
      `num_steps`).
    """
    declared = {}
    for name, cls in classes.items():
        for key, spec in cls.hyperparameters.items():
            declared.setdefault(key, (spec, []))[1].append(name)
    return declared


def route(kind, chosen, classes, values, built=None):
    """Takes the registered parts' hyperparameters out of `values`, keeping the chosen part's.

    A value of a hyperparameter that only other parts declare acts on none of
    the chosen part's terms, so it must be left at its default; anything else is
    refused, naming the parts that take it.

    Args:
      kind: the kind of part, as its keyword is spelled (`"objective"`, `"posterior"`).
      chosen: the chosen part's registered name.
      classes: registered name -> part class (each with a `hyperparameters` dict).
      values: a dict of keyword arguments; every key some part declares is
        removed from it.
      built: the chosen part's values when it is already built (an instance
        was passed): a value given again must equal its own. Default value:
        `None`.

    Returns:
      The chosen part's own values, checked, without the `None`s that stand for
      its own defaults.
    """
    own = {}
    for key, (spec, owners) in declarations(classes).items():
        if key not in values:
            continue
        value = spec.validate(key, values.pop(key))
        if key in classes[chosen].hyperparameters:
            if built is not None and value is not None and value != built[key]:
                raise ValueError(
                    f"Received an invalid value for `{key}`: the {kind} passed as an instance "
                    f"already sets {key}={built[key]!r}; set it there. Received: {key}={value!r}")
            if value is not None:
                own[key] = value
        elif value is not None and value != spec.default:
            takers = " or ".join(f"{kind}={name!r}" for name in owners)
            raise ValueError(
                f"Received an invalid value for `{key}`: it acts on {takers} only "
                f"({spec.help}), so it needs {takers}. Received: {key}={value!r}, "
                f"{kind}={chosen!r}")
    return own
