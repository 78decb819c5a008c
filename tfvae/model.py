"""`tfvae.VAE`: a Keras model whose encoder and decoder produce TFP distributions."""

import inspect

import keras
import numpy as np
import tensorflow as tf

from tfvae import _checks
from tfvae import bounds
from tfvae import generation
from tfvae import heads as heads_lib
from tfvae import objective_parts
from tfvae import objectives
from tfvae import options
from tfvae import signatures
from tfvae import training
from tfvae.conditioning import Conditioning
from tfvae.validity import where_valid

__all__ = [
    "VAE",
]

_METRICS = ("loss", "elbo", "reconstruction", "kl")
_PARTS = ("encoder", "decoder", "posterior", "likelihood", "prior")


@keras.saving.register_keras_serializable(package="tfvae")
class VAE(training.Trainer, bounds.Bounds, generation.Generation, signatures.Signatures,
          keras.Model):
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
      objective: what training minimises: a registered name
        (`tfvae.objective_parts.names()`: `"elbo"`, `"iwae"`, `"beta_tcvae"`, ...)
        or an `Objective`. Its hyperparameters are keyword arguments of this
        constructor (`k` and `gradient_estimator` for IWAE; `mi_weight`,
        `tc_weight`, `dwkl_weight` and `dataset_size` for β-TCVAE; see each
        objective's `hyperparameters`); `fit` reports its `metric_names`
        beside the ELBO terms. Default value: `"elbo"`.
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
      **kwargs: the objective's hyperparameters, and Keras's (`name`, ...).

    Hierarchical models: pass a `tfvae.HierarchicalPosterior` (its prior
    defaults to the matching `tfvae.HierarchicalPrior`); training and
    evaluation then also report the per-layer terms `kl_z1` and `kl_z2`.
    """

    def __init__(self, encoder, decoder, posterior, likelihood, prior=None, num_samples=1,
                 beta=1.0, free_bits=0.0, kl="auto", seed=None, objective="elbo",
                 free_bits_groups=None, condition_dim=None, **kwargs):
        declared = objective_parts.hyperparameters()
        hyperparameters = {key: kwargs.pop(key) for key in list(kwargs) if key in declared}
        super().__init__(**kwargs)
        _checks.instance_of("posterior", posterior, heads_lib.Posterior,
                            "tfvae.DiagonalGaussianPosterior")
        _checks.instance_of("likelihood", likelihood, heads_lib.LikelihoodHead,
                            "tfvae.BernoulliLikelihood")
        prior = posterior.default_prior() if prior is None else prior
        posterior.check_prior(prior)
        self.encoder, self.decoder = encoder, decoder
        self.posterior, self.likelihood, self.prior = posterior, likelihood, prior
        self.num_samples = _checks.positive_int("num_samples", num_samples)
        self.free_bits = _checks.non_negative_float("free_bits", free_bits)
        self.kl_method = _checks.one_of("kl", kl, objectives.KL_METHODS)
        beta = _checks.non_negative_float("beta", beta)
        self.seed = None if seed is None else _checks.non_negative_int("seed", seed)
        self.objective = objective_parts.make_objective(objective, hyperparameters)
        options.check_objective(self.objective, beta, self.free_bits)
        self.objective.check(posterior, prior)
        self.free_bits_groups = options.check_free_bits_groups(
            free_bits_groups, self.free_bits, self.objective, posterior, prior, posterior.latent_dim)
        self.conditioning = Conditioning(
            options.check_condition_dim(condition_dim, prior, likelihood.event_shape))
        prior.attach(self)
        names = _METRICS + tuple(self.objective.metric_names) + tuple(posterior.metric_names)
        names += tuple(f"kl_{layer}" for layer in posterior.layer_names)
        self._init_training(beta, names, seed)
        self.build((None,) + self.likelihood.event_shape)

    @property
    def event_shape(self):
        """The shape of one example, from the likelihood head."""
        return self.likelihood.event_shape

    @property
    def latent_dim(self):
        return self.posterior.latent_dim

    @property
    def condition_dim(self):
        """The size of y for a conditional model, else `None`."""
        return self.conditioning.condition_dim

    @property
    def hierarchical(self):
        """Whether q has several stochastic layers (reported as `kl_<layer>`)."""
        return bool(self.posterior.layer_names)

    @property
    def encoder_variables(self):
        """The variables of q(z|x): the encoder's and the posterior head's."""
        return self.encoder.trainable_variables + self.posterior.trainable_variables

    # ------------------------------------------------------------------
    # Building and checking inputs.

    def build(self, input_shape):
        _checks.batch_shape("input_shape", input_shape, self.event_shape)
        x = tf.zeros((1,) + self.event_shape)
        y = self.conditioning.prepare(
            None if self.condition_dim is None else np.zeros((1, self.condition_dim), "float32"))
        params = self.encoder(self._encoder_input(x, y))
        _checks.network_output("encoder", params.shape, self.posterior)
        parameters = self.posterior.parameters(params)
        z = self.posterior.reparameterize(parameters, tf.zeros((1, self.latent_dim)))
        params = self.decoder(self._decoder_input(z, y))
        _checks.network_output("decoder", params.shape, self.likelihood)
        self.likelihood(params)
        # Heads and priors are used through their methods, not called: mark them
        # built, or Keras re-builds the model symbolically (from x alone) under
        # distribution strategies.
        for layer in (self.posterior, self.prior, self.likelihood):
            layer.built = True
        self.built = True

    def _check_x(self, x, name="x", values=True):
        """Checks rank and shape (always) and values (when concrete)."""
        _checks.batch_shape(name, x.shape, self.event_shape)
        if values and (isinstance(x, np.ndarray) or tf.executing_eagerly()):
            self.likelihood.validate_data(keras.ops.convert_to_numpy(x), name=name)

    def prepare_inputs(self, x, y=None):
        """Checked float32 `x` and the prepared condition `y` (see `conditioning.prepare`)."""
        x = np.asarray(x, dtype="float32") if not tf.is_tensor(x) else x
        self._check_x(x)
        return tf.cast(x, tf.float32), self.conditioning.prepare(y, x.shape[0])

    def _encoder_input(self, x, y):
        """The encoder's input: x (in the likelihood's encoder space), with y appended."""
        return self.conditioning.encoder_input(self.likelihood.encoder_input(x), y)

    def _decoder_input(self, z, y):
        """The decoder's input: the part of z it sees (z1 in a hierarchy), with y appended."""
        return self.conditioning.decoder_input(self.prior.decoder_input(z), y)

    # ------------------------------------------------------------------
    # Tensor-level seams: export graphs, evaluation and training use these.
    # `x` is a float32 tensor `[batch] + event_shape` and `y` the prepared
    # condition `[batch, condition_dim]` (`conditioning.prepare`), or None.

    def encoder_output(self, x, y=None, training=False):
        """The encoder's raw output `[batch, posterior.params_size]` for data `x`."""
        return self.encoder(self._encoder_input(x, y), training=training)

    def posterior_parameters(self, x, y=None, training=False):
        """The posterior head's named parameters (a dict of tensors) for data `x`."""
        return self.posterior.parameters(self.encoder_output(x, y, training))

    def posterior_sampler(self, x, y=None, training=False):
        """`(q, reparameterize)` for data `x`: q(z|x) as a `tfd.Distribution` (batch shape
        `[batch]`) and its map `ε [..., batch, d] -> z` (`Posterior.sampler`), as the
        objectives take them (`posterior`, `reparameterize=`); the encoder runs once."""
        return self.posterior.sampler(self.posterior_parameters(x, y, training))

    def posterior_outputs(self, x, y=None):
        """q(z|x) as the `encode` graph outputs it (`posterior.export_outputs`)."""
        return self.posterior.export_outputs(self.posterior_parameters(x, y))

    def decoder_parameters(self, z, y=None, training=False):
        """The likelihood head's named parameters at latents `z` `[batch, latent_dim]`."""
        return self.likelihood.parameters(self.decoder(self._decoder_input(z, y), training=training))

    def decode_mean(self, z, y=None, training=False):
        """The likelihood's mean `[batch] + event_shape` at `z`, without TFP objects."""
        return self.likelihood.mean_of(self.decoder_parameters(z, y, training))

    def likelihood_fn(self, y=None, training=False):
        """The map `z [n, latent_dim] -> p(x|z)` the objectives take as `decode`
        (`z` may hold several samples per example, sample-major)."""
        return lambda z: self.likelihood.distribution(self.decoder_parameters(z, y, training))

    def valid_rows(self, x, y=None):
        """Whether each example can be scored: a boolean `[batch]`.

        `x` must be finite and in the likelihood's data range (its
        `support_mask`), and the prepared `y` finite (labels in range). Graph-
        safe, so it holds under XLA and in exported graphs, where the per-
        example terms and reconstructions of the other rows are NaN: invalid
        in, NaN out (eager entry points refuse such data with a `ValueError`
        first).
        """
        valid = self.likelihood.support_mask(x)
        y_valid = self.conditioning.valid_rows(y)
        return valid if y_valid is None else valid & y_valid

    def log_likelihood_fn(self, y=None, training=False):
        """The map `(z [n, latent_dim], x [n] + event_shape) -> log p(x|z) [n]` from tensors
        (`z` may hold several samples per example, sample-major, with `x` tiled alike)."""
        return lambda z, xs: self.likelihood.log_prob(self.decoder_parameters(z, y, training), xs)

    def analytic_kl(self, parameters):
        """KL(q(z|x) ‖ p(z)) `[batch]` in closed form when the posterior writes it out for
        this prior and the model's `kl` allows it, else `None`."""
        return None if self.kl_method == "mc" else self.posterior.analytic_kl(parameters,
                                                                              self.prior)

    def kl_groups(self, parameters):
        """The posterior's `kl_groups` for this prior and `free_bits_groups`: a callable
        `z -> [batch, G]`, or None."""
        return self.posterior.kl_groups(parameters, self.prior, self.free_bits_groups)

    def step_context(self, x, y=None, training=False, seed=None, offset=0, noise=None):
        """The `objective_parts.StepContext` of a batch: the encoder runs here, once."""
        return objective_parts.StepContext(
            x=x, y=y, training=training, parameters=self.posterior_parameters(x, y, training),
            valid=self.valid_rows(x, y), seed=seed, offset=offset, noise=noise)

    def elbo_terms(self, x, y=None, training=False, seed=None, num_samples=None, noise=None,
                   offset=0):
        """The ELBO's per-example terms `[batch]`: `loss`, `elbo`, `reconstruction`, `kl`
        (and `kl_<layer>`), from explicit `noise` `[L, batch, latent_dim]` or a `seed`
        (`objective_parts.elbo_terms`)."""
        context = self.step_context(x, y, training, seed, offset, noise)
        return self._finish_terms(objective_parts.elbo_terms(self, context, num_samples), context)

    def objective_terms(self, x, y=None, training=False, seed=None, offset=0, noise=None):
        """The training objective's per-example terms `[batch]` (`objective.terms`), from a
        `seed` (or explicit `noise` where the objective takes it)."""
        context = self.step_context(x, y, training, seed, offset, noise)
        return self._finish_terms(self.objective.terms(self, context), context)

    def _finish_terms(self, terms, context):
        """Adds the posterior's own `loss_terms` (to `loss`) and `kl_<layer>`, drops the
        `kl_groups` matrix, and makes the terms of rows that are not `valid_rows` NaN."""
        own = self.posterior.loss_terms(context.parameters, context.training)
        if own:
            terms = {**terms, **own, "loss": terms["loss"] + tf.add_n(list(own.values()))}
        groups = terms.pop("kl_groups", None)
        for index, layer in enumerate(self.posterior.layer_names):
            terms[f"kl_{layer}"] = groups[:, index]
        return where_valid(context.valid, terms)

    # ------------------------------------------------------------------
    # Distributions and generation.

    def encode(self, x, y=None, training=False):
        """q(z|x): a `tfd.Distribution` with batch shape `[batch]`, event shape `[latent_dim]`."""
        return self.posterior_sampler(*self.prepare_inputs(x, y), training)[0]

    def decode(self, z, y=None, training=False):
        """p(x|z): a `tfd.Distribution` with batch shape `[batch]`, event shape `event_shape`."""
        z = tf.convert_to_tensor(z, tf.float32)
        if z.shape.rank != 2 or z.shape[-1] != self.latent_dim:
            raise ValueError(
                f"Received an invalid value for `z`, expected shape (batch, {self.latent_dim}). "
                f"Received: z with shape {tuple(z.shape)}"
            )
        return self.likelihood_fn(self.conditioning.prepare(y, z.shape[0]), training)(z)

    def call(self, inputs, training=False):
        """The deterministic reconstruction: the likelihood's mean at z = g(0; q(z|x)).

        `inputs` is x, or `(x, y)` for a conditional model.
        """
        x, y = self.conditioning.split(inputs)
        self._check_x(x, name="inputs", values=False)
        x = tf.cast(x, tf.float32)
        y = self.conditioning.prepare(y, tf.shape(x)[0])
        mean = self.decode_mean(self._latent_code(x, y, training), y, training)
        return where_valid(self.valid_rows(x, y), mean)

    def _latent_code(self, x, y=None, training=False):
        eps = tf.zeros(tf.stack([tf.shape(x)[0], self.latent_dim]))
        return self.posterior.reparameterize(self.posterior_parameters(x, y, training), eps)

    def latent_code(self, x, y=None):
        """A deterministic code for `x`: z = g(0; q(z|x)), the noise-free reparameterisation.

        For Gaussian posteriors this is the posterior mean; for flow posteriors
        the flow's image of the base mean; for a hierarchy, z₁'s mean and
        z₂'s mean given it. Shape `[batch, latent_dim]`.
        """
        return self._latent_code(*self.prepare_inputs(x, y))

    def elbo(self, x, num_samples=None, seed=None, y=None):
        """Per-example ELBO terms in nats: a dict of `[batch]` tensors `elbo`,
        `reconstruction`, `kl` (and `kl_z1`, `kl_z2` for a hierarchical model),
        with `num_samples` posterior samples (default: the model's)."""
        x, y = self.prepare_inputs(x, y)
        if num_samples is not None:
            _checks.positive_int("num_samples", num_samples)
        terms = self.elbo_terms(x, y, seed=seed, num_samples=num_samples)
        return {k: v for k, v in terms.items() if k != "loss"}

    # ------------------------------------------------------------------
    # Serialisation (Keras export plumbing: `tfvae.signatures`).

    def get_config(self):
        parts = {name: keras.saving.serialize_keras_object(getattr(self, name)) for name in _PARTS}
        # Every constructor option by its name (β, kl and the objective: below).
        names = set(inspect.signature(VAE.__init__).parameters) - set(_PARTS) - {
            "self", "kwargs", "beta", "kl", "objective"}
        options_ = {name: getattr(self, name) for name in sorted(names)}
        options_.update(objective=self.objective.name, **self.objective.get_config())
        beta = float(keras.ops.convert_to_numpy(self.beta))
        return {**super().get_config(), **parts, **options_, "beta": beta, "kl": self.kl_method}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in _PARTS:
            config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)

