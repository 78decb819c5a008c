"""Datasets and input pipelines.

* `load_digits`: the built-in default, scikit-learn's 8×8 handwritten digits (offline).
* `load_shapes`: built-in procedural 32×32 shapes with known factors (`tfvae.shapes`);
  `load_factors` gives the factors of a split.
* `load_tfds`: TensorFlow Datasets by name (`TFDS_NAMES`), as 8-bit levels.
* `load_array_file`, `load_image_folder`: the user's own data.
* `prepare`: binarisation and the likelihood's own preparation (`prepare_data`: 8-bit
  levels, ...) of [0, 1] data.
* `make_dataset`: a `tf.data` pipeline (cache, shuffle, batch, dynamic binarisation, prefetch).
* `is_streamed`, `source_splits`: datasets read lazily (`tfvae.sources`): image folders,
  prepared TFRecord folders and globs, and TFDS splits.
"""

import contextlib
import logging
import os
import zipfile
import zlib

import numpy as np

from tfvae import _checks
from tfvae import options
from tfvae import records
from tfvae import shapes

__all__ = [
    "ALL",
    "as_sources",
    "BINARIZE",
    "BUILTIN_NAMES",
    "IMAGE_EXTENSIONS",
    "is_streamed",
    "load",
    "load_array_file",
    "load_digits",
    "load_factors",
    "load_image_folder",
    "load_shapes",
    "load_split",
    "load_tfds",
    "make_dataset",
    "MIN_EXAMPLES",
    "NPY_STREAM_BYTES",
    "prepare",
    "resolve_binarize",
    "source_splits",
    "SPLITS",
    "tfds_builder",
    "TFDS_NAMES",
    "to_levels",
    "whole_source",
]

logger = logging.getLogger(__name__)

# Name -> the split held out for validation.
TFDS_NAMES = {
    "mnist": "test",
    "fashion_mnist": "test",
    "binarized_mnist": "validation",
    "cifar10": "test",
}
# Datasets built into the library (offline), by name.
BUILTIN_NAMES = ("digits", "shapes")
# The splits a dataset can be asked for (`load_split`, `tfvae evaluate --split`).
SPLITS = ("train", "validation", "test")
# The `split` that means every example, in the dataset's own order (`encode`, `score`).
ALL = "all"
# `.npz` keys of predefined splits; the validation split may have any of these names.
_NPZ_VALIDATION_KEYS = ("x_valid", "x_val", "x_validation")
_NPZ_SPLIT_KEYS = {"train": ("x_train",), "validation": _NPZ_VALIDATION_KEYS, "test": ("x_test",)}
BINARIZE = options.BINARIZE
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
# The first bytes of a .npy file, and of a .npz (a zip archive; the second is an empty one).
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
# Examples a dataset needs for a train/validation split: one in each.
MIN_EXAMPLES = 2
# A .npy file larger than this is streamed from disk (`sources.NpySource`: a hash split of
# its rows), not loaded: in memory a dataset costs several times its size on disk.
NPY_STREAM_BYTES = 256 * 2**20


def load_digits(validation_fraction=0.2, seed=0):
    """scikit-learn's 1,797 real 8×8 handwritten digits, scaled to [0, 1].

    Args:
      validation_fraction: fraction held out for validation. Default value: `0.2`.
      seed: seed of the fixed shuffle before the split. Default value: `0`.

    Returns:
      `((x_train, y_train), (x_val, y_val))` with `x` float32 of shape
      `[n, 8, 8, 1]` (pixel intensities 0..16 divided by 16) and `y` int64 labels.
    """
    from sklearn import datasets

    digits = datasets.load_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]
    return _split(x, digits.target.astype("int64"), validation_fraction, seed)


def load_shapes(validation_fraction=0.2, seed=0):
    """Procedural 32×32 binary shapes with five known independent factors (`tfvae.shapes`).

    The dataset is the full product set of factor values (`shapes.all_factors`,
    20,808 images, in which the factors are exactly independent), split at
    random like every dataset without predefined splits.

    Args:
      validation_fraction: fraction held out for validation. Default value: `0.2`.
      seed: seed of the shuffle before the split. Default value: `0`.

    Returns:
      `((x_train, y_train), (x_val, y_val))` with `x` float32 0/1 pixels of shape
      `[n, 32, 32, 1]` and `y` the int64 shape class (`shapes.SHAPES`), a 1-D
      label like every dataset's; all five factors of a split come from
      `load_factors("shapes", split, validation_fraction, seed)`, row for row.
    """
    factors = shapes.all_factors()
    train, validation = _split(factors, factors, validation_fraction, seed)
    return tuple((shapes.render(f), f[:, 0]) for f, _ in (train, validation))


