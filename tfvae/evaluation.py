"""Held-out evaluation: ELBO terms, importance-sampled log p(x), the gap, active units.

Every function takes its data in one convention (`batches`): an array
`[n] + event_shape` with optional conditions `y`, or a `tf.data.Dataset` of x
or `(x, y)`, batched or not, read batch by batch. The per-example functions
come as generators of one dict of columns per batch (`iter_scores`,
`iter_encodings`, to write with `tfvae.tables` as they are computed) and as
their concatenation (`score_examples`, `encode_dataset`); the aggregates
(`evaluate_model`, `active_units`, `kl_per_dimension`) stream in one pass;
what is defined on a finite set (ELBO surgery, the gap split, the MIG) uses
the first examples of the stream.
"""

from typing import Any, NamedTuple

import keras
import numpy as np
import tensorflow as tf

from tfvae import _checks
from tfvae import disentanglement
from tfvae import gap
from tfvae import random as tfvae_random
from tfvae import surgery
from tfvae.surgery import aggregate_log_density, elbo_surgery  # noqa: F401 (public here)

__all__ = [
    "ACTIVE_UNIT_THRESHOLD",
    "active_units",
    "Batch",
    "batches",
    "disentanglement_metrics",
    "encode_dataset",
    "evaluate_model",
    "first_examples",
    "gap_decomposition",
    "gap_note",
    "iter_encodings",
    "iter_scores",
    "kl_per_dimension",
    "LOW_ESS",
    "MEAN_SAMPLES",
    "PosteriorMeanMoments",
    "RunningMoments",
    "score_examples",
    "summary",
    "SUMMARY_KEYS",
]

# The held-out numbers a summary shows (the command's table, report.md), in order;
# keys a model does not report (kl_z1, kl_z2 outside hierarchies) are skipped.
SUMMARY_KEYS = ("elbo", "reconstruction", "kl", "kl_z1", "kl_z2", "mutual_information",
                "marginal_kl", "total_correlation", "dimension_wise_kl", "mi_fraction_of_bound",
                "mutual_information_heldout", "marginal_kl_heldout", "total_correlation_heldout",
                "dimension_wise_kl_heldout", "log_px", "elbo_gap", "approximation_gap", "amortization_gap",
                "bits_per_dim", "active_units", "mig", "roc_auc", "pr_auc")


def summary(metrics):
    """`[(key, text)]` for the `SUMMARY_KEYS` in `metrics`: floats to 4 decimals, others as is.

    When some examples of the gap split did not converge (`gap_unconverged`),
    `amortization_gap` is marked `≥` (a lower bound) and `approximation_gap`
    `~` (unreliable, see `gap_note`)."""
    bounds = {"approximation_gap": "~ ", "amortization_gap": "≥ "} if metrics.get(
        "gap_unconverged") else {}
    return [
        (key, bounds.get(key, "") + (f"{metrics[key]:.4f}" if isinstance(metrics[key], float)
                                     else str(metrics[key])))
        for key in SUMMARY_KEYS if key in metrics
    ]


class Batch(NamedTuple):
    """One batch of a stream (`batches`).

    Attributes:
      start: the running index of the batch's first example in the stream.
      x: data `[b] + event_shape` (a slice of the array, or numpy from the dataset).
      condition: what a conditional model takes as y `[b, ...]`, else `None`.
      label: the y of a dataset's `(x, y)` elements `[b, ...]` (conditions or an
        unconditional model's labels, carried as they are), else `None`.
    """

    start: int
    x: Any
    condition: Any
    label: Any


def _fail(name, expected, received):
    raise ValueError(f"Received an invalid value for `{name}`, expected {expected}. "
                     f"Received: {received}")


def _dataset_spec(model, x):
    """`(has_y, batched)` of a dataset whose elements are x or `(x, y)`, else raises."""
    expected = (f"a tf.data.Dataset whose elements are x or (x, y), x of shape "
                f"{tuple(model.event_shape)} or (batch,) + {tuple(model.event_shape)}")
    spec = x.element_spec
    has_y = isinstance(spec, tuple)
    if has_y and len(spec) != 2 or not isinstance(spec[0] if has_y else spec, tf.TensorSpec):
        _fail("x", expected, f"x with element_spec {spec}")
    x_spec = spec[0] if has_y else spec
    rank, event_rank = x_spec.shape.rank, len(model.event_shape)
    if rank not in (event_rank, event_rank + 1):
        _fail("x", expected, f"x with element_spec {spec}")
    if model.condition_dim is not None and not has_y:
        _fail("x", f"(x, y) elements for a conditional model (condition_dim="
              f"{model.condition_dim})", f"x with element_spec {spec}")
    return has_y, rank == event_rank + 1


