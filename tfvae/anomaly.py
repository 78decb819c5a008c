"""`VAEDetector`: a VAE as an anomaly detector with PyOD's interface.

The detector follows the convention of PyOD's detectors (and scikit-learn's
outlier detectors): `fit(X)` on unlabelled rows, `decision_function(X)`
(higher = more anomalous), `predict(X)` (1 = anomaly, from `threshold_`, the
`1 − contamination` quantile of the training scores), and after fitting
`decision_scores_`, `threshold_` and `labels_` of the training rows.

The score is the negative of one of the model's bounds on log p(x):

* `"log_px"`: −log p(x), importance-sampled with `num_score_samples` samples
  (`VAE.log_likelihood`, the tightest);
* `"iwae"`: −(the IWAE bound with `iwae_k` samples) (`VAE.iwae_bound`);
* `"elbo"`: −ELBO with `num_score_samples` posterior samples;
* `"reconstruction"`: −E_q[log p(x|z)] (no KL term): the sum over columns
  of `feature_scores`.

An exported detector (`tfvae.export`'s `score` graph) computes one draw of the
`"elbo"` score at given noise, `noise_scores(model, rows, eps)` here.

Rows are a numeric matrix `[n, d]`; each column is typed as for a table
(`tfvae.tabular.infer_schema`: a column of 0/1 values is binary, others
continuous, a column constant on the training rows is ignored), or by a
given `schema`. The likelihood is `tfvae.TabularLikelihood`, which
standardises continuous columns inside the model.
"""

import logging

import keras
import numpy as np
import tensorflow as tf

from tfvae import _checks
from tfvae import builders
from tfvae import compiled
from tfvae import data
from tfvae import random as tfvae_random
from tfvae import tabular
from tfvae.tabular_likelihood import TabularLikelihood

__all__ = [
    "contamination_threshold",
    "feature_scores",
    "noise_scores",
    "SCORES",
    "scores",
    "VAEDetector",
]

logger = logging.getLogger(__name__)

SCORES = ("log_px", "elbo", "iwae", "reconstruction")


def contamination_threshold(scores, contamination):
    """PyOD's threshold: the `100 (1 − contamination)` percentile of `scores`."""
    return float(np.percentile(np.asarray(scores, np.float64), 100.0 * (1.0 - contamination)))


