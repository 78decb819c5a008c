"""A training run in an output directory: train, checkpoint, resume, evaluate, report.

Layout of a run directory::

    run.json          the run's configuration (marks the directory as a tfvae run)
    last.keras        the model after the latest finite epoch (for resuming)
    model.keras       the model with the best validation ELBO
                      (both hold their epoch count in `tfvae.json` inside the archive)
    history.csv       per-epoch metrics, train and validation
    metrics.json      held-out evaluation of model.keras
    *.png, report.md  figures and the report linking them
    .tfvae.lock       while a process trains the run: its PID and host

A run directory is changed as a transaction (see docs/guarantees.md): the
configuration and both data splits are checked before the output is touched;
every file is written to a temporary name and renamed over the old one
(`tfvae.files`); `--overwrite` moves the old run aside and deletes it only
once the new run has its first checkpoint; a lock file keeps out a second
writer; a loss that becomes NaN stops training and no NaN model is saved.
"""

import csv
import dataclasses
import inspect
import json
import logging
import os
import shutil
import tempfile
import zipfile

import keras
import numpy as np
import tensorflow as tf

from tfvae import _checks
from tfvae import builders
from tfvae import data as data_lib
from tfvae import callbacks as callbacks_lib
from tfvae import evaluation
from tfvae import files
from tfvae import objective_parts
from tfvae import options
from tfvae import report as report_lib
from tfvae import run_data
from tfvae import table_runs
from tfvae import training
from tfvae.model import VAE

