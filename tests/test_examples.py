"""Runs each examples/ script with --quick and checks its numbers independently."""

import functools
import importlib.util
import math
import os
import sys

import keras
import numpy as np
import pytest
import scipy.stats
import tensorflow_probability as tfp

import tfvae

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
NAMES = ("keras_workflow", "custom_networks", "elbo_identity", "em_vs_vae", "anomaly_scores")


@functools.cache
def load(name):
    """Imports examples/NAME.py from its path (the folder is not a package)."""
    if EXAMPLES not in sys.path:  # the scripts import their shared `_common` helpers
        sys.path.insert(0, EXAMPLES)
    path = os.path.join(EXAMPLES, f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"tfvae_example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(name, tmp_path):
    result = load(name).main(["--quick", "--output", str(tmp_path)])
    assert os.path.isdir(result["output"])
    assert os.path.dirname(result["output"]) == str(tmp_path)
    return result


@pytest.mark.parametrize("name", NAMES)
def test_script_has_docstring_main_and_fresh_output_dirs(name, tmp_path):
    module = load(name)
    assert module.__doc__ and f"python examples/{name}.py" in module.__doc__
    assert len(module.__doc__.strip().splitlines()) == 1
    first = module.fresh_output_dir(str(tmp_path), name)
    with open(os.path.join(first, "keep.txt"), "w") as f:
        f.write("earlier result")
    second = module.fresh_output_dir(str(tmp_path), name)
    assert second != first and os.listdir(second) == []
    with open(os.path.join(first, "keep.txt")) as f:
        assert f.read() == "earlier result"


@pytest.mark.slow
def test_keras_workflow(tmp_path):
    r = run("keras_workflow", tmp_path)
    assert math.isfinite(r["elbo_before"]) and math.isfinite(r["elbo_after"])
    assert r["elbo_after"] > r["elbo_before"] + 1.0
    assert len(r["val_elbo_history"]) == r["epochs"]
    assert r["reload_max_abs_diff"] == 0.0
    # Independently: load the saved file here and recompute the fixed-seed ELBO.
    _, (x_val, _) = tfvae.data.load_digits()
    restored = keras.saving.load_model(r["model_path"])
    elbo = float(np.mean(restored.elbo(x_val, seed=0)["elbo"]))
    assert elbo == pytest.approx(r["elbo_seed0"], abs=1e-5)
    # The importance-sampled log p(x) lies above the ELBO (up to noise).
    assert r["log_likelihood"] > r["elbo_seed0"] - 0.05


@pytest.mark.slow
def test_custom_networks(tmp_path):
    r = run("custom_networks", tmp_path)
    assert r["posterior_params_size"] == 2 * 4
    assert r["likelihood_params_size"] == 8 * 8 * 1
    assert r["encoder_output_shape"] == (3, r["posterior_params_size"])
    assert r["decoder_output_shape"] == (3, r["likelihood_params_size"])
    assert r["mismatch_error"] is not None and "64" in r["mismatch_error"]
    values = (r["elbo_before"], r["elbo_after"], *r["val_elbo_history"])
    assert all(math.isfinite(v) for v in values)
    assert r["elbo_after"] > r["elbo_before"] + 1.0
    assert r["reload_max_abs_diff"] == 0.0


def test_elbo_identity_numpy_helpers():
    module = load("elbo_identity")
    rng = np.random.default_rng(1)
    w, b, sigma = rng.normal(size=(4, 2)), rng.normal(size=4), 0.7
    x = rng.normal(size=(6, 4))
    cov = w @ w.T + sigma**2 * np.eye(4)
    np.testing.assert_allclose(
        module.exact_log_px(x, w, b, sigma),
        scipy.stats.multivariate_normal(b, cov).logpdf(x),
        rtol=1e-10,
    )
    # KL(q ‖ p(z|x)) against TFP, with p(z|x) from Bayes' rule written out here.
    q_mean = rng.normal(size=(6, 2))
    a = rng.normal(size=(6, 2, 2))
    q_cov = a @ np.swapaxes(a, 1, 2) + 0.1 * np.eye(2)
    post_cov = np.linalg.inv(np.eye(2) + w.T @ w / sigma**2)
    post_mean = np.stack([post_cov @ w.T @ (xi - b) / sigma**2 for xi in x])
    tfd = tfp.distributions
    expected = tfd.kl_divergence(
        tfd.MultivariateNormalFullCovariance(q_mean, q_cov),
        tfd.MultivariateNormalFullCovariance(post_mean, post_cov),
    ).numpy()
    got = module.kl_to_exact_posterior(q_mean, q_cov, x, w, b, sigma)
    np.testing.assert_allclose(got, expected, rtol=1e-8)
    # q equal to the exact posterior gives zero.
    exact_cov = np.broadcast_to(post_cov, (6, 2, 2))
    zero = module.kl_to_exact_posterior(post_mean, exact_cov, x, w, b, sigma)
    np.testing.assert_allclose(zero, 0.0, atol=1e-10)


@pytest.mark.slow
def test_elbo_identity(tmp_path):
    r = run("elbo_identity", tmp_path)
    epochs = len(r["epoch"])
    assert r["epoch"] == list(range(epochs)) and epochs >= 3
    for i in range(epochs):
        # The reported ELBO is a Monte Carlo estimate: allow 5 standard errors.
        tol = 5 * r["gap_stderr"][i] + 1e-3
        assert r["elbo"][i] <= r["exact_log_px"][i] + tol, i
        assert r["gap"][i] >= -tol, i
        assert r["kl_to_posterior"][i] >= -1e-6, i
        # log p(x) − ELBO = KL(q(z|x) ‖ p(z|x)), the KL computed exactly in numpy.
        assert abs(r["gap"][i] - r["kl_to_posterior"][i]) <= tol, i
        # Importance sampling is a stochastic lower bound on log p(x).
        assert r["log_likelihood_estimate"][i] <= r["exact_log_px"][i] + 0.02, i
    # Once q is close to the posterior, importance sampling is nearly exact.
    assert r["log_likelihood_estimate"][-1] == pytest.approx(r["exact_log_px"][-1], abs=0.02)
    assert r["gap"][-1] < 0.5 < 10.0 < r["gap"][0]
    assert r["exact_log_px"][-1] > r["exact_log_px"][0]
    # The fit cannot beat maximum likelihood by much: the truth is close to it.
    assert r["exact_log_px"][-1] <= r["true_log_px"] + 0.05
    with open(r["csv_path"]) as f:
        assert len(f.read().strip().splitlines()) == epochs + 1


def test_em_vs_vae_numpy_helpers():
    module = load("em_vs_vae")
    rng = np.random.default_rng(2)
    x = rng.normal(size=(200, 6)) @ rng.normal(size=(6, 6))
    w, mu, sigma2 = rng.normal(size=(6, 2)), rng.normal(size=6), 0.3
    expected = np.mean(scipy.stats.multivariate_normal(mu, w @ w.T + sigma2 * np.eye(6)).logpdf(x))
    assert module.ppca_log_likelihood(x, w, mu, sigma2) == pytest.approx(expected, rel=1e-10)
    # The closed-form maximum-likelihood solution is a fixed point of EM.
    w_ml, mu_ml, sigma2_ml = module.ppca_closed_form(x, 2)
    s = np.cov(x.T, bias=True)
    w_next, sigma2_next = module.ppca_em_step(s, w_ml, sigma2_ml)
    np.testing.assert_allclose(w_next @ w_next.T, w_ml @ w_ml.T, atol=1e-8)
    assert sigma2_next == pytest.approx(sigma2_ml, rel=1e-8)
    # And it beats random parameters and EM's own iterates.
    (_, _, _), curve = module.ppca_em(x, w, mu, sigma2, iterations=20)
    best = module.ppca_log_likelihood(x, w_ml, mu_ml, sigma2_ml)
    assert max(curve) <= best + 1e-9


@pytest.mark.slow
def test_em_vs_vae(tmp_path):
    r = run("em_vs_vae", tmp_path)
    em, vae, best = r["em_log_likelihood"], r["vae_log_likelihood"], r["closed_form_log_likelihood"]
    assert all(math.isfinite(v) for v in em + vae + r["vae_elbo"])
    # EM's E-step makes the bound tight, so log p(x) never falls.
    for before, after in zip(em, em[1:]):
        assert after >= before - 1e-6 * abs(before)
    assert em[-1] > em[0] + 10.0
    # Both start from the same parameters and neither exceeds the maximum likelihood.
    assert vae[0] == pytest.approx(em[0], rel=1e-9)
    assert max(em + vae) <= best + 1e-6 * abs(best)
    assert vae[-1] > vae[0] + 1.0
    # The VAE's ELBO is below its exact log-likelihood (up to Monte Carlo noise).
    assert all(e <= ll + 0.1 for e, ll in zip(r["vae_elbo"], vae))
    with open(r["plot_path"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(r["plot_path"]) > 10_000


@pytest.mark.slow
def test_anomaly_scores(tmp_path):
    r = run("anomaly_scores", tmp_path)
    anomalous = np.asarray(r["anomalous"])
    (_, _), (_, y_val) = tfvae.data.load_digits()
    np.testing.assert_array_equal(anomalous, ~np.isin(y_val, (0, 1, 2, 3, 4)))
    for key, sign in (("log_px", -1.0), ("elbo", -1.0), ("squared_error", 1.0)):
        score = sign * np.asarray(r["scores"][key])
        # The AUC independently: Mann–Whitney's U over n1 n2 (scipy).
        u = scipy.stats.mannwhitneyu(score[anomalous], score[~anomalous]).statistic
        auc = u / (anomalous.sum() * (~anomalous).sum())
        assert r["auc"][key] == pytest.approx(auc, abs=1e-12)
    # Above chance by more than 4 standard deviations of an uninformative score's AUC
    # (Hanley & McNeil's null variance, from the class counts).
    n1, n2 = int((~anomalous).sum()), int(anomalous.sum())
    sd = math.sqrt((n1 + n2 + 1) / (12 * n1 * n2))
    assert r["chance_sd"] == pytest.approx(sd)
    assert r["auc"]["log_px"] > 0.5 + 4 * sd
    assert os.path.getsize(r["figure"]) > 0
