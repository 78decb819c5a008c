"""Training callbacks."""

import logging

import keras
import numpy as np

from tfvae import _checks

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