__all__ = [
    "check_output",
    "compile_run",
    "condition_dim",
    "held_out",
    "held_out_stream",
    "is_chief",
    "learning_rate_of",
    "load_dataset",
    "load_model",
    "load_run",
    "make_strategy",
    "MAX_CLASSES",
    "MAX_SEED",
    "PRECISION_POLICIES",
    "raise_if_diverged",
    "read_config",
    "read_history",
    "resume_state",
    "RUN_FILE",
    "RunConfig",
    "RunOutput",
    "steps_per_epoch",
    "STRATEGIES",
    "TENSORBOARD_DIR",
    "tf_config",
    "train",
    "training_callbacks",
    "TrainingDiverged",
]

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
TENSORBOARD_DIR = "tensorboard"
MAX_CLASSES = 65_536  # a conditional run's one-hot width limit
MAX_SEED = 2**32 - 1  # Keras's and NumPy's seeds are 32-bit
STRATEGIES = ("default", "mirrored", "multiworker")
PRECISION_POLICIES = {"none": "float32", "float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}


class TrainingDiverged(ValueError):
    """Training stopped because the loss became NaN or infinite."""


def tf_config():
    """The cluster description in the `TF_CONFIG` environment variable (`{}` if unset).

    Raises:
      ValueError: `TF_CONFIG` is not a JSON object with a well-formed `task`.
    """
    text = os.environ.get("TF_CONFIG", "") or "{}"
    try:
        config = json.loads(text)
    except ValueError as error:
        raise ValueError(f"The TF_CONFIG environment variable is not valid JSON ({error}). "
                         f"Received: TF_CONFIG={text[:80]!r}") from None
    if not isinstance(config, dict):
        raise ValueError("The TF_CONFIG environment variable must be a JSON object with "
                         f"`cluster` and `task`. Received: TF_CONFIG={text[:80]!r}")
    task = config.get("task", {})
    cluster = config.get("cluster", {})
    if not isinstance(task, dict) or not isinstance(cluster, dict):
        raise ValueError("TF_CONFIG's `cluster` and `task` must be JSON objects. "
                         f"Received: TF_CONFIG={text[:80]!r}")
    index = task.get("index", 0)
    if task and (not isinstance(task.get("type"), str) or isinstance(index, bool)
                 or not isinstance(index, int) or index < 0):
        raise ValueError("TF_CONFIG's `task` needs a `type` (e.g. 'worker') and an integer "
                         f"`index` >= 0. Received: TF_CONFIG={text[:80]!r}")
    return config


def make_strategy(name):
    """The `tf.distribute` strategy for `--strategy`.

    `mirrored` replicates over this machine's GPUs (or its CPU); `multiworker`
    reads the cluster from `TF_CONFIG` and must be created before other TF ops.
    """
    _checks.one_of("strategy", name, STRATEGIES)
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        tf_config()  # a malformed TF_CONFIG is named before TensorFlow reads it
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def _num_workers():
    """The number of processes in the `TF_CONFIG` cluster (1 without one)."""
    cluster = tf_config().get("cluster", {})
    return max(1, sum(len(cluster.get(kind, [])) for kind in ("chief", "worker")))


def is_chief():
    """Whether this process writes the run's files (always true outside multi-worker runs)."""
    config = tf_config()
    task = config.get("task", {})
    if not task:
        return True
    if "chief" in config.get("cluster", {}):
        return task.get("type") == "chief"
    return task.get("type") == "worker" and int(task.get("index", 0)) == 0


@dataclasses.dataclass
class _RunConfig:
    """Everything that defines a training run (saved as `run.json`).

    Beside the fields below, every named part's own hyperparameters
    (`builders.hyperparameters()`: the objectives' `k`, `mi_weight`, ...; the
    posteriors') are fields with their declared defaults (`RunConfig`).
    """

    dataset: str = "digits"
    architecture: str = "mlp"
    latent_dim: int = 8
    likelihood: str = "bernoulli"
    posterior: str = "diagonal"
    prior: str = "standard_normal"
    hidden_units: tuple = (256, 128)
    filters: tuple = (32, 64)
    beta: float = 1.0
    warmup_epochs: float = 0.0
    free_bits: float = 0.0
    num_samples: int = 1
    epochs: int = 150
    batch_size: int = 64
    learning_rate: float = 1e-3  # Adam's initial rate (chosen by measurement: README)
    lr_schedule: str = "cosine"  # decay to 0.1x over `epochs` (tfvae.training), or "constant"
    patience: int = 10
    seed: int = 0
    jit_compile: bool | None = None  # None: XLA for MLPs, and for conv nets on GPU
    steps_per_execution: int = 16
    eval_samples: int = 100
    binarize: str = "auto"  # static for a Bernoulli likelihood of grey data (data.resolve_binarize)
    strategy: str = "default"
    objective: str = "elbo"  # a registered objective (its hyperparameters: part fields below)
    mixed_precision: str = "none"
    top_latent_dim: int = 0  # z2's size for posterior="hierarchical" (0: latent_dim // 2)
    free_bits_groups: int = 0  # 0: free bits per example on the total KL
    conditional: bool = False  # condition encoder and decoder on the dataset's labels
    decompose_gap: bool = False  # split the held-out gap into amortization + approximation
    gap_examples: int = 500  # held-out examples whose q is optimised for that split
    gap_steps: int = 4000  # the most Adam steps per example for that split (stops when converged)
    tensorboard: bool = True  # TensorBoard logs in OUTPUT/tensorboard
    image_size: tuple = ()  # (H, W): resize and center-crop an image folder's images
    image_channels: int = 0  # 1 or 3 for an image folder (0: the first image's)
    skip_corrupt: bool = False  # skip unreadable examples of a streamed dataset

    def validate(self):
        """Checks every field, and the option rules of `tfvae.options`, before anything is built.

        Returns:
          `self` (with `hidden_units` and `filters` as tuples).
        """
        if not isinstance(self.dataset, str) or not self.dataset:
            raise ValueError("Received an invalid value for `dataset`, expected a dataset name "
                             f"or path. Received: dataset={self.dataset!r}")
        if not (self.jit_compile is None or isinstance(self.jit_compile, bool)):
            raise ValueError("Received an invalid value for `jit_compile`, expected True, False "
                             f"or None. Received: jit_compile={self.jit_compile!r}")
        _checks.one_of("architecture", self.architecture, builders.ARCHITECTURES)
        _checks.one_of("likelihood", self.likelihood, tuple(builders.LIKELIHOODS))
        _checks.one_of("posterior", self.posterior, tuple(builders.POSTERIORS))
        _checks.one_of("prior", self.prior, tuple(builders.PRIORS))
        options.check_binarize(self.binarize, builders.likelihood_of(self.likelihood),
                               self.likelihood)
        _checks.one_of("strategy", self.strategy, STRATEGIES)
        _checks.one_of("mixed_precision", self.mixed_precision, tuple(PRECISION_POLICIES))
        _checks.one_of("lr_schedule", self.lr_schedule, options.LR_SCHEDULES)
        for name, (spec, _) in _PART_FIELDS.items():
            setattr(self, name, spec.validate(name, getattr(self, name)))
        for name in ("latent_dim", "num_samples", "epochs", "batch_size", "patience", "eval_samples",
                     "steps_per_execution", "gap_examples", "gap_steps"):
            _checks.positive_int(name, getattr(self, name))
        for name in ("top_latent_dim", "free_bits_groups"):
            _checks.non_negative_int(name, getattr(self, name))
        for name in ("beta", "warmup_epochs", "free_bits"):
            _checks.non_negative_float(name, getattr(self, name))
        _checks.positive_float("learning_rate", self.learning_rate)
        _checks.non_negative_int("seed", self.seed)
        if self.seed > MAX_SEED:
            raise ValueError(f"Received an invalid value for `seed`, expected an integer in "
                             f"0..{MAX_SEED}. Received: seed={self.seed}")
        for name in ("conditional", "decompose_gap", "tensorboard", "skip_corrupt"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(
                    f"Received an invalid value for `{name}`, expected True or False. "
                    f"Received: {name}={getattr(self, name)!r}"
                )
        self.hidden_units = _checks.int_tuple("hidden_units", self.hidden_units)
        self.filters = _checks.int_tuple("filters", self.filters, allow_empty=False)
        self.image_size = _checks.int_tuple("image_size", self.image_size)
        if len(self.image_size) not in (0, 2):
            raise ValueError("Received an invalid value for `image_size`, expected (height, "
                             f"width). Received: image_size={self.image_size!r}")
        if self.image_channels not in (0, 1, 3) or isinstance(self.image_channels, bool):
            raise ValueError("Received an invalid value for `image_channels`, expected 1 "
                             "(greyscale), 3 (RGB) or 0 (the first image's). Received: "
                             f"image_channels={self.image_channels!r}")
        if not data_lib.is_streamed(self.dataset) and (self.image_size or self.skip_corrupt
                                                       or self.image_channels):
            raise ValueError(
                "Received an invalid value for `dataset`: --image-size, --image-channels and "
                "--skip-corrupt apply to streamed datasets (image folders, TFRecords, TFDS), "
                f"and {self.dataset!r} is loaded into memory. Received: dataset={self.dataset!r}")
        # The rules that relate options, stated once in tfvae.options (as for build_vae).
        # RunConfig writes 0 for "none" in top_latent_dim and free_bits_groups.
        options.check_prior_name(self.posterior, self.prior)
        options.check_top_latent_dim(self.top_latent_dim or None, self.posterior)
        posterior, prior = builders.part_classes(self.posterior, self.prior)
        objective = objective_parts.make_objective(self.objective, {
            name: getattr(self, name) for name, (_, kind) in _PART_FIELDS.items()
            if kind == "objective"})
        options.check_objective(objective, self.beta, self.free_bits, self.warmup_epochs)
        objective.check(posterior, prior)
        options.check_free_bits_groups(self.free_bits_groups or None, self.free_bits,
                                       self.objective, posterior, prior, self.latent_dim)
        # The number of classes is known only once the data are loaded; any
        # positive size stands in for it here (the rule is on the prior).
        options.check_condition_dim(1 if self.conditional else None, prior, name="conditional")
        return self

    @property
    def needs_dataset_size(self):
        """Whether the objective takes the number of training examples (β-TCVAE's N)."""
        return "dataset_size" in objective_parts.objective_class(self.objective).hyperparameters

    def model_kwargs(self, input_shape, condition_dim=None, dataset_size=None):
        """`tfvae.build_vae`'s arguments for this run, on data of shape `input_shape`.

        Under a KL warm-up β starts at 0 (`KLWarmup` raises it to `beta`).
        `condition_dim` is the number of classes of a conditional run, and
        `dataset_size` the number of training examples (β-TCVAE's N).
        """
        sized = self.needs_dataset_size
        return {
            **({"dataset_size": dataset_size} if sized else {}),
            "input_shape": tuple(input_shape),
            **{name: getattr(self, name) for name in _model_fields()},
            "beta": self.beta if self.warmup_epochs == 0 else 0.0,
            "top_latent_dim": self.top_latent_dim or None,
            "free_bits_groups": self.free_bits_groups or None,
            "condition_dim": condition_dim,
        }


# Settings a run.json written before they existed means by its silence (the behaviour of
# those versions), where that differs from RunConfig's default for a new run.
_LEGACY_DEFAULTS = {"lr_schedule": "constant"}

# build_vae / VAE arguments a run sets from a field of another meaning (`model_kwargs`).
_TRANSLATED = ("beta", "top_latent_dim", "free_bits_groups", "condition_dim", "dataset_size")


def _model_fields():
    """The RunConfig fields passed to `build_vae` as they are: those named like an argument
    of `build_vae` or `tfvae.VAE`, and every part's hyperparameter (`_PART_FIELDS`)."""
    arguments = set(inspect.signature(builders.build_vae).parameters)
    arguments |= set(inspect.signature(VAE.__init__).parameters)
    return tuple(f.name for f in dataclasses.fields(RunConfig)
                 if (f.name in arguments and f.name not in _TRANSLATED)
                 or f.name in _PART_FIELDS)


# The named parts' hyperparameters a run sets by flag (`builders.hyperparameters`):
# name -> (Hyperparameter, kind), read once, when RunConfig's fields are made from them.
_PART_FIELDS = {name: (spec, kind) for name, (spec, kind, _) in builders.hyperparameters().items()
                if spec.flag}


def _with_part_fields(base):
    """`base` with one field per part hyperparameter, at its declared default."""
    fields = [(name, spec.type, dataclasses.field(default=spec.default))
              for name, (spec, _) in _PART_FIELDS.items()]
    return dataclasses.make_dataclass("RunConfig", fields, bases=(base,),
                                      namespace={"__doc__": base.__doc__,
                                                 "__module__": base.__module__})


RunConfig = _with_part_fields(_RunConfig)


def check_output(directory, overwrite=False, resume=False):
    """Refuses an output directory `train` may not write; changes nothing.

    An existing non-empty directory is an error unless `resume` (continue it)
    or `overwrite` (replace it — only if it is a tfvae run directory), and a
    run still being trained by a live process is refused either way.
    """
    if isinstance(directory, str) and directory and os.path.islink(
            os.path.normpath(directory)):
        # --overwrite would rename the link, not the run it points to.
        raise ValueError(f"Received an invalid value for `output`: `{directory}` is a symbolic "
                         f"link; pass the folder it points to ({os.path.realpath(directory)}).")
    if not isinstance(directory, str) or not directory:
        raise ValueError("Received an invalid value for `output`, expected a directory path. "
                         f"Received: output={directory!r}")
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise ValueError(f"Received an invalid value for `output`: `{directory}` is a file, "
                         "not a directory. Choose another --output.")
    if os.path.isdir(directory):
        owner = files.RunLock.owner(directory)
        if owner is not None:
            action = "resume" if resume else "overwrite" if overwrite else "write"
            raise ValueError(
                f"Refusing to {action} `{directory}`: it is still being trained by "
                f"{files.RunLock.describe(owner)}."
            )
    if _holds_files(directory):
        is_run = os.path.exists(os.path.join(directory, RUN_FILE))
        if resume and not is_run:
            raise ValueError(f"Cannot resume: `{directory}` holds no {RUN_FILE}.")
        if not resume and not overwrite:
            raise ValueError(
                f"The output directory `{directory}` already holds files; refusing to "
                "overwrite them. Pass --overwrite to replace an earlier run, --resume to "
                "continue it, or choose another --output."
            )
        if not resume and not is_run:
            raise ValueError(
                f"Refusing to delete `{directory}`: it is not a tfvae run directory "
                f"(no {RUN_FILE}). Choose another --output."
            )
    elif resume and os.path.isdir(directory) and os.listdir(directory):
        # Only a stale lock or unfinished temporaries: a first start stopped before it
        # wrote run.json. There are no settings to resume with; a new start is allowed
        # (it cleans the leftovers).
        raise ValueError(f"Cannot resume: `{directory}` holds no run yet (its first start was "
                         f"stopped before it wrote {RUN_FILE}); start it again without "
                         "--resume.")
    elif resume:
        raise ValueError(f"Cannot resume: `{directory}` does not exist or is empty.")


def _holds_files(directory):
    """Whether `directory` holds anything but a (stale) lock and unfinished temporary files."""
    return os.path.isdir(directory) and not all(
        files.is_leftover(name) for name in os.listdir(directory))


def _lock_without_readers(directory):
    """The run's `RunLock`, taken only if no live process is reading the run."""
    lock = files.RunLock(directory).acquire()
    readers = files.ReadLock.readers(directory)
    if readers:
        lock.release()
        raise ValueError(
            f"Refusing to change `{directory}`: it is being read by "
            f"{', '.join(files.RunLock.describe(r) for r in readers)} (tfvae evaluate, encode, "
            "score, sample or export); wait until it ends.")
    return lock


class RunOutput:
    """A run directory being written, as a transaction, under the run's lock.

    `begin` takes the lock and, with `overwrite`, first moves the earlier run
    aside (to `.<name>.old-<pid>` beside it). `commit` deletes the earlier run
    (`train` calls it once an overwriting run is complete, report included, and
    at a new run's first checkpoint); `abort` before then puts the earlier run
    back, or removes a new run's files, so a retry is not refused. `close`
    releases the lock.

    Args:
      directory: the run directory.
      overwrite: replace an earlier run in `directory`. Default value: `False`.
      resume: continue the run in `directory` (nothing is ever removed).
        Default value: `False`.
    """

    def __init__(self, directory, overwrite=False, resume=False):
        check_output(directory, overwrite=overwrite, resume=resume)
        self.directory = directory
        self.overwrite = overwrite
        self.resume = resume
        self.aside = None
        self.created = False
        self.committed = False
        self._lock = None
        self._old_lock = None

    def begin(self):
        """Takes the lock (moving an earlier run aside with `overwrite`). Returns `self`.

        Raises:
          ValueError: another process trains or reads the run (naming its PID).
        """
        directory = self.directory
        if self.resume:
            self._lock = _lock_without_readers(directory)
            files.remove_temporaries(directory)
            return self
        try:
            if _holds_files(directory):
                self._old_lock = _lock_without_readers(directory)
                parent, name = os.path.split(os.path.normpath(directory))
                aside = os.path.join(parent, f".{name}.old-{os.getpid()}")
                os.rename(directory, aside)
                self.aside = aside
                self._old_lock.move_to(aside)
                logger.info("moved the earlier run %s aside to %s", directory, aside)
            self.created = not os.path.isdir(directory)
            os.makedirs(directory, exist_ok=True)
            self._lock = files.RunLock(directory).acquire()
            files.remove_temporaries(directory)
        except BaseException:
            self.abort()
            raise
        return self

    def commit(self, *unused):
        """The new run has a checkpoint: deletes the earlier run (once)."""
        self.committed = True
        if self.aside is not None:
            shutil.rmtree(self.aside)
            logger.info("deleted the earlier run (%s)", self.aside)
            self.aside, self._old_lock = None, None

    def abort(self):
        """Undoes `begin` if the new run has no checkpoint yet (never on resume)."""
        if self.resume or self.committed:
            return
        if self._lock is not None:
            self._lock.release()
            self._lock = None
            if self.created:
                shutil.rmtree(self.directory, ignore_errors=True)
            else:  # a directory that was empty before: everything in it is this run's
                for name in os.listdir(self.directory):
                    path = os.path.join(self.directory, name)
                    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        if self.aside is not None:
            if os.path.isdir(self.directory):
                os.rmdir(self.directory)
            os.rename(self.aside, self.directory)
            self._old_lock.move_to(self.directory)
            logger.info("restored the earlier run in %s", self.directory)
            self.aside = None
        if self._old_lock is not None:
            self._old_lock.release()
            self._old_lock = None

    def close(self):
        """Releases the lock."""
        if self._lock is not None:
            self._lock.release()


def _check_split(config, x, y, split, minimum):
    """Refuses a split with too few examples, non-finite values or misshapen labels."""
    name = f"the {split} split of dataset {config.dataset!r}"
    if len(x) < minimum:
        raise ValueError(
            f"Received an invalid value for `dataset`: {name} has {len(x)} examples; training "
            f"needs at least {minimum}. Received: dataset={config.dataset!r}")
    x = np.asarray(x)
    if np.issubdtype(x.dtype, np.floating) and not np.all(np.isfinite(x)):
        count = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
        raise ValueError(
            f"Received an invalid value for `dataset`: {name} contains {count} NaN or infinite "
            f"values. Received: dataset={config.dataset!r}")
    if y is not None and (np.ndim(y) != 1 or len(y) != len(x)):
        raise ValueError(
            f"Received an invalid value for `dataset`: {name} has labels of shape "
            f"{np.shape(y)} for {len(x)} examples (expected one label per example). "
            f"Received: dataset={config.dataset!r}")


def load_dataset(config):
    """Returns `((x_train, y_train), (x_val, y_val))`, checked and prepared for the likelihood.

    Both splits are checked before anything else happens: enough examples
    (2 for training, 1 for validation), finite values in the likelihood's
    range, one label per example. With dynamic binarisation the training data
    stay grey (the pipeline draws binary batches) and the validation data get
    one fixed draw.

    Raises:
      ValueError: naming `dataset` and the split at fault.
    """
    (x_train, y_train), (x_val, y_val) = data_lib.load(config.dataset, seed=config.seed)
    _check_split(config, x_train, y_train, "training", minimum=2)
    _check_split(config, x_val, y_val, "validation", minimum=1)
    if np.shape(x_train)[1:] != np.shape(x_val)[1:]:
        raise ValueError(
            f"Received an invalid value for `dataset`: its training examples have shape "
            f"{np.shape(x_train)[1:]} and its validation examples {np.shape(x_val)[1:]}. "
            f"Received: dataset={config.dataset!r}")
    if config.binarize in ("static", "dynamic"):
        for x, split in ((x_train, "training"), (x_val, "validation")):
            if np.size(x) and not (np.min(x) >= 0 and np.max(x) <= 1):
                raise ValueError(
                    "Received an invalid value for `binarize`: binarising draws Bernoulli(x) "
                    f"and needs data in [0, 1]; the {split} split of dataset "
                    f"{config.dataset!r} holds values in [{np.min(x)}, {np.max(x)}]. Received: "
                    f"binarize={config.binarize!r}")
    train_mode = "none" if config.binarize == "dynamic" else config.binarize
    x_train = data_lib.prepare(x_train, config.likelihood, train_mode, seed=config.seed)
    x_val = _prepare_held_out(config, x_val)
    # The run's likelihood head (no weights yet) states the range it can score.
    likelihood = builders.LIKELIHOODS[config.likelihood](x_train.shape[1:], 1.0)
    for x, split in ((x_train, "training"), (x_val, "validation")):
        try:
            likelihood.validate_data(x, name="dataset")
        except ValueError as error:
            raise ValueError(f"{error} (in the {split} split of dataset "
                             f"{config.dataset!r})") from None
    return (x_train, y_train), (x_val, y_val)


def _prepare_held_out(config, x):
    """Held-out data as the run scores it: one fixed binarisation draw if it binarises."""
    mode = data_lib.resolve_binarize(config.binarize, config.likelihood, x)
    mode = "static" if mode == "dynamic" else mode
    return data_lib.prepare(x, config.likelihood, mode, seed=config.seed + 1)


def _history_rows(path):
    """`(fieldnames, rows)` of a history CSV (`(None, [])` if there is none)."""
    if not os.path.exists(path):
        return None, []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def read_history(path):
    """A run's `history.csv` as `{metric: [per-epoch values]}` (`{}` if there is none)."""
    history = {}
    for row in _history_rows(path)[1]:
        for key, value in row.items():
            if key != "epoch":
                history.setdefault(key, []).append(float(value))
    return history


def _truncate_history(path, epochs):
    """Keeps the first `epochs` rows of the history (the epochs a checkpoint has seen)."""
    fieldnames, rows = _history_rows(path)
    if len(rows) <= epochs:
        if len(rows) < epochs:
            logger.warning("%s has %d rows for a checkpoint of %d epochs", path, len(rows), epochs)
        return
    logger.info("truncating %s to the checkpoint's %d epochs", path, epochs)
    with files.atomic_open(path) as f:
        writer = csv.DictWriter(f, fieldnames=fieldnames, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows[:epochs])


def read_config(path):
    """The `RunConfig` in a `run.json`, validated.

    Raises:
      ValueError: naming `path` and the problem (not JSON, not an object, an
        unknown setting, a bad value).
    """
    if os.path.exists(path) and not os.path.isfile(path):  # a FIFO would block the read
        raise ValueError(f"Cannot read `{path}`: it is not a regular file.")
    try:
        with open(path) as f:
            text = f.read()
    except OSError as error:
        raise ValueError(f"Cannot read `{path}`: {error.strerror or error}.") from None
    try:
        fields = json.loads(text)
    except ValueError as error:
        raise ValueError(f"`{path}` is not valid JSON ({error}); it should hold the run's "
                         "settings as written by `tfvae train`.") from None
    if not isinstance(fields, dict):
        raise ValueError(f"`{path}` should hold a JSON object of the run's settings. "
                         f"Received: a JSON {type(fields).__name__}")
    unknown = sorted(set(fields) - {field.name for field in dataclasses.fields(RunConfig)})
    if unknown:
        raise ValueError(f"`{path}` has unknown settings {unknown}; it should hold only the "
                         "settings `tfvae train` writes.")
    fields = {**_LEGACY_DEFAULTS, **fields}
    try:
        return RunConfig(**fields).validate()
    except (ValueError, TypeError) as error:
        raise ValueError(f"`{path}`: {error}") from None


def load_model(path):
    """Loads a `.keras` model file, or raises a one-line `ValueError` saying why it cannot."""
    if not os.path.exists(path):
        raise ValueError(f"`{path}` does not exist.")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"`{path}` is not a loadable Keras model (not a .keras zip archive: "
                         "truncated, or another kind of file).")
    try:
        return keras.saving.load_model(path)
    except OSError as error:
        if error.errno is not None:
            raise  # the machine's fault (a full disk, permissions), not the file's
        reason = " ".join(str(error).split())[:300]
        raise ValueError(f"`{path}` is not a loadable Keras model: {reason}") from error
    except Exception as error:  # noqa: BLE001  (whatever else fails, the file is unusable)
        reason = " ".join(str(error).split())[:300]
        raise ValueError(f"`{path}` is not a loadable Keras model: {reason}") from error


def _legacy_epoch(name, history):
    """The epoch of a checkpoint written without its `.json` record (tfvae 0.1.0)."""
    if name == "model.keras" and history.get("val_elbo"):
        return int(np.nanargmax(history["val_elbo"])) + 1
    return len(history.get("loss", []))


def _resume_model(output):
    """`(model, epochs)` from the newest loadable checkpoint, or `(None, 0)` if none loads."""
    history = read_history(os.path.join(output, "history.csv"))
    reasons = []
    for name in ("last.keras", "model.keras"):
        path = os.path.join(output, name)
        try:
            model = load_model(path)
        except ValueError as error:
            reasons.append(str(error))
            continue
        epoch = callbacks_lib.AtomicModelCheckpoint.read_epoch(path)
        if epoch is None:
            epoch = _legacy_epoch(name, history)
        if reasons:
            logger.warning("resuming %s from %s (epoch %d) because %s", output, name, epoch,
                           " ".join(reasons))
        else:
            logger.info("resuming %s from epoch %d", output, epoch)
        return model, epoch
    if any(os.path.exists(os.path.join(output, name)) for name in ("last.keras", "model.keras")):
        raise ValueError(f"Cannot resume `{output}`: no checkpoint loads ({' '.join(reasons)}) "
                         "Pass --overwrite to train it again from the start.")
    logger.warning("resuming %s from the start: it has no checkpoint yet", output)
    return None, 0


def train(config, output, overwrite=False, resume=False, verbose=1, epochs=None):
    """Trains, evaluates and reports a run. Returns the held-out metrics dict.

    The configuration and both data splits are checked before `output` is
    touched; `output` is then written under a lock, as a transaction (see
    `RunOutput`). In a multi-worker run every worker trains; only the chief
    locks and writes `output` (the others checkpoint into a temporary
    directory) and reports.

    Args:
      config: a `RunConfig` (ignored with `resume`: the run's own `run.json` is used).
      output: the run directory.
      overwrite: replace an earlier run in `output`. Default value: `False`.
      resume: continue the run in `output` from its newest loadable checkpoint.
        Default value: `False`.
      verbose: Keras's progress output. Default value: `1`.
      epochs: if not None, the run's epoch budget (with `resume`: extends or
        shortens the saved one, recorded in `run.json`). Default value: `None`.

    Raises:
      TrainingDiverged: the loss became NaN or infinite (the last finite
        checkpoint is kept).
      ValueError: a bad configuration, dataset or output directory.
    """
    if resume:
        check_output(output, resume=True)
        config = read_config(os.path.join(output, RUN_FILE))
    if epochs is not None:
        config = dataclasses.replace(config, epochs=epochs)
    # Before other TF ops (multi-worker collectives need that), from the run's own config.
    strategy = make_strategy(config.strategy)
    config.validate()
    chief = is_chief()
    if chief:
        check_output(output, overwrite=overwrite, resume=resume)  # refusals before loading data
    data = _open_data(config)
    run_output = None
    if not chief:
        output = tempfile.mkdtemp(prefix="tfvae-worker-")
    else:
        run_output = RunOutput(output, overwrite=overwrite, resume=resume).begin()
    previous_policy = keras.mixed_precision.global_policy()
    try:
        if chief and not resume:
            files.write_json(os.path.join(output, RUN_FILE), dataclasses.asdict(config))
        keras.mixed_precision.set_global_policy(PRECISION_POLICIES[config.mixed_precision])
        # A new run is kept from its first checkpoint on (`--resume` continues it); an
        # overwrite replaces the earlier run only once the new one is complete, report
        # included, and any failure before then puts the earlier run back.
        keep_early = run_output is not None and not overwrite
        metrics = _train(config, output, strategy, resume, verbose, report=chief, data=data,
                         on_checkpoint=run_output.commit if keep_early else None)
        if chief and resume and epochs is not None:
            # A resumed run's new epoch budget is recorded once it has trained to it, so a
            # failed resume leaves run.json as it was.
            files.write_json(os.path.join(output, RUN_FILE), dataclasses.asdict(config))
        if run_output is not None:
            run_output.commit()
        return metrics
    except BaseException:
        if run_output is not None:
            run_output.abort()
        raise
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
        if run_output is not None:
            run_output.close()


def _open_data(config):
    """The run's `RunData`: splits loaded and checked, or streamed sources opened and checked."""
    if data_lib.is_streamed(config.dataset):
        workers = _num_workers() if config.strategy == "multiworker" else 1
        found = run_data.open_sources(config, workers=workers)
        return run_data.from_sources(config, found, run_data.num_classes_of(config, found))
    splits = load_dataset(config)
    return run_data.from_arrays(config, splits, condition_dim(config, splits[0][1], splits[1][1]))


def learning_rate_of(config, train_size=None):
    """Adam's learning rate for a run: `config.learning_rate`, or (`lr_schedule="cosine"`)
    a `CosineDecay` from it to 0.1x over the run's `epochs` × `steps_per_epoch` steps,
    read at the optimizer's step count (`tfvae.training.learning_rate_schedule`).
    `train_size` (the training examples) is needed for a schedule only."""
    total_steps = (None if config.lr_schedule == "constant"
                   else config.epochs * steps_per_epoch(config, train_size))
    return training.learning_rate_schedule(config.lr_schedule, config.learning_rate,
                                           total_steps)


def steps_per_epoch(config, train_size):
    """The optimizer steps in one epoch of a run with `train_size` training examples:
    ⌈N / batch⌉, shared out between the workers of a multi-worker run (each reads its
    own part of the data in batches of `batch_size`, and they step together)."""
    batches = -(-train_size // config.batch_size)
    workers = _num_workers() if config.strategy == "multiworker" else 1
    return max(1, -(-batches // workers))


def condition_dim(config, y_train, y_val=None):
    """The number of classes a conditional run conditions on (None if not conditional)."""
    if not config.conditional:
        return None
    labels = [y for y in (y_train, y_val) if y is not None]
    if y_train is None or not all(np.issubdtype(np.asarray(y).dtype, np.integer) for y in labels):
        raise ValueError(
            "Received an invalid value for `conditional`: conditioning needs integer class "
            f"labels, and dataset {config.dataset!r} has none. Received: conditional=True"
        )
    if min(int(np.min(y)) for y in labels) < 0:
        raise ValueError("Received an invalid value for `conditional`: the dataset's labels "
                         "must be non-negative class indices.")
    num_classes = max(int(np.max(y)) for y in labels) + 1
    if num_classes > MAX_CLASSES:
        # Labels are class indices 0..C-1, one-hot encoded: a huge index would
        # make a huge one-hot (a label of 1e9: gigabytes per batch).
        raise ValueError(
            "Received an invalid value for `conditional`: the dataset's largest label is "
            f"{num_classes - 1}; labels must be class indices 0..C-1 with at most "
            f"{MAX_CLASSES} classes.")
    return num_classes


def _train(config, output, strategy, resume, verbose, report, data, on_checkpoint=None):
    """Trains the run in `output` and, on the chief, evaluates and reports it.

    The steps: seed the process; build (or resume) and compile the model under
    `strategy`; fit it with the run's callbacks; refuse a diverged run; then
    (`report` only) evaluate `model.keras` and write `metrics.json`, the
    figures and `report.md`.

    Args:
      config: the run's checked `RunConfig`.
      output: the run directory (a temporary directory on a non-chief worker).
      strategy: the `tf.distribute` strategy to build and train under.
      resume: continue from the run's newest loadable checkpoint.
      verbose: Keras's progress output.
      report: whether this process evaluates and reports (the chief).
      data: the run's `RunData`.
      on_checkpoint: called after each `last.keras` is written, or `None`.
        Default value: `None`.

    Returns:
      The held-out metrics dict (`{}` when not `report`).

    Raises:
      TrainingDiverged: the loss became NaN or infinite.
    """
    # The application layer seeds the process (data pipeline, Keras's global
    # state); build_vae itself seeds only the model's own weights and noise.
    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        model, initial_epoch, history = _model_to_train(config, output, resume, data)
    stop, callbacks = training_callbacks(config, output, history, resume, on_checkpoint, data)
    _fit(model, config, data, initial_epoch, callbacks, verbose)
    raise_if_diverged(stop, output, report)
    if not report:
        return {}
    best, history, metrics = _evaluate(config, output, data)
    _write_report(config, output, data, best, history, metrics)
    return metrics


def _model_to_train(config, output, resume, data):
    """The compiled model to train: resumed from `output`'s checkpoint, or new.

    Call under the run's strategy scope. On a resume, `history.csv` is first
    cut back to the checkpoint's epoch.

    Returns:
      `(model, initial_epoch, history)`: the compiled model, the epochs it has
      trained, and the history so far as `{metric: [per-epoch values]}` (`{}` for
      a new run).
    """
    model, initial_epoch, history = resume_state(output) if resume else (None, 0, {})
    # The training examples N (counted if the source does not know them): β-TCVAE's N
    # for a new model, and the length of a decaying learning rate.
    size = run_data.train_size(data) if config.lr_schedule != "constant" or (
        model is None and config.needs_dataset_size) else None
    if model is None:
        model = builders.build_vae(**config.model_kwargs(
            data.input_shape, data.num_classes, dataset_size=size))
    compile_run(model, config, size, resumed=initial_epoch > 0)
    return model, initial_epoch, history


def resume_state(output):
    """What a resumed run starts from: its newest loadable checkpoint, and its history.

    `history.csv` is first cut back to the checkpoint's epoch (it may run an
    epoch ahead after a kill).

    Returns:
      `(model, initial_epoch, history)`: the checkpoint's model (`None` if the run
      has none yet), the epochs it has trained, and the history so far as
      `{metric: [per-epoch values]}`.

    Raises:
      ValueError: the run has checkpoints and none of them loads.
    """
    history_path = os.path.join(output, "history.csv")
    model, initial_epoch = _resume_model(output)
    _truncate_history(history_path, initial_epoch)
    return model, initial_epoch, read_history(history_path)


def compile_run(model, config, train_size, resumed):
    """Compiles `model` with Adam at the run's learning rate and its execution settings.

    XLA and steps per execution follow `tfvae.options.execution` (which turns
    both off under a distribution strategy). A resumed model keeps its
    optimizer: Adam's moments and the step count (which drives the in-graph β
    warm-up and the learning-rate schedule). A scheduled rate is set again from
    run.json, so a resume that changes --epochs stretches the decay over the
    new budget from the step it stopped at.

    Args:
      model: the model to compile (a resumed one has its optimizer).
      config: the run's `RunConfig`.
      train_size: the training examples (needed for a learning-rate schedule only).
      resumed: whether `model` was loaded from a checkpoint with epochs trained.
    """
    jit_compile, steps_per_execution = options.execution(
        config.jit_compile, config.steps_per_execution, config.architecture,
        strategy=config.strategy, gpu=bool(tf.config.list_physical_devices("GPU")))
    learning_rate = learning_rate_of(config, train_size)
    optimizer = model.optimizer if resumed else keras.optimizers.Adam(learning_rate)
    if resumed and config.lr_schedule != "constant":
        optimizer.learning_rate = learning_rate
    model.compile(
        optimizer=optimizer,
        jit_compile=jit_compile,
        steps_per_execution=steps_per_execution,
    )


def training_callbacks(config, output, history, resume=False, on_checkpoint=None, data=None):
    """A run's training callbacks (image and table runs alike).

    Checkpoints and early stopping follow the held-out ELBO (unlike val_loss it
    does not move with β); `model.keras` is replaced only by an epoch better than
    the best in `history`. The history is written before the checkpoints: it
    may run one epoch ahead of last.keras after a kill, and a resume truncates
    it.

    Args:
      config: the run's `RunConfig`.
      output: the run directory.
      history: the history so far, `{metric: [per-epoch values]}` (`{}` for a new run).
      resume: append to `history.csv` instead of starting it. Default value: `False`.
      on_checkpoint: called after each `last.keras` is written. Default value: `None`.
      data: the run's `RunData`, for the TensorBoard logs (with `config.tensorboard`);
        `None` writes none. Default value: `None`.

    Returns:
      `(stop, callbacks)`: the `StopOnNonFinite` among them (it records a
      divergence), and the list to pass to `fit`.
    """
    finite = [v for v in history.get("val_elbo", []) if np.isfinite(v)]
    best_so_far = max(finite) if finite else None
    stop = callbacks_lib.StopOnNonFinite()
    callbacks = [
        stop,
        callbacks_lib.AtomicCSVLogger(os.path.join(output, "history.csv"), append=resume),
        callbacks_lib.AtomicModelCheckpoint(os.path.join(output, "model.keras"),
                                            monitor="val_elbo", mode="max",
                                            initial_value_threshold=best_so_far),
        callbacks_lib.AtomicModelCheckpoint(os.path.join(output, "last.keras"),
                                            on_save=on_checkpoint),
        keras.callbacks.EarlyStopping(monitor="val_elbo", mode="max", patience=config.patience),
    ]
    if config.warmup_epochs > 0:
        callbacks.append(callbacks_lib.KLWarmup(config.warmup_epochs, end=config.beta))
    if config.tensorboard and data is not None:
        callbacks.extend(_tensorboard_callbacks(output, data))
    return stop, callbacks


def _tensorboard_callbacks(output, data):
    """TensorBoard logging in `output/tensorboard`.

    Scalars (the epoch logs: ELBO terms, β, learning rate; train and validation)
    come from Keras; images and histograms of the codes of up to 256 sample
    examples from tfvae's `LatentSummaries`.

    Returns:
      A list of two callbacks.
    """
    log_dir = os.path.join(output, TENSORBOARD_DIR)
    x_sample, labels = data.sample
    return [
        keras.callbacks.TensorBoard(log_dir),
        callbacks_lib.LatentSummaries(
            os.path.join(log_dir, "latent"), x_sample[:256],
            y=None if data.num_classes is None else labels[:256]),
    ]


def _fit(model, config, data, initial_epoch, callbacks, verbose):
    """Fits `model` from `initial_epoch` to the run's `epochs` (nothing if it is there)."""
    if initial_epoch >= config.epochs:
        return
    with data.reading(config.skip_corrupt):
        model.fit(
            data.train,
            epochs=config.epochs,
            initial_epoch=initial_epoch,
            validation_data=data.validation,
            shuffle=False,  # the pipeline shuffles
            callbacks=callbacks,
            verbose=verbose,
        )


def raise_if_diverged(stop, output, report=True):
    """Raises `TrainingDiverged` if `stop` saw a non-finite loss, saying what is kept.

    Args:
      stop: the run's `StopOnNonFinite` callback, after `fit`.
      output: the run directory.
      report: whether this process writes `output` (the chief). Default value: `True`.
    """
    if stop.diverged_epoch is None:
        return
    kept = (f"the last finite checkpoint is kept in `{output}` (--resume continues from it)"
            if report and os.path.exists(os.path.join(output, "last.keras"))
            else "no checkpoint was written")
    raise TrainingDiverged(
        f"Training diverged in epoch {stop.diverged_epoch}: the loss became {stop.value}. "
        "Try a lower --learning-rate, and check the data for NaN or out-of-range values; "
        f"{kept}.")


def _evaluate(config, output, data):
    """Evaluates the run's best model on the held-out data and writes `metrics.json`.

    The metrics are `tfvae.evaluation.evaluate_model`'s, plus `epochs_trained`,
    `data` (where the data came from), `skipped_examples` (with
    `skip_corrupt`), disentanglement scores for data with known generative
    factors, and the gap decomposition (with `decompose_gap`).

    Returns:
      `(best, history, metrics)`: `model.keras` loaded, the full history
      `{metric: [per-epoch values]}`, and the metrics dict.
    """
    best = load_model(os.path.join(output, "model.keras"))
    history = read_history(os.path.join(output, "history.csv"))
    held_out, held_out_y = data.held_out
    with data.reading(config.skip_corrupt):
        metrics = evaluation.evaluate_model(best, held_out, num_samples=config.eval_samples,
                                            seed=config.seed, y=held_out_y)
    metrics["epochs_trained"] = len(history.get("loss", []))
    metrics["data"] = data.description
    if config.skip_corrupt:
        metrics["skipped_examples"] = run_data.skipped_examples(data)
    x_sample, labels = data.sample
    conditions = None if data.num_classes is None else labels
    known = data_lib.load_factors(config.dataset, "validation", seed=config.seed)
    if known is not None:  # data with known generative factors: how disentangled the codes are
        metrics.update(evaluation.disentanglement_metrics(best, x_sample, known["factors"],
                                                          known["names"], y=conditions))
    if config.decompose_gap:
        metrics.update(evaluation.gap_decomposition(best, x_sample, y=conditions,
                                                    num_examples=config.gap_examples,
                                                    seed=config.seed, steps=config.gap_steps))
    files.write_json(os.path.join(output, "metrics.json"), metrics)
    return best, history, metrics


def _write_report(config, output, data, best, history, metrics):
    """Writes the run's figures (and `gap.png` with `decompose_gap`) and `report.md`."""
    x_sample, labels = data.sample
    figures = report_lib.write_figures(best, history, x_sample, labels, output, seed=config.seed)
    if config.decompose_gap:
        figures["gap"] = os.path.basename(
            report_lib.plot_gap({"this run": metrics}, os.path.join(output, "gap.png")))
    report_lib.write_markdown(
        os.path.join(output, "report.md"), dataclasses.asdict(config), metrics, figures
    )


def load_run(directory):
    """Loads `(config, model)` from a run directory (an image run or a table run).

    A table run (`tfvae.table_runs.is_table_run`) has the same `run.json` and
    `model.keras`; its likelihood is the model's own `TabularLikelihood`
    (`tfvae.table_runs.run_likelihood`), not `config.likelihood`. Its data are
    read with `tfvae.table_runs.held_out`, where an image run's are read with
    `held_out`.

    Raises:
      ValueError: `directory` is not a run, is still being trained by a live
        process, or its `run.json` or `model.keras` cannot be read.
    """
    path = os.path.join(directory, RUN_FILE)
    if not os.path.exists(path):
        raise ValueError(f"`{directory}` is not a tfvae run directory (no {RUN_FILE}).")
    owner = files.RunLock.owner(directory)
    if owner is not None:
        raise ValueError(f"`{directory}` is still being trained by "
                         f"{files.RunLock.describe(owner)}; wait until training ends.")
    config = read_config(path)
    model_path = os.path.join(directory, "model.keras")
    if not os.path.exists(model_path):
        raise ValueError(f"`{directory}` holds no trained model (no model.keras).")
    model = load_model(model_path)
    likelihood = (table_runs.run_likelihood(directory, model)
                  if table_runs.is_table_run(directory) else None)
    _check_model_matches(config, model, directory, likelihood)
    return config, model


def _scale_kind(head):
    """A Gaussian head's learned-scale mode ("shared", ...), "fixed", or None for others."""
    scale = getattr(head, "scale", None)
    return scale if isinstance(scale, str) or scale is None else "fixed"


def _check_model_matches(config, model, directory, likelihood=None):
    """Refuses a run whose `run.json` does not describe its `model.keras` (an edited
    setting, or a model copied from another run): every later step trusts both.
    `likelihood` is the head the run's model has in place of `config.likelihood`'s
    (a table run's), or None."""
    differences = []
    if (model.condition_dim is not None) != config.conditional:
        differences.append(f"conditional={config.conditional} vs the model's "
                           f"condition_dim={model.condition_dim}")
    else:
        # The model run.json builds must have model.keras's weights, shape for shape.
        kwargs = config.model_kwargs(model.event_shape, model.condition_dim, dataset_size=1)
        if likelihood is not None:
            kwargs["likelihood"] = likelihood
        expected = builders.build_vae(**kwargs)
        if type(model.likelihood) is not type(expected.likelihood) or (
                _scale_kind(expected.likelihood) != _scale_kind(model.likelihood)):
            differences.append(f"likelihood {config.likelihood!r} vs the model's "
                               f"{type(model.likelihood).__name__}")
        shapes = [tuple(w.shape) for w in model.weights]
        wanted = [tuple(w.shape) for w in expected.weights]
        if shapes != wanted:
            first = next((i for i, (a, b) in enumerate(zip(shapes, wanted)) if a != b),
                         min(len(shapes), len(wanted)))
            differences.append(
                f"its settings build {len(wanted)} weights, the model has {len(shapes)}"
                if len(shapes) != len(wanted) else
                f"weight {first} is {shapes[first]} in the model, {wanted[first]} for "
                f"latent_dim={config.latent_dim}, hidden_units={config.hidden_units}")
    if differences:
        raise ValueError(f"`{directory}`: {RUN_FILE} does not describe model.keras ("
                         f"{'; '.join(differences)}); it was edited, or the model comes from "
                         "another run.")


def held_out(config, dataset=None, split="validation"):
    """A split `(x, y)` for evaluating the run, prepared as the run's held-out data.

    Args:
      config: the run's `RunConfig`.
      dataset: a dataset name or path (see `tfvae.data.load`). Default value:
        the run's own.
      split: `"train"`, `"validation"` or `"test"`. Default value: `"validation"`.
    """
    dataset = config.dataset if dataset is None else dataset
    x, y = data_lib.load_split(dataset, split, seed=config.seed)
    return _prepare_held_out(config, x), y


def held_out_stream(config, dataset=None, split="validation", batch_size=256):
    """A streamed split for evaluating the run, prepared as the run's held-out data.

    Args:
      config: the run's `RunConfig` (its image size, channels and binarisation apply).
      dataset: a streamed dataset (`tfvae.data.is_streamed`). Default value: the run's own.
      split: `"train"`, `"validation"`, `"test"`, or `"all"` (every example in the
        dataset's order). Default value: `"validation"`.
      batch_size: examples per batch. Default value: `256`.

    Returns:
      `(batches, source)`: a `tf.data.Dataset` of `(x, labels)` batches (`x` alone
      for an unlabelled dataset) and the `tfvae.sources.Source` it reads.
    """
    dataset = config.dataset if dataset is None else dataset
    split = _checks.one_of("split", split, data_lib.SPLITS + (data_lib.ALL,))
    image_size, channels = tuple(config.image_size) or None, config.image_channels or None
    if split == data_lib.ALL:
        source = data_lib.whole_source(dataset, image_size, channels)
        return (run_data.held_out_pipeline(config, source, batch_size, labels=source.labelled),
                source)
    found = data_lib.source_splits(dataset, seed=config.seed, image_size=image_size,
                                   channels=channels)
    if split not in found:
        raise ValueError(f"Received an invalid value for `split`: {dataset!r} has no {split} "
                         f"split (it has {', '.join(found)}). Received: split={split!r}")
    source = found[split]
    return run_data.held_out_pipeline(config, source, batch_size, labels=source.labelled), source
