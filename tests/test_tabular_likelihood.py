"""tfvae.TabularLikelihood: per-column terms against scipy, standardisation inside the model."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import special, stats

import tfvae
from tfvae import tabular
from tfvae.tabular_likelihood import TabularLikelihood

from helpers import raises

SCHEMA = tabular.Schema([
    tabular.Column("height", "continuous"),
    tabular.Column("smoker", "binary", ("no", "yes")),
    tabular.Column("city", "categorical", ("a", "b", "c")),
    tabular.Column("weight", "continuous"),
])


def _rows(n=64, seed=0):
    rng = np.random.default_rng(seed)
    return np.c_[rng.normal(170, 10, n), rng.integers(0, 2, n), rng.integers(0, 3, n),
                 rng.normal(70, 5, n)].astype(np.float32)


@pytest.mark.parametrize("scale", ["per_dimension", "predicted"])
def test_column_terms_match_scipy_on_the_raw_scale(scale):
    x = _rows()
    head = TabularLikelihood(SCHEMA, scale=scale)
    head.adapt(x)
    rng = np.random.default_rng(1)
    flat = rng.normal(size=(5, head.params_size)).astype(np.float32)
    parameters = head.parameters(flat)
    terms = head.column_log_probs(parameters, x[:5]).numpy()

    m, s = x[:, [0, 3]].mean(0), x[:, [0, 3]].std(0)
    loc, sigma = parameters["loc"].numpy(), parameters["scale"].numpy()
    expected = np.empty((5, 4))
    expected[:, [0, 3]] = stats.norm.logpdf(x[:5, [0, 3]], m + s * loc, s * sigma)
    logit = flat[:, 2 * (scale == "predicted") + 2]
    expected[:, 1] = stats.bernoulli.logpmf(x[:5, 1], special.expit(logit))
    city_logits = flat[:, -4:]  # K = 3 cities + the unknown slot
    expected[:, 2] = special.log_softmax(city_logits, axis=1)[np.arange(5), x[:5, 2].astype(int)]
    np.testing.assert_allclose(terms, expected, rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(head.log_prob(parameters, x[:5]).numpy(), expected.sum(1),
                               rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(head.distribution(parameters).log_prob(x[:5]).numpy(),
                               expected.sum(1), rtol=2e-4, atol=2e-4)
    if scale == "per_dimension":  # one σ per continuous column, shared by the rows
        np.testing.assert_allclose(sigma, np.broadcast_to(sigma[:1], sigma.shape))


def test_params_size_counts_each_column_s_parameters():
    assert TabularLikelihood(SCHEMA).params_size == 2 + 1 + 4
    assert TabularLikelihood(SCHEMA, scale="predicted").params_size == 4 + 1 + 4


def test_the_encoder_sees_standardised_and_one_hot_columns():
    x = _rows()
    head = TabularLikelihood(SCHEMA)
    head.adapt(x)
    seen = head.encoder_input(x[:3]).numpy()
    standard = (x[:3, [0, 3]] - x[:, [0, 3]].mean(0)) / x[:, [0, 3]].std(0)
    np.testing.assert_allclose(seen[:, :2], standard, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(seen[:, 2], x[:3, 1])
    np.testing.assert_array_equal(seen[:, 3:], np.eye(4)[x[:3, 2].astype(int)])


def test_rows_outside_a_column_s_values_are_refused_or_masked():
    head = TabularLikelihood(SCHEMA)
    good = [170.0, 1.0, 3.0, 70.0]  # code 3: the unknown city, a valid outcome
    rows = np.array([good, [170, 0.5, 0, 70], [170, 1, 4, 70], [np.nan, 1, 0, 70]], np.float32)
    np.testing.assert_array_equal(head.support_mask(rows).numpy(), [True, False, False, False])
    with raises("`x`", "'smoker'", "0 or 1", "0.5"):
        head.validate_data(rows[:2])
    with raises("`x`", "'city'", "0..3"):
        head.validate_data(rows[[0, 2]])


def test_a_saved_model_takes_raw_rows_and_keeps_its_scaling(tmp_path):
    x = _rows(128)
    head = TabularLikelihood(SCHEMA)
    head.adapt(x)
    model = tfvae.build_vae((4,), 2, likelihood=head, hidden_units=(8,), seed=0)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    mean, std = loaded.likelihood.column_stats()
    np.testing.assert_allclose(mean.numpy(), x[:, [0, 3]].mean(0), rtol=1e-5)
    np.testing.assert_allclose(std.numpy(), x[:, [0, 3]].std(0), rtol=1e-4)
    assert loaded.likelihood.schema == SCHEMA
    np.testing.assert_allclose(loaded.elbo(x[:8], seed=3)["elbo"].numpy(),
                               model.elbo(x[:8], seed=3)["elbo"].numpy(), rtol=1e-5)


def test_build_vae_refuses_a_head_of_another_shape():
    with raises("`likelihood`", "(4,)", "(3,)"):
        tfvae.build_vae((3,), 2, likelihood=TabularLikelihood(SCHEMA))


def test_samples_follow_the_column_kinds():
    x = _rows()
    head = TabularLikelihood(SCHEMA)
    head.adapt(x)
    parameters = head.parameters(tf.zeros((200, head.params_size)))
    draws = head.distribution(parameters).sample(2, seed=(1, 2)).numpy()
    assert draws.shape == (2, 200, 4)
    assert set(np.unique(draws[..., 1])) <= {0.0, 1.0}
    assert set(np.unique(draws[..., 2])) <= {0.0, 1.0, 2.0, 3.0}
    # Zero logits and loc 0, σ = 1 standard deviation: the column's own mean and spread.
    np.testing.assert_allclose(draws[..., 0].mean(), x[:, 0].mean(), atol=4 * x[:, 0].std() / 20)


def test_samples_without_the_unknown_slot_never_draw_it():
    head = TabularLikelihood(SCHEMA)
    head.adapt(_rows())
    flat = np.zeros((2000, head.params_size), np.float32)
    flat[:, -1] = 8.0  # the unknown slot of `city` (the last block's last logit): p ≈ 0.998
    parameters = head.parameters(tf.constant(flat))
    anything = head.sample_of(parameters, seed=(3, 4)).numpy()[:, 2]
    known = head.sample_of(parameters, seed=(3, 4), unknown=False).numpy()[:, 2]
    assert (anything == 3).mean() > 0.95
    assert set(np.unique(known)) == {0.0, 1.0, 2.0}  # the known values, at equal logits
    assert all(abs((known == k).mean() - 1 / 3) < 5 * np.sqrt(2 / 9 / 2000) for k in range(3))
