"""tfvae's record format: examples as TFRecord shards, read fast and sharded by file.

A prepared dataset is a folder (local, or a remote path that `tf.io.gfile`
reads, e.g. `gs://...`)::

    tfvae_records.json               what the shards hold (see `write_metadata`)
    train-00000-of-00004.tfrecord    one split's shards ...
    validation-00000-of-00001.tfrecord

Every record is a `tf.train.Example` with the features

| feature | type | meaning |
| --- | --- | --- |
| `x` | bytes | the example's values, C order, in `dtype` (`uint8` or `float32`, little-endian) |
| `y` | int64 (0 or 1 value) | its label (class index), absent in an unlabelled dataset |
| `id` | int64 | its id: the seed of its static binarisation draw (`random.example_uniform`) |
| `key` | bytes | its key: where it came from (a relative file path, a row index); it decides hash splits |

and `tfvae_records.json` says `shape` (one example's shape, `[H, W, C]`),
`dtype`, `scale` (the stored values divided by `scale` lie in [0, 1]: 255 for
8-bit images, 1 otherwise), `labelled`, `num_classes`, `binary` (every value
is 0 or `scale`), and per split its `files` and `examples`. A glob of shards
without the JSON file is read too; the first record then gives the shape,
and `dtype` / `scale` must be passed.
"""

import json
import logging
import os

import numpy as np
import tensorflow as tf

logger = logging.getLogger(__name__)

FORMAT = "tfvae-records"
VERSION = 1
METADATA = "tfvae_records.json"
EXTENSION = ".tfrecord"
DTYPES = ("uint8", "float32")


def shard_name(split, index, count):
    """`train-00003-of-00008.tfrecord`."""
    return f"{split}-{index:05d}-of-{count:05d}{EXTENSION}"


def serialize(x, id_, key, y=None):
    """One example as a serialized `tf.train.Example` (see the module docstring).

    Args:
      x: a numpy array of one example, `uint8` or `float32`.
      id_: its int id.
      key: its key (str).
      y: its integer label, or None.

    Returns:
      bytes.
    """
    feature = {
        "x": tf.train.Feature(bytes_list=tf.train.BytesList(
            value=[np.ascontiguousarray(x).astype(x.dtype.newbyteorder("<")).tobytes()])),
        "id": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(id_)])),
        "key": tf.train.Feature(bytes_list=tf.train.BytesList(value=[key.encode()])),
    }
    if y is not None:
        feature["y"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(y)]))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def parse_batch(serialized, shape, dtype, labelled):
    """Parses a batch of serialized records (one `parse_example` call per batch: fast).

    Args:
      serialized: a string tensor `[batch]`.
      shape: one example's shape.
      dtype: `"uint8"` or `"float32"`.
      labelled: whether the records have labels `y`.

    Returns:
      A dict of tensors: `x` `[batch] + shape` in `dtype`, `id` int64 `[batch]`,
      `key` string `[batch]`, and `y` int64 `[batch]` if `labelled`.
    """
    spec = {"x": tf.io.FixedLenFeature([], tf.string),
            "id": tf.io.FixedLenFeature([], tf.int64),
            "key": tf.io.FixedLenFeature([], tf.string)}
    if labelled:
        spec["y"] = tf.io.FixedLenFeature([], tf.int64)
    parsed = tf.io.parse_example(serialized, spec)
    size = int(np.prod(shape))
    x = tf.io.decode_raw(parsed["x"], tf.as_dtype(dtype), little_endian=True,
                         fixed_length=size * np.dtype(dtype).itemsize)
    parsed["x"] = tf.reshape(x, [-1, *shape])
    return parsed


def peek(path):
    """`(shape_size_in_bytes, labelled)` of the first record of the file `path` (None if empty)."""
    for record in tf.data.TFRecordDataset([path]).take(1):
        try:
            features = tf.train.Example.FromString(record.numpy()).features.feature
        except Exception:  # noqa: BLE001  (protobuf's DecodeError: not an Example)
            features = {}
        if not ({"x", "id", "key"} <= set(features) and features["x"].bytes_list.value):
            raise ValueError(
                f"Received an invalid value for `dataset`: {path!r} does not hold tfvae records "
                f"(features x, id, key and optional y; found {sorted(features)}). Convert the "
                "data with `tfvae prepare-data`.")
        return len(features["x"].bytes_list.value[0]), "y" in features
    return None


def write_metadata(folder, metadata):
    """Writes `tfvae_records.json` (format, version and the given fields) into `folder`."""
    text = json.dumps({"format": FORMAT, "version": VERSION, **metadata}, indent=2,
                      sort_keys=True)
    with tf.io.gfile.GFile(os.path.join(folder, METADATA), "w") as f:
        f.write(text + "\n")


