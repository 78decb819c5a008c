"""Export a trained `tfvae.VAE` for serving: SavedModel (TF Serving) and ONNX (onnxruntime).

Exported graphs never sample: TFP's and TensorFlow's random ops have no ONNX
equivalent and would make served outputs irreproducible, so every stochastic
graph takes the reparameterisation noise `eps ~ N(0, I)` as an input.

Graphs (inputs → named outputs; `B` is a dynamic batch size, `d` the model's
`latent_dim`, `d₁` the width of z₁ for a hierarchy, else `d`):

* `encode`: `x [B, *event]` → `mean [B, d₁]`, `scale` (`[B, d₁]` standard
  deviations, or `[B, d, d]` Cholesky factor for a full-covariance posterior);
  a flow posterior adds its `context [B, c]` (mean and scale are then its base
  Gaussian's); a hierarchy gives z₁'s mean and scale (z₂'s depend on z₁).
* `decode`: `z [B, d]` → `mean [B, *event]` and the likelihood's parameters
  (`logits`, or `loc` and `scale`).
* `reconstruct`: `x`, `eps [B, d]` → `reconstruction`, the likelihood's mean at
  `z = g(eps; q(z|x))`, the posterior's reparameterisation (`mean + scale · eps`
  for a Gaussian); eps = 0 gives `serving_default`'s reconstruction.
* `sample`: `eps [B, d]` → `samples`, the likelihood's mean at `z = g(eps; p(z))`
  (priors that can be sampled from standard normal noise alone: the standard
  normal and the hierarchical prior; not a mixture of Gaussians or a VampPrior).
* `elbo`: `x`, `eps [B, d]` → per-example `elbo`, `reconstruction`, `kl`
  (one posterior sample; SavedModel only: TFP's log-density ops do not convert to ONNX).
* `score` (models of table rows: a likelihood with per-column terms, such as
  `TabularLikelihood`): raw feature rows `x [B, d]`, `eps [B, latent_dim]` →
  `score [B]`, the one-sample −ELBO `−log p(x|z) + KL(q(z|x) ‖ p(z))` at
  `z = g(eps; q(z|x))` with the model's KL (the `elbo` graph's `−elbo`, one
  draw of what `VAEDetector(score="elbo")` averages; eps = 0 makes it
  deterministic); `feature_scores [B, d]`, each column's `−log p_j(x_j|z)` (one
  draw of `VAEDetector.feature_scores`; they sum to `score − KL`); and, when the
  export is given a `threshold` (baked in as a constant), `flag [B]`: 1.0 where
  `score > threshold`, else 0.0. ONNX needs the KL in closed form (a diagonal
  Gaussian posterior with a standard normal prior); the SavedModel takes any.
* `serving_default`: `x` → `reconstruction`, the likelihood's mean at the
  noise-free code z = g(0; q(z|x)) (the model's `call`): the posterior mean for
  a Gaussian posterior, but the flow's image of its base mean for IAF / planar
  posteriors and `[μ₁(x), μ₂(μ₁(x))]` for a hierarchy — not E_q[z] there.

A conditional model's graphs also take `y [B, condition_dim]` after their
other inputs (one-hot labels by default; see `y_format`).

Bad inputs (the same contract in both formats): an output row is NaN exactly
when its input row is one the Keras model would refuse — `x` with a
non-finite value or a value outside the likelihood's data range (`data_range`:
[0, 1] for the Bernoulli heads, integer levels 0..K−1 for the pixel heads, any
finite value for the Gaussian), a non-finite `eps` / `z` / `y`, or a `y` row
that is not one-hot. The mask is applied to every output of every graph, after
the network, so TensorFlow's and ONNX Runtime's different NaN semantics inside
(relu, matmul) cannot make the formats disagree; valid rows are unaffected.
The guard works on row reductions (a row's min, max and one sum; `_x_rows`),
not per-element masks, and multiplies each output row by 1 or NaN: at
B = 1,000 it costs a few per cent of a graph's time (`benchmarks/bench_export.py`).
A likelihood whose rule is more than its data range (a table's codes per column:
`support_is_range` false) is asked for its own `support_mask` instead.
Inputs that must have as many rows as the first (`eps`, `y`) are reshaped to
its rows, so a mismatch is an error in both formats, never a broadcast; every
ONNX input and output names its first dimension `batch`. An empty batch (B = 0)
gives empty outputs (conv networks compute it on one padding row).

ONNX graphs are written for ONNX Runtime's CPU kernels (`tfvae.onnx_dense`):
convolutions with few output channels on small feature maps become one matrix
product over the batch, transposed convolutions one convolution per output phase
(fed straight into a following matrix product), and the graphs keep their weights in one shared file, each tensor once
(`tfvae.onnx_weights`).

Both writers are all-or-nothing: they write into a hidden temporary directory
beside the destination (flushed and fsynced) and rename it into place, so TF
Serving never sees a half-written version and a failed export leaves nothing;
the folders of exports killed before the rename are removed by the next export
into the same place (`remove_stale_staging`).
"""

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import secrets
import shutil
import socket

import numpy as np
import tensorflow as tf

from tfvae import files
from tfvae import objectives
from tfvae import onnx_dense

__all__ = [
    "BATCH_DIMENSION",
    "CALIBRATION_EXAMPLES",
    "check_model_name",
    "check_opset",
    "check_threshold",
    "data_range",
    "default_parts",
    "export_onnx",
    "export_saved_model",
    "format_refusal",
    "GRAPH_INPUTS",
    "INT8_WEIGHTS_FILE",
    "next_version",
    "ONNX_GRAPHS",
    "ONNX_METADATA",
    "ONNX_OPSET",
    "part_refusal",
    "quantization_refusal",
    "QUANTIZE_MODES",
    "remove_stale_staging",
    "SAVED_MODEL_METADATA",
    "SAVED_MODEL_SIGNATURES",
    "skipped_parts",
    "supported_opsets",
    "WEIGHTS_FILE",
    "Y_FORMATS",
]

logger = logging.getLogger(__name__)

ONNX_OPSET = 17
# tfvae's graphs need `IsInf` (the bad-input mask), which ONNX has from opset 10.
_GRAPHS_MIN_OPSET = 10
SAVED_MODEL_SIGNATURES = ("serving_default", "encode", "decode", "reconstruct", "sample", "elbo",
                          "score")
ONNX_GRAPHS = ("encode", "decode", "reconstruct", "sample", "score")
# The name of every ONNX input's and output's first (batch) dimension.
BATCH_DIMENSION = "batch"
# "int8": dynamic (int8 weights, activations quantized at run time); "int8-static":
# activations too, with ranges calibrated on example data beforehand.
QUANTIZE_MODES = ("int8", "int8-static")
# How many calibration examples static quantization runs through each graph (at most).
CALIBRATION_EXAMPLES = 512
# The inputs of each graph, before a conditional model's `y`.
GRAPH_INPUTS = {
    "serving_default": ("x",),
    "encode": ("x",),
    "decode": ("z",),
    "reconstruct": ("x", "eps"),
    "sample": ("eps",),
    "elbo": ("x", "eps"),
    "score": ("x", "eps"),
}
Y_FORMATS = ("one_hot", "vectors")
# Where `export_saved_model` writes its metadata, inside the version directory
# (TF Serving ignores `assets.extra/`; it is part of the SavedModel layout).
SAVED_MODEL_METADATA = os.path.join("assets.extra", "tfvae.json")
ONNX_METADATA = "metadata.json"
# The ONNX graphs keep their weights here, each distinct tensor once (`tfvae.onnx_weights`);
# the int8 graphs keep theirs in the second file.
WEIGHTS_FILE = "weights.bin"
INT8_WEIGHTS_FILE = "weights.int8.bin"
_MODEL_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
_ONNX_ELBO_REASON = (
    "TFP's log-density shape ops have no ONNX converter; the SavedModel export has `elbo`")
