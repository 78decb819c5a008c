"""Argument checks that fail early with messages naming the argument.

Every check raises ``ValueError`` in the Keras style::

    Received an invalid value for `latent_dim`, expected a positive integer.
    Received: latent_dim=-3
"""

import numbers

import numpy as np

__all__ = [
    "batch_shape",
    "instance_of",
    "int_tuple",
    "network_output",
    "non_negative_float",
    "non_negative_int",
    "one_of",
    "open_fraction",
    "positive_float",
    "positive_int",
    "shape",
    "type_name",
]


def type_name(obj):
    """The class name of `obj`, or of `obj` itself if it is a class."""
    return obj.__name__ if isinstance(obj, type) else type(obj).__name__


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


def batch_shape(name, shape, event_shape):
    """Raises unless `shape` is `(batch,) + event_shape` (unknown sizes pass)."""
    shape = tuple(shape)
    if len(shape) != len(event_shape) + 1 or any(
        got is not None and got != want for got, want in zip(shape[1:], event_shape)
    ):
        raise ValueError(
            f"Received an invalid value for `{name}`, expected shape (batch,) + "
            f"{tuple(event_shape)}. Received: {name} with shape {shape}"
        )


def network_output(name, shape, head):
    """Raises unless a network's output `shape` holds `head.params_size` values per example."""
    size = int(np.prod(shape[1:]))
    if size != head.params_size:
        raise ValueError(
            f"The `{name}` must output {head.params_size} values per example for "
            f"{type(head).__name__} (its params_size). Received: {name} output "
            f"with shape {tuple(shape)}"
        )


def instance_of(name, value, cls, example):
    """Raises unless `value` is a `cls` (`example` names a class that would do)."""
    if not isinstance(value, cls):
        raise ValueError(
            f"Received an invalid value for `{name}`, expected a {name} head such as "
            f"{example}. Received: {name}={value!r}"
        )
    return value
