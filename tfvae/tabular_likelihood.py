"""`TabularLikelihood`: p(x|z) for rows of a table, one term per column.

A row `x` `[d]` holds a table's features as `tfvae.tabular.Schema.encode` codes
them: continuous columns raw (unscaled), binary columns 0/1, categorical
columns their codes 0..K (K the unknown slot). The head composes the
likelihoods the image heads use, column by column:

* continuous column j: a Gaussian on the column's standardised value
  `u = (x_j − m_j) / s_j`, where `m_j`, `s_j²` are the training split's mean
  and variance, held by a Keras `Normalization` layer inside the head
  (`adapt(x_train)`; saved with the model, so the `.keras` file takes raw
  rows). Its density on the raw scale is `N(u; μ_j, σ_j²) / s_j`. σ is
  learned per column (`scale="per_dimension"`) or predicted by the decoder
  for each row (`scale="predicted"`);
* binary column: Bernoulli(sigmoid(η_j));
* categorical column with K values: Categorical(softmax(η_j)) over K + 1
  outcomes (the last, never seen in training, is where unseen categories go).

Mathematical details: `log p(x|z) = Σ_j log p_j(x_j|z)`; `column_log_probs`
gives the `[batch, d]` terms, `log_prob` their sum (nats, densities of
continuous columns on the raw scale).

The encoder sees the standardised continuous columns, the binary columns and
one-hot codes of the categorical columns (`encoder_input`).
"""

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfvae import _checks
from tfvae import heads
from tfvae import tabular

__all__ = [
    "RowDistribution",
    "TabularLikelihood",
]

tfd = tfp.distributions

_SCALES = ("per_dimension", "predicted")


def _inverse_softplus(y):
    return float(np.log(np.expm1(y)))