_ONNX_SCORE_REASON = (
    "the KL of {posterior} to {prior} has no closed form here, and its Monte Carlo estimate "
    "needs TFP's log densities, which have no ONNX converter; the SavedModel export has `score`")


# ---------------------------------------------------------------------------
# Argument checks.


def check_model_name(model_name):
    """Returns `model_name` if it is a plain directory name for TF Serving's layout.

    Raises:
      ValueError: unless `model_name` is a non-empty string of `[A-Za-z0-9._-]`
        that does not start with `.` (so no path separators, `.` or `..`).
    """
    if not isinstance(model_name, str) or not _MODEL_NAME.fullmatch(model_name) or len(
            model_name) > 255:
        raise ValueError(
            "Received an invalid value for `model_name`, expected a plain name of letters, "
            "digits, '.', '_' and '-' (not starting with '.', no path separators, at most "
            f"255 characters). Received: model_name={model_name!r}"
        )
    return model_name


def supported_opsets():
    """`(lowest, highest)` ONNX opset tfvae can export with the installed packages.

    The highest is the newest opset both tf2onnx (its opset → IR version table)
    and onnx (`onnx.defs.onnx_opset_version()`) know; the lowest is the oldest
    in tf2onnx's table, raised to the oldest opset that has every op tfvae's
    graphs use (`IsInf`, opset 10).
    """
    import onnx
    from tf2onnx import constants

    known = constants.OPSET_TO_IR_VERSION
    return (max(min(known), _GRAPHS_MIN_OPSET), min(max(known), onnx.defs.onnx_opset_version()))


def check_opset(opset):
    """Returns `opset` (`None` → `ONNX_OPSET`) if it is an int in `supported_opsets()`."""
    if opset is None:
        return ONNX_OPSET
    low, high = supported_opsets()
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)) or not (
            low <= opset <= high):
        raise ValueError(
            f"Received an invalid value for `opset`, expected an integer ONNX opset in "
            f"[{low}, {high}] (what the installed tf2onnx and onnx support). "
            f"Received: opset={opset!r}"
        )
    return int(opset)


def _check_y_format(y_format):
    if y_format not in Y_FORMATS:
        raise ValueError(
            f"Received an invalid value for `y_format`, expected one of {list(Y_FORMATS)}. "
            f"Received: y_format={y_format!r}"
        )
    return y_format


def data_range(likelihood):
    """`(low, high, integers)`: the x values the likelihood scores (its `data_range`
    and `integer_data`; `validate_data` refuses the others, `support_mask` marks them)."""
    low, high = likelihood.data_range
    return float(low), float(high), bool(likelihood.integer_data)


# ---------------------------------------------------------------------------
# The graphs.


def _specs(model):
    batch = (None,)
    specs = {
        "x": tf.TensorSpec(batch + model.event_shape, tf.float32, name="x"),
        "z": model.posterior.decode_input_spec(),  # z, or what the posterior decodes from
        "eps": tf.TensorSpec(batch + (model.latent_dim,), tf.float32, name="eps"),
    }
    if model.conditioning.active:
        specs["y"] = model.conditioning.spec()
    return specs


# The input guard works on row reductions, not per-element masks: a handful of
# passes over x that only read it (min, max, one sum), where a mask writes a
# boolean tensor per comparison. See `_input_checks` for why each is exact.


def _flat(value):
    """`[B, ...]` → `[B, n]` (`n` static, so an empty batch reshapes too)."""
    size = int(np.prod(value.shape[1:]))
    if value.shape.rank == 2:
        return value, size
    return tf.reshape(value, [-1, size]), size


def _finite_sum_rows(rows, size, bound=math.inf):
    """`[B, n]` → `[B]`: whether the row sum is finite, scaled so that a row of finite
    values whose magnitude is at most `bound` cannot overflow (a power of two: exact)."""
    if size * bound < 1e30:  # bounded data: the plain sum cannot overflow
        return tf.math.is_finite(tf.reduce_sum(rows, axis=1))
    scale = 2.0 ** -math.ceil(math.log2(2 * max(size, 1)))
    return tf.math.is_finite(tf.reduce_sum(rows * scale, axis=1))


def _x_rows(likelihood):
    """The likelihood's `support_mask` rule as row reductions: `x [B, *event]` → `[B]`.

    A row is accepted iff its minimum is ≥ `low` (> at an open end of the
    likelihood's `support`), its maximum ≤ `high` (< at an open end) and
    (levels) Σ (x − ⌊x⌋) = 0, else (continuous data) its sum is finite. Exactly
    `support_mask`'s answer: ±inf fails a bound or the sum, a NaN (whatever
    min/max do with it) makes the sum NaN; x − ⌊x⌋ ∈ [0, 1) for finite x, and a
    sum of non-negative floats is 0 only if every term is; the sum of a row in
    [low, high] cannot overflow, and an unbounded row's sum is scaled by 2⁻ᵏ
    (`_finite_sum_rows`).
    """
    low, high, integers = data_range(likelihood)
    low_closed, high_closed = likelihood.support.closed

    def rows_ok(x):
        rows, size = _flat(x)
        checks = []
        if math.isfinite(low):
            smallest = tf.reduce_min(rows, axis=1)
            checks.append(smallest >= low if low_closed else smallest > low)
        if math.isfinite(high):
            largest = tf.reduce_max(rows, axis=1)
            checks.append(largest <= high if high_closed else largest < high)
        if integers:
            checks.append(tf.equal(tf.reduce_sum(rows - tf.floor(rows), axis=1), 0.0))
        else:
            bound = max(abs(low), abs(high))
            checks.append(_finite_sum_rows(rows, size, bound))
        valid = checks[0]
        for check in checks[1:]:
            valid = tf.logical_and(valid, check)
        return valid

    return rows_ok


def _input_checks(model, y_format):
    """`{input name: tensor → [B] bool}`: which rows of each input the model accepts
    (the model's rules — `support_mask`, finite noise and codes, one-hot or finite `y`
    — computed on row reductions)."""

    def finite_rows(v):
        return _finite_sum_rows(*_flat(v))

    def y_rows(y):
        if y_format == "vectors":
            return finite_rows(y)
        # One-hot: integers (Σ (y − ⌊y⌋) = 0, NaN fails it), ≥ 0, summing to 1.
        integers = tf.equal(tf.reduce_sum(y - tf.floor(y), axis=1), 0.0)
        return integers & (tf.reduce_min(y, axis=1) >= 0.0) & tf.equal(
            tf.reduce_sum(y, axis=1), 1.0)

    def decode_rows(value):
        rows = model.posterior.decode_input_rows(value)
        return finite_rows(value) if rows is None else rows

    likelihood = model.likelihood
    # Rules per column (a table's codes): the likelihood's own mask, not row reductions.
    x_rows = _x_rows(likelihood) if likelihood.support_is_range else likelihood.support_mask
    return {"x": x_rows, "z": decode_rows, "eps": finite_rows, "y": y_rows}


