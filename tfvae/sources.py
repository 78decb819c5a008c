"""Data read lazily: sources of examples, their splits, and the pipelines over them.

A source is an ordered collection of examples that is only ever read as a
`tf.data` stream, never held in memory as a whole:

* `ImageFolderSource`: a folder of images (PNG, JPEG, BMP, GIF) decoded in
  parallel inside `tf.data`, optionally resized and center-cropped to one size;
* `RecordSource`: TFRecord shards in tfvae's record format (`tfvae.records`),
  local or on any path `tf.io.gfile` reads;
* `TfdsSource`: a TensorFlow Datasets split;
* `ArraySource`: arrays (what `tfvae prepare-data` converts from `.npy`/`.npz`).

Every example carries four things: `x`, its raw values (`uint8` or `float32`,
`x / scale` in [0, 1]); `y`, an int64 class label (labelled sources only);
`id`, an int64 that seeds its static binarisation draw; and `key`, a string
naming where it came from (a file path relative to the folder, a row index),
from which a random train/validation split is decided by a stable hash
(`hash_split`), so a split needs no data in memory and does not change when
examples are appended.

`batches` turns a source into the batches a model trains on: `x` as float32,
prepared for the likelihood exactly as `tfvae.data.prepare` prepares arrays
(scaled to [0, 1], binarised, or 8-bit levels), and `y` when asked for.
"""

import contextlib
import logging
import os
import re

import numpy as np
import tensorflow as tf

from tfvae import _checks
from tfvae import options
from tfvae import random as tfvae_random
from tfvae import records