class VAEDetector:
    """A VAE anomaly detector for rows of features (see the module docstring).

    Args:
      score: `"log_px"`, `"elbo"`, `"iwae"` or `"reconstruction"`. Default value: `"log_px"`.
      contamination: the expected fraction of anomalies in the training rows,
        in (0, 0.5]: sets `threshold_`. Default value: `0.1`.
      latent_dim: size of z. Default value: `8`.
      hidden_units: MLP widths. Default value: `(64, 32)`.
      epochs: training epochs. Default value: `50`.
      batch_size: training batch size. Default value: `64`.
      learning_rate: Adam's learning rate. Default value: `1e-3`.
      num_score_samples: samples per row for `log_px`, `elbo`,
        `reconstruction` and `feature_scores`. Default value: `64`.
      iwae_k: importance samples of the `iwae` score. Default value: `10`.
      likelihood_scale: σ of continuous columns: `"per_dimension"` or
        `"predicted"` (`TabularLikelihood`'s `scale`). Default value: `"per_dimension"`.
      schema: a `tfvae.tabular.Schema` of the columns, named `x_0`, `x_1`, ...
        (`tabular.array_columns`); `None` infers one from the training rows.
        Default value: `None`.
      seed: seeds the weights, the training noise and the scores' noise (the
        same rows always get the same scores). Default value: `0`.
      verbose: Keras' `fit` verbosity. Default value: `0`.
      jit_compile, steps_per_execution: Keras' `compile` speed options (XLA, training
        steps per call; `tfvae train` uses `True` and `16` for MLPs). Default values:
        `False`, `1`.
      **build_options: further `tfvae.build_vae` options (`posterior`,
        `prior`, `objective`, `k` (training IWAE samples), `beta`, ...).
    """

    def __init__(self, score="log_px", contamination=0.1, latent_dim=8, hidden_units=(64, 32),
                 epochs=50, batch_size=64, learning_rate=1e-3, num_score_samples=64, iwae_k=10,
                 likelihood_scale="per_dimension", schema=None, seed=0, verbose=0,
                 jit_compile=False, steps_per_execution=1, **build_options):
        self.score = score
        self.contamination = contamination
        self.latent_dim = latent_dim
        self.hidden_units = hidden_units
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.num_score_samples = num_score_samples
        self.iwae_k = iwae_k
        self.likelihood_scale = likelihood_scale
        self.schema = schema
        self.seed = seed
        self.verbose = verbose
        self.jit_compile = jit_compile
        self.steps_per_execution = steps_per_execution
        self.build_options = dict(build_options)
        self._check_arguments()

    def _check_arguments(self):
        _checks.one_of("score", self.score, SCORES)
        contamination = self.contamination
        if isinstance(contamination, bool) or not isinstance(
                contamination, (int, float, np.floating)) or not 0 < contamination <= 0.5:
            raise ValueError("Received an invalid value for `contamination`, expected a number "
                             f"in (0, 0.5]. Received: contamination={contamination!r}")
        for name in ("epochs", "batch_size", "num_score_samples", "iwae_k", "latent_dim"):
            _checks.positive_int(name, getattr(self, name))
        _checks.positive_float("learning_rate", self.learning_rate)
        _checks.non_negative_int("seed", self.seed)

    # scikit-learn's estimator protocol (clone, grid search), as PyOD's detectors have it.
    def get_params(self, deep=True):
        names = ("score", "contamination", "latent_dim", "hidden_units", "epochs",
                 "batch_size", "learning_rate", "num_score_samples", "iwae_k",
                 "likelihood_scale", "schema", "seed", "verbose", "jit_compile",
                 "steps_per_execution")
        return {**{name: getattr(self, name) for name in names}, **self.build_options}

    def set_params(self, **params):
        for name, value in params.items():
            if hasattr(self, name) and name != "build_options":
                setattr(self, name, value)
            else:
                self.build_options[name] = value
        self._check_arguments()
        return self

    # ------------------------------------------------------------------

    def _infer_schema(self, X):
        schema = tabular.infer_schema(tabular.array_columns(X), constant="ignore")
        # Numbers are binary only when they are 0/1 (a column with two other values, e.g.
        # two levels of a measurement, stays continuous: other values may come later).
        columns = [c if c.kind != "binary" or c.vocabulary == (0.0, 1.0)
                   else tabular.Column(c.name, "continuous") for c in schema.columns]
        return tabular.Schema(columns)

    def _rows(self, X):
        """Coded float32 rows of `X` (a numeric `[n, d]` array) under the fitted schema."""
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(f"Received an invalid value for `X`, expected rows [n, "
                             f"{self.n_features_in_}] (as in fit). Received: X with shape "
                             f"{X.shape}")
        return self.schema_.encode(tabular.array_columns(X))

    def fit(self, X, y=None):
        """Trains the VAE on the rows `X` `[n, d]` (`y` is ignored: unsupervised)."""
        self._check_arguments()
        X = np.asarray(X)
        self.schema_ = self.schema if self.schema is not None else self._infer_schema(X)
        self.n_features_in_ = X.shape[1] if X.ndim == 2 else None
        rows = self._rows(X)
        head = TabularLikelihood(self.schema_, scale=self.likelihood_scale)
        head.adapt(rows)
        self.model_ = builders.build_vae(
            rows.shape[1:], self.latent_dim, likelihood=head, hidden_units=self.hidden_units,
            seed=self.seed, **self.build_options)
        self.model_.compile(optimizer=keras.optimizers.Adam(self.learning_rate),
                            jit_compile=self.jit_compile,
                            steps_per_execution=self.steps_per_execution)
        # A seeded pipeline: the same rows and seed train the same weights.
        batches = data.make_dataset(rows, min(self.batch_size, len(rows)), shuffle=True,
                                    seed=self.seed)
        self.model_.fit(batches, epochs=self.epochs, shuffle=False, verbose=self.verbose)
        self.decision_scores_ = self._scores(rows)
        self.threshold_ = contamination_threshold(self.decision_scores_, self.contamination)
        self.labels_ = (self.decision_scores_ > self.threshold_).astype(int)
        return self

    def _check_fitted(self):
        if not hasattr(self, "model_"):
            raise ValueError("This VAEDetector is not fitted yet: call fit(X) first.")

    def decision_function(self, X):
        """The anomaly score of each row `[n]` (float64; higher = more anomalous)."""
        self._check_fitted()
        return self._scores(self._rows(X))

    def predict(self, X, return_confidence=False):
        """1 for rows scored above `threshold_`, else 0 `[n]` (int)."""
        self._check_fitted()
        labels = (self.decision_function(X) > self.threshold_).astype(int)
        if return_confidence:
            raise ValueError("Received an invalid value for `return_confidence`: VAEDetector "
                             "does not estimate confidence. Received: return_confidence=True")
        return labels

    def fit_predict(self, X, y=None):
        """`fit(X)`, then the training rows' `labels_`."""
        return self.fit(X).labels_

    def predict_proba(self, X, method="linear"):
        """`[n, 2]`: the probability of normal and of anomaly, PyOD's `"linear"` method
        (scores min-max scaled by the training scores' range, clipped to [0, 1])."""
        self._check_fitted()
        if method != "linear":
            raise ValueError("Received an invalid value for `method`, expected 'linear'. "
                             f"Received: method={method!r}")
        low, high = self.decision_scores_.min(), self.decision_scores_.max()
        p = np.clip((self.decision_function(X) - low) / max(high - low, 1e-12), 0.0, 1.0)
        return np.stack([1.0 - p, p], axis=1)

    def feature_scores(self, X):
        """Each column's share of −log p(x|z): `[n, d]` float64, the columns of the schema's
        features; `−E_q[log p_j(x_j|z)]` over `num_score_samples` posterior samples. Their
        row sums are the `"reconstruction"` score."""
        self._check_fitted()
        return self._feature_scores(self._rows(X))

    def _feature_scores(self, rows):
        return feature_scores(self.model_, rows, self.num_score_samples, self.seed)

    def _scores(self, rows):
        return scores(self.model_, rows, self.score, self.num_score_samples, self.iwae_k,
                      self.seed)


