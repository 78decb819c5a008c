"""tfvae.disentanglement: MIG on synthetic codes whose MIG is known, against independent
computations (scikit-learn's mutual information, numpy histograms, a hand computation,
the chi-square law of the plug-in estimate's bias)."""

import math

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics

from tfvae import disentanglement
from tfvae import shapes

from helpers import raises

# The shapes product set: five exactly independent factors with 3, 4, 6, 17, 17 values.
FACTORS = shapes.all_factors()
N = len(FACTORS)


def _entropies(factors):
    return np.array([stats.entropy(np.bincount(column)) for column in factors.T])


def _independent_bound(num_bins, factors, num_dims, level=1e-4):
    """Per factor, a bound on max_j I(z_j; v_k) / H(v_k) over `num_dims` code dimensions
    independent of the factors: 2n·I is asymptotically χ² with (bins − 1)(values − 1)
    degrees of freedom, so all d·K estimates stay below the χ² quantile at
    1 − level/(d·K) with probability ≥ 1 − level (a union bound)."""
    sizes = np.array([len(np.unique(column)) for column in factors.T])
    df = (num_bins - 1) * (sizes - 1)
    quantile = stats.chi2.ppf(1 - level / (num_dims * len(sizes)), df)
    return quantile / (2 * len(factors)) / _entropies(factors)


def test_a_copy_of_the_factors_scores_exactly_one():
    # Codes: the five factors in a shuffled order, with two constant dimensions between.
    order = [3, 0, 4, 1, 2]
    codes = np.concatenate([FACTORS[:, order], np.full((N, 2), 0.7)], axis=1)
    result = disentanglement.mig(codes, FACTORS)
    np.testing.assert_allclose(result.factor_entropy, np.log(shapes.FACTOR_SIZES), rtol=1e-12)
    # Each copy holds all of its factor (at most 17 values: one per bin of 20) and,
    # the factors being exactly independent in the product set, nothing of the others.
    expected = np.zeros((7, 5))
    expected[np.arange(5), order] = np.log(shapes.FACTOR_SIZES)[order]
    np.testing.assert_allclose(result.mutual_information, expected, atol=1e-12)
    np.testing.assert_allclose(result.gaps, 1.0, atol=1e-12)
    assert result.score == pytest.approx(1.0, abs=1e-12)


def test_a_copy_of_the_factors_with_noise_dimensions_scores_close_to_one():
    rng = np.random.default_rng(0)
    noise = rng.uniform(size=(N, 5))
    codes = np.concatenate([FACTORS + 0.01 * rng.normal(size=FACTORS.shape), noise], axis=1)
    result = disentanglement.mig(codes, FACTORS)
    # The gap loses at most what the most informative noise dimension seems to carry.
    bound = _independent_bound(20, FACTORS, num_dims=5)
    assert np.all(result.gaps >= 1 - bound) and np.all(result.gaps <= 1)
    assert result.score >= 1 - bound.mean()
    assert np.all(bound < 0.06)  # the test is tight enough to mean "close to one"


def test_codes_independent_of_the_factors_score_near_zero_within_the_estimator_s_bias():
    codes = np.random.default_rng(1).uniform(size=(N, 10))
    result = disentanglement.mig(codes, FACTORS)
    bound = _independent_bound(20, FACTORS, num_dims=10)
    assert np.all(result.gaps <= bound) and result.score <= bound.mean()
    # The plug-in MI is biased up by about (bins − 1)(values − 1) / (2n) per entry; pooled
    # over the 50 entries the χ² statistics have ~8,000 degrees of freedom, so their
    # mean is within 10 % (about 6 standard deviations) of the bias.
    sizes = np.array(shapes.FACTOR_SIZES)
    bias = 19 * (sizes - 1) / (2 * N)
    ratio = result.mutual_information.sum() / (10 * bias.sum())
    assert 0.9 < ratio < 1.1, ratio


def test_mutual_information_matches_a_hand_computation_and_scikit_learn():
    # z = 0, 0, 0, 1 and v = 0, 0, 1, 1: p(z, v) = 1/2, 1/4, 0, 1/4.
    by_hand = 0.5 * math.log(4 / 3) + 0.25 * math.log(2 / 3) + 0.25 * math.log(2)
    assert disentanglement.mutual_information([0, 0, 0, 1], [0, 0, 1, 1]) == pytest.approx(
        by_hand, rel=1e-12)
    result = disentanglement.mig(np.array([[0.0, 5.0], [0.0, 5.0], [0.0, 6.0], [1.0, 6.0]]),
                                 np.array([[0], [0], [1], [1]]), num_bins=2)
    # Dimension 1 (5, 5, 6, 6) is v itself: I = H(v) = log 2; dimension 0 has `by_hand`.
    np.testing.assert_allclose(result.mutual_information[:, 0], [by_hand, math.log(2)])
    assert result.score == pytest.approx((math.log(2) - by_hand) / math.log(2))