def load_factors(dataset, split="validation", validation_fraction=0.2, seed=0):
    """The known generative factors of a split, row for row with `load_split`'s images.

    Only the built-in `shapes` has known factors; every other dataset gives `None`,
    so a caller can write `if factors is not None: ...`. No images are rendered.

    Args:
      dataset: a dataset name or path (see `load`).
      split: `"train"` or `"validation"` (`shapes` has no test split).
        Default value: `"validation"`.
      validation_fraction: as given to `load` / `load_split`. Default value: `0.2`.
      seed: as given to `load` / `load_split`. Default value: `0`.

    Returns:
      `None`, or a dict: `factors` int64 `[n, 5]` (the rows of `load_split(dataset,
      split, validation_fraction, seed)`, in its order), `names`
      (`shapes.FACTOR_NAMES`) and `sizes` (`shapes.FACTOR_SIZES`).
    """
    split = _checks.one_of("split", split, SPLITS)
    if dataset != "shapes":
        return None
    if split == "test":
        raise ValueError(
            "Received an invalid value for `split`: 'shapes' has no test split (it has train "
            "and validation). Received: split='test'")
    factors = shapes.all_factors()
    train, validation = _split(factors, factors, validation_fraction, seed)
    rows = (train if split == "train" else validation)[0]
    return {"factors": rows, "names": shapes.FACTOR_NAMES, "sizes": shapes.FACTOR_SIZES}


def load_array_file(path, validation_fraction=0.2, seed=0):
    """Loads the user's own data from a `.npy` or `.npz` file.

    A `.npz` holds either one array `x` (and optional labels `y`), split at
    random, or predefined splits used as given: `x_train` with `x_valid` (or
    `x_val`, `x_validation`), optional `x_test`, and optional labels `y_*`
    named like their images (a file with `x_train` but no validation split
    has one carved from `x_train` at random). Images `[n, H, W]` get a
    channel axis; `uint8` intensities are scaled to [0, 1] (0/1 arrays are kept).
    Training needs `x` or `x_train`; a file of other splits only (`x_test`
    alone, say) is read one split at a time by `load_split`.

    Returns:
      `((x_train, y_train), (x_val, y_val))`; `y` is None without labels.
    """
    splits = _array_file_splits(path)
    if "train" not in splits:
        raise ValueError(
            f"Received an invalid value for `dataset`: {path!r} holds no training data: "
            f"training needs an array 'x' (split at random) or 'x_train' (with 'x_valid' / "
            f"'x_val' / 'x_validation'), and it holds {_member_list(path)}. Its splits can "
            "be evaluated one at a time (`tfvae evaluate --split`).")
    if "validation" in splits:
        for split in ("train", "validation"):
            _check_examples(splits[split][0], f"{path!r} ({split} split)", minimum=1)
        return splits["train"], splits["validation"]
    return _split(*splits["train"], validation_fraction, seed, source=repr(path))


def _array_file_splits(path):
    """`{split: (x, y)}` of an array file: `train` (all of `x`), or its predefined splits."""
    if not os.path.exists(path):
        raise ValueError(f"Received an invalid value for `dataset`: no such file {path!r}. "
                         "Use 'digits' or a path to a .npy/.npz file.")
    if not path.endswith((".npy", ".npz")):
        raise ValueError(f"Received an invalid value for `dataset`: {path!r} is not a .npy or "
                         ".npz file.")
    if not os.path.isfile(path):  # a FIFO or a device would block the read forever
        raise ValueError(f"Received an invalid value for `dataset`: {path!r} is not a regular "
                         "file.")
    _check_numpy_file(path)
    _check_declared_sizes(path)
    if path.endswith(".npy"):
        x = _read(path, "the array", lambda: np.load(path))
        return {"train": (_array(x, path, "the array", "train"), None)}
    archive = _read(path, "the archive", lambda: np.load(path))
    with archive:
        return _archive_splits(archive, path)


def _declared_bytes(f):
    """The bytes of array data a `.npy` header declares (read from the open file `f`)."""
    version = np.lib.format.read_magic(f)
    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                   else np.lib.format.read_array_header_2_0)
    shape, _, dtype = read_header(f)
    return int(np.prod(shape, dtype=object)) * dtype.itemsize, shape


def _check_declared_sizes(path):
    """Refuses a `.npy` (or `.npz` member) whose header declares more data than it holds,
    before anything is allocated (a 200-byte file can declare terabytes)."""
    if path.endswith(".npy"):
        members = [(os.path.basename(path), open(path, "rb"), os.path.getsize(path))]
    else:
        try:
            archive = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError):
            return  # _read says why
        with archive:
            for info in archive.infolist():
                with archive.open(info) as f:
                    _check_member(path, info.filename, f, info.file_size)
        return
    name, f, size = members[0]
    with f:
        _check_member(path, name, f, size)


def _check_member(path, name, f, size):
    try:
        declared, shape = _declared_bytes(f)
    except (ValueError, EOFError) as error:
        raise ValueError(f"Received an invalid value for `dataset`: {name!r} in {path!r} is not "
                         f"a NumPy array ({error}).") from None
    if declared > size:
        raise ValueError(f"Received an invalid value for `dataset`: {name!r} in {path!r} "
                         f"declares an array of shape {tuple(shape)} ({declared:,} bytes) but "
                         f"holds {size:,} bytes (truncated or crafted).")