__all__ = [
    "ArraySource",
    "ChainSource",
    "folder_splits",
    "glob_source",
    "hash_split",
    "IMAGE_EXTENSIONS",
    "ImageFolderSource",
    "key_ids",
    "NpySource",
    "pipeline",
    "prepare_batch",
    "READ_ERRORS",
    "reading",
    "record_splits",
    "RecordSource",
    "resolve_binarize",
    "SHUFFLE_BUFFER",
    "shuffle_buffer",
    "SHUFFLE_BYTES",
    "Source",
    "SPLIT_FOLDERS",
    "TfdsSource",
    "WINDOW",
    "WINDOW_BYTES",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
# Sub-folder names of an image folder's predefined splits.
SPLIT_FOLDERS = {"train": ("train",), "validation": ("valid", "validation", "val"),
                 "test": ("test",)}
# Hash buckets of the train/validation split: a fraction is resolved to 1e-6.
_BUCKETS = 1_000_000
# File paths held in a shuffle buffer; examples held in one: at most this many, and at most
# SHUFFLE_BYTES of them (100,000 MNIST digits are 78 MB; 64×64 RGB images get 21,845).
SHUFFLE_BUFFER = 100_000
SHUFFLE_BYTES = 256 * 2**20
# Record shards shuffle whole packs in a buffer of SHUFFLE_BUFFER examples' worth, then
# permute windows of this many examples (at most WINDOW_BYTES of them) at once.
WINDOW = 8192
WINDOW_BYTES = 64 * 2**20


def shuffle_buffer(event_shape, dtype):
    """Examples a shuffle buffer holds: `SHUFFLE_BUFFER`, fewer for large examples."""
    size = max(1, int(np.prod(event_shape)) * np.dtype(dtype).itemsize)
    return int(max(1024, min(SHUFFLE_BUFFER, SHUFFLE_BYTES // size)))
# The TF errors a stream raises for a file it cannot read or decode.
READ_ERRORS = (tf.errors.InvalidArgumentError, tf.errors.DataLossError, tf.errors.NotFoundError,
               tf.errors.OutOfRangeError)


def hash_split(keys, fraction, seed):
    """Whether each key is in the validation split: a stable hash of `seed:key`.

    The hash is TensorFlow's `to_hash_bucket_fast` (FarmHash fingerprint), the
    same eagerly and in a `tf.data` pipeline, on every machine.

    Args:
      keys: a string tensor (or list of str) of example keys.
      fraction: the validation fraction in (0, 1).
      seed: an int; a different seed gives a different split.

    Returns:
      A bool tensor, true for the validation examples.
    """
    keys = tf.strings.join([tf.constant(str(int(seed))), ":", tf.convert_to_tensor(keys)])
    return tf.strings.to_hash_bucket_fast(keys, _BUCKETS) < int(round(fraction * _BUCKETS))


def _split_side(keep):
    """`key -> bool`: whether an example is on the `validation` side of the hash split
    `keep = (fraction, seed, validation)`."""
    fraction, seed, validation = keep
    return lambda key: tf.equal(hash_split(key, fraction, seed), validation)


def key_ids(keys):
    """int64 ids of string keys (a 63-bit FarmHash fingerprint)."""
    return tf.strings.to_hash_bucket_fast(tf.convert_to_tensor(keys), 2**63 - 1)


class Source:
    """Examples read lazily: the common interface of every kind of source.

    Attributes:
      name: what the source is, for messages (a path or a dataset name).
      event_shape: one example's shape, a tuple (e.g. `(H, W, C)`).
      dtype: the raw values' dtype, `"uint8"` or `"float32"`.
      scale: the raw values divided by `scale` lie in [0, 1].
      labelled: whether the examples have labels `y`.
      num_classes: the number of label classes where known, else None.
      size: the number of examples where known without reading them, else None.
      binary: whether every value is 0 or `scale` (None if unknown).
      files: the files a multi-worker run shards between its workers, each reading only
        its share (`AutoShardPolicy.FILE`); None where workers share the stream
        (`AutoShardPolicy.DATA`: each reads all and keeps its share of the examples).
    """

    name = "a source"
    event_shape = ()
    dtype = "float32"
    scale = 1.0
    labelled = False
    num_classes = None
    size = None
    binary = None
    files = None

    def batches(self, batch_size, shuffle=False, seed=0, skip_corrupt=False):
        """Raw batches: dicts `x`, `id`, `key` (and `y`), the last batch possibly smaller.

        Args:
          batch_size: examples per batch.
          shuffle: reshuffle the examples every epoch. Default value: `False`.
          seed: the shuffle's seed. Default value: `0`.
          skip_corrupt: drop examples that cannot be read instead of failing.
            Default value: `False`.
        """
        raise NotImplementedError

    def take(self, n, skip_corrupt=False):
        """The first `n` examples as numpy arrays `(x_raw, y or None, ids)` (bounded memory)."""
        xs, ys, ids, count = [], [], [], 0
        with reading(self, skip_corrupt):
            # range first: zip stops before pulling a batch past the last one needed.
            batches = [batch for _, batch in zip(range(-(-n // 1024) if n > 1024 else 1),
                                                 self.batches(min(max(n, 1), 1024),
                                                              skip_corrupt=skip_corrupt))]
        for batch in batches:
            batch = {key: value.numpy() for key, value in batch.items()}
            xs.append(batch["x"][: n - count])
            ids.append(batch["id"][: n - count])
            if self.labelled:
                ys.append(batch["y"][: n - count])
            count += len(xs[-1])
            if count >= n:
                break
        if not xs:
            return (np.zeros((0, *self.event_shape), self.dtype), None, np.zeros(0, np.int64))
        return (np.concatenate(xs), np.concatenate(ys) if self.labelled else None,
                np.concatenate(ids))

    def find_unreadable(self):
        """The first file this source cannot read, with the reason, or None (a full scan)."""
        return None

    def describe(self):
        """A dict for `metrics.json`/`run.json`: kind, shape, size, labels."""
        return {"source": type(self).__name__, "name": self.name,
                "event_shape": list(self.event_shape), "size": self.size,
                "labelled": self.labelled, "num_classes": self.num_classes}


def _with_options(dataset, file_based):
    """Sharding policy for multi-worker runs: by file for file sources, else by data."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.FILE if file_based
        else tf.data.experimental.AutoShardPolicy.DATA)
    options.deterministic = True
    # Parsing and preparing a batch run as one map (measured: less CPU per example).
    options.experimental_optimization.map_fusion = True
    return dataset.with_options(options)


# --------------------------------------------------------------------------- image folders


def _list_images(folder):
    """Sorted image file names directly in `folder` (regular files only: a FIFO or a
    device named `x.png` would block or never end a read)."""
    if "://" not in folder:
        with os.scandir(folder) as entries:
            return sorted(e.name for e in entries if e.name.lower().endswith(IMAGE_EXTENSIONS)
                          and not e.name.startswith(".") and e.is_file())
    return sorted(name for name in tf.io.gfile.listdir(folder)
                  if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."))


def _subfolders(folder):
    return sorted(name.rstrip("/") for name in tf.io.gfile.listdir(folder)
                  if not name.startswith(".") and tf.io.gfile.isdir(os.path.join(folder, name)))


def folder_splits(path):
    """`{split: folder}` of an image folder's predefined splits, or `{}` if it has none.

    A folder has predefined splits when it holds a `train/` sub-folder and a
    validation one (`valid/`, `validation/` or `val/`), and optionally `test/`.
    """
    names = set(_subfolders(path))
    found = {}
    for split, candidates in SPLIT_FOLDERS.items():
        name = next((c for c in candidates if c in names), None)
        if name is not None:
            found[split] = os.path.join(path, name)
    return found if "train" in found and "validation" in found else {}


def _folder_files(root, classes=None):
    """`(paths, keys, labels)` of a folder: images in it (unlabelled) and in class sub-folders.

    Labels are the index of the sub-folder in `classes` (default: its sorted
    sub-folders); with any image directly in `root`, the folder is unlabelled.
    """
    classes = _subfolders(root) if classes is None else classes
    paths, keys, labels = [], [], []
    for name in _list_images(root):
        paths.append(os.path.join(root, name))
        keys.append(name)
        labels.append(None)
    for index, name in enumerate(classes):
        folder = os.path.join(root, name)
        if not tf.io.gfile.isdir(folder):
            continue
        for file in _list_images(folder):
            paths.append(os.path.join(folder, file))
            keys.append(f"{name}/{file}")
            labels.append(index)
    return paths, keys, labels


def _first_channels(path):
    """Channels of the first image: 1 for greyscale (and palette) images, else 3."""
    from PIL import Image
    from PIL import UnidentifiedImageError

    try:
        with Image.open(path) as image:
            mode = image.mode
    except UnidentifiedImageError:
        raise ValueError(f"Received an invalid value for `dataset`: {path!r} is not an image "
                         "file that can be read.") from None
    except Image.DecompressionBombError as error:
        raise ValueError(f"Received an invalid value for `dataset`: {path!r} is too large to "
                         f"decode safely ({error}).") from None
    return 1 if mode in ("1", "L", "LA", "P", "I", "I;16") else 3


def _first_size(path, channels):
    data = tf.io.read_file(path)
    try:
        image = tf.io.decode_image(data, expand_animations=False)
    except READ_ERRORS as error:
        raise ValueError(f"Received an invalid value for `dataset`: {path!r} cannot be "
                         f"decoded as an image ({_tf_reason(error)}).") from None
    return (int(image.shape[0]), int(image.shape[1]), channels)


def _tf_reason(error):
    """A TF error's message without its graph-node and op decorations, on one line."""
    text = str(getattr(error, "message", error))
    text = re.sub(r"\{\{function_node [^}]*\}\}|\[Op:\w+\]( name:)?|\[\[\{\{node [^}]*\}\}\]\]",
                  "", text)
    return " ".join(text.split())[:200]


def _to_channels(image, channels):
    """A decoded `[H, W, c]` uint8 image with `channels` (1 or 3) channels."""
    c = tf.shape(image)[-1]
    rgb = tf.cond(c >= 3, lambda: image[..., :3],
                  lambda: tf.image.grayscale_to_rgb(image[..., :1]))
    if channels == 3:
        return rgb
    grey = tf.image.rgb_to_grayscale(rgb)
    return tf.cond(c >= 3, lambda: grey, lambda: image[..., :1])


def _resize_and_crop(image, size):
    """Scales `image` to cover `size` (aspect kept, antialiased) and crops the center."""
    height, width = size
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    factor = tf.maximum(height / shape[0], width / shape[1])
    cover = tf.cast(tf.math.ceil(shape * factor - 1e-4), tf.int32)
    cover = tf.maximum(cover, [height, width])

    def resized():
        scaled = tf.image.resize(image, cover, method="bilinear", antialias=True)
        cropped = tf.image.resize_with_crop_or_pad(scaled, height, width)
        return tf.cast(tf.clip_by_value(tf.round(cropped), 0, 255), tf.uint8)

    same = tf.reduce_all(tf.equal(tf.shape(image)[:2], [height, width]))
    return tf.cond(same, lambda: tf.identity(image), resized)


class ImageFolderSource(Source):
    """A folder of images, decoded in parallel inside `tf.data`.

    Args:
      path: the folder (images in it are unlabelled; images in sub-folders get
        the sub-folder's sorted index as their label).
      image_size: `(H, W)`: every image is scaled to cover it and center-cropped,
        so images of any sizes mix; `None` needs all images to have the first
        image's size. Default value: `None`.
      channels: 1 (greyscale) or 3 (RGB); `None` takes the first image's.
        Default value: `None`.
      classes: the class sub-folder names, in label order (the splits of one
        dataset share the training split's). Default value: the sorted sub-folders.
    """

    dtype = "uint8"
    scale = 255.0

    def __init__(self, path, image_size=None, channels=None, classes=None, name=None):
        self.name = name or path
        self.root = path
        self.classes = _subfolders(path) if classes is None else list(classes)
        paths, keys, labels = _folder_files(path, self.classes)
        if not paths:
            raise ValueError(f"Received an invalid value for `dataset`: no images in "
                             f"{self.name!r}.")
        self.paths, self.keys = paths, keys
        self.labelled = all(label is not None for label in labels)
        self.labels = np.asarray(labels, np.int64) if self.labelled else None
        self.num_classes = len(self.classes) if self.labelled else None
        self.size = len(paths)
        self.image_size = None if image_size is None else tuple(image_size)
        self.channels = _first_channels(paths[0]) if channels is None else channels
        self.event_shape = ((*self.image_size, self.channels) if self.image_size else
                            _first_size(paths[0], self.channels))

    def subset(self, keep, name=None):
        """The same folder restricted to the files where `keep` (a bool per file) is true."""
        source = ImageFolderSource.__new__(ImageFolderSource)
        source.__dict__.update(self.__dict__)
        source.name = name or self.name
        keep = np.asarray(keep, bool)
        source.paths = [p for p, k in zip(self.paths, keep) if k]
        source.keys = [p for p, k in zip(self.keys, keep) if k]
        source.labels = None if self.labels is None else self.labels[keep]
        source.size = len(source.paths)
        if not source.paths:
            raise ValueError(f"Received an invalid value for `dataset`: {source.name} holds no "
                             "images.")
        return source

    def _decode(self, path):
        image = tf.io.decode_image(tf.io.read_file(path), expand_animations=False)
        image = _to_channels(image, self.channels)
        if self.image_size is not None:
            return _resize_and_crop(image, self.image_size)
        height, width = self.event_shape[:2]
        check = tf.debugging.Assert(
            tf.reduce_all(tf.equal(tf.shape(image)[:2], [height, width])),
            ["All images must have one size (or pass --image-size H,W): expected",
             height, width, "but", path, "is", tf.shape(image)[:2]])
        with tf.control_dependencies([check]):
            return tf.ensure_shape(tf.identity(image), self.event_shape)

    def _examples(self, shuffle, seed):
        ids = key_ids(self.keys)
        columns = {"path": tf.constant(self.paths), "id": ids, "key": tf.constant(self.keys)}
        if self.labelled:
            columns["y"] = tf.constant(self.labels)
        dataset = tf.data.Dataset.from_tensor_slices(columns)
        if shuffle:
            dataset = dataset.shuffle(min(self.size, SHUFFLE_BUFFER), seed=seed,
                                      reshuffle_each_iteration=True)

        def decode(example):
            example = dict(example)
            example["x"] = self._decode(example.pop("path"))
            return example

        return dataset.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def batches(self, batch_size, shuffle=False, seed=0, skip_corrupt=False):
        examples = self._examples(shuffle, seed)
        if skip_corrupt:
            examples = examples.ignore_errors()
        return _with_options(examples.batch(batch_size), file_based=False)

    def find_unreadable(self):
        found = _first_missing(
            tf.data.Dataset.from_tensor_slices(tf.constant(self.paths))
            .enumerate().map(lambda i, path: (i, tf.shape(self._decode(path))[0]),
                             num_parallel_calls=tf.data.AUTOTUNE).ignore_errors(),
            self.size)
        if found is None:
            return None
        path = self.paths[found]
        reason = _reason_for(lambda: self._decode(tf.constant(path)))
        return path, f"not an image file that can be decoded: {reason}"


def _first_missing(indexed, size):
    """The smallest index in `range(size)` that `indexed` (a dataset of `(index, ...)`) lacks."""
    seen = np.zeros(size, bool)
    for index, _ in indexed.as_numpy_iterator():
        seen[index] = True
    missing = np.flatnonzero(~seen)
    return int(missing[0]) if len(missing) else None


def _reason_for(function):
    try:
        function()
    except READ_ERRORS as error:
        return _tf_reason(error)
    return "unreadable"


# --------------------------------------------------------------------------- TFRecord shards


class RecordSource(Source):
    """TFRecord shards in tfvae's record format (`tfvae.records`).

    Args:
      files: the shard paths (local or remote, as `tf.io.gfile` reads them).
      event_shape, dtype, scale, labelled: as stored (see `tfvae.records`).
      size: the number of examples, if known. Default value: `None`.
      num_classes, binary: from the metadata, if known.
      keep: `(fraction, seed, validation)`: keep the examples whose key
        `hash_split` puts on the `validation` side (a split of unsplit shards).
      name: for messages. Default value: the first file's folder.
      pack: examples per record, if known (sizes the shuffle buffer of packs).
        Default value: `None` (`records.PACK`).
    """

    def __init__(self, files, event_shape, dtype, scale, labelled, size=None, num_classes=None,
                 binary=None, keep=None, name=None, pack=None):
        if not files:
            raise ValueError("Received an invalid value for `dataset`: no TFRecord shards "
                             f"{('in ' + repr(name)) if name else ''}.")
        self.files = tuple(files)
        self.event_shape = tuple(int(v) for v in event_shape)
        self.dtype = _checks.one_of("dtype", dtype, records.DTYPES)
        self.scale, self.labelled = float(scale), bool(labelled)
        self.size, self.num_classes, self.binary = size, num_classes, binary
        self.keep, self.pack = keep, pack
        self.name = name or os.path.dirname(self.files[0])

    def _parse(self, serialized):
        return records.parse_pack(serialized, self.event_shape, self.dtype, self.labelled)

    def batches(self, batch_size, shuffle=False, seed=0, skip_corrupt=False):
        files = tf.data.Dataset.from_tensor_slices(list(self.files))
        if shuffle:
            files = files.shuffle(len(self.files), seed=seed, reshuffle_each_iteration=True)

        def read(path):
            reader = tf.data.TFRecordDataset(path)
            return reader.ignore_errors() if skip_corrupt else reader

        # Several shards at once, in a deterministic order for a given seed. Local shards
        # are read on the calling thread (measured: a third less CPU per example than
        # parallel reads, the same order); remote ones in parallel, where latency rules.
        remote = any("://" in f for f in self.files)
        parallel = {"num_parallel_calls": tf.data.AUTOTUNE, "deterministic": True} if remote \
            else {}
        serialized = files.interleave(read, cycle_length=min(len(self.files), 16),
                                      block_length=1, **parallel)
        # One parse per record (a pack of examples), then the examples one by one.
        packs = serialized.map(self._parse, num_parallel_calls=tf.data.AUTOTUNE,
                               deterministic=True)
        if skip_corrupt:
            packs = packs.ignore_errors()
        if self.keep is not None:
            in_split = _split_side(self.keep)

            def kept(pack):
                mask = in_split(pack["key"])
                return {name: tf.boolean_mask(value, mask) for name, value in pack.items()}

            packs = packs.map(kept, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        if not shuffle:  # in order: the packs cut into batches (no per-example ops)
            return _with_options(packs.rebatch(batch_size), file_based=True)
        # Shuffled without per-example ops (measured: half the CPU of a per-example shuffle
        # buffer, benchmarks/README.md): whole packs go through a shuffle buffer, then
        # windows of `WINDOW` examples (from many packs) are each permuted at once.
        size = max(1, int(np.prod(self.event_shape)) * np.dtype(self.dtype).itemsize)
        pack = int(self.pack or records.PACK)
        packs = packs.shuffle(max(1, shuffle_buffer(self.event_shape, self.dtype) // pack),
                              seed=seed, reshuffle_each_iteration=True)
        window = max(batch_size, min(WINDOW, WINDOW_BYTES // size))

        def permuted(index, examples):
            order = tf.random.experimental.stateless_shuffle(
                tf.range(tf.shape(examples["id"])[0]), seed=tf.stack([tf.cast(seed, tf.int64),
                                                                      index]))
            return {name: tf.gather(value, order) for name, value in examples.items()}

        windows = packs.rebatch(window).enumerate().map(
            permuted, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return _with_options(windows.rebatch(batch_size), file_based=True)

    def find_unreadable(self):
        for path in self.files:
            try:
                for _ in tf.data.TFRecordDataset([path]).map(self._parse):
                    pass
            except READ_ERRORS as error:
                return path, _tf_reason(error)
        return None


def record_splits(path):
    """`{split: RecordSource}` of a prepared folder (its `tfvae_records.json`)."""
    metadata = records.read_metadata(path)
    found = {}
    for split, entry in metadata["splits"].items():
        found[split] = RecordSource(
            [os.path.join(path, name) for name in entry["files"]], metadata["shape"],
            metadata["dtype"], metadata["scale"], metadata["labelled"], size=entry["examples"],
            num_classes=metadata.get("num_classes"), binary=metadata.get("binary"),
            name=f"{path!r} ({split} split)", pack=metadata.get("pack", 1))
    return found


def glob_source(pattern, dtype="uint8", scale=255.0, event_shape=None):
    """A `RecordSource` over the shards a glob (or comma-separated list of globs) matches.

    Without `tfvae_records.json` the record itself gives its size in bytes, so
    `event_shape` must be given for anything but a flat example.
    """
    files = sorted({f for p in str(pattern).split(",") if p for f in tf.io.gfile.glob(p)})
    if not files:
        raise ValueError(f"Received an invalid value for `dataset`: the pattern {pattern!r} "
                         "matches no files.")
    folders = {os.path.dirname(f) for f in files}
    if len(folders) == 1 and tf.io.gfile.exists(os.path.join(folders.pop(), records.METADATA)):
        metadata = records.read_metadata(os.path.dirname(files[0]))
        dtype, scale, event_shape = metadata["dtype"], metadata["scale"], metadata["shape"]
    first = None
    for file in files:
        try:
            first = records.peek(file)
        except READ_ERRORS as error:
            raise ValueError(f"Received an invalid value for `dataset`: {file!r} cannot be read "
                             f"as TFRecords ({_tf_reason(error)}).") from None
        if first is not None:
            break
    if first is None:
        raise ValueError(f"Received an invalid value for `dataset`: the shards matching "
                         f"{pattern!r} hold no records.")
    nbytes, labelled = first
    if event_shape is None:
        event_shape = (nbytes // np.dtype(dtype).itemsize,)
    return RecordSource(files, event_shape, dtype, scale, labelled, name=repr(pattern))


class ChainSource(Source):
    """Sources of one shape read one after another (e.g. every split of a dataset).

    Args:
      parts: `Source`s with equal `event_shape`, `dtype`, `scale` and labelling.
      name: for messages.
    """

    def __init__(self, parts, name):
        first = parts[0]
        self.parts, self.name = list(parts), name
        self.event_shape, self.dtype, self.scale = first.event_shape, first.dtype, first.scale
        self.labelled = all(p.labelled for p in parts)
        sizes = [p.size for p in parts]
        self.size = None if None in sizes else sum(sizes)
        self.num_classes = max((p.num_classes or 0) for p in parts) or None
        binaries = [p.binary for p in parts]
        self.binary = None if None in binaries else all(binaries)

    def batches(self, batch_size, shuffle=False, seed=0, skip_corrupt=False):
        keys = ("x", "id", "key") + (("y",) if self.labelled else ())
        streams = [p.batches(batch_size, shuffle, seed, skip_corrupt).map(
            lambda b: {k: b[k] for k in keys}) for p in self.parts]
        dataset = streams[0]
        for stream in streams[1:]:
            dataset = dataset.concatenate(stream)
        return dataset.rebatch(batch_size)

    def find_unreadable(self):
        for part in self.parts:
            found = part.find_unreadable()
            if found is not None:
                return found
        return None


# --------------------------------------------------------------------------- TFDS


class TfdsSource(Source):
    """A TensorFlow Datasets split read as `tf.data` (no copy in memory).

    Args:
      name: the TFDS name.
      split: the TFDS split name (`train`, `test`, `validation`, ...).
      data_dir: TFDS's data directory. Default value: TFDS's default.
      binary: whether the images hold 0/1 pixels (`binarized_mnist`). Default value: `False`.
    """

    dtype = "uint8"

    def __init__(self, name, split, data_dir=None, binary=False):
        from tfvae import data as data_lib

        self.tfds_name, self.split, self.data_dir = name, split, data_dir
        self.name = f"{name}[{split}]"
        self._builder = data_lib.tfds_builder(name, data_dir)
        info = self._builder.info
        self.event_shape = tuple(info.features["image"].shape)
        self.labelled = "label" in info.features
        self.num_classes = info.features["label"].num_classes if self.labelled else None
        try:
            self.size = int(info.splits[split].num_examples)
        except KeyError:  # a dataset without split metadata (TFDS's mock data)
            self.size = None
        self.scale = 1.0 if binary else 255.0
        self.binary = bool(binary)
        self.files = None

    def batches(self, batch_size, shuffle=False, seed=0, skip_corrupt=False):
        import tensorflow_datasets as tfds

        read_config = tfds.ReadConfig(add_tfds_id=True, shuffle_seed=seed,
                                      interleave_cycle_length=4)
        dataset = self._builder.as_dataset(split=self.split, shuffle_files=shuffle,
                                           read_config=read_config)

        def example(features):
            out = {"x": tf.cast(features["image"], tf.uint8), "key": features["tfds_id"],
                   "id": key_ids(features["tfds_id"])}
            if self.labelled:
                out["y"] = tf.cast(features["label"], tf.int64)
            return out

        dataset = dataset.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        if skip_corrupt:
            dataset = dataset.ignore_errors()
        if shuffle:
            dataset = dataset.shuffle(shuffle_buffer(self.event_shape, self.dtype), seed=seed,
                                      reshuffle_each_iteration=True)
        return _with_options(dataset.batch(batch_size), file_based=False)


# --------------------------------------------------------------------------- arrays


class ArraySource(Source):
    """Arrays as a source: keys and ids are the row indices (or given).

    Args:
      x: `[n] + event_shape` values: uint8 8-bit intensities (scale 255), or
        anything else as float32 in [0, 1] (0/1 uint8 arrays keep scale 1).
      y: optional int labels `[n]`.
      ids: optional int64 ids `[n]`. Default value: `arange(n)`.
      name: for messages.
    """

    def __init__(self, x, y=None, ids=None, name="arrays"):
        x = np.asarray(x)
        if x.ndim == 3:
            x = x[..., None]
        if x.dtype != np.uint8:
            x = _compact(np.asarray(x, np.float32))
        self.x, self.dtype = x, str(x.dtype)
        self.scale = 255.0 if x.dtype == np.uint8 and x.size and x.max() > 1 else 1.0
        self.y = None if y is None else np.asarray(y, np.int64)
        self.ids = np.arange(len(x), dtype=np.int64) if ids is None else np.asarray(ids, np.int64)
        self.labelled = self.y is not None
        self.num_classes = int(self.y.max()) + 1 if self.labelled and len(self.y) else None
        self.size, self.event_shape, self.name = len(x), tuple(x.shape[1:]), name
        self.binary = bool(np.all((self.x == 0) | (self.x == self.scale))) if x.size else True

    def batches(self, batch_size, shuffle=False, seed=0, skip_corrupt=False):
        columns = {"x": self.x, "id": self.ids, "key": self.ids.astype(str)}
        if self.labelled:
            columns["y"] = self.y
        dataset = tf.data.Dataset.from_tensor_slices(columns)
        if shuffle:
            dataset = dataset.shuffle(min(self.size, shuffle_buffer(self.event_shape,
                                                                    self.dtype)),
                                      seed=seed, reshuffle_each_iteration=True)
        return _with_options(dataset.batch(batch_size), file_based=False)


class NpySource(Source):
    """A `.npy` file read in chunks of rows from disk (plain reads: no copy in memory).

    Opening the file reads it once, a chunk at a time, to check its values
    (finite numbers) and learn their range: `uint8` data whose largest value is
    above 1 are 8-bit intensities (scale 255), other `uint8`/`bool` data 0/1, and
    any other numeric type is read as float32. Keys are the row indices.

    Args:
      path: a `.npy` file of shape `[n] + event_shape` (`[n, H, W]` gets a channel
        axis), C order.
      keep: `(fraction, seed, validation)`: keep the rows whose key `hash_split`
        puts on the `validation` side. Default value: `None` (every row).
      chunk_rows: rows per read. Default value: `4096`.
    """

    def __init__(self, path, keep=None, chunk_rows=4096):
        self.path, self.keep, self.chunk_rows = path, keep, int(chunk_rows)
        with open(path, "rb") as f:
            try:
                version = np.lib.format.read_magic(f)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, fortran, dtype = read_header(f)
            except ValueError as error:
                raise ValueError(f"Received an invalid value for `dataset`: {path!r} is not a "
                                 f"readable .npy file ({error}).") from None
            self.offset = f.tell()
        if (fortran or len(shape) < 2 or not (np.issubdtype(dtype, np.number)
                                              or dtype == np.bool_)):
            raise ValueError(f"Received an invalid value for `dataset`: {path!r} must hold a "
                             "numeric C-order array [n, ...] to be streamed. Received: dtype "
                             f"{dtype}, shape {shape}{', Fortran order' if fortran else ''}")
        self.file_dtype, self.rows = np.dtype(dtype), int(shape[0])
        self.event_shape = tuple(shape[1:]) + ((1,) if len(shape) == 3 else ())
        self.row_items = int(np.prod(shape[1:]))
        self.name = repr(path)
        _, high, zero_one, zero_255 = self._scan()
        eight_bit = self.file_dtype in (np.uint8, np.bool_)
        self.dtype = "uint8" if eight_bit else "float32"
        self.scale = 255.0 if eight_bit and high > 1 else 1.0
        self.binary = zero_255 if self.scale == 255.0 else zero_one
        self.size = self.rows if keep is None else None

    def read(self, start):
        """Rows `start .. start + chunk_rows` as `(values, row indices)`."""
        count = max(0, min(self.chunk_rows, self.rows - int(start)))
        with open(self.path, "rb") as f:
            f.seek(self.offset + int(start) * self.row_items * self.file_dtype.itemsize)
            values = np.fromfile(f, self.file_dtype, count * self.row_items)
        if len(values) != count * self.row_items:
            raise ValueError(f"Received an invalid value for `dataset`: {self.path!r} is "
                             "shorter than its header says (truncated).")
        values = values.reshape((count, *self.event_shape))
        return values, np.arange(int(start), int(start) + count, dtype=np.int64)

    def _scan(self):
        """`(low, high, all 0/1, all 0/255)` of the values, one chunk at a time."""
        low, high, zero_one, zero_255 = np.inf, -np.inf, True, True
        for start in range(0, self.rows, self.chunk_rows):
            values = self.read(start)[0]
            if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
                raise ValueError(f"Received an invalid value for `dataset`: {self.path!r} holds "
                                 "NaN or infinite values.")
            if values.size:
                low, high = min(low, float(values.min())), max(high, float(values.max()))
                zero_one = zero_one and bool(np.all((values == 0) | (values == 1)))
                zero_255 = zero_255 and bool(np.all((values == 0) | (values == 255)))
        return low, high, zero_one, zero_255

    def subset(self, keep, name):
        """The rows of one side of a hash split (`keep` as for the constructor)."""
        source = NpySource.__new__(NpySource)
        source.__dict__.update(self.__dict__)
        source.keep, source.size, source.name = keep, None, name
        return source

    def batches(self, batch_size, shuffle=False, seed=0, skip_corrupt=False):
        starts = tf.data.Dataset.range(0, self.rows, self.chunk_rows)
        if shuffle:
            starts = starts.shuffle(max(1, -(-self.rows // self.chunk_rows)), seed=seed,
                                    reshuffle_each_iteration=True)
        out_dtype = tf.uint8 if self.dtype == "uint8" else tf.float32

        def read(start):
            values, ids = self.read(start)
            return values.astype(self.dtype), ids

        def chunk(start):
            values, ids = tf.numpy_function(read, [start], [out_dtype, tf.int64])
            values = tf.ensure_shape(values, (None, *self.event_shape))
            ids = tf.ensure_shape(ids, (None,))
            return {"x": values, "id": ids, "key": tf.strings.as_string(ids)}

        examples = starts.map(chunk, num_parallel_calls=tf.data.AUTOTUNE,
                              deterministic=True).unbatch()
        if self.keep is not None:
            in_split = _split_side(self.keep)
            examples = examples.filter(lambda e: in_split(e["key"]))
        if shuffle:
            examples = examples.shuffle(shuffle_buffer(self.event_shape, self.dtype),
                                        seed=seed, reshuffle_each_iteration=True)
        return _with_options(examples.batch(batch_size), file_based=False)


def _compact(x):
    """float32 data in [0, 1] as uint8 where that loses nothing: 0/1 data as 0/1, and
    8-bit levels / 255 as the levels (read back as `uint8 / 255.0`, bit for bit)."""
    if not x.size or x.min() < 0 or x.max() > 1:
        return x
    if np.all((x == 0) | (x == 1)):
        return x.astype(np.uint8)
    levels = np.round(x * 255.0).astype(np.uint8)
    return levels if np.array_equal(levels.astype(np.float32) / np.float32(255.0), x) else x


# --------------------------------------------------------------------------- pipelines


def prepare_batch(x, ids, scale, likelihood, binarize, seed, generator=None):
    """Raw values → the float32 data a likelihood scores (as `tfvae.data.prepare`).

    Args:
      x: raw values `[batch] + event_shape`.
      ids: int64 example ids `[batch]` (the static draw's seeds).
      scale: `x / scale` lies in [0, 1].
      likelihood: a likelihood head or name (its `prepare_data` and `binarize_modes`
        are read; a name builds the head, so inside a traced function such as a
        `tf.data` map pass a head: a learned σ makes a variable).
      binarize: `"none"`, `"static"` (x_bin = 1[u < x] with u a pure function of
        `(seed, id)`: the same draw for an example whenever it is read) or
        `"dynamic"` (a fresh draw from `generator` every batch).
      seed: the static draw's seed.
      generator: a `tf.random.Generator` for dynamic binarisation.

    Returns:
      float32 `[batch] + event_shape`: 8-bit levels 0..255 for the pixel
      likelihoods, else values in [0, 1] (0/1 when binarised).
    """
    from tfvae import builders

    head, name = builders.likelihood_and_name(likelihood)
    options.check_binarize(binarize, head, name)
    x = tf.cast(x, tf.float32)
    if scale != 1.0:
        x = x / scale
    if binarize == "static":
        u = tfvae_random.example_uniform(seed, ids, tf.shape(x)[1:])
        x = tf.cast(u < x, tf.float32)
    elif binarize == "dynamic":
        x = tf.cast(generator.uniform(tf.shape(x)) < x, tf.float32)
    return head.prepare_data(x)


def pipeline(source, batch_size, likelihood, binarize="none", shuffle=False, seed=0,
             labels=False, skip_corrupt=False):
    """Training or evaluation batches of a source: `x` (or `(x, y)` with `labels`).

    Args:
      source: a `Source`.
      batch_size: examples per batch.
      likelihood: the likelihood name or head the data are prepared for.
      binarize: `"none"`, `"static"` or `"dynamic"` (see `prepare_batch`; resolve
        `"auto"` first with `resolve_binarize`). Default value: `"none"`.
      shuffle: reshuffle every epoch. Default value: `False`.
      seed: the shuffle's and the binarisation's seed. Default value: `0`.
      labels: yield `(x, y)` with the int64 labels. Default value: `False`.
      skip_corrupt: drop unreadable examples. Default value: `False`.

    Returns:
      A prefetched `tf.data.Dataset` of float32 batches `[batch] + event_shape`.
    """
    batch_size = _checks.positive_int("batch_size", batch_size)
    if labels and not source.labelled:
        raise ValueError(f"Received an invalid value for `dataset`: {source.name} has no "
                         "labels, and they were asked for (a conditional run needs them).")
    from tfvae import builders

    head, name = builders.likelihood_and_name(likelihood)  # built here, not in the traced map
    options.check_binarize(binarize, head, name)
    generator = tf.random.Generator.from_seed(seed) if binarize == "dynamic" else None

    def prepared(batch):
        x = prepare_batch(batch["x"], batch["id"], source.scale, head, binarize, seed,
                          generator)
        return (x, batch["y"]) if labels else x

    dataset = source.batches(batch_size, shuffle=shuffle, seed=seed, skip_corrupt=skip_corrupt)
    if source.size is not None and not skip_corrupt:
        # A known length: Keras then runs no extra probing step at the end of an epoch
        # (that step counts an optimizer iteration, which moves the step-indexed noise and
        # Adam's bias correction: the same data would train another model).
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(
            -(-source.size // batch_size)))
    # Dynamic draws come from one stateful generator: kept on one thread, in order.
    parallel = {} if generator is not None else {"num_parallel_calls": tf.data.AUTOTUNE,
                                                  "deterministic": True}
    return dataset.map(prepared, **parallel).prefetch(tf.data.AUTOTUNE)


def resolve_binarize(binarize, likelihood, source, probe=256, skip_corrupt=False):
    """`"auto"` for a source: static for a likelihood that declares `auto_binarize` (a
    Bernoulli) and grey data (`tfvae.options.resolve_binarize`, which also refuses a mode
    the likelihood does not accept).

    Whether the data are grey comes from the source's `binary` where known (a
    prepared record folder records it), else from its first `probe` examples
    (read only when it matters).
    """
    from tfvae import builders

    def grey():
        binary = source.binary
        if binary is None:
            x = source.take(probe, skip_corrupt)[0].astype(np.float32)
            binary = bool(np.all((x == 0) | (x == source.scale)))
        return not binary

    head, name = builders.likelihood_and_name(likelihood)
    return options.resolve_binarize(binarize, head, grey, name)


def _size_mismatch(message):
    """The one-line error of `ImageFolderSource`'s size assertion, or None."""
    found = re.search(r"must have one size.*?expected\] \[(\d+)\] \[(\d+)\] \[but\] "
                      r"\[(.*?)\] \[is\] \[(\d+) (\d+)\]", message)
    if not found:
        return None
    h, w, path, got_h, got_w = found.groups()
    return (f"Received an invalid value for `dataset`: all images must have one size, or pass "
            f"--image-size H,W to resize them: {path!r} is {got_h}x{got_w}, expected {h}x{w} "
            "(the first image's size).")


@contextlib.contextmanager
def reading(source, skip_corrupt=False):
    """Turns a stream's read or decode error into a one-line `ValueError` naming the file.

    On a TF read/decode error inside the block, the source is scanned for its
    first unreadable file; if one is found the error names it (and the way to
    skip such files), else the original error propagates.
    """
    try:
        yield
    except READ_ERRORS as error:
        size_error = _size_mismatch(str(getattr(error, "message", error)))
        if size_error:
            raise ValueError(size_error) from None
        found = source.find_unreadable()
        if found is None:
            raise
        path, reason = found
        hint = "" if skip_corrupt else " (pass --skip-corrupt to skip such examples)"
        raise ValueError(f"Received an invalid value for `dataset`: {path!r} cannot be read: "
                         f"{reason}{hint}.") from None
