"""tfvae.cli: the `tfvae` command end to end on tiny settings (train, report, refuse to
overwrite, resume, evaluate, sample, export) and its one-line argument errors.

Full command runs are marked `slow`; argument errors fail before training and are fast.
"""

import csv
import json
import os
import shutil
import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest

import tfvae
from tfvae import cli
from tfvae import runs

from helpers import TINY_RUN
from helpers import splits_npz

TINY = TINY_RUN
FIGURES = ("curves.png", "reconstructions.png", "samples.png", "traversal.png", "latent_space.png")


@pytest.fixture(scope="module")
def run_dir(digits_run):
    """The shared finished run (conftest.py), trained with `TINY`."""
    return digits_run


def _history(path):
    with open(os.path.join(path, "history.csv")) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_train_writes_model_metrics_history_figures_and_report(run_dir):
    for name in ("run.json", "model.keras", "last.keras", "metrics.json", "history.csv",
                 "report.md", *FIGURES):
        assert os.path.getsize(os.path.join(run_dir, name)) > 0, name
    rows = _history(run_dir)
    assert len(rows) == 2
    assert {"loss", "elbo", "reconstruction", "kl", "val_elbo", "val_kl"} <= set(rows[0])
    with open(os.path.join(run_dir, "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["elbo"] == pytest.approx(metrics["reconstruction"] - metrics["kl"], rel=1e-5)
    assert metrics["elbo_gap"] == pytest.approx(metrics["log_px"] - metrics["elbo"], rel=1e-5)
    assert metrics["num_examples"] == 359 and metrics["num_samples"] == 5
    assert 0 <= metrics["active_units"] <= 2
    for name in FIGURES:
        image = matplotlib.image.imread(os.path.join(run_dir, name))
        assert image.ndim == 3 and image.shape[0] > 50 and image.std() > 0.01, name
    report = open(os.path.join(run_dir, "report.md")).read()
    for name in FIGURES:
        assert f"]({name})" in report
    assert f"{metrics['elbo']:.4f}" in report


@pytest.mark.slow
def test_train_refuses_to_overwrite_an_earlier_run(run_dir, capsys):
    before = {name: os.path.getmtime(os.path.join(run_dir, name)) for name in os.listdir(run_dir)}
    assert cli.main(["train", "--output", run_dir, *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--overwrite" in err
    after = {name: os.path.getmtime(os.path.join(run_dir, name)) for name in os.listdir(run_dir)}
    assert before == after


def test_overwrite_never_deletes_a_directory_that_is_not_a_run(tmp_path, capsys):
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "thesis.txt").write_text("do not delete")
    assert cli.main(["train", "--output", str(precious), "--overwrite", *TINY]) == 2
    assert "not a tfvae run directory" in capsys.readouterr().err
    assert (precious / "thesis.txt").read_text() == "do not delete"


@pytest.mark.slow
def test_overwrite_and_resume(run_dir, tmp_path):
    output = str(tmp_path / "run")
    shutil.copytree(run_dir, output)  # a finished run of the same settings
    assert cli.main(["train", "--output", output, "--overwrite", *TINY]) == 0
    assert len(_history(output)) == 2
    # Resuming continues the saved run up to its configured epochs; with more
    # epochs in run.json it trains the missing ones and appends to history.
    with open(os.path.join(output, "run.json")) as f:
        config = json.load(f)
    config["epochs"] = 3
    with open(os.path.join(output, "run.json"), "w") as f:
        json.dump(config, f)
    assert cli.main(["train", "--output", output, "--resume", "--quiet"]) == 0
    rows = _history(output)
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--latent-dim", "0"], "latent_dim=0"),
        (["--beta", "-1"], "beta=-1.0"),
        (["--learning-rate", "0"], "learning_rate=0.0"),
        (["--dataset", "/no/such/file.npz"], "no such file"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys, args, needle):
    code = cli.main(["train", "--output", str(tmp_path / "r"), *TINY, *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and needle in err


@pytest.mark.parametrize("args", [["train", "--likelihood", "poisson"], ["train", "--epochs", "x"],
                                  ["frobnicate"], []])
def test_argparse_errors_exit_2(args):
    with pytest.raises(SystemExit) as error:
        cli.main(args)
    assert error.value.code == 2


@pytest.mark.parametrize("command", ["train", "evaluate", "sample"])
def test_help_on_every_command(command, capsys):
    with pytest.raises(SystemExit) as error:
        cli.main([command, "--help"])
    assert error.value.code == 0
    assert "usage: tfvae " + command in capsys.readouterr().out


@pytest.mark.slow
def test_evaluate_writes_json_and_refuses_to_overwrite(run_dir, tmp_path, capsys):
    output = str(tmp_path / "eval.json")
    assert cli.main(["evaluate", run_dir, "--num-samples", "10", "--output", output]) == 0
    with open(output) as f:
        metrics = json.load(f)
    assert metrics["num_samples"] == 10
    assert metrics["elbo_gap"] == pytest.approx(metrics["log_px"] - metrics["elbo"], rel=1e-5)
    assert "log_px" in capsys.readouterr().out
    assert cli.main(["evaluate", run_dir, "--num-samples", "10", "--output", output]) == 2


def test_evaluate_rejects_a_directory_without_a_run(tmp_path, capsys):
    assert cli.main(["evaluate", str(tmp_path)]) == 2
    assert "not a tfvae run directory" in capsys.readouterr().err


@pytest.mark.slow
def test_sample_writes_png_and_npy(run_dir, tmp_path):
    png, npy = str(tmp_path / "s.png"), str(tmp_path / "s.npy")
    assert cli.main(["sample", run_dir, "-n", "6", "--output", png]) == 0
    assert cli.main(["sample", run_dir, "-n", "6", "--seed", "3", "--output", npy]) == 0
    samples = np.load(npy)
    assert samples.shape == (6, 8, 8, 1) and np.all((samples >= 0) & (samples <= 1))
    assert matplotlib.image.imread(png).ndim == 3
    assert cli.main(["sample", run_dir, "--output", npy]) == 2


@pytest.mark.slow
def test_console_entry_point_runs():
    result = subprocess.run(
        [sys.executable, "-m", "tfvae.cli", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "train" in result.stdout


@pytest.mark.slow
def test_train_with_bound_tightening_variants(tmp_path):
    output = str(tmp_path / "iwae_iaf_vamp")
    assert cli.main(["train", "--output", output, *TINY, "--objective", "iwae", "--k", "3",
                     "--posterior", "iaf", "--prior", "vamp"]) == 0
    config, model = runs.load_run(output)
    assert (config.objective, config.k) == ("iwae", 3)
    assert type(model.posterior).__name__ == "IAFPosterior"
    assert type(model.prior).__name__ == "VampPrior"
    rows = _history(output)
    assert "iwae" in rows[0] and "val_iwae" in rows[0]


@pytest.mark.slow
@pytest.mark.parametrize("flags, extra_metrics", [
    (["--posterior", "hierarchical", "--top-latent-dim", "2"], {"kl_z1", "kl_z2"}),
    (["--conditional", "--free-bits", "0.2", "--free-bits-groups", "2"], set()),
])
def test_hierarchical_and_conditional_runs_train_evaluate_sample_and_export(tmp_path, flags,
                                                                              extra_metrics):
    import keras

    output = str(tmp_path / "run")
    assert cli.main(["train", "--output", output, *TINY, *flags]) == 0
    with open(os.path.join(output, "metrics.json")) as f:
        metrics = json.load(f)
    assert extra_metrics <= set(metrics)
    if extra_metrics:
        assert metrics["kl_z1"] + metrics["kl_z2"] == pytest.approx(metrics["kl"], abs=1e-4)
        assert set(_history(output)[0]) >= {"kl_z1", "kl_z2", "val_kl_z1", "val_kl_z2"}
    model = keras.saving.load_model(os.path.join(output, "model.keras"))
    if "--conditional" in flags:
        assert model.condition_dim == 10 and model.free_bits_groups == 2
    else:
        assert model.latent_dim == 4 and model.prior.latent_dims == (2, 2)
    assert cli.main(["evaluate", output, "--num-samples", "5"]) == 0
    samples = str(tmp_path / "s.npy")
    label = ["--label", "3"] if "--conditional" in flags else []
    assert cli.main(["sample", output, "-n", "4", "--output", samples, *label]) == 0
    assert np.load(samples).shape == (4, 8, 8, 1)
    assert cli.main(["export", output, "--format", "saved_model"]) == 0
    assert cli.main(["export", output, "--format", "onnx"]) == 0
    assert os.path.exists(os.path.join(output, "export", "onnx", "sample.onnx"))


def test_variant_flags_that_do_not_fit_are_one_line_errors(tmp_path, capsys):
    for flags, message in [
        (["--top-latent-dim", "2"], "needs posterior='hierarchical'"),
        (["--posterior", "hierarchical", "--prior", "mixture"], "use prior='standard_normal'"),
        (["--free-bits-groups", "2", "--free-bits", "0.2", "--posterior", "full"],
         "diagonal Gaussian posterior"),
        (["--free-bits-groups", "2"], "needs free_bits > 0"),
    ]:
        assert cli.main(["train", "--output", str(tmp_path / "x"), *TINY, *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err


@pytest.mark.slow
def test_label_needs_a_conditional_run(run_dir, capsys):
    assert cli.main(["sample", run_dir, "--label", "1"]) == 2
    assert "--label needs a conditional run" in capsys.readouterr().err


@pytest.mark.slow
def test_train_uses_the_given_splits_and_evaluate_takes_any_split(tmp_path):
    arrays = splits_npz(tmp_path / "d.npz")
    run = tmp_path / "run"
    assert cli.main(["train", "--dataset", str(tmp_path / "d.npz"), "--output", str(run),
                     "--epochs", "1", "--hidden-units", "8", "--latent-dim", "2",
                     "--eval-samples", "4", "--quiet"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["num_examples"] == len(arrays["x_valid"])
    model = tfvae.runs.load_run(str(run))[1]
    for split, key in (("test", "x_test"), ("validation", "x_valid"), ("train", "x_train")):
        out = tmp_path / f"{split}.json"
        assert cli.main(["evaluate", str(run), "--dataset", str(tmp_path / "d.npz"),
                         "--split", split, "--num-samples", "4", "--output", str(out)]) == 0
        got = json.loads(out.read_text())
        x = arrays[key].astype("float32")[..., None]
        # The same numbers as evaluating the model on that array directly.
        want = tfvae.evaluation.evaluate_model(model, x, num_samples=4, seed=0)
        assert got["num_examples"] == len(x) and got["split"] == split
        np.testing.assert_allclose(got["elbo"], want["elbo"], rtol=1e-5)
        np.testing.assert_allclose(got["log_px"], want["log_px"], rtol=1e-5)
    assert cli.main(["evaluate", str(run), "--dataset", "digits", "--split", "test",
                     "--output", str(tmp_path / "x.json")]) == 2


@pytest.mark.slow
def test_evaluate_decompose_gap_writes_the_parts_and_a_figure(tmp_path):
    splits_npz(tmp_path / "d.npz")
    run = tmp_path / "run"
    cli.main(["train", "--dataset", str(tmp_path / "d.npz"), "--output", str(run), "--epochs",
              "1", "--hidden-units", "8", "--latent-dim", "2", "--eval-samples", "4", "--quiet",
              "--decompose-gap", "--gap-examples", "5"])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["gap_examples"] == 5
    np.testing.assert_allclose(metrics["approximation_gap"] + metrics["amortization_gap"],
                               metrics["gap_log_px"] - metrics["gap_elbo"], rtol=1e-5, atol=1e-5)
    assert (run / "gap.png").stat().st_size > 1000 and "gap.png" in (run / "report.md").read_text()
    out = tmp_path / "e.json"
    assert cli.main(["evaluate", str(run), "--decompose-gap", "--gap-examples", "4",
                     "--num-samples", "4", "--output", str(out)]) == 0
    got = json.loads(out.read_text())
    assert got["gap_examples"] == 4 and (tmp_path / "e_gap.png").exists()
    # A second evaluation refuses to overwrite the figure or the JSON.
    assert cli.main(["evaluate", str(run), "--decompose-gap", "--output", str(out)]) == 2