def _read(path, name, load):
    """`load()`, with the errors of a corrupt or unsafe NumPy file as a `dataset` error."""
    try:
        return load()
    except (ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise ValueError(f"Received an invalid value for `dataset`: {name} in {path!r} cannot "
                         f"be read as NumPy data ({type(error).__name__}: {error}).") from error


def _check_numpy_file(path):
    """Refuses a file that starts like neither a `.npy` nor a `.npz` (zip) file.

    `np.load` would otherwise take it for a pickle and say it "contains pickled
    (object) data".
    """
    with open(path, "rb") as f:
        head = f.read(len(_NPY_MAGIC))
    if not head.startswith((_NPY_MAGIC, *_ZIP_MAGICS)):
        raise ValueError(f"Received an invalid value for `dataset`: {path!r} is not a valid "
                         "NumPy .npy/.npz file (it does not start with a .npy header or a "
                         "zip signature).")


def _archive_splits(archive, path):
    """`{split: (x, y)}` of a `.npz`, in the order train, validation, test: its predefined
    splits, whichever it holds (`train` is `x` in a file without `x_train`, and then
    only `x_test` is taken beside it)."""
    keys = list(archive)
    names = {split: next((k for k in candidates if k in keys), None)
             for split, candidates in _NPZ_SPLIT_KEYS.items()}
    if names["train"] is None and "x" in keys:
        names = {"train": "x", "test": names["test"]}
    if not any(names.values()):
        raise ValueError(
            f"Received an invalid value for `dataset`: {path!r} holds neither an array named "
            "'x' nor predefined splits ('x_train', 'x_valid' / 'x_val' / 'x_validation', "
            f"'x_test'); it holds {_member_list(path, keys)}.")
    return {split: _array_pair(archive, path, key, split)
            for split, key in names.items() if key is not None}


def _member_list(path, keys=None):
    """The arrays a `.npz` holds, for an error message: `'x_test' (10, 28, 28), 'y_test' (10,)`."""
    if not str(path).endswith(".npz"):
        return "one array (a .npy file)"
    try:
        with zipfile.ZipFile(path) as archive:
            shapes = {}
            for info in archive.infolist():
                with archive.open(info) as f:
                    shapes[info.filename[:-4] if info.filename.endswith(".npy")
                           else info.filename] = _declared_bytes(f)[1]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        shapes = dict.fromkeys(keys or ())
    if not shapes:
        return "no arrays"
    return ", ".join(repr(name) if shape is None else f"{name!r} {tuple(shape)}"
                     for name, shape in shapes.items())


def _array_pair(archive, path, key, split):
    """`(x, y)` of one split of an archive: images `key`, labels `y...` of the same length."""
    x = _array(_read(path, repr(key), lambda: archive[key]), path, repr(key), split)
    label_key = "y" + key[1:]
    if label_key not in archive:
        return x, None
    y = _read(path, repr(label_key), lambda: archive[label_key])
    if y.ndim < 1 or len(y) != len(x):
        raise ValueError(
            f"Received an invalid value for `dataset`: in {path!r}, {label_key!r} must hold one "
            f"label per example of {key!r} ({len(x)}). Received: {label_key!r} of shape "
            f"{y.shape}")
    return x, _class_indices(y, path, label_key)


def _class_indices(y, path, name):
    """Labels as int64 class indices: integers as they are, whole-number floats cast, and
    strings encoded by their sorted order (said in the log); anything else is refused."""
    if y.ndim == 1 and y.dtype.kind in "US":
        classes, indices = np.unique(y, return_inverse=True)
        logger.info("%s in %s: %d string labels encoded as class indices 0..%d in sorted "
                    "order (%s%s)", name, path, len(classes), len(classes) - 1,
                    ", ".join(map(str, classes[:5])), ", ..." if len(classes) > 5 else "")
        return indices.astype("int64")
    if y.ndim == 1 and y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
        return y.astype("int64")
    if y.ndim == 1 and y.dtype.kind in "iub":
        return y.astype("int64")
    sample = ", ".join(map(str, y.ravel()[:3]))
    raise ValueError(f"Received an invalid value for `dataset`: in {path!r}, {name!r} must hold "
                     "one class label per example (integers, whole numbers or strings). "
                     f"Received: {name!r} of dtype {y.dtype} and shape {y.shape} ({sample}, ...)")


def _array(x, path, name, split):
    """Images of a user's array file, checked to be finite numbers."""
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_) or x.ndim < 1:
        raise ValueError(f"Received an invalid value for `dataset`: in {path!r}, {name} "
                         f"({split} split) must be a numeric array [n, ...]. Received: dtype "
                         f"{x.dtype}, shape {x.shape}")
    if np.iscomplexobj(x):
        raise ValueError(f"Received an invalid value for `dataset`: in {path!r}, {name} "
                         f"({split} split) holds complex numbers; pass real values (e.g. the "
                         "magnitude or the real and imaginary parts as channels).")
    if x.dtype.kind == "f" and x.size:
        finite = np.isfinite(x)
        if not np.all(finite):
            raise ValueError(f"Received an invalid value for `dataset`: in {path!r}, {name} "
                             f"({split} split) holds {int(np.sum(~finite))} non-finite "
                             "value(s) (NaN or inf).")
        largest = float(np.max(np.abs(x)))
        if largest > float(np.finfo(np.float32).max):
            raise ValueError(f"Received an invalid value for `dataset`: in {path!r}, {name} "
                             f"({split} split) holds values up to {largest:g}, beyond float32's "
                             f"range (±{np.finfo(np.float32).max:.3g}); scale the data.")
    return _as_images(x)