@keras.saving.register_keras_serializable(package="tfvae")
class TabularLikelihood(heads.LikelihoodHead):
    """p(x|z) for table rows typed by a `tfvae.tabular.Schema` (see the module docstring).

    Call `adapt(x_train)` once before training: it fits the standardisation of
    the continuous columns on the training rows.

    Args:
      schema: a `tfvae.tabular.Schema`, or its `to_config()` dict.
      scale: `"per_dimension"` (one learned σ per continuous column) or
        `"predicted"` (σ from the decoder, per row). Default value: `"per_dimension"`.
      initial_scale: starting σ, in standard deviations of the column.
        Default value: `1.0`.
      min_scale: lower bound on σ. Default value: `1e-3`.
    """

    column_terms = True  # `column_log_probs`: the `score` export graph's feature_scores
    support_is_range = False  # `support_mask` checks each column's codes

    def __init__(self, schema, scale="per_dimension", initial_scale=1.0, min_scale=1e-3,
                 **kwargs):
        if isinstance(schema, dict):
            schema = tabular.Schema.from_config(schema)
        _checks.instance_of("schema", schema, tabular.Schema, "tfvae.tabular.Schema(...)")
        kwargs.pop("event_shape", None)
        features = schema.features
        super().__init__((len(features),), **kwargs)
        self.schema = schema
        self.scale = _checks.one_of("scale", scale, _SCALES)
        self.initial_scale = _checks.positive_float("initial_scale", initial_scale)
        self.min_scale = _checks.non_negative_float("min_scale", min_scale)
        kinds = [c.kind for c in features]
        self.continuous = [j for j, k in enumerate(kinds) if k == "continuous"]
        self.binary = [j for j, k in enumerate(kinds) if k == "binary"]
        self.categorical = [j for j, k in enumerate(kinds) if k == "categorical"]
        self.outcomes = [features[j].num_outcomes for j in self.categorical]
        # Where each column's term lands: the blocks [continuous, binary, categorical]
        # concatenated, gathered back into the table's column order.
        order = self.continuous + self.binary + self.categorical
        self._column_order = np.argsort(order).astype(np.int32)
        self._raw_initial = _inverse_softplus(max(self.initial_scale - self.min_scale, 1e-6))
        n = len(self.continuous)
        self.normalization = keras.layers.Normalization(axis=-1, name="normalization")
        self.normalization.build((None, max(n, 1)))
        self.raw_scale = None
        if self.scale == "per_dimension" and n:
            self.raw_scale = self.add_weight(
                shape=(n,), initializer=keras.initializers.Constant(self._raw_initial),
                name="raw_scale")

    # ------------------------------------------------------------------
    # Standardisation.

    def adapt(self, x):
        """Fits the continuous columns' mean and variance on the training rows `x` `[n, d]`."""
        x = np.asarray(x, np.float32)
        self.validate_data(x, name="x")
        if self.continuous:
            self.normalization.adapt(x[:, self.continuous])

    def column_stats(self):
        """The continuous columns' standardisation `(mean [c], std [c])` as tensors.

        Read from the layer's variables (`adapt_mean`, `adapt_variance`), not from
        its `mean` / `variance`: those are eager tensors that a traced graph
        captures as inputs, which the ONNX converter leaves as unfed placeholders.
        """
        mean = tf.reshape(tf.cast(self.normalization.adapt_mean, tf.float32), [-1])
        std = tf.maximum(tf.sqrt(tf.reshape(tf.cast(self.normalization.adapt_variance,
                                                    tf.float32), [-1])),
                         keras.config.epsilon())
        n = len(self.continuous)
        return mean[:n], std[:n]

    def _standardized(self, x):
        mean, std = self.column_stats()
        return (tf.gather(x, self.continuous, axis=-1) - mean) / std

    # ------------------------------------------------------------------
    # Parameters.

    @property
    def params_size(self):
        per_continuous = 2 if self.scale == "predicted" else 1
        return per_continuous * len(self.continuous) + len(self.binary) + sum(self.outcomes)

    def _parameters(self, flat):
        n = len(self.continuous)
        sizes = [n, n if self.scale == "predicted" else 0, len(self.binary), sum(self.outcomes)]
        loc, raw, binary, categorical = tf.split(flat, sizes, axis=-1)
        if self.scale == "predicted":
            scale = tf.nn.softplus(raw + self._raw_initial) + self.min_scale
        elif self.raw_scale is not None:
            scale = (tf.nn.softplus(tf.convert_to_tensor(self.raw_scale)) + self.min_scale
                     + tf.zeros_like(loc))
        else:
            scale = tf.zeros_like(loc)
        return {"loc": loc, "scale": scale, "binary_logits": binary,
                "categorical_logits": categorical}

    def _categorical_blocks(self, logits):
        return tf.split(logits, self.outcomes, axis=-1) if self.outcomes else []

    # ------------------------------------------------------------------
    # Densities.

    def column_log_probs(self, parameters, x):
        """Each column's `log p_j(x_j|z)` `[batch, d]`, in the schema's column order (nats)."""
        x = tf.cast(x, tf.float32)
        blocks = []
        if self.continuous:
            _, std = self.column_stats()
            u = self._standardized(x)
            sigma = parameters["scale"]
            blocks.append(-0.5 * tf.square((u - parameters["loc"]) / sigma)
                          - tf.math.log(sigma) - 0.5 * np.log(2 * np.pi) - tf.math.log(std))
        if self.binary:
            event = tf.gather(x, self.binary, axis=-1)
            logits = parameters["binary_logits"]
            blocks.append(event * logits - tf.math.softplus(logits))
        for j, logits in zip(self.categorical, self._categorical_blocks(
                parameters["categorical_logits"])):
            code = tf.cast(tf.where(tf.math.is_finite(x[..., j]), x[..., j], -1.0), tf.int32)
            one_hot = tf.one_hot(code, logits.shape[-1], dtype=tf.float32)
            blocks.append(tf.reduce_sum(one_hot * tf.nn.log_softmax(logits), -1, keepdims=True))
        return tf.gather(tf.concat(blocks, axis=-1), self._column_order, axis=-1)

    @property
    def column_names(self):
        """The feature columns' names, in `column_log_probs`' order."""
        return list(self.schema.names)

    def log_prob(self, parameters, x):
        return tf.reduce_sum(self.column_log_probs(parameters, x), axis=-1)

    def distribution(self, parameters):
        return RowDistribution(self, parameters)

    def mean_of(self, parameters):
        """Per column: the Gaussian's mean on the raw scale, the Bernoulli's probability,
        and the most probable category's code (a code's mean means nothing)."""
        blocks = []
        if self.continuous:
            mean, std = self.column_stats()
            blocks.append(mean + std * parameters["loc"])
        if self.binary:
            blocks.append(tf.sigmoid(parameters["binary_logits"]))
        for logits in self._categorical_blocks(parameters["categorical_logits"]):
            blocks.append(tf.cast(tf.argmax(logits, axis=-1), tf.float32)[..., None])
        return tf.gather(tf.concat(blocks, axis=-1), self._column_order, axis=-1)

    def sample_of(self, parameters, seed, unknown=True):
        """One row per example drawn from p(x|z) `[batch, d]` (a stateless `seed`).

        With `unknown=False` a categorical column is drawn among its K known
        values only: from p(x_j|z) conditioned on x_j ≠ K, the unknown slot (which
        no training row holds, so its probability is small), i.e. from
        `softmax(η_j[:K])`. Rows drawn so decode to table values
        (`tfvae.tabular.Schema.decode`).
        """
        seeds = tfp.random.split_seed(seed, 3)
        blocks = []
        if self.continuous:
            mean, std = self.column_stats()
            u = parameters["loc"] + parameters["scale"] * tf.random.stateless_normal(
                tf.shape(parameters["loc"]), seeds[0])
            blocks.append(mean + std * u)
        if self.binary:
            logits = parameters["binary_logits"]
            uniform = tf.random.stateless_uniform(tf.shape(logits), seeds[1])
            blocks.append(tf.cast(uniform < tf.sigmoid(logits), tf.float32))
        for i, logits in enumerate(self._categorical_blocks(parameters["categorical_logits"])):
            logits = logits if unknown else logits[..., :-1]
            draw = tf.random.stateless_categorical(
                logits, 1, tfp.random.split_seed(seeds[2], len(self.outcomes))[i])
            blocks.append(tf.cast(draw, tf.float32))
        return tf.gather(tf.concat(blocks, axis=-1), self._column_order, axis=-1)

    # ------------------------------------------------------------------
    # What the encoder sees, and which rows can be scored.

    # Rows are coded by the schema (`tfvae.tabular`), never binarised; the support is
    # per column, so `support_mask` and `validate_data` are the head's own (the
    # declared `support`, all reals, is only the continuous columns').
    binarize_modes = ("none",)

    def encoder_input(self, x):
        """Standardised continuous columns, binary columns, one-hot categorical codes."""
        x = tf.cast(x, tf.float32)
        parts = []
        if self.continuous:
            parts.append(self._standardized(x))
        if self.binary:
            parts.append(tf.gather(x, self.binary, axis=-1))
        for j, k in zip(self.categorical, self.outcomes):
            code = tf.cast(tf.where(tf.math.is_finite(x[..., j]), x[..., j], -1.0), tf.int32)
            parts.append(tf.one_hot(code, k, dtype=tf.float32))
        return tf.concat(parts, axis=-1)

    @property
    def score(self):
        return "density" if self.continuous else "mass"

    def support_mask(self, x):
        """True for rows whose every column is finite, binary columns 0/1 and categorical
        columns a code 0..K (graph-safe: no asserts)."""
        x = tf.convert_to_tensor(x, tf.float32)
        ok = tf.reduce_all(tf.math.is_finite(x), axis=-1)
        if self.binary:
            binary = tf.gather(x, self.binary, axis=-1)
            ok &= tf.reduce_all((binary == 0.0) | (binary == 1.0), axis=-1)
        for j, k in zip(self.categorical, self.outcomes):
            code = x[..., j]
            ok &= (code >= 0.0) & (code <= k - 1) & (tf.floor(code) == code)
        return ok

    def validate_data(self, x, name="x"):
        x = np.asarray(x)
        features = self.schema.features
        if x.ndim != 2 or x.shape[1] != len(features):
            raise ValueError(f"Received an invalid value for `{name}`, expected rows "
                             f"[n, {len(features)}] ({self.schema.names}). Received: {name} "
                             f"with shape {x.shape}")
        for j, column in enumerate(features):
            values = x[:, j]
            bad = ~np.isfinite(values)
            expected = "finite values"
            if column.kind == "binary":
                bad |= (values != 0) & (values != 1)
                expected = "codes 0 or 1"
            elif column.kind == "categorical":
                bad |= (values < 0) | (values > column.num_outcomes - 1) | (
                    np.floor(values) != values)
                expected = f"codes 0..{column.num_outcomes - 1}"
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise ValueError(f"Received an invalid value for `{name}`: column "
                                 f"{column.name!r} ({column.kind}) expects {expected}. "
                                 f"Received: {values[row]!r} in row {row}")

    def get_config(self):
        config = super().get_config()
        config.pop("event_shape", None)
        return {**config, "schema": self.schema.to_config(), "scale": self.scale,
                "initial_scale": self.initial_scale, "min_scale": self.min_scale}


