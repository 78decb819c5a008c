"""Shared helpers for tfvae's tests (not a test module).

Bad-input tests check the project's error rule: a Keras-style `ValueError` whose
message names the argument (in backticks) and shows the value received, e.g.::

    Received an invalid value for `latent_dim`, expected a positive integer.
    Received: latent_dim=-3
"""

import glob
import math
import os
import re

import numpy as np
import pytest
import tensorflow as tf

import tfvae

# Values that are not positive integers (0 and negatives, a float, None, a
# numeric string and a bool, which Python treats as an int).
BAD_POSITIVE_INTS = [0, -3, 2.5, None, "64", True]
# Values that are not finite numbers >= 0.
BAD_NON_NEGATIVE_FLOATS = [-1.0, -1e-9, math.nan, math.inf, None, "1.0", True]


def raises(*fragments):
    """`pytest.raises(ValueError)` whose message contains every fragment, in any order."""
    pattern = "(?s)" + "".join(f"(?=.*{re.escape(str(f))})" for f in fragments)
    return pytest.raises(ValueError, match=pattern)


def invalid(name, value, *more):
    """A ValueError naming `name` in backticks and showing `name=repr(value)`."""
    return raises(f"`{name}`", f"{name}={value!r}", *more)


def unit_data(n=8, d=4, seed=0):
    """Uniform [0, 1) float32 data `[n, d]` (valid for the Bernoulli likelihoods)."""
    return np.random.default_rng(seed).uniform(0.0, 1.0, (n, d)).astype("float32")


def out_of_unit_range():
    """`unit_data()` with -0.5 at [0, 0] and 2.0 at [1, 1]."""
    x = unit_data()
    x[0, 0], x[1, 1] = -0.5, 2.0
    return x


# `tfvae train` settings for tiny end-to-end runs on the built-in digits.
TINY_RUN = ["--epochs", "2", "--latent-dim", "2", "--hidden-units", "16", "--eval-samples", "5",
            "--batch-size", "128", "--quiet"]


# The public methods that take data x, each called on a model and an x.
X_METHODS = {
    "encode": lambda m, x: m.encode(x),
    "elbo": lambda m, x: m.elbo(x),
    "reconstruct": lambda m, x: m.reconstruct(x),
    "iwae_bound": lambda m, x: m.iwae_bound(x, k=2),
    "log_likelihood": lambda m, x: m.log_likelihood(x, num_samples=2),
    "fit": lambda m, x: m.fit(x, epochs=1, batch_size=4, verbose=0),
    "evaluate": lambda m, x: m.evaluate(x, batch_size=4, verbose=0),
    "predict": lambda m, x: m.predict(x, batch_size=4, verbose=0),
}
# Those implemented by tfvae.model (the rest by the tfvae.training mixin).
MODEL_METHODS = ("encode", "elbo", "reconstruct", "iwae_bound", "log_likelihood")
TRAINING_METHODS = ("fit", "evaluate", "predict")


def splits_npz(path, valid_key="x_valid", test=True, labels=True, n=(40, 12, 10)):
    """Writes a .npz with predefined splits (train/valid/test), each marked in pixels 0 and 1."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, key, size in zip(("train", "valid", "test"), ("x_train", valid_key, "x_test"), n):
        if key == "x_test" and not test:
            continue
        # Each split has its own constant marker in pixel 0, so tests can tell them apart.
        x = (rng.uniform(size=(size, 4, 4)) > 0.5).astype("uint8")
        x[:, 0, 0] = {"train": 0, "valid": 1, "test": 1}[split]
        x[:, 0, 1] = {"train": 0, "valid": 0, "test": 1}[split]
        arrays[key] = x
        if labels:
            arrays["y" + key[1:]] = np.arange(size) % 3
    np.savez(path, **arrays)
    return arrays


def tiny_model(likelihood="bernoulli", architecture="mlp", **kwargs):
    """A small built VAE on (6, 5, 1) data."""
    kwargs.setdefault("hidden_units", (16,))
    kwargs.setdefault("filters", (4, 8))
    kwargs.setdefault("seed", 0)
    return tfvae.build_vae((6, 5, 1), 3, likelihood=likelihood, architecture=architecture, **kwargs)


def data_for(likelihood, n=8, seed=0):
    """Uniform (6, 5, 1) data a `likelihood` (a name or head) can score: [0, 1) prepared as
    it declares (`prepare_data`: 8-bit levels for the level heads)."""
    x = np.random.default_rng(seed).uniform(size=(n, 6, 5, 1)).astype("float32")
    return np.asarray(tfvae.builders.likelihood_of(likelihood).prepare_data(x), "float32")


def assert_wrong_x_shape_refused(call, model, shape, event_text):
    """`call(model, x)` with x of `shape` raises the `x` shape error naming the event shape."""
    with raises("`x`", event_text, repr(shape)):
        call(model, np.full(shape, 0.5, "float32"))


def read_events(directory):
    """{tag: {step: value-or-array}} from every event file under `directory`."""
    out = {}
    for path in glob.glob(os.path.join(directory, "**", "events.out.tfevents.*"), recursive=True):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                tensor = tf.make_ndarray(value.tensor) if value.HasField("tensor") else value.simple_value
                out.setdefault(value.tag, {})[event.step] = tensor
    return out


def refused_rows(likelihood, x):
    """Per row of `x`: does the likelihood's own `validate_data` refuse it? (the
    independent answer export guards and NaN rows are checked against)"""
    refused = []
    for row in x:
        try:
            likelihood.validate_data(row[None])
            refused.append(False)
        except ValueError:
            refused.append(True)
    return np.array(refused)


def table_column_scores(likelihood, parameters, x, mean, std):
    """Each column's −log p_j(x_j|z) `[n, d]` (float64) with scipy, for a
    `TabularLikelihood`'s decoder `parameters` (`loc`, `scale`, `binary_logits`,
    `categorical_logits`: the continuous, binary and categorical columns' blocks in the
    schema's order) at coded rows `x`: a Gaussian density on the raw scale for a
    continuous column standardised by `mean`, `std` (one per continuous column),
    Bernoulli(sigmoid(η)) for a binary column, softmax over K + 1 codes (the last the
    unknown slot) for a categorical one. The independent answer the `score` graph's
    `feature_scores` are checked against (test_export_score.py, test_conformance.py)."""
    from scipy import special, stats

    x = np.asarray(x, np.float64)
    p = {key: np.asarray(value, np.float64) for key, value in parameters.items()}
    kinds = [column.kind for column in likelihood.schema.features]
    continuous = [j for j, kind in enumerate(kinds) if kind == "continuous"]
    binary = [j for j, kind in enumerate(kinds) if kind == "binary"]
    out = np.empty(x.shape, np.float64)
    if continuous:
        mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
        out[:, continuous] = -stats.norm.logpdf(x[:, continuous], mean + std * p["loc"],
                                                std * p["scale"])
    if binary:
        out[:, binary] = -stats.bernoulli.logpmf(x[:, binary], special.expit(p["binary_logits"]))
    start = 0
    for j, column in enumerate(likelihood.schema.features):
        if column.kind != "categorical":
            continue
        logits = p["categorical_logits"][:, start:start + column.num_outcomes]
        start += column.num_outcomes
        out[:, j] = -special.log_softmax(logits, axis=1)[np.arange(len(x)), x[:, j].astype(int)]
    assert start == p["categorical_logits"].shape[1]
    return out
