"""tfvae.data: built-in digits, TFDS by name (mocked: no downloads), user files, pipelines."""

import json
import math
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image
from sklearn import datasets as sk_datasets

import tfvae
from tfvae import cli
from tfvae import data
from tfvae import disentanglement
from tfvae import shapes
from tfvae import sources

from helpers import invalid, raises
from helpers import splits_npz


def test_digits_are_the_real_sklearn_digits_scaled_with_a_fixed_split():
    (x_train, y_train), (x_val, y_val) = data.load_digits()
    reference = sk_datasets.load_digits()
    assert x_train.shape == (1438, 8, 8, 1) and x_val.shape == (359, 8, 8, 1)
    assert x_train.dtype == np.float32 and x_train.min() == 0.0 and x_train.max() == 1.0
    # Same multiset of images and labels as scikit-learn's, pixel values / 16.
    ours = np.concatenate([x_train, x_val]).reshape(-1, 64) * 16
    np.testing.assert_array_equal(np.sort(ours.sum(1)), np.sort(reference.data.sum(1)))
    np.testing.assert_array_equal(np.bincount(np.concatenate([y_train, y_val])),
                                  np.bincount(reference.target))
    again = data.load_digits()
    np.testing.assert_array_equal(again[1][0], x_val)
    assert not np.array_equal(data.load_digits(seed=1)[1][0], x_val)


@pytest.mark.parametrize("name, shape, labelled", [
    ("mnist", (28, 28, 1), True),
    ("fashion_mnist", (28, 28, 1), True),
    ("binarized_mnist", (28, 28, 1), False),
    ("cifar10", (32, 32, 3), True),
])
def test_tfds_loaders_on_mock_data(name, shape, labelled):
    with tfds.testing.mock_data(num_examples=12):
        (x_train, y_train), (x_val, y_val) = data.load_tfds(name)
    assert x_train.shape == (12,) + shape and x_val.shape == (12,) + shape
    assert x_train.dtype == np.float32
    assert 0.0 <= x_train.min() and x_train.max() <= 1.0
    if name == "binarized_mnist":
        assert set(np.unique(x_train)) <= {0.0, 1.0}
    else:
        # 8-bit values scaled by 1/255: multiplying back gives integers.
        np.testing.assert_allclose(x_train * 255, np.round(x_train * 255), atol=1e-3)
    assert (y_train is not None) == labelled


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(ValueError,
                       match="unknown dataset 'imagenet'.*shapes.*mnist.*fashion_mnist.*cifar10"):
        data.load("imagenet")


def test_shapes_is_built_in_with_1d_labels_and_its_factors_row_for_row():
    (x_train, y_train), (x_val, y_val) = data.load("shapes")
    n = int(np.prod(shapes.FACTOR_SIZES))
    assert x_val.shape == (round(0.2 * n), 32, 32, 1) and len(x_train) == n - len(x_val)
    assert x_train.dtype == np.float32 and set(np.unique(x_train)) == {0.0, 1.0}
    assert y_train.dtype == np.int64 and y_train.shape == (len(x_train),)
    by_split = {"train": (x_train, y_train), "validation": (x_val, y_val)}
    rows = []
    for split, (x, y) in by_split.items():
        known = data.load_factors("shapes", split)
        assert known["names"] == shapes.FACTOR_NAMES and known["sizes"] == shapes.FACTOR_SIZES
        factors = known["factors"]
        # Row i of the factors is the image at row i; the label is the shape factor.
        np.testing.assert_array_equal(shapes.render(factors), x)
        np.testing.assert_array_equal(y, factors[:, 0])
        rows.append(factors)
    # Together the two splits are the product set, each combination once.
    np.testing.assert_array_equal(np.unique(np.concatenate(rows), axis=0), shapes.all_factors())
    np.testing.assert_array_equal(data.load_split("shapes", "validation")[0], x_val)
    # Another seed, another split; the factors follow it.
    other = data.load_factors("shapes", "validation", seed=1)["factors"]
    assert not np.array_equal(other, rows[1])
    np.testing.assert_array_equal(other[:, 0], data.load("shapes", seed=1)[1][1])


