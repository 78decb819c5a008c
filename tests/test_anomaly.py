"""tfvae.anomaly.VAEDetector: PyOD's detector interface, thresholds, per-feature scores."""

import numpy as np
import pytest

from tfvae.anomaly import VAEDetector

from helpers import invalid, raises


def _data(seed=0):
    """Normal rows: 3 continuous columns driven by one factor t, and a 0/1 column; outliers
    break column 1 only (columns 0 and 2 still agree on t)."""
    rng = np.random.default_rng(seed)

    def rows(n, sign):
        t = rng.normal(size=(n, 1))
        noise = 0.1 * rng.normal(size=(n, 2))
        column_1 = 2 * t + noise[:, :1] if sign > 0 else -2 * t + 3 * np.sign(t)
        return np.c_[t, column_1, -t + noise[:, 1:], rng.random((n, 1)) < 0.3]

    return rows(300, 1), rows(20, -1)


@pytest.fixture(scope="module")
def fitted():
    normal, outliers = _data()
    return VAEDetector(score="elbo", contamination=0.1, epochs=20, batch_size=32,
                       learning_rate=1e-2, latent_dim=2, hidden_units=(16,), num_score_samples=8,
                       seed=0).fit(normal), normal, outliers


@pytest.mark.slow
def test_it_runs_through_a_pyod_detector_s_calls(fitted):
    # The sequence of PyOD's README ("clf = KNN(); clf.fit(X_train); y_train_pred =
    # clf.labels_; y_train_scores = clf.decision_scores_; y_test_pred = clf.predict(X_test);
    # y_test_scores = clf.decision_function(X_test)"), plus predict_proba and get_params.
    detector, X_train, outliers = fitted
    X_test = np.r_[X_train[:40], outliers]
    y_train_pred = detector.labels_
    y_train_scores = detector.decision_scores_
    y_test_pred = detector.predict(X_test)
    y_test_scores = detector.decision_function(X_test)
    assert y_train_pred.shape == (300,) and set(np.unique(y_train_pred)) <= {0, 1}
    assert y_train_scores.shape == (300,) and y_train_scores.dtype == np.float64
    # PyOD's threshold_: the (1 - contamination) percentile of the training scores.
    assert detector.threshold_ == pytest.approx(np.percentile(y_train_scores, 90))
    np.testing.assert_array_equal(y_train_pred, y_train_scores > detector.threshold_)
    assert abs(y_train_pred.mean() - 0.1) <= 1 / 300
    np.testing.assert_array_equal(y_test_pred, (y_test_scores > detector.threshold_).astype(int))
    # The same rows get the same scores (the scores' noise is seeded).
    np.testing.assert_allclose(detector.decision_function(X_train), y_train_scores, rtol=1e-6)
    # Higher = more anomalous: the outliers outrank the normal rows.
    assert y_test_scores[40:].mean() > np.percentile(y_test_scores[:40], 90)
    proba = detector.predict_proba(X_test)
    assert proba.shape == (60, 2)
    np.testing.assert_allclose(proba.sum(1), 1.0)
    assert np.all(np.diff(proba[np.argsort(y_test_scores), 1]) >= 0)
    params = detector.get_params()
    assert params["contamination"] == 0.1 and params["score"] == "elbo"
    clone = VAEDetector(**params)
    assert clone.get_params() == params


@pytest.mark.slow
def test_feature_scores_sum_to_the_reconstruction_score_and_point_at_the_broken_column(fitted):
    detector, _, outliers = fitted
    shares = detector.feature_scores(outliers)
    assert shares.shape == (20, 4)
    detector.set_params(score="reconstruction")
    try:
        np.testing.assert_allclose(shares.sum(1), detector.decision_function(outliers),
                                   rtol=1e-6)
    finally:
        detector.set_params(score="elbo")
    # Column 1 is the one the outliers break.
    assert np.mean(np.argmax(shares, axis=1) == 1) > 0.5


@pytest.mark.slow
@pytest.mark.parametrize("score", ["log_px", "iwae"])
def test_tighter_scores_are_negative_log_likelihood_bounds(fitted, score):
    detector, X_train, _ = fitted
    rows = X_train[:30]
    elbo = detector.decision_function(rows)
    detector.set_params(score=score, num_score_samples=32, iwae_k=32)
    try:
        tighter = detector.decision_function(rows)
    finally:
        detector.set_params(score="elbo", num_score_samples=8, iwae_k=10)
    # −log p(x) ≤ −IWAE_k ≤ −ELBO on average (the ELBO from 8 samples: compare means).
    assert tighter.mean() < elbo.mean()


@pytest.mark.slow
def test_columns_are_typed_from_the_training_rows(fitted):
    detector, _, _ = fitted
    assert [c.kind for c in detector.schema_.features] == ["continuous"] * 3 + ["binary"]


def test_bad_arguments_and_rows():
    for value in (0, 0.7, "0.1", True):
        with invalid("contamination", value):
            VAEDetector(contamination=value)
    with raises("`score`", "'nll'"):
        VAEDetector(score="nll")
    with raises("not fitted"):
        VAEDetector().decision_function(np.zeros((2, 2)))
    detector = VAEDetector(epochs=1, hidden_units=(4,), latent_dim=1)
    X = np.random.default_rng(0).normal(size=(20, 2))
    with raises("'x_1'", "missing value"):
        detector.fit(np.c_[X[:, 0], np.where(np.arange(20) == 3, np.nan, X[:, 1])])


@pytest.mark.slow
def test_a_dropped_detector_frees_its_model_and_compiled_scores():
    # Many fits in one process (a grid search, a benchmark) must not keep every model:
    # the scores' compiled functions are cached per model without holding it.
    import gc
    import weakref

    normal, _ = _data()
    detector = VAEDetector(score="elbo", epochs=1, latent_dim=2, hidden_units=(4,),
                           num_score_samples=2, iwae_k=2, seed=0).fit(normal[:64])
    for score in ("iwae", "log_px", "reconstruction"):
        detector.set_params(score=score).decision_function(normal[:8])
    detector.feature_scores(normal[:8])
    held = weakref.ref(detector.model_)
    del detector
    gc.collect()
    assert held() is None
