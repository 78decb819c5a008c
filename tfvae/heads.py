"""Distribution heads: Keras 3 layers that turn parameter tensors into TFP distributions.

A head is called on a parameter tensor `[batch, params_size]` (or any shape
with `params_size` elements per example) and returns a `tfd.Distribution`
whose `batch_shape` is `[batch]` and whose `event_shape` is the latent shape
(posteriors) or the data shape (likelihoods), so `log_prob` sums over the event
and returns one number per example, in nats.

Heads compute in float32 whatever the global dtype policy, so under mixed
precision the networks run in float16/bfloat16 while log-probabilities and KL
terms stay in float32.
"""

import dataclasses
import math

import numpy as np
import keras
import tensorflow as tf
import tensorflow_probability as tfp

from tfvae import _checks
from tfvae import priors as priors_lib

__all__ = [
    "BernoulliLikelihood",
    "CategoricalPixelLikelihood",
    "ContinuousBernoulliLikelihood",
    "DiagonalGaussianPosterior",
    "DiscretizedLogisticLikelihood",
    "DistributionHead",
    "FullCovarianceGaussianPosterior",
    "GaussianLikelihood",
    "GaussianPosterior",
    "LevelLikelihood",
    "LikelihoodHead",
    "Posterior",
    "Support",
]

tfd = tfp.distributions
tfb = tfp.bijectors

_register = keras.saving.register_keras_serializable(package="tfvae")


def _inverse_softplus(y):
    return float(np.log(np.expm1(y)))


class DistributionHead(keras.layers.Layer):
    """Base class: parameters in, `tfd.Distribution` out.

    Subclasses set `event_shape` and implement `params_size`,
    `_parameters(flat)` (named float32 tensors from `flat`, of shape
    `[batch, params_size]`) and `distribution(parameters)`. Keeping the
    tensor-level parameters apart from the TFP object lets export graphs
    (SavedModel, ONNX) use the same parametrisation without TFP's shape ops.
    """

    def export_refusal(self, graph):
        """Why the export graph `graph` (`tfvae.export.GRAPH_INPUTS`' names) cannot be
        built for a model with this part, or None (it can)."""
        return None

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)

    @property
    def params_size(self):
        """Number of parameters the head needs per example."""
        raise NotImplementedError

    def _flat_params(self, params):
        params = tf.cast(params, tf.float32)
        per_example = params.shape[1:]
        if None not in per_example and int(np.prod(per_example)) != self.params_size:
            raise ValueError(
                f"{type(self).__name__} needs `params_size={self.params_size}` parameters "
                f"per example. Received: params with shape {tuple(params.shape)}"
            )
        return tf.reshape(params, [-1, self.params_size])

    def parameters(self, params):
        """Named distribution parameters (a dict of float32 tensors) from raw `params`."""
        return self._parameters(self._flat_params(params))

    def _parameters(self, flat):
        raise NotImplementedError

    def distribution(self, parameters):
        """The `tfd.Distribution` for a dict from `parameters`."""
        raise NotImplementedError

    def call(self, params):
        return self.distribution(self.parameters(params))

    def log_prob(self, parameters, x):
        """`distribution(parameters).log_prob(x)`, one number per example.

        Subclasses may compute it from the tensors directly, with the same
        numbers and fewer graph ops (no TFP object on the training path).
        """
        return self.distribution(parameters).log_prob(x)

    def mean(self, distribution):
        """The distribution's mean, `[batch] + event_shape` (override if TFP lacks it)."""
        return distribution.mean()

    def compute_output_spec(self, *args, **kwargs):
        raise NotImplementedError(
            f"{type(self).__name__} returns a tfd.Distribution and cannot be used in a "
            "symbolic (functional) Keras graph; call it on tensors."
        )


# ---------------------------------------------------------------------------
# Posteriors q(z|x).