@pytest.mark.slow
def test_cli_trains_on_shapes_and_its_codes_line_up_with_the_factors(shapes_tcvae_run,
                                                                       tmp_path):
    output = shapes_tcvae_run  # conftest.py: a `tfvae train --dataset shapes` run
    config, model = tfvae.runs.load_run(output)
    assert model.event_shape == (32, 32, 1) and config.dataset == "shapes"
    # The wiring `tfvae evaluate` can use: the held-out split's posterior means, and
    # the factors of the same split, row for row.
    x, y = tfvae.runs.held_out(config)
    known = data.load_factors(config.dataset, "validation", seed=config.seed)
    np.testing.assert_array_equal(y, known["factors"][:, 0])
    codes = tfvae.evaluation.encode_dataset(model, x)["mean"]
    result = disentanglement.mig(codes, known["factors"])
    assert result.mutual_information.shape == (2, 5) and 0 <= result.score <= 1
    # ... and what train and evaluate report: the MIG of those codes, per factor too.
    with open(os.path.join(output, "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["mig"] == pytest.approx(result.score, abs=1e-6)
    for name, gap in zip(known["names"], result.gaps):
        assert metrics[f"mig_{name}"] == pytest.approx(gap, abs=1e-6)
    assert cli.main(["evaluate", output, "--num-samples", "2", "--output",
                     str(tmp_path / "e.json")]) == 0
    with open(tmp_path / "e.json") as f:
        assert json.load(f)["mig"] == pytest.approx(result.score, abs=1e-6)


def test_only_shapes_has_known_factors_and_no_test_split():
    assert data.load_factors("digits") is None
    assert data.load_factors("mnist", "train") is None
    with invalid("split", "test", "no test split"):
        data.load_factors("shapes", "test")
    with invalid("split", "valid"):
        data.load_factors("shapes", "valid")
    with raises("`split`", "has no test split"):
        data.load_split("shapes", "test")


def test_prepare_for_each_likelihood():
    x = np.random.default_rng(0).uniform(size=(50, 4, 4, 1)).astype("float32")
    np.testing.assert_array_equal(data.prepare(x, "bernoulli"), x)
    levels = data.prepare(x, "categorical")
    np.testing.assert_array_equal(levels, np.round(x * 255))
    static = data.prepare(x, "bernoulli", "static", seed=3)
    assert set(np.unique(static)) <= {0.0, 1.0}
    np.testing.assert_array_equal(static, data.prepare(x, "bernoulli", "static", seed=3))
    # A Bernoulli draw: the mean of x_bin - x is ~0 within its standard error.
    big = np.full((200_000,), 0.3, "float32")
    assert abs(data.prepare(big, "bernoulli", "static").mean() - 0.3) < 5 * np.sqrt(0.21 / 2e5)
    with pytest.raises(ValueError, match="binarize"):
        data.prepare(x, "discretized_logistic", "static")
    with pytest.raises(ValueError, match="binarize"):
        data.prepare(x, "bernoulli", "sometimes")


def test_pipeline_batches_shuffles_and_binarises_dynamically():
    x = np.linspace(0, 1, 40, dtype="float32").reshape(40, 1)
    plain = data.make_dataset(x, 16, shuffle=False)
    batches = [b.numpy() for b in plain]
    assert [len(b) for b in batches] == [16, 16, 8]
    np.testing.assert_array_equal(np.concatenate(batches), x)
    shuffled = np.concatenate([b.numpy() for b in data.make_dataset(x, 16, seed=1)])
    assert not np.array_equal(shuffled, x)
    np.testing.assert_array_equal(np.sort(shuffled, axis=0), x)
    dynamic = data.make_dataset(np.full((4000, 1), 0.25, "float32"), 1000, dynamic_binarize=True)
    epoch1 = np.concatenate([b.numpy() for b in dynamic])
    epoch2 = np.concatenate([b.numpy() for b in dynamic])
    assert set(np.unique(epoch1)) <= {0.0, 1.0}
    assert abs(epoch1.mean() - 0.25) < 5 * np.sqrt(0.25 * 0.75 / 4000)
    assert not np.array_equal(epoch1, epoch2)  # a fresh draw every epoch


def test_array_files(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, size=(30, 5, 4), dtype=np.uint8)
    y = np.arange(30)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    (x_train, y_train), (x_val, y_val) = data.load(str(tmp_path / "d.npz"))
    assert x_train.shape == (24, 5, 4, 1) and x_val.shape == (6, 5, 4, 1)
    both = np.concatenate([x_train, x_val])[..., 0]
    order = np.concatenate([y_train, y_val])
    np.testing.assert_allclose(both, x[order] / 255.0, rtol=1e-6)
    np.save(tmp_path / "v.npy", np.random.default_rng(1).normal(size=(10, 3)).astype("float32"))
    (x_train, y_train), _ = data.load(str(tmp_path / "v.npy"))
    assert x_train.shape == (8, 3) and y_train is None
    np.savez(tmp_path / "bad.npz", images=x)
    with pytest.raises(ValueError, match="neither an array named 'x' nor predefined splits"):
        data.load(str(tmp_path / "bad.npz"))
    with pytest.raises(ValueError, match="no such file"):
        data.load(str(tmp_path / "missing.npz"))


def test_image_folder_with_class_subfolders(tmp_path):
    rng = np.random.default_rng(0)
    for label in ("cats", "dogs"):
        (tmp_path / label).mkdir()
        for i in range(5):
            Image.fromarray(rng.integers(0, 256, (6, 7), dtype=np.uint8)).save(tmp_path / label / f"{i}.png")
    (x_train, y_train), (x_val, y_val) = data.load(str(tmp_path))
    # The split is the stable hash of each file's relative path (as when streamed).
    keys = [f"{label}/{i}.png" for label in ("cats", "dogs") for i in range(5)]
    validation = sources.hash_split(keys, 0.2, 0).numpy()
    assert x_train.shape == (10 - validation.sum(), 6, 7, 1) and len(x_val) == validation.sum()
    assert sorted(np.concatenate([y_train, y_val]).tolist()) == [0] * 5 + [1] * 5
    first = np.asarray(Image.open(tmp_path / "cats" / "0.png"), "float32") / 255
    everything = np.concatenate([x_train, x_val])[..., 0]
    assert any(np.array_equal(first, image) for image in everything)
    Image.fromarray(rng.integers(0, 256, (3, 3), dtype=np.uint8)).save(tmp_path / "dogs" / "odd.png")
    with pytest.raises(ValueError, match="one size"):
        data.load(str(tmp_path))


def test_data_that_does_not_suit_the_likelihood_is_refused(tmp_path, capsys):
    np.save(tmp_path / "wide.npy", np.linspace(-2, 2, 200, dtype="float32").reshape(20, 10))
    code = cli.main(["train", "--dataset", str(tmp_path / "wide.npy"), "--output",
                     str(tmp_path / "run"), "--epochs", "1", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "BernoulliLikelihood expects values in [0.0, 1.0]" in err


@pytest.mark.slow
def test_cli_trains_on_mocked_tfds_with_dynamic_binarisation(tmp_path):
    with tfds.testing.mock_data(num_examples=24):
        code = cli.main(["train", "--dataset", "mnist", "--binarize", "dynamic", "--epochs", "1",
                         "--latent-dim", "2", "--hidden-units", "8", "--eval-samples", "2",
                         "--batch-size", "8", "--output", str(tmp_path / "mnist"), "--quiet"])
    assert code == 0
    config, model = tfvae.runs.load_run(str(tmp_path / "mnist"))
    assert model.event_shape == (28, 28, 1) and config.binarize == "dynamic"
    # TFDS is streamed through tf.data (no copy of the split in memory).
    metrics = json.loads((tmp_path / "mnist" / "metrics.json").read_text())
    assert metrics["data"]["streamed"] and metrics["num_examples"] == 24


@pytest.mark.parametrize(
    "validation_fraction", [1.5, 0, 1, 1.0, -0.1, math.nan, True, None, "abc", "0.5"]
)
def test_load_digits_bad_validation_fraction(validation_fraction):
    with invalid("validation_fraction", validation_fraction, "(0, 1)"):
        tfvae.data.load_digits(validation_fraction=validation_fraction)


@pytest.mark.parametrize("seed", [-1, 2.5, None, "abc"])
def test_load_digits_bad_seed(seed):
    with invalid("seed", seed):
        tfvae.data.load_digits(seed=seed)


def test_load_digits_validation_fraction():
    (x_train, _), (x_val, _) = tfvae.data.load_digits(validation_fraction=0.5)
    assert abs(len(x_train) - len(x_val)) <= 1


# ---------------------------------------------------------------------------
# Datasets with their own splits (.npz x_train / x_valid / x_test), load_split.


@pytest.mark.parametrize("valid_key", ["x_valid", "x_val", "x_validation"])
def test_npz_with_splits_is_used_as_given(tmp_path, valid_key):
    arrays = splits_npz(tmp_path / "d.npz", valid_key)
    (x_train, y_train), (x_val, y_val) = data.load(str(tmp_path / "d.npz"))
    # uint8 0/1 pixels stay binary; the given splits are kept whole and in order.
    np.testing.assert_array_equal(x_train[..., 0], arrays["x_train"])
    np.testing.assert_array_equal(x_val[..., 0], arrays[valid_key])
    np.testing.assert_array_equal(y_val, arrays["y" + valid_key[1:]])
    x_test, y_test = data.load_split(str(tmp_path / "d.npz"), "test")
    np.testing.assert_array_equal(x_test[..., 0], arrays["x_test"])
    np.testing.assert_array_equal(y_test, arrays["y_test"])


def test_npz_train_only_is_split_at_random_and_test_is_refused(tmp_path):
    splits_npz(tmp_path / "d.npz", valid_key="x_none", test=False)
    (x_train, _), (x_val, _) = data.load(str(tmp_path / "d.npz"), validation_fraction=0.25)
    assert (len(x_train), len(x_val)) == (30, 10)
    train, val = data.load_split(str(tmp_path / "d.npz"), "train"), data.load_split(
        str(tmp_path / "d.npz"), "validation")
    assert len(train[0]) + len(val[0]) == 40
    with pytest.raises(ValueError, match="has no test split"):
        data.load_split(str(tmp_path / "d.npz"), "test")
    with pytest.raises(ValueError, match="split"):
        data.load_split(str(tmp_path / "d.npz"), "valid")


@pytest.mark.parametrize("key, split", [("x_test", "test"), ("x_valid", "validation"),
                                        ("x_validation", "validation")])
def test_npz_holding_one_split_serves_it_whatever_other_splits_it_lacks(tmp_path, key, split):
    # 0.2.0 refused a file of x_test alone: "holds neither an array named 'x' nor
    # predefined splits" (issue 21, item 8).
    path = str(tmp_path / "one.npz")
    x = (np.random.default_rng(0).uniform(size=(7, 4, 4)) > 0.5).astype("uint8")
    labels = np.arange(7) % 3
    np.savez(path, **{key: x, "y" + key[1:]: labels})
    got_x, got_y = data.load_split(path, split)
    np.testing.assert_array_equal(got_x[..., 0], x)
    np.testing.assert_array_equal(got_y, labels)
    np.testing.assert_array_equal(data.load_split(path, data.ALL)[0][..., 0], x)
    # Any other split, or training, is refused naming the arrays the file holds.
    held = (f"{key!r} (7, 4, 4)", f"'y{key[1:]}' (7,)")
    for other in (s for s in data.SPLITS if s != split):
        with raises("`split`", f"has no {other} split", *held, f"split={other!r}"):
            data.load_split(path, other)
    with raises("`dataset`", "holds no training data", "'x_train'", *held):
        data.load(path)


def test_npz_of_x_and_x_test_splits_x_at_random_and_serves_x_test(tmp_path):
    path = str(tmp_path / "d.npz")
    x, x_test = np.zeros((10, 2, 2), "float32"), np.full((3, 2, 2), 0.5, "float32")
    np.savez(path, x=x, x_test=x_test)
    (x_train, _), (x_val, _) = data.load(path, validation_fraction=0.2)
    assert (len(x_train), len(x_val)) == (8, 2)
    np.testing.assert_array_equal(data.load_split(path, "test")[0][..., 0], x_test)


def test_every_example_of_a_npz_comes_in_the_order_train_validation_test(tmp_path):
    # 0.2.0 gave train, test, validation, against its own docstring.
    arrays = splits_npz(tmp_path / "d.npz")
    x, y = data.load_split(str(tmp_path / "d.npz"), data.ALL)
    order = ("x_train", "x_valid", "x_test")
    np.testing.assert_array_equal(x[..., 0], np.concatenate([arrays[k] for k in order]))
    np.testing.assert_array_equal(y, np.concatenate([arrays["y" + k[1:]] for k in order]))


def test_an_npz_without_any_known_array_lists_what_it_holds(tmp_path):
    np.savez(tmp_path / "d.npz", images=np.zeros((4, 2, 2)))
    with raises("`dataset`", "neither an array named 'x' nor predefined splits",
                "'images' (4, 2, 2)"):
        data.load(str(tmp_path / "d.npz"))


def test_uint8_intensities_are_still_scaled(tmp_path):
    np.savez(tmp_path / "g.npz", x=np.full((5, 2, 2), 255, "uint8"))
    (x_train, _), _ = data.load(str(tmp_path / "g.npz"))
    assert x_train.max() == 1.0


# ---------------------------------------------------------------------------
# Files that are not what they claim to be, and datasets too small to split.


@pytest.mark.parametrize("name", ["junk.npy", "junk.npz"])
def test_random_bytes_are_not_a_numpy_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ValueError, match="not a valid NumPy") as error:
        data.load(str(path))
    assert repr(str(path)) in str(error.value) and "pickle" not in str(error.value)


def test_a_truncated_npz_names_the_file(tmp_path):
    path = tmp_path / "cut.npz"
    np.savez(path, x=np.zeros((50, 4, 4), "uint8"))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="cannot be read as NumPy data") as error:
        data.load(str(path))
    assert repr(str(path)) in str(error.value)


@pytest.mark.parametrize("arrays, array", [
    ({"x_train": np.zeros((10, 2, 2)), "y_train": np.arange(9), "x_valid": np.zeros((4, 2, 2))},
     "'y_train'"),
    ({"x_train": np.zeros((10, 2, 2)), "x_valid": np.zeros((4, 2, 2)), "y_valid": np.arange(5)},
     "'y_valid'"),
    ({"x": np.zeros((10, 2, 2)), "y": np.arange(11)}, "'y'"),
])
def test_labels_of_the_wrong_length_name_the_array(tmp_path, arrays, array):
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(ValueError, match=f"`dataset`.*{array}.*one label per example"):
        data.load(str(tmp_path / "d.npz"))


@pytest.mark.parametrize("key, split", [("x_valid", "validation"), ("x_train", "train"),
                                        ("x_test", "test")])
def test_non_finite_values_name_the_array_and_its_split(tmp_path, key, split):
    arrays = {k: np.full((6, 2, 2), 0.5, "float32") for k in ("x_train", "x_valid", "x_test")}
    arrays[key][3, 1, 0] = np.nan
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(ValueError, match=f"'{key}' \\({split} split\\) holds 1 non-finite"):
        data.load_split(str(tmp_path / "d.npz"), split)


@pytest.mark.parametrize("n", [0, 1])
def test_a_dataset_too_small_to_split_is_refused(tmp_path, n):
    np.savez(tmp_path / "x.npz", x=np.zeros((n, 3, 3), "float32"))
    np.save(tmp_path / "x.npy", np.zeros((n, 3, 3), "float32"))
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(n):
        Image.fromarray(np.zeros((3, 3), np.uint8)).save(folder / f"{i}.png")
    for path in (tmp_path / "x.npz", tmp_path / "x.npy", *([folder] if n else [])):
        with pytest.raises(ValueError, match=f"`dataset`.*holds {n} example.*at least 2"):
            data.load(str(path))
    # Two examples are enough: one to train on, one to validate on.
    np.save(tmp_path / "two.npy", np.zeros((2, 3, 3), "float32"))
    (x_train, _), (x_val, _) = data.load(str(tmp_path / "two.npy"), validation_fraction=0.9)
    assert (len(x_train), len(x_val)) == (1, 1)


def test_an_empty_predefined_split_is_refused(tmp_path):
    np.savez(tmp_path / "d.npz", x_train=np.zeros((5, 2, 2)), x_valid=np.zeros((0, 2, 2)))
    with pytest.raises(ValueError, match="validation split\\) holds 0 example"):
        data.load(str(tmp_path / "d.npz"))


def test_a_text_file_named_png_is_refused_by_name(tmp_path):
    Image.fromarray(np.zeros((3, 3), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "b.png").write_text("not an image")
    with pytest.raises(ValueError, match="`dataset`.*b.png.*not an image file"):
        data.load(str(tmp_path))


@pytest.mark.parametrize("dataset", ["", None, 3])
def test_a_dataset_that_is_not_a_name_or_path_is_refused(dataset):
    with invalid("dataset", dataset):
        data.load(dataset)


# ---------------------------------------------------------------------------
# The TFDS download path, up to the network.


def _block_network(monkeypatch):
    """Every connection attempt (and name lookup) fails as it does on a machine offline."""
    import socket

    def unreachable(*args, **kwargs):
        raise OSError(101, "Network is unreachable (blocked by the test)")

    for target, name in ((socket, "getaddrinfo"), (socket, "create_connection"),
                         (socket.socket, "connect")):
        monkeypatch.setattr(target, name, unreachable)
    # TFDS retries a failed request 10 times with exponential back-off (minutes).
    from tensorflow_datasets.core.download import downloader

    monkeypatch.setattr(downloader, "MAX_RETRIES", 0)


def test_the_download_path_s_imports_are_installed_and_declared():
    import importlib
    import tomllib

    # Imported lazily by TFDS's dataset builder and downloader (tfds.load(download=True)).
    for module in ("importlib_resources", "termcolor", "promise", "etils.epath"):
        importlib.import_module(module)
    with open(os.path.join(os.path.dirname(__file__), os.pardir, "pyproject.toml"), "rb") as f:
        dependencies = tomllib.load(f)["project"]["dependencies"]
    assert any(d.startswith("importlib_resources") for d in dependencies)


def test_an_offline_tfds_download_fails_with_one_line(tmp_path, monkeypatch):
    _block_network(monkeypatch)
    with pytest.raises(ValueError) as error:
        data.load_tfds("mnist", data_dir=str(tmp_path))
    message = str(error.value)
    assert "could not download TFDS dataset 'mnist'" in message and "\n" not in message
    assert "Network is unreachable (blocked by the test)" in message  # it reached the network
    assert message.endswith("pass a local .npz/.npy file or image folder with --dataset.")


def test_the_cli_says_an_offline_download_failed_in_one_line(tmp_path, monkeypatch, capsys):
    _block_network(monkeypatch)
    load = tfds.load
    monkeypatch.setattr(tfds, "load", lambda name, split, data_dir=None:
                        load(name, split=split, data_dir=str(tmp_path / "tfds")))
    code = cli.main(["train", "--dataset", "mnist", "--output", str(tmp_path / "run"),
                     "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("tfvae train: error: ") and "could not download TFDS dataset" in err


@pytest.mark.parametrize("binarize, likelihood, x, expected", [
    ("auto", "bernoulli", [[0.0, 0.5, 1.0]], "static"),   # grey values: a cross-entropy otherwise
    ("auto", "bernoulli", [[0.0, 1.0, 1.0]], "none"),     # already binary
    ("auto", "bernoulli", [[-1.0, 0.5, 2.0]], "none"),    # out of range: the likelihood refuses it
    ("auto", "continuous_bernoulli", [[0.0, 0.5, 1.0]], "none"),
    ("auto", "gaussian", [[0.0, 0.5, 1.0]], "none"),
    ("none", "bernoulli", [[0.0, 0.5, 1.0]], "none"),
    ("dynamic", "bernoulli", [[0.0, 0.5, 1.0]], "dynamic"),
])
def test_auto_binarises_grey_data_for_a_bernoulli_likelihood_only(binarize, likelihood, x,
                                                                   expected):
    assert data.resolve_binarize(binarize, likelihood, np.array(x)) == expected
    prepared = data.prepare(np.array(x), likelihood, binarize, seed=0)
    if expected == "static":
        assert set(np.unique(prepared)) <= {0.0, 1.0}
    else:
        np.testing.assert_array_equal(prepared, np.asarray(x, "float32"))


def test_binarising_needs_data_in_the_unit_interval():
    with raises("`binarize`", "binarize='static'", "[-1.0, 2.0]"):
        data.prepare(np.array([[-1.0, 2.0]]), "bernoulli", "static")


def test_string_labels_are_encoded_and_fractional_or_object_labels_refused(tmp_path):
    # 0.2.0 passed string labels on, and the report failed after training (issue 20 finding 9).
    x = np.random.default_rng(0).uniform(size=(20, 3, 3)).astype("float32")
    np.savez(tmp_path / "s.npz", x=x, y=np.array(["cat", "dog"] * 10))
    (_, y_train), (_, y_val) = data.load(str(tmp_path / "s.npz"))
    assert y_train.dtype == np.int64 and set(np.concatenate([y_train, y_val])) == {0, 1}
    np.savez(tmp_path / "w.npz", x=x, y=np.arange(20.0))
    assert data.load(str(tmp_path / "w.npz"))[0][1].dtype == np.int64
    np.savez(tmp_path / "f.npz", x=x, y=np.linspace(0, 1, 20))
    with raises("`dataset`", "'y'", "one class label per example", "float64"):
        data.load(str(tmp_path / "f.npz"))
    np.savez(tmp_path / "o.npz", x=x, y=np.zeros((20, 2)))
    with raises("`dataset`", "'y'", "(20, 2)"):
        data.load(str(tmp_path / "o.npz"))


def test_a_fifo_named_like_data_is_refused_instead_of_hanging(tmp_path):
    # 0.2.0 blocked forever reading a FIFO named f.npz (issue 20 finding 13).
    os.mkfifo(tmp_path / "f.npz")
    with raises("`dataset`", "f.npz", "not a regular file"):
        data.load(str(tmp_path / "f.npz"))
    run = tmp_path / "run"
    run.mkdir()
    os.mkfifo(run / "run.json")
    with raises("run.json", "not a regular file"):
        tfvae.runs.read_config(str(run / "run.json"))
    # In an image folder a FIFO named x.png is not an image: left out.
    Image.fromarray(np.zeros((3, 3), np.uint8)).save(tmp_path / "a.png")
    os.mkfifo(tmp_path / "x.png")
    assert sources.ImageFolderSource(str(tmp_path)).size == 1


def test_array_headers_that_declare_more_than_the_file_holds_are_refused_before_loading(
        tmp_path):
    # 0.2.0 tried to allocate what a 200-byte header declared (23 TiB), and an .npz member
    # that is not a .npy raised AttributeError (issue 20 finding 12).
    import zipfile

    np.save(tmp_path / "small.npy", np.zeros((4, 3), np.uint8))
    crafted = (tmp_path / "small.npy").read_bytes().replace(b"(4, 3)", b"(800000, 8000000)")
    (tmp_path / "bomb.npy").write_bytes(crafted)
    with raises("`dataset`", "bomb.npy", "(800000, 8000000)", "6,400,000,000,000 bytes"):
        data.load(str(tmp_path / "bomb.npy"))
    for name, member in (("bomb.npz", crafted), ("text.npz", b"hello, not numpy")):
        with zipfile.ZipFile(tmp_path / name, "w") as archive:
            archive.writestr("x.npy", member)
        with raises("`dataset`", name, "'x.npy'"):
            data.load(str(tmp_path / name))


def test_values_beyond_float32_and_complex_arrays_are_named_for_what_they_are(tmp_path):
    # 0.2.0 said "holds 2560 NaN or inf" for finite float64 values of 1e300, and dropped
    # the imaginary part of complex data with only a warning (issue 20 findings 14, 16).
    np.save(tmp_path / "big.npy", np.full((4, 2), 1e300))
    with raises("`dataset`", "1e+300", "beyond float32"):
        data.load(str(tmp_path / "big.npy"))
    np.save(tmp_path / "c.npy", np.ones((4, 2), np.complex64))
    with raises("`dataset`", "complex numbers"):
        data.load(str(tmp_path / "c.npy"))
