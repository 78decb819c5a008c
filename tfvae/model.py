"""`tfvae.VAE`: a Keras model whose encoder and decoder produce TFP distributions."""

import logging

import keras
import numpy as np
import tensorflow as tf

from tfvae import _checks
from tfvae import heads as heads_lib
from tfvae import hierarchy
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
      free_bits_groups: split the KL into this many groups of latent
        dimensions and apply `free_bits` per group on the batch mean
        (Kingma et al., 2016) instead of per example on the total. Needs a
        diagonal Gaussian posterior and a standard normal prior; a
        hierarchical model's groups are its two layers (`free_bits_groups`
        must then be `None` or `2`). Default value: `None`.
      condition_dim: make the model conditional, p(x|z, y) and q(z|x, y):
        the size of y. Labels (integers in `[0, condition_dim)`) are one-hot
        encoded; float vectors `[batch, condition_dim]` are used as given.
        The encoder sees y concatenated to x (as constant extra channels
        for images), the decoder sees `[z, y]`. Then `fit` takes `(x, y)`
        pairs and every method takes `y=`. Default value: `None`.

    Hierarchical models: pass a `tfvae.HierarchicalPosterior` (its prior
    defaults to the matching `tfvae.HierarchicalPrior`); training and
    evaluation then also report the per-layer terms `kl_z1` and `kl_z2`.
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
        free_bits_groups=None,
        condition_dim=None,
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
        hierarchical = isinstance(posterior, hierarchy.HierarchicalPosterior)
        if prior is None:
            prior = (hierarchy.HierarchicalPrior(posterior.latent_dims) if hierarchical
                     else priors_lib.StandardNormalPrior(posterior.latent_dim))
        if hierarchical != isinstance(prior, hierarchy.HierarchicalPrior) or (
            hierarchical and prior.latent_dims != posterior.latent_dims
        ):
            raise ValueError(
                "Received an invalid value for `prior`: a HierarchicalPosterior needs a "
                "HierarchicalPrior with the same latent_dims, and vice versa. Received: "
                f"posterior={type(posterior).__name__} with latent_dims="
                f"{getattr(posterior, 'latent_dims', None)}, prior={type(prior).__name__} with "
                f"latent_dims={getattr(prior, 'latent_dims', None)}"
            )
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
        self.hierarchical = hierarchical
        self.condition_dim = (
            None if condition_dim is None else _checks.positive_int("condition_dim", condition_dim)
        )
        if self.condition_dim is not None and len(likelihood.event_shape) not in (1, 3):
            raise ValueError(
                "Received an invalid value for `condition_dim`: conditioning needs vectors "
                "(d,) or images (height, width, channels). Received: condition_dim="
                f"{condition_dim} for data of shape {likelihood.event_shape}"
            )
        if self.condition_dim is not None and isinstance(prior, priors_lib.VampPrior):
            raise ValueError(
                "Received an invalid value for `condition_dim`: a VampPrior's pseudo-inputs "
                f"carry no y. Use another prior. Received: condition_dim={condition_dim}"
            )
        self.num_samples = _checks.positive_int("num_samples", num_samples)
        self.free_bits = _checks.non_negative_float("free_bits", free_bits)
        self.kl_method = _checks.one_of("kl", kl, objectives.KL_METHODS)
        beta = _checks.non_negative_float("beta", beta)
        self.seed = None if seed is None else _checks.non_negative_int("seed", seed)
        self.objective = _checks.one_of("objective", objective, OBJECTIVES)
        self.free_bits_groups = self._check_free_bits_groups(
            free_bits_groups, posterior, prior, self.free_bits, self.objective)
        self.k = _checks.positive_int("k", k)
        self.gradient_estimator = _checks.one_of(
            "gradient_estimator", gradient_estimator, GRADIENT_ESTIMATORS
        )
        if self.objective == "iwae" and (beta != 1.0 or self.free_bits > 0):
            raise ValueError(
                "Received an invalid value for `objective`: the IWAE bound has no KL term for β "
                "or free bits to act on. Use objective='elbo', or beta=1 and free_bits=0. "
                f"Received: objective='iwae', beta={beta}, free_bits={self.free_bits}"
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
        names += (("kl_z1", "kl_z2") if self.hierarchical else ())
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

    @staticmethod
    def _check_free_bits_groups(groups, posterior, prior, free_bits, objective):
        if groups is None:
            return None
        groups = _checks.positive_int("free_bits_groups", groups)
        if not free_bits or objective != "elbo":
            raise ValueError(
                "Received an invalid value for `free_bits_groups`: it says how `free_bits` "
                "applies to the ELBO's KL, so it needs free_bits > 0 and objective='elbo'. "
                f"Received: free_bits_groups={groups}, free_bits={free_bits}, "
                f"objective={objective!r}"
            )
        if isinstance(posterior, hierarchy.HierarchicalPosterior):
            if groups != 2:
                raise ValueError(
                    "Received an invalid value for `free_bits_groups`: a hierarchical model's "
                    f"groups are its 2 layers. Received: free_bits_groups={groups}"
                )
            return groups
        if not isinstance(posterior, heads_lib.DiagonalGaussianPosterior) or not isinstance(
            prior, priors_lib.StandardNormalPrior
        ):
            raise ValueError(
                "Received an invalid value for `free_bits_groups`: the KL splits over latent "
                "dimensions only for a diagonal Gaussian posterior and a standard normal prior. "
                f"Received: free_bits_groups={groups} with {type(posterior).__name__} and "
                f"{type(prior).__name__}"
            )
        if groups > posterior.latent_dim:
            raise ValueError(
                "Received an invalid value for `free_bits_groups`, expected at most "
                f"latent_dim={posterior.latent_dim} groups. Received: free_bits_groups={groups}"
            )
        return groups

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        if tuple(input_shape[1:]) != self.event_shape:
            raise ValueError(
                f"Received an invalid value for `input_shape`, expected (batch,) + "
                f"{self.event_shape} to match the likelihood's event_shape. "
                f"Received: input_shape={input_shape}"
            )
        x = tf.zeros((1,) + self.event_shape)
        y = None if self.condition_dim is None else tf.zeros((1, self.condition_dim))
        params = self.encoder(self._encoder_input(x, y))
        self._check_params("encoder", params, self.posterior)
        parameters = self.posterior.parameters(params)
        z = self.posterior.reparameterize(parameters, tf.zeros((1, self.latent_dim)))
        params = self.decoder(self._decoder_input(z, y))
        self._check_params("decoder", params, self.likelihood)
        self.likelihood(params)
        # Heads and priors are used through their methods, not called: mark them
        # built, or Keras re-builds the model symbolically (from x alone) under
        # distribution strategies.
        for layer in (self.posterior, self.prior, self.likelihood):
            layer.built = True
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

    def _condition(self, y, batch_size=None, name="y"):
        """`y` as a float `[batch, condition_dim]` tensor (None for unconditional models).

        Integer `y` (a label, or labels `[batch]`) is one-hot encoded; float `y`
        (`[condition_dim]` or `[batch, condition_dim]`) is used as given. A
        single label or vector is repeated `batch_size` times.
        """
        c = self.condition_dim
        if c is None:
            if y is not None:
                raise ValueError(
                    f"Received an invalid value for `{name}`: this model is not conditional "
                    f"(condition_dim=None), so it takes no `{name}`. Received: {name} of type "
                    f"{type(y).__name__}"
                )
            return None
        if y is None:
            raise ValueError(
                f"Received an invalid value for `{name}`: this model is conditional "
                f"(condition_dim={c}), so it needs `{name}`: integer labels (batch,) or "
                f"float vectors (batch, {c}). Received: {name}=None"
            )
        if not tf.is_tensor(y):
            y = np.asarray(y)
            if y.dtype.kind not in "iuf":
                raise ValueError(
                    f"Received an invalid value for `{name}`, expected integer labels or "
                    f"float vectors. Received: {name} with dtype {y.dtype}"
                )
            y = tf.convert_to_tensor(y if y.dtype.kind == "f" else y.astype("int32"))
        self._check_condition_spec(y.shape, y.dtype, name)
        single = y.shape.rank == 0 or (y.shape.rank == 1 and not y.dtype.is_integer)
        rows = None if single else y.shape[0]
        if isinstance(batch_size, int) and rows is not None and rows != batch_size:
            raise ValueError(
                f"Received an invalid value for `{name}`, expected one condition per example "
                f"({batch_size}), or a single label or vector for all. Received: {name} with "
                f"{rows} rows"
            )
        if y.dtype.is_integer:
            if tf.executing_eagerly():
                values = y.numpy()
                if values.size and (values.min() < 0 or values.max() >= c):
                    raise ValueError(
                        f"Received an invalid value for `{name}`, expected labels in [0, {c}). "
                        f"Received: {name} with values in [{values.min()}, {values.max()}]"
                    )
            else:  # (XLA drops asserts; the data pipelines check labels before training)
                checks = [
                    tf.debugging.assert_non_negative(y, message=f"`{name}`: labels must be >= 0"),
                    tf.debugging.assert_less(
                        y, tf.cast(c, y.dtype), message=f"`{name}`: labels must be < {c}"),
                ]
                with tf.control_dependencies(checks):
                    y = tf.identity(y)
            y = tf.one_hot(tf.cast(y, tf.int32), c)
        else:
            y = tf.cast(y, tf.float32)
            if tf.executing_eagerly() and not np.all(np.isfinite(y.numpy())):
                raise ValueError(
                    f"Received an invalid value for `{name}`, expected finite condition "
                    f"vectors. Received: {name} with NaN or infinite values"
                )
        if y.shape.rank == 1:
            y = tf.tile(y[None], [1 if batch_size is None else batch_size, 1])
        return y

    def _check_condition_spec(self, shape, dtype, name="y"):
        """Checks the shape and dtype of a condition: labels `()`/`(batch,)` or vectors."""
        c = self.condition_dim
        shape = tf.TensorShape(shape)
        if tf.as_dtype(dtype).is_integer:
            if shape.rank not in (0, 1):
                raise ValueError(
                    f"Received an invalid value for `{name}`, expected integer labels of shape "
                    f"() or (batch,). Received: {name} with shape {tuple(shape)}"
                )
        elif not tf.as_dtype(dtype).is_floating or shape.rank not in (1, 2) or shape[-1] != c:
            raise ValueError(
                f"Received an invalid value for `{name}`, expected integer labels or float "
                f"vectors of shape ({c},) or (batch, {c}). Received: {name} with shape "
                f"{tuple(shape)} and dtype {tf.as_dtype(dtype).name}"
            )

    def _encoder_input(self, x, y):
        """The encoder's input: x (in the likelihood's encoder space), with y appended."""
        h = self.likelihood.encoder_input(x)
        if y is None:
            return h
        if len(self.event_shape) == 1:
            return tf.concat([h, tf.cast(y, h.dtype)], axis=-1)
        # Images: y as constant extra channels.
        y_map = tf.cast(y, h.dtype)[:, None, None, :] * tf.ones_like(h[..., :1])
        return tf.concat([h, y_map], axis=-1)

    def _decoder_input(self, z, y):
        """The decoder's input: the part of z it sees (z1 in a hierarchy), with y appended."""
        z = self.prior.decoder_input(z)
        if y is None:
            return z
        # z may hold L samples per example, sample-major ([L * batch, d]).
        repeats = tf.shape(z)[0] // tf.shape(y)[0]
        return tf.concat([z, tf.tile(tf.cast(y, z.dtype), [repeats, 1])], axis=-1)

    # ------------------------------------------------------------------
    # Distributions.

    def encode(self, x, y=None, training=False):
        """q(z|x): a `tfd.Distribution` with batch shape `[batch]`, event shape `[latent_dim]`."""
        x = self._as_input(x)
        return self._posterior(x, training, self._condition(y, x.shape[0]))

    def _posterior_parameters(self, x, training=False, y=None):
        """The posterior head's named parameters for data `x` (and condition `y`)."""
        return self.posterior.parameters(
            self.encoder(self._encoder_input(x, y), training=training)
        )

    def _posterior(self, x, training, y=None):
        return self.posterior.distribution(self._posterior_parameters(x, training, y))

    def decode(self, z, y=None, training=False):
        """p(x|z): a `tfd.Distribution` with batch shape `[batch]`, event shape `event_shape`."""
        z = tf.convert_to_tensor(z, tf.float32)
        if z.shape.rank != 2 or z.shape[-1] != self.latent_dim:
            raise ValueError(
                f"Received an invalid value for `z`, expected shape (batch, {self.latent_dim}). "
                f"Received: z with shape {tuple(z.shape)}"
            )
        return self._decode_fn(training, self._condition(y, z.shape[0]))(z)

    def _decode_fn(self, training, y=None):
        return lambda z: self.likelihood.distribution(self._decoder_parameters(z, training, y))

    def _decoder_parameters(self, z, training=False, y=None):
        """The likelihood head's named parameters at latents `z` `[batch, latent_dim]`."""
        return self.likelihood.parameters(self.decoder(self._decoder_input(z, y), training=training))

    def _decode_mean(self, z, training=False, y=None):
        """The likelihood's mean at `z`, from its parameters (no TFP object needed)."""
        return self.likelihood.mean_of(self._decoder_parameters(z, training, y))

    def _split_inputs(self, inputs):
        """`inputs` is x, or `(x, y)` for a conditional model."""
        if self.condition_dim is None:
            return inputs, None
        if not isinstance(inputs, (tuple, list)) or len(inputs) != 2:
            raise ValueError(
                "Received an invalid value for `inputs`: a conditional model is called on "
                f"(x, y). Received: inputs of type {type(inputs).__name__}"
            )
        return inputs[0], inputs[1]

    def call(self, inputs, training=False):
        """The deterministic reconstruction: the likelihood's mean at z = g(0; q(z|x)).

        `inputs` is x, or `(x, y)` for a conditional model.
        """
        x, y = self._split_inputs(inputs)
        self._check_x(x, name="inputs", values=False)
        x = tf.cast(x, tf.float32)
        y = self._condition(y, tf.shape(x)[0])
        return self._decode_mean(self._latent_code(x, training, y), training, y)

    def _latent_code(self, x, training=False, y=None):
        parameters = self._posterior_parameters(x, training, y)
        eps = tf.zeros(tf.stack([tf.shape(x)[0], self.latent_dim]))
        return self.posterior.reparameterize(parameters, eps)

    def latent_code(self, x, y=None):
        """A deterministic code for `x`: z = g(0; q(z|x)), the noise-free reparameterisation.

        For Gaussian posteriors this is the posterior mean; for flow posteriors
        the flow's image of the base mean; for a hierarchy, z₁'s mean and
        z₂'s mean given it. Shape `[batch, latent_dim]`.
        """
        x = self._as_input(x)
        return self._latent_code(x, y=self._condition(y, x.shape[0]))

    # ------------------------------------------------------------------
    # Objectives, per example.

    def _prior_distribution(self):
        return self.prior.distribution()

    def _group_kl_fn(self, parameters):
        """`z [L, batch, d] -> [batch, G]` per-group KL, or None (see `free_bits_groups`)."""
        if self.hierarchical:
            def layer_kls(z):
                log_q = self.posterior.layer_log_probs(parameters, z)
                log_p = self.prior.layer_log_probs(z)
                return tf.stack([tf.reduce_mean(q - p, axis=0) for q, p in zip(log_q, log_p)], -1)

            return layer_kls
        if self.free_bits_groups is None:
            return None
        loc, scale = parameters["loc"], parameters["scale"]
        # KL(N(μ, σ²) ‖ N(0, 1)) per dimension, summed within each group.
        per_dim = 0.5 * (tf.square(loc) + tf.square(scale) - 1.0) - tf.math.log(scale)
        bounds = np.cumsum([0] + [len(g) for g in np.array_split(
            np.arange(self.latent_dim), self.free_bits_groups)])
        groups = tf.stack(
            [tf.reduce_sum(per_dim[:, a:b], axis=-1) for a, b in zip(bounds[:-1], bounds[1:])], -1
        )
        return lambda z: groups

    def _with_layer_terms(self, terms):
        """Adds `kl_z1`, `kl_z2` (hierarchies) and drops the `kl_groups` matrix."""
        groups = terms.pop("kl_groups", None)
        if self.hierarchical:
            terms["kl_z1"], terms["kl_z2"] = groups[:, 0], groups[:, 1]
        return terms

    def _objective_terms(self, x, training, seed, offset, y=None):
        """The training objective's per-example terms (ELBO or IWAE, see `objective`)."""
        if self.objective == "elbo":
            return self._terms(x, training=training, seed=seed, offset=offset, y=y)
        parameters = self._posterior_parameters(x, training, y)
        stopped = None
        if self.gradient_estimator == "dreg":
            stopped = self.posterior.distribution(tf.nest.map_structure(tf.stop_gradient, parameters))
        return self._with_layer_terms(objectives.iwae(
            x, self.posterior.distribution(parameters), self._decode_fn(training, y),
            self._prior_distribution(), self.k, kl=self.kl_method, seed=seed, offset=offset,
            stopped_posterior=stopped, group_kl=self._group_kl_fn(parameters),
        ))

    def _terms(self, x, training, seed=None, num_samples=None, offset=0, y=None, noise=None):
        parameters = self._posterior_parameters(x, training, y)
        return self._with_layer_terms(objectives.elbo(
            x,
            self.posterior.distribution(parameters),
            self._decode_fn(training, y),
            self._prior_distribution(),
            num_samples=num_samples or self.num_samples,
            kl=self.kl_method,
            beta=tf.convert_to_tensor(self.beta),
            free_bits=self.free_bits,
            seed=seed,
            noise=noise,
            offset=offset,
            group_kl=self._group_kl_fn(parameters),
            free_bits_by_group=self.free_bits_groups is not None,
        ))

    def elbo(self, x, num_samples=None, seed=None, y=None):
        """Per-example ELBO terms in nats.

        Args:
          x: data `[batch] + event_shape`.
          num_samples: posterior samples L. Default value: the model's.
          seed: noise seed. Default value: `None` (random).
          y: the condition, for a conditional model.

        Returns:
          A dict of `[batch]` tensors: `elbo`, `reconstruction`, `kl` (and
          `kl_z1`, `kl_z2` for a hierarchical model).
        """
        x = self._as_input(x)
        y = self._condition(y, x.shape[0])
        if num_samples is not None:
            _checks.positive_int("num_samples", num_samples)
        terms = self._terms(x, training=False, seed=seed, num_samples=num_samples, y=y)
        return {k: v for k, v in terms.items() if k != "loss"}

    def iwae_bound(self, x, k=50, seed=None, chunk_size=None, y=None):
        """The IWAE bound with `k` importance samples, per example (`[batch]`)."""
        x = self._as_input(x)
        y = self._condition(y, x.shape[0])
        return objectives.iwae_bound(
            x, self._posterior(x, False, y), self._decode_fn(False, y), self._prior_distribution(),
            k, seed=seed, chunk_size=chunk_size,
        )

    def log_likelihood(self, x, num_samples=1000, seed=None, chunk_size=100, y=None):
        """Importance-sampled estimate of `log p(x)` (or `log p(x|y)`) per example (`[batch]`)."""
        x = self._as_input(x)
        y = self._condition(y, x.shape[0])
        _checks.positive_int("num_samples", num_samples)
        return objectives.log_likelihood(
            x, self._posterior(x, False, y), self._decode_fn(False, y), self._prior_distribution(),
            num_samples, seed=seed, chunk_size=chunk_size,
        )

    # ------------------------------------------------------------------
    # Generation.

    def sample(self, n, seed=None, mean=True, y=None):
        """Generates `n` examples: z ~ p(z), then the likelihood's mean (or a sample).

        Args:
          n: number of examples.
          seed: noise seed. Default value: `None` (random).
          mean: return the likelihood's mean rather than a sample from it.
          y: for a conditional model, one label or vector for all `n`, or `n`
            of them.

        Returns:
          A tensor `[n] + event_shape`.
        """
        n = _checks.positive_int("n", n)
        y = self._condition(y, n)
        seed = tfvae_random.make_seed(seed)
        prior = self._prior_distribution()
        z = objectives.posterior_sample(prior, n, seed=seed)
        z = tf.reshape(z, [n, self.latent_dim])
        if mean:
            return self._decode_mean(z, y=y)
        return self._decode_fn(False, y)(z).sample(seed=tfvae_random.fold_in(seed, 1))

    def reconstruct(self, x, sample_latent=False, seed=None, y=None):
        """Reconstructs `x`: the likelihood's mean at E_q[z] (or at one z ~ q if `sample_latent`)."""
        if sample_latent:
            z = objectives.posterior_sample(self.encode(x, y), 1, seed=seed)[0]
        else:
            z = self.latent_code(x, y)
        return self._decode_mean(z, y=self._condition(y, z.shape[0]))

    # ------------------------------------------------------------------
    # Training.

    @property
    def metrics(self):
        return list(self._trackers)

    def _unpack(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if isinstance(x, (tuple, list)) and self.condition_dim is not None:
            x, y = self._split_inputs(x)  # `predict((x, y))`
        self._check_x(x, values=False)
        if self.condition_dim is None:
            y = None
        elif y is None:
            raise ValueError(
                f"This model is conditional (condition_dim={self.condition_dim}): give it "
                "(x, y) pairs. Received: data without y"
            )
        x = tf.cast(x, tf.float32)
        return x, self._condition(y, tf.shape(x)[0]), sample_weight

    def _step_terms(self, x, training, y=None):
        seed = tf.cast(self._seed_generator.next(), tf.int32)
        offset = 0
        replica = tf.distribute.get_replica_context()
        if replica is not None and replica.num_replicas_in_sync > 1:
            offset = replica.replica_id_in_sync_group * tf.shape(x)[0]
        return self._objective_terms(x, training, seed, offset, y)

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
        x, y, sample_weight = self._unpack(data)
        self._update_beta()
        with tf.GradientTape(persistent=self.gradient_estimator == "dreg") as tape:
            terms = self._step_terms(x, training=True, y=y)
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
        x, y, sample_weight = self._unpack(data)
        terms = self._step_terms(x, training=False, y=y)
        return self._update_metrics(terms, sample_weight)

    def predict_step(self, data):
        x, y, _ = self._unpack(data)
        return self(x if y is None else (x, y), training=False)

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
            if self.condition_dim is not None:
                if not isinstance(element, (tuple, list)) or len(element) < 2:
                    raise ValueError(
                        f"Received an invalid value for `{name}`: this model is conditional "
                        f"(condition_dim={self.condition_dim}), so the dataset must yield "
                        f"(x, y) pairs. Received: elements {element}"
                    )
                # Batches of labels (batch,) or of vectors (batch, condition_dim).
                self._check_condition_spec(element[1].shape, element[1].dtype, name=f"{name} y")
        elif isinstance(data, (tuple, list)) and name == "validation_data":
            if data:
                self._check_data(data[0], name)
            if self.condition_dim is not None and not isinstance(data[0], tf.data.Dataset):
                self._condition(data[1] if len(data) > 1 else None, len(data[0]),
                                name="validation_data y")
        elif isinstance(data, (np.ndarray, list)) or tf.is_tensor(data):
            self._check_x(np.asarray(data) if isinstance(data, list) else data, name=name)

    def fit(self, x=None, y=None, *args, **kwargs):
        """`keras.Model.fit`, after checking array inputs against the likelihood."""
        self._check_data(x, "x")
        self._check_labels(x, y)
        self._check_data(kwargs.get("validation_data"), "validation_data")
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
        if self.condition_dim is not None and isinstance(x, (tuple, list)) and len(x) == 2:
            x, y = self._split_inputs(x)
            self._check_data(x, "x")
            self._check_labels(x, y)
            x = (x, y if tf.is_tensor(y) else np.asarray(y))
        else:
            self._check_data(x, "x")
        return super().predict(x, *args, **kwargs)

    def _check_labels(self, x, y):
        """For a conditional model given arrays, checks `y` before anything is traced."""
        arrays = isinstance(x, (np.ndarray, list)) or tf.is_tensor(x)
        if self.condition_dim is not None and arrays:
            self._condition(y, len(x))

    @staticmethod
    def _placeholder_y(x, y, kwargs):
        # Keras drops `sample_weight` for array inputs when `y` is None; a VAE
        # has no targets, so give it ignored placeholder labels instead.
        if y is None and kwargs.get("sample_weight") is not None and hasattr(x, "__len__"):
            return np.zeros(len(x), "float32")
        return y

    # ------------------------------------------------------------------
    # Serialisation.

    def export(self, filepath, format="tf_saved_model", verbose=None, input_signature=None,
               **kwargs):
        """`keras.Model.export`; a conditional model's default input is `(x, y)`."""
        if input_signature is None and self.condition_dim is not None:
            input_signature = [self._conditional_input_spec()]
        return super().export(filepath, format=format, verbose=verbose,
                              input_signature=input_signature, **kwargs)

    @property
    def _default_save_signature(self):
        # SavedModel writers trace the model's default signature from its build
        # shape (x only); a conditional model is called on (x, y).
        if self.condition_dim is None:
            return super()._default_save_signature
        return tf.function(lambda inputs: self(inputs),
                           input_signature=(self._conditional_input_spec(),))

    def _conditional_input_spec(self):
        """`(x, y)` tensor specs with a dynamic batch: a conditional model's call input."""
        return (tf.TensorSpec((None,) + self.event_shape, tf.float32, name="x"),
                tf.TensorSpec((None, self.condition_dim), tf.float32, name="y"))

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
            "free_bits_groups": self.free_bits_groups,
            "condition_dim": self.condition_dim,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("encoder", "decoder", "posterior", "likelihood", "prior"):
            config[key] = _deserialize(config[key])
        return cls(**config)