def _nan_rows(valid, outputs):
    """`outputs` with NaN rows where `valid` `[B]` is false: each output times a per-row
    factor, 1 or NaN (`model.where_valid`'s answer, exactly: x · 1 = x, x · NaN = NaN;
    ONNX Runtime's broadcasting `Where` took longer than the whole guard)."""
    factor = tf.where(valid, 1.0, float("nan"))

    def mask(value):
        return value * tf.reshape(tf.cast(factor, value.dtype), [-1] + [1] * (value.shape.rank - 1))

    return {key: mask(value) for key, value in outputs.items()}


def _same_rows(value, reference, name):
    """`value` `[B', k]`, checked to have `reference`'s B rows: an error in both formats
    unless B' = B (TensorFlow and ONNX Runtime would otherwise broadcast a 1-row input).

    Two checks, as each converter removes one: joined with a `[B, 0]` tensor
    along its columns (Grappler removes a reshape to B rows, tf2onnx the empty
    join), then reshaped to `[B, k]`."""
    rows = tf.shape(reference)[0]
    empty = tf.zeros(tf.stack([rows, 0]), value.dtype)
    joined = tf.concat([value, empty], axis=1, name=f"{name}_rows_must_match")
    # tf2onnx drops the empty join; ONNX Runtime keeps this reshape (and TF this join).
    return tf.reshape(joined, tf.stack([rows, value.shape[1]]), name=f"{name}_rows_must_match_")


def _empty_batch_padding(fn, input_signature):
    """`fn`, computing an empty batch on one zero row whose outputs are dropped.

    oneDNN's convolutions cannot take an empty batch: it gets one padding row
    (`tf.pad` by `1 - min(B, 1)` rows, none for B ≥ 1) and the outputs are cut
    to B rows.
    """

    def padded(*inputs):
        rows = tf.shape(inputs[0])[0]
        pad = 1 - tf.minimum(rows, 1)
        padded_inputs = []
        for value, spec in zip(inputs, input_signature):
            widths = tf.concat([[[0, pad]], tf.zeros([spec.shape.rank - 1, 2], tf.int32)], 0)
            padded_inputs.append(tf.ensure_shape(tf.pad(value, widths), spec.shape))
        return {key: value[:rows] for key, value in fn(*padded_inputs).items()}

    return padded


def _networks_take_empty_batches(model):
    """Whether the encoder and decoder map 0 rows to 0 rows of the right shape (Keras'
    convolutions on oneDNN do not)."""
    c = model.condition_dim

    def run(batch):
        y = None if c is None else tf.zeros([batch, c])
        return (model.encoder_output(tf.zeros((batch,) + model.event_shape), y),
                model.decoder_parameters(tf.zeros([batch, model.latent_dim]), y))

    try:
        empty, one = run(0), run(1)  # eagerly: it fails as the graphs do, without a trace
    except (tf.errors.OpError, ValueError):
        return False
    return all(e.shape[0] == 0 and e.shape[1:] == o.shape[1:]
               for e, o in zip(tf.nest.flatten(empty), tf.nest.flatten(one)))


def check_threshold(threshold):
    """Returns `threshold` as a float (`None` stays `None`: no `flag` output) if it is a
    finite number."""
    if threshold is None:
        return None
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.integer,
                                                                 np.floating)) or not (
            math.isfinite(threshold)):
        raise ValueError("Received an invalid value for `threshold`, expected None or a "
                         f"finite number (the score above which `flag` is 1). Received: "
                         f"threshold={threshold!r}")
    return float(threshold)


def graph_functions(model, y_format="one_hot", guard=True, threshold=None):
    """The export graphs the model's parts allow (`part_refusal`), as
    `{name: (python_function, input_signature)}`.

    Functions return dicts of named float32 tensors; see the module docstring.
    A conditional model's graphs all take one more input, `y [B, condition_dim]`,
    after their others. Inputs that must have as many rows as the first one
    (`eps`, `y`) are reshaped to its rows: a mismatch is an error, never a
    broadcast.

    Args:
      model: a `tfvae.VAE`.
      y_format: what a valid `y` row is: `"one_hot"` (one-hot labels, what the
        `tfvae` command trains on) or `"vectors"` (any finite condition vector).
        Default value: `"one_hot"`.
      guard: whether rows of refused inputs are NaN ("invalid in, NaN out").
        `False` leaves the guard out: only for measuring what it costs
        (`benchmarks/bench_export.py`), never for serving. Default value: `True`.
      threshold: the `score` graph's threshold, a constant of the graph: its
        `flag` output is `score > threshold`; `None` leaves `flag` out.
        Default value: `None`.
    """
    _check_y_format(y_format)
    threshold = check_threshold(threshold)
    specs = _specs(model)
    likelihood, posterior = model.likelihood, model.posterior
    conditional = model.condition_dim is not None
    checks = _input_checks(model, y_format)

    def guarded(outputs, **inputs):
        """NaN in every output row whose input row is refused (see the module docstring)."""
        if not guard:
            return outputs
        valid = None
        for name, value in inputs.items():
            if value is not None:
                rows = checks[name](value)
                valid = rows if valid is None else tf.logical_and(valid, rows)
        return _nan_rows(valid, outputs)

    def matched(value, reference, name):
        return None if value is None else _same_rows(value, reference, name)

    def encode(x, y=None):
        y = matched(y, x, "y")
        return guarded(model.posterior_outputs(x, y), x=x, y=y)

    def decode(z, y=None):
        y = matched(y, z, "y")
        parameters = model.decoder_parameters(posterior.latent_from_decode_input(z), y)
        return guarded({"mean": likelihood.mean_of(parameters), **parameters}, z=z, y=y)

    def reconstruct(x, eps, y=None):
        eps, y = _same_rows(eps, x, "eps"), matched(y, x, "y")
        z = posterior.reparameterize(model.posterior_parameters(x, y), eps)
        return guarded({"reconstruction": model.decode_mean(z, y)}, x=x, eps=eps, y=y)

    def sample(eps, y=None):
        y = matched(y, eps, "y")
        samples = model.decode_mean(model.prior.reparameterize(eps), y)
        return guarded({"samples": samples}, eps=eps, y=y)

    def elbo(x, eps, y=None):
        eps, y = _same_rows(eps, x, "eps"), matched(y, x, "y")
        terms = model.elbo_terms(x, y, noise=eps[None])
        return guarded({key: value for key, value in terms.items() if key != "loss"},
                       x=x, eps=eps, y=y)

    def score(x, eps, y=None):
        eps, y = _same_rows(eps, x, "eps"), matched(y, x, "y")
        parameters = model.posterior_parameters(x, y)
        z = posterior.reparameterize(parameters, eps)
        columns = -likelihood.column_log_probs(model.decoder_parameters(z, y), x)
        kl = model.analytic_kl(parameters)
        if kl is None:  # as the ELBO's terms (`objective_parts.elbo_terms`): Monte Carlo at z
            kl = objectives.kl_divergence(posterior.distribution(parameters),
                                          model.prior.distribution(), z=z[None],
                                          kl=model.kl_method)
        value = tf.reduce_sum(columns, axis=1) + kl
        outputs = {"score": value, "feature_scores": columns}
        if threshold is not None:
            outputs["flag"] = tf.cast(value > threshold, tf.float32)
        return guarded(outputs, x=x, eps=eps, y=y)

    def serving_default(x, y=None):
        # The model's `call` (z = g(0; q(z|x))) through the seams, so that the rows are
        # guarded once, here, rather than by `call`'s per-element mask and again here.
        y = matched(y, x, "y")
        eps = tf.zeros(tf.stack([tf.shape(x)[0], model.latent_dim]))
        z = posterior.reparameterize(model.posterior_parameters(x, y), eps)
        return guarded({"reconstruction": model.decode_mean(z, y)}, x=x, y=y)

    functions = {"serving_default": serving_default, "encode": encode, "decode": decode,
                 "reconstruct": reconstruct, "sample": sample, "elbo": elbo, "score": score}
    extra = ("y",) if conditional else ()
    pad = not _networks_take_empty_batches(model)
    graphs = {}
    for name, fn in functions.items():
        if part_refusal(model, name):  # (`score`: only likelihoods with per-column terms)
            continue
        input_signature = [specs[key] for key in GRAPH_INPUTS[name] + extra]
        graphs[name] = (_empty_batch_padding(fn, input_signature) if pad else fn,
                        input_signature)
    return graphs