def test_the_mi_matrix_is_scikit_learn_s_on_numpy_histogram_bins():
    rng = np.random.default_rng(2)
    factors = shapes.sample_factors(3000, seed=2)
    # Codes that depend on the factors, with noise, on different scales and signs.
    codes = np.stack([factors[:, 3] + rng.normal(size=3000),
                      -4.0 * factors[:, 1] + factors[:, 4] + rng.normal(size=3000),
                      rng.standard_t(3, size=3000),
                      100 * np.sin(factors[:, 2]) + rng.normal(size=3000)], axis=1)
    result = disentanglement.mig(codes, factors, num_bins=11)
    # disentanglement_lib's discretisation: np.histogram's edges, np.digitize.
    binned = np.stack([np.digitize(c, np.histogram(c, 11)[1][:-1]) for c in codes.T], axis=1)
    np.testing.assert_array_equal(disentanglement.discretize(codes, 11) + 1, binned)
    expected = np.array([[metrics.mutual_info_score(v, z) for v in factors.T]
                         for z in binned.T])
    np.testing.assert_allclose(result.mutual_information, expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(result.factor_entropy, _entropies(factors), rtol=1e-12)
    # The gaps, from the sorted matrix.
    top = np.sort(expected, axis=0)
    np.testing.assert_allclose(result.gaps, (top[-1] - top[-2]) / _entropies(factors),
                               rtol=1e-10, atol=1e-12)


def test_mixing_two_factors_in_each_dimension_lowers_the_mig():
    x, y = FACTORS[:, 3], FACTORS[:, 4]
    pair = FACTORS[:, 3:]
    separated = disentanglement.mig(np.stack([x, y], axis=1).astype(float), pair)
    mixed = disentanglement.mig(np.stack([x + y, x - y], axis=1).astype(float), pair)
    assert separated.score == pytest.approx(1.0)
    # x + y and x − y each tell as much about x as about y: no dimension stands out.
    np.testing.assert_allclose(mixed.mutual_information[0, 0], mixed.mutual_information[0, 1])
    assert mixed.score < 0.1
    # A third dimension x + y beside the separated ones: each factor's runner-up is now
    # x + y, which knows part of it, so each gap drops from 1 by I(x + y; v) / H(v).
    added = disentanglement.mig(np.stack([x, y, x + y], axis=1).astype(float), pair)
    share = metrics.mutual_info_score(x, np.digitize(x + y, np.histogram(x + y, 20)[1][:-1]))
    np.testing.assert_allclose(added.gaps, 1 - share / np.log(17), rtol=1e-10)
    assert added.score < separated.score - 0.1


def test_mig_ignores_affine_changes_and_the_order_of_code_dimensions():
    rng = np.random.default_rng(3)
    codes = np.stack([FACTORS[:, 0] + rng.normal(size=N), FACTORS[:, 3] * 0.1
                      + rng.normal(size=N), rng.normal(size=N)], axis=1)
    result = disentanglement.mig(codes, FACTORS)
    changed = disentanglement.mig((codes * [2.0, 1.0, 0.5] + [3.0, -1.0, 0.0])[:, [2, 0, 1]],
                                  FACTORS)
    assert changed.score == pytest.approx(result.score, rel=1e-12)
    np.testing.assert_allclose(changed.mutual_information, result.mutual_information[[2, 0, 1]])
    assert 0 < result.score < 1


def test_discretize_uses_equal_width_bins_and_puts_the_maximum_in_the_last():
    codes = np.array([[0.0, 3.0], [0.5, 3.0], [0.99, 3.0], [1.0, 3.0], [2.0, 3.0]])
    np.testing.assert_array_equal(disentanglement.discretize(codes, num_bins=4),
                                  [[0, 0], [1, 0], [1, 0], [2, 0], [3, 0]])


@pytest.mark.parametrize("codes, factors, fragments", [
    (np.zeros(6), np.zeros((6, 1), "int64"), ["`codes`", "shape (6,)"]),
    (np.zeros((6, 1)), np.zeros((6, 1), "int64"), ["`codes`", "at least 2", "shape (6, 1)"]),
    (np.array([[0.0, np.nan]] * 6), np.zeros((6, 1), "int64"), ["`codes`", "6 NaN"]),
    (np.array([["a", "b"]] * 6), np.zeros((6, 1), "int64"), ["`codes`", "dtype <U1"]),
    (np.zeros((6, 2)), np.zeros((6, 1), "float32"), ["`factors`", "integer", "float32"]),
    (np.zeros((6, 2)), np.zeros(6, "int64"), ["`factors`", "[n, K]", "shape (6,)"]),
    (np.zeros((6, 2)), np.zeros((5, 1), "int64"), ["`factors`", "one row per row", "(5, 1)"]),
    (np.zeros((6, 2)), np.zeros((6, 0), "int64"), ["`factors`", "at least one factor"]),
    (np.zeros((6, 2)), np.array([[0, 4]] * 3 + [[1, 4]] * 3),
     ["`factors`", "entropy", "factors[:, 1] constant at 4"]),
])
def test_mig_refuses_bad_codes_and_factors(codes, factors, fragments):
    with raises(*fragments):
        disentanglement.mig(codes, factors)


@pytest.mark.parametrize("num_bins", [1, 0, -3, 2.5, None, "20", True])
def test_mig_refuses_a_bad_number_of_bins(num_bins):
    with raises("`num_bins`", f"num_bins={num_bins!r}", ">= 2"):
        disentanglement.mig(np.zeros((4, 2)), np.array([[0], [1], [0], [1]]), num_bins=num_bins)
