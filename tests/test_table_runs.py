"""tfvae.table_runs through the command: `train --dataset table.csv`, then `score --threshold`,
`evaluate`, `encode`, `sample` and `train --resume` on the run."""

import csv
import json
import os
import shutil

import numpy as np
import pytest

from tfvae import callbacks, cli, runs, table_runs, tabular

TINY = ["--epochs", "3", "--latent-dim", "2", "--hidden-units", "8", "--eval-samples", "8",
        "--batch-size", "32", "--quiet", "--no-tensorboard"]


def _mixed_csv(path, n=120, unseen=False):
    """Continuous, binary (text), categorical (text) and integer columns, and labels."""
    rng = np.random.default_rng(0)
    t = rng.normal(size=n)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["amount", "member", "colour", "visits", "is_fraud"])
        for i in range(n):
            colour = ["red", "green", "blue"][i % 3] if not (unseen and i == 0) else "purple"
            writer.writerow([f"{2 * t[i] + 5 + (8 if i % 20 == 0 else 0):.4f}",
                             "yes" if t[i] > 0 else "no", colour, int(rng.integers(0, 9)),
                             int(i % 20 == 0)])
    return str(path)


def _read(path):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return {key: np.array([float(r[key]) for r in rows]) for key in rows[0]}


@pytest.fixture(scope="module")
def table_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("table")
    table = _mixed_csv(folder / "t.csv")
    run = str(folder / "run")
    assert cli.main(["train", "--dataset", table, "--labels-column", "is_fraud",
                     "--output", run, *TINY]) == 0
    return run, table, folder