def _as_images(x):
    """`[n, H, W]` gets a channel axis; 8-bit intensities are scaled to [0, 1] (0/1 arrays,
    e.g. binarised MNIST stored as uint8, are kept)."""
    if x.ndim == 3:
        x = x[..., None]
    if x.dtype == np.uint8 and x.size and x.max() > 1:
        return x.astype("float32") / 255.0
    return x.astype("float32")


def load_tfds(name, data_dir=None, splits=("train", "validation")):
    """Loads a TensorFlow Datasets image dataset into memory.

    Args:
      name: one of `TFDS_NAMES` (`mnist`, `fashion_mnist`, `binarized_mnist`, `cifar10`).
      data_dir: TFDS data directory. Default value: TFDS's default.
      splits: names from `SPLITS`; `validation` is the dataset's own validation
        split where it has one (`binarized_mnist`), else its test split.
        Default value: `("train", "validation")`.

    Returns:
      One `(x, y)` per split: `x` float32 in [0, 1] of shape `[n, H, W, C]`
      (binarized_mnist is already 0/1), `y` int64 labels or None.
    """
    if name not in TFDS_NAMES:
        raise ValueError(
            f"Received an invalid value for `dataset`: unknown dataset {name!r}. Known: "
            + ", ".join([*BUILTIN_NAMES, *TFDS_NAMES])
            + ", or a .npy/.npz file or a folder of images."
        )
    import tensorflow_datasets as tfds

    loaded = []
    for split in splits:
        split = TFDS_NAMES[name] if split == "validation" else _checks.one_of(
            "split", split, SPLITS)
        dataset = _tfds_load(tfds, name, split, data_dir)
        images, labels = [], []
        for batch in tfds.as_numpy(dataset.batch(4096)):
            images.append(batch["image"])
            if "label" in batch:
                labels.append(batch["label"])
        x = np.concatenate(images)
        # binarized_mnist stores 0/1 pixels; everything else 8-bit intensities.
        x = (x > 0).astype("float32") if name == "binarized_mnist" else x.astype("float32") / 255.0
        y = np.concatenate(labels).astype("int64") if labels else None
        loaded.append((x, y))
        logger.info("loaded %s[%s]: %s", name, split, x.shape)
    return tuple(loaded)


def _tfds_load(tfds, name, split, data_dir):
    """`tfds.load`, downloading and preparing the dataset on first use.

    A failed download (no network, a refused or interrupted connection, files
    that do not match their checksums) is a `ValueError` naming the dataset and
    the way around it.
    """
    with _downloading(tfds, name):
        return tfds.load(name, split=split, data_dir=data_dir)


def tfds_builder(name, data_dir=None):
    """The TFDS builder of `name`, its data downloaded and prepared on first use.

    Raises:
      ValueError: the download failed (see `load_tfds`), in one line.
    """
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=data_dir)
    with _downloading(tfds, name):
        builder.download_and_prepare()
    return builder


@contextlib.contextmanager
def _downloading(tfds, name):
    """Turns a failed TFDS download of `name` into a one-line `ValueError`."""
    try:
        yield
    except _download_errors(tfds) as error:
        reason = " ".join(f"{type(error).__name__}: {error}".split())
        raise ValueError(
            f"Received an invalid value for `dataset`: could not download TFDS dataset {name!r} "
            f"({reason}); pass a local .npz/.npy file or image folder with --dataset."
        ) from error


def _download_errors(tfds):
    """The exceptions a failed TFDS download raises (network errors are `OSError`s)."""
    from tensorflow_datasets.core.download import download_manager

    return (OSError, tfds.download.DownloadError, download_manager.NonMatchingChecksumError)


def load_image_folder(path, validation_fraction=0.2, seed=0, image_size=None, channels=None):
    """Loads a folder of images (PNG, JPEG, ...) into memory, scaled to [0, 1].

    The folder is read as `tfvae train` streams it (`source_splits`): images
    directly in `path` are unlabelled, images in sub-folders get the
    sub-folder's index (sorted by name) as their label, `train/` + `valid/`
    sub-folders are predefined splits, and otherwise the split is the stable
    hash of each file's relative path (`sources.hash_split`).

    Returns:
      `((x_train, y_train), (x_val, y_val))` with `x` `[n, H, W, C]` float32.
    """
    return _materialised(source_splits(path, validation_fraction, seed, image_size, channels),
                         ("train", "validation"))