class Posterior(DistributionHead):
    """Base class of posteriors q(z|x) over a `latent_dim`-vector.

    A posterior declares what it can do, and `tfvae.VAE` asks it instead of
    testing for concrete classes:

    * `latent_dim`: the size of z (set by subclasses).
    * `reparameterize(parameters, eps)`: z from standard normal noise `eps`
      `[..., latent_dim]`, with the same parametrisation as `distribution`
      (every posterior must implement it: training and export graphs draw z
      this way).
    * `sampler(parameters)`: `(q, sample)`, q(z|x) as a TFP distribution and
      `sample(eps) = reparameterize(parameters, eps)` in a form whose z q scores
      cheaply (the one pair the objectives take as `posterior, reparameterize=`).
    * `independent_dimensions`: q factorises over latent dimensions as
      N(loc_j, scale_j²), so its KL to a prior with `kl_per_dimension` splits
      into groups of dimensions (free bits per group).
    * `layer_names`: the stochastic layers of a hierarchical posterior, whose
      KL terms are reported one per layer (`kl_<name>`); empty otherwise.
    * `dreg_unbiased`: the doubly reparameterised IWAE gradient is unbiased
      for q (its density depends on the encoder only through `parameters`:
      false when the head has weights of its own).
    * `default_prior()` and `check_prior(prior)`: which priors go with it.
    * `closed_form_mean(parameters)`: E_q[z], or None when the head has no
      closed form for it (then callers average `reparameterize` over noise).
    * `has_density`: q(z|x) has a density over z, so `distribution(parameters)`
      scores other examples' codes finitely (what ELBO surgery's aggregate
      posterior needs); false for a point mass (a quantised posterior).
    * `metric_names` and `loss_terms(parameters, training)`: per-example terms
      `[batch]` of its own that every objective adds to `loss` and `fit`
      reports (a quantised posterior's codebook and commitment losses); none
      by default.
    * `export_outputs(parameters)`: the `encode` graph's named outputs (`mean`,
      `scale` and the head's further parameters by default), and
      `decode_input_spec()` / `latent_from_decode_input(value)` /
      `decode_input_rows(value)` / `decode_input_of(parameters)`: what the
      `decode` graph takes (z by default), how it becomes z, and the noise-free
      one for given parameters; `export_refusal(graph)` (every part): why a graph
      cannot be exported, or None.
    * `hyperparameters`: its own constructor options beyond `latent_dim`
      (name -> `tfvae.hyperparameters.Hyperparameter`), which `build_vae`,
      `RunConfig` and `tfvae train` offer by name; `seeded`: whether
      `build_vae` passes it a `seed` for weights of its own.
    """

    independent_dimensions = False
    layer_names = ()
    dreg_unbiased = True
    hyperparameters = {}
    seeded = False
    own_prior = None  # a Prior class it brings (VQ's codes) instead of a named prior
    metric_names = ()
    has_density = True

    def reparameterize(self, parameters, eps):
        raise NotImplementedError

    def sampler(self, parameters):
        """`(q, sample)`: q = `distribution(parameters)` and `sample`, the map
        `eps [..., latent_dim] -> z` of `reparameterize(parameters, eps)`.

        Heads whose q is a transformed distribution override it to push the
        noise through q's own bijector, so that `q.log_prob(z)` reads the noise
        back from TFP's bijector cache instead of inverting the transformation
        (a flow's sequential or bisection inverse).
        """
        return self.distribution(parameters), lambda eps: self.reparameterize(parameters, eps)

    def loss_terms(self, parameters, training=False):
        """Per-example terms `[batch]` of this head's own (named in `metric_names`), added
        to every objective's `loss`; none by default."""
        return {}

    def export_outputs(self, parameters):
        """The `encode` graph's outputs: `mean` and `scale` (the head's `loc` and `scale`:
        std devs `[batch, d]` or a Cholesky factor `[batch, d, d]`), then the head's
        further parameters (flows, hierarchies) under their own names."""
        parameters = dict(parameters)
        return {"mean": parameters.pop("loc"), "scale": parameters.pop("scale"), **parameters}

    def decode_input_spec(self):
        """The `decode` graph's input: latents z `[B, latent_dim]`, float32."""
        return tf.TensorSpec((None, self.latent_dim), tf.float32, name="z")

    def latent_from_decode_input(self, value):
        """z `[B, latent_dim]` from the `decode` graph's input (z itself by default)."""
        return value

    def decode_input_rows(self, value):
        """Which rows `[B]` of the `decode` graph's input are valid, or None (finite rows)."""
        return None

    def decode_input_of(self, parameters):
        """The `decode` graph's input `[B, ...]` (`decode_input_spec`) for q's `parameters`:
        the noise-free code z = g(0; q(z|x)) `[B, latent_dim]` by default (`VAE.latent_code`)."""
        first = next(iter(parameters.values()))
        return self.reparameterize(parameters, tf.zeros(tf.stack([tf.shape(first)[0],
                                                                  self.latent_dim])))

    def closed_form_mean(self, parameters):
        """E_q[z] `[batch, latent_dim]` from q's `parameters`, or None when this head
        does not write it out (a flow, a hierarchy: estimate it by Monte Carlo)."""
        return None

    def analytic_kl(self, parameters, prior):
        """KL(q ‖ p) per example in closed form from q's `parameters`, or None when this
        head does not write it out (then the model uses TFP's objects)."""
        return None

    def default_prior(self):
        """The prior a model uses when none is given: N(0, I) over `latent_dim`."""
        return priors_lib.StandardNormalPrior(self.latent_dim)

    def check_prior(self, prior):
        """Raises `ValueError` unless `prior` can pair with this posterior."""
        prior_dim = getattr(prior, "latent_dim", None)
        if not isinstance(prior, priors_lib.Prior) or prior_dim != self.latent_dim:
            raise ValueError(
                "Received an invalid value for `prior`, expected a tfvae prior with "
                f"latent_dim={self.latent_dim}. Received: prior={prior!r} with "
                f"latent_dim={prior_dim!r}"
            )
        prior.check_posterior(self)

    @classmethod
    def check_kl_groups(cls, num_groups, prior, latent_dim):
        """Raises `ValueError` unless q's KL to `prior` splits into `num_groups` groups.

        `cls` and `prior` may be classes or instances: the rule reads only
        their declared capabilities, so it also checks names before building.
        """
        if cls.layer_names:
            if num_groups != len(cls.layer_names):
                raise ValueError(
                    "Received an invalid value for `free_bits_groups`: a hierarchical model's "
                    f"groups are its {len(cls.layer_names)} layers. Received: "
                    f"free_bits_groups={num_groups}"
                )
            return
        if not cls.independent_dimensions or not prior.has_kl_per_dimension:
            raise ValueError(
                "Received an invalid value for `free_bits_groups`: the KL splits over latent "
                "dimensions only for a diagonal Gaussian posterior and a standard normal prior. "
                f"Received: free_bits_groups={num_groups} with {_checks.type_name(cls)} and {_checks.type_name(prior)}"
            )
        if num_groups > latent_dim:
            raise ValueError(
                "Received an invalid value for `free_bits_groups`, expected at most "
                f"latent_dim={latent_dim} groups. Received: free_bits_groups={num_groups}"
            )

    def kl_groups(self, parameters, prior, num_groups):
        """Per-group KL terms for the ELBO: a function `z [L, batch, d] -> [batch, G]`.

        Returns `None` when there are no groups (`num_groups` is `None` and
        q has no layers). Contiguous groups of latent dimensions use the
        prior's analytic `kl_per_dimension`, so the function ignores `z`.
        """
        if num_groups is None:
            return None
        per_dimension = prior.kl_per_dimension(parameters["loc"], parameters["scale"])
        bounds = np.cumsum([0] + [len(g) for g in np.array_split(
            np.arange(self.latent_dim), num_groups)])
        groups = tf.stack([tf.reduce_sum(per_dimension[:, a:b], axis=-1)
                           for a, b in zip(bounds[:-1], bounds[1:])], -1)
        return lambda z: groups


