"""The data of a training run: its splits checked, prepared and turned into pipelines.

Two kinds of dataset reach a run (`tfvae.data.is_streamed`): small ones loaded
into memory (the built-in datasets, `.npy`/`.npz` files), checked whole and fed
through `data.make_dataset` as before; and streamed ones (image folders,
prepared TFRecord folders and globs, TFDS), which are never held in memory:
their sources are opened and checked (files listed, the first example read,
counts where the source knows them) before the run's output is touched, and
every pass over them is a `tf.data` pipeline (`sources.pipeline`). Either way
`load` returns one `RunData`, so training, evaluation and the report do not
ask which kind they have.
"""

import contextlib
import dataclasses
import logging

from tfvae import data as data_lib
from tfvae import sources as sources_lib

__all__ = [
    "EVAL_BATCH",
    "from_arrays",
    "from_sources",
    "held_out_pipeline",
    "held_out_sample",
    "num_classes_of",
    "open_sources",
    "reading",
    "RunData",
    "SAMPLE_EXAMPLES",
    "skipped_examples",
    "stream_modes",
    "train_size",
]

logger = logging.getLogger(__name__)

# Held-out examples kept in memory for figures, TensorBoard images and the gap split.
SAMPLE_EXAMPLES = 2000
# Examples per batch of the held-out evaluation (as `tfvae.evaluation` batches arrays).
EVAL_BATCH = 256


@dataclasses.dataclass
class RunData:
    """What a run trains and evaluates on.

    Attributes:
      input_shape: one example's shape.
      train_size: training examples (None if the source cannot tell without reading it).
      num_classes: the classes a conditional run conditions on (None otherwise).
      train: the training batches (`x`, or `(x, y)` for a conditional run), reshuffled each epoch.
      validation: the validation batches, in order.
      held_out: `(data, y)` for `tfvae.evaluation`: arrays and their conditions, or a
        `tf.data.Dataset` of validation batches and `None`.
      sample: `(x, labels)`: the first validation examples (all of them in memory,
        at most `SAMPLE_EXAMPLES` streamed), prepared, with the dataset's labels or None.
      streamed: whether the data are streamed.
      sources: the streamed `tfvae.sources.Source`s (for naming an unreadable file).
      description: what `metrics.json` records about the data.
    """

    input_shape: tuple
    train_size: int | None
    num_classes: int | None
    train: object
    validation: object
    held_out: tuple
    sample: tuple
    streamed: bool = False
    sources: tuple = ()
    description: dict = dataclasses.field(default_factory=dict)

    def reading(self, skip_corrupt=False):
        """A context in which a stream's unreadable file becomes a one-line `ValueError`."""
        if not self.sources:
            return contextlib.nullcontext()
        return reading(self.sources, skip_corrupt)


@contextlib.contextmanager
def reading(sources, skip_corrupt=False):
    """A context in which an unreadable file of any of `sources` becomes a one-line error."""
    with contextlib.ExitStack() as stack:
        for source in sources:
            stack.enter_context(sources_lib.reading(source, skip_corrupt))
        yield


def from_arrays(config, splits, num_classes):
    """`RunData` of in-memory splits `((x_train, y_train), (x_val, y_val))`, prepared."""
    (x_train, y_train), (x_val, y_val) = splits
    conditions = (None, None) if num_classes is None else (y_train, y_val)
    train = data_lib.make_dataset(x_train, config.batch_size, seed=config.seed,
                                  dynamic_binarize=config.binarize == "dynamic",
                                  y=conditions[0])
    validation = data_lib.make_dataset(x_val, config.batch_size, shuffle=False, y=conditions[1])
    return RunData(
        input_shape=tuple(x_train.shape[1:]), train_size=len(x_train), num_classes=num_classes,
        train=train, validation=validation, held_out=(x_val, conditions[1]),
        sample=(x_val, y_val),
        description={"train_examples": int(len(x_train)), "validation_examples": int(len(x_val)),
                     "streamed": False})