def _materialised(found, splits):
    """`(x, y)` arrays of streamed splits, as `load` gives them (`x` float32 in [0, 1])."""
    from tfvae import sources

    loaded = []
    for split in splits:
        source = found[split]
        with sources.reading(source):
            x, y, _ = source.take(source.size if source.size is not None else 2**62)
        x = x.astype("float32")
        loaded.append((x / source.scale if source.scale != 1.0 else x, y))
    return tuple(loaded)


def _check_examples(x, source, minimum=MIN_EXAMPLES):
    """Refuses a dataset (or split) with fewer than `minimum` examples."""
    if len(x) < minimum:
        need = ("at least one example" if minimum == 1 else
                f"at least {minimum} examples (one to train on, one to validate on)")
        raise ValueError(f"Received an invalid value for `dataset`: {source} holds {len(x)} "
                         f"example(s); it needs {need}.")


def _split(x, y, validation_fraction, seed, source="the dataset"):
    """A random train/validation split of `x` (and its labels `y`)."""
    fraction = _checks.open_fraction("validation_fraction", validation_fraction)
    _check_examples(x, source)
    order = np.random.default_rng(_checks.non_negative_int("seed", seed)).permutation(len(x))
    # At least one example on each side.
    n_val = min(max(1, int(round(fraction * len(x)))), len(x) - 1)
    x = x[order]
    y = None if y is None else np.asarray(y)[order]
    pick = lambda a, s: None if a is None else a[s]  # noqa: E731
    return (x[n_val:], pick(y, slice(n_val, None))), (x[:n_val], pick(y, slice(None, n_val)))


def is_streamed(dataset):
    """Whether `dataset` is read lazily (`source_splits`) rather than loaded into memory.

    Streamed: a TFDS name, a folder (of images, or of TFRecord shards prepared by
    `tfvae prepare-data`), a `.tfrecord` file or glob, and a `.npy` file larger than
    `NPY_STREAM_BYTES`. Loaded into memory: the built-in `digits` and `shapes`,
    `.npz` files and smaller `.npy` files.
    """
    if not isinstance(dataset, (str, os.PathLike)) or dataset in BUILTIN_NAMES:
        return False
    dataset = os.fspath(dataset)
    return (dataset in TFDS_NAMES or os.path.isdir(dataset) or _is_record_pattern(dataset)
            or _is_large_npy(dataset))


def _is_large_npy(path):
    """A `.npy` file over `NPY_STREAM_BYTES` (read in chunks from disk, not loaded)."""
    return (path.endswith(".npy") and os.path.isfile(path)
            and os.path.getsize(path) > NPY_STREAM_BYTES)


def _is_record_pattern(dataset):
    """A `.tfrecord` path, a glob or comma-separated globs, or a remote (`gs://`) path."""
    return (records.EXTENSION in dataset or any(c in dataset for c in "*?[,")
            or "://" in dataset)