def _dataset_batches(model, x, batch_size):
    """`(x, y or None)` numpy batches of a dataset, and its number of examples if known."""
    has_y, batched = _dataset_spec(model, x)
    total = None
    if not batched:
        cardinality = int(x.cardinality())
        total = cardinality if cardinality >= 0 else None
        x = x.batch(batch_size)

    def generate():
        for element in x.as_numpy_iterator():
            yield element if has_y else (element, None)

    return generate(), total


def _check_array(x):
    if isinstance(x, (str, bytes, dict)) or not hasattr(x, "__len__") or not hasattr(
            x, "__getitem__"):
        _fail("x", "an array (n,) + event_shape or a tf.data.Dataset",
              f"x of type {type(x).__name__}")


def _array_batches(x, y, batch_size):
    """`(x, y or None)` slices of an array (today's batching), and its size.

    Conditions given per example (integer labels `[n]`, vectors `[n, C]`) must
    number one per example: more or fewer would be sliced silently out of step.
    """
    _check_array(x)
    if y is not None and not tf.is_tensor(y):
        y = np.asarray(y)
        per_example = y.ndim == 2 or (y.ndim == 1 and y.dtype.kind in "iub")
        if per_example and len(y) != len(x):
            _fail("y", f"one condition per example of x ({len(x)})",
                  f"y with {len(y)} rows")
    return ((x[i : i + batch_size], None if y is None else y[i : i + batch_size])
            for i in range(0, len(x), batch_size)), len(x)


def batches(model, x, y=None, batch_size=256, verbose=0):
    """The one input convention of this module: `x` (and `y`) as a stream of batches.

    `x` is either an array `[n] + event_shape` with, for a conditional model,
    its conditions `y` (sliced into batches of `batch_size`, in order), or a
    `tf.data.Dataset` whose elements are `x` or `(x, y)`: batched (x of rank
    `1 + len(event_shape)`, used as batched) or unbatched (batched here with
    `batch_size`). A dataset's `y` is the condition of a conditional model
    (`model.condition_dim` is not None); for an unconditional model it is only
    carried along (the dataset's labels), never given to the model. Either
    way it comes out as each batch's `label`. Batches are read lazily: memory
    does not grow with the number of examples.

    Args:
      model: a `tfvae.VAE` (its `event_shape` and `condition_dim`).
      x: an array, or a `tf.data.Dataset` as above.
      y: the conditions of an array `x`; must be `None` for a dataset.
        Default value: `None`.
      batch_size: examples per batch for arrays and unbatched datasets.
        Default value: `256`.
      verbose: 1 shows a progress bar over the examples (of unknown total for
        a batched dataset). Default value: `0`.

    Returns:
      An iterator of `Batch(start, x, condition, label)` tuples, in input
      order. The arguments are checked at once; the data is read as the
      iterator is advanced.

    Raises:
      ValueError: for an `x` that is neither, or a `y` given with a dataset.
    """
    batch_size = _checks.positive_int("batch_size", batch_size)
    if isinstance(x, tf.data.Dataset):
        if y is not None:
            _fail("y", "None when `x` is a tf.data.Dataset (give its elements as (x, y))",
                  f"y of type {type(y).__name__}")
        parts, total = _dataset_batches(model, x, batch_size)
        conditional = model.condition_dim is not None
        carried = ((xb, yb if conditional else None, yb) for xb, yb in parts)
    else:
        parts, total = _array_batches(x, y, batch_size)
        carried = ((xb, yb, None) for xb, yb in parts)
    return _numbered(carried, total, verbose)


def _numbered(parts, total, verbose):
    """`Batch`es from `(x, condition, label)` parts, with a progress bar when `verbose`."""
    progress = keras.utils.Progbar(total, unit_name="example") if verbose else None
    start = 0
    for xb, condition, label in parts:
        yield Batch(start, xb, condition, label)
        start += len(xb)
        if progress is not None:
            progress.add(len(xb))
    if progress is not None and total is None:
        progress.update(start, finalize=True)  # a known total finalises itself


def _columns(batch):
    """The leading per-example columns of a batch: `index` and the stream's `label`."""
    columns = {"index": np.arange(batch.start, batch.start + len(batch.x), dtype=np.int64)}
    if batch.label is not None:
        columns["label"] = np.asarray(batch.label)
    return columns


