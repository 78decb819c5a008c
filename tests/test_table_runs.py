"""tfvae.table_runs through the command: `train --dataset table.csv`, then `score --threshold`."""

import csv
import json
import os

import numpy as np
import pytest

from tfvae import cli

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
    assert sorted(os.listdir(run)) == ["history.csv", "metrics.json", "model.keras", "run.json",
                                       "table.json"]
    with open(os.path.join(run, "metrics.json")) as f:
        metrics = json.load(f)
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
