"""tfvae.cli: the `tfvae` command end to end on tiny settings (train, report, refuse to
overwrite, resume, evaluate, sample, export) and its one-line argument errors.

Full command runs are marked `slow`; argument errors fail before training and are fast.
"""

import builtins
import csv
import dataclasses
import errno
import json
import os
import shutil
import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest
from PIL import Image

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


def _cosine(lr0, total, t):
    """The cosine decay to 0.1 · lr0 over `total` steps, written out."""
    return lr0 * (0.1 + 0.9 * 0.5 * (1.0 + np.cos(np.pi * min(t, total) / total)))


def test_train_decays_the_learning_rate_over_the_runs_epochs_by_default(run_dir):
    # TINY: 2 epochs of ⌈1,437 / 128⌉ = 12 steps (digits: 1,797 examples, 20 % held out);
    # each epoch's row holds the rate after its last step.
    config = json.load(open(os.path.join(run_dir, "run.json")))
    assert config["lr_schedule"] == "cosine" and "--lr-schedule" not in TINY
    lr0 = runs.RunConfig().learning_rate
    np.testing.assert_allclose([float(r["learning_rate"]) for r in _history(run_dir)],
                               [_cosine(lr0, 24, 12), 0.1 * lr0], rtol=1e-5)


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
    # The default cosine schedule spanned 2 epochs of 12 steps, and after the resume spans
    # the 3 epochs in run.json from the optimizer's step 24 (not from 0).
    lr0 = runs.RunConfig().learning_rate
    np.testing.assert_allclose([float(r["learning_rate"]) for r in rows],
                               [_cosine(lr0, 24, 12), _cosine(lr0, 24, 24),
                                _cosine(lr0, 36, 36)], rtol=1e-5)
    assert int(runs.load_model(os.path.join(output, "last.keras")).optimizer.iterations) == 36