def source_splits(dataset, validation_fraction=0.2, seed=0, image_size=None, channels=None,
                  data_dir=None):
    """The splits of a streamed dataset (see `is_streamed`) as `tfvae.sources.Source`s.

    Predefined splits are used as given: a prepared folder's splits, an image
    folder's `train/`, `valid/` (or `validation/`, `val/`) and `test/`
    sub-folders, TFDS's splits. A single source is split at random by a stable
    hash of each example's key (`sources.hash_split`: its relative path, or
    the key stored in its record), which needs no data in memory and does not
    move examples between splits when more are appended.

    Args:
      dataset: a TFDS name, a folder or a TFRecord glob.
      validation_fraction: the random split's validation fraction. Default value: `0.2`.
      seed: the random split's seed. Default value: `0`.
      image_size: `(H, W)` for image folders: resize and center-crop every image.
        Default value: `None` (all images must have one size).
      channels: 1 or 3 for image folders. Default value: `None` (the first image's).
      data_dir: TFDS's data directory. Default value: TFDS's default.

    Returns:
      `{split: Source}` with `train` and `validation` (and `test` where the dataset has one).
    """
    from tfvae import sources

    fraction = _checks.open_fraction("validation_fraction", validation_fraction)
    seed = _checks.non_negative_int("seed", seed)
    dataset = os.fspath(dataset)
    if image_size is not None and not (os.path.isdir(dataset)
                                       and not _is_records_folder(dataset)):
        raise ValueError("Received an invalid value for `image_size`: it resizes the images of "
                         f"an image folder, and {dataset!r} is not one. Received: "
                         f"image_size={tuple(image_size)!r}")
    if _is_large_npy(dataset):
        whole = sources.NpySource(dataset)
        return {split: whole.subset((fraction, seed, split == "validation"),
                                    name=f"{dataset!r} ({split} split)")
                for split in ("train", "validation")}
    if dataset in TFDS_NAMES:
        splits = {"train": "train", "validation": TFDS_NAMES[dataset], "test": "test"}
        return {split: sources.TfdsSource(dataset, name, data_dir=data_dir,
                                          binary=dataset == "binarized_mnist")
                for split, name in splits.items()}
    if _is_records_folder(dataset):
        found = sources.record_splits(dataset)
        if "validation" in found:
            return found
        return _hash_split_records(found["train"], fraction, seed)
    if os.path.isdir(dataset):
        predefined = sources.folder_splits(dataset)
        if predefined:
            train = sources.ImageFolderSource(predefined["train"], image_size, channels,
                                              name=f"{dataset!r} (train/)")
            found = {"train": train}
            for split in ("validation", "test"):
                if split in predefined:
                    found[split] = sources.ImageFolderSource(
                        predefined[split], image_size, train.channels, classes=train.classes,
                        name=f"{dataset!r} ({os.path.basename(predefined[split])}/)")
            return found
        whole = sources.ImageFolderSource(dataset, image_size, channels)
        _check_examples(whole.keys, f"image folder {dataset!r}")
        validation = sources.hash_split(whole.keys, fraction, seed).numpy()
        if validation.all() or not validation.any():
            raise ValueError(
                f"Received an invalid value for `dataset`: the random split of image folder "
                f"{dataset!r} (by the hash of each file's path, seed {seed}, validation "
                f"fraction {fraction}) puts all {len(validation)} images in one split; add "
                "images, change the seed or the fraction, or give train/ and valid/ "
                "sub-folders.")
        return {"train": whole.subset(~validation, name=f"{dataset!r} (train split)"),
                "validation": whole.subset(validation, name=f"{dataset!r} (validation split)")}
    return _hash_split_records(sources.glob_source(dataset), fraction, seed)


def as_sources(dataset, validation_fraction=0.2, seed=0, image_size=None, channels=None,
               data_dir=None):
    """Every split of any dataset as `tfvae.sources.Source`s (what `tfvae prepare-data` writes).

    Streamed datasets give `source_splits`; datasets loaded into memory give
    `ArraySource`s of the same splits a run on them uses (`load`, and a `.npz`'s
    `x_test`), so a run on the written records sees the same examples.
    """
    from tfvae import sources

    if is_streamed(dataset):
        return source_splits(dataset, validation_fraction, seed, image_size, channels, data_dir)
    if image_size is not None or channels is not None:
        raise ValueError("Received an invalid value for `image_size`: --image-size and "
                         f"--image-channels apply to image folders, and {dataset!r} is not one.")
    train, validation = load(dataset, validation_fraction, seed, data_dir)
    found = {"train": sources.ArraySource(*train, name=f"{dataset!r} (train split)"),
             "validation": sources.ArraySource(*validation,
                                               name=f"{dataset!r} (validation split)")}
    if str(dataset).endswith(".npz"):
        test = _array_file_splits(os.fspath(dataset)).get("test")
        if test is not None:
            found["test"] = sources.ArraySource(*test, name=f"{dataset!r} (test split)")
    return found


def _is_records_folder(path):
    import tensorflow as tf

    return tf.io.gfile.isdir(path) and tf.io.gfile.exists(os.path.join(path, records.METADATA))


def _hash_split_records(source, fraction, seed):
    """Train and validation `RecordSource`s of unsplit shards, by the hash of each key."""
    from tfvae import sources

    return {split: sources.RecordSource(
        source.files, source.event_shape, source.dtype, source.scale, source.labelled,
        num_classes=source.num_classes, binary=source.binary,
        keep=(fraction, seed, split == "validation"), name=f"{source.name} ({split} split)",
        pack=source.pack)
        for split in ("train", "validation")}


def load(dataset, validation_fraction=0.2, seed=0, data_dir=None):
    """Loads `dataset`: 'digits', 'shapes', a TFDS name, a .npy/.npz file or an image folder.

    The built-in names ('digits', 'shapes') come first: a folder named `shapes`
    in the working directory is loaded as `./shapes`.

    Returns:
      `((x_train, y_train), (x_val, y_val))`: predefined splits where the
      dataset has them, else a random split of `validation_fraction`.
    """
    if dataset == "digits":
        return load_digits(validation_fraction, seed)
    if dataset == "shapes":
        return load_shapes(validation_fraction, seed)
    if not isinstance(dataset, (str, os.PathLike)) or not str(dataset):
        raise ValueError("Received an invalid value for `dataset`, expected 'digits', 'shapes', "
                         "a TFDS name, a .npy/.npz file or a folder of images. Received: "
                         f"dataset={dataset!r}")
    dataset = os.fspath(dataset)
    if dataset in TFDS_NAMES:
        return load_tfds(dataset, data_dir=data_dir)
    if is_streamed(dataset):  # folders and record shards, read whole here
        return _materialised(source_splits(dataset, validation_fraction, seed),
                             ("train", "validation"))
    if dataset.endswith((".npy", ".npz")) or os.path.sep in dataset:
        return load_array_file(dataset, validation_fraction, seed)
    return load_tfds(dataset)  # raises, listing the known names