@pytest.mark.slow
def test_train_then_score_a_mixed_type_csv(table_run, capsys):
    run, table, folder = table_run
    assert sorted(os.listdir(run)) == [
        "curves.png", "feature_scores.png", "history.csv", "last.keras", "metrics.json",
        "model.keras", "report.md", "run.json", "scores.png", "table.json"]
    with open(os.path.join(run, "metrics.json")) as f:
        metrics = json.load(f)
    with open(os.path.join(run, "report.md")) as f:
        report = f.read()
    for figure in ("curves.png", "scores.png", "feature_scores.png"):
        assert f"]({figure})" in report
        with open(os.path.join(run, figure), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert f"Threshold {metrics['threshold']:.4f}" in report and "tabular" in report
    assert len(metrics["feature_scores"]) == 4 and np.all(np.isfinite(metrics["feature_scores"]))
    assert metrics["threshold_score"] == "log_px" and metrics["contamination"] == 0.1
    assert metrics["columns"] == ["amount", "member", "colour", "visits"]  # no labels
    assert np.isfinite(metrics["threshold"]) and np.isfinite(metrics["log_px"])

    output = str(folder / "scores.csv")
    assert cli.main(["score", run, "--dataset", table, "--threshold", "auto",
                     "--output", output]) == 0
    scores = _read(output)
    assert list(scores) == ["index", "label", "score", "feature_amount", "feature_member",
                            "feature_colour", "feature_visits", "flag"]
    assert len(scores["score"]) == 120
    np.testing.assert_array_equal(scores["flag"], scores["score"] > metrics["threshold"])
    np.testing.assert_array_equal(scores["label"], np.arange(120) % 20 == 0)
    assert 0.0 < scores["flag"].mean() < 0.3  # about the contamination of the training rows

    assert cli.main(["score", run, "--dataset", table, "--threshold", "1e9"]) == 0
    fixed = os.path.join(run, "scores-all.csv")  # the default output: every row
    assert _read(fixed)["flag"].sum() == 0
    np.testing.assert_allclose(_read(fixed)["score"], scores["score"])  # seeded: same scores


@pytest.mark.slow
def test_an_unseen_category_is_scored_and_bad_tables_fail_in_one_line(table_run, capsys):
    run, _, folder = table_run
    unseen = _mixed_csv(folder / "unseen.csv", unseen=True)
    output = str(folder / "unseen-scores.csv")
    assert cli.main(["score", run, "--dataset", unseen, "--output", output]) == 0
    assert np.isfinite(_read(output)["feature_colour"]).all()

    missing = folder / "missing.csv"
    missing.write_text("amount,member,colour,visits\n1.0,yes,,3\n")
    capsys.readouterr()
    assert cli.main(["score", run, "--dataset", str(missing), "--output",
                     str(folder / "never.csv")]) == 2
    err = capsys.readouterr().err
    assert "'colour'" in err and "missing value" in err and len(err.strip().splitlines()) == 1
    assert not os.path.exists(folder / "never.csv")


def test_train_refuses_a_bad_table_before_writing_anything(tmp_path, capsys):
    table = tmp_path / "t.csv"
    table.write_text("label,a,b\n0,1,x\n1,2,2\n0,3,3\n0,4,4\n")
    run = tmp_path / "run"
    assert cli.main(["train", "--dataset", str(table), "--output", str(run), *TINY]) == 2
    err = capsys.readouterr().err
    assert "'label'" in err and len(err.strip().splitlines()) == 1
    assert cli.main(["train", "--dataset", str(table), "--labels-column", "label",
                     "--output", str(run), *TINY]) == 2
    err = capsys.readouterr().err
    assert "'b'" in err and "'x'" in err
    assert not run.exists()


def test_table_flags_are_refused_elsewhere(tmp_path, capsys):
    assert cli.main(["train", "--dataset", "digits", "--labels-column", "y",
                     "--output", str(tmp_path / "r"), *TINY]) == 2
    assert "--labels-column" in capsys.readouterr().err
    assert cli.main(["train", "--dataset", str(tmp_path / "t.csv"), "--contamination", "0.9",
                     "--output", str(tmp_path / "r"), *TINY]) == 2
    assert "`--contamination`" in capsys.readouterr().err


def _auc_by_ranks(labels, scores):
    """ROC-AUC as the Mann-Whitney statistic: P(an anomaly outscores a normal row)."""
    from scipy import stats

    ranks = stats.rankdata(scores)
    positive = labels == 1
    n1, n0 = positive.sum(), (~positive).sum()
    return (ranks[positive].sum() - n1 * (n1 + 1) / 2) / (n1 * n0)


def _average_precision(labels, scores):
    """The mean over anomalies of the precision among the rows scored at least as high."""
    order = np.argsort(-scores)
    hits = labels[order] == 1
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return precision[hits].mean()


def _model_and_rows(run, table):
    model = runs.load_model(os.path.join(run, "model.keras"))
    x, labels, _ = tabular.load_table(table, schema=model.likelihood.schema)
    return model, x, labels


@pytest.mark.slow
def test_evaluate_reads_the_run_s_rows_or_a_whole_table_and_ranks_its_labels(table_run):
    run, table, folder = table_run
    with open(os.path.join(run, "metrics.json")) as f:
        trained = json.load(f)
    # The validation rows, as training evaluated them (seed 0, its 8 samples), and the gap
    # split of their first 3.
    output = str(folder / "evaluation.json")
    assert cli.main(["evaluate", run, "--num-samples", "8", "--output", output,
                     "--decompose-gap", "--gap-examples", "3", "--gap-steps", "20"]) == 0
    with open(output) as f:
        metrics = json.load(f)
    assert metrics["split"] == "validation" and metrics["num_examples"] == 24
    for key in ("elbo", "reconstruction", "kl", "log_px", "active_units", "roc_auc", "pr_auc"):
        assert metrics[key] == pytest.approx(trained[key], abs=1e-9), key
    assert metrics["gap_examples"] == 3 and np.isfinite(metrics["amortization_gap"])
    assert os.path.exists(folder / "evaluation_gap.png")
    assert cli.main(["evaluate", run, "--split", "train", "--num-samples", "8",
                     "--output", str(folder / "train.json")]) == 0
    with open(folder / "train.json") as f:
        assert json.load(f)["num_examples"] == 96

    # A whole table: its labels rank the run's score as `tfvae score` writes it.
    output = str(folder / "evaluation-all.json")
    assert cli.main(["evaluate", run, "--dataset", table, "--num-samples", "8",
                     "--output", output]) == 0
    scores_path = str(folder / "scores-for-auc.csv")
    assert cli.main(["score", run, "--dataset", table, "--output", scores_path]) == 0
    with open(output) as f:
        metrics = json.load(f)
    scores = _read(scores_path)
    assert metrics["split"] == "all" and metrics["num_examples"] == 120
    assert metrics["anomalies"] == 6
    assert metrics["roc_auc"] == pytest.approx(_auc_by_ranks(scores["label"], scores["score"]),
                                               abs=1e-12)
    assert metrics["pr_auc"] == pytest.approx(
        _average_precision(scores["label"], scores["score"]), abs=1e-12)


@pytest.mark.slow
def test_encode_writes_the_posterior_of_the_run_s_rows_or_a_whole_table(table_run):
    run, table, folder = table_run
    model, x, labels = _model_and_rows(run, table)
    _, validation = table_runs.split_rows(len(x), seed=0)
    codes = str(folder / "codes.npz")
    assert cli.main(["encode", run, "--output", codes]) == 0
    q = model.encode(x[validation])
    with np.load(codes) as found:
        np.testing.assert_array_equal(found["index"], np.arange(len(validation)))
        np.testing.assert_array_equal(found["label"], labels[validation])
        np.testing.assert_allclose(found["mean"], q.mean().numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(found["scale"], q.stddev().numpy(), rtol=1e-5, atol=1e-6)
    codes = str(folder / "codes.csv")
    assert cli.main(["encode", run, "--dataset", table, "--output", codes]) == 0
    found = _read(codes)
    np.testing.assert_array_equal(found["label"], np.arange(120) % 20 == 0)
    np.testing.assert_allclose(np.c_[found["mean_0"], found["mean_1"]],
                               model.encode(x).mean().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_other_columns_or_splits_are_refused_in_one_line(table_run, capsys):
    run, _, folder = table_run
    renamed = folder / "renamed.csv"
    renamed.write_text("amount,member,color,visits,is_fraud\n1.0,yes,red,3,0\n")
    never = folder / "never"
    for argv in (["evaluate", run, "--dataset", str(renamed), "--output", f"{never}.json"],
                 ["encode", run, "--dataset", str(renamed), "--output", f"{never}.npz"],
                 ["score", run, "--dataset", str(renamed), "--output", f"{never}.csv"],
                 ["evaluate", run, "--split", "test", "--output", f"{never}.json"],
                 ["encode", run, "--dataset", str(renamed), "--split", "train",
                  "--output", f"{never}.npz"]):
        capsys.readouterr()
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err
        if "--split" in argv:
            assert "`--split`" in err and "'all'" in err
        else:
            assert "missing ['colour']" in err and "extra ['color']" in err
    assert not [name for name in os.listdir(folder) if name.startswith("never")]


@pytest.mark.slow
def test_sampled_rows_follow_the_model_s_mixture_and_read_back_as_a_table(table_run, capsys):
    import tensorflow as tf
    from scipy import special

    run, table, folder = table_run
    model, _, _ = _model_and_rows(run, table)
    n = 20_000
    output = str(folder / "rows.csv")
    assert cli.main(["sample", run, "-n", str(n), "--seed", "3", "--output", output]) == 0
    with open(output) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["amount", "member", "colour", "visits"] and len(rows) == n

    # The mixture over z ~ N(0, I) of each column's p(x_j|z), from the decoder's parameters.
    z = np.random.default_rng(1).standard_normal((200_000, model.latent_dim)).astype(np.float32)
    parameters = {k: v.numpy() for k, v in model.decoder_parameters(tf.constant(z)).items()}
    mean, std = (v.numpy() for v in model.likelihood.column_stats())
    for i, name in enumerate(["amount", "visits"]):  # continuous: back on the raw scale
        values = np.array([float(r[name]) for r in rows])
        loc, sigma = parameters["loc"][:, i], parameters["scale"][:, i]
        expected_mean = mean[i] + std[i] * loc.mean()
        expected_sd = std[i] * np.sqrt(np.mean(sigma**2) + loc.var())
        assert abs(values.mean() - expected_mean) < 5 * expected_sd / np.sqrt(n), name
        assert values.std() == pytest.approx(expected_sd, rel=0.03), name
    member = np.array([r["member"] for r in rows])
    assert set(member) == {"no", "yes"}
    p_yes = special.expit(parameters["binary_logits"][:, 0]).mean()
    assert abs((member == "yes").mean() - p_yes) < 5 * np.sqrt(p_yes * (1 - p_yes) / n)
    colour = np.array([r["colour"] for r in rows])
    assert set(colour) <= {"blue", "green", "red"}  # the vocabulary: never the unknown slot
    known = special.softmax(parameters["categorical_logits"][:, :3], axis=1).mean(axis=0)
    for value, p in zip(("blue", "green", "red"), known):
        assert abs((colour == value).mean() - p) < 5 * np.sqrt(p * (1 - p) / n), value
    x, labels = table_runs.read_rows(output, model.likelihood.schema)  # raw rows, the run's
    assert x.shape == (n, 4) and labels is None

    # Seeded; a parquet holds the same rows; what cannot hold rows is refused in one line.
    small = [str(folder / f"small.{ext}") for ext in ("csv", "parquet")]
    for path in small:
        assert cli.main(["sample", run, "-n", "5", "--seed", "3", "--output", path]) == 0
    again = [tabular.read_table(path)[0] for path in small]
    assert list(again[0]) == list(again[1])
    for name in again[0]:
        assert list(again[0][name]) == list(again[1][name])
    for argv, fragment in ((["--output", str(folder / "s.png")], "not an image"),
                           (["--output", str(folder / "s.npz")], "['member', 'colour']"),
                           (["--label", "1", "--output", str(folder / "s.csv")], "`--label`")):
        capsys.readouterr()
        assert cli.main(["sample", run, "-n", "5", *argv]) == 2
        err = capsys.readouterr().err
        assert fragment in err and len(err.strip().splitlines()) == 1
    assert not [name for name in os.listdir(folder) if name.startswith("s.")]


@pytest.mark.slow
def test_resume_continues_a_table_run_and_never_replaces_its_best_model(table_run, tmp_path,
                                                                       capsys):
    run, _, _ = table_run
    copy = str(tmp_path / "run")
    shutil.copytree(run, copy)
    best_path = os.path.join(copy, "model.keras")
    before = runs.load_model(best_path)
    stats = [v.numpy() for v in before.likelihood.column_stats()]
    # Make the best epoch unbeatable: the resumed epochs must not replace its model.keras.
    best_epoch = callbacks.AtomicModelCheckpoint.read_epoch(best_path)
    history_path = os.path.join(copy, "history.csv")
    with open(history_path) as f:
        rows = list(csv.DictReader(f))
    rows[best_epoch - 1]["val_elbo"] = "1e9"
    with open(history_path, "w") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with open(best_path, "rb") as f:
        best_bytes = f.read()

    assert cli.main(["train", "--output", copy, "--resume", "--contamination", "0.2"]) == 2
    assert "--contamination" in capsys.readouterr().err
    assert cli.main(["train", "--output", copy, "--resume", "--epochs", "5", "--quiet"]) == 0
    history = runs.read_history(history_path)
    assert len(history["loss"]) == 5  # 3 kept, 2 more
    np.testing.assert_array_equal(history["loss"][:3], [float(r["loss"]) for r in rows])
    assert callbacks.AtomicModelCheckpoint.read_epoch(os.path.join(copy, "last.keras")) == 5
    with open(best_path, "rb") as f:
        assert f.read() == best_bytes
    last = runs.load_model(os.path.join(copy, "last.keras"))
    assert last.likelihood.schema == before.likelihood.schema  # nothing fitted again
    for kept, now in zip(stats, last.likelihood.column_stats()):
        np.testing.assert_array_equal(kept, now.numpy())
    config = runs.read_config(os.path.join(copy, runs.RUN_FILE))
    assert config.epochs == 5
    # The run's learning-rate schedule is applied (cosine from the rate to 0.1× over
    # epochs × ⌈96 training rows / 32⌉ steps), as run.json records it.
    assert config.lr_schedule == "cosine"
    step = int(last.optimizer.iterations.numpy())
    assert step == 5 * 3
    expected = config.learning_rate * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * step / 15)))
    np.testing.assert_allclose(float(np.asarray(last.optimizer.learning_rate)), expected,
                               rtol=1e-5)
    with open(os.path.join(copy, "metrics.json")) as f:
        assert json.load(f)["epochs_trained"] == 5