class RowDistribution(tfd.Distribution):
    """The `tfd.Distribution` of a `TabularLikelihood`: batch `[batch]`, event `[d]`.

    `log_prob` is the head's column sum; `mean` its `mean_of`; `sample` draws
    each column from its own distribution.
    """

    def __init__(self, head, parameters, name="RowDistribution"):
        self._head, self._params = head, dict(parameters)
        super().__init__(dtype=tf.float32, reparameterization_type=tfd.NOT_REPARAMETERIZED,
                         validate_args=False, allow_nan_stats=True,
                         parameters={"parameters": dict(parameters)}, name=name)

    def _event_shape(self):
        return tf.TensorShape(self._head.event_shape)

    def _event_shape_tensor(self):
        return tf.constant(self._head.event_shape, tf.int32)

    def _batch_shape(self):
        return self._params["loc"].shape[:-1]

    def _batch_shape_tensor(self):
        return tf.shape(self._params["loc"])[:-1]

    def _log_prob(self, x):
        return self._head.log_prob(self._params, x)

    def _mean(self):
        return self._head.mean_of(self._params)

    def _sample_n(self, n, seed=None):
        # n draws per example: the parameters tiled sample-major, one draw each.
        tiled = {key: tf.reshape(tf.tile(value[None], [n, 1, 1]), [-1, value.shape[-1]])
                 for key, value in self._params.items()}
        rows = self._head.sample_of(tiled, tfp.random.sanitize_seed(seed))
        return tf.reshape(rows, tf.concat([[n], tf.shape(self._params["loc"])[:-1],
                                           [self._head.event_shape[0]]], 0))