def _concatenate(parts):
    """Concatenates per-batch column dicts, without the running `index`."""
    columns = {}
    for part in parts:
        for key, value in part.items():
            if key != "index":
                columns.setdefault(key, []).append(value)
    return {key: np.concatenate(values) for key, values in columns.items()}


class RunningMoments:
    """Per-dimension count, mean and variance of rows seen batch by batch, in one pass.

    Mathematical details (Chan, Golub & LeVeque, 1979): each batch of m rows
    has its own mean `b` and sum of squared deviations `M_b` (two passes over
    the batch, float64); it merges into the running `(n, a, M)` as

        n' = n + m,  δ = b − a,  a' = a + δ m / n',  M' = M + M_b + δ² n m / n',

    and the variance is `M / n` (numpy's `var`, ddof = 0). No sum of squares
    is ever formed, so a large mean does not cancel the variance away.
    """

    def __init__(self):
        self.count = 0
        self.mean = None
        self._squares = None

    def update(self, values):
        """Adds the rows of `values` `[m, ...]`."""
        values = np.asarray(values, np.float64)
        m = len(values)
        if m == 0:
            return
        mean = values.mean(axis=0)
        squares = np.square(values - mean).sum(axis=0)
        if self.count == 0:
            self.count, self.mean, self._squares = m, mean, squares
            return
        n = self.count
        total = n + m
        delta = mean - self.mean
        self.mean = self.mean + delta * (m / total)
        self._squares = self._squares + squares + np.square(delta) * (n * m / total)
        self.count = total

    @property
    def variance(self):
        """The population variance (ddof = 0) of the rows so far, `[...]` float64."""
        if self.count == 0:
            raise ValueError("Received an invalid value for `values`, expected at least one "
                             "row before asking for the variance. Received: 0 rows")
        return self._squares / self.count


def _has_kl_per_dimension(model):
    return model.posterior.independent_dimensions and model.prior.has_kl_per_dimension


def _check_kl_per_dimension(model):
    if not _has_kl_per_dimension(model):
        raise ValueError(
            "kl_per_dimension needs a diagonal Gaussian posterior and a standard normal "
            f"prior. Received: {type(model.posterior).__name__} and {type(model.prior).__name__}"
        )


def _kl_sums(model, batch):
    """`Σ_batch KL(q(z_j|x) ‖ p(z_j))` per dimension j, float64 `[latent_dim]`."""
    q = model.encode(batch.x, y=batch.condition)
    mu, sigma = q.mean().numpy().astype(np.float64), q.stddev().numpy().astype(np.float64)
    return np.sum(model.prior.kl_per_dimension(mu, sigma).numpy(), axis=0)


# A unit is active when the variance of its posterior mean over the data exceeds this.
ACTIVE_UNIT_THRESHOLD = 0.01

# Draws per example for E_q[z] where the posterior has no closed form for it.
MEAN_SAMPLES = 64


class PosteriorMeanMoments:
    """The variance over examples of E_q[z], from batches of examples, in one pass.

    Where the posterior writes out its mean (`Posterior.closed_form_mean`, the
    Gaussians) it is used as is. Otherwise (flows, the hierarchy) E_q[z] is the
    average of `reparameterize` over `num_samples` standard normal draws per
    example; over n examples, that average's variance (ddof 0) exceeds the
    variance of E_q[z] by `(n − 1)/n · E_n[Var_q(z|x_n)] / S` in expectation,
    which is estimated from the same draws (each example's sample variance,
    ddof 1) and subtracted: `variance` is unbiased for the ddof-0 variance of
    the examples' exact means. It can come out slightly negative for a unit
    whose mean does not vary (such a unit is inactive at any threshold ≥ 0).

    Args:
      model: a `tfvae.VAE`.
      num_samples: draws per example S ≥ 2 where there is no closed form.
        Default value: `MEAN_SAMPLES` (64).
      seed: noise seed. Default value: `0`.
    """

    def __init__(self, model, num_samples=MEAN_SAMPLES, seed=0):
        self.model = model
        self.num_samples = _checks.positive_int("num_samples", num_samples)
        if self.num_samples < 2:
            _fail("num_samples", "at least 2 draws per example (their spread is the Monte "
                  "Carlo error that is subtracted)", f"num_samples={num_samples}")
        self.seed = seed
        self.moments = RunningMoments()
        self._noise_variance = 0.0  # Σ_n Var_q(z|x_n) / S, summed over examples
        self.monte_carlo = False

    def update(self, batch):
        """Adds the examples of a `Batch`."""
        model = self.model
        parameters = model.posterior_parameters(*model.prepare_inputs(batch.x, batch.condition))
        mean = model.posterior.closed_form_mean(parameters)
        if mean is not None:
            self.moments.update(np.asarray(mean))
            return
        self.monte_carlo = True
        b, s = len(batch.x), self.num_samples
        noise = tf.random.stateless_normal(
            [s, b, model.latent_dim],
            seed=tfvae_random.make_seed(tfvae_random.fold_in(self.seed, batch.start)))
        z = model.posterior.reparameterize(parameters, noise).numpy().astype(np.float64)
        self.moments.update(z.mean(axis=0))
        self._noise_variance = self._noise_variance + z.var(axis=0, ddof=1).sum(axis=0) / s

    @property
    def variance(self):
        """Var_n E_q[z_j|x_n] per dimension, `[latent_dim]` float64 (ddof 0)."""
        n = self.moments.count
        return self.moments.variance - self._noise_variance * (n - 1) / n**2


