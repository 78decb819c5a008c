"""tfvae.sources and tfvae.records: streamed image folders, TFRecord shards, TFDS splits,
hash splits, per-example static binarisation, unreadable files (small generated files)."""

import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

import tfvae
from tfvae import data
from tfvae import records
from tfvae import sources

from helpers import invalid, raises


def _png(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8)).save(path)


def _folder(root, sizes, classes=("a", "b"), seed=0):
    """Random greyscale PNGs of the given sizes, dealt to the class sub-folders in turn."""
    rng = np.random.default_rng(seed)
    images = {}
    for i, size in enumerate(sizes):
        key = f"{classes[i % len(classes)]}/{i:03d}.png"
        images[key] = rng.integers(0, 256, size, dtype=np.uint8)
        _png(os.path.join(root, key), images[key])
    return images


def _all(source, batch_size=4, **kwargs):
    batches = list(source.batches(batch_size, **kwargs))
    return {k: np.concatenate([b[k].numpy() for b in batches]) for k in batches[0]}


# --------------------------------------------------------------------------- hash splits


def test_hash_split_is_stable_seeded_and_unmoved_by_appended_examples():
    keys = [f"img/{i}.png" for i in range(20_000)]
    validation = sources.hash_split(keys, 0.2, seed=0).numpy()
    # About the asked fraction (within 5 binomial standard deviations).
    assert abs(validation.mean() - 0.2) < 5 * np.sqrt(0.2 * 0.8 / len(keys))
    np.testing.assert_array_equal(sources.hash_split(keys, 0.2, seed=0).numpy(), validation)
    # Appending examples moves none of the earlier ones between the splits.
    more = sources.hash_split(keys + [f"new/{i}.png" for i in range(500)], 0.2, seed=0).numpy()
    np.testing.assert_array_equal(more[: len(keys)], validation)
    # Another seed is another split (agreement near 0.8² + 0.2² = 0.68, not 1).
    other = sources.hash_split(keys, 0.2, seed=1).numpy()
    assert abs((other == validation).mean() - 0.68) < 0.03
    # The same decision inside a tf.data pipeline as eagerly.
    in_graph = np.concatenate(list(tf.data.Dataset.from_tensor_slices(keys).batch(999).map(
        lambda k: sources.hash_split(k, 0.2, 0)).as_numpy_iterator()))
    np.testing.assert_array_equal(in_graph, validation)


# --------------------------------------------------------------------------- image folders


def test_an_image_folder_streams_labels_keys_and_a_hash_split(tmp_path):
    images = _folder(tmp_path / "imgs", [(6, 5)] * 30)
    splits = data.source_splits(str(tmp_path / "imgs"), validation_fraction=0.3, seed=2)
    train, validation = splits["train"], splits["validation"]
    assert train.size + validation.size == 30 and train.event_shape == (6, 5, 1)
    assert train.labelled and train.num_classes == 2
    keys = sorted(images)
    expected = sources.hash_split(keys, 0.3, 2).numpy()
    got = _all(validation)
    assert sorted(k.decode() for k in got["key"]) == [k for k, v in zip(keys, expected) if v]
    for key, x, y in zip(got["key"], got["x"], got["y"]):
        key = key.decode()
        np.testing.assert_array_equal(x[..., 0], images[key])  # the PNG's pixels, unchanged
        assert y == "ab".index(key[0])


def test_mixed_sizes_need_image_size_and_are_resized_and_center_cropped(tmp_path):
    root = tmp_path / "imgs"
    _folder(root, [(8, 8), (12, 10), (9, 7)], classes=("a",))
    source = sources.ImageFolderSource(str(root))
    assert source.event_shape == (8, 8, 1)  # the first image's
    with raises("`dataset`", "one size", "--image-size", "001.png", "12x10", "8x8"):
        with sources.reading(source):
            _all(source)
    source = sources.ImageFolderSource(str(root), image_size=(4, 4))
    assert source.event_shape == (4, 4, 1)
    assert _all(source)["x"].shape == (3, 4, 4, 1)


