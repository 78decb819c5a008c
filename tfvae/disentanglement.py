"""Disentanglement measures from codes and known factors: the Mutual Information Gap.

`mig(codes, factors)` scores how well each known factor of variation (e.g. the
`tfvae.shapes` factors, `tfvae.data.load_factors`) is captured by one code dimension
alone. The helpers `discretize`, `entropy` and `mutual_information` are the discrete
estimators it is built from.
"""

import logging
import numbers
from typing import NamedTuple

import numpy as np

__all__ = [
    "discretize",
    "entropy",
    "mig",
    "MIGResult",
    "mutual_information",
]

logger = logging.getLogger(__name__)


class MIGResult(NamedTuple):
    """What `mig` returns.

    Attributes:
      score: the MIG, the mean of `gaps` (a float in [0, 1]).
      gaps: `[K]` per factor, the gap between the two largest normalised mutual
        informations `I(z_j; v_k) / H(v_k)` over the code dimensions j.
      mutual_information: `[d, K]` the plug-in `I(z_j; v_k)` in nats.
      factor_entropy: `[K]` the plug-in `H(v_k)` in nats.
    """

    score: float
    gaps: np.ndarray
    mutual_information: np.ndarray
    factor_entropy: np.ndarray


def _fail(name, expected, received):
    raise ValueError(
        f"Received an invalid value for `{name}`, expected {expected}. Received: {received}")


def _check_codes(codes):
    codes = np.asarray(codes)
    if codes.ndim != 2 or not np.issubdtype(codes.dtype, np.number):
        _fail("codes", "a numeric array [n, d] (e.g. posterior means)",
              f"codes of dtype {codes.dtype} and shape {codes.shape}")
    codes = codes.astype("float64")
    if not np.all(np.isfinite(codes)):
        _fail("codes", "finite values", f"codes with {int(np.sum(~np.isfinite(codes)))} "
              "NaN or infinite value(s)")
    return codes


def _check_factors(factors, num_examples):
    factors = np.asarray(factors)
    if factors.ndim != 2 or not np.issubdtype(factors.dtype, np.integer):
        _fail("factors", "an integer array [n, K], one column per factor",
              f"factors of dtype {factors.dtype} and shape {factors.shape}")
    if len(factors) != num_examples:
        _fail("factors", f"one row per row of `codes` ({num_examples})",
              f"factors of shape {factors.shape}")
    if factors.shape[1] == 0:
        _fail("factors", "at least one factor (column)", f"factors of shape {factors.shape}")
    return factors


def discretize(codes, num_bins=20):
    """Each column of `codes` in `num_bins` equal-width bins between its min and max.

    This is disentanglement_lib's `_histogram_discretize` (`np.histogram` edges,
    the maximum in the last bin); a constant column falls in bin 0.

    Args:
      codes: float `[n, d]`.
      num_bins: bins per column. Default value: `20`.

    Returns:
      int64 `[n, d]` bin indices in `0 .. num_bins - 1`.
    """
    codes = _check_codes(codes)
    num_bins = _check_num_bins(num_bins)
    low, high = codes.min(axis=0), codes.max(axis=0)
    span = np.where(high > low, high - low, 1.0)
    bins = np.floor((codes - low) / span * num_bins).astype("int64")
    return np.clip(bins, 0, num_bins - 1)


def _check_num_bins(num_bins):
    if (isinstance(num_bins, bool) or not isinstance(num_bins, numbers.Integral)
            or num_bins < 2):
        _fail("num_bins", "an integer >= 2", f"num_bins={num_bins!r}")
    return int(num_bins)


def _labels(values):
    """Values of a discrete variable as labels 0..m-1, and m."""
    unique, labels = np.unique(values, return_inverse=True)
    return labels.reshape(-1), len(unique)


def entropy(values):
    """The plug-in entropy `H(v) = -sum_v p(v) log p(v)` (nats) of discrete values `[n]`."""
    labels, _ = _labels(values)
    p = np.bincount(labels) / len(labels)
    return float(-np.sum(p * np.log(p)))


def mutual_information(a, b):
    """The plug-in mutual information `I(a; b)` (nats) of two discrete variables `[n]`.

    Mathematical details:

        I(a; b) = sum_{a, b} p(a, b) log(p(a, b) / (p(a) p(b)))

    with p the empirical frequencies. For independent variables its expectation is
    positive, about `(|a| - 1)(|b| - 1) / (2 n)` (2n·I is asymptotically χ² with that
    many degrees of freedom).
    """
    a, size_a = _labels(a)
    b, size_b = _labels(b)
    if len(a) != len(b):
        raise ValueError(f"`a` and `b` must have one value per example each. Received: "
                         f"{len(a)} and {len(b)} values")
    joint = np.bincount(a * size_b + b, minlength=size_a * size_b).reshape(size_a, size_b)
    joint = joint / len(a)
    outer = joint.sum(1, keepdims=True) * joint.sum(0, keepdims=True)
    nonzero = joint > 0
    return float(np.sum(joint[nonzero] * np.log(joint[nonzero] / outer[nonzero])))


def mig(codes, factors, num_bins=20):
    """The Mutual Information Gap (Chen et al., 2018) of codes for known factors.

    Each code dimension is discretised into `num_bins` equal-width bins (the
    disentanglement_lib convention, `discretize`; Chen et al. estimate I(z_j; v_k)
    from samples of q(z|x) instead), and the mutual information of every code
    dimension with every factor is estimated from the counts.

    Mathematical details:

        MIG = 1/K sum_k (I(z_{j_k}; v_k) - max_{j != j_k} I(z_j; v_k)) / H(v_k)

    where `j_k = argmax_j I(z_j; v_k)`. It is 1 when each factor is carried, whole,
    by one dimension that says nothing of the others, and near 0 when the codes are
    independent of the factors — near, not at: the plug-in estimate of each
    I(z_j; v_k) is biased up by about `(num_bins - 1)(|v_k| - 1) / (2n)` nats.

    Args:
      codes: float `[n, d]`, `d >= 2`: one code per example, by convention the
        posterior means.
      factors: integer `[n, K]`: the known factor values of the same examples, row
        for row (any integers; each column is a discrete variable).
      num_bins: bins per code dimension. Default value: `20`.

    Returns:
      A `MIGResult`: `score`, per-factor `gaps`, the `[d, K]` `mutual_information`
      matrix and the `factor_entropy` (nats).

    Raises:
      ValueError: codes that are not a finite `[n, d]` array with `d >= 2`, factors
        that are not integers `[n, K]`, or a factor that is constant (its entropy is 0,
        so its gap is undefined: drop the column).
    """
    codes = _check_codes(codes)
    factors = _check_factors(factors, len(codes))
    if codes.shape[1] < 2:
        _fail("codes", "at least 2 code dimensions (the gap is between the two most "
              "informative)", f"codes of shape {codes.shape}")
    binned = discretize(codes, num_bins)
    factor_entropy = np.array([entropy(column) for column in factors.T])
    if np.any(factor_entropy == 0):
        column = int(np.argmax(factor_entropy == 0))
        _fail("factors", "factors that vary (MIG divides by each factor's entropy)",
              f"factors[:, {column}] constant at {factors[0, column]}")
    information = np.array([[mutual_information(z, v) for v in factors.T]
                            for z in binned.T])
    top_two = np.sort(information, axis=0)[::-1][:2]
    gaps = (top_two[0] - top_two[1]) / factor_entropy
    logger.debug("MIG %.4f, gaps %s", gaps.mean(), gaps)
    return MIGResult(float(gaps.mean()), gaps, information, factor_entropy)
