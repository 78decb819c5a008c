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

    fraction = _checks.open_fraction("validation_fraction", validation_fraction)
    seed = _checks.non_negative_int("seed", seed)
    digits = datasets.load_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]
    y = digits.target.astype("int64")
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    n_val = int(round(fraction * len(x)))
    return (x[n_val:], y[n_val:]), (x[:n_val], y[:n_val])


def load_array_file(path, validation_fraction=0.2, seed=0):
    """Loads the user's own data from a `.npy` or `.npz` file.

    A `.npz` needs an array `x` (and may hold labels `y`). Images `[n, H, W]`
    get a channel axis; `uint8` data is scaled to [0, 1].

    Returns:
      `((x_train, y_train), (x_val, y_val))`; `y` is None without labels.
    """
    import os

    if not os.path.exists(path):
        raise ValueError(f"Received an invalid value for `dataset`: no such file {path!r}. "
                         "Use 'digits' or a path to a .npy/.npz file.")
    if path.endswith(".npz"):
        with np.load(path) as archive:
            if "x" not in archive:
                raise ValueError(f"{path!r} holds no array named 'x'. Received: {list(archive)}")
            x, y = archive["x"], archive["y"] if "y" in archive else None
    elif path.endswith(".npy"):
        x, y = np.load(path), None
    else:
        raise ValueError(f"Received an invalid value for `dataset`: {path!r} is not a .npy or "
                         ".npz file.")
    if x.ndim == 3:
        x = x[..., None]
    x = x.astype("float32") / 255.0 if x.dtype == np.uint8 else x.astype("float32")
    fraction = _checks.open_fraction("validation_fraction", validation_fraction)
    order = np.random.default_rng(_checks.non_negative_int("seed", seed)).permutation(len(x))
    n_val = max(1, int(round(fraction * len(x))))
    x = x[order]
    y = None if y is None else np.asarray(y)[order]
    split = lambda a, s: None if a is None else a[s]  # noqa: E731
    return (x[n_val:], split(y, slice(n_val, None))), (x[:n_val], split(y, slice(None, n_val)))


def to_levels(x, num_levels=256):
    """Maps [0, 1] data to integer levels 0..num_levels-1 (as float32) for pixel likelihoods."""
    return np.round(np.clip(np.asarray(x), 0.0, 1.0) * (num_levels - 1)).astype("float32")
