"""tfvae's record format: examples as TFRecord shards, read fast and sharded by file.

A prepared dataset is a folder (local, or a remote path that `tf.io.gfile`
reads, e.g. `gs://...`)::

    tfvae_records.json               what the shards hold (see `write_metadata`)
    train-00000-of-00004.tfrecord    one split's shards ...
    validation-00000-of-00001.tfrecord

Every record is a `tf.train.Example` holding a *pack* of n consecutive
examples of its shard (n = `pack`, 128 by default, fewer in a shard's last
record), with the features

| feature | type | meaning |
| --- | --- | --- |
| `x` | bytes | the n examples' values, one after another, each C order, in `dtype` (`uint8` or `float32`, little-endian) |
| `y` | int64, n values | their labels (class indices), absent in an unlabelled dataset |
| `id` | int64, n values | their ids: the seeds of their static binarisation draws (`random.example_uniform`) |
| `key` | bytes, n values | their keys: where they came from (a relative file path, a row index); they decide hash splits |

Packing is what makes the format fast: a reader pays the per-record costs
(read, checksum, protobuf parse) once per pack, not once per example
(measured in `benchmarks/bench_streaming.py`). Version 1 folders (one example
per record) are the case n = 1 and are read as they are.

and `tfvae_records.json` says `version` (2), `pack`, `shape` (one example's shape, `[H, W, C]`),
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

__all__ = [
    "DTYPES",
    "EXTENSION",
    "FORMAT",
    "METADATA",
    "PACK",
    "parse_pack",
    "peek",
    "read_metadata",
    "READS",
    "serialize",
    "shard_name",
    "VERSION",
    "write_metadata",
    "write_splits",
]

logger = logging.getLogger(__name__)

FORMAT = "tfvae-records"
VERSION = 2
READS = (1, 2)  # versions this tfvae reads (version 1: one example per record)
PACK = 128  # examples per record
METADATA = "tfvae_records.json"
EXTENSION = ".tfrecord"
DTYPES = ("uint8", "float32")


def shard_name(split, index, count):
    """`train-00003-of-00008.tfrecord`."""
    return f"{split}-{index:05d}-of-{count:05d}{EXTENSION}"


def serialize(x, ids, keys, y=None):
    """A pack of examples as one serialized `tf.train.Example` (see the module docstring).

    Args:
      x: a numpy array `[n] + shape` of n examples, `uint8` or `float32`.
      ids: their int ids, `[n]`.
      keys: their keys (str), `[n]`.
      y: their integer labels `[n]`, or None.

    Returns:
      bytes.
    """
    feature = {
        "x": tf.train.Feature(bytes_list=tf.train.BytesList(
            value=[np.ascontiguousarray(x).astype(x.dtype.newbyteorder("<")).tobytes()])),
        "id": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(i) for i in ids])),
        "key": tf.train.Feature(bytes_list=tf.train.BytesList(
            value=[k.encode() if isinstance(k, str) else bytes(k) for k in keys])),
    }
    if y is not None:
        feature["y"] = tf.train.Feature(int64_list=tf.train.Int64List(
            value=[int(v) for v in y]))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def parse_pack(serialized, shape, dtype, labelled):
    """Parses one record: a pack of n examples (one protobuf parse per pack: fast).

    Args:
      serialized: a string scalar tensor, one record.
      shape: one example's shape.
      dtype: `"uint8"` or `"float32"`.
      labelled: whether the records have labels `y`.

    Returns:
      A dict of tensors: `x` `[n] + shape` in `dtype`, `id` int64 `[n]`, `key`
      string `[n]`, and `y` int64 `[n]` if `labelled`.

    Raises:
      tf.errors.InvalidArgumentError (when run): a record whose `x` does not hold
      n examples of `shape`, or whose features do not agree in n.
    """
    spec = {"x": tf.io.FixedLenFeature([], tf.string),
            "id": tf.io.FixedLenSequenceFeature([], tf.int64, allow_missing=True),
            "key": tf.io.FixedLenSequenceFeature([], tf.string, allow_missing=True)}
    if labelled:
        spec["y"] = tf.io.FixedLenSequenceFeature([], tf.int64, allow_missing=True)
    parsed = tf.io.parse_single_example(serialized, spec)
    count = tf.shape(parsed["id"])[0]
    size = int(np.prod(shape))
    x = tf.io.decode_raw(parsed["x"], tf.as_dtype(dtype), little_endian=True)
    checks = [tf.debugging.assert_equal(tf.size(x), count * size,
                                        message="a record's x holds the wrong number of bytes"),
              tf.debugging.assert_equal(tf.shape(parsed["key"])[0], count,
                                        message="a record's key and id counts differ")]
    if labelled:
        checks.append(tf.debugging.assert_equal(tf.shape(parsed["y"])[0], count,
                                                message="a record's y and id counts differ"))
    with tf.control_dependencies(checks):
        parsed["x"] = tf.reshape(x, [count, *shape])
    return parsed


def peek(path):
    """`(one_example_size_in_bytes, labelled)` from the first record of `path` (None if empty)."""
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
        count = len(features["id"].int64_list.value)
        nbytes = len(features["x"].bytes_list.value[0])
        if count == 0 or nbytes % count:
            raise ValueError(
                f"Received an invalid value for `dataset`: {path!r}'s first record holds "
                f"{nbytes} bytes of x for {count} example id(s); expected a whole number of "
                "examples.")
        return nbytes // count, "y" in features
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
    if metadata.get("version") not in READS:
        raise ValueError(f"Received an invalid value for `dataset`: {path!r} is record format "
                         f"version {metadata.get('version')!r}; this tfvae reads versions "
                         f"{', '.join(map(str, READS))}. Prepare the data again with `tfvae prepare-data`.")
    missing = [name for split in metadata.get("splits", {}).values() for name in split["files"]
               if not tf.io.gfile.exists(os.path.join(folder, name))]
    if missing:
        raise ValueError(f"Received an invalid value for `dataset`: {folder!r} is missing "
                         f"{len(missing)} shard(s) named in {METADATA}, e.g. {missing[0]!r}.")
    return metadata


def write_splits(splits, output, shards=1, batch_size=1024, skip_corrupt=False, pack=PACK):
    """Writes sources (`tfvae.sources.Source`) as a prepared folder of record shards.

    Each split is read once, in order, and its examples dealt round-robin to
    `shards` shard files (example i to shard i mod shards), so shards hold
    equal counts to within one and a multi-worker run can split them by file;
    each shard packs its examples `pack` to a record, in order.
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
      pack: examples per record. Default value: `PACK` (128).

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
    if pack < 1 or isinstance(pack, bool) or not isinstance(pack, int):
        raise ValueError("Received an invalid value for `pack`, expected a positive integer. "
                         f"Received: pack={pack!r}")
    if tf.io.gfile.exists(output):
        raise ValueError(f"Received an invalid value for `output`: {output!r} exists; choose a "
                         "new folder.")
    parent, name = os.path.split(os.path.normpath(output))
    staging = os.path.join(parent, f".{name}.tmp-{os.getpid()}")
    tf.io.gfile.makedirs(staging)
    try:
        metadata = {"shape": list(first.event_shape), "dtype": first.dtype, "pack": pack,
                    "scale": first.scale, "labelled": all(s.labelled for s in splits.values()),
                    "splits": {}}
        binary, top = True, -1
        for split, source in splits.items():
            entry, split_binary, split_top = _write_split(source, split, staging, shards,
                                                          batch_size, metadata["labelled"],
                                                          skip_corrupt, pack)
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