@pytest.mark.parametrize(
    "args, needle",
    [
        # The library's argument names reach the user as the flags they typed.
        (["--latent-dim", "0"], "`--latent-dim`, expected a positive integer. Received: "
                                "--latent-dim 0"),
        (["--beta", "-1"], "`--beta`, expected a finite number >= 0. Received: --beta -1.0"),
        (["--learning-rate", "0"], "Received: --learning-rate 0.0"),
        (["--steps-per-execution", "0"], "Received: --steps-per-execution 0"),
        (["--dataset", "/no/such/file.npz"], "`--dataset`: no such file"),
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


@pytest.mark.slow
def test_evaluate_takes_a_file_that_holds_only_the_split_asked_for(run_dir, tmp_path, capsys):
    # 0.2.0 refused a held-out file of x_test alone, though --help said a .npz with x_test
    # is what --split test needs (issue 21, item 8).
    x_test = (np.random.default_rng(0).uniform(size=(12, 8, 8)) > 0.5).astype("uint8")
    dataset = str(tmp_path / "test_only.npz")
    np.savez(dataset, x_test=x_test, y_test=np.arange(12) % 10)
    out = tmp_path / "test.json"
    assert cli.main(["evaluate", run_dir, "--dataset", dataset, "--split", "test",
                     "--num-samples", "4", "--output", str(out)]) == 0
    got = json.loads(out.read_text())
    # The same numbers as the model on that array (binary pixels: nothing to prepare).
    want = tfvae.evaluation.evaluate_model(runs.load_run(run_dir)[1],
                                           x_test.astype("float32")[..., None],
                                           num_samples=4, seed=0)
    assert (got["num_examples"], got["split"]) == (12, "test")
    np.testing.assert_allclose([got["elbo"], got["log_px"]], [want["elbo"], want["log_px"]],
                               rtol=1e-5)
    capsys.readouterr()
    assert cli.main(["evaluate", run_dir, "--dataset", dataset, "--split", "validation",
                     "--output", str(tmp_path / "v.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    for fragment in ("has no validation split", "'x_test' (12, 8, 8), 'y_test' (12,)",
                     "a validation split needs 'x_valid'"):
        assert fragment in err


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
    # One epoch on a small dataset: what is checked (the settings, the parts, the history's
    # columns) depends on neither.
    splits_npz(tmp_path / "d.npz", test=False)
    assert cli.main(["train", "--output", output, *TINY, "--epochs", "1",
                     "--dataset", str(tmp_path / "d.npz"), "--objective", "iwae", "--k", "3",
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
    # One epoch: nothing checked here depends on a second.
    assert cli.main(["train", "--output", output, *TINY, "--epochs", "1", *flags]) == 0
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


@pytest.fixture(scope="module")
def splits_run(tmp_path_factory):
    """A finished run on a generated `.npz` with its own splits, its held-out gap
    decomposed on 5 examples: (the `.npz` path, its arrays, the run folder). Read-only."""
    folder = tmp_path_factory.mktemp("splits")
    arrays = splits_npz(folder / "d.npz")
    run = folder / "run"
    assert cli.main(["train", "--dataset", str(folder / "d.npz"), "--output", str(run),
                     "--epochs", "1", "--hidden-units", "8", "--latent-dim", "2",
                     "--eval-samples", "4", "--quiet", "--decompose-gap",
                     "--gap-examples", "5", "--gap-steps", "400"]) == 0
    return folder / "d.npz", arrays, run


@pytest.mark.slow
def test_train_uses_the_given_splits_and_evaluate_takes_any_split(splits_run, tmp_path):
    dataset, arrays, run = splits_run
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["num_examples"] == len(arrays["x_valid"])
    model = tfvae.runs.load_run(str(run))[1]
    for split, key in (("test", "x_test"), ("validation", "x_valid"), ("train", "x_train")):
        out = tmp_path / f"{split}.json"
        assert cli.main(["evaluate", str(run), "--dataset", str(dataset),
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
def test_evaluate_decompose_gap_writes_the_parts_and_a_figure(splits_run, tmp_path):
    run = splits_run[2]  # trained with --decompose-gap --gap-examples 5
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


@pytest.mark.slow
def test_an_unconverged_gap_split_is_marked_and_says_which_flag_to_raise(splits_run, tmp_path,
                                                                         capsys):
    run, out = splits_run[2], tmp_path / "e.json"
    assert cli.main(["evaluate", str(run), "--decompose-gap", "--gap-examples", "4",
                     "--gap-steps", "2", "--num-samples", "4", "--output", str(out)]) == 0
    got = json.loads(out.read_text())
    assert got["gap_unconverged"] == 4 and got["gap_steps"] == 2
    note = tfvae.evaluation.gap_note(got)
    assert "raise --gap-steps" in note
    printed = capsys.readouterr().out
    warnings = [line for line in printed.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: {note}"]
    assert "4 of 4 examples did not converge in 2 steps" in warnings[0]
    table = dict(line.split(None, 1) for line in printed.splitlines()[1:] if "_gap" in line)
    assert table["approximation_gap"].strip().startswith("~")
    assert table["amortization_gap"].strip().startswith("≥")
    for key in ("approximation_gap", "amortization_gap", "gap_log_px"):
        assert got[key + "_mc_stderr"] > 0 and got[key + "_examples_stderr"] > 0


# ---------------------------------------------------------------------------
# One line for every expected failure: bad paths, unreadable or unwritable files,
# broken data and run files. Each case fails before any training.


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory):
    """A run directory holding an untrained conditional model (10 classes) on 8×8 data:
    enough for the commands that load a run. Read-only: copy it to change it."""
    path = tmp_path_factory.mktemp("conditional")
    config = runs.RunConfig(conditional=True, latent_dim=2, hidden_units=(8,))
    (path / runs.RUN_FILE).write_text(json.dumps(dataclasses.asdict(config)))
    model = tfvae.build_vae((8, 8, 1), 2, hidden_units=(8,), condition_dim=10, seed=0)
    model.save(path / "model.keras")
    return str(path)


def _deny(monkeypatch, path):
    """Takes away read and write access to `path` (a file or a folder and what it holds).

    chmod does not stop root, so as root Python's file functions refuse `path` too.
    """
    path = os.path.abspath(path)
    os.chmod(path, 0)
    if os.geteuid() != 0:
        return

    def denied(name):
        name = os.path.abspath(os.fspath(name)) if isinstance(name, (str, os.PathLike)) else ""
        return name == path or name.startswith(path + os.sep)

    def refuse(real):
        def call(name, *args, **kwargs):
            if denied(name):
                raise PermissionError(errno.EACCES, "Permission denied", os.fspath(name))
            return real(name, *args, **kwargs)
        return call

    for module, name in ((builtins, "open"), (os, "mkdir"), (os, "listdir")):
        monkeypatch.setattr(module, name, refuse(getattr(module, name)))
    access = os.access
    monkeypatch.setattr(os, "access", lambda name, mode, **kw: not denied(name)
                        and access(name, mode, **kw))


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def _image_folder(path, junk=False):
    path.mkdir()
    for i in range(4):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(path / f"{i}.png")
    if junk:
        (path / "notes.png").write_text("a text file renamed .png")
    return str(path)


def _mixed_folder(path):
    _image_folder(path)
    Image.fromarray(np.zeros((12, 10), np.uint8)).save(path / "big.png")
    return str(path)


def _file(path, text="x"):
    path.write_text(text)
    return str(path)


def _folder(path):
    path.mkdir()
    return str(path)


def _denied(monkeypatch, path):
    _deny(monkeypatch, path)
    return str(path)


def _run_with(path, run_json):
    path.mkdir()
    (path / "run.json").write_text(run_json)
    return str(path)


_X = np.full((20, 8, 8), 0.5, "float32")
# (id, command line from (tmp_path, monkeypatch, conditional_run), fragments of the one line)
_ONE_LINE_CASES = [
    ("train-output-is-a-file", lambda t, m, r: ["train", "--output", _file(t / "f")],
     ["`--output`", "is a file"]),
    ("train-output-empty", lambda t, m, r: ["train", "--output", ""], ["--output=''"]),
    ("train-output-in-read-only-folder",
     lambda t, m, r: ["train", "--output", os.path.join(_denied(m, _folder(t / "ro")), "run")],
     ["Permission denied", "ro"]),
    ("train-unreadable-dataset",
     lambda t, m, r: ["train", "--dataset", _denied(m, _npz(t / "d.npz", x=_X))],
     ["Permission denied", "d.npz"]),
    ("train-unreadable-image-folder",
     lambda t, m, r: ["train", "--dataset", _denied(m, _image_folder(t / "images"))],
     ["Permission denied", "images"]),
    ("train-no-examples", lambda t, m, r: ["train", "--dataset", _npz(t / "d.npz", x=_X[:0])],
     ["`--dataset`", "holds 0 example"]),
    ("train-one-example", lambda t, m, r: ["train", "--dataset", _npz(t / "d.npz", x=_X[:1])],
     ["`--dataset`", "holds 1 example"]),
    ("train-text-renamed-png",
     lambda t, m, r: ["train", "--dataset", _image_folder(t / "images", junk=True)],
     ["notes.png", "not an image file"]),
    ("train-mixed-image-sizes",
     lambda t, m, r: ["train", "--dataset", _mixed_folder(t / "mixed")],
     ["`--dataset`", "one size", "--image-size", "big.png", "12x10", "8x8"]),
    ("train-image-size-on-an-npz",
     lambda t, m, r: ["train", "--dataset", _npz(t / "d.npz", x=_X), "--image-size", "4,4"],
     ["`--dataset`", "--image-size", "loaded into memory"]),
    ("train-image-size-of-three-numbers",
     lambda t, m, r: ["train", "--dataset", _image_folder(t / "images"), "--image-size", "4,4,4"],
     ["`--image-size`", "(4, 4, 4)"]),
    ("train-an-empty-tfrecord-glob",
     lambda t, m, r: ["train", "--dataset", str(t / "none-*.tfrecord")],
     ["`--dataset`", "matches no files"]),
    ("prepare-data-existing-output",
     lambda t, m, r: ["prepare-data", "digits", "--output", _folder(t / "out")],
     ["`--output`", "exists", "nothing is overwritten"]),
    ("prepare-data-zero-shards",
     lambda t, m, r: ["prepare-data", "digits", "--output", str(t / "out"), "--shards", "0"],
     ["`--shards`", "--shards=0"]),
    ("prepare-data-missing-source",
     lambda t, m, r: ["prepare-data", str(t / "nothing.npz"), "--output", str(t / "out")],
     ["value for SOURCE: no such file", "nothing.npz"]),
    ("train-labels-of-the-wrong-length",
     lambda t, m, r: ["train", "--dataset", _npz(t / "d.npz", x_train=_X, y_train=np.arange(19),
                                                  x_valid=_X)],
     ["'y_train'", "one label per example"]),
    ("train-random-bytes-npz",
     lambda t, m, r: ["train", "--dataset", str(t / "d.npz")] if (t / "d.npz").write_bytes(
         np.random.default_rng(0).bytes(999)) else [],
     ["d.npz", "not a valid NumPy"]),
    ("train-nan-in-validation-split",
     lambda t, m, r: ["train", "--dataset", _npz(t / "d.npz", x_train=_X,
                                                  x_valid=np.where(_X > 0, np.nan, _X))],
     ["'x_valid'", "validation split", "non-finite"]),
    ("train-resume-with-options-it-would-ignore",
     lambda t, m, r: ["train", "--resume", "--output", r, "--latent-dim", "3", "--beta", "2",
                      "--no-jit"],
     ["--resume", "--beta, --jit, --latent-dim"]),
    ("evaluate-output-folder-missing",
     lambda t, m, r: ["evaluate", _folder(t / "not_a_run"), "--output", str(t / "no" / "e.json")],
     ["`--output`", "does not exist"]),
    ("evaluate-output-is-a-folder",
     lambda t, m, r: ["evaluate", r, "--output", _folder(t / "e.json")], ["is a directory"]),
    ("evaluate-output-empty", lambda t, m, r: ["evaluate", r, "--output", ""], ["--output=''"]),
    ("evaluate-output-folder-read-only",
     lambda t, m, r: ["evaluate", r, "--output",
                      os.path.join(_denied(m, _folder(t / "ro")), "e.json")],
     ["`--output`", "is not writable"]),
    ("evaluate-run-json-garbage",
     lambda t, m, r: ["evaluate", _run_with(t / "run", "{not json")],
     ["run.json", "not valid JSON"]),
    ("train-bad-tf-config",
     lambda t, m, r: m.setenv("TF_CONFIG", "{cluster: none}") or ["train"],
     ["TF_CONFIG", "not valid JSON", "{cluster: none}"]),
    ("train-resume-run-json-garbage",
     lambda t, m, r: ["train", "--resume", "--output", _run_with(t / "run", "[1, 2")],
     ["run.json", "not valid JSON"]),
    ("evaluate-run-json-unreadable",
     lambda t, m, r: ["evaluate", os.path.dirname(_denied(m, _file(t / "run.json", "{}")))],
     ["Permission denied", "run.json"]),
    ("evaluate-run-is-a-file", lambda t, m, r: ["evaluate", _file(t / "f")],
     ["not a tfvae run directory"]),
    ("sample-num-zero", lambda t, m, r: ["sample", r, "--num", "0"], ["--num=0"]),
    ("sample-seed-beyond-32-bits", lambda t, m, r: ["sample", r, "--seed", str(2**32)],
     ["`--seed`", f"--seed={2**32}"]),
    ("evaluate-gap-examples-zero",
     lambda t, m, r: ["evaluate", r, "--decompose-gap", "--gap-examples", "0"],
     ["`--gap-examples`", "--gap-examples=0"]),
    ("evaluate-num-samples-zero", lambda t, m, r: ["evaluate", r, "--num-samples", "0"],
     ["`--num-samples`", "--num-samples=0"]),
    ("score-seed-negative", lambda t, m, r: ["score", r, "--seed", "-1"],
     ["`--seed`", "--seed=-1"]),
    ("sample-num-too-many-for-memory",
     lambda t, m, r: ["sample", r, "-n", "300000000", "--output", str(t / "s.npy")],
     ["`--num`", "--num=300000000", "GiB"]),
    ("sample-num-negative", lambda t, m, r: ["sample", r, "-n", "-3"], ["--num=-3"]),
    ("sample-label-negative", lambda t, m, r: ["sample", r, "--label", "-1"], ["--label=-1"]),
    ("sample-label-huge", lambda t, m, r: ["sample", r, "--label", "1000000000", "--output",
                                           str(t / "s.npy")],
     ["`--label`", "10 classes", "--label=1000000000"]),
    ("sample-output-folder-missing",
     lambda t, m, r: ["sample", r, "--output", str(t / "no" / "s.png")], ["does not exist"]),
    ("sample-output-not-png-or-npy", lambda t, m, r: ["sample", r, "--output", str(t / "s.txt")],
     [".png or .npy"]),
    ("export-output-is-a-file",
     lambda t, m, r: ["export", r, "--format", "onnx", "--output", _file(t / "f")],
     ["`--output`", "is a file"]),
    ("export-opset-zero",
     lambda t, m, r: ["export", r, "--format", "onnx", "--opset", "0", "--output", str(t / "o")],
     ["`--opset`", "--opset 0"]),
    ("export-model-name-escapes",
     lambda t, m, r: ["export", r, "--format", "saved_model", "--model-name", "../../x",
                      "--output", str(t / "o")],
     ["`--model-name`", "--model-name '../../x'"]),
    ("export-output-empty",
     lambda t, m, r: ["export", r, "--format", "saved_model", "--output", ""], ["--output=''"]),
    ("encode-output-not-npz-or-csv", lambda t, m, r: ["encode", r, "--output", str(t / "c.txt")],
     ["`--output`", ".npz or .csv", "c.txt"]),
    ("encode-output-folder-missing",
     lambda t, m, r: ["encode", r, "--output", str(t / "no" / "c.npz")], ["does not exist"]),
    ("encode-batch-size-zero",
     lambda t, m, r: ["encode", r, "--batch-size", "0", "--output", str(t / "c.npz")],
     ["`--batch-size`", "--batch-size=0"]),
    ("score-num-samples-zero",
     lambda t, m, r: ["score", r, "--num-samples", "0", "--output", str(t / "s.csv")],
     ["`--num-samples`", "--num-samples=0"]),
    ("score-dataset-missing",
     lambda t, m, r: ["score", r, "--dataset", str(t / "missing.npz"), "--output",
                      str(t / "s.csv")], ["`--dataset`", "missing.npz"]),
]


@pytest.mark.parametrize("make_args, fragments", [case[1:] for case in _ONE_LINE_CASES],
                         ids=[case[0] for case in _ONE_LINE_CASES])
def test_expected_failures_end_in_one_line(tmp_path, monkeypatch, capsys, conditional_run,
                                           make_args, fragments):
    args = make_args(tmp_path, monkeypatch, conditional_run)
    if args[0] == "train" and "--output" not in args:
        args += ["--output", str(tmp_path / "run")]
    if args[0] == "train" and "--resume" not in args:
        args += TINY
    code = cli.main(args)
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"tfvae {args[0]}: error: ")
    for fragment in fragments:
        assert fragment in err, (fragment, err)


def test_an_unexpected_error_keeps_its_traceback(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug in tfvae")

    monkeypatch.setattr(runs, "train", broken)
    with pytest.raises(RuntimeError, match="a bug in tfvae"):
        cli.main(["train", "--output", str(tmp_path / "run")])


def _record_train(monkeypatch):
    calls = []
    monkeypatch.setattr(runs, "train", lambda *args, **kwargs: calls.append((args, kwargs)) or {})
    return calls


def test_resume_passes_epochs_on_and_takes_the_rest_from_the_run(tmp_path, monkeypatch):
    # Until runs.train(..., epochs=N) lands, the wiring is checked on a recording stand-in.
    calls = _record_train(monkeypatch)
    output = str(tmp_path / "run")
    assert cli.main(["train", "--resume", "--output", output, "--epochs", "7", "--quiet",
                     "--verbose"]) == 0
    assert cli.main(["--verbose", "train", "--resume", "--output", output]) == 0
    (config, path), kwargs = calls[0]
    assert path == output and kwargs == {"overwrite": False, "resume": True, "verbose": 0,
                                         "epochs": 7}
    assert calls[1][1] == {"overwrite": False, "resume": True, "verbose": 1}
    # --epochs without --resume is the new run's setting, as before.
    assert cli.main(["train", "--output", output, "--epochs", "4"]) == 0
    assert calls[2][0][0].epochs == 4 and "epochs" not in calls[2][1]


def test_export_passes_opset_and_model_name_as_given(conditional_run, tmp_path, monkeypatch):
    from tfvae import export

    seen = {}
    monkeypatch.setattr(export, "export_onnx",
                        lambda model, output, opset, threshold=None: seen.update(
                            opset=opset, threshold=threshold) or {})
    monkeypatch.setattr(export, "export_saved_model",
                        lambda model, output, name, version=None, threshold=None: seen.update(
                            name=name, threshold=threshold) or output)
    for opset in ("0", "-5", "13"):
        assert cli.main(["export", conditional_run, "--format", "onnx", "--opset", opset,
                         "--output", str(tmp_path)]) == 0
        assert seen["opset"] == int(opset)
    assert cli.main(["export", conditional_run, "--format", "onnx", "--output",
                     str(tmp_path)]) == 0
    assert seen["opset"] == export.ONNX_OPSET
    assert cli.main(["export", conditional_run, "--format", "saved_model", "--model-name",
                     "../x", "--output", str(tmp_path)]) == 0
    assert seen["name"] == "../x"
    assert seen["threshold"] is None  # an image run's graphs have no flag to set


def test_a_full_disk_names_the_file_and_keeps_the_earlier_one(conditional_run, tmp_path,
                                                              monkeypatch, capsys):
    output = tmp_path / "s.npy"
    np.save(output, np.arange(3))
    save = np.save

    def full_disk(path, array):
        with open(path, "wb") as f:
            f.write(b"\x93NUMPY partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "save", full_disk)
    args = ["sample", conditional_run, "-n", "3", "--label", "9", "--output", str(output),
            "--overwrite"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"tfvae sample: error: No space left on device: {str(output)!r}"
    np.testing.assert_array_equal(np.load(output), np.arange(3))  # the earlier file, whole
    assert os.listdir(tmp_path) == ["s.npy"]  # no temporary file left behind
    monkeypatch.setattr(np, "save", save)
    assert cli.main(args) == 0
    assert np.load(output).shape == (3, 8, 8, 1) and os.listdir(tmp_path) == ["s.npy"]


@pytest.mark.slow
def test_a_cli_error_is_one_line_without_tensorflow_log_noise(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_CPP")}
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(tfvae.__file__)),
                                         env.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", "tfvae_main", "train", "--dataset", "missing.npz"]

    def run(output, *extra):
        return subprocess.run(command + ["--output", str(tmp_path / output), *extra],
                              capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)

    quiet, verbose = run("quiet"), run("verbose", "--verbose")
    assert quiet.returncode == 2 and quiet.stderr.count("\n") == 1, quiet.stderr
    assert quiet.stderr.startswith("tfvae train: error: ") and "missing.npz" in quiet.stderr
    # The same run with --verbose shows what the plain one hides (so the test can fail).
    assert verbose.returncode == 2 and verbose.stderr.count("\n") > 1
    assert verbose.stderr.splitlines()[-1] == quiet.stderr.strip()
    # Importing the command's entry point leaves TensorFlow unloaded, so main can quiet it.
    check = subprocess.run([sys.executable, "-c", "import sys, tfvae_main; "
                            "print('tensorflow' in sys.modules)"], capture_output=True,
                           text=True, timeout=300, env=env)
    assert check.stdout.strip() == "False", check.stderr


@pytest.mark.slow
def test_import_tfvae_after_keras_still_registers_the_model_classes(conditional_run):
    # `import tfvae` registers the library's Keras classes, whatever was imported first.
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([os.path.dirname(os.path.dirname(tfvae.__file__)),
                                          os.environ.get("PYTHONPATH", "")])}
    code = ("import sys, keras, tfvae; "
            f"model = keras.saving.load_model({os.path.join(conditional_run, 'model.keras')!r}); "
            "print(type(model).__name__, model.condition_dim)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, env=env)
    assert result.stdout.strip() == "VAE 10", result.stderr[-2000:]


def test_written_files_get_the_usual_permissions(conditional_run, tmp_path):
    output = tmp_path / "s.npy"
    assert cli.main(["sample", conditional_run, "-n", "2", "--output", str(output)]) == 0
    umask = os.umask(0)
    os.umask(umask)
    assert output.stat().st_mode & 0o777 == 0o666 & ~umask


def _read_csv(path):
    with open(path) as f:
        header = f.readline().strip().split(",")
        rows = np.array([[float(v) for v in line.split(",")] for line in f])
    return {name: rows[:, i] for i, name in enumerate(header)}


@pytest.mark.slow
def test_encode_and_score_match_the_python_api(conditional_run, tmp_path, capsys):
    """`tfvae encode` / `score` on a conditional run against `evaluation.encode_dataset` /
    `score_examples` on the same held-out split, and the codes against `model.encode`."""
    from tfvae import evaluation, runs

    config, model = runs.load_run(conditional_run)
    x, labels = runs.held_out(config)
    npz, csv = tmp_path / "codes.npz", tmp_path / "codes.csv"
    for output in (npz, csv):
        assert cli.main(["encode", conditional_run, "--output", str(output), "--batch-size",
                         "50"]) == 0
    codes = np.load(npz)
    q = model.encode(x, y=labels)
    np.testing.assert_array_equal(codes["index"], np.arange(len(x)))
    np.testing.assert_array_equal(codes["label"], labels)
    np.testing.assert_allclose(codes["mean"], q.mean().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(codes["scale"], q.stddev().numpy(), rtol=1e-5, atol=1e-6)
    table = _read_csv(csv)
    for j in range(model.latent_dim):
        np.testing.assert_allclose(table[f"mean_{j}"], codes["mean"][:, j], rtol=1e-6)
        np.testing.assert_allclose(table[f"code_{j}"], codes["code"][:, j], rtol=1e-6)
    assert cli.main(["encode", conditional_run, "--output", str(npz)]) == 2  # no --overwrite
    assert "exists" in capsys.readouterr().err

    scores_path = tmp_path / "scores.csv"
    assert cli.main(["score", conditional_run, "--num-samples", "5", "--seed", "3",
                     "--output", str(scores_path)]) == 0
    scores = _read_csv(scores_path)
    expected = evaluation.score_examples(model, x, y=labels, num_samples=5, seed=3)
    assert set(scores) == {"index", "label"} | set(expected)
    for key, values in expected.items():
        np.testing.assert_allclose(scores[key], values, rtol=1e-5, atol=1e-5, err_msg=key)


@pytest.mark.slow
def test_train_writes_tensorboard_logs_that_match_history(digits_run, tmp_path):
    from helpers import read_events

    rows = _history(digits_run)
    train = read_events(os.path.join(digits_run, "tensorboard", "train"))
    validation = read_events(os.path.join(digits_run, "tensorboard", "validation"))
    for key in ("loss", "elbo", "reconstruction", "kl", "beta", "learning_rate"):
        np.testing.assert_allclose([train[f"epoch_{key}"][e] for e in range(len(rows))],
                                   [float(row[key]) for row in rows], rtol=1e-6, err_msg=key)
        assert key in rows[0]  # history.csv records β and the learning rate too
    for key in ("elbo", "kl"):
        np.testing.assert_allclose([validation[f"epoch_{key}"][e] for e in range(len(rows))],
                                   [float(row["val_" + key]) for row in rows], rtol=1e-6)
    latent = read_events(os.path.join(digits_run, "tensorboard", "latent"))
    last = len(rows) - 1
    assert {"reconstructions", "samples", "posterior_mean/z0", "kl_per_dimension"} <= set(latent)
    assert last in latent["reconstructions"]
    # --no-tensorboard writes none (one epoch on a small dataset shows it).
    output = str(tmp_path / "quiet")
    splits_npz(tmp_path / "d.npz", test=False)
    assert cli.main(["train", "--output", output, "--no-tensorboard", *TINY_RUN, "--epochs", "1",
                     "--dataset", str(tmp_path / "d.npz")]) == 0
    assert not os.path.exists(os.path.join(output, "tensorboard"))


@pytest.mark.slow
def test_the_default_run_reports_a_likelihood_of_binarised_digits(digits_run):
    with open(os.path.join(digits_run, "run.json")) as f:
        assert json.load(f)["binarize"] == "auto"
    with open(os.path.join(digits_run, "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["likelihood_score"] == "mass"
    assert metrics["bits_per_dim"] == pytest.approx(-metrics["log_px"] / (64 * np.log(2.0)))
    with open(os.path.join(digits_run, "report.md")) as f:
        report = f.read()
    assert "binarize='auto'" in report and "a log-probability of discrete data" in report


@pytest.mark.slow
def test_train_beta_tcvae_on_shapes_reports_its_terms_and_the_mig(shapes_tcvae_run):
    output = shapes_tcvae_run  # conftest.py: --objective beta_tcvae --tc-weight 6
    config, model = runs.load_run(output)
    objective = model.objective
    assert (objective.name, objective.tc_weight, objective.mi_weight) == ("beta_tcvae", 6.0, 1.0)
    assert objective.dataset_size == len(runs.load_dataset(config)[0][0])  # N: the training split
    rows = _history(output)
    assert {"mi", "tc", "dwkl", "val_mi", "val_tc", "val_dwkl", "beta"} <= set(rows[0])
    with open(os.path.join(output, "metrics.json")) as f:
        metrics = json.load(f)
    assert 0.0 <= metrics["mig"] <= 1.0 and "mig_shape" in metrics
    # The KL's split, held out: MI + KL(q(z) ‖ p(z)), the latter = TC + dimension-wise KL.
    assert metrics["total_correlation"] + metrics["dimension_wise_kl"] == pytest.approx(
        metrics["marginal_kl"], abs=1e-3)
    with open(os.path.join(output, "report.md")) as f:
        report = f.read()
    assert "total_correlation" in report and "mig" in report


def test_beta_tcvae_options_are_checked_before_training(tmp_path, capsys):
    assert cli.main(["train", "--objective", "elbo", "--tc-weight", "6", "--output",
                     str(tmp_path / "r")]) == 2
    assert "beta_tcvae" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "r")


@pytest.mark.slow
def test_encode_and_score_on_a_given_dataset_cover_every_example_in_its_order(digits_run,
                                                                              tmp_path):
    # 0.2.0 wrote a random 20 % (the validation split) of a user's file, renumbered
    # and with permuted labels (issue 20 finding 8).
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(60, 8, 8)).astype("float32")
    y = np.arange(60) % 7
    np.savez(tmp_path / "x.npz", x=x, y=y)
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(12):
        Image.fromarray((x[i] * 255).astype(np.uint8)).save(folder / f"{i:02d}.png")
    assert cli.main(["encode", digits_run, "--dataset", str(tmp_path / "x.npz"),
                     "--output", str(tmp_path / "c.npz")]) == 0
    codes = np.load(tmp_path / "c.npz")
    np.testing.assert_array_equal(codes["index"], np.arange(60))
    np.testing.assert_array_equal(codes["label"], y)
    # Row i is example i: its code equals the model's on that example alone.
    _, model = runs.load_run(digits_run)
    config = runs.read_config(os.path.join(digits_run, "run.json"))
    prepared = runs.held_out(config, dataset=str(tmp_path / "x.npz"), split="all")[0]
    np.testing.assert_allclose(codes["code"][17], model.latent_code(prepared[17:18])[0],
                               rtol=1e-5, atol=1e-6)
    assert cli.main(["score", digits_run, "--dataset", str(folder),
                     "--output", str(tmp_path / "s.csv")]) == 0
    scores = np.genfromtxt(tmp_path / "s.csv", delimiter=",", names=True)
    np.testing.assert_array_equal(scores["index"], np.arange(12))
    # --split still picks one split.
    assert cli.main(["encode", digits_run, "--dataset", str(tmp_path / "x.npz"), "--split",
                     "validation", "--output", str(tmp_path / "v.npz")]) == 0
    assert len(np.load(tmp_path / "v.npz")["index"]) == 12


@pytest.mark.slow
def test_evaluation_json_is_strict_json_when_a_value_is_not_finite(digits_run, tmp_path,
                                                                   monkeypatch):
    # 0.2.0 wrote NaN / Infinity tokens into evaluation.json (issue 20 finding 14).
    from tfvae import evaluation

    monkeypatch.setattr(evaluation, "evaluate_model",
                        lambda *a, **k: {"elbo": float("nan"), "log_px": float("-inf")})
    output = tmp_path / "ev.json"
    assert cli.main(["evaluate", digits_run, "--output", str(output)]) == 0

    def refuse(token):
        raise ValueError(f"non-strict JSON token {token}")

    metrics = json.loads(output.read_text(), parse_constant=refuse)
    assert metrics["elbo"] is None and sorted(metrics["non_finite"]) == ["elbo", "log_px"]