def active_units(model, x, threshold=ACTIVE_UNIT_THRESHOLD, batch_size=256, y=None,
                 num_samples=MEAN_SAMPLES, seed=0):
    """Counts latent dimensions whose posterior mean varies across the data.

    A unit is active when `Cov_x(E_q[z_j])` exceeds `threshold` (Burda et al.,
    2016). E_q[z] is the posterior's closed-form mean where it has one (the
    Gaussians), else a Monte Carlo average of `num_samples` draws per example
    whose own noise is subtracted from the variance (`PosteriorMeanMoments`;
    flows and the hierarchy, where the noise-free code `latent_code(x)` is not
    the mean). Accumulated batch by batch: one pass, memory flat in the number
    of examples.

    Args:
      model: a `tfvae.VAE`.
      x: data: an array `[n] + event_shape`, or a `tf.data.Dataset` (`batches`).
      threshold: the variance above which a unit is active. Default value: `0.01`.
      batch_size: examples per batch. Default value: `256`.
      y: the conditions of an array `x`, for a conditional model. Default value: `None`.
      num_samples: draws per example where E_q[z] has no closed form. Default
        value: `64`.
      seed: noise seed of those draws. Default value: `0`.

    Returns:
      `(count, variances)` with `variances` float64 of shape `[latent_dim]`.
    """
    moments = PosteriorMeanMoments(model, num_samples=num_samples, seed=seed)
    for batch in batches(model, x, y, batch_size):
        moments.update(batch)
    variances = moments.variance
    return int(np.sum(variances > threshold)), variances


def kl_per_dimension(model, x, batch_size=256, y=None):
    """Mean over `x` of KL(q(z_j|x) ‖ p(z_j)) for each latent dimension j, in nats.

    Defined when q is a diagonal Gaussian and p the standard normal, where the
    KL splits over dimensions: `½ (μ_j² + σ_j² − 1 − log σ_j²)`. Dimensions
    near 0 nats carry no information about x (posterior collapse). Summed per
    batch in float64, then divided by the number of examples (one pass).

    Args:
      model: a `tfvae.VAE`.
      x: data: an array `[n] + event_shape`, or a `tf.data.Dataset` (`batches`).
      batch_size: examples per batch. Default value: `256`.
      y: the conditions of an array `x`, for a conditional model. Default value: `None`.

    Returns:
      A `[latent_dim]` numpy array that sums to the mean KL per example.
    """
    _check_kl_per_dimension(model)
    total, count = np.zeros(model.latent_dim), 0
    for batch in batches(model, x, y, batch_size):
        total += _kl_sums(model, batch)
        count += len(batch.x)
    return total / count


def iter_encodings(model, x, y=None, batch_size=256, verbose=0):
    """The posterior q(z|x) of every example, one dict of numpy arrays per batch.

    Args:
      model: a `tfvae.VAE`.
      x: data: an array `[n] + event_shape` (with its conditions `y`, for a
        conditional model), or a `tf.data.Dataset` of x or `(x, y)` (`batches`).
      y: the conditions of an array `x`. Default value: `None`.
      batch_size: examples per batch. Default value: `256`.
      verbose: 1 shows a progress bar. Default value: `0`.

    Returns:
      An iterator (the arguments checked at once, the data read as it is
      advanced) of, per batch of b examples, a dict of numpy arrays with b rows: `index`
      (the running example index, int64), `label` (when a dataset carries y),
      the posterior's parameters under the names of the `encode` export graph
      (`VAE.posterior_outputs`: `mean`, `scale` and the flow or hierarchy
      parameters) and `code`, the deterministic code `latent_code(x)`
      `[b, latent_dim]`.
    """
    return (_encode_batch(model, batch) for batch in batches(model, x, y, batch_size, verbose))