def load_split(dataset, split="validation", validation_fraction=0.2, seed=0, data_dir=None):
    """One split `(x, y)` of `dataset` (see `load`): `train`, `validation`, `test` or `all`.

    `train` and `validation` are the two halves `load` returns (the same
    random split for the same `seed`); `test` needs a dataset that has one: a
    TFDS name, or a `.npz` with `x_test`; `all` is every example in the
    dataset's own order (`all_examples`). A `.npz` needs only the split asked
    for: `x_test` (`y_test`) alone is its test split, `x_valid` alone its
    validation split, whatever other arrays it lacks.

    Raises:
      ValueError: the dataset has no such split (naming the arrays a `.npz` holds).
    """
    split = _checks.one_of("split", split, SPLITS + (ALL,))
    if split == ALL:
        return _materialised({ALL: whole_source(dataset)}, (ALL,))[0] if is_streamed(
            dataset) else _all_rows(dataset)
    if dataset in TFDS_NAMES:
        return load_tfds(dataset, data_dir=data_dir, splits=(split,))[0]
    if is_streamed(dataset):
        found = source_splits(dataset, validation_fraction, seed, data_dir=data_dir)
        if split not in found:
            raise ValueError(f"Received an invalid value for `split`: {dataset!r} has no "
                             f"{split} split (it has {', '.join(found)}). Received: "
                             f"split={split!r}")
        return _materialised(found, (split,))[0]
    if str(dataset).endswith((".npz", ".npy")):
        splits = _array_file_splits(os.fspath(dataset))
        # Given splits are taken as they are; `x` or `x_train` alone is split at random.
        if split == "test" or "train" not in splits or "validation" in splits:
            if split not in splits:
                raise ValueError(_no_split(dataset, split))
            _check_examples(splits[split][0], f"{dataset!r} ({split} split)", minimum=1)
            return splits[split]
    elif split == "test":
        raise ValueError(_no_split(dataset, split))
    train, validation = load(dataset, validation_fraction, seed, data_dir)
    return train if split == "train" else validation


def _no_split(dataset, split):
    """The error of a `split` that `dataset` (loaded into memory) does not have."""
    if not str(dataset).endswith(".npz"):
        return (f"Received an invalid value for `split`: {dataset!r} has no {split} split (a "
                f"TFDS name or a .npz with 'x_test' has one). Received: split={split!r}")
    wanted = " / ".join(repr(key) for key in _NPZ_SPLIT_KEYS[split])
    if split == "train":
        wanted += " or 'x' (split at random)"
    elif split == "validation":
        wanted += " (or 'x' / 'x_train' alone, split at random)"
    return (f"Received an invalid value for `split`: {dataset!r} has no {split} split: it "
            f"holds {_member_list(dataset)}, and a {split} split needs {wanted}. "
            f"Received: split={split!r}")


def _all_rows(dataset):
    """Every example of an in-memory dataset in its own order: a file's rows (its
    predefined splits one after another: train, validation, test), or the built-in
    dataset's (scikit-learn's order for digits, the factor grid's for shapes)."""
    if dataset == "digits":
        from sklearn import datasets

        digits = datasets.load_digits()
        return (digits.images / 16.0).astype("float32")[..., None], digits.target.astype("int64")
    if dataset == "shapes":
        factors = shapes.all_factors()
        return shapes.render(factors), factors[:, 0]
    if dataset in TFDS_NAMES:
        raise ValueError(f"Received an invalid value for `split`: a TFDS dataset is read by "
                         f"split; pass train, validation or test. Received: split={ALL!r}")
    if not str(dataset).endswith((".npy", ".npz")):
        load(dataset)  # not a file tfvae reads whole: load's own error
    parts = [part for split, part in _array_file_splits(os.fspath(dataset)).items()
             if split in ("train", "validation", "test")]
    x = np.concatenate([p[0] for p in parts])
    labelled = all(p[1] is not None for p in parts)
    return x, np.concatenate([p[1] for p in parts]) if labelled else None


def whole_source(dataset, image_size=None, channels=None, data_dir=None):
    """Every example of a streamed dataset in its own order, as one `sources.Source`:
    an image folder's files in sorted order (its split folders one after another),
    a prepared folder's splits one after another, a glob's shards, a `.npy`'s rows."""
    from tfvae import sources

    dataset = os.fspath(dataset)
    if dataset in TFDS_NAMES:
        return _all_rows(dataset)  # refused: TFDS is read by split
    if _is_large_npy(dataset):
        return sources.NpySource(dataset)
    if _is_records_folder(dataset):
        return sources.ChainSource(list(sources.record_splits(dataset).values()),
                                   name=repr(dataset))
    if os.path.isdir(dataset):
        predefined = sources.folder_splits(dataset)
        if not predefined:
            return sources.ImageFolderSource(dataset, image_size, channels)
        found = source_splits(dataset, image_size=image_size, channels=channels)
        return sources.ChainSource([found[s] for s in SPLITS if s in found],
                                   name=repr(dataset))
    return sources.glob_source(dataset)


