"""Training callbacks: the KL warm-up, a divergence stop, and checkpoints and logs
written atomically (`tfvae.files`)."""

import csv
import logging
import os

import keras
import numpy as np

from tfvae import _checks
from tfvae import files

logger = logging.getLogger(__name__)


class KLWarmup(keras.callbacks.Callback):
    """Raises the model's KL weight β linearly from `start` to `end` (Bowman et al., 2016).

    The callback only configures `VAE.set_beta_schedule`; β itself is updated
    inside the compiled train step from the optimizer's step count, so the
    warm-up is exact per step with `steps_per_execution > 1`, under XLA and
    across replicas, and a resumed run continues where it stopped. After
    `epochs` epochs β stays at `end`. The current β is added to the epoch logs
    as `beta`.

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
        if getattr(self.model, "objective", "elbo") != "elbo":
            raise ValueError(
                "KLWarmup needs a model trained on the ELBO: the IWAE bound has no KL term "
                f"for β to weight. Received: a model with objective={self.model.objective!r}"
            )
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

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["beta"] = float(keras.ops.convert_to_numpy(self.model.beta))


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
