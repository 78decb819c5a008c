"""Argument checks that fail early with messages naming the argument.

Every check raises ``ValueError`` in the Keras style::

    Received an invalid value for `latent_dim`, expected a positive integer.
    Received: latent_dim=-3
"""

import numbers

import numpy as np


def _fail(name, expected, value):
    raise ValueError(
        f"Received an invalid value for `{name}`, expected {expected}. "
        f"Received: {name}={value!r}"
    )


def positive_int(name, value):
    """Returns `value` as an int if it is a positive integer, else raises."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        _fail(name, "a positive integer", value)
    return int(value)


def non_negative_int(name, value):
    """Returns `value` as an int if it is an integer >= 0, else raises."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        _fail(name, "an integer >= 0", value)
    return int(value)


def non_negative_float(name, value):
    """Returns `value` as a float if it is a finite number >= 0, else raises."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not np.isfinite(value)
        or value < 0
    ):
        _fail(name, "a finite number >= 0", value)
    return float(value)


def positive_float(name, value):
    """Returns `value` as a float if it is a finite number > 0, else raises."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not np.isfinite(value)
        or value <= 0
    ):
        _fail(name, "a finite number > 0", value)
    return float(value)


def open_fraction(name, value):
    """Returns `value` as a float if it is a number strictly between 0 and 1, else raises."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 < value < 1.0:
        _fail(name, "a number in (0, 1)", value)
    return float(value)


def one_of(name, value, choices):
    """Returns `value` if it is one of `choices`, else raises."""
    if not isinstance(value, str) or value not in choices:
        _fail(name, "one of " + ", ".join(repr(c) for c in choices), value)
    return value


def shape(name, value):
    """Returns `value` as a tuple of positive ints (an event shape), else raises."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = (value,)
    try:
        dims = tuple(value)
    except TypeError:
        _fail(name, "a shape (a tuple of positive integers)", value)
    if not dims or any(
        isinstance(d, bool) or not isinstance(d, numbers.Integral) or d <= 0 for d in dims
    ):
        _fail(name, "a shape (a non-empty tuple of positive integers)", value)
    return tuple(int(d) for d in dims)


def int_tuple(name, value, allow_empty=True):
    """Returns `value` as a tuple of positive ints (layer widths), else raises."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = (value,)
    try:
        dims = tuple(value)
    except TypeError:
        _fail(name, "a sequence of positive integers", value)
    if (not dims and not allow_empty) or any(
        isinstance(d, bool) or not isinstance(d, numbers.Integral) or d <= 0 for d in dims
    ):
        _fail(name, "a sequence of positive integers", value)
    return tuple(int(d) for d in dims)