def read_metadata(folder):
    """The checked contents of `folder/tfvae_records.json`.

    Raises:
      ValueError: the file is not tfvae's record metadata, or names shards that do not exist.
    """
    path = os.path.join(folder, METADATA)
    try:
        with tf.io.gfile.GFile(path) as f:
            metadata = json.loads(f.read())
    except (ValueError, tf.errors.OpError) as error:
        raise ValueError(f"Received an invalid value for `dataset`: {path!r} cannot be read "
                         f"as tfvae record metadata ({type(error).__name__}).") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise ValueError(f"Received an invalid value for `dataset`: {path!r} is not tfvae "
                         f"record metadata (its `format` is not {FORMAT!r}).")
    if metadata.get("version") != VERSION:
        raise ValueError(f"Received an invalid value for `dataset`: {path!r} is record format "
                         f"version {metadata.get('version')!r}; this tfvae reads version "
                         f"{VERSION}. Prepare the data again with `tfvae prepare-data`.")
    missing = [name for split in metadata.get("splits", {}).values() for name in split["files"]
               if not tf.io.gfile.exists(os.path.join(folder, name))]
    if missing:
        raise ValueError(f"Received an invalid value for `dataset`: {folder!r} is missing "
                         f"{len(missing)} shard(s) named in {METADATA}, e.g. {missing[0]!r}.")
    return metadata


def write_splits(splits, output, shards=1, batch_size=1024, skip_corrupt=False):
    """Writes sources (`tfvae.sources.Source`) as a prepared folder of record shards.

    Each split is read once, in order, and its examples dealt round-robin to
    `shards` shard files (example i to shard i mod shards), so shards hold
    equal counts to within one and a multi-worker run can split them by file.
    Values, labels, ids and keys are stored as the sources give them, so a run
    on the folder sees the same examples, splits and static binarisation draws
    as a run on the source itself. Everything is written into a hidden folder
    beside `output` and renamed to `output` only when complete.

    Args:
      splits: `{split name: Source}`; the sources must agree on shape, dtype and scale.
      output: the folder to create (must not exist).
      shards: shard files per split (fewer for a split with fewer examples).
        Default value: `1`.
      batch_size: examples read per step. Default value: `1024`.
      skip_corrupt: leave out examples that cannot be read. Default value: `False`.

    Returns:
      The metadata written to `tfvae_records.json`.
    """
    first = next(iter(splits.values()))
    for name, source in splits.items():
        if (tuple(source.event_shape), source.dtype, source.scale) != (
                tuple(first.event_shape), first.dtype, first.scale):
            raise ValueError(
                "Received an invalid value for `dataset`: its splits differ in shape or type "
                f"({name}: {list(source.event_shape)} {source.dtype}; first split: "
                f"{list(first.event_shape)} {first.dtype}).")
    if shards < 1 or isinstance(shards, bool) or not isinstance(shards, int):
        raise ValueError("Received an invalid value for `shards`, expected a positive integer. "
                         f"Received: shards={shards!r}")
    if tf.io.gfile.exists(output):
        raise ValueError(f"Received an invalid value for `output`: {output!r} exists; choose a "
                         "new folder.")
    parent, name = os.path.split(os.path.normpath(output))
    staging = os.path.join(parent, f".{name}.tmp-{os.getpid()}")
    tf.io.gfile.makedirs(staging)
    try:
        metadata = {"shape": list(first.event_shape), "dtype": first.dtype,
                    "scale": first.scale, "labelled": all(s.labelled for s in splits.values()),
                    "splits": {}}
        binary, top = True, -1
        for split, source in splits.items():
            entry, split_binary, split_top = _write_split(source, split, staging, shards,
                                                          batch_size, metadata["labelled"],
                                                          skip_corrupt)
            metadata["splits"][split] = entry
            binary, top = binary and split_binary, max(top, split_top)
            logger.info("wrote %d %s examples to %d shard(s)", entry["examples"], split,
                        len(entry["files"]))
        metadata["binary"] = binary
        metadata["num_classes"] = (max(top + 1, max(s.num_classes or 0 for s in splits.values()))
                                   if metadata["labelled"] else None)
        write_metadata(staging, metadata)
        tf.io.gfile.rename(staging, output)
    except BaseException:
        tf.io.gfile.rmtree(staging)
        raise
    return metadata


def _write_split(source, split, folder, shards, batch_size, labelled, skip_corrupt):
    """Writes one split's shards; returns `(metadata entry, binary, largest label)`."""
    names = [shard_name(split, i, shards) for i in range(shards)]
    writers = [tf.io.TFRecordWriter(os.path.join(folder, n)) for n in names]
    counts, binary, top, count = [0] * shards, True, -1, 0
    try:
        for batch in source.batches(batch_size, skip_corrupt=skip_corrupt):
            x = batch["x"].numpy()
            if x.dtype == np.float32 and not np.all(np.isfinite(x)):
                raise ValueError(f"Received an invalid value for `dataset`: {source.name} holds "
                                 "NaN or infinite values.")
            binary = binary and bool(np.all((x == 0) | (x == source.scale)))
            ids, keys = batch["id"].numpy(), batch["key"].numpy()
            ys = batch["y"].numpy() if labelled else [None] * len(x)
            if labelled and len(ys):
                top = max(top, int(ys.max()))
            for row in range(len(x)):
                shard = count % shards
                writers[shard].write(serialize(x[row], ids[row], keys[row].decode(), ys[row]))
                counts[shard] += 1
                count += 1
    finally:
        for writer in writers:
            writer.close()
    kept = [i for i in range(shards) if counts[i]]
    for i in range(shards):
        if not counts[i]:
            tf.io.gfile.remove(os.path.join(folder, names[i]))
    return ({"files": [names[i] for i in kept], "examples": count,
             "counts": [counts[i] for i in kept]}, binary, top)