def test_resize_and_crop_against_pillow(tmp_path):
    # A 6x12 image scaled to cover 3x3 (to 3x6: aspect kept) and cropped at the center:
    # Pillow's antialiased bilinear resize, then columns 1..3, to within one level.
    image = np.random.default_rng(3).integers(0, 256, (6, 12), dtype=np.uint8)
    _png(str(tmp_path / "f" / "x.png"), image)
    x = _all(sources.ImageFolderSource(str(tmp_path / "f"), image_size=(3, 3)))["x"][0, ..., 0]
    pillow = np.asarray(Image.fromarray(image).resize((6, 3), Image.BILINEAR), np.int16)
    assert np.abs(x.astype(np.int16) - pillow[:, 1:4]).max() <= 1
    # An image already of the asked size is passed through bit for bit.
    same = np.random.default_rng(0).integers(0, 256, (2, 2), dtype=np.uint8)
    _png(str(tmp_path / "g" / "x.png"), same)
    got = _all(sources.ImageFolderSource(str(tmp_path / "g"), image_size=(2, 2)))["x"]
    np.testing.assert_array_equal(got[0, ..., 0], same)


def test_rgb_images_become_greyscale_as_pillow_converts_them(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    _png(str(tmp_path / "f" / "grey.png"), rgb[..., 0])  # first image greyscale: 1 channel
    _png(str(tmp_path / "f" / "rgb.png"), rgb)
    source = sources.ImageFolderSource(str(tmp_path / "f"))
    assert source.event_shape == (5, 6, 1) and not source.labelled
    x = _all(source)["x"]
    pillow = np.asarray(Image.fromarray(rgb).convert("L"), np.int16)
    assert np.abs(x[1, ..., 0].astype(np.int16) - pillow).max() <= 1  # luma weights agree
    assert _all(sources.ImageFolderSource(str(tmp_path / "f"), channels=3))["x"].shape[-1] == 3


def test_predefined_split_folders_are_used_as_given(tmp_path):
    root = tmp_path / "imgs"
    _folder(root / "train", [(4, 4)] * 6, classes=("cat", "dog"))
    _folder(root / "valid", [(4, 4)] * 2, classes=("dog",))
    _folder(root / "test", [(4, 4)] * 3, classes=("cat", "dog"))
    splits = data.source_splits(str(root))
    assert {k: v.size for k, v in splits.items()} == {"train": 6, "validation": 2, "test": 3}
    # Labels index the training split's classes in every split.
    assert set(_all(splits["validation"])["y"]) == {1}


def test_an_unreadable_image_is_named_in_one_line_or_skipped(tmp_path):
    root = tmp_path / "imgs"
    _folder(root, [(4, 4)] * 6, classes=("a",))
    (root / "a" / "003.png").write_bytes(b"not a png at all")
    source = sources.ImageFolderSource(str(root))
    with raises("`dataset`", "003.png", "not an image file", "--skip-corrupt"):
        with sources.reading(source):
            _all(source)
    kept = _all(source, skip_corrupt=True)
    assert sorted(k.decode() for k in kept["key"]) == [f"a/00{i}.png" for i in (0, 1, 2, 4, 5)]


def test_an_empty_folder_and_an_empty_glob_are_one_line_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with raises("`dataset`", "no images"):
        data.source_splits(str(tmp_path / "empty"))
    with raises("`dataset`", "matches no files"):
        data.source_splits(str(tmp_path / "nothing-*.tfrecord"))


# --------------------------------------------------------------------------- records


def _write(tmp_path, x, y=None, shards=3, name="rec"):
    (x_train, y_train), (x_val, y_val) = data._split(x, y, 0.25, 0)
    found = {"train": sources.ArraySource(x_train, y_train),
             "validation": sources.ArraySource(x_val, y_val)}
    output = str(tmp_path / name)
    return records.write_splits(found, output, shards=shards), output, (x_train, y_train)


@pytest.mark.parametrize("dtype", ["uint8", "binary", "float32"])
def test_records_round_trip_values_labels_ids_and_keys(tmp_path, dtype):
    rng = np.random.default_rng(0)
    x = {"uint8": rng.integers(0, 256, (41, 3, 2), dtype=np.uint8),
         "binary": rng.integers(0, 2, (41, 3, 2)).astype(np.uint8),
         "float32": rng.uniform(size=(41, 3, 2)).astype(np.float32)}[dtype]
    y = rng.integers(0, 4, 41)
    metadata, output, (x_train, y_train) = _write(tmp_path, x, y)
    assert metadata["splits"]["train"]["counts"] == [11, 10, 10]  # dealt round-robin
    assert metadata["binary"] == (dtype == "binary") and metadata["num_classes"] == y.max() + 1
    assert metadata["scale"] == (255.0 if dtype == "uint8" else 1.0)
    train = data.source_splits(output)["train"]
    assert train.size == 31 and train.event_shape == (3, 2, 1)
    got = _all(train, batch_size=7)
    order = np.argsort(got["id"])  # interleaved shards: compare by id
    np.testing.assert_array_equal(got["y"][order], y_train)
    # In a pipeline the values are those data.load gives for the same arrays.
    loaded = np.asarray(x_train if dtype != "uint8" else x_train / np.float32(255.0), np.float32)
    streamed = np.concatenate(list(sources.pipeline(train, 8, "gaussian").as_numpy_iterator()))
    np.testing.assert_array_equal(streamed[order].reshape(loaded.shape), loaded)


def test_a_float_array_of_8_bit_levels_is_stored_as_bytes_and_read_back_exactly(tmp_path):
    levels = np.random.default_rng(0).integers(0, 256, (10, 4)).astype(np.float32) / 255.0
    source = sources.ArraySource(levels)
    assert source.dtype == "uint8" and source.scale == 255.0
    back = np.concatenate(list(sources.pipeline(source, 3, "gaussian").as_numpy_iterator()))
    np.testing.assert_array_equal(back, levels)


def test_a_corrupt_shard_is_named_and_a_shard_of_another_format_is_refused(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (40, 4), dtype=np.uint8)
    _, output, _ = _write(tmp_path, x)
    shard = os.path.join(output, records.shard_name("train", 1, 3))
    with open(shard, "r+b") as f:
        f.seek(60)
        f.write(b"\xff" * 8)  # a damaged record (its CRC no longer matches)
    train = data.source_splits(output)["train"]
    with raises("`dataset`", "train-00001-of-00003.tfrecord", "cannot be read"):
        with sources.reading(train):
            _all(train)
    # Records written with other features: the wrong feature spec, named.
    other = str(tmp_path / "other.tfrecord")
    with tf.io.TFRecordWriter(other) as writer:
        writer.write(tf.train.Example(features=tf.train.Features(feature={
            "image": tf.train.Feature(int64_list=tf.train.Int64List(value=[1]))}))
            .SerializeToString())
    with raises("`dataset`", "other.tfrecord"):
        data.source_splits(other)


def test_record_metadata_is_checked(tmp_path):
    x = np.zeros((8, 2), np.uint8)
    _, output, _ = _write(tmp_path, x, shards=2)
    path = os.path.join(output, records.METADATA)
    text = open(path).read()
    open(path, "w").write(text.replace('"version": 2', '"version": 9'))
    with raises("`dataset`", "version 9"):
        data.source_splits(output)
    open(path, "w").write(text)
    os.remove(os.path.join(output, records.shard_name("train", 1, 2)))
    with raises("`dataset`", "missing 1 shard", "train-00001-of-00002.tfrecord"):
        data.source_splits(output)
    with raises("`output`", "exists"):
        records.write_splits({"train": sources.ArraySource(x)}, output)
    with invalid("shards", 0):
        records.write_splits({"train": sources.ArraySource(x)}, str(tmp_path / "new"), shards=0)
    assert not os.path.exists(tmp_path / "new")


@pytest.mark.parametrize("pack", [1, 4, 128])
def test_packs_of_any_size_and_version_1_folders_read_the_same_examples(tmp_path, pack):
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 256, (23, 2, 3), dtype=np.uint8), rng.integers(0, 5, 23)
    output = str(tmp_path / "r")
    records.write_splits({"train": sources.ArraySource(x, y)}, output, shards=2, pack=pack)
    if pack == 1:  # one example per record is version 1's layout: such folders still read
        path = os.path.join(output, records.METADATA)
        text = open(path).read()
        open(path, "w").write(text.replace('"version": 2', '"version": 1'))
    records_per_shard = [sum(1 for _ in tf.data.TFRecordDataset(os.path.join(
        output, records.shard_name("train", i, 2)))) for i in range(2)]
    assert records_per_shard == [-(-12 // pack), -(-11 // pack)]
    train = sources.record_splits(output)["train"]
    got = _all(train, batch_size=5)
    order = np.argsort(got["id"])
    np.testing.assert_array_equal(got["id"][order], np.arange(23))
    np.testing.assert_array_equal(got["x"][order].reshape(x.shape), x)
    np.testing.assert_array_equal(got["y"][order], y)
    # Shard i holds examples i, i + 2, ... in order (what a multi-worker run relies on).
    shard = sources.RecordSource([train.files[1]], (2, 3, 1), "uint8", 255, True)
    np.testing.assert_array_equal(_all(shard, batch_size=4)["id"], np.arange(1, 23, 2))
    with invalid("pack", 0):
        records.write_splits({"train": sources.ArraySource(x)}, str(tmp_path / "n"), pack=0)


def test_shuffled_records_are_every_example_once_mixed_across_packs_and_new_each_epoch(
        tmp_path):
    x = np.arange(600, dtype=np.float32).reshape(600, 1) / 600
    output = str(tmp_path / "r")
    records.write_splits({"train": sources.ArraySource(x)}, output, shards=2, pack=8)
    train = sources.record_splits(output)["train"]
    dataset = train.batches(32, shuffle=True, seed=1)
    epochs = [np.concatenate([b["id"].numpy() for b in dataset]) for _ in range(2)]
    for ids in epochs:
        np.testing.assert_array_equal(np.sort(ids), np.arange(600))
        # Shard i holds ids i, i + 2, ...: its pack j holds its examples 8j .. 8j + 7.
        first = {(i % 2, (i // 2) // 8) for i in ids[:32]}
        assert len(first) >= 16, first  # a batch mixes many packs, not a few runs
    assert not np.array_equal(epochs[0], epochs[1])
    again = np.concatenate([b["id"].numpy() for b in train.batches(32, shuffle=True, seed=1)])
    np.testing.assert_array_equal(again, epochs[0])  # the same seed, the same first epoch


def test_a_record_whose_x_does_not_hold_its_examples_is_named(tmp_path):
    output = str(tmp_path / "r")
    os.makedirs(output)
    path = os.path.join(output, "bad.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:  # 3 ids, 2 examples' bytes
        writer.write(records.serialize(np.zeros((2, 4), np.uint8), [0, 1, 2], ["a", "b", "c"]))
    source = sources.RecordSource([path], (4,), "uint8", 255, False)
    with raises("`dataset`", "bad.tfrecord", "wrong number of bytes"):
        with sources.reading(source):
            _all(source)


def test_unsplit_shards_are_split_by_the_hash_of_their_keys(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (60, 2), dtype=np.uint8)
    output = str(tmp_path / "one")
    records.write_splits({"train": sources.ArraySource(x)}, output, shards=2)
    splits = data.source_splits(output, validation_fraction=0.25, seed=4)
    train, validation = (set(_all(splits[s])["key"]) for s in ("train", "validation"))
    keys = [str(i).encode() for i in range(60)]
    expected = sources.hash_split([k.decode() for k in keys], 0.25, 4).numpy()
    assert validation == {k for k, v in zip(keys, expected) if v}
    assert train == {k for k, v in zip(keys, expected) if not v}


# --------------------------------------------------------------------------- pipelines


def test_static_binarisation_is_fixed_per_example_and_unbiased():
    x = np.full((400, 30), 0.3, np.float32)
    x[::2] = 0.7
    source = sources.ArraySource(x)
    first = np.concatenate(list(sources.pipeline(source, 64, "bernoulli", "static", seed=5,
                                                 shuffle=True).as_numpy_iterator()))
    # Whatever the order and batching, an example gets the same draw: compare sorted by id.
    by_id = {}
    for batch in sources.pipeline(source, 50, "bernoulli", "static", seed=5).as_numpy_iterator():
        for row in batch:
            by_id[len(by_id)] = row
    ordered = np.stack([by_id[i] for i in range(400)])
    assert set(np.unique(first)) <= {0.0, 1.0}
    np.testing.assert_array_equal(np.sort(first.sum(1)), np.sort(ordered.sum(1)))
    # Different examples get different draws; each pixel is Bernoulli(x).
    assert len({row.tobytes() for row in ordered[1::2]}) > 150
    for value, rows in ((0.7, ordered[::2]), (0.3, ordered[1::2])):
        assert abs(rows.mean() - value) < 5 * np.sqrt(value * (1 - value) / rows.size)
    # Another seed is another draw.
    other = np.concatenate(list(sources.pipeline(source, 50, "bernoulli", "static",
                                                 seed=6).as_numpy_iterator()))
    assert not np.array_equal(other, ordered)


def test_levels_and_auto_binarisation_follow_data_prepare():
    x = np.random.default_rng(0).integers(0, 256, (12, 4), dtype=np.uint8)
    source = sources.ArraySource(x)
    levels = np.concatenate(list(sources.pipeline(source, 5, "categorical").as_numpy_iterator()))
    np.testing.assert_array_equal(levels, data.prepare(x / np.float32(255), "categorical"))
    assert sources.resolve_binarize("auto", "bernoulli", source) == "static"
    assert sources.resolve_binarize("auto", "bernoulli", sources.ArraySource(x > 127)) == "none"
    assert sources.resolve_binarize("auto", "gaussian", source) == "none"
    # As for arrays, level likelihoods refuse a binarisation (streams used to ignore it).
    for mode in ("static", "dynamic"):
        with pytest.raises(ValueError, match="'categorical' likelihood models 8-bit levels"):
            sources.resolve_binarize(mode, "categorical", source)
        with pytest.raises(ValueError, match="'categorical' likelihood models 8-bit levels"):
            sources.pipeline(source, 5, "categorical", mode)


def test_streamed_and_in_memory_training_give_the_same_model(tmp_path):
    x = np.random.default_rng(0).integers(0, 2, (48, 3, 3)).astype(np.uint8)
    records.write_splits({"train": sources.ArraySource(x[:40]),
                          "validation": sources.ArraySource(x[40:])}, str(tmp_path / "r"))
    source = data.source_splits(str(tmp_path / "r"))["train"]
    in_memory = data.make_dataset(x[:40, ..., None].astype(np.float32), 8, shuffle=False)
    streamed = sources.pipeline(source, 8, "bernoulli")
    weights = []
    for dataset in (in_memory, streamed):
        model = tfvae.build_vae((3, 3, 1), 2, hidden_units=(8,), seed=0)
        model.compile(optimizer="adam")
        model.fit(dataset, epochs=3, verbose=0)
        weights.append(model.get_weights())
    for a, b in zip(*weights):
        np.testing.assert_array_equal(a, b)


def test_tfds_splits_stream_without_a_copy_in_memory():
    with tfds.testing.mock_data(num_examples=10):
        splits = data.source_splits("mnist")
        got = _all(splits["train"], batch_size=4)
        assert got["x"].shape == (10, 28, 28, 1) and got["x"].dtype == np.uint8
        assert got["y"].dtype == np.int64 and len(set(got["key"])) == 10
        assert splits["validation"].name == "mnist[test]"
        binary = data.source_splits("binarized_mnist")["train"]
        assert binary.scale == 1.0 and not binary.labelled


# --------------------------------------------------------------------------- large .npy files


@pytest.mark.parametrize("dtype", ["uint8", "float64"])
def test_a_large_npy_file_is_streamed_in_chunks_with_a_hash_split(tmp_path, monkeypatch, dtype):
    rng = np.random.default_rng(0)
    x = (rng.integers(0, 256, (300, 4, 5)).astype(dtype) if dtype == "uint8"
         else rng.uniform(size=(300, 4, 5)))
    path = str(tmp_path / "big.npy")
    np.save(path, x)
    assert not data.is_streamed(path)  # under the threshold: loaded into memory
    monkeypatch.setattr(data, "NPY_STREAM_BYTES", 1000)
    assert data.is_streamed(path)
    splits = data.source_splits(path, validation_fraction=0.3, seed=1)
    for split in splits.values():
        split.chunk_rows = 64  # several chunks
    expected = sources.hash_split([str(i) for i in range(300)], 0.3, 1).numpy()
    for name, side in (("validation", True), ("train", False)):
        got = _all(splits[name], batch_size=50)
        rows = np.flatnonzero(expected == side)
        np.testing.assert_array_equal(got["id"], rows)  # in file order
        np.testing.assert_array_equal(got["x"][..., 0],
                                      x[rows] if dtype == "uint8" else x[rows].astype(np.float32))
    # Shuffled: the same rows, in another order.
    shuffled = _all(splits["train"], batch_size=50, shuffle=True, seed=3)["id"]
    assert sorted(shuffled) == list(np.flatnonzero(~expected)) and not np.all(
        np.diff(shuffled) > 0)
    # Prepared as in memory: 8-bit intensities / 255, floats as float32.
    streamed = np.concatenate(list(sources.pipeline(splits["train"], 64,
                                                    "gaussian").as_numpy_iterator()))
    rows = np.flatnonzero(~expected)
    # What data.load_array_file makes of the same rows (uint8 / 255, or float32).
    loaded = (x[rows].astype(np.float32) / np.float32(255.0) if dtype == "uint8"
              else x[rows].astype(np.float32))
    np.testing.assert_array_equal(streamed[..., 0], loaded)


def test_a_streamed_npy_with_nan_or_a_truncated_body_is_refused(tmp_path):
    x = np.ones((10, 3), np.float32)
    x[7, 1] = np.nan
    np.save(tmp_path / "nan.npy", x)
    with raises("`dataset`", "nan.npy", "NaN"):
        sources.NpySource(str(tmp_path / "nan.npy"))
    np.save(tmp_path / "cut.npy", np.ones((10, 3), np.uint8))
    with open(tmp_path / "cut.npy", "r+b") as f:
        f.truncate(os.path.getsize(tmp_path / "cut.npy") - 5)
    with raises("`dataset`", "cut.npy", "truncated"):
        sources.NpySource(str(tmp_path / "cut.npy"))


def test_16_bit_images_are_scaled_by_their_range(tmp_path):
    # 0.2.0 read 16-bit PNGs as all-255 images (issue 20 finding 14).
    image = (np.arange(48).reshape(6, 8) * 1300).astype(np.uint16)
    os.makedirs(tmp_path / "f")
    Image.fromarray(image).save(tmp_path / "f" / "deep.png")
    source = sources.ImageFolderSource(str(tmp_path / "f"))
    assert source.event_shape == (6, 8, 1)
    x = _all(source)["x"][0, ..., 0]
    np.testing.assert_array_equal(x, image >> 8)  # 0..65535 → 0..255
    assert len(np.unique(x)) > 40
