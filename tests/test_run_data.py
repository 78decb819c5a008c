"""tfvae.run_data: runs on streamed datasets end to end (prepared records, image folders),
and the checks a streamed run makes before its output is touched."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from tfvae import cli
from tfvae import data
from tfvae import records
from tfvae import run_data
from tfvae import runs
from tfvae import sources

from helpers import raises

TINY = ["--epochs", "2", "--latent-dim", "2", "--hidden-units", "16", "--eval-samples", "3",
        "--batch-size", "64", "--quiet", "--no-tensorboard"]


def _images(root, count, sizes=((8, 8),), classes=("a", "b"), seed=0):
    rng = np.random.default_rng(seed)
    for i in range(count):
        folder = os.path.join(root, classes[i % len(classes)])
        os.makedirs(folder, exist_ok=True)
        size = sizes[i % len(sizes)]
        Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8)).save(
            os.path.join(folder, f"{i:04d}.png"))
    return str(root)


def test_a_split_too_small_is_refused_before_the_output_is_touched(tmp_path):
    x = np.zeros((3, 2, 2), np.uint8)
    records.write_splits({"train": sources.ArraySource(x[:1]),
                          "validation": sources.ArraySource(x[1:])}, str(tmp_path / "r"))
    config = runs.RunConfig(dataset=str(tmp_path / "r"))
    with raises("`dataset`", "train split", "1 examples", "at least 2"):
        run_data.open_sources(config)
    with raises("`dataset`", "train split", "at least 2"):
        runs.train(config, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run")


def test_a_multi_worker_run_needs_a_shard_per_worker(tmp_path):
    x = np.zeros((12, 2), np.uint8)
    records.write_splits({"train": sources.ArraySource(x[:8]),
                          "validation": sources.ArraySource(x[8:])}, str(tmp_path / "r"),
                         shards=2)
    config = runs.RunConfig(dataset=str(tmp_path / "r"))
    assert set(run_data.open_sources(config, workers=2)) == {"train", "validation"}
    with raises("`dataset`", "2 shard(s) for 3 workers", "--shards 3"):
        run_data.open_sources(config, workers=3)


def test_conditional_streamed_runs_need_labels(tmp_path):
    records.write_splits({"train": sources.ArraySource(np.zeros((4, 2), np.uint8)),
                          "validation": sources.ArraySource(np.zeros((2, 2), np.uint8))},
                         str(tmp_path / "r"))
    config = runs.RunConfig(dataset=str(tmp_path / "r"), conditional=True)
    with raises("`conditional`", "labels"):
        run_data.num_classes_of(config, run_data.open_sources(config))


@pytest.mark.slow
def test_prepared_records_train_evaluate_encode_and_score_as_a_stream(tmp_path, capsys):
    records_dir = str(tmp_path / "rec")
    assert cli.main(["prepare-data", "digits", "--output", records_dir, "--shards", "3"]) == 0
    metadata = records.read_metadata(records_dir)
    # The same split as a run on 'digits' itself (data.load's), now in 3 shards each.
    (x_train, _), (x_val, _) = data.load("digits")
    assert metadata["splits"]["train"]["examples"] == len(x_train)
    assert metadata["splits"]["validation"]["examples"] == len(x_val)
    run = str(tmp_path / "run")
    assert cli.main(["train", "--dataset", records_dir, "--output", run, "--conditional"]
                    + TINY) == 0
    metrics = json.load(open(os.path.join(run, "metrics.json")))
    assert metrics["data"]["streamed"] and metrics["num_examples"] == len(x_val)
    assert np.isfinite(metrics["log_px"]) and metrics["log_px"] >= metrics["elbo"] - 1.0
    for command, output in (("encode", "codes.npz"), ("score", "scores.csv")):
        assert cli.main([command, run, "--output", str(tmp_path / output)]) == 0
    codes = np.load(tmp_path / "codes.npz")
    assert codes["mean"].shape == (len(x_val), 2)
    np.testing.assert_array_equal(codes["index"], np.arange(len(x_val)))
    scores = np.genfromtxt(tmp_path / "scores.csv", delimiter=",", names=True)
    assert len(scores) == len(x_val) and np.all(np.isfinite(scores["elbo"]))
    # The held-out ELBO of the streamed evaluation is the mean of the per-example scores
    # (same seeds, same batches of 256).
    assert cli.main(["evaluate", run, "--num-samples", "3", "--output",
                     str(tmp_path / "ev.json")]) == 0
    evaluation = json.load(open(tmp_path / "ev.json"))
    np.testing.assert_allclose(evaluation["elbo"], scores["elbo"].mean(), rtol=1e-5)


@pytest.mark.slow
def test_a_folder_of_mixed_sizes_trains_with_image_size_and_skips_a_corrupt_file(tmp_path):
    root = _images(tmp_path / "imgs", 60, sizes=((8, 8), (12, 9), (10, 16)))
    with open(os.path.join(root, "a", "0002.png"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n but then nothing")
    run = str(tmp_path / "run")
    args = ["train", "--dataset", root, "--output", run, "--image-size", "6,6"] + TINY
    assert cli.main(args + ["--skip-corrupt"]) == 0
    metrics = json.load(open(os.path.join(run, "metrics.json")))
    skipped = metrics["skipped_examples"]
    # The corrupt file is in exactly one split: the hash split of its key says which.
    validation = sources.hash_split(["a/0002.png"], 0.2, 0).numpy()[0]
    assert skipped == {"train": 0 if validation else 1, "validation": 1 if validation else 0}
    splits = data.source_splits(root, image_size=(6, 6))
    assert metrics["num_examples"] == splits["validation"].size - skipped["validation"]
    # Without --skip-corrupt the run stops with one line naming the file, and the new run
    # directory is not left half-written.
    assert cli.main(args[:4] + [str(tmp_path / "run2")] + args[5:]) == 2
    assert not os.path.exists(tmp_path / "run2")
