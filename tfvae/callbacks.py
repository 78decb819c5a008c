"""Training callbacks: the KL warm-up, a divergence stop, and checkpoints and logs
written atomically (`tfvae.files`)."""

import csv
import logging
import os

import keras
import numpy as np
import tensorflow as tf

from tfvae import _checks
from tfvae import evaluation
from tfvae import files
from tfvae import options
from tfvae import surgery

__all__ = [
    "AtomicCSVLogger",
    "AtomicModelCheckpoint",
    "KLWarmup",
    "LatentSummaries",
    "non_finite_logs",
    "non_finite_weights",
    "StopOnNonFinite",
    "SurgeryLogs",
]

logger = logging.getLogger(__name__)


class KLWarmup(keras.callbacks.Callback):
    """Raises the model's KL weight β linearly from `start` to `end` (Bowman et al., 2016).

    The callback only configures `VAE.set_beta_schedule`; β itself is updated
    inside the compiled train step from the optimizer's step count, so the
    warm-up is exact per step with `steps_per_execution > 1`, under XLA and
    across replicas, and a resumed run continues where it stopped. After
    `epochs` epochs β stays at `end`. The train step itself reports the current
    β in the epoch logs as `beta`.

    Args:
      epochs: length of the warm-up in epochs (may be fractional).
      start: β at the first step. Default value: `0.0`.
      end: β after the warm-up. Default value: `1.0`.
      steps_per_epoch: needed only when `fit` cannot tell the number of steps
        (e.g. a dataset of unknown length). Default value: `None`.
    """

    def __init__(self, epochs, start=0.0, end=1.0, steps_per_epoch=None):
        super().__init__()
        self.epochs = _checks.positive_float("epochs", epochs)
        self.start = _checks.non_negative_float("start", start)
        self.end = _checks.non_negative_float("end", end)
        self.steps_per_epoch = (
            None if steps_per_epoch is None
            else _checks.positive_int("steps_per_epoch", steps_per_epoch)
        )

    def beta_at(self, epoch_progress):
        """β after `epoch_progress` epochs of training."""
        fraction = min(max(epoch_progress / self.epochs, 0.0), 1.0)
        return self.start + fraction * (self.end - self.start)

    def on_train_begin(self, logs=None):
        # A warm-up needs an objective with a KL term for β to weight: options' rule.
        options.check_objective(getattr(self.model, "objective", "elbo"),
                                warmup_epochs=self.epochs)
        steps_per_epoch = self.steps_per_epoch or (self.params or {}).get("steps")
        if not steps_per_epoch:
            raise ValueError(
                "KLWarmup cannot tell the number of steps per epoch (the data has unknown "
                "length). Pass `steps_per_epoch` to KLWarmup. Received: steps_per_epoch=None"
            )
        steps = self.epochs * steps_per_epoch
        current = keras.ops.convert_to_numpy(self.model.beta_schedule)
        if np.allclose(current[:3], [self.start, self.end, steps]):
            return  # the same warm-up, resumed: keep its first step
        first_step = float(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        self.model.set_beta_schedule(self.start, self.end, steps, first_step)


def _finite_number(value):
    """Whether a log value is a finite number (non-numbers count as finite)."""
    try:
        return bool(np.all(np.isfinite(np.asarray(value, dtype="float64"))))
    except (TypeError, ValueError):
        return True


def non_finite_logs(logs):
    """The sorted names of the entries of `logs` that are NaN or infinite."""
    return sorted(key for key, value in (logs or {}).items() if not _finite_number(value))


def non_finite_weights(model):
    """The names of the model's (and its optimizer's) variables holding NaN or infinity."""
    variables = list(model.weights)
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None:
        variables += list(optimizer.variables)
    return [v.path for v in variables
            if not np.all(np.isfinite(keras.ops.convert_to_numpy(v)))]


class StopOnNonFinite(keras.callbacks.Callback):
    """Stops training as soon as the loss is NaN or infinite.

    Like `keras.callbacks.TerminateOnNaN`, but the loss is checked both after
    every batch and at the end of every epoch: with `steps_per_execution > 1`
    Keras calls `on_train_batch_end` once per execution, and the epoch logs
    still carry a non-finite epoch mean. After training, `diverged_epoch` is
    the (1-based) epoch in which the loss became non-finite, or None.

    Args:
      monitor: the log entry to check. Default value: `"loss"`.
    """

    def __init__(self, monitor="loss"):
        super().__init__()
        if not isinstance(monitor, str) or not monitor:
            raise ValueError("Received an invalid value for `monitor`, expected a log name "
                             f"such as 'loss'. Received: monitor={monitor!r}")
        self.monitor = monitor
        self.diverged_epoch = None
        self.value = None
        self._epoch = 0

    def on_train_begin(self, logs=None):
        self.diverged_epoch = None
        self.value = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def _check(self, logs):
        if self.diverged_epoch is not None or not logs or self.monitor not in logs:
            return
        value = logs[self.monitor]
        if not _finite_number(value):
            self.diverged_epoch = self._epoch + 1
            self.value = float(np.asarray(value, dtype="float64"))
            self.model.stop_training = True
            logger.warning("epoch %d: %s is %s; stopping training",
                           self.diverged_epoch, self.monitor, self.value)

    def on_train_batch_end(self, batch, logs=None):
        self._check(logs)

    def on_epoch_end(self, epoch, logs=None):
        self._epoch = epoch
        self._check(logs)


class AtomicModelCheckpoint(keras.callbacks.Callback):
    """Saves the model at the end of each epoch, atomically, and never a diverged one.

    The model goes to a temporary file beside `path` that then replaces it
    (`tfvae.files.save_model`), with the epochs trained (and the monitored
    value) stored inside the archive, so the two cannot disagree. An epoch whose logs
    hold a NaN or infinity, or a model with non-finite weights, is not saved:
    the previous file stays as it was.

    Args:
      path: the `.keras` file.
      monitor: save only when this log entry improves (None: every epoch).
        Default value: `None`.
      mode: `"max"` or `"min"`: which way `monitor` improves. Default value: `"max"`.
      initial_value_threshold: the value to beat at the first epoch.
        Default value: `None` (any finite value).
      on_save: called with `path` after each save. Default value: `None`.
    """

    def __init__(self, path, monitor=None, mode="max", initial_value_threshold=None,
                 on_save=None):
        super().__init__()
        if not isinstance(path, str) or not path.endswith(".keras"):
            raise ValueError("Received an invalid value for `path`, expected a file name "
                             f"ending in .keras. Received: path={path!r}")
        _checks.one_of("mode", mode, ("max", "min"))
        self.path = path
        self.monitor = monitor
        self.mode = mode
        self.best = initial_value_threshold
        self.on_save = on_save
        self.saved_epochs = 0

    @staticmethod
    def read_epoch(path):
        """The number of epochs recorded in the checkpoint `path`, or None."""
        epoch = (files.read_model_metadata(path) or {}).get("epoch")
        return epoch if isinstance(epoch, int) and epoch >= 0 else None

    def _improved(self, value):
        if self.best is None:
            return True
        return value > self.best if self.mode == "max" else value < self.best

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        bad = non_finite_logs(logs)
        if bad:
            logger.warning("epoch %d: not saving %s (non-finite %s)", epoch + 1, self.path,
                           ", ".join(bad))
            return
        value = None
        if self.monitor is not None:
            if self.monitor not in logs:
                logger.warning("epoch %d: not saving %s (no %r in the logs)", epoch + 1,
                               self.path, self.monitor)
                return
            value = float(logs[self.monitor])
            if not self._improved(value):
                return
        bad = non_finite_weights(self.model)
        if bad:
            logger.warning("epoch %d: not saving %s (non-finite weights: %s)", epoch + 1,
                           self.path, ", ".join(bad[:3]))
            return
        record = {"epoch": epoch + 1}
        if self.monitor is not None:
            record[self.monitor] = value
        files.save_model(self.model, self.path, metadata=record)
        if self.monitor is not None:
            self.best = value
        self.saved_epochs += 1
        if self.on_save is not None:
            self.on_save(self.path)


class AtomicCSVLogger(keras.callbacks.Callback):
    """Writes the epoch logs to a CSV file, rewriting it atomically after each epoch.

    The columns are `epoch` (0-based) and the sorted log names, as with
    `keras.callbacks.CSVLogger`; the file is always whole.

    Args:
      path: the CSV file.
      append: keep the rows already in `path`. Default value: `False`.
    """

    def __init__(self, path, append=False):
        super().__init__()
        self.path = path
        self.append = bool(append)
        self.rows = []
        self.keys = None

    def on_train_begin(self, logs=None):
        self.rows, self.keys = [], None
        if self.append and os.path.exists(self.path):
            with open(self.path, newline="") as f:
                reader = csv.DictReader(f)
                self.rows = list(reader)
                self.keys = [key for key in reader.fieldnames or () if key != "epoch"] or None

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        if self.keys is None:
            self.keys = sorted(logs)
        row = {"epoch": epoch}
        for key in self.keys:
            value = logs.get(key)
            try:
                row[key] = "NA" if value is None else float(np.asarray(value))
            except (TypeError, ValueError):
                row[key] = value
        self.rows.append(row)
        with files.atomic_open(self.path) as f:
            writer = csv.DictWriter(f, fieldnames=["epoch", *self.keys], lineterminator="\n")
            writer.writeheader()
            writer.writerows(self.rows)


class SurgeryLogs(keras.callbacks.Callback):
    """ELBO surgery of fixed held-out examples at the end of every `every` epochs, in the logs.

    The `mi`, `tc` and `dwkl` that `fit` reports for `objective="beta_tcvae"`
    are minibatch estimates (`objectives.log_aggregate_posterior`): their
    log q(z) is biased low by Jensen's inequality, so `mi` comes out high,
    `dwkl` low (it can be negative) and `tc` either way, by amounts that
    depend on the batch size. This callback adds the set's own numbers
    (`surgery.elbo_surgery` on the first `num_examples` of `x`, the same
    noise every time) to the epoch logs, where `keras.callbacks.CSVLogger`,
    TensorBoard and the history see them if they come after it:
    `surgery_mi`, `surgery_tc`, `surgery_dwkl`, `surgery_marginal_kl` (the
    set's aggregate posterior; `surgery_mi` at most log N) and the same with
    `_heldout` (the population's, each example left out). Only the first two
    exist for a posterior without independent dimensions (no TC / DWKL).

    Args:
      x: held-out examples `[n] + event_shape`; y: their conditions, for a
        conditional model. Default value: `None`.
      num_examples: examples in the surgery (cost grows as their square).
        Default value: `1000`.
      every: epochs between evaluations (and after the last). Default value: `1`.
      seed: noise seed. Default value: `0`.
    """

    _NAMES = {"mutual_information": "mi", "total_correlation": "tc",
              "dimension_wise_kl": "dwkl", "marginal_kl": "marginal_kl"}

    def __init__(self, x, y=None, num_examples=1000, every=1, seed=0):
        super().__init__()
        self.num_examples = _checks.positive_int("num_examples", num_examples)
        self.x = x[:self.num_examples]
        self.y = None if y is None else y[:self.num_examples]
        self.every = _checks.positive_int("every", every)
        self.seed = seed

    def on_train_begin(self, logs=None):
        # Refused before the first epoch, not after it: a model the surgery does not apply to.
        refusal = surgery.surgery_refusal(self.model)
        if refusal:
            raise ValueError(f"SurgeryLogs does not apply to this model: {refusal}.")

    def on_epoch_end(self, epoch, logs=None):
        last = self.params.get("epochs") if self.params else None
        if logs is None or ((epoch + 1) % self.every and epoch + 1 != last):
            return
        result = surgery.elbo_surgery(self.model, self.x, y=self.y, seed=self.seed)
        for key, short in self._NAMES.items():
            for suffix in ("", "_heldout"):
                if key + suffix in result:
                    logs[f"surgery_{short}{suffix}"] = result[key + suffix]


class LatentSummaries(keras.callbacks.Callback):
    """TensorBoard images and histograms of what a VAE encodes and generates.

    Every `every` epochs (and after the last), writes with `tf.summary` into
    `log_dir`:

    * `reconstructions`: one image, held-out examples (top row) above their
      reconstructions (bottom row) — image data only;
    * `samples`: one image of decoded prior samples (for a conditional model,
      labels `0, 1, …` in turn) — image data only;
    * `posterior_mean/z<j>`: a histogram of `latent_code(x)` (E_q[z] for
      Gaussian posteriors) over the examples, for the first `max_dims`
      dimensions;
    * `kl_per_dimension`: a histogram of the per-dimension mean KL, and the
      scalars `kl_per_dimension/z<j>` — when q is a diagonal Gaussian and p
      the standard normal (`evaluation.kl_per_dimension`).

    Keras's own `keras.callbacks.TensorBoard` writes the scalars (loss and the
    ELBO terms, β when `KLWarmup` runs before it, the learning rate); put this
    callback beside it with a `log_dir` of its own (e.g. `logs/latent`).

    Args:
      log_dir: the directory of the event files.
      x: held-out examples `[n] + event_shape` (a few hundred are enough).
      y: their conditions, for a conditional model. Default value: `None`.
      every: epochs between summaries. Default value: `5`.
      num_images: examples reconstructed and samples drawn. Default value: `8`.
      max_dims: latent dimensions with a posterior-mean histogram. Default
        value: `16`.
      seed: seed of the prior samples (the same every time, so images are
        comparable across epochs). Default value: `0`.
    """

    def __init__(self, log_dir, x, y=None, every=5, num_images=8, max_dims=16, seed=0):
        super().__init__()
        if not isinstance(log_dir, (str, os.PathLike)) or not str(log_dir):
            raise ValueError(
                "Received an invalid value for `log_dir`, expected a directory path. "
                f"Received: log_dir={log_dir!r}"
            )
        self.log_dir = os.fspath(log_dir)
        self.x = np.asarray(x, dtype="float32")
        if self.x.ndim < 2 or len(self.x) == 0:
            raise ValueError(
                "Received an invalid value for `x`, expected a non-empty batch of examples. "
                f"Received: x with shape {self.x.shape}"
            )
        self.y = y
        self.every = _checks.positive_int("every", every)
        self.num_images = _checks.positive_int("num_images", num_images)
        self.max_dims = _checks.positive_int("max_dims", max_dims)
        self.seed = _checks.non_negative_int("seed", seed)
        self._writer = None
        self._last_written = None

    def on_train_begin(self, logs=None):
        self.model.likelihood.validate_data(self.x, name="x")
        self.model.conditioning.prepare(self.y, len(self.x), name="y")
        self._writer = tf.summary.create_file_writer(self.log_dir)

    def on_epoch_end(self, epoch, logs=None):
        if epoch % self.every == 0:
            self.write(epoch)

    def on_train_end(self, logs=None):
        epoch = self.params.get("epochs", 1) - 1 if self.params else None
        if epoch is not None and self._last_written != epoch and self._writer is not None:
            self.write(epoch)
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def write(self, step):
        """Writes the summaries at `step` (an epoch index)."""
        model = self.model
        writer = self._writer or tf.summary.create_file_writer(self.log_dir)
        n = min(self.num_images, len(self.x))
        y = None if self.y is None else np.asarray(self.y)
        with writer.as_default(step=step):
            if _is_image(model.event_shape):
                originals = self.x[:n]
                reconstructions = model.reconstruct(originals, y=None if y is None else y[:n])
                tf.summary.image("reconstructions",
                                 _tile(np.stack([originals, np.asarray(reconstructions)]), model))
                labels = None if model.condition_dim is None else np.arange(n) % model.condition_dim
                samples = model.sample(n, seed=self.seed, y=labels)
                tf.summary.image("samples", _tile(np.asarray(samples)[None], model))
            codes = np.concatenate([
                model.latent_code(self.x[i : i + 256], y=None if y is None else y[i : i + 256])
                for i in range(0, len(self.x), 256)])
            for j in range(min(self.max_dims, model.latent_dim)):
                tf.summary.histogram(f"posterior_mean/z{j}", codes[:, j])
            if model.posterior.independent_dimensions and model.prior.has_kl_per_dimension:
                kl = evaluation.kl_per_dimension(model, self.x, y=y)
                tf.summary.histogram("kl_per_dimension", kl)
                for j, value in enumerate(kl):
                    tf.summary.scalar(f"kl_per_dimension/z{j}", value)
        writer.flush()
        self._last_written = step


def _is_image(event_shape):
    return len(event_shape) == 3 and event_shape[-1] in (1, 3)


def _tile(rows, model):
    """`[R, n, H, W, C]` data -> one `[1, R·H, n·W, C]` image in [0, 1] for `tf.summary.image`."""
    low, high = model.likelihood.data_range
    if np.isfinite(low) and np.isfinite(high) and high > low:
        rows = (rows - low) / (high - low)
    rows = np.clip(rows, 0.0, 1.0)
    r, n, h, w, c = rows.shape
    return rows.transpose(0, 2, 1, 3, 4).reshape(1, r * h, n * w, c)
