"""Files written by tfvae 0.1.0 still load, give the same numbers, evaluate, export and resume.

`tests/data/` holds `.keras` models and a run directory (stopped mid KL warm-up)
written by `tests/data/make_golden.py` on the 0.1.0 code, and the numbers that
code computed on fixed inputs with fixed seeds (`golden.json`).
"""

import json
import pathlib
import shutil

import keras
import numpy as np
import pytest

import tfvae
from tfvae import cli

DATA = pathlib.Path(__file__).resolve().parent / "data"
GOLDEN = json.loads((DATA / "golden.json").read_text())
MODELS = sorted(GOLDEN["models"])


def test_golden_files_come_from_0_1_0():
    assert GOLDEN["tfvae_version"] == "0.1.0"
    assert tfvae.__version__ != "0.1.0"
    assert MODELS == ["conditional_hierarchy", "iaf", "plain_mlp"]


@pytest.mark.parametrize("name", MODELS)
def test_golden_model_gives_the_same_numbers(name):
    model = keras.saving.load_model(DATA / f"golden_{name}.keras")
    want = GOLDEN["models"][name]
    x = np.asarray(GOLDEN["x"], "float32")
    y = np.asarray(GOLDEN["y"]) if model.condition_dim else None
    terms = model.elbo(x, num_samples=3, seed=7, y=y)
    assert sorted(terms) == sorted(want["elbo"])
    for key, value in terms.items():
        np.testing.assert_allclose(value, want["elbo"][key], rtol=1e-5, atol=1e-5)
    got = {
        "latent_code": model.latent_code(x, y=y),
        "reconstruct": model.reconstruct(x, y=y),
        "call": model((x, y.astype("int32")) if y is not None else x),
        "sample": model.sample(4, seed=5, y=3 if y is not None else None),
        "log_likelihood": model.log_likelihood(x, num_samples=64, seed=11, chunk_size=16, y=y),
        "iwae_bound": model.iwae_bound(x, k=8, seed=13, y=y),
    }
    for key, value in got.items():
        np.testing.assert_allclose(value, want[key], rtol=1e-5, atol=1e-5, err_msg=key)


def test_golden_model_exports_with_parity(tmp_path):
    model = keras.saving.load_model(DATA / "golden_conditional_hierarchy.keras")
    path = tfvae.export.export_saved_model(model, str(tmp_path), signatures=["serving_default",
                                                                               "encode"])
    import tensorflow as tf

    loaded = tf.saved_model.load(path)
    x = np.asarray(GOLDEN["x"], "float32")
    y = np.eye(10, dtype="float32")[np.asarray(GOLDEN["y"])]
    mean = loaded.signatures["encode"](x=tf.constant(x), y=tf.constant(y))["mean"].numpy()
    np.testing.assert_allclose(mean, np.asarray(
        GOLDEN["models"]["conditional_hierarchy"]["latent_code"])[:, :2], rtol=1e-5, atol=1e-6)


@pytest.fixture
def golden_run(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(DATA / "golden_run", run)
    return run


def test_golden_run_evaluates_to_its_own_metrics(golden_run, tmp_path):
    out = tmp_path / "metrics.json"
    assert cli.main(["evaluate", str(golden_run), "--num-samples", "8", "--output", str(out)]) in (
        0, None)
    got, want = json.loads(out.read_text()), json.loads((golden_run / "metrics.json").read_text())
    for key in ("elbo", "reconstruction", "kl", "log_px", "elbo_gap"):
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-5, err_msg=key)


def test_golden_run_resumes_its_warm_up(golden_run):
    config = json.loads((golden_run / "run.json").read_text())
    config["epochs"] = 3
    (golden_run / "run.json").write_text(json.dumps(config))
    cli.main(["train", "--output", str(golden_run), "--resume", "--quiet"])
    history = (golden_run / "history.csv").read_text().splitlines()
    assert len(history) == 1 + 3
    last = keras.saving.load_model(golden_run / "last.keras")
    steps_per_epoch = int(np.ceil(1437 / 64))  # digits: 1,797 examples, 20 % held out
    # 0.1.0 set the warm-up over 4 epochs from step 0; β is set before each step
    # from the iterations done, so after 3 epochs it is (3 · 23 − 1) / (4 · 23).
    assert float(last.beta.numpy()) == pytest.approx(
        (3 * steps_per_epoch - 1) / (4 * steps_per_epoch), abs=1e-6)
    assert int(last.optimizer.iterations.numpy()) == 3 * steps_per_epoch
