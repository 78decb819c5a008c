"""A training run in an output directory: train, checkpoint, resume, evaluate, report.

Layout of a run directory::

    run.json          the run's configuration (marks the directory as a tfvae run)
    last.keras        the model after the latest epoch (for resuming)
    model.keras       the model with the best validation loss
    history.csv       per-epoch metrics, train and validation
    metrics.json      held-out evaluation of model.keras
    *.png, report.md  figures and the report linking them
"""

import csv
import dataclasses
import json
import logging
import os
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf

from tfvae import _checks
from tfvae import builders
from tfvae import data as data_lib
from tfvae import evaluation
from tfvae import options
from tfvae import report as report_lib
from tfvae.callbacks import KLWarmup

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
STRATEGIES = ("default", "mirrored", "multiworker")
PRECISION_POLICIES = {"none": "float32", "float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}


def make_strategy(name):
    """The `tf.distribute` strategy for `--strategy`.

    `mirrored` replicates over this machine's GPUs (or its CPU); `multiworker`
    reads the cluster from `TF_CONFIG` and must be created before other TF ops.
    """
    _checks.one_of("strategy", name, STRATEGIES)
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def is_chief():
    """Whether this process writes the run's files (always true outside multi-worker runs)."""
    config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    task = config.get("task", {})
    if not task:
        return True
    if "chief" in config.get("cluster", {}):
        return task.get("type") == "chief"
    return task.get("type") == "worker" and int(task.get("index", 0)) == 0


@dataclasses.dataclass
class RunConfig:
    """Everything that defines a training run (saved as `run.json`)."""

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
    learning_rate: float = 2e-3
    patience: int = 10
    seed: int = 0
    jit_compile: bool | None = None  # None: XLA for MLPs, and for conv nets on GPU
    steps_per_execution: int = 16
    eval_samples: int = 100
    binarize: str = "none"
    strategy: str = "default"
    objective: str = "elbo"
    k: int = 5
    gradient_estimator: str = "standard"
    mixed_precision: str = "none"
    top_latent_dim: int = 0  # z2's size for posterior="hierarchical" (0: latent_dim // 2)
    free_bits_groups: int = 0  # 0: free bits per example on the total KL
    conditional: bool = False  # condition encoder and decoder on the dataset's labels
    decompose_gap: bool = False  # split the held-out gap into amortization + approximation
    gap_examples: int = 500  # held-out examples whose q is optimised for that split

    def validate(self):
        """Checks every field, and the option rules of `tfvae.options`, before anything is built.

        Returns:
          `self` (with `hidden_units` and `filters` as tuples).
        """
        _checks.one_of("architecture", self.architecture, builders.ARCHITECTURES)
        _checks.one_of("likelihood", self.likelihood, tuple(builders.LIKELIHOODS))
        _checks.one_of("posterior", self.posterior, tuple(builders.POSTERIORS))
        _checks.one_of("prior", self.prior, tuple(builders.PRIORS))
        _checks.one_of("binarize", self.binarize, data_lib.BINARIZE)
        _checks.one_of("strategy", self.strategy, STRATEGIES)
        _checks.one_of("mixed_precision", self.mixed_precision, tuple(PRECISION_POLICIES))
        for name in ("latent_dim", "num_samples", "epochs", "batch_size", "patience", "eval_samples",
                     "steps_per_execution", "k", "gap_examples"):
            _checks.positive_int(name, getattr(self, name))
        for name in ("top_latent_dim", "free_bits_groups"):
            _checks.non_negative_int(name, getattr(self, name))
        for name in ("beta", "warmup_epochs", "free_bits"):
            _checks.non_negative_float(name, getattr(self, name))
        _checks.positive_float("learning_rate", self.learning_rate)
        _checks.non_negative_int("seed", self.seed)
        for name in ("conditional", "decompose_gap"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(
                    f"Received an invalid value for `{name}`, expected True or False. "
                    f"Received: {name}={getattr(self, name)!r}"
                )
        self.hidden_units = _checks.int_tuple("hidden_units", self.hidden_units)
        self.filters = _checks.int_tuple("filters", self.filters, allow_empty=False)
        # The rules that relate options, stated once in tfvae.options (as for build_vae).
        # RunConfig writes 0 for "none" in top_latent_dim and free_bits_groups.
        options.check_prior_name(self.posterior, self.prior)
        options.check_top_latent_dim(self.top_latent_dim or None, self.posterior)
        posterior, prior = builders.part_classes(self.posterior, self.prior)
        options.check_objective(self.objective, self.beta, self.free_bits, self.warmup_epochs)
        options.check_gradient_estimator(self.gradient_estimator, self.objective, posterior, prior)
        options.check_free_bits_groups(self.free_bits_groups or None, self.free_bits,
                                       self.objective, posterior, prior, self.latent_dim)
        # The number of classes is known only once the data are loaded; any
        # positive size stands in for it here (the rule is on the prior).
        options.check_condition_dim(1 if self.conditional else None, prior, name="conditional")
        return self

    def model_kwargs(self, input_shape, condition_dim=None):
        """`tfvae.build_vae`'s arguments for this run, on data of shape `input_shape`.

        Under a KL warm-up β starts at 0 (`KLWarmup` raises it to `beta`).
        `condition_dim` is the number of classes of a conditional run.
        """
        return {
            "input_shape": tuple(input_shape),
            **{name: getattr(self, name) for name in _MODEL_FIELDS},
            "beta": self.beta if self.warmup_epochs == 0 else 0.0,
            "top_latent_dim": self.top_latent_dim or None,
            "free_bits_groups": self.free_bits_groups or None,
            "condition_dim": condition_dim,
        }


# RunConfig fields passed to build_vae as they are.
_MODEL_FIELDS = ("latent_dim", "likelihood", "architecture", "hidden_units", "filters",
                 "posterior", "prior", "free_bits", "num_samples", "seed", "objective", "k",
                 "gradient_estimator")


def prepare_output(directory, overwrite=False, resume=False):
    """Creates `directory`, refusing to clobber an earlier run.

    An existing non-empty directory is an error unless `resume` (continue it)
    or `overwrite` (delete it first — only if it is a tfvae run directory).
    """
    if os.path.isdir(directory) and os.listdir(directory):
        is_run = os.path.exists(os.path.join(directory, RUN_FILE))
        if resume:
            if not is_run:
                raise ValueError(f"Cannot resume: `{directory}` holds no {RUN_FILE}.")
            return
        if not overwrite:
            raise ValueError(
                f"The output directory `{directory}` already holds files; refusing to "
                "overwrite them. Pass --overwrite to replace an earlier run, --resume to "
                "continue it, or choose another --output."
            )
        if not is_run:
            raise ValueError(
                f"Refusing to delete `{directory}`: it is not a tfvae run directory "
                f"(no {RUN_FILE}). Choose another --output."
            )
        shutil.rmtree(directory)
    elif resume:
        raise ValueError(f"Cannot resume: `{directory}` does not exist or is empty.")
    os.makedirs(directory, exist_ok=True)


def load_dataset(config):
    """Returns `((x_train, y_train), (x_val, y_val))`, prepared for the run's likelihood.

    With dynamic binarisation the training data stay grey (the pipeline draws
    binary batches) and the validation data get one fixed draw.
    """
    (x_train, y_train), (x_val, y_val) = data_lib.load(config.dataset, seed=config.seed)
    train_mode = "none" if config.binarize == "dynamic" else config.binarize
    x_train = data_lib.prepare(x_train, config.likelihood, train_mode, seed=config.seed)
    return (x_train, y_train), (_prepare_held_out(config, x_val), y_val)


def _prepare_held_out(config, x):
    """Held-out data as the run scores it: one fixed binarisation draw if it binarises."""
    mode = "static" if config.binarize != "none" else "none"
    return data_lib.prepare(x, config.likelihood, mode, seed=config.seed + 1)


def _read_history(path):
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        rows = list(csv.DictReader(f))
    history = {}
    for row in rows:
        for key, value in row.items():
            if key != "epoch":
                history.setdefault(key, []).append(float(value))
    return history


def _write_json(path, value):
    with open(path, "w") as f:
        json.dump(value, f, indent=2, sort_keys=True)


def train(config, output, overwrite=False, resume=False, verbose=1):
    """Trains, evaluates and reports a run. Returns the held-out metrics dict.

    In a multi-worker run every worker trains; only the chief writes `output`
    (the others checkpoint into a temporary directory) and reports.
    """
    if resume:
        prepare_output(output, resume=True)
        with open(os.path.join(output, RUN_FILE)) as f:
            config = RunConfig(**json.load(f))
    # Before other TF ops (multi-worker collectives need that), from the run's own config.
    strategy = make_strategy(config.strategy)
    config.validate()
    chief = is_chief()
    if not chief:
        output = tempfile.mkdtemp(prefix="tfvae-worker-")
    elif not resume:
        prepare_output(output, overwrite=overwrite)
        _write_json(os.path.join(output, RUN_FILE), dataclasses.asdict(config))
    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(PRECISION_POLICIES[config.mixed_precision])
    try:
        return _train(config, output, strategy, resume, verbose, report=chief)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


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
    return max(int(np.max(y)) for y in labels) + 1


def _train(config, output, strategy, resume, verbose, report):
    (x_train, y_train), (x_val, y_val) = load_dataset(config)
    num_classes = condition_dim(config, y_train, y_val)
    conditions = (None, None) if num_classes is None else (y_train, y_val)
    # The application layer seeds the process (data pipeline, Keras's global
    # state); build_vae itself seeds only the model's own weights and noise.
    keras.utils.set_random_seed(config.seed)
    history_path = os.path.join(output, "history.csv")
    last_path = os.path.join(output, "last.keras")
    best_path = os.path.join(output, "model.keras")
    history = _read_history(history_path) if resume else {}
    initial_epoch = len(history.get("loss", []))
    with strategy.scope():
        if initial_epoch and os.path.exists(last_path):
            model = keras.saving.load_model(last_path)
            logger.info("resuming %s from epoch %d", output, initial_epoch)
        else:
            initial_epoch = 0
            model = builders.build_vae(**config.model_kwargs(x_train.shape[1:], num_classes))
        jit_compile, steps_per_execution = config.jit_compile, config.steps_per_execution
        if jit_compile is None:
            # Measured (benchmarks/README.md): XLA speeds MLP training on CPU but
            # slows convolutions there, where oneDNN's kernels are faster.
            gpu = bool(tf.config.list_physical_devices("GPU"))
            jit_compile = config.architecture == "mlp" or gpu
        if config.strategy != "default" and (jit_compile or steps_per_execution > 1):
            # Keras 3 on TensorFlow fails with either under tf.distribute strategies
            # (XLA: variables on several devices; multi-step loops: unfed placeholders).
            logger.info("distributed training: turning off XLA and steps_per_execution")
            jit_compile, steps_per_execution = False, 1
        resumed = initial_epoch > 0
        model.compile(
            # A resumed model keeps its optimizer: Adam's moments and the step count
            # (which drives the in-graph β warm-up).
            optimizer=model.optimizer if resumed else keras.optimizers.Adam(config.learning_rate),
            jit_compile=jit_compile,
            steps_per_execution=steps_per_execution,
        )
    # Checkpoint and stop on the held-out ELBO: unlike val_loss it does not move with β.
    best_so_far = max(history.get("val_elbo", [-np.inf]))
    callbacks = [
        keras.callbacks.CSVLogger(history_path, append=resume),
        keras.callbacks.ModelCheckpoint(
            best_path, monitor="val_elbo", mode="max", save_best_only=True,
            initial_value_threshold=best_so_far if np.isfinite(best_so_far) else None,
        ),
        keras.callbacks.ModelCheckpoint(last_path),
        keras.callbacks.EarlyStopping(monitor="val_elbo", mode="max", patience=config.patience),
    ]
    if config.warmup_epochs > 0:
        callbacks.append(KLWarmup(config.warmup_epochs, end=config.beta))
    model.likelihood.validate_data(x_train, name="dataset")
    train_data = data_lib.make_dataset(
        x_train, config.batch_size, seed=config.seed,
        dynamic_binarize=config.binarize == "dynamic", y=conditions[0],
    )
    val_data = data_lib.make_dataset(x_val, config.batch_size, shuffle=False, y=conditions[1])
    if initial_epoch < config.epochs:
        model.fit(
            train_data,
            epochs=config.epochs,
            initial_epoch=initial_epoch,
            validation_data=val_data,
            shuffle=False,  # the pipeline shuffles
            callbacks=callbacks,
            verbose=verbose,
        )
    if not report:
        return {}
    best = keras.saving.load_model(best_path)
    history = _read_history(history_path)
    metrics = evaluation.evaluate_model(best, x_val, num_samples=config.eval_samples,
                                        seed=config.seed, y=conditions[1])
    metrics["epochs_trained"] = len(history.get("loss", []))
    if config.decompose_gap:
        metrics.update(evaluation.gap_decomposition(best, x_val, y=conditions[1],
                                                    num_examples=config.gap_examples,
                                                    seed=config.seed))
    _write_json(os.path.join(output, "metrics.json"), metrics)
    figures = report_lib.write_figures(best, history, x_val, y_val, output, seed=config.seed)
    if config.decompose_gap:
        figures["gap"] = os.path.basename(
            report_lib.plot_gap({"this run": metrics}, os.path.join(output, "gap.png")))
    report_lib.write_markdown(
        os.path.join(output, "report.md"), dataclasses.asdict(config), metrics, figures
    )
    return metrics


def load_run(directory):
    """Loads `(config, model)` from a run directory."""
    path = os.path.join(directory, RUN_FILE)
    if not os.path.exists(path):
        raise ValueError(f"`{directory}` is not a tfvae run directory (no {RUN_FILE}).")
    with open(path) as f:
        config = RunConfig(**json.load(f))
    model_path = os.path.join(directory, "model.keras")
    if not os.path.exists(model_path):
        raise ValueError(f"`{directory}` holds no trained model (no model.keras).")
    return config, keras.saving.load_model(model_path)


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