def part_refusal(model, graph):
    """Why the graph `graph` cannot be exported for `model`, as its parts declare it
    (`export_refusal` of the posterior, prior and likelihood), or None."""
    for part in (model.posterior, model.prior, model.likelihood):
        refusal = part.export_refusal(graph)
        if refusal:
            return refusal
    return None


def _closed_form_kl(model):
    """Whether the model's KL term is written out in closed form (`VAE.analytic_kl`), tried
    on one zero row."""
    x = tf.zeros((1,) + model.event_shape)
    y = None if model.condition_dim is None else tf.zeros([1, model.condition_dim])
    return model.analytic_kl(model.posterior_parameters(x, y)) is not None


def format_refusal(model, graph, kind):
    """Why `graph` cannot be exported in the `kind` ("SavedModel"/"ONNX") format although the
    parts allow it, or None: ONNX has no `elbo`, and its `score` needs the KL in closed form."""
    if kind == "ONNX" and graph == "elbo":
        return _ONNX_ELBO_REASON
    if kind == "ONNX" and graph == "score" and not _closed_form_kl(model):
        return _ONNX_SCORE_REASON.format(posterior=type(model.posterior).__name__,
                                         prior=type(model.prior).__name__)
    return None


def _check_parts(model, requested, available, kind):
    unknown = [name for name in requested if name not in available]
    if unknown:
        raise ValueError(
            f"Received an invalid value for `signatures`: {kind} export has no "
            f"{unknown}. Available: {list(available)}"
        )
    for name in requested:
        refusal = _graph_refusal(model, name, kind)
        if refusal:
            raise ValueError(f"Cannot export `{name}`: {refusal}. Leave `{name}` out of the "
                             "exported signatures.")


def default_parts(model, available, kind="SavedModel"):
    """All graphs in `available` that `model` supports in the `kind` format."""
    return tuple(name for name in available if _graph_refusal(model, name, kind) is None)


def _graph_refusal(model, graph, kind):
    """Why `graph` cannot be exported for `model` in the `kind` format (its parts' reason,
    else the format's), or None."""
    return part_refusal(model, graph) or format_refusal(model, graph, kind)


def skipped_parts(model, exported, kind):
    """`{graph: reason}` for every graph of the `kind` ("SavedModel"/"ONNX") export not in
    `exported`."""
    every = SAVED_MODEL_SIGNATURES if kind == "SavedModel" else ONNX_GRAPHS + ("elbo",)
    skipped = {}
    for name in every:
        if name in exported:
            continue
        skipped[name] = _graph_refusal(model, name, kind) or "not requested"
    return skipped


def _weight_bytes(model):
    """The bytes of the model's weights (each counted once)."""
    return int(sum(np.prod(v.shape) * np.dtype(v.dtype).itemsize for v in model.weights))


def _tree_bytes(root):
    """The bytes of the files under `root`."""
    return sum(os.path.getsize(os.path.join(directory, name))
               for directory, _, files in os.walk(root) for name in files)


def _metadata(model, functions, exported, kind, y_format, guard=True, threshold=None):
    """What serving tools need to know about the export, as JSON-able data (with `score`:
    its columns, in `feature_scores`' order, and its threshold, or None: no `flag`)."""
    low, high, integers = data_range(model.likelihood)
    inputs = {
        name: {spec.name: [-1 if size is None else size for size in spec.shape.as_list()]
               for spec in functions[name][1]}
        for name in exported
    }
    return {
        "format": kind,
        "event_shape": list(model.event_shape),
        "latent_dim": model.latent_dim,
        "condition_dim": model.condition_dim,
        "y_format": y_format if model.condition_dim is not None else None,
        "likelihood": type(model.likelihood).__name__,
        "num_levels": getattr(model.likelihood, "num_levels", None),
        "prior": type(model.prior).__name__,
        "data_range": {"low": low if math.isfinite(low) else None,
                       "high": high if math.isfinite(high) else None, "integers": integers},
        "inputs": inputs,
        "skipped": skipped_parts(model, exported, kind),
        "input_guard": bool(guard),
        "weight_bytes": _weight_bytes(model),
        **({"score": {"columns": list(model.likelihood.column_names),
                      "threshold": check_threshold(threshold),
                      "outputs": ["score", "feature_scores"] + (
                          [] if threshold is None else ["flag"])}}
           if "score" in exported else {}),
    }


def _log_skipped(skipped, available, kind, where, model):
    """Warns about each graph of `available` the model could not export (not the ones a
    caller left out, nor ONNX's `elbo`, which no model has, nor `score` for a model of
    other data than table rows: recorded in the metadata, but no loss)."""
    for name, reason in skipped.items():
        if name == "score" and not model.likelihood.column_terms:
            continue
        if name in available and reason != "not requested":
            logger.warning("%s export to %s has no `%s`: %s", kind, where, name, reason)


# ---------------------------------------------------------------------------
# Writing files all-or-nothing.


def _write_file(path, data):
    """Writes bytes to a new file, flushed and fsynced."""
    with open(path, "wb") as f:
        f.write(data)
        files.fsync_file(f)


def _fsync_tree(root):
    """fsyncs every file and directory under `root` (and `root` itself)."""
    for directory, _, names in os.walk(root):
        for name in names:
            files.fsync_path(os.path.join(directory, name))
        files.fsync_directory(directory, best_effort=False)


# `.NAME.tmp-PID-HOST-XXXXXXXX` (HOST: 8 hex digits of the host name's hash; 0.2.0's
# names have no HOST).
_STAGING = re.compile(r"^\..+\.tmp-(\d+)-(?:([0-9a-f]{8})-)?[0-9a-f]{8}$")
# This process's staging folders being written (a folder with this process's PID that
# is not here is a leftover of an earlier process that had the same PID: containers).
_WRITING = set()


