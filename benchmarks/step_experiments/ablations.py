"""Ablations of tfvae's train step, as subclasses swapped onto a built model.

Each switches one piece off (for measurement only; most break a guarantee).
`build(name, input_shape)` returns the classic D–400–20 MLP VAE with the named
pieces switched off; names combine with '+', e.g. "no_mask+no_beta".
"""

import keras
import tensorflow as tf

import tfvae


class NoMask:
    """`_finish_terms` without `valid_rows` / `where_valid` (no NaN rows)."""

    def _finish_terms(self, terms, x, y):
        groups = terms.pop("kl_groups", None)
        for index, layer in enumerate(self.posterior.layer_names):
            terms[f"kl_{layer}"] = groups[:, index]
        return terms


class NoBeta:
    """No in-graph β schedule update."""

    def _update_beta(self):
        pass


class FixedSeed:
    """A constant seed instead of fold_in(train_seed, iterations)."""

    def _step_terms(self, x, training, y=None):
        if not training:
            return super()._step_terms(x, training, y)
        return self.objective_terms(x, y=y, training=True, seed=tf.constant([1, 2], tf.int32))


class KerasNoise:
    """Noise from keras.random.normal with a SeedGenerator (as keras.io), not the hash."""

    def _step_terms(self, x, training, y=None):
        if not training:
            return super()._step_terms(x, training, y)
        if not hasattr(self, "_ab_sg"):
            raise RuntimeError("build() sets _ab_sg")
        noise = keras.random.normal(tf.stack([1, tf.shape(x)[0], self.latent_dim]),
                                    seed=self._ab_sg)
        return self.elbo_terms(x, y, training=True, noise=noise)


class NoScheduleLogs:
    """No `learning_rate` / `beta` outputs."""

    def _schedule_logs(self):
        return {}


class NoBetaLog:
    """Only the `beta` output dropped (learning_rate kept)."""

    def _schedule_logs(self):
        return {"learning_rate": tf.cast(self.optimizer.learning_rate, tf.float32)}


class NoLrLog:
    """Only the `learning_rate` output dropped (beta kept)."""

    def _schedule_logs(self):
        return {"beta": tf.identity(self.beta)}


class NoMetrics:
    """No tracker updates and no metric outputs (upper bound of the metrics' cost)."""

    def _update_metrics(self, terms, sample_weight):
        return {}


class MetricsNoOutputs:
    """Trackers updated as today, but no metric results returned from the step."""

    def _update_metrics(self, terms, sample_weight):
        super()._update_metrics(terms, sample_weight)
        return {}


class KerasMeans:
    """keras.io's way: `tracker.update_state(batch mean)` per tracker (not exact)."""

    def _update_metrics(self, terms, sample_weight):
        for tracker in self._trackers:
            tracker.update_state(tf.reduce_mean(terms[tracker.name]))
        return {tracker.name: tracker.result() for tracker in self._trackers}


class NoStack:
    """The same sums, without stacking the terms: one reduce_sum per tracker."""

    def _update_metrics(self, terms, sample_weight):
        count = tf.cast(tf.shape(terms["loss"])[0], tf.float32)
        for tracker in self._trackers:
            tracker.total.assign_add(tf.reduce_sum(terms[tracker.name]))
            tracker.count.assign_add(count)
        return {tracker.name: tracker.result() for tracker in self._trackers}


class Bare:
    """A minimal train step over tfvae's elbo_terms (like keras.io's, no metrics)."""

    def train_step(self, data):
        x = tf.cast(data, tf.float32)
        with tf.GradientTape() as tape:
            terms = self.elbo_terms(x, training=True, seed=tf.constant([1, 2], tf.int32))
            loss = tf.reduce_mean(terms["loss"])
        variables = self.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return {"loss": loss}


VARIANTS = {
    "no_mask": NoMask, "no_beta": NoBeta, "fixed_seed": FixedSeed, "keras_noise": KerasNoise,
    "no_sched_logs": NoScheduleLogs, "no_beta_log": NoBetaLog, "no_lr_log": NoLrLog,
    "no_metrics": NoMetrics, "metrics_no_outputs": MetricsNoOutputs,
    "keras_means": KerasMeans, "no_stack": NoStack, "bare": Bare,
}
EXTRA = {}  # name -> mixin, for proposal experiments registered by other modules


def build(name, input_shape, seed=0):
    model = tfvae.build_vae(input_shape, 20, hidden_units=(400,), seed=seed)
    name = name.split("#")[0]  # "tfvae#2": a second copy (noise check)
    if name == "tfvae":
        return model
    mixins = tuple({**VARIANTS, **EXTRA}[part] for part in name.split("+"))
    model.__class__ = type(name, mixins + (type(model),), {})
    if KerasNoise in mixins:
        object.__setattr__(model, "_ab_sg", keras.random.SeedGenerator(1337))
    return model
