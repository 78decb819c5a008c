"""The counter-based noise generator: N(0, 1) moments, determinism, XLA parity, offsets."""

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from tfvae import random as tfvae_random

from helpers import raises


def test_moments_match_standard_normal():
    n = 400_000
    z = tfvae_random.standard_normal([n], seed=123).numpy().astype(np.float64)
    # Standard errors of the sample mean and variance of N(0, 1) are 1/sqrt(n)
    # and sqrt(2/n); allow 5 of them.
    assert abs(z.mean()) < 5 / np.sqrt(n)
    assert abs(z.var() - 1.0) < 5 * np.sqrt(2.0 / n)
    assert stats.kstest(z, "norm").pvalue > 1e-4
    # Consecutive draws are uncorrelated (se of a correlation is 1/sqrt(n)).
    assert abs(np.corrcoef(z[:-1], z[1:])[0, 1]) < 5 / np.sqrt(n)


def test_different_seeds_give_independent_draws():
    n = 200_000
    a = tfvae_random.standard_normal([n], seed=1).numpy()
    b = tfvae_random.standard_normal([n], seed=2).numpy()
    assert abs(np.corrcoef(a, b)[0, 1]) < 5 / np.sqrt(n)
    np.testing.assert_array_equal(a, tfvae_random.standard_normal([n], seed=1).numpy())


def test_offset_indexes_a_larger_draw():
    seed = tfvae_random.make_seed(7)
    full = tfvae_random.standard_normal([12, 3], seed).numpy()
    part = tfvae_random.standard_normal([4, 3], seed, offset=15).numpy()
    np.testing.assert_array_equal(part, full[5:9])


def test_same_noise_eagerly_in_graph_and_under_xla():
    seed = tf.constant([5, 9], tf.int32)
    eager = tfvae_random.standard_normal([64, 8], seed).numpy()
    graph = tf.function(lambda s: tfvae_random.standard_normal([64, 8], s))(seed).numpy()
    xla = tf.function(lambda s: tfvae_random.standard_normal([64, 8], s), jit_compile=True)(
        seed
    ).numpy()
    np.testing.assert_array_equal(eager, graph)
    np.testing.assert_allclose(eager, xla, atol=1e-5)


def test_fold_in_gives_distinct_reproducible_seeds():
    seed = tfvae_random.make_seed(3)
    seeds = {tuple(tfvae_random.fold_in(seed, i).numpy()) for i in range(100)}
    assert len(seeds) == 100
    np.testing.assert_array_equal(tfvae_random.fold_in(seed, 4), tfvae_random.fold_in(seed, 4))


@pytest.mark.parametrize("seed", [0, 1, 2**31 - 1, 2**40 + 5])
def test_make_seed_accepts_python_ints(seed):
    s = tfvae_random.make_seed(seed)
    assert s.shape == (2,) and s.dtype == tf.int32


@pytest.mark.parametrize(
    "seed, shape",
    [
        (tf.constant([1, 2, 3]), "(3,)"),
        (np.array([[1, 2], [3, 4]]), "(2, 2)"),
        (tf.constant(7), "()"),
        (2.5, "()"),
    ],
    ids=["shape3", "shape2x2", "scalar_tensor", "float"],
)
def test_make_seed_bad_shape(seed, shape):
    with raises("`seed`", "[2]", shape):
        tfvae_random.make_seed(seed)


def test_make_seed_accepts_a_seed_pair():
    assert tfvae_random.make_seed(tf.constant([1, 2])).shape == (2,)
    assert tfvae_random.make_seed(5).shape == (2,)


def test_example_uniform_is_a_function_of_seed_and_id_alone():
    ids = tf.constant([7, 0, 2**40 + 3, 5], tf.int64)
    draw = tfvae_random.example_uniform(11, ids, [3, 2]).numpy()
    assert draw.shape == (4, 3, 2) and 0 < draw.min() and draw.max() < 1
    # The same example in another batch, at another position: the same numbers.
    again = tfvae_random.example_uniform(11, tf.constant([5, 2**40 + 3], tf.int64), [3, 2])
    np.testing.assert_array_equal(again.numpy(), draw[[3, 2]])
    # Under XLA too (the draw is integer hashing and one float scaling).
    compiled = tf.function(lambda i: tfvae_random.example_uniform(11, i, [3, 2]),
                           jit_compile=True)
    np.testing.assert_array_equal(compiled(ids).numpy(), draw)
    # Another seed or another id: another draw.
    assert not np.array_equal(tfvae_random.example_uniform(12, ids, [3, 2]).numpy(), draw)
    assert not np.array_equal(draw[0], draw[1])


def test_example_uniform_is_uniform_and_independent_across_examples_and_positions():
    draw = tfvae_random.example_uniform(0, tf.range(4000, dtype=tf.int64), [50]).numpy()
    assert stats.kstest(draw.ravel(), "uniform").pvalue > 1e-3
    # Neighbouring ids and neighbouring positions are uncorrelated (|r| < 5 / sqrt(n)).
    for a, b in ((draw[:-1], draw[1:]), (draw[:, :-1], draw[:, 1:])):
        r = np.corrcoef(a.ravel(), b.ravel())[0, 1]
        assert abs(r) < 5 / np.sqrt(a.size)