def _encode_batch(model, batch):
    """`iter_encodings`' columns for one batch."""
    inputs = model.prepare_inputs(batch.x, batch.condition)
    outputs = dict(model.posterior_outputs(*inputs),
                   code=model.latent_code(batch.x, batch.condition))
    return {**_columns(batch), **{key: np.asarray(value) for key, value in outputs.items()}}


def encode_dataset(model, x, y=None, batch_size=256, verbose=0):
    """The posterior q(z|x) of every example, as arrays in input order.

    The concatenation of `iter_encodings` (without its running `index`).

    Args:
      model: a `tfvae.VAE`.
      x: data: an array `[n] + event_shape` (with its conditions `y`, for a
        conditional model), or a `tf.data.Dataset` of x or `(x, y)` (`batches`).
      y: the conditions of an array `x`. Default value: `None`.
      batch_size: examples per batch. Default value: `256`.
      verbose: 1 shows a progress bar. Default value: `0`.

    Returns:
      A dict of numpy arrays with `n` rows: the posterior's parameters under
      the names of the `encode` export graph (`VAE.posterior_outputs`: `mean`,
      `scale` and the flow or hierarchy parameters), `code`, the
      deterministic code `latent_code(x)` `[n, latent_dim]`, and `label` when
      a dataset carries y.
    """
    return _concatenate(iter_encodings(model, x, y, batch_size, verbose))


def _score_batch(model, batch, seed, num_samples, squared_error):
    """Per-example scores `{name: float64 [b]}` of one batch (the `i`-th: `seed` = seed + i)."""
    scores = dict(model.elbo(batch.x, seed=seed, y=batch.condition))
    if squared_error:
        error = np.square(np.asarray(batch.x, np.float64)
                          - np.asarray(model.reconstruct(batch.x, y=batch.condition), np.float64))
        scores["squared_error"] = error.reshape(len(batch.x), -1).sum(axis=1)
    if num_samples is not None:
        scores["log_px"] = model.log_likelihood(batch.x, num_samples=num_samples,
                                                seed=seed + _LOG_PX_SEED, y=batch.condition)
    return {key: np.asarray(value, np.float64) for key, value in scores.items()}


# Batch i draws the ELBO's noise from seed + i and log p(x)'s from seed + 7919 + i.
_LOG_PX_SEED = 7919


def iter_scores(model, x, y=None, num_samples=None, seed=0, batch_size=256, verbose=0,
                squared_error=True):
    """Per-example scores for anomaly detection, one dict of numpy arrays per batch.

    Args:
      model: a `tfvae.VAE`.
      x: data: an array `[n] + event_shape` (with its conditions `y`, for a
        conditional model), or a `tf.data.Dataset` of x or `(x, y)` (`batches`).
      y: the conditions of an array `x`. Default value: `None`.
      num_samples: importance samples K for `log_px`; `None` skips it.
        Default value: `None`.
      seed: noise seed (batch `i` uses `seed + i` for the ELBO and
        `seed + 7919 + i` for log p(x)). Default value: `0`.
      batch_size: examples per batch. Default value: `256`.
      verbose: 1 shows a progress bar. Default value: `0`.
      squared_error: also score the reconstruction error. Default value: `True`.

    Returns:
      An iterator (the arguments checked at once, the data read as it is
      advanced) of, per batch of b examples, a dict of numpy arrays `[b]`: `index` (the
      running example index, int64), `label` (when a dataset carries y), and
      in float64 `elbo`, `reconstruction`, `kl` (and `kl_z1`, `kl_z2` for a
      hierarchy) in nats, `squared_error` (the squared distance between x
      and its deterministic reconstruction, summed over the event), and
      `log_px` when `num_samples` is given.
    """
    if num_samples is not None:
        num_samples = _checks.positive_int("num_samples", num_samples)
    return ({**_columns(batch), **_score_batch(model, batch, seed + i, num_samples,
                                               squared_error)}
            for i, batch in enumerate(batches(model, x, y, batch_size, verbose)))


