"""tfvae.data: built-in digits, TFDS by name (mocked: no downloads), user files, pipelines."""

import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image
from sklearn import datasets as sk_datasets

import tfvae
from tfvae import cli
from tfvae import data

from helpers import invalid
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
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'.*mnist.*fashion_mnist.*cifar10"):
        data.load("imagenet")


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
    assert x_train.shape == (8, 6, 7, 1) and len(x_val) == 2
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


def test_uint8_intensities_are_still_scaled(tmp_path):
    np.savez(tmp_path / "g.npz", x=np.full((5, 2, 2), 255, "uint8"))
    (x_train, _), _ = data.load(str(tmp_path / "g.npz"))
    assert x_train.max() == 1.0