def open_sources(config, dataset=None, workers=1):
    """The checked `{split: Source}` of a run's streamed dataset (nothing is read in bulk).

    Args:
      config: the run's `RunConfig`.
      dataset: the dataset. Default value: the run's own.
      workers: the processes of a multi-worker run; each reads its own shards, so a
        split in shards needs at least this many. Default value: `1`.

    Raises:
      ValueError: a split that is empty or too small, or in fewer shards than
        workers; splits of different shapes.
    """
    dataset = config.dataset if dataset is None else dataset
    found = data_lib.source_splits(
        dataset, seed=config.seed, image_size=tuple(config.image_size) or None,
        channels=config.image_channels or None)
    for split, minimum in (("train", 2), ("validation", 1)):
        source = found[split]
        size = source.size
        if size is None:  # a hash split of unsplit shards: read until `minimum` examples
            size = len(source.take(minimum, config.skip_corrupt)[0])
        if size < minimum:
            raise ValueError(
                f"Received an invalid value for `dataset`: the {split} split of dataset "
                f"{dataset!r} has {size} examples; training needs at least {minimum}. "
                f"Received: dataset={dataset!r}")
    for split in ("train", "validation"):
        shards = found[split].files
        if shards is not None and len(shards) < workers:
            raise ValueError(
                f"Received an invalid value for `dataset`: its {split} split has {len(shards)} "
                f"shard(s) for {workers} workers, and each worker reads its own shards; "
                f"prepare the data with at least as many shards as workers (tfvae "
                f"prepare-data ... --shards {workers}). Received: dataset={dataset!r}")
    if found["train"].event_shape != found["validation"].event_shape:
        raise ValueError(
            f"Received an invalid value for `dataset`: its training examples have shape "
            f"{found['train'].event_shape} and its validation examples "
            f"{found['validation'].event_shape}. Received: dataset={dataset!r}")
    return found


def stream_modes(config, source):
    """`(train_mode, held_out_mode)`: the binarisation of a streamed run's two splits.

    As for arrays (`runs.load_dataset`): the training split draws statically
    (seed `config.seed`) or afresh every batch (dynamic); held-out data get
    one fixed draw (seed `config.seed + 1`) under either.
    """
    mode = sources_lib.resolve_binarize(config.binarize, config.likelihood, source,
                                        skip_corrupt=config.skip_corrupt)
    return mode, ("static" if mode == "dynamic" else mode)


def from_sources(config, found, num_classes):
    """`RunData` of streamed splits (see `open_sources`)."""
    train_source, val_source = found["train"], found["validation"]
    conditional = num_classes is not None
    train_mode, held_mode = stream_modes(config, train_source)
    train = sources_lib.pipeline(train_source, config.batch_size, config.likelihood, train_mode,
                                 shuffle=True, seed=config.seed, labels=conditional,
                                 skip_corrupt=config.skip_corrupt)
    validation = held_out_pipeline(config, val_source, config.batch_size, labels=conditional,
                                   mode=held_mode)
    with sources_lib.reading(val_source, config.skip_corrupt):
        sample = held_out_sample(config, val_source, max(SAMPLE_EXAMPLES, config.gap_examples),
                                  mode=held_mode)
    return RunData(
        input_shape=train_source.event_shape, train_size=train_source.size,
        num_classes=num_classes, train=train, validation=validation,
        held_out=(held_out_pipeline(config, val_source, EVAL_BATCH, labels=conditional,
                                    mode=held_mode), None),
        sample=sample, streamed=True,
        sources=(train_source, val_source),
        description={"train_examples": train_source.size,
                     "validation_examples": val_source.size, "streamed": True,
                     "train_source": train_source.name, "validation_source": val_source.name})


def held_out_pipeline(config, source, batch_size, labels, mode=None):
    """A streamed split's batches prepared as the run's held-out data (one fixed draw)."""
    if mode is None:
        mode = stream_modes(config, source)[1]
    return sources_lib.pipeline(source, batch_size, config.likelihood, mode,
                                seed=config.seed + 1, labels=labels,
                                skip_corrupt=config.skip_corrupt)


def held_out_sample(config, source, n, mode=None):
    """The first `n` examples of a streamed split, prepared as held-out data, and their labels."""
    if mode is None:
        mode = stream_modes(config, source)[1]
    x, y, ids = source.take(n, config.skip_corrupt)
    x = sources_lib.prepare_batch(x, ids, source.scale, config.likelihood, mode,
                                  config.seed + 1).numpy()
    return x, y


def num_classes_of(config, found):
    """The number of classes of a conditional streamed run (None if not conditional)."""
    if not config.conditional:
        return None
    source = found["train"]
    if not source.labelled or not source.num_classes:
        raise ValueError(
            "Received an invalid value for `conditional`: conditioning needs integer class "
            f"labels, and dataset {config.dataset!r} has none. Received: conditional=True")
    return int(source.num_classes)


def train_size(data):
    """The number of training examples, counting a stream that does not know it (one pass)."""
    if data.train_size is not None:
        return data.train_size
    source = data.sources[0]
    with sources_lib.reading(source):
        count = sum(int(b["x"].shape[0]) for b in source.batches(4096))
    logger.info("counted %d training examples in %s", count, source.name)
    return count


def skipped_examples(data):
    """`{split: count}` of the examples a `--skip-corrupt` run could not read (one read pass).

    Only for sources that know their size; a split whose size is unknown is left out.
    """
    counts = {}
    for split, source in zip(("train", "validation"), data.sources):
        if source.size is None:
            continue
        readable = sum(int(b["x"].shape[0]) for b in source.batches(4096, skip_corrupt=True))
        counts[split] = int(source.size - readable)
    return counts