def _batches(rows, size=256):
    for start in range(0, len(rows), size):
        yield tf.constant(rows[start:start + size])


def feature_scores(model, rows, num_samples=64, seed=0):
    """Each column's `−E_q[log p_j(x_j|z)]` `[n, d]` (float64) for coded rows `[n, d]` of a
    model with a `TabularLikelihood`, over `num_samples` draws of z per row (batch `i` of 256
    rows draws from `fold_in(seed, i)`)."""
    column_terms = compiled.model_function(
        model, ("feature_scores", num_samples),
        lambda held: lambda x, noise_seed: _mean_column_terms(held(), x, noise_seed,
                                                              num_samples),
        reduce_retracing=True)
    base = tfvae_random.make_seed(seed)
    out = [-column_terms(x, tfvae_random.fold_in(base, i)).numpy()
           for i, x in enumerate(_batches(np.asarray(rows, np.float32)))]
    return np.concatenate(out).astype(np.float64)


def _mean_column_terms(model, x, seed, samples):
    """`E_q[log p_j(x_j|z)]` `[b, d]` over `samples` draws of z (sample-major)."""
    parameters = model.posterior_parameters(x)
    tiled = tf.nest.map_structure(
        lambda v: tf.tile(v, tf.concat([[samples], tf.ones([tf.rank(v) - 1], tf.int32)], 0)),
        parameters)
    batch = tf.shape(x)[0]
    eps = tf.random.stateless_normal(tf.stack([samples * batch, model.latent_dim]), seed)
    z = model.posterior.reparameterize(tiled, eps)
    terms = model.likelihood.column_log_probs(model.decoder_parameters(z),
                                              tf.tile(x, [samples, 1]))
    return tf.reduce_mean(tf.reshape(terms, tf.stack([samples, batch, -1])), axis=0)


def noise_scores(model, rows, eps=None):
    """−ELBO `[n]` (float64) of coded rows `[n, d]` at z = g(eps; q(z|x)): one posterior
    sample, with the model's KL (closed form where it has one) — the `score` export graph's
    score (`tfvae.export`); one draw of what the `"elbo"` score averages.

    Args:
      model: a `tfvae.VAE` (unconditional).
      rows: coded rows (`Schema.encode`).
      eps: standard normal noise `[n, latent_dim]`. Default value: zeros (the
        deterministic score).
    """
    rows = np.asarray(rows, np.float32)
    eps = np.zeros((len(rows), model.latent_dim), np.float32) if eps is None else np.asarray(
        eps, np.float32)
    if eps.shape != (len(rows), model.latent_dim):
        raise ValueError(f"Received an invalid value for `eps`, expected shape "
                         f"({len(rows)}, {model.latent_dim}). Received: eps with shape {eps.shape}")
    out = [-np.asarray(model.elbo_terms(x, noise=noise[None])["elbo"], np.float64)
           for x, noise in zip(_batches(rows), _batches(eps))]
    return np.concatenate(out) if out else np.zeros([0])


def scores(model, rows, score="log_px", num_samples=64, k=10, seed=0):
    """Anomaly scores `[n]` (float64, higher = more anomalous) of coded rows `[n, d]`.

    Args:
      model: a `tfvae.VAE` with a `TabularLikelihood`.
      rows: coded rows (`Schema.encode`).
      score: one of `SCORES` (module docstring). Default value: `"log_px"`.
      num_samples: samples per row for `log_px`, `elbo` and `reconstruction`.
        Default value: `64`.
      k: the IWAE bound's samples. Default value: `10`.
      seed: the noise's seed (batch `i` of 256 rows uses `seed + i`). Default value: `0`.
    """
    _checks.one_of("score", score, SCORES)
    if score == "reconstruction":
        return feature_scores(model, rows, num_samples, seed).sum(axis=1)
    out = []
    for i, x in enumerate(_batches(np.asarray(rows, np.float32))):
        if score == "log_px":
            value = model.log_likelihood(x, num_samples=num_samples, seed=seed + i,
                                         chunk_size=min(num_samples, 64))
        elif score == "iwae":
            value = model.iwae_bound(x, k=k, seed=seed + i)
        else:
            value = model.elbo(x, num_samples=num_samples, seed=seed + i)["elbo"]
        out.append(-np.asarray(value, np.float64))
    return np.concatenate(out)
