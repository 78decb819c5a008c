"""Training machinery for `tfvae.VAE`: steps, metrics, the β schedule and `fit` pre-checks.

Keras composes a model from what it computes (a `Layer`) and how it is
trained (the `Trainer` mixin); tfvae does the same. `Trainer` holds
everything `fit` / `evaluate` / `predict` need and asks the model for one
thing, through a small hook:

* `objective_terms(x, y, training, seed, offset)`: the training objective's
  per-example terms `[batch]`, a dict with at least `loss` and one entry per
  metric name (`loss_encoder` too for DReG). Terms that need the whole
  global batch (β-TCVAE's aggregate posterior) gather it themselves under a
  distribution strategy; the step then averages over the global batch as usual.

A training step: `fit` → `_check_data` (arrays, tensors, datasets, before
Keras traces) → `train_step` → `_unpack` (x, y prepared by the model's
`Conditioning`) → `_update_beta` (the warm-up, in-graph) → `_step_terms` (the
step's seed, a pure function of the model's seed and the optimizer's step, and
the replica's noise offset) → `objective_terms` (the model)
→ the mean over the global batch → gradients (DReG swaps in the encoder's own
surrogate) → `_update_metrics` (exact epoch means, all-reduced across
replicas).
"""

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from tfvae import _checks
from tfvae import objectives
from tfvae import options
from tfvae import random as tfvae_random

__all__ = [
    "BetaSchedule",
    "FINAL_LR_FRACTION",
    "learning_rate_schedule",
    "Trainer",
]

# The cosine schedule ends at this fraction of the initial learning rate.
FINAL_LR_FRACTION = 0.1


def learning_rate_schedule(name, learning_rate, total_steps):
    """Adam's learning rate for a run: a constant, or a cosine decay over `total_steps`.

    The cosine schedule is Keras's `CosineDecay` (saved with the optimizer in a
    `.keras` file) read at the optimizer's step count, so a resumed run
    continues it where it stopped.

    Mathematical details: `lr(t) = lr₀ · (f + (1 − f) · ½ (1 + cos(π · min(t, T) / T)))`
    with `f = FINAL_LR_FRACTION`, `T = total_steps` and `t` the optimizer's
    iteration count: `lr₀` at the first step, `f · lr₀` from step `T` on.

    Args:
      name: one of `tfvae.options.LR_SCHEDULES`.
      learning_rate: the initial rate `lr₀`.
      total_steps: `T`, the optimizer steps the decay spans (the run's epochs ×
        its steps per epoch; unused by `"constant"`).

    Returns:
      A float (`"constant"`) or a `keras.optimizers.schedules.LearningRateSchedule`.
    """
    name = _checks.one_of("lr_schedule", name, options.LR_SCHEDULES)
    learning_rate = _checks.positive_float("learning_rate", learning_rate)
    if name == "constant":
        return learning_rate
    total_steps = _checks.positive_int("total_steps", total_steps)
    return keras.optimizers.schedules.CosineDecay(learning_rate, total_steps,
                                                  alpha=FINAL_LR_FRACTION)


@dataclasses.dataclass(frozen=True)
class BetaSchedule:
    """A linear β warm-up from `start` to `end` over `steps` optimizer steps.

    Stored in the model as the variable `beta_schedule = [start, end, steps,
    first_step]`, so it is saved with the weights and computed inside the
    compiled train step. `steps = 0` means no schedule.

    Mathematical details: `β(t) = start + (end − start) · min((t − first_step) / steps, 1)`
    with `t` the optimizer's iteration count.
    """

    start: float = 0.0
    end: float = 1.0
    steps: float = 0.0
    first_step: float = 0.0

    def __post_init__(self):
        for name in ("start", "end", "steps"):
            _checks.non_negative_float(name, getattr(self, name))

    @property
    def active(self):
        return self.steps > 0

    def as_vector(self):
        return [float(self.start), float(self.end), float(self.steps), float(self.first_step)]

    @classmethod
    def from_vector(cls, vector):
        return cls(*(float(v) for v in np.asarray(vector).reshape(-1)))

    @staticmethod
    def beta_at(vector, iterations, current):
        """In-graph β at optimizer step `iterations` for a stored schedule `vector`
        (`current` when no schedule is set)."""
        start, end, steps, first_step = tf.unstack(vector)
        done = tf.cast(iterations, tf.float32) - first_step
        fraction = tf.clip_by_value(done / tf.maximum(steps, 1.0), 0.0, 1.0)
        return tf.where(steps > 0, start + (end - start) * fraction, current)


