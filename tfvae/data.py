"""Datasets: the built-in handwritten digits (offline, shipped with scikit-learn)."""

import numpy as np

from tfvae import _checks


def load_digits(validation_fraction=0.2, seed=0):
    """scikit-learn's 1,797 real 8×8 handwritten digits, scaled to [0, 1].

    Args:
      validation_fraction: fraction held out for validation. Default value: `0.2`.
      seed: seed of the fixed shuffle before the split. Default value: `0`.

    Returns:
      `((x_train, y_train), (x_val, y_val))` with `x` float32 of shape
      `[n, 8, 8, 1]` (pixel intensities 0..16 divided by 16) and `y` int64 labels.
    """
    from sklearn import datasets

    fraction = float(validation_fraction)
    if not 0.0 < fraction < 1.0:
        raise ValueError(
            "Received an invalid value for `validation_fraction`, expected a number in "
            f"(0, 1). Received: validation_fraction={validation_fraction!r}"
        )
    seed = _checks.non_negative_int("seed", seed)
    digits = datasets.load_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]
    y = digits.target.astype("int64")
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    n_val = int(round(fraction * len(x)))
    return (x[n_val:], y[n_val:]), (x[:n_val], y[:n_val])