def _host_tag():
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def _stale(path, pid, host):
    if host is not None and host != _host_tag():
        return False  # another machine's export on a shared file system: not ours to judge
    if pid == os.getpid():
        return os.path.abspath(path) not in _WRITING
    return not files.process_alive(pid)


def remove_stale_staging(parent):
    """Removes the hidden staging folders that exports killed before their rename
    (`kill -9`, a power cut) left in `parent`: those of this host whose process is
    gone. Returns their names."""
    removed = []
    try:
        names = sorted(os.listdir(parent))
    except OSError:
        return removed
    for name in names:
        match = _STAGING.match(name)
        path = os.path.join(parent, name)
        if (match and os.path.isdir(path) and not os.path.islink(path)
                and _stale(path, int(match.group(1)), match.group(2))):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(name)
    if removed:
        logger.warning("removed %d unfinished export folder(s) of stopped processes in %s: %s",
                       len(removed), parent, ", ".join(removed))
    return removed


@contextlib.contextmanager
def _staging_directory(destination):
    """A hidden, new directory beside `destination`; removed unless renamed into place.
    Leftovers of killed exports beside it are removed first (`remove_stale_staging`)."""
    parent = os.path.dirname(os.path.abspath(destination))
    remove_stale_staging(parent)
    # os.mkdir (unlike tempfile.mkdtemp's 0700) gives the permissions the umask allows.
    staging = os.path.join(parent, f".{os.path.basename(destination)}.tmp-{os.getpid()}-"
                                   f"{_host_tag()}-{secrets.token_hex(4)}")
    os.mkdir(staging)
    _WRITING.add(staging)
    try:
        yield staging
    finally:
        _WRITING.discard(staging)
        if os.path.exists(staging):
            shutil.rmtree(staging, ignore_errors=True)


def _publish(staging, destination, kind):
    """Renames the finished `staging` directory to `destination` (absent or empty)."""
    _fsync_tree(staging)
    try:
        os.replace(staging, destination)
    except OSError as error:
        raise ValueError(
            f"Cannot write the {kind} export to {destination}: {error.strerror or error} "
            "(it was created by someone else meanwhile?)"
        ) from error
    files.fsync_directory(os.path.dirname(os.path.abspath(destination)), best_effort=False)


def _make_directory(path, name):
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise ValueError(
            f"Received an invalid value for `{name}`: cannot create the directory {path} "
            f"({error.strerror or error}). Received: {name}={path!r}"
        ) from error


# ---------------------------------------------------------------------------
# SavedModel.


def next_version(base_dir, model_name):
    """1 + the largest integer version under `base_dir/model_name` (1 if none)."""
    root = os.path.join(base_dir, check_model_name(model_name))
    versions = [int(v) for v in os.listdir(root) if v.isdigit()] if os.path.isdir(root) else []
    return max(versions, default=0) + 1


def export_saved_model(model, base_dir, model_name="tfvae", version=None, signatures=None,
                       y_format="one_hot", *, guard=True, threshold=None):
    """Writes a SavedModel in TF Serving's layout, `base_dir/model_name/version/`.

    The version directory appears complete or not at all (written beside it
    under a hidden name, then renamed). It holds `assets.extra/tfvae.json`
    (`SAVED_MODEL_METADATA`): the graphs' inputs, which graphs were skipped and
    why, the likelihood's data range and the condition's format.

    Args:
      model: a trained `tfvae.VAE`.
      base_dir: the model base path TF Serving watches.
      model_name: TF Serving's `MODEL_NAME`, a plain name (`check_model_name`).
        Default value: `"tfvae"`.
      version: integer version. Default value: one above the latest existing.
      signatures: names from `SAVED_MODEL_SIGNATURES`. Default value: all the
        model supports (`sample` needs a standard normal or hierarchical prior).
      y_format: what a valid `y` row is (see `graph_functions`). Default value:
        `"one_hot"`.
      guard: `False` leaves out the bad-input guard (see `graph_functions`; only
        for measuring its cost). Default value: `True`.
      threshold: the `score` signature's threshold, baked into the graph (its
        `flag` output is `score > threshold`); `None` leaves `flag` out.
        Default value: `None`.

    Returns:
      The path of the written version directory.

    Raises:
      ValueError: for a `model_name` that is not a plain name, a bad `version`,
        a version directory that exists (it is never overwritten), or a
        requested signature that cannot be exported.
    """
    import keras

    check_model_name(model_name)
    _check_y_format(y_format)
    threshold = check_threshold(threshold)
    signatures = tuple(signatures or default_parts(model, SAVED_MODEL_SIGNATURES))
    _check_parts(model, signatures, SAVED_MODEL_SIGNATURES, "SavedModel")
    if "serving_default" not in signatures:
        raise ValueError("`signatures` must include 'serving_default' (TF Serving needs it).")
    if os.path.exists(base_dir) and not os.path.isdir(base_dir):
        raise ValueError(
            f"Received an invalid value for `base_dir`, expected a directory. Received: "
            f"base_dir={base_dir!r}, which is a file"
        )
    if version is None:
        version = next_version(base_dir, model_name)
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ValueError(
            f"Received an invalid value for `version`, expected an integer >= 0. Received: "
            f"version={version!r}"
        )
    path = os.path.join(base_dir, model_name, str(version))
    if os.path.exists(path):
        raise ValueError(f"{path} already exists; TF Serving versions are never overwritten.")
    functions = graph_functions(model, y_format, guard=guard, threshold=threshold)
    # The archive saves the variables its endpoints use. `archive.track(model)` would
    # save each of them a second time (the Keras variables beside the captured ones).
    archive = keras.export.ExportArchive()
    for name in signatures:
        fn, input_signature = functions[name]
        archive.add_endpoint(name, fn, input_signature=input_signature)
    metadata = _metadata(model, functions, signatures, "SavedModel", y_format, guard, threshold)
    _make_directory(os.path.dirname(path), "base_dir")
    with _staging_directory(path) as staging:
        archive.write_out(staging, verbose=False)
        metadata["saved_model_bytes"] = _tree_bytes(staging)
        metadata["variables_bytes"] = _tree_bytes(os.path.join(staging, "variables"))
        os.makedirs(os.path.join(staging, os.path.dirname(SAVED_MODEL_METADATA)), exist_ok=True)
        _write_file(os.path.join(staging, SAVED_MODEL_METADATA),
                    json.dumps(metadata, indent=2).encode())
        _publish(staging, path, "SavedModel")
    _log_skipped(metadata["skipped"], SAVED_MODEL_SIGNATURES, "SavedModel", path, model)
    logger.info("wrote SavedModel %s with signatures %s", path, ", ".join(signatures))
    return path


# ---------------------------------------------------------------------------
# ONNX.


@contextlib.contextmanager
def _numpy_object_alias():
    """Lends NumPy its removed `np.object` alias (tf2onnx still refers to it) for the
    duration of a conversion, and takes it back if NumPy did not have it."""
    absent = "object" not in vars(np)
    if absent:
        np.object = object
    try:
        yield
    finally:
        if absent:
            vars(np).pop("object", None)