def _multi_worker(strategy):
    """Whether `strategy` is a MultiWorkerMirroredStrategy spanning several workers."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return False
    in_multi_worker_mode = getattr(strategy.extended, "_in_multi_worker_mode", None)
    return bool(in_multi_worker_mode()) if in_multi_worker_mode else True


def _average_loss(per_example_loss, sample_weight=None):
    """The sum of the per-example losses over the global batch, divided by its size (the
    replicas' examples counted, so an uneven split of the last batch is exact), without
    `tf.nn.compute_average_loss`'s runtime assert in the unweighted case."""
    if sample_weight is not None:
        return tf.nn.compute_average_loss(per_example_loss, sample_weight=sample_weight)
    global_batch = tf.cast(tf.shape(per_example_loss)[0], per_example_loss.dtype)
    replica = objectives.replica_context()
    if replica is not None:  # replicas may hold different numbers of examples (31 + 30)
        global_batch = replica.all_reduce(tf.distribute.ReduceOp.SUM, global_batch)
    return tf.math.divide_no_nan(tf.reduce_sum(per_example_loss), global_batch)


class Trainer:
    """The `fit` / `evaluate` / `predict` side of `tfvae.VAE` (a mixin before `keras.Model`).

    The model calls `_init_training` once from its constructor; the mixin
    then uses the model's `conditioning`, `_check_x`, `objective_terms` and
    `encoder_variables`.
    """

    def _init_training(self, beta, metric_names, seed):
        self.beta = self.add_weight(
            shape=(),
            initializer=keras.initializers.Constant(beta),
            trainable=False,
            dtype="float32",
            aggregation="only_first_replica",
            name="beta",
        )
        self.beta_schedule = self.add_weight(
            shape=(4,),
            initializer="zeros",
            trainable=False,
            dtype="float32",
            aggregation="only_first_replica",
            name="beta_schedule",
        )
        self._seed_generator = keras.random.SeedGenerator(seed)
        # Training noise is drawn from fold_in(train_seed, optimizer step): a pure function of
        # the step, so evaluation passes between epochs change nothing training draws, and
        # (with a seed) neither does a resume.
        self._train_seed = int(np.random.randint(0, 2**31 - 1)) if seed is None else int(seed)
        self._trackers = [keras.metrics.Mean(name=name) for name in metric_names]

    @property
    def metrics(self):
        return list(self._trackers)

    # ------------------------------------------------------------------
    # The β schedule.

    def set_beta_schedule(self, start, end, steps, first_step=0):
        """Warms β up linearly from `start` to `end` over `steps` optimizer steps.

        The train step sets `beta = start + (end − start) · min(t / steps, 1)`
        with `t = optimizer.iterations − first_step`, inside the compiled step,
        so the schedule is exact per step under `steps_per_execution`, XLA and
        distribution strategies, and survives save/load. `steps=0` turns it off.
        """
        schedule = BetaSchedule(start, end, steps, first_step)
        if schedule.active:
            options.check_objective(self.objective, warmup_epochs=steps)
        self.beta_schedule.assign(schedule.as_vector())
        if schedule.active:
            self.beta.assign(start)

    def get_beta_schedule(self):
        """The stored `BetaSchedule`."""
        return BetaSchedule.from_vector(keras.ops.convert_to_numpy(self.beta_schedule))

    def _update_beta(self):
        self.beta.assign(BetaSchedule.beta_at(
            tf.convert_to_tensor(self.beta_schedule), self.optimizer.iterations, self.beta))

    # ------------------------------------------------------------------
    # Steps.

    def _unpack(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if isinstance(x, (tuple, list)) and self.conditioning.active:
            x, y = self.conditioning.split(x)  # `predict((x, y))`
        self._check_x(x, values=False)
        if not self.conditioning.active:
            y = None
        elif y is None:
            raise ValueError(
                f"This model is conditional (condition_dim={self.condition_dim}): give it "
                "(x, y) pairs. Received: data without y"
            )
        x = tf.cast(x, tf.float32)
        return x, self.conditioning.prepare(y, tf.shape(x)[0]), sample_weight

    def _step_terms(self, x, training, y=None):
        if training:
            seed = tfvae_random.fold_in(self._train_seed, self.optimizer.iterations)
        else:  # evaluation: fresh noise per batch
            seed = tf.cast(self._seed_generator.next(), tf.int32)
        # This replica's first example in the global batch (replicas may hold different
        # numbers of examples: a last batch split 31 + 30).
        offset = objectives.replica_offset(tf.shape(x)[0])
        return self.objective_terms(x, y=y, training=training, seed=seed, offset=offset)

    def _update_metrics(self, terms, sample_weight):
        """Adds this step's per-example terms to the epoch means, across all replicas.

        Each replica sums its examples' terms and weights; an all-reduce makes
        every replica's trackers hold the global sums, so the reported epoch
        means are exact per-example means whatever the strategy or batch split.
        """
        values = tf.stack([terms[tracker.name] for tracker in self._trackers])  # [N, batch]
        if sample_weight is None:
            sums = tf.reduce_sum(values, axis=1)
            count = tf.cast(tf.shape(values)[1], values.dtype)
        else:
            weights = tf.cast(tf.reshape(sample_weight, [-1]), values.dtype)
            sums, count = tf.reduce_sum(values * weights, axis=1), tf.reduce_sum(weights)
        replica = objectives.replica_context()
        if replica is not None:
            sums, count = replica.all_reduce(tf.distribute.ReduceOp.SUM, [sums, count])
        # Each tracker is a `keras.metrics.Mean`: add the step's sum and weight directly.
        for tracker, total in zip(self._trackers, tf.unstack(sums)):
            tracker.total.assign_add(total)
            tracker.count.assign_add(count)
        results = {tracker.name: tracker.result() for tracker in self._trackers}
        if _multi_worker(self.distribute_strategy):
            # Keras reduces multi-worker step outputs with a mean over axis 0,
            # which fails on scalars (tensorflow/tensorflow#72388): give them one.
            results = {name: value[None] for name, value in results.items()}
        return results

    def train_step(self, data):
        x, y, sample_weight = self._unpack(data)
        self._update_beta()
        with tf.GradientTape(persistent=self.objective.encoder_loss) as tape:
            terms = self._step_terms(x, training=True, y=y)
            regularization = (tf.nn.scale_regularization_loss(tf.add_n(self.losses))
                              if self.losses else 0.0)
            scaled = {key: self.optimizer.scale_loss(
                _average_loss(terms[key], sample_weight) + regularization)
                for key in ("loss", "loss_encoder") if key in terms}
        variables = self.trainable_variables
        gradients = tape.gradient(scaled["loss"], variables)
        if "loss_encoder" in scaled:
            # The objective's own surrogate for the encoder (DReG) gives its gradient.
            encoder = self.encoder_variables
            own = dict(zip(map(id, encoder), tape.gradient(scaled["loss_encoder"], encoder)))
            gradients = [own.get(id(v), g) for v, g in zip(variables, gradients)]
            del tape
        self.optimizer.apply_gradients(zip(gradients, variables))
        return {**self._update_metrics(terms, sample_weight), **self._schedule_logs()}

    def _schedule_logs(self):
        """The scheduled quantities after this step, for the epoch logs (`history`,
        `CSVLogger`, TensorBoard): `beta` (objectives with a KL term: the ELBO and
        β-TCVAE) and `learning_rate`."""
        logs = {"learning_rate": tf.cast(self.optimizer.learning_rate, tf.float32)}
        if self.objective.kl_weighted:
            logs["beta"] = tf.identity(self.beta)
        if _multi_worker(self.distribute_strategy):
            logs = {name: value[None] for name, value in logs.items()}  # see _update_metrics
        return logs

    def test_step(self, data):
        x, y, sample_weight = self._unpack(data)
        terms = self._step_terms(x, training=False, y=y)
        return self._update_metrics(terms, sample_weight)

    def predict_step(self, data):
        x, y, _ = self._unpack(data)
        return self(x if y is None else (x, y), training=False)

    # ------------------------------------------------------------------
    # Checks before Keras traces anything.

    def _check_data(self, data, name):
        """Checks arrays, eager tensors and datasets before Keras traces anything.

        Catching bad data here keeps the error a clear `ValueError` and keeps a
        failed call from leaving half-traced train functions behind.
        """
        if isinstance(data, tf.data.Dataset):
            element = data.element_spec
            spec = element
            while isinstance(spec, (tuple, list)):
                spec = spec[0]
            self._check_x(tf.TensorSpec(spec.shape), name=name, values=False)
            if self.conditioning.active:
                if not isinstance(element, (tuple, list)) or len(element) < 2:
                    raise ValueError(
                        f"Received an invalid value for `{name}`: this model is conditional "
                        f"(condition_dim={self.condition_dim}), so the dataset must yield "
                        f"(x, y) pairs. Received: elements {element}"
                    )
                # Batches of labels (batch,) or of vectors (batch, condition_dim).
                self.conditioning.check_spec(element[1].shape, element[1].dtype, name=f"{name} y")
        elif isinstance(data, (tuple, list)) and name == "validation_data":
            if data:
                self._check_data(data[0], name)
            if self.conditioning.active and not isinstance(data[0], tf.data.Dataset):
                self.conditioning.prepare(data[1] if len(data) > 1 else None, len(data[0]),
                                          name="validation_data y")
        elif isinstance(data, (np.ndarray, list)) or tf.is_tensor(data):
            self._check_x(np.asarray(data) if isinstance(data, list) else data, name=name)

    def _check_labels(self, x, y):
        """For a conditional model given arrays, checks `y` before anything is traced."""
        arrays = isinstance(x, (np.ndarray, list)) or tf.is_tensor(x)
        if self.conditioning.active and arrays:
            self.conditioning.prepare(y, len(x))

    @staticmethod
    def _placeholder_y(x, y, kwargs):
        # Keras drops `sample_weight` for array inputs when `y` is None; a VAE
        # has no targets, so give it ignored placeholder labels instead.
        if y is None and kwargs.get("sample_weight") is not None and hasattr(x, "__len__"):
            return np.zeros(len(x), "float32")
        return y

    def _build_optimizer(self):
        """Creates the optimizer's variables (its step count, Adam's moments) before Keras
        traces the train step, when every layer is built.

        Keras with TensorFlow, outside a distribution strategy, leaves that to the
        step's first trace; a `tf.function` whose first trace creates variables is
        traced a second time, so every first `fit` paid for two traces of the
        step (and, with `jit_compile`, of its XLA cluster). Building them here is
        what Keras does itself under a strategy (`_symbolic_build`).
        """
        if (self.optimizer is not None and not self.optimizer.built
                and all(layer.built for layer in self._flatten_layers())):
            with self.distribute_strategy.scope():
                self.optimizer.build(self.trainable_variables)

    def fit(self, x=None, y=None, *args, **kwargs):
        """`keras.Model.fit`, after checking array inputs against the likelihood."""
        self._check_data(x, "x")
        self._check_labels(x, y)
        self._check_data(kwargs.get("validation_data"), "validation_data")
        self._build_optimizer()
        return super().fit(x, self._placeholder_y(x, y, kwargs), *args, **kwargs)

    def evaluate(self, x=None, y=None, *args, **kwargs):
        """`keras.Model.evaluate`, after checking array inputs against the likelihood."""
        self._check_data(x, "x")
        self._check_labels(x, y)
        return super().evaluate(x, self._placeholder_y(x, y, kwargs), *args, **kwargs)

    def predict(self, x, *args, **kwargs):
        """`keras.Model.predict` (reconstructions), after checking the input shape.

        A conditional model predicts from `(x, y)`.
        """
        if self.conditioning.active and isinstance(x, (tuple, list)) and len(x) == 2:
            x, y = self.conditioning.split(x)
            self._check_data(x, "x")
            self._check_labels(x, y)
            x = (x, y if tf.is_tensor(y) else np.asarray(y))
        else:
            self._check_data(x, "x")
        return super().predict(x, *args, **kwargs)
