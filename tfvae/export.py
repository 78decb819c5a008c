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

Both writers are all-or-nothing: they write into a hidden temporary directory
beside the destination (flushed and fsynced) and rename it into place, so TF
Serving never sees a half-written version and a failed export leaves nothing.
"""

import contextlib
import json
import logging
import math
import os
import re
import secrets
import shutil

import numpy as np
import tensorflow as tf

from tfvae.model import where_valid

logger = logging.getLogger(__name__)

ONNX_OPSET = 17
# tfvae's graphs need `IsInf` (the bad-input mask), which ONNX has from opset 10.
_GRAPHS_MIN_OPSET = 10
SAVED_MODEL_SIGNATURES = ("serving_default", "encode", "decode", "reconstruct", "sample", "elbo")
ONNX_GRAPHS = ("encode", "decode", "reconstruct", "sample")
# The inputs of each graph, before a conditional model's `y`.
GRAPH_INPUTS = {
    "serving_default": ("x",),
    "encode": ("x",),
    "decode": ("z",),
    "reconstruct": ("x", "eps"),
    "sample": ("eps",),
    "elbo": ("x", "eps"),
}
Y_FORMATS = ("one_hot", "vectors")
# Where `export_saved_model` writes its metadata, inside the version directory
# (TF Serving ignores `assets.extra/`; it is part of the SavedModel layout).
SAVED_MODEL_METADATA = os.path.join("assets.extra", "tfvae.json")
ONNX_METADATA = "metadata.json"
_MODEL_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
_SAMPLE_PRIORS = "standard normal or hierarchical"
_ONNX_ELBO_REASON = (
    "TFP's log-density shape ops have no ONNX converter; the SavedModel export has `elbo`")


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
        "z": tf.TensorSpec(batch + (model.latent_dim,), tf.float32, name="z"),
        "eps": tf.TensorSpec(batch + (model.latent_dim,), tf.float32, name="eps"),
    }
    if model.conditioning.active:
        specs["y"] = model.conditioning.spec()
    return specs


def _rows(condition):
    """`[B, ...]` bool → `[B]`: all true in the row."""
    return tf.reduce_all(condition, axis=list(range(1, condition.shape.rank)))


def _input_checks(model, y_format):
    """`{input name: tensor → [B] bool}`: which rows of each input the model accepts."""
    x_rows = model.likelihood.support_mask  # the model's own rule (`VAE.valid_rows`)

    def finite_rows(v):
        return _rows(tf.math.is_finite(v))

    def y_rows(y):
        if y_format == "vectors":
            return finite_rows(y)
        binary = tf.logical_or(tf.equal(y, 0.0), tf.equal(y, 1.0))
        return tf.logical_and(_rows(binary), tf.equal(tf.reduce_sum(y, axis=-1), 1.0))

    return {"x": x_rows, "z": finite_rows, "eps": finite_rows, "y": y_rows}


def graph_functions(model, y_format="one_hot"):
    """The export graphs as `{name: (python_function, input_signature)}`.

    Functions return dicts of named float32 tensors; see the module docstring.
    A conditional model's graphs all take one more input, `y [B, condition_dim]`,
    after their others.

    Args:
      model: a `tfvae.VAE`.
      y_format: what a valid `y` row is: `"one_hot"` (one-hot labels, what the
        `tfvae` command trains on) or `"vectors"` (any finite condition vector).
        Default value: `"one_hot"`.
    """
    _check_y_format(y_format)
    specs = _specs(model)
    likelihood, posterior = model.likelihood, model.posterior
    conditional = model.condition_dim is not None
    checks = _input_checks(model, y_format)

    def guard(outputs, **inputs):
        """NaN in every output row whose input row is refused (see the module docstring)."""
        valid = None
        for name, value in inputs.items():
            if value is not None:
                rows = checks[name](value)
                valid = rows if valid is None else tf.logical_and(valid, rows)
        return where_valid(valid, outputs)

    def encode(x, y=None):
        return guard(model.posterior_outputs(x, y), x=x, y=y)

    def decode(z, y=None):
        parameters = model.decoder_parameters(z, y)
        return guard({"mean": likelihood.mean_of(parameters), **parameters}, z=z, y=y)

    def reconstruct(x, eps, y=None):
        z = posterior.reparameterize(model.posterior_parameters(x, y), eps)
        return guard({"reconstruction": model.decode_mean(z, y)}, x=x, eps=eps, y=y)

    def sample(eps, y=None):
        samples = model.decode_mean(model.prior.reparameterize(eps), y)
        return guard({"samples": samples}, eps=eps, y=y)

    def elbo(x, eps, y=None):
        terms = model.elbo_terms(x, y, noise=eps[None])
        return guard({key: value for key, value in terms.items() if key != "loss"},
                     x=x, eps=eps, y=y)

    def serving_default(x, y=None):
        reconstruction = model(x if y is None else (x, y), training=False)
        return guard({"reconstruction": reconstruction}, x=x, y=y)

    functions = {"serving_default": serving_default, "encode": encode, "decode": decode,
                 "reconstruct": reconstruct, "sample": sample, "elbo": elbo}
    extra = ("y",) if conditional else ()
    return {
        name: (fn, [specs[key] for key in GRAPH_INPUTS[name] + extra])
        for name, fn in functions.items()
    }


def _sample_refusal(model):
    """Why `sample` cannot be exported for `model` (`None` if it can)."""
    if model.prior.can_reparameterize:
        return None
    return (f"{type(model.prior).__name__} cannot be sampled from standard normal noise alone "
            f"(only a {_SAMPLE_PRIORS} prior exports `sample`)")


def _check_parts(model, requested, available, kind):
    unknown = [name for name in requested if name not in available]
    if unknown:
        raise ValueError(
            f"Received an invalid value for `signatures`: {kind} export has no "
            f"{unknown}. Available: {list(available)}"
        )
    refusal = _sample_refusal(model)
    if "sample" in requested and refusal:
        raise ValueError(
            f"Cannot export `sample`: {refusal}. Leave `sample` out of the exported signatures."
        )


def default_parts(model, available):
    """All graphs in `available` that `model` supports."""
    return tuple(name for name in available if name != "sample" or _sample_refusal(model) is None)


def skipped_parts(model, exported, kind):
    """`{graph: reason}` for every graph of the `kind` ("SavedModel"/"ONNX") export not in
    `exported`."""
    every = SAVED_MODEL_SIGNATURES if kind == "SavedModel" else ONNX_GRAPHS + ("elbo",)
    skipped = {}
    for name in every:
        if name in exported:
            continue
        if name == "sample" and _sample_refusal(model):
            skipped[name] = _sample_refusal(model)
        elif name == "elbo" and kind == "ONNX":
            skipped[name] = _ONNX_ELBO_REASON
        else:
            skipped[name] = "not requested"
    return skipped


def _metadata(model, functions, exported, kind, y_format):
    """What serving tools need to know about the export, as JSON-able data."""
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
    }


def _log_skipped(skipped, available, kind, where):
    """Warns about each graph of `available` the model could not export (not the ones a
    caller left out, nor ONNX's `elbo`, which no model has)."""
    for name, reason in skipped.items():
        if name in available and reason != "not requested":
            logger.warning("%s export to %s has no `%s`: %s", kind, where, name, reason)


# ---------------------------------------------------------------------------
# Writing files all-or-nothing.


def _write_file(path, data):
    """Writes bytes to a new file, flushed and fsynced."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_tree(root):
    """fsyncs every file and directory under `root` (and `root` itself)."""
    for directory, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(directory, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_directory(directory)


def _fsync_directory(directory):
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _staging_directory(destination):
    """A hidden, new directory beside `destination`; removed unless renamed into place."""
    parent = os.path.dirname(os.path.abspath(destination))
    # os.mkdir (unlike tempfile.mkdtemp's 0700) gives the permissions the umask allows.
    staging = os.path.join(
        parent, f".{os.path.basename(destination)}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    os.mkdir(staging)
    try:
        yield staging
    finally:
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
    _fsync_directory(os.path.dirname(os.path.abspath(destination)))


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
                       y_format="one_hot"):
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
    functions = graph_functions(model, y_format)
    archive = keras.export.ExportArchive()
    archive.track(model)
    for name in signatures:
        fn, input_signature = functions[name]
        archive.add_endpoint(name, fn, input_signature=input_signature)
    metadata = _metadata(model, functions, signatures, "SavedModel", y_format)
    _make_directory(os.path.dirname(path), "base_dir")
    with _staging_directory(path) as staging:
        archive.write_out(staging, verbose=False)
        os.makedirs(os.path.join(staging, os.path.dirname(SAVED_MODEL_METADATA)), exist_ok=True)
        _write_file(os.path.join(staging, SAVED_MODEL_METADATA),
                    json.dumps(metadata, indent=2).encode())
        _publish(staging, path, "SavedModel")
    _log_skipped(metadata["skipped"], SAVED_MODEL_SIGNATURES, "SavedModel", path)
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
    _write_file(path, proto.SerializeToString())


def export_onnx(model, directory, graphs=None, opset=None, y_format="one_hot"):
    """Writes ONNX graphs `directory/<graph>.onnx` plus `metadata.json`.

    The directory appears complete or not at all (written beside it under a
    hidden name, then renamed). `metadata.json` records the opset, shapes,
    each graph's inputs, the likelihood's data range, the condition's format,
    and which graphs were skipped and why (also logged at WARNING).

    Args:
      model: a trained `tfvae.VAE`.
      directory: a new or empty directory.
      graphs: names from `ONNX_GRAPHS`. Default value: all the model supports.
      opset: the ONNX opset, an int in `supported_opsets()`. Default value:
        `None`, which means `ONNX_OPSET` (17).
      y_format: what a valid `y` row is (see `graph_functions`). Default value:
        `"one_hot"`.

    Returns:
      `{graph: path}` of the written files.

    Raises:
      ValueError: for a bad `opset`, if `directory` holds files (nothing is
        overwritten) or a graph cannot be converted (naming it).
    """
    opset = check_opset(opset)
    _check_y_format(y_format)
    graphs = tuple(graphs or default_parts(model, ONNX_GRAPHS))
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
    functions = graph_functions(model, y_format)
    metadata = {"opset": opset, **_metadata(model, functions, graphs, "ONNX", y_format),
                "graphs": {name: f"{name}.onnx" for name in graphs}}
    _make_directory(os.path.dirname(os.path.abspath(directory)), "directory")
    with _staging_directory(directory) as staging:
        for name in graphs:
            fn, input_signature = functions[name]
            _convert_to_onnx(name, fn, input_signature, os.path.join(staging, f"{name}.onnx"),
                             opset)
        _write_file(os.path.join(staging, ONNX_METADATA), json.dumps(metadata, indent=2).encode())
        _publish(staging, directory, "ONNX")
    _log_skipped(metadata["skipped"], ONNX_GRAPHS, "ONNX", directory)
    logger.info("wrote ONNX graphs %s to %s", ", ".join(graphs), directory)
    return {name: os.path.join(directory, file) for name, file in metadata["graphs"].items()}