def _convert_to_onnx(name, fn, input_signature, path, opset):
    import onnx
    import tf2onnx

    function = tf.function(fn, input_signature=input_signature, autograph=False)
    try:
        with _numpy_object_alias():
            proto, _ = tf2onnx.convert.from_function(function, input_signature=input_signature,
                                                     opset=opset)
        onnx.checker.check_model(proto)
    except Exception as error:  # noqa: BLE001 - tf2onnx raises many types.
        raise ValueError(
            f"Cannot export the `{name}` graph to ONNX (opset {opset}): {error}".splitlines()[0]
        ) from error
    unsupported = sorted({node.op_type for node in proto.graph.node if node.domain not in ("", "ai.onnx")})
    if unsupported:
        raise ValueError(f"Cannot export the `{name}` graph to ONNX: unsupported ops {unsupported}.")
    # Every input and output has B rows: one named dimension (tf2onnx names each `unk__N`).
    for value in list(proto.graph.input) + list(proto.graph.output):
        dims = value.type.tensor_type.shape.dim
        if len(dims):
            dims[0].Clear()
            dims[0].dim_param = BATCH_DIMENSION
    # ONNX Runtime runs small convolutions faster as one matrix product over the batch.
    replaced = onnx_dense.dense_convolutions(proto)
    if replaced:
        logger.debug("`%s`: convolutions %s as matrix products", name, replaced)
    _write_file(path, proto.SerializeToString())


def export_onnx(model, directory, graphs=None, opset=None, y_format="one_hot", *, guard=True,
                quantize=None, validation_data=None, calibration_data=None, threshold=None):
    """Writes ONNX graphs `directory/<graph>.onnx`, their weights and `metadata.json`.

    The directory appears complete or not at all (written beside it under a
    hidden name, then renamed). The graphs keep their weights in one shared
    file, `weights.bin` (`WEIGHTS_FILE`), each distinct tensor once (ONNX
    external data; `tfvae.onnx_weights`): the decoder's weights, used by
    `decode`, `reconstruct` and `sample`, are stored once. ONNX Runtime reads
    the graphs from their paths as usual; keep `weights.bin` beside them.
    `metadata.json` records the opset, shapes, each graph's inputs, the
    likelihood's data range, the condition's format, which graphs were skipped
    and why (also logged at WARNING), and sizes: `onnx_bytes` per graph file,
    `weights` (the shared file: `file`, `bytes`, distinct `tensors`,
    `references` to them), `onnx_total_bytes` (all of them) and the model's
    `weight_bytes`. Every input's and output's first dimension is named `batch`
    (`BATCH_DIMENSION`).

    With `quantize` each graph is also written quantized as `<graph>.int8.onnx`
    (its weights shared in `weights.int8.bin`): `"int8"` dynamically
    (`onnxruntime.quantization.quantize_dynamic`: int8 MatMul/Gemm weights,
    activations quantized at run time), `"int8-static"` statically
    (`quantize_static`, QDQ format: int8 MatMul/Gemm/Conv weights, uint8
    activations whose ranges are calibrated (min/max) on `calibration_data`).
    `metadata.json["quantized"][graph]` records its `mode`, its sizes
    (`bytes` and `float_bytes`: the int8 and the float graph each on its own,
    weights inside, as the quantizer compared them; `onnx_bytes`: its file
    beside the shared weights), its latency against the float graph (B = 1 and
    1,000, medians), and its parity with the float graph on `validation_data`
    (max abs error per output; the ELBO in nats with the int8 encoder or
    decoder); a graph that does not quantize, or does not get smaller, is
    recorded with the reason instead.

    Args:
      model: a trained `tfvae.VAE`.
      directory: a new or empty directory.
      graphs: names from `ONNX_GRAPHS`. Default value: all the model supports.
      opset: the ONNX opset, an int in `supported_opsets()`. Default value:
        `None`, which means `ONNX_OPSET` (17).
      y_format: what a valid `y` row is (see `graph_functions`). Default value:
        `"one_hot"`.
      guard: `False` leaves out the bad-input guard (see `graph_functions`; only
        for measuring its cost). Default value: `True`.
      quantize: `None`, `"int8"` or `"int8-static"` (`QUANTIZE_MODES`).
        Default value: `None`.
      validation_data: with `quantize`, held-out `x` or `(x, y)` (`y` integer
        labels or one-hot rows for a conditional model) to measure the
        quantized graphs' parity on; the first 1,000 examples are used.
      calibration_data: with `quantize="int8-static"` (only), example `x` or
        `(x, y)` to calibrate the activations' ranges on, e.g. training data
        (`tfvae export --quantize int8-static` uses the run's training split);
        the first `CALIBRATION_EXAMPLES` (512) are used.
      threshold: the `score` graph's threshold, baked into the graph (its
        `flag` output is `score > threshold`); `None` leaves `flag` out.
        Default value: `None`.

    Returns:
      `{graph: path}` of the written float graphs.

    Raises:
      ValueError: for a bad `opset`, if `directory` holds files (nothing is
        overwritten) or a graph cannot be converted (naming it).
    """
    opset = check_opset(opset)
    _check_y_format(y_format)
    threshold = check_threshold(threshold)
    graphs = tuple(graphs or default_parts(model, ONNX_GRAPHS, "ONNX"))
    if "elbo" in graphs:
        raise ValueError(
            "Cannot export the `elbo` graph to ONNX: TFP's log-density shape ops have no ONNX "
            "converter. Export it as a SavedModel signature instead."
        )
    _check_parts(model, graphs, ONNX_GRAPHS, "ONNX")
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise ValueError(
            f"Received an invalid value for `directory`, expected a new or empty directory. "
            f"Received: directory={directory!r}, which is a file"
        )
    if os.path.isdir(directory) and os.listdir(directory):
        raise ValueError(f"{directory} already holds files; refusing to overwrite them.")
    calibration = None
    if quantize is not None:
        quantize = _checks_quantize(quantize, validation_data, calibration_data)
        validation = _validation_inputs(model, validation_data)
        if quantize == "int8-static":
            calibration = _validation_inputs(model, calibration_data, "calibration_data",
                                             CALIBRATION_EXAMPLES)
    functions = graph_functions(model, y_format, guard=guard, threshold=threshold)
    metadata = {"opset": opset, **_metadata(model, functions, graphs, "ONNX", y_format, guard,
                                            threshold),
                "graphs": {name: f"{name}.onnx" for name in graphs}}
    _make_directory(os.path.dirname(os.path.abspath(directory)), "directory")
    with _staging_directory(directory) as staging:
        for name in graphs:
            fn, input_signature = functions[name]
            _convert_to_onnx(name, fn, input_signature, os.path.join(staging, f"{name}.onnx"),
                             opset)
        if quantize is not None:  # from the self-contained graphs, before they share weights
            metadata["quantize"] = quantize
            metadata["quantized"] = {
                name: _quantize_graph(model, name, staging, validation, calibration)
                for name in graphs}
        _share_weights(metadata, staging, graphs)
        _write_file(os.path.join(staging, ONNX_METADATA), json.dumps(metadata, indent=2).encode())
        _publish(staging, directory, "ONNX")
    _log_skipped(metadata["skipped"], ONNX_GRAPHS, "ONNX", directory, model)
    logger.info("wrote ONNX graphs %s to %s", ", ".join(graphs), directory)
    return {name: os.path.join(directory, file) for name, file in metadata["graphs"].items()}


