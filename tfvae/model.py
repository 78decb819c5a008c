"""`tfvae.VAE`: a Keras model whose encoder and decoder produce TFP distributions."""

import logging

import keras
import numpy as np
import tensorflow as tf

from tfvae import _checks
from tfvae import heads as heads_lib
from tfvae import objectives
from tfvae import priors as priors_lib
from tfvae import random as tfvae_random

logger = logging.getLogger(__name__)

_METRICS = ("loss", "elbo", "reconstruction", "kl")
OBJECTIVES = ("elbo", "iwae")
GRADIENT_ESTIMATORS = ("standard", "dreg")


def _serialize(obj):
    return keras.saving.serialize_keras_object(obj)


def _deserialize(config):
    return keras.saving.deserialize_keras_object(config)


def _dreg_is_biased(gradient_estimator, posterior, prior):
    """DReG is unbiased only when q's density depends on the encoder through its parameters."""
    return gradient_estimator == "dreg" and (
        bool(posterior.trainable_variables) or isinstance(prior, priors_lib.VampPrior)
    )


def _multi_worker(strategy):
    """Whether `strategy` is a MultiWorkerMirroredStrategy spanning several workers."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return False
    in_multi_worker_mode = getattr(strategy.extended, "_in_multi_worker_mode", None)
    return bool(in_multi_worker_mode()) if in_multi_worker_mode else True


@keras.saving.register_keras_serializable(package="tfvae")
class VAE(keras.Model):
    """A variational autoencoder trained on the ELBO with `compile()` + `fit()`.

    `encoder(x)` gives the parameters of q(z|x) through the `posterior` head;
    `decoder(z)` gives the parameters of p(x|z) through the `likelihood` head;
    `prior.distribution()` is p(z). Training minimises the batch mean of the
    per-example loss `−reconstruction + β · max(KL, free_bits)`, and `fit` /
    `evaluate` report the epoch means of `loss`, `elbo`, `reconstruction` and
    `kl` per example, in nats.

    Args:
      encoder: a layer mapping `[batch] + event_shape` to
        `[batch, posterior.params_size]`.
      decoder: a layer mapping `[batch, latent_dim]` to
        `likelihood.params_size` values per example.
      posterior: a posterior head (e.g. `DiagonalGaussianPosterior`).
      likelihood: a likelihood head; its `event_shape` is the data shape.
      prior: a prior layer. Default value: `StandardNormalPrior(latent_dim)`.
      num_samples: posterior samples L per example in the training ELBO.
        Default value: `1`.
      beta: KL weight β ≥ 0 (a non-trainable variable, see `KLWarmup`).
        Default value: `1.0`.
      free_bits: nats of KL per example not penalised. Default value: `0.0`.
      kl: `"auto" | "analytic" | "mc"`. Default value: `"auto"`.
      seed: integer seed of the training noise. Default value: `None`
        (random).
      objective: `"elbo"`, or `"iwae"` to train on the importance-weighted
        bound with `k` samples (then `fit` reports `iwae` beside the ELBO
        terms, and β / free bits do not apply). Default value: `"elbo"`.
      k: importance samples for `objective="iwae"`. Default value: `5`.
      gradient_estimator: for IWAE, `"standard"` or `"dreg"` (doubly
        reparameterised, lower-variance encoder gradients). Default value:
        `"standard"`.
    """

    def __init__(
        self,
        encoder,
        decoder,
        posterior,
        likelihood,
        prior=None,
        num_samples=1,
        beta=1.0,
        free_bits=0.0,
        kl="auto",
        seed=None,
        objective="elbo",
        k=5,
        gradient_estimator="standard",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(posterior, heads_lib.DistributionHead) or not (
            hasattr(posterior, "latent_dim") and hasattr(posterior, "reparameterize")
        ):
            raise ValueError(
                "Received an invalid value for `posterior`, expected a posterior head such "
                f"as tfvae.DiagonalGaussianPosterior. Received: posterior={posterior!r}"
            )
        if not isinstance(likelihood, heads_lib.LikelihoodHead):
            raise ValueError(
                "Received an invalid value for `likelihood`, expected a likelihood head such "
                f"as tfvae.BernoulliLikelihood. Received: likelihood={likelihood!r}"
            )
        if prior is None:
            prior = priors_lib.StandardNormalPrior(posterior.latent_dim)
        if not isinstance(prior, priors_lib.Prior) or prior.latent_dim != posterior.latent_dim:
            raise ValueError(
                "Received an invalid value for `prior`, expected a tfvae prior with "
                f"latent_dim={posterior.latent_dim}. Received: prior={prior!r} with "
                f"latent_dim={getattr(prior, 'latent_dim', None)!r}"
            )
        self.encoder = encoder
        self.decoder = decoder
        self.posterior = posterior
        self.likelihood = likelihood
        self.prior = prior
        if _dreg_is_biased(gradient_estimator, posterior, prior):
            raise ValueError(
                "Received an invalid value for `gradient_estimator`: 'dreg' stops gradients "
                "through q's parameters only, so it is biased when q or p(z) has weights of its "
                f"own (here {type(posterior).__name__} / {type(prior).__name__}). Use "
                "gradient_estimator='standard'. Received: gradient_estimator='dreg'"
            )
        if isinstance(prior, priors_lib.VampPrior):
            if prior.input_shape_ != likelihood.event_shape:
                raise ValueError(
                    "Received an invalid value for `prior`: the VampPrior's input_shape must be "
                    f"the data shape {likelihood.event_shape}. Received: input_shape="
                    f"{prior.input_shape_}"
                )
            prior.bind(lambda u: self.posterior(self.encoder(u, training=False)))
        self.num_samples = _checks.positive_int("num_samples", num_samples)
        self.free_bits = _checks.non_negative_float("free_bits", free_bits)
        self.kl_method = _checks.one_of("kl", kl, objectives.KL_METHODS)
        beta = _checks.non_negative_float("beta", beta)
        self.seed = None if seed is None else _checks.non_negative_int("seed", seed)
        self.objective = _checks.one_of("objective", objective, OBJECTIVES)
        self.k = _checks.positive_int("k", k)
        self.gradient_estimator = _checks.one_of(
            "gradient_estimator", gradient_estimator, GRADIENT_ESTIMATORS
        )
        if self.gradient_estimator == "dreg" and self.objective != "iwae":
            raise ValueError(
                "Received an invalid value for `gradient_estimator`: 'dreg' needs "
                f"objective='iwae'. Received: gradient_estimator='dreg', objective={objective!r}"
            )
        self.beta = self.add_weight(
            shape=(),
            initializer=keras.initializers.Constant(beta),
            trainable=False,
            dtype="float32",
            aggregation="only_first_replica",
            name="beta",
        )
        # [start, end, steps, first_step]: a linear β warm-up computed in the
        # train step from the optimizer's iteration count (steps = 0: none).
        self.beta_schedule = self.add_weight(
            shape=(4,),
            initializer="zeros",
            trainable=False,
            dtype="float32",
            aggregation="only_first_replica",
            name="beta_schedule",
        )
        self._seed_generator = keras.random.SeedGenerator(seed)
        names = _METRICS + (("iwae",) if self.objective == "iwae" else ())
        self._trackers = [keras.metrics.Mean(name=name) for name in names]
        self.build((None,) + self.likelihood.event_shape)

    # ------------------------------------------------------------------
    # Building and checking inputs.

    @property
    def event_shape(self):
        """The shape of one example, from the likelihood head."""
        return self.likelihood.event_shape

    @property
    def latent_dim(self):
        return self.posterior.latent_dim

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        if tuple(input_shape[1:]) != self.event_shape:
            raise ValueError(
                f"Received an invalid value for `input_shape`, expected (batch,) + "
                f"{self.event_shape} to match the likelihood's event_shape. "
                f"Received: input_shape={input_shape}"
            )
        x = tf.zeros((1,) + self.event_shape)
        params = self.encoder(self.likelihood.encoder_input(x))
        self._check_params("encoder", params, self.posterior)
        parameters = self.posterior.parameters(params)
        z = self.posterior.reparameterize(parameters, tf.zeros_like(parameters["loc"]))
        params = self.decoder(z)
        self._check_params("decoder", params, self.likelihood)
        self.likelihood(params)
        self.built = True

    @staticmethod
    def _check_params(name, params, head):
        size = int(np.prod(params.shape[1:]))
        if size != head.params_size:
            raise ValueError(
                f"The `{name}` must output {head.params_size} values per example for "
                f"{type(head).__name__} (its params_size). Received: {name} output "
                f"with shape {tuple(params.shape)}"
            )

    def _check_x(self, x, name="x", values=True):
        """Checks rank and shape (always) and values (when concrete)."""
        shape = tuple(x.shape)
        if len(shape) != len(self.event_shape) + 1 or any(
            got is not None and got != want for got, want in zip(shape[1:], self.event_shape)
        ):
            raise ValueError(
                f"Received an invalid value for `{name}`, expected shape (batch,) + "
                f"{self.event_shape}. Received: {name} with shape {shape}"
            )
        if values and (isinstance(x, np.ndarray) or tf.executing_eagerly()):
            self.likelihood.validate_data(keras.ops.convert_to_numpy(x), name=name)

    def _as_input(self, x, name="x"):
        if not tf.is_tensor(x):
            x = np.asarray(x, dtype="float32")
        self._check_x(x, name=name)
        return tf.cast(x, tf.float32)

    # ------------------------------------------------------------------
    # Distributions.

    def encode(self, x, training=False):
        """q(z|x): a `tfd.Distribution` with batch shape `[batch]`, event shape `[latent_dim]`."""
        return self._posterior(self._as_input(x), training)

    def _posterior_parameters(self, x, training=False):
        """The posterior head's named parameters for data `x`."""
        return self.posterior.parameters(
            self.encoder(self.likelihood.encoder_input(x), training=training)
        )

    def _posterior(self, x, training):
        return self.posterior.distribution(self._posterior_parameters(x, training))

    def decode(self, z, training=False):
        """p(x|z): a `tfd.Distribution` with batch shape `[batch]`, event shape `event_shape`."""
        z = tf.convert_to_tensor(z, tf.float32)
        if z.shape.rank != 2 or z.shape[-1] != self.latent_dim:
            raise ValueError(
                f"Received an invalid value for `z`, expected shape (batch, {self.latent_dim}). "
                f"Received: z with shape {tuple(z.shape)}"
            )
        return self.likelihood(self.decoder(z, training=training))

    def _decode_fn(self, training):
        return lambda z: self.likelihood(self.decoder(z, training=training))

    def _decode_mean(self, z, training=False):
        """The likelihood's mean at `z`, from its parameters (no TFP object needed)."""
        return self.likelihood.mean_of(self.likelihood.parameters(self.decoder(z, training=training)))

    def call(self, inputs, training=False):
        """The deterministic reconstruction: the likelihood's mean at z = E_q[z]."""
        self._check_x(inputs, name="inputs", values=False)
        return self._decode_mean(self._latent_code(tf.cast(inputs, tf.float32), training), training)

    def _latent_code(self, x, training=False):
        parameters = self._posterior_parameters(x, training)
        return self.posterior.reparameterize(parameters, tf.zeros_like(parameters["loc"]))

    def latent_code(self, x):
        """A deterministic code for `x`: z = g(0; q(z|x)), the noise-free reparameterisation.

        For Gaussian posteriors this is the posterior mean; for flow posteriors
        the flow's image of the base mean. Shape `[batch, latent_dim]`.
        """
        return self._latent_code(self._as_input(x))

    # ------------------------------------------------------------------
    # Objectives, per example.

    def _prior_distribution(self):
        return self.prior.distribution()

    def _objective_terms(self, x, training, seed, offset):
        """The training objective's per-example terms (ELBO or IWAE, see `objective`)."""
        if self.objective == "elbo":
            return self._terms(x, training=training, seed=seed, offset=offset)
        parameters = self._posterior_parameters(x, training)
        stopped = None
        if self.gradient_estimator == "dreg":
            stopped = self.posterior.distribution(tf.nest.map_structure(tf.stop_gradient, parameters))
        return objectives.iwae(
            x, self.posterior.distribution(parameters), self._decode_fn(training),
            self._prior_distribution(), self.k, kl=self.kl_method, seed=seed, offset=offset,
            stopped_posterior=stopped,
        )

    def _terms(self, x, training, seed=None, num_samples=None, offset=0):
        q = self._posterior(x, training)
        return objectives.elbo(
            x,
            q,
            self._decode_fn(training),
            self._prior_distribution(),
            num_samples=num_samples or self.num_samples,
            kl=self.kl_method,
            beta=tf.convert_to_tensor(self.beta),
            free_bits=self.free_bits,
            seed=seed,
            offset=offset,
        )

    def elbo(self, x, num_samples=None, seed=None):
        """Per-example ELBO terms in nats.

        Args:
          x: data `[batch] + event_shape`.
          num_samples: posterior samples L. Default value: the model's.
          seed: noise seed. Default value: `None` (random).

        Returns:
          A dict of `[batch]` tensors: `elbo`, `reconstruction`, `kl`.
        """
        x = self._as_input(x)
        if num_samples is not None:
            _checks.positive_int("num_samples", num_samples)
        terms = self._terms(x, training=False, seed=seed, num_samples=num_samples)
        return {k: terms[k] for k in ("elbo", "reconstruction", "kl")}

    def iwae_bound(self, x, k=50, seed=None, chunk_size=None):
        """The IWAE bound with `k` importance samples, per example (`[batch]`)."""
        x = self._as_input(x)
        return objectives.iwae_bound(
            x, self._posterior(x, False), self._decode_fn(False), self._prior_distribution(), k,
            seed=seed, chunk_size=chunk_size,
        )

    def log_likelihood(self, x, num_samples=1000, seed=None, chunk_size=100):
        """Importance-sampled estimate of `log p(x)` per example (`[batch]`)."""
        x = self._as_input(x)
        _checks.positive_int("num_samples", num_samples)
        return objectives.log_likelihood(
            x, self._posterior(x, False), self._decode_fn(False), self._prior_distribution(),
            num_samples, seed=seed, chunk_size=chunk_size,
        )

    # ------------------------------------------------------------------
    # Generation.

    def sample(self, n, seed=None, mean=True):
        """Generates `n` examples: z ~ p(z), then the likelihood's mean (or a sample).

        Returns:
          A tensor `[n] + event_shape`.
        """
        n = _checks.positive_int("n", n)
        seed = tfvae_random.make_seed(seed)
        prior = self._prior_distribution()
        z = objectives.posterior_sample(prior, n, seed=seed)
        z = tf.reshape(z, [n, self.latent_dim])
        if mean:
            return self._decode_mean(z)
        return self.decode(z).sample(seed=tfvae_random.fold_in(seed, 1))

    def reconstruct(self, x, sample_latent=False, seed=None):
        """Reconstructs `x`: the likelihood's mean at E_q[z] (or at one z ~ q if `sample_latent`)."""
        if sample_latent:
            z = objectives.posterior_sample(self.encode(x), 1, seed=seed)[0]
        else:
            z = self.latent_code(x)
        return self._decode_mean(z)

    # ------------------------------------------------------------------
    # Training.

    @property
    def metrics(self):
        return list(self._trackers)

    def _unpack(self, data):
        x, _, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        self._check_x(x, values=False)
        return tf.cast(x, tf.float32), sample_weight

    def _step_terms(self, x, training):
        seed = tf.cast(self._seed_generator.next(), tf.int32)
        offset = 0
        replica = tf.distribute.get_replica_context()
        if replica is not None and replica.num_replicas_in_sync > 1:
            offset = replica.replica_id_in_sync_group * tf.shape(x)[0]
        return self._objective_terms(x, training, seed, offset)

    def _update_metrics(self, terms, sample_weight):
        """Adds this step's per-example terms to the epoch means, across all replicas.

        Each replica sums its examples' terms and weights; an all-reduce makes
        every replica's trackers hold the global sums, so the reported epoch
        means are exact per-example means whatever the strategy or batch split.
        """
        weights = tf.ones_like(terms["loss"]) if sample_weight is None else tf.cast(
            tf.reshape(sample_weight, [-1]), terms["loss"].dtype
        )
        sums = [tf.reduce_sum(terms[tracker.name] * weights) for tracker in self._trackers]
        count = tf.reduce_sum(weights)
        replica = tf.distribute.get_replica_context()
        if replica is not None and replica.num_replicas_in_sync > 1:
            *sums, count = replica.all_reduce(tf.distribute.ReduceOp.SUM, [*sums, count])
        for tracker, total in zip(self._trackers, sums):
            tracker.update_state(tf.math.divide_no_nan(total, count), sample_weight=count)
        results = {tracker.name: tracker.result() for tracker in self._trackers}
        if _multi_worker(self.distribute_strategy):
            # Keras reduces multi-worker step outputs with a mean over axis 0,
            # which fails on scalars (tensorflow/tensorflow#72388): give them one.
            results = {name: value[None] for name, value in results.items()}
        return results

    def set_beta_schedule(self, start, end, steps, first_step=0):
        """Warms β up linearly from `start` to `end` over `steps` optimizer steps.

        The train step sets `beta = start + (end − start) · min(t / steps, 1)`
        with `t = optimizer.iterations − first_step`, inside the compiled step,
        so the schedule is exact per step under `steps_per_execution`, XLA and
        distribution strategies, and survives save/load. `steps=0` turns it off.
        """
        _checks.non_negative_float("start", start)
        _checks.non_negative_float("end", end)
        _checks.non_negative_float("steps", steps)
        self.beta_schedule.assign([start, end, steps, first_step])
        if steps == 0:
            return
        self.beta.assign(start)

    def _update_beta(self):
        start, end, steps, first_step = tf.unstack(tf.convert_to_tensor(self.beta_schedule))
        done = tf.cast(self.optimizer.iterations, tf.float32) - first_step
        fraction = tf.clip_by_value(done / tf.maximum(steps, 1.0), 0.0, 1.0)
        self.beta.assign(tf.where(steps > 0, start + (end - start) * fraction, self.beta))

    def train_step(self, data):
        x, sample_weight = self._unpack(data)
        self._update_beta()
        with tf.GradientTape(persistent=self.gradient_estimator == "dreg") as tape:
            terms = self._step_terms(x, training=True)
            scaled = {}
            for key in ("loss", "loss_encoder"):
                if key in terms:
                    loss = tf.nn.compute_average_loss(terms[key], sample_weight=sample_weight)
                    if self.losses:
                        loss += tf.nn.scale_regularization_loss(tf.add_n(self.losses))
                    scaled[key] = self.optimizer.scale_loss(loss)
        variables = self.trainable_variables
        gradients = tape.gradient(scaled["loss"], variables)
        if "loss_encoder" in scaled:
            # DReG: the encoder's gradient comes from its own surrogate.
            encoder_ids = {id(v) for v in self.encoder.trainable_variables + self.posterior.trainable_variables}
            encoder_gradients = tape.gradient(scaled["loss_encoder"], variables)
            gradients = [
                ge if id(v) in encoder_ids else g
                for v, g, ge in zip(variables, gradients, encoder_gradients)
            ]
            del tape
        self.optimizer.apply_gradients(zip(gradients, variables))
        return self._update_metrics(terms, sample_weight)

    def test_step(self, data):
        x, sample_weight = self._unpack(data)
        terms = self._step_terms(x, training=False)
        return self._update_metrics(terms, sample_weight)

    def predict_step(self, data):
        x, _ = self._unpack(data)
        return self(x, training=False)

    def _check_data(self, data, name):
        """Checks arrays, eager tensors and datasets before Keras traces anything.

        Catching bad data here keeps the error a clear `ValueError` and keeps a
        failed call from leaving half-traced train functions behind.
        """
        if isinstance(data, tf.data.Dataset):
            spec = data.element_spec
            while isinstance(spec, (tuple, list)):
                spec = spec[0]
            self._check_x(tf.TensorSpec(spec.shape), name=name, values=False)
        elif isinstance(data, (tuple, list)) and name == "validation_data":
            if data:
                self._check_data(data[0], name)
        elif isinstance(data, (np.ndarray, list)) or tf.is_tensor(data):
            self._check_x(np.asarray(data) if isinstance(data, list) else data, name=name)

    def fit(self, x=None, y=None, *args, **kwargs):
        """`keras.Model.fit`, after checking array inputs against the likelihood."""
        self._check_data(x, "x")
        self._check_data(kwargs.get("validation_data"), "validation_data")
        return super().fit(x, self._placeholder_y(x, y, kwargs), *args, **kwargs)

    def evaluate(self, x=None, y=None, *args, **kwargs):
        """`keras.Model.evaluate`, after checking array inputs against the likelihood."""
        self._check_data(x, "x")
        return super().evaluate(x, self._placeholder_y(x, y, kwargs), *args, **kwargs)

    def predict(self, x, *args, **kwargs):
        """`keras.Model.predict` (reconstructions), after checking the input shape."""
        self._check_data(x, "x")
        return super().predict(x, *args, **kwargs)

    @staticmethod
    def _placeholder_y(x, y, kwargs):
        # Keras drops `sample_weight` for array inputs when `y` is None; a VAE
        # has no targets, so give it ignored placeholder labels instead.
        if y is None and kwargs.get("sample_weight") is not None and hasattr(x, "__len__"):
            return np.zeros(len(x), "float32")
        return y

    # ------------------------------------------------------------------
    # Serialisation.

    def get_config(self):
        return {
            **super().get_config(),
            "encoder": _serialize(self.encoder),
            "decoder": _serialize(self.decoder),
            "posterior": _serialize(self.posterior),
            "likelihood": _serialize(self.likelihood),
            "prior": _serialize(self.prior),
            "num_samples": self.num_samples,
            "beta": float(keras.ops.convert_to_numpy(self.beta)),
            "free_bits": self.free_bits,
            "kl": self.kl_method,
            "seed": self.seed,
            "objective": self.objective,
            "k": self.k,
            "gradient_estimator": self.gradient_estimator,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("encoder", "decoder", "posterior", "likelihood", "prior"):
            config[key] = _deserialize(config[key])
        return cls(**config)