def resolve_binarize(binarize, likelihood, x):
    """What `binarize="auto"` means for data `x` under `likelihood` (a name of
    `tfvae.builders.LIKELIHOODS` or a likelihood head): `"static"` when the likelihood
    declares `auto_binarize` (a Bernoulli, which would otherwise score grey values in
    [0, 1] with a cross-entropy, not a likelihood) and `x` is grey, else `"none"`
    (binary data, other likelihoods, and data out of range, which the likelihood then
    refuses). Other modes are returned as given, if the likelihood accepts them
    (`tfvae.options.resolve_binarize`)."""
    from tfvae import builders

    head, name = builders.likelihood_and_name(likelihood)
    return _resolve_binarize(binarize, head, name, x)


def _resolve_binarize(binarize, head, name, x):
    def grey():
        values = np.asarray(x)
        return bool(values.size and np.all((values >= 0) & (values <= 1))
                    and not np.all((values == 0) | (values == 1)))

    return options.resolve_binarize(binarize, head, grey, name)


def prepare(x, likelihood, binarize="none", seed=0):
    """Prepares [0, 1] data for a likelihood: binarised if asked, then as the likelihood
    declares (`prepare_data`: unchanged, 8-bit levels, ...).

    Args:
      x: float data in [0, 1].
      likelihood: a likelihood name (see `tfvae.builders.LIKELIHOODS`) or head.
      binarize: `"none"`, `"static"` (one fixed Bernoulli draw, the classic
        binarised MNIST protocol), `"dynamic"` (a fresh draw every epoch,
        done in `make_dataset`; returned unchanged here) or `"auto"`
        (`resolve_binarize`: static for a Bernoulli likelihood of grey data);
        the likelihood says which it accepts (`binarize_modes`).
        Default value: `"none"`.
      seed: seed of the static draw. Default value: `0`.

    Returns:
      float32 data: 8-bit levels 0..255 for the pixel likelihoods, else [0, 1].
    """
    x = np.asarray(x, dtype="float32")
    from tfvae import builders

    head, name = builders.likelihood_and_name(likelihood)
    binarize = _resolve_binarize(binarize, head, name, x)
    if binarize in ("static", "dynamic") and x.size and not (x.min() >= 0 and x.max() <= 1):
        raise ValueError(
            f"Received an invalid value for `binarize`: binarising draws Bernoulli(x) and "
            f"needs data in [0, 1]. Received: binarize={binarize!r} for data in "
            f"[{x.min()}, {x.max()}]")
    if binarize == "static":
        draw = np.random.default_rng(_checks.non_negative_int("seed", seed)).uniform(size=x.shape)
        x = (draw < x).astype("float32")
    return np.asarray(head.prepare_data(x), dtype="float32")


def make_dataset(x, batch_size, shuffle=True, seed=0, dynamic_binarize=False, y=None):
    """An input pipeline over in-memory data `x` (and conditions `y`).

    `cache` keeps the tensors, `shuffle` reshuffles every epoch, an optional
    map draws x_bin ~ Bernoulli(x) afresh for every batch, and `prefetch`
    overlaps input with training.

    Returns:
      A `tf.data.Dataset` of float32 batches `[batch_size] + x.shape[1:]`, or
      of `(x, y)` batches when `y` (labels or vectors, one per example) is given.
    """
    import tensorflow as tf

    batch_size = _checks.positive_int("batch_size", batch_size)
    x = np.asarray(x, "float32")
    if y is not None and len(y) != len(x):
        raise ValueError(
            f"Received an invalid value for `y`, expected one per example ({len(x)}). "
            f"Received: y with {len(y)}"
        )
    elements = x if y is None else (x, np.asarray(y))
    dataset = tf.data.Dataset.from_tensor_slices(elements).cache()
    if shuffle:
        dataset = dataset.shuffle(min(len(x), 50_000), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size)
    if dynamic_binarize:
        generator = tf.random.Generator.from_seed(seed)

        def binarize(batch, *labels):
            binary = tf.cast(generator.uniform(tf.shape(batch)) < batch, tf.float32)
            return (binary, *labels) if labels else binary

        dataset = dataset.map(binarize)
    return dataset.prefetch(tf.data.AUTOTUNE)


def to_levels(x, num_levels=256):
    """Maps [0, 1] data to integer levels 0..num_levels-1 (as float32) for pixel likelihoods."""
    return np.round(np.clip(np.asarray(x), 0.0, 1.0) * (num_levels - 1)).astype("float32")