def _share_weights(metadata, directory, graphs):
    """Moves the weights of the float graphs into `WEIGHTS_FILE` and those of the int8 ones
    into `INT8_WEIGHTS_FILE`, each distinct tensor once (`onnx_weights.share_weights`),
    and records the sizes in `metadata`."""
    from tfvae import onnx_weights

    paths = [os.path.join(directory, f"{name}.onnx") for name in graphs]
    metadata["weights"] = onnx_weights.share_weights(paths, os.path.join(directory, WEIGHTS_FILE))
    metadata["onnx_bytes"] = {name: os.path.getsize(path) for name, path in zip(graphs, paths)}
    metadata["onnx_total_bytes"] = sum(metadata["onnx_bytes"].values()) + metadata["weights"][
        "bytes"]
    quantized = {name: entry["file"] for name, entry in metadata.get("quantized", {}).items()
                 if "file" in entry}
    if quantized:
        int8_paths = [os.path.join(directory, file) for file in quantized.values()]
        metadata["int8_weights"] = onnx_weights.share_weights(
            int8_paths, os.path.join(directory, INT8_WEIGHTS_FILE))
        for name, path in zip(quantized, int8_paths):
            metadata["quantized"][name]["onnx_bytes"] = os.path.getsize(path)


# ---------------------------------------------------------------------------
# int8 (dynamic or static quantization) and its parity with the float graphs.

_QUANTIZED_OPS = ("MatMul", "Gemm")
_STATIC_QUANTIZED_OPS = ("MatMul", "Gemm", "Conv")
_PARITY_EXAMPLES = 1000
_LATENCY_BATCHES = (1, 1000)


def _checks_quantize(quantize, validation_data, calibration_data):
    if quantize not in QUANTIZE_MODES:
        raise ValueError(
            f"Received an invalid value for `quantize`, expected None or one of "
            f"{list(QUANTIZE_MODES)}. Received: quantize={quantize!r}")
    if validation_data is None:
        raise ValueError(
            "Received an invalid value for `validation_data`, expected held-out x or (x, y) "
            "to measure the quantized graphs' parity on. Received: validation_data=None")
    if quantize == "int8-static" and calibration_data is None:
        raise ValueError(
            "Received an invalid value for `calibration_data`, expected example x or (x, y) "
            "(e.g. training data) to calibrate the activations' ranges on for "
            "quantize='int8-static'. Received: calibration_data=None")
    if quantize != "int8-static" and calibration_data is not None:
        raise ValueError(
            f"Received an invalid value for `calibration_data`: it applies to "
            f"quantize='int8-static' only. Received: calibration_data with quantize={quantize!r}")
    return quantize


def _validation_inputs(model, validation_data, argument="validation_data",
                       limit=_PARITY_EXAMPLES):
    """`{"x", "y"?, "z", "eps", "noise"}` arrays for the graphs, from held-out data (its
    first `limit` rows): `z` the `decode` graph's input for x (`Posterior.decode_input_of`:
    the deterministic code z, a quantised posterior's codes; fed under
    `decode_input_name`), `eps` zeros (the noise-free reconstruction), `noise` N(0, I)
    draws (seed 0) for `sample`. `argument` names the data in errors."""
    x, y = validation_data if isinstance(validation_data, tuple) else (validation_data, None)
    x = np.asarray(x, np.float32)[:limit]
    if x.shape[1:] != model.event_shape or not len(x):
        raise ValueError(
            f"Received an invalid value for `{argument}`, expected x of shape "
            f"(n > 0, {', '.join(map(str, model.event_shape))}). Received: x with shape "
            f"{tuple(np.shape(x))}")
    model.likelihood.validate_data(x, argument)
    inputs = {"x": x}
    labels = None
    if model.condition_dim is not None:
        if y is None:
            raise ValueError(f"Received an invalid value for `{argument}`: the model is "
                             "conditional, expected (x, y). Received: x alone")
        y = np.asarray(y)[:len(x)]
        if y.ndim == 1:
            labels = y.astype(np.int64)
            y = np.eye(model.condition_dim, dtype=np.float32)[labels]
        inputs["y"] = y.astype(np.float32)
    parameters = model.posterior_parameters(*model.prepare_inputs(
        x, inputs.get("y") if labels is None else labels))
    inputs["z"] = np.asarray(model.posterior.decode_input_of(parameters))
    inputs["decode_input_name"] = model.posterior.decode_input_spec().name
    inputs["eps"] = np.zeros((len(x), model.latent_dim), np.float32)
    inputs["noise"] = np.random.default_rng(0).standard_normal(
        (len(x), model.latent_dim)).astype(np.float32)
    inputs["prepared_y"] = tf.constant(inputs["y"]) if "y" in inputs else None
    return inputs


def _graph_feeds(name, inputs, conditional):
    feeds = {"encode": {"x": inputs["x"]},
             "decode": {inputs.get("decode_input_name", "z"): inputs["z"]},
             "reconstruct": {"x": inputs["x"], "eps": inputs["eps"]},
             "sample": {"eps": inputs["noise"]},
             "score": {"x": inputs["x"], "eps": inputs["eps"]}}[name]
    if conditional:
        feeds["y"] = inputs["y"]
    return feeds


def _session(path):
    import onnxruntime as ort

    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def _run(session, feeds):
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def _median_latency_ms(sessions, feeds, calls, repeats=7):
    """`{name: ms}`: the median over `repeats` of the mean time per call, the sessions
    interleaved in each repeat."""
    import time

    times = {name: [] for name in sessions}
    for session in sessions.values():
        session.run(None, feeds)  # warm up
    for _ in range(repeats):
        for name, session in sessions.items():
            start = time.perf_counter()
            for _ in range(calls):
                session.run(None, feeds)
            times[name].append((time.perf_counter() - start) / calls)
    return {name: round(1000 * float(np.median(t)), 4) for name, t in times.items()}


def _tiled(feeds, rows):
    return {key: np.resize(value, (rows,) + value.shape[1:]) for key, value in feeds.items()}


def _elbo_nats(model, posterior_outputs, decoder_parameters, inputs):
    """Per-example one-sample ELBO `log p(x|z) + log p(z) − log q(z|x)` at
    `z = g(noise; q)`, from given posterior outputs (the `encode` graph's) and a
    decoder `z → likelihood parameters`, in nats."""
    parameters = dict(posterior_outputs)
    parameters = {"loc": tf.constant(parameters.pop("mean")),
                  "scale": tf.constant(parameters.pop("scale")),
                  **{key: tf.constant(value) for key, value in parameters.items()}}
    z = model.posterior.reparameterize(parameters, tf.constant(inputs["noise"]))
    log_px = model.likelihood.log_prob(decoder_parameters(z), tf.constant(inputs["x"]))
    log_pz = model.prior.distribution().log_prob(z)
    log_qz = model.posterior.distribution(parameters).log_prob(z)
    return np.asarray(log_px + log_pz - log_qz, np.float64)