class _ShardWriter:
    """One shard file: examples buffered and written `pack` to a record, in order."""

    def __init__(self, path, pack, labelled):
        self.writer = tf.io.TFRecordWriter(path)
        self.pack, self.labelled = pack, labelled
        self.buffer, self.count = [], 0

    def add(self, x, id_, key, y):
        self.buffer.append((x, id_, key, y))
        self.count += 1
        if len(self.buffer) == self.pack:
            self.flush()

    def flush(self):
        if self.buffer:
            x, ids, keys, ys = zip(*self.buffer)
            self.writer.write(serialize(np.stack(x), ids, keys, ys if self.labelled else None))
            self.buffer = []

    def close(self):
        try:
            self.flush()
        finally:
            self.writer.close()


def _write_split(source, split, folder, shards, batch_size, labelled, skip_corrupt, pack):
    """Writes one split's shards; returns `(metadata entry, binary, largest label)`."""
    names = [shard_name(split, i, shards) for i in range(shards)]
    writers = [_ShardWriter(os.path.join(folder, n), pack, labelled) for n in names]
    binary, top, count = True, -1, 0
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
                writers[count % shards].add(x[row], ids[row], keys[row], ys[row])
                count += 1
    finally:
        for writer in writers:
            writer.close()
    counts = [w.count for w in writers]
    kept = [i for i in range(shards) if counts[i]]
    for i in range(shards):
        if not counts[i]:
            tf.io.gfile.remove(os.path.join(folder, names[i]))
    return ({"files": [names[i] for i in kept], "examples": count,
             "counts": [counts[i] for i in kept]}, binary, top)