def score_examples(model, x, y=None, num_samples=None, seed=0, batch_size=256, verbose=0,
                   squared_error=True):
    """Per-example scores for anomaly detection, in input order.

    The concatenation of `iter_scores` (without its running `index`); see
    there for the arguments.

    Returns:
      A dict of float64 arrays `[n]`: `elbo`, `reconstruction`, `kl` (and
      `kl_z1`, `kl_z2` for a hierarchy) in nats, `squared_error` (the squared
      distance between x and its deterministic reconstruction, summed over
      the event), `log_px` when `num_samples` is given, and `label` when a
      dataset carries y.
    """
    return _concatenate(iter_scores(model, x, y, num_samples, seed, batch_size, verbose,
                                    squared_error))


class _FirstExamples:
    """The first `limit` examples of a stream (x and conditions), kept as batches go by."""

    def __init__(self, limit):
        self.limit = limit
        self.count = 0
        self._x, self._conditions = [], []

    def update(self, batch):
        keep = min(self.limit - self.count, len(batch.x))
        if keep <= 0:
            return
        self._x.append(batch.x[:keep])
        if batch.condition is not None:
            self._conditions.append(batch.condition[:keep])
        self.count += keep

    @property
    def full(self):
        return self.count >= self.limit

    def arrays(self):
        """`(x, y or None)` of the examples kept."""
        x = np.concatenate(self._x) if self._x else None
        return x, np.concatenate(self._conditions) if self._conditions else None


def first_examples(model, x, y=None, num_examples=256, batch_size=256):
    """The first `num_examples` examples of `x` (fewer if it is shorter), materialised.

    A bounded take: a dataset is read only until `num_examples` examples have
    come out. For an array, `x[:num_examples]` and `y[:num_examples]`.

    Args:
      model: a `tfvae.VAE`.
      x: an array `[n] + event_shape`, or a `tf.data.Dataset` (`batches`).
      y: the conditions of an array `x`. Default value: `None`.
      num_examples: how many examples. Default value: `256`.
      batch_size: examples per batch of an unbatched dataset. Default value: `256`.

    Returns:
      `(x, y)`: numpy arrays `[m] + event_shape` and the conditions `[m, ...]`
      (`None` for an unconditional model), `m = min(num_examples, n)`.
    """
    num_examples = _checks.positive_int("num_examples", num_examples)
    if not isinstance(x, tf.data.Dataset):
        _check_array(x)
        if len(x) == 0:
            _fail("x", "at least one example", "x with 0 examples")
        return x[:num_examples], None if y is None else y[:num_examples]
    first = _FirstExamples(num_examples)
    for batch in batches(model, x, y, min(batch_size, num_examples)):
        first.update(batch)
        if first.full:
            break
    if first.count == 0:
        _fail("x", "at least one example", "x with 0 examples")
    return first.arrays()


class _ScoreSums:
    """Float64 sums of the per-example scores, and the data's `score_kind` (a running AND)."""

    def __init__(self, model):
        self.model = model
        self.count = 0
        self.sums = {}
        self.kind = None

    def update(self, batch, scores):
        for key, values in scores.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(np.sum(values))
        self.count += len(batch.x)
        kinds = [self.model.likelihood.score_kind(batch.x)]
        self.kind = self.model.likelihood.combine_score_kinds(
            kinds if self.kind is None else [self.kind, *kinds])

    def means(self):
        return {key: total / self.count for key, total in self.sums.items()}