def _elbo_parity(model, name, float_session, int8_session, inputs, conditional):
    """The ELBO of the validation examples with the int8 graph in place of the float one
    (the int8 encoder's q with the float decoder, or the float q with the int8
    decoder), against the float path: `{"float", "int8"}` means and the differences."""
    y = inputs["prepared_y"]
    keras_q = model.posterior_outputs(tf.constant(inputs["x"]), y)
    keras_q = {key: np.asarray(value) for key, value in keras_q.items()}

    def keras_decoder(z):
        return model.decoder_parameters(z, y)

    def graph_decoder(session):
        def decoder(z):
            feeds = {"z": np.asarray(z)}
            if conditional:
                feeds["y"] = inputs["y"]
            outputs = _run(session, feeds)
            outputs.pop("mean")
            return {key: tf.constant(value) for key, value in outputs.items()}
        return decoder

    if name == "encode":
        float_elbo = _elbo_nats(model, _run(float_session, _graph_feeds(name, inputs, conditional)),
                                keras_decoder, inputs)
        int8_elbo = _elbo_nats(model, _run(int8_session, _graph_feeds(name, inputs, conditional)),
                               keras_decoder, inputs)
    else:  # decode
        float_elbo = _elbo_nats(model, keras_q, graph_decoder(float_session), inputs)
        int8_elbo = _elbo_nats(model, keras_q, graph_decoder(int8_session), inputs)
    difference = int8_elbo - float_elbo
    return {"float": round(float(np.mean(float_elbo)), 6),
            "int8": round(float(np.mean(int8_elbo)), 6),
            "mean_difference": float(np.mean(difference)),
            "max_abs_difference": float(np.max(np.abs(difference)))}


class _PreprocessingAdvice(logging.Filter):
    def filter(self, record):
        return "pre-processing before quantization" not in record.getMessage()


@contextlib.contextmanager
def _without_preprocessing_advice():
    """Silences the quantizer's advice to run its shape-inference pre-processing (logged
    on the root logger for every graph; tfvae's graphs have their shapes)."""
    advice = _PreprocessingAdvice()
    logging.getLogger().addFilter(advice)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(advice)


def quantization_refusal(proto, ops=_QUANTIZED_OPS):
    """Why the ONNX graph `proto` cannot be quantized (`None` if it can): it must have one
    of `ops` (default: MatMul or Gemm, what dynamic quantization covers) whose weight
    is a constant."""
    constants = {init.name for init in proto.graph.initializer}
    constants |= {out for node in proto.graph.node if node.op_type == "Constant"
                  for out in node.output}
    if not any(node.op_type in ops and any(i in constants for i in node.input)
               for node in proto.graph.node):
        return f"it has no {' or '.join(ops)} with constant weights to quantize"
    return None


class _CalibrationFeeds:
    """`onnxruntime.quantization.CalibrationDataReader`'s protocol (`get_next`: feeds, then
    None) over one graph's calibration feeds, in batches of `rows`."""

    def __init__(self, feeds, rows=128):
        count = len(next(iter(feeds.values())))
        self._batches = iter([{key: value[start:start + rows] for key, value in feeds.items()}
                              for start in range(0, count, rows)])

    def get_next(self):
        return next(self._batches, None)


def _quantize_file(float_path, int8_path, feeds=None):
    """Quantizes the graph at `float_path` into `int8_path`: dynamically (int8 MatMul/Gemm
    weights, activations quantized at run time) or, given calibration `feeds`,
    statically (int8 weights of MatMul/Gemm/Conv and uint8 activations whose ranges are
    the calibration data's min/max; QDQ format, which ONNX Runtime fuses into integer
    kernels)."""
    from onnxruntime import quantization

    with _without_preprocessing_advice():
        if feeds is None:
            quantization.quantize_dynamic(float_path, int8_path,
                                          op_types_to_quantize=list(_QUANTIZED_OPS),
                                          weight_type=quantization.QuantType.QInt8)
        else:
            quantization.quantize_static(
                float_path, int8_path, _CalibrationFeeds(feeds),
                quant_format=quantization.QuantFormat.QDQ,
                op_types_to_quantize=list(_STATIC_QUANTIZED_OPS),
                activation_type=quantization.QuantType.QUInt8,
                weight_type=quantization.QuantType.QInt8,
                calibrate_method=quantization.CalibrationMethod.MinMax)


def _quantize_graph(model, name, directory, inputs, calibration=None):
    """Writes `directory/<name>.int8.onnx` and returns its metadata entry: size, latency
    and parity against `<name>.onnx`, or `{"refused": reason}`. Static quantization
    (calibrated on `calibration`'s arrays) when `calibration` is given, else dynamic."""
    import onnx

    float_path = os.path.join(directory, f"{name}.onnx")
    int8_file = f"{name}.int8.onnx"
    int8_path = os.path.join(directory, int8_file)
    conditional = model.condition_dim is not None
    ops = _QUANTIZED_OPS if calibration is None else _STATIC_QUANTIZED_OPS
    refusal = quantization_refusal(onnx.load(float_path), ops)
    if refusal is None:
        try:
            _quantize_file(float_path, int8_path, None if calibration is None else
                           _graph_feeds(name, calibration, conditional))
            quantized = onnx.load(int8_path)
            onnx.checker.check_model(quantized)
            if not any("Integer" in node.op_type or "Quant" in node.op_type
                       for node in quantized.graph.node):
                refusal = f"onnxruntime's quantizer left every {'/'.join(ops)} in float"
            elif os.path.getsize(int8_path) >= os.path.getsize(float_path):
                refusal = (f"quantized, it is not smaller ({os.path.getsize(int8_path)} bytes "
                           f"against {os.path.getsize(float_path)}): its "
                           f"{'/'.join(ops)} weights are too few"
                           + (" (convolutions stay in float)" if calibration is None else ""))
        except Exception as error:  # noqa: BLE001 - the quantizer raises many types.
            refusal = f"onnxruntime's quantizer failed: {str(error).splitlines()[0]}"
    if refusal is not None:
        if os.path.exists(int8_path):
            os.remove(int8_path)
        logger.warning("ONNX graph `%s` is not quantized: %s", name, refusal)
        return {"refused": refusal}
    sessions = {"float": _session(float_path), "int8": _session(int8_path)}
    feeds = _graph_feeds(name, inputs, conditional)
    float_out, int8_out = _run(sessions["float"], feeds), _run(sessions["int8"], feeds)
    errors = {}
    for key, value in float_out.items():
        difference = np.abs(np.asarray(int8_out[key], np.float64) - value)
        errors[key] = float(np.nanmax(difference)) if np.isfinite(difference).any() else None
    entry = {
        "file": int8_file,
        "mode": "dynamic" if calibration is None else "static",
        "bytes": os.path.getsize(int8_path),
        "float_bytes": os.path.getsize(float_path),
        "validation_examples": len(inputs["x"]),
        **({} if calibration is None else {"calibration_examples": len(calibration["x"])}),
        "max_abs_error": errors,
        "latency_ms": {str(rows): _median_latency_ms(
            sessions, _tiled(feeds, rows), calls=50 if rows == 1 else 3)
            for rows in _LATENCY_BATCHES},
    }
    entry["size_ratio"] = round(entry["bytes"] / entry["float_bytes"], 4)
    if name in ("encode", "decode"):
        try:
            entry["elbo_nats"] = _elbo_parity(model, name, sessions["float"], sessions["int8"],
                                              inputs, conditional)
        except Exception as error:  # noqa: BLE001 - a posterior without log_prob of its sample
            entry["elbo_nats"] = {"refused": f"{type(error).__name__}: "
                                             f"{str(error).splitlines()[0] if str(error) else ''}"}
    else:
        entry["elbo_nats"] = {"refused": f"`{name}` outputs only the likelihood's mean, not "
                                         "its parameters"}
    return entry