class GaussianPosterior(Posterior):
    """Base class of Gaussian posteriors over a `latent_dim`-vector.

    Subclasses implement `reparameterize(parameters, eps)`, mapping standard
    normal noise to z with the same parametrisation as `distribution`.
    """

    def __init__(self, latent_dim, min_scale=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.latent_dim = _checks.positive_int("latent_dim", latent_dim)
        self.min_scale = _checks.non_negative_float("min_scale", min_scale)
        self.event_shape = (self.latent_dim,)

    def closed_form_mean(self, parameters):
        """E_q[z] = μ, the `loc` parameter."""
        return parameters["loc"]

    def get_config(self):
        return {**super().get_config(), "latent_dim": self.latent_dim, "min_scale": self.min_scale}


@_register
class DiagonalGaussianPosterior(GaussianPosterior):
    """q(z|x) = N(μ, diag(σ²)).

    Mathematical details: parameters are `[μ, s]` (each `latent_dim` wide) and
    `σ = softplus(s) + min_scale`.

    Args:
      latent_dim: size of z.
      min_scale: lower bound on σ for numerical safety. Default value: `1e-5`.
    """

    independent_dimensions = True

    @property
    def params_size(self):
        return 2 * self.latent_dim

    def _parameters(self, flat):
        loc, raw_scale = tf.split(flat, 2, axis=-1)
        return {"loc": loc, "scale": tf.nn.softplus(raw_scale) + self.min_scale}

    def distribution(self, parameters):
        return tfd.MultivariateNormalDiag(loc=parameters["loc"], scale_diag=parameters["scale"])

    def reparameterize(self, parameters, eps):
        """z = μ + σ ⊙ ε for standard normal `eps` `[..., latent_dim]`."""
        return parameters["loc"] + parameters["scale"] * eps

    def analytic_kl(self, parameters, prior):
        return prior.kl_from_diagonal_gaussian(parameters["loc"], parameters["scale"])


@_register
class FullCovarianceGaussianPosterior(GaussianPosterior):
    """q(z|x) = N(μ, L Lᵀ) with a lower-triangular Cholesky factor L.

    Mathematical details: parameters are μ (`latent_dim`) and the
    `latent_dim (latent_dim + 1) / 2` entries of L, filled by
    `tfb.FillScaleTriL` with a softplus diagonal plus `min_scale`.

    Args:
      latent_dim: size of z.
      min_scale: lower bound on the diagonal of L. Default value: `1e-5`.
    """

    def __init__(self, latent_dim, min_scale=1e-5, **kwargs):
        super().__init__(latent_dim, min_scale, **kwargs)
        self._index = None

    @property
    def params_size(self):
        d = self.latent_dim
        return d + d * (d + 1) // 2

    def _parameters(self, flat):
        d = self.latent_dim
        loc, raw_tril = tf.split(flat, [d, self.params_size - d], -1)
        # `tfb.FillScaleTriL` as a static gather plus elementwise ops (the same
        # layout as `tfp.math.fill_triangular`), which export graphs can convert.
        padded = tf.concat([tf.zeros_like(raw_tril[..., :1]), raw_tril], axis=-1)
        filled = tf.reshape(tf.gather(padded, self._fill_index(), axis=-1), [-1, d, d])
        eye = tf.eye(d, dtype=filled.dtype)
        scale = filled * (1.0 - eye) + eye * (tf.nn.softplus(filled) + self.min_scale)
        return {"loc": loc, "scale": scale}

    def _fill_index(self):
        """Flat index into `[0, raw...]` for each entry of L (0 above the diagonal)."""
        if self._index is None:
            n = self.params_size - self.latent_dim
            with tf.init_scope():  # a constant: compute it eagerly even inside a graph
                index = tfp.math.fill_triangular(np.arange(1, n + 1, dtype=np.int32)).numpy()
            self._index = np.reshape(index, [-1])
        return tf.constant(self._index)

    def distribution(self, parameters):
        return tfd.MultivariateNormalTriL(loc=parameters["loc"], scale_tril=parameters["scale"])

    def reparameterize(self, parameters, eps):
        """z = μ + L ε for standard normal `eps` `[..., latent_dim]`."""
        return parameters["loc"] + tf.linalg.matvec(parameters["scale"], eps)


# ---------------------------------------------------------------------------
# Likelihoods p(x|z).


@dataclasses.dataclass(frozen=True)
class Support:
    """The x values a likelihood scores: an interval, each end open or closed, of reals or
    of integer levels.

    `LikelihoodHead.support_mask` (tensors, any graph) and `validate_data`
    (numpy, eager) both follow from it.

    Attributes:
      low: the lower end (`-inf`: unbounded). Default value: `-inf`.
      high: the upper end (`inf`: unbounded). Default value: `inf`.
      closed: whether the ends belong to the support, `(low_closed, high_closed)`;
        one bool sets both. Default value: `(True, True)`.
      levels: the number of integer levels `low..high` for discrete data, or
        `None` for real values. Default value: `None`.
    """

    low: float = -math.inf
    high: float = math.inf
    closed: tuple = (True, True)
    levels: int = None

    def __post_init__(self):
        if isinstance(self.closed, bool):
            object.__setattr__(self, "closed", (self.closed, self.closed))
        else:
            object.__setattr__(self, "closed", tuple(bool(c) for c in self.closed))
        if not self.low < self.high:
            raise ValueError(
                "Received an invalid value for `low` / `high`, expected low < high. "
                f"Received: low={self.low!r}, high={self.high!r}")

    @classmethod
    def integer_levels(cls, num_levels):
        """The levels `0..num_levels-1` (e.g. 8-bit pixels kept as integers)."""
        return cls(0, num_levels - 1, (True, True), num_levels)

    @property
    def interval(self):
        """The interval as text: `[0.0, 1.0]`, `(0.0, 1.0)`, `[0, 255]`, ..."""
        return (f"{'[' if self.closed[0] else '('}{self.low}, "
                f"{self.high}{']' if self.closed[1] else ')'}")

    def describe(self):
        """What data in the support are, for messages: `8-bit levels`, `values in (0.0, 1.0)`."""
        if self.levels is not None:
            return "8-bit levels" if self.levels == 256 else f"integer levels {self.interval}"
        return f"values in {self.interval}"

    def contains(self, x):
        """Element-wise: whether each element of the tensor `x` is finite and in the support
        (graph-safe: no asserts). A boolean tensor of `x`'s shape."""
        x = tf.convert_to_tensor(x)
        above = (x >= self.low) if self.closed[0] else (x > self.low)
        below = (x <= self.high) if self.closed[1] else (x < self.high)
        ok = tf.math.is_finite(x) & above & below
        if self.levels is not None:
            ok &= tf.equal(tf.floor(x), x)
        return ok

    def check(self, x, name, owner):
        """Raises `ValueError` naming `name` and `owner` if the finite numpy array `x` has
        values outside the support (or non-integer values for levels)."""
        x = np.asarray(x)
        if not x.size:
            return
        below = (x < self.low) if self.closed[0] else (x <= self.low)
        above = (x > self.high) if self.closed[1] else (x >= self.high)
        if np.any(below) or np.any(above):
            ends = [str(end) for end, closed in zip((self.low, self.high), self.closed)
                    if not closed and math.isfinite(end)]
            excluded = f" ({' and '.join(ends)} excluded)" if ends else ""
            raise ValueError(
                f"Received an invalid value for `{name}`: {owner} expects values in "
                f"{self.interval}{excluded}. Received: values in [{x.min()}, {x.max()}]"
            )
        if self.levels is not None and not np.all(np.equal(np.floor(x), x)):
            raise ValueError(
                f"Received an invalid value for `{name}`: {owner} expects integer "
                f"levels {self.low}..{self.high} (8-bit pixels, not scaled to [0, 1]). "
                f"Received: non-integer values such as {x[np.floor(x) != x].flat[0]!r}"
            )


class LikelihoodHead(DistributionHead):
    """A likelihood with `params_per_element` parameters per data element.

    The decoder's output is reshaped to `[batch] + event_shape +
    [params_per_element]`, so an MLP's flat output and a convolutional
    decoder's `[batch, H, W, C * k]` output both work.

    Args:
      event_shape: the shape of one example, e.g. `(28, 28, 1)` or `(64,)`.
    """

    params_per_element = 1
    # Whether the head gives log p(x|z) per column of a row, `column_log_probs(parameters, x)`
    # `[batch, d]`, with `column_names`: what the `score` export graph's `feature_scores` are.
    column_terms = False

    def __init__(self, event_shape, **kwargs):
        super().__init__(**kwargs)
        self.event_shape = _checks.shape("event_shape", event_shape)

    def export_refusal(self, graph):
        """`score` needs per-column terms (`column_terms`); every other graph can be built."""
        if graph == "score" and not self.column_terms:
            return (f"{type(self).__name__} has no per-column terms of log p(x|z) for the "
                    "`score` graph's feature_scores (a TabularLikelihood, the likelihood of "
                    "table rows, has them)")
        return None

    @property
    def params_size(self):
        return int(np.prod(self.event_shape)) * self.params_per_element

    def _element_params(self, params):
        """`[batch, params_size]` -> `[batch] + event_shape + [k]`."""
        return tf.reshape(params, [-1, *self.event_shape, self.params_per_element])

    def _element_param(self, params):
        """`[batch, params_size]` -> `[batch] + event_shape`, one parameter per element
        (a reshape: no slice to copy forward and back)."""
        return tf.reshape(params, [-1, *self.event_shape])

    def _sum_event(self, values):
        """Sums `[batch] + event_shape` element terms over the event, as `tfd.Independent`."""
        return tf.reduce_sum(values, axis=[-(i + 1) for i in range(len(self.event_shape))])

    def encoder_input(self, x):
        """What the encoder sees for data `x` (identity; integer-level heads rescale to [0, 1])."""
        return x

    def mean_of(self, parameters):
        """The likelihood's mean `[batch] + event_shape` from its named parameters."""
        raise NotImplementedError

    def _independent(self, distribution):
        return tfd.Independent(distribution, reinterpreted_batch_ndims=len(self.event_shape))

    # The contract with the data (`tfvae.data`, `tfvae.sources`, `tfvae.options` read it;
    # nothing tests a likelihood's name or class):
    # * `support`: the x values it scores (a `Support`). `validate_data` (numpy, eager)
    #   raises on values outside it; `support_mask` (tensors, any graph, XLA too) marks
    #   the rows inside it.
    # * `prepare_data(x)`: data in [0, 1] as it scores them (identity; 8-bit levels...).
    # * `binarize_modes`: the `binarize` modes it accepts besides "auto" (a Bernoulli draw
    #   of [0, 1] data, once ("static") or every batch ("dynamic")); `auto_binarize`:
    #   whether `binarize="auto"` draws binary data from grey data for it.
    support = Support()
    binarize_modes = ("none", "static", "dynamic")
    auto_binarize = False
    # Whether `support_mask` is the `support` rule alone, so that export graphs can guard
    # x with row reductions (`tfvae.export`); a head with further rules (a table's codes
    # per column) sets False and the graphs call its `support_mask`.
    support_is_range = True

    @property
    def data_range(self):
        """`(low, high)` of `support` (whether the ends are included: `support.closed`)."""
        return self.support.low, self.support.high

    @property
    def integer_data(self):
        """Whether `support` holds integer levels."""
        return self.support.levels is not None

    def prepare_data(self, x):
        """Data scaled to [0, 1] as this likelihood scores them (default: unchanged).

        Written with TensorFlow ops where it changes x: it runs inside `tf.data`
        pipelines (`tfvae.sources`) and on numpy arrays (`tfvae.data.prepare`, which
        converts a tensor result back).

        Args:
          x: float32 data in [0, 1], a numpy array or a tensor `[batch] + event_shape`.

        Returns:
          float32 data of the same shape (an array or a tensor).
        """
        return x

    def support_mask(self, x):
        """Whether each example of `x` `[batch] + event_shape` is data this likelihood scores.

        A graph-safe check (no asserts, which XLA drops): `True` where every
        element is finite and in `support` (open ends excluded, integers for
        level likelihoods). The model turns the other rows' outputs into NaN.

        Returns:
          A boolean tensor `[batch]`.
        """
        # One flat row per example, reduced along its one contiguous axis: the same
        # booleans, and under XLA on a CPU a third of the time of a reduction over the
        # event's axes (benchmarks/README.md, "The compiled step against keras.io").
        rows = tf.reshape(tf.convert_to_tensor(x), [-1, int(np.prod(self.event_shape))])
        return tf.reduce_all(self.support.contains(rows), axis=1)

    # What `log_prob` is: "density" (continuous data) or "mass" (discrete data).
    score = "density"

    def score_kind(self, x):
        """What `log p(x)` means for the numpy data `x`.

        Returns:
          `"mass"`: a log-probability of discrete data (bits per dimension are
          meaningful); `"density"`: a log-density of continuous data (not
          comparable with masses); `"cross_entropy"`: not a normalised
          likelihood of `x` at all (a Bernoulli scoring grey values).
        """
        return self.score

    @staticmethod
    def combine_score_kinds(kinds):
        """The `score_kind` of data made of parts (e.g. the batches of a stream) of `kinds`.

        A running AND over the parts: `"mass"` only if every part is one,
        `"cross_entropy"` if any part is one, else `"density"`. With
        `kind = combine_score_kinds([kind, score_kind(batch)])` per batch, a
        stream gets the kind `score_kind` gives its concatenation.

        Args:
          kinds: an iterable of `score_kind` results (at least one).

        Returns:
          `"mass"`, `"density"` or `"cross_entropy"`.
        """
        kinds = set(kinds)
        if not kinds:
            raise ValueError("Received an invalid value for `kinds`, expected at least one "
                             "score kind. Received: kinds=[]")
        if kinds == {"mass"}:
            return "mass"
        return "cross_entropy" if "cross_entropy" in kinds else "density"

    def validate_data(self, x, name="x"):
        """Raises `ValueError` if the numpy array `x` has values this likelihood cannot score:
        non-finite values, values outside `support`, non-integer levels."""
        x = np.asarray(x)
        if not np.all(np.isfinite(x)):
            raise ValueError(
                f"Received an invalid value for `{name}`: {type(self).__name__} needs finite "
                "values, but the data contains NaN or infinity."
            )
        self.support.check(x, name, type(self).__name__)

    def get_config(self):
        return {**super().get_config(), "event_shape": list(self.event_shape)}


@tf.custom_gradient
def _bernoulli_log_prob(logits, event):
    """Element-wise `log Bernoulli(event; sigmoid(logits))` for `event` in [0, 1].

    Mathematical details: `x η − softplus(η)`, which is TFP's
    `−(1 − x) softplus(η) − x softplus(−η)` (as `softplus(−η) = softplus(η) − η`)
    with one softplus per element instead of two; the gradient is written
    out, `x − sigmoid(η)`.
    """

    def grad(dy):
        return dy * (event - tf.sigmoid(logits)), None

    return event * logits - tf.math.softplus(logits), grad


@tf.function(jit_compile=True)
def _fused_bernoulli_sum(logits, event):
    """`Σ_j x_j η_j − softplus(η_j)` over the last axis, as one XLA kernel.

    Unfused, TensorFlow writes and re-reads three `[n, m]` temporaries (the
    product, the softplus, their difference) before the sum; for the
    importance-sampled log p(x), whose `n` is examples × samples, that memory
    traffic costs more than the softplus (benchmarks/bench_log_likelihood.py).
    """
    return tf.reduce_sum(event * logits - tf.math.softplus(logits), axis=-1)


@tf.custom_gradient
def _bernoulli_log_prob_rows(logits, event):
    """`Σ_j log Bernoulli(x_j; sigmoid(η_j))` of `[n, m]` logits and data: `[n]`.

    The same formula as `_bernoulli_log_prob`, summed; fused by XLA inside
    graphs (eagerly, plain ops: no compilation per shape).
    """

    def grad(dy):
        return dy[:, None] * (event - tf.sigmoid(logits)), None

    if tf.executing_eagerly():
        value = tf.reduce_sum(event * logits - tf.math.softplus(logits), axis=-1)
    else:
        value = _fused_bernoulli_sum(logits, event)
    return value, grad


def _bernoulli_log_prob_sum(logits, event, event_ndims):
    """`log Π Bernoulli(x; sigmoid(η))` over the last `event_ndims` axes (`Independent`'s sum)."""
    logits = tf.convert_to_tensor(logits)
    event = tf.broadcast_to(tf.cast(event, logits.dtype), tf.shape(logits))
    batch_shape = tf.shape(logits)[: tf.rank(logits) - event_ndims]
    size = tf.reduce_prod(tf.shape(logits)[tf.rank(logits) - event_ndims:])
    rows = _bernoulli_log_prob_rows(tf.reshape(logits, [-1, size]), tf.reshape(event, [-1, size]))
    return tf.reshape(rows, batch_shape)


class _Bernoulli(tfd.Bernoulli):
    """`tfd.Bernoulli` with tfvae's log-density (`_bernoulli_log_prob`): the same numbers."""

    def _log_prob(self, event):
        logits = tf.convert_to_tensor(self.logits)
        return _bernoulli_log_prob(logits, tf.cast(event, logits.dtype))


class _IndependentBernoulli(tfd.Independent):
    """`tfd.Independent` over a `_Bernoulli`, whose log-density is summed in one fused
    kernel (`_bernoulli_log_prob_sum`): the same numbers as the element-wise sum."""

    def _log_prob(self, x):
        return _bernoulli_log_prob_sum(self.distribution.logits, x,
                                       self.reinterpreted_batch_ndims)


@_register
class BernoulliLikelihood(LikelihoodHead):
    """p(x|z) = Π Bernoulli(x_i; sigmoid(logit_i)), for data in [0, 1].

    Grey values in [0, 1] are scored with the same cross-entropy formula
    (the usual "binary cross-entropy" VAE loss).
    """

    support = Support(0.0, 1.0)
    auto_binarize = True
    score = "mass"

    def score_kind(self, x):
        x = np.asarray(x)
        return "mass" if np.all((x == 0) | (x == 1)) else "cross_entropy"

    def _parameters(self, flat):
        return {"logits": self._element_param(flat)}

    def distribution(self, parameters):
        return _IndependentBernoulli(_Bernoulli(logits=parameters["logits"], dtype=tf.float32),
                                     reinterpreted_batch_ndims=len(self.event_shape))

    def log_prob(self, parameters, x):
        return _bernoulli_log_prob_sum(parameters["logits"], x, len(self.event_shape))

    def mean_of(self, parameters):
        return tf.sigmoid(parameters["logits"])


@_register
class ContinuousBernoulliLikelihood(LikelihoodHead):
    """p(x|z) = Π ContinuousBernoulli(x_i; logit_i), a normalised density on [0, 1]
    (Loaiza-Ganem & Cunningham, 2019)."""

    support = Support(0.0, 1.0)

    def _parameters(self, flat):
        return {"logits": self._element_param(flat)}

    def distribution(self, parameters):
        return self._independent(tfd.ContinuousBernoulli(logits=parameters["logits"]))

    def mean_of(self, parameters):
        # E[x] = λ / (2λ − 1) + 1 / (2 atanh(1 − 2λ)), written in logits η:
        # λ/(2λ−1) = 1/(1 − e^{−η}) and 2 atanh(1 − 2λ) = −η; Taylor form near η = 0.
        eta = parameters["logits"]
        small = tf.abs(eta) < 0.1
        safe = tf.where(small, tf.ones_like(eta), eta)
        exact = 1.0 / (1.0 - tf.exp(-safe)) - 1.0 / safe  # |η| ≥ 0.1: no cancellation
        return tf.where(small, 0.5 + eta / 12.0 - eta**3 / 720.0, exact)


@_register
class GaussianLikelihood(LikelihoodHead):
    """p(x|z) = Π N(x_i; μ_i, σ_i²).

    Args:
      event_shape: the shape of one example.
      scale: how σ is set. A positive number fixes σ; `"shared"` learns one σ
        for all elements; `"per_dimension"` learns one σ per data element;
        `"predicted"` lets the decoder output σ for each element of each
        example (two parameters per element). Default value: `1.0`.
      initial_scale: starting σ for the learned variants. Default value: `1.0`.
      min_scale: lower bound on learned σ. Default value: `1e-3`.
    """

    _LEARNED = ("shared", "per_dimension", "predicted")

    def __init__(self, event_shape, scale=1.0, initial_scale=1.0, min_scale=1e-3, **kwargs):
        super().__init__(event_shape, **kwargs)
        if isinstance(scale, str):
            self.scale = _checks.one_of("scale", scale, self._LEARNED)
        else:
            self.scale = _checks.positive_float("scale", scale)
        self.initial_scale = _checks.positive_float("initial_scale", initial_scale)
        self.min_scale = _checks.non_negative_float("min_scale", min_scale)
        self.params_per_element = 2 if self.scale == "predicted" else 1
        raw = _inverse_softplus(max(self.initial_scale - self.min_scale, 1e-6))
        self.raw_scale = None
        if self.scale in ("shared", "per_dimension"):
            self.raw_scale = self.add_weight(
                shape=() if self.scale == "shared" else self.event_shape,
                initializer=keras.initializers.Constant(raw),
                name="raw_scale",
            )
        self._raw_initial = raw

    def _parameters(self, flat):
        p = self._element_params(flat)
        loc = p[..., 0]
        if self.scale == "predicted":
            sigma = tf.nn.softplus(p[..., 1] + self._raw_initial) + self.min_scale
        elif self.raw_scale is not None:
            sigma = tf.nn.softplus(tf.convert_to_tensor(self.raw_scale)) + self.min_scale
            sigma = sigma + tf.zeros_like(loc)
        else:
            sigma = tf.zeros_like(loc) + self.scale
        return {"loc": loc, "scale": sigma}

    def distribution(self, parameters):
        return self._independent(tfd.Normal(loc=parameters["loc"], scale=parameters["scale"]))

    def mean_of(self, parameters):
        return parameters["loc"]

    def get_config(self):
        return {
            **super().get_config(),
            "scale": self.scale,
            "initial_scale": self.initial_scale,
            "min_scale": self.min_scale,
        }


class LevelLikelihood(LikelihoodHead):
    """Base of likelihoods over integer levels 0..num_levels-1 (8-bit pixels kept as integers).

    The encoder sees the levels scaled to [0, 1].

    Args:
      event_shape: the shape of one example.
      num_levels: number of intensity levels, at least 2. Default value: `256`.
    """

    def __init__(self, event_shape, num_levels=256, **kwargs):
        super().__init__(event_shape, **kwargs)
        self.num_levels = _checks.positive_int("num_levels", num_levels)
        if self.num_levels < 2:
            raise ValueError(
                "Received an invalid value for `num_levels`, expected an integer >= 2. "
                f"Received: num_levels={num_levels!r}"
            )

    score = "mass"
    binarize_modes = ("none",)  # levels, not binary data

    @property
    def support(self):
        return Support.integer_levels(self.num_levels)

    def prepare_data(self, x):
        """[0, 1] data → integer levels `round(x · (num_levels − 1))` (float32)."""
        return tf.round(tf.clip_by_value(x, 0.0, 1.0) * float(self.num_levels - 1))

    def encoder_input(self, x):
        return x / float(self.num_levels - 1)

    def get_config(self):
        return {**super().get_config(), "num_levels": self.num_levels}


@_register
class CategoricalPixelLikelihood(LevelLikelihood):
    """p(x|z) = Π Categorical(x_i; softmax(logits_i)) over integer levels 0..num_levels-1.

    For 8-bit images kept as integers (not scaled). Implemented with
    `tfd.FiniteDiscrete` so that `mean()` and `mode()` are available.

    Args:
      event_shape: the shape of one example.
      num_levels: number of intensity levels. Default value: `256`.
    """

    def __init__(self, event_shape, num_levels=256, **kwargs):
        super().__init__(event_shape, num_levels, **kwargs)
        self.params_per_element = self.num_levels

    def _parameters(self, flat):
        return {"logits": self._element_params(flat)}

    def distribution(self, parameters):
        outcomes = tf.range(self.num_levels, dtype=tf.float32)
        return self._independent(tfd.FiniteDiscrete(outcomes, logits=parameters["logits"]))

    def mean_of(self, parameters):
        levels = tf.range(self.num_levels, dtype=tf.float32)
        return tf.reduce_sum(tf.nn.softmax(parameters["logits"]) * levels, axis=-1)



@_register
class DiscretizedLogisticLikelihood(LevelLikelihood):
    """A logistic density discretised to integer levels 0..num_levels-1 (PixelCNN++).

    Mathematical details: with `F` the logistic CDF of location μ and scale s,
    `P(x=k) = F(k + ½) − F(k − ½)` for `0 < k < K−1`, `P(x=0) = F(½)` and
    `P(x=K−1) = 1 − F(K − 1.5)`; implemented as `tfd.QuantizedDistribution`.
    TFP does not implement `mean()` for it, so use the head's `mean(dist)`,
    which is exact: `E[x] = Σ_{k=0}^{K−2} P(x > k)`.

    Args:
      event_shape: the shape of one example.
      num_levels: number of intensity levels. Default value: `256`.
      min_scale: lower bound on s. Default value: `1e-2`.
    """

    params_per_element = 2

    def __init__(self, event_shape, num_levels=256, min_scale=1e-2, **kwargs):
        super().__init__(event_shape, num_levels, **kwargs)
        self.min_scale = _checks.positive_float("min_scale", min_scale)

    def _parameters(self, flat):
        p = self._element_params(flat)
        # Centre the unit-scale initial output on the middle of the range.
        half = (self.num_levels - 1) / 2.0
        loc = half + half * p[..., 0]
        scale = tf.nn.softplus(p[..., 1] + _inverse_softplus(half / 4.0)) + self.min_scale
        return {"loc": loc, "scale": scale}

    def distribution(self, parameters):
        logistic = tfd.Logistic(loc=parameters["loc"] - 0.5, scale=parameters["scale"])
        quantized = tfd.QuantizedDistribution(
            logistic, low=0.0, high=float(self.num_levels - 1)
        )
        return self._independent(quantized)

    def mean_of(self, parameters):
        levels = tf.range(self.num_levels - 1, dtype=tf.float32)
        # P(x > k) = 1 − F(k + ½) = sigmoid((μ − ½ − k) / s).
        z = (parameters["loc"][..., None] - 0.5 - levels) / parameters["scale"][..., None]
        return tf.reduce_sum(tf.sigmoid(z), axis=-1)

    def mean(self, distribution):
        logistic = distribution.distribution.distribution
        return self.mean_of({"loc": logistic.loc + 0.5, "scale": logistic.scale})

    def get_config(self):
        return {
            **super().get_config(),
            "min_scale": self.min_scale,
        }
