"""tfvae.report: the figures and report.md of a run, from a tiny model (matplotlib, headless)."""

import os

import matplotlib.image
import numpy as np
import pytest

import tfvae
from tfvae import report

FIGURES = ("curves", "reconstructions", "samples", "traversal", "latent_space")


@pytest.mark.parametrize("conditional", [False, True], ids=["plain", "conditional"])
def test_write_figures_and_markdown(tmp_path, conditional):
    _, (x_val, y_val) = tfvae.data.load_digits()
    x_val, y_val = x_val[:40], y_val[:40]
    model = tfvae.build_vae((8, 8, 1), 3, hidden_units=(8,), seed=0,
                            condition_dim=10 if conditional else None)
    history = {"loss": [3.0, 2.0], "elbo": [-3.0, -2.0], "val_elbo": [-3.5, -2.5], "kl": [1, 2]}
    figures = report.write_figures(model, history, x_val, y_val, str(tmp_path), seed=0)
    assert figures == {name: f"{name}.png" for name in FIGURES}
    for filename in figures.values():
        image = matplotlib.image.imread(tmp_path / filename)
        assert image.ndim == 3 and image.shape[0] > 50 and image.std() > 0.01, filename
    metrics = {"elbo": -2.5, "reconstruction": -2.0, "kl": 0.5, "log_px": -2.25,
               "elbo_gap": 0.25, "active_units": 2, "num_samples": 7, "epochs_trained": 2}
    config = {"dataset": "digits", "architecture": "mlp", "latent_dim": 3,
              "likelihood": "bernoulli", "prior": "standard_normal", "beta": 1.0}
    path = report.write_markdown(str(tmp_path / "report.md"), config, metrics, figures)
    text = open(path).read()
    assert "latent size 3" in text and "diagonal posterior" in text and "2 epochs" in text
    assert "| elbo | -2.5000 |" in text and "| active_units | 2 |" in text
    assert "K = 7 samples" in text and "kl_z1" not in text
    for name, filename in figures.items():
        assert f"![{name}]({filename})" in text


def test_integer_levels_are_scaled_for_display(tmp_path):
    model = tfvae.build_vae((2, 2, 1), 1, likelihood="categorical", hidden_units=(4,), seed=0)
    shown = report.to_display(model, np.array([[0.0, 255.0, 510.0, -3.0]]))
    np.testing.assert_allclose(shown, [[0.0, 1.0, 1.0, 0.0]])
    vectors = np.random.default_rng(0).uniform(size=(3, 5))  # vectors are drawn as lines
    path = report.plot_grid(vectors, str(tmp_path / "v.png"), "vectors", columns=2)
    assert os.path.getsize(path) > 0


@pytest.mark.parametrize("unconverged", [0, 3])
def test_the_gap_split_reports_both_errors_and_marks_an_unconverged_split(tmp_path, unconverged):
    metrics = {"elbo": -2.5, "log_px": -2.25, "num_samples": 7, "gap_examples": 10,
               "gap_steps": 400, "gap_unconverged": unconverged, "gap_log_px_ess_min": 321.0,
               "gap_log_px_ess_median": 456.0, "gap_log_px_low_ess": unconverged}
    for i, key in enumerate(("approximation_gap", "amortization_gap", "gap_log_px")):
        metrics |= {key: 1.0 + i, key + "_mc_stderr": 0.01 * (i + 1),
                    key + "_examples_stderr": 0.1 * (i + 1)}
    config = {"dataset": "digits", "architecture": "mlp", "latent_dim": 3,
              "likelihood": "bernoulli", "prior": "standard_normal", "beta": 1.0}
    text = open(report.write_markdown(str(tmp_path / "report.md"), config, metrics, {})).read()
    assert "| amortization_gap | 2.000 | ± 0.020 | ± 0.200 |" in text
    assert "smallest 321, median 456" in text
    if unconverged:
        assert "**Not converged:** 3 of 10 examples did not converge in 400 steps" in text
        assert "3 examples have fewer than 10 effective samples" in text
        assert "| approximation_gap | ~ 1.0000 |" in text  # the summary table marks them
        assert "| amortization_gap | ≥ 2.0000 |" in text
    else:
        assert "Not converged" not in text and "converged (within 400 steps)" in text
        assert "effective samples:" not in text
        assert "| approximation_gap | 1.0000 |" in text


def test_the_surgery_paragraph_states_its_target_and_flags_a_saturated_information(tmp_path):
    config = {"dataset": "digits", "architecture": "mlp", "latent_dim": 3,
              "likelihood": "bernoulli", "prior": "standard_normal", "beta": 1.0}
    metrics = {"elbo": -2.5, "kl": 0.5, "mutual_information": 2.9, "marginal_kl": 1.0,
               "dimension_wise_kl": -0.01, "surgery_examples": 20,
               "mi_upper_bound": float(np.log(20)), "mi_fraction_of_bound": 2.9 / np.log(20),
               "mi_saturated": True, "saturation_nats": 1.0}
    text = open(report.write_markdown(str(tmp_path / "a.md"), config, metrics, {})).read()
    assert "aggregate posterior of these N examples" in text and "log N = 3.00" in text
    assert "(here 97% of it)" in text and "within 1 nats of log N" in text
    assert "negative `dimension_wise_kl`" in text
    metrics.update(mutual_information=1.0, mi_fraction_of_bound=1.0 / np.log(20),
                   mi_saturated=False, dimension_wise_kl=0.2)
    text = open(report.write_markdown(str(tmp_path / "b.md"), config, metrics, {})).read()
    assert "aggregate posterior of these N examples" in text
    assert "within 1 nats" not in text and "negative" not in text
