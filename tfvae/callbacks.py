"""Training callbacks."""

import logging

import keras

from tfvae import _checks

logger = logging.getLogger(__name__)


class KLWarmup(keras.callbacks.Callback):
    """Raises the model's KL weight β linearly from `start` to `end` (Bowman et al., 2016).

    β is updated before every training batch, so the warm-up is smooth within
    epochs; after `epochs` epochs it stays at `end`. The current β is added to
    the epoch logs as `beta`.

    Args:
      epochs: length of the warm-up in epochs (may be fractional).
      start: β at the first step. Default value: `0.0`.
      end: β after the warm-up. Default value: `1.0`.
    """

    def __init__(self, epochs, start=0.0, end=1.0):
        super().__init__()
        self.epochs = _checks.positive_float("epochs", epochs)
        self.start = _checks.non_negative_float("start", start)
        self.end = _checks.non_negative_float("end", end)
        self._epoch = 0

    def beta_at(self, epoch_progress):
        """β after `epoch_progress` epochs of training."""
        fraction = min(max(epoch_progress / self.epochs, 0.0), 1.0)
        return self.start + fraction * (self.end - self.start)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        steps = (self.params or {}).get("steps") or 0
        progress = self._epoch + (batch / steps if steps else 0.0)
        self.model.beta.assign(self.beta_at(progress))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["beta"] = float(keras.ops.convert_to_numpy(self.model.beta))