def evaluate_model(model, x, num_samples=100, seed=0, batch_size=256, y=None, verbose=0,
                   surgery_examples=2000):
    """Per-example means of the ELBO terms and of the log-likelihood estimate.

    One pass over the data: per batch, the scores of `iter_scores` (same
    seeds) summed in float64, the codes' running variance (`active_units`),
    the KL per dimension, and the first `surgery_examples` examples kept for
    the ELBO surgery. Memory does not grow with the number of examples
    (beyond those kept for surgery).

    Args:
      model: a `tfvae.VAE`.
      x: held-out data: an array `[n] + event_shape`, or a `tf.data.Dataset`
        of x or `(x, y)` (`batches`).
      num_samples: importance samples K for `log p(x)`. Default value: `100`.
      seed: noise seed. Default value: `0`.
      batch_size: examples per batch. Default value: `256`.
      y: the conditions of an array `x`, for a conditional model (then
        `log_px` is `log p(x|y)`). Default value: `None`.
      verbose: 1 shows a progress bar over the examples (for long evaluations,
        e.g. K = 5,000 on 10,000 digits). Default value: `0`.
      surgery_examples: the ELBO surgery terms (`elbo_surgery`) use the first
        this many examples (cost: their number squared); `0` skips them.
        Default value: `2000`.

    Returns:
      A dict of floats (nats per example): `elbo`, `reconstruction`, `kl`
      (and `kl_z1`, `kl_z2` for a hierarchy), `log_px`, `elbo_gap`,
      `active_units`, `num_examples`, `num_samples`; the means of
      `score_examples` (same seeds). `likelihood_score` says what `log_px`
      is (`LikelihoodHead.score_kind` of all the data: `"mass"`, `"density"`
      or `"cross_entropy"`), and `bits_per_dim` (from `log_px`) is given only
      for a mass, i.e. discrete data. `active_units` counts the units whose
      E_q[z] varies over the data (`active_units`, Monte Carlo for flows and
      the hierarchy). With `surgery_examples` (at least 3), also
      `elbo_surgery`'s keys where the posterior allows it: the mean KL's
      split `mutual_information` + `marginal_kl` (+ `total_correlation` +
      `dimension_wise_kl`) for those examples' own aggregate posterior, with
      `*_mc_stderr` and `*_example_sd`, `surgery_target`, `mi_upper_bound`,
      `mi_fraction_of_bound`, `mi_saturated`, and the population's
      `*_heldout` with `*_heldout_stderr`; where the posterior declares that the
      surgery does not apply (`surgery.surgery_refusal`: a point mass), instead
      `surgery_skipped`, the reason.
    """
    num_samples = _checks.positive_int("num_samples", num_samples)
    surgery_examples = _checks.non_negative_int("surgery_examples", surgery_examples)
    scores, moments = _ScoreSums(model), PosteriorMeanMoments(model, seed=seed)
    kl_total = np.zeros(model.latent_dim) if _has_kl_per_dimension(model) else None
    first = _FirstExamples(surgery_examples)
    for i, batch in enumerate(batches(model, x, y, batch_size, verbose)):
        scores.update(batch, _score_batch(model, batch, seed + i, num_samples,
                                          squared_error=False))
        moments.update(batch)
        if kl_total is not None:
            kl_total += _kl_sums(model, batch)
        first.update(batch)
    if scores.count == 0:
        _fail("x", "at least one example", "x with 0 examples")
    result = scores.means()
    result["elbo_gap"] = result["log_px"] - result["elbo"]
    result["likelihood_score"] = scores.kind
    if result["likelihood_score"] == "mass":  # bits only mean something for discrete data
        result["bits_per_dim"] = -result["log_px"] / (np.prod(model.event_shape) * np.log(2.0))
    result["active_units"] = int(np.sum(moments.variance > ACTIVE_UNIT_THRESHOLD))
    if kl_total is not None:  # else not defined for this posterior / prior pair
        result["kl_per_dimension"] = [float(v) for v in kl_total / scores.count]
    refusal = surgery.surgery_refusal(model) if first.count >= 3 else None
    if refusal:
        result["surgery_skipped"] = refusal
    elif first.count >= 3:
        x_first, y_first = first.arrays()
        try:
            result.update(elbo_surgery(model, x_first, y=y_first, seed=seed))
        except ValueError as error:  # e.g. a posterior that cannot score others' codes
            result["surgery_skipped"] = str(error)
    result["num_examples"] = scores.count
    result["num_samples"] = num_samples
    return result


