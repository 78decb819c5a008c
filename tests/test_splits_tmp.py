"""Datasets with their own splits: .npz files, `load_split`, `tfvae evaluate --dataset --split`."""

import json

import numpy as np
import pytest

import tfvae
from tfvae import cli
from tfvae import data


def _npz(path, valid_key="x_valid", test=True, labels=True, n=(40, 12, 10)):
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


@pytest.mark.parametrize("valid_key", ["x_valid", "x_val", "x_validation"])
def test_npz_with_splits_is_used_as_given(tmp_path, valid_key):
    arrays = _npz(tmp_path / "d.npz", valid_key)
    (x_train, y_train), (x_val, y_val) = data.load(str(tmp_path / "d.npz"))
    # uint8 0/1 pixels stay binary; the given splits are kept whole and in order.
    np.testing.assert_array_equal(x_train[..., 0], arrays["x_train"])
    np.testing.assert_array_equal(x_val[..., 0], arrays[valid_key])
    np.testing.assert_array_equal(y_val, arrays["y" + valid_key[1:]])
    x_test, y_test = data.load_split(str(tmp_path / "d.npz"), "test")
    np.testing.assert_array_equal(x_test[..., 0], arrays["x_test"])
    np.testing.assert_array_equal(y_test, arrays["y_test"])


def test_npz_train_only_is_split_at_random_and_test_is_refused(tmp_path):
    _npz(tmp_path / "d.npz", valid_key="x_none", test=False)
    (x_train, _), (x_val, _) = data.load(str(tmp_path / "d.npz"), validation_fraction=0.25)
    assert (len(x_train), len(x_val)) == (30, 10)
    train, val = data.load_split(str(tmp_path / "d.npz"), "train"), data.load_split(
        str(tmp_path / "d.npz"), "validation")
    assert len(train[0]) + len(val[0]) == 40
    with pytest.raises(ValueError, match="has no test split"):
        data.load_split(str(tmp_path / "d.npz"), "test")
    with pytest.raises(ValueError, match="split"):
        data.load_split(str(tmp_path / "d.npz"), "valid")


def test_uint8_intensities_are_still_scaled(tmp_path):
    np.savez(tmp_path / "g.npz", x=np.full((5, 2, 2), 255, "uint8"))
    (x_train, _), _ = data.load(str(tmp_path / "g.npz"))
    assert x_train.max() == 1.0


def test_train_uses_the_given_splits_and_evaluate_takes_any_split(tmp_path, monkeypatch):
    arrays = _npz(tmp_path / "d.npz")
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


def test_evaluate_decompose_gap_writes_the_parts_and_a_figure(tmp_path):
    _npz(tmp_path / "d.npz")
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