def gap_decomposition(model, x, y=None, num_examples=500, seed=0, **kwargs):
    """The ELBO gap split into approximation and amortization parts (`tfvae.gap`), as means.

    Optimises q per example for the first `num_examples` of `x` (the
    optimisation costs hundreds of ELBO evaluations per example); a dataset
    is read only that far (`first_examples`).

    Each mean comes with two errors, named apart: `*_mc_stderr`, the Monte
    Carlo error of the estimate for these very examples (`sqrt(Σ se_i²) / n`
    from the per-example errors of `tfvae.gap.decompose_gap`: how far the
    number is from what exact integrals would give on the same examples), and
    `*_examples_stderr`, the spread between examples (`sd / √n`: how much the
    mean would move on another draw of examples). When some examples did not
    converge, `gap_unconverged` counts them (`gap_note` says which way the
    means are then off).

    Args:
      model: a `tfvae.VAE`.
      x: held-out data: an array, or a `tf.data.Dataset` (`batches`); y: the
        conditions of an array `x`, for a conditional model.
      num_examples: how many examples (from the start of `x`). Default value: `500`.
      seed: noise seed. Default value: `0`.
      **kwargs: passed to `tfvae.gap.decompose_gap` (`steps`, `eval_samples`, ...).

    Returns:
      A dict: floats `approximation_gap`, `amortization_gap`, `gap_log_px`,
      `gap_elbo`, `elbo_optimized` (means over the examples, nats), each with
      `*_mc_stderr` and `*_examples_stderr`; `gap_log_px_ess_min` and
      `gap_log_px_ess_median` (effective sample sizes of the examples' log
      p(x)) and `gap_log_px_low_ess` (examples below `LOW_ESS`, whose log p(x)
      error bars are themselves unreliable),
      `gap_last_improvement`, and ints `gap_examples`, `gap_steps` (steps
      taken) and `gap_unconverged` (examples whose q* did not converge).
    """
    x, y = first_examples(model, x, y, num_examples)
    n = len(x)
    parts = gap.decompose_gap(model, x, y=y, seed=seed, **kwargs)
    converged = np.asarray(parts.get("converged", np.ones(n, bool)), bool)
    result = {"gap_examples": n, "gap_last_improvement": parts["last_improvement"],
              "gap_steps": int(parts.get("steps", 0)),
              "gap_unconverged": int((~converged).sum())}
    for key, name in (("approximation_gap", "approximation_gap"),
                      ("amortization_gap", "amortization_gap"), ("log_px", "gap_log_px"),
                      ("elbo", "gap_elbo"), ("elbo_optimized", "elbo_optimized")):
        values = np.asarray(parts[key], np.float64)
        result[name] = float(values.mean())
        spread = float(values.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0
        result[name + "_examples_stderr"] = spread
        if key + "_stderr" in parts:
            stderr = np.asarray(parts[key + "_stderr"], np.float64)
            result[name + "_mc_stderr"] = float(np.sqrt(np.sum(stderr**2)) / n)
    if "log_px_ess" in parts:
        ess = np.asarray(parts["log_px_ess"], np.float64)
        result["gap_log_px_ess_min"] = float(np.min(ess))
        result["gap_log_px_ess_median"] = float(np.median(ess))
        result["gap_log_px_low_ess"] = int(np.sum(ess < LOW_ESS))
    return result


# Below this many effective importance samples an example's log p(x) standard error
# is itself unreliable (the largest weights dominate and may not have been drawn yet).
LOW_ESS = 10


def gap_note(metrics):
    """The one line that says a gap split in `metrics` is not converged and what to
    raise, or `None` when it converged (or there is none)."""
    if not metrics.get("gap_unconverged"):
        return None
    return (f"{metrics['gap_unconverged']} of {metrics['gap_examples']} examples did not "
            f"converge in {metrics['gap_steps']} steps: amortization_gap is a lower bound, "
            "approximation_gap and gap_log_px unreliable (raise --gap-steps)")


def disentanglement_metrics(model, x, factors, names, y=None, num_bins=20, batch_size=256):
    """The Mutual Information Gap of the model's posterior means for known factors.

    Args:
      model: a `tfvae.VAE`.
      x: data `[n] + event_shape`, row for row with `factors`, or a
        `tf.data.Dataset` (`batches`) whose first `n` examples are those rows
        (it is read only that far); y: the conditions of an array `x`, for a
        conditional model.
      factors: integer factors `[n, K]` (e.g. `tfvae.data.load_factors`).
      names: the K factor names.
      num_bins: bins per code dimension (`disentanglement.mig`). Default value: `20`.
      batch_size: examples per encoder batch. Default value: `256`.

    Returns:
      A dict: the floats `mig` and, per factor, `mig_<name>` (its gap), and
      `disentanglement_examples`, the number of examples encoded.
    """
    limit = len(factors) if isinstance(x, tf.data.Dataset) else None
    codes, count = [], 0
    for part in iter_encodings(model, x, y=y, batch_size=batch_size):
        codes.append(part["mean"])
        count += len(part["mean"])
        if limit is not None and count >= limit:
            break
    codes = np.concatenate(codes)[:limit] if codes else np.zeros((0, model.latent_dim))
    result = disentanglement.mig(codes, factors, num_bins=num_bins)
    return {"mig": float(result.score),
            **{f"mig_{name}": float(gap_) for name, gap_ in zip(names, result.gaps)},
            "disentanglement_examples": len(codes)}
