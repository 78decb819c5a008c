"""Export a trained `tfvae.VAE` for serving: SavedModel (TF Serving) and ONNX (onnxruntime).

Exported graphs never sample: TFP's and TensorFlow's random ops have no ONNX
equivalent and would make served outputs irreproducible, so every stochastic
graph takes the reparameterisation noise `eps ~ N(0, I)` as an input.

Graphs (inputs → named outputs; `B` is a dynamic batch size):

* `encode`: `x [B, *event]` → `mean [B, d]`, `scale` (`[B, d]` standard
  deviations, or `[B, d, d]` Cholesky factor for a full-covariance posterior);
  a flow posterior adds its `context [B, c]` (mean and scale are then its base
  Gaussian's).
* `decode`: `z [B, d]` → `mean [B, *event]` and the likelihood's parameters
  (`logits`, or `loc` and `scale`).
* `reconstruct`: `x`, `eps [B, d]` → `reconstruction`, the likelihood's mean at
  `z = mean + scale · eps` (eps = 0 gives the deterministic reconstruction).
* `sample`: `eps [B, d]` → `samples`, the likelihood's mean at `z = eps`
  (standard normal prior only).
* `elbo`: `x`, `eps [B, d]` → per-example `elbo`, `reconstruction`, `kl`
  (one posterior sample; SavedModel only: TFP's log-density ops do not convert to ONNX).
* `serving_default`: `x` → `reconstruction` at z = E_q[z] (the model's `call`).

A conditional model's graphs also take `y [B, condition_dim]` (one-hot labels
or condition vectors); a hierarchical model's z is `[z1, z2]` and its `encode`
gives z1's mean and scale.
"""

import contextlib
import json
import logging
import os

import numpy as np
import tensorflow as tf

logger = logging.getLogger(__name__)

ONNX_OPSET = 17
SAVED_MODEL_SIGNATURES = ("serving_default", "encode", "decode", "reconstruct", "sample", "elbo")
ONNX_GRAPHS = ("encode", "decode", "reconstruct", "sample")


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


def graph_functions(model):
    """The export graphs as `{name: (python_function, input_signature)}`.

    Functions return dicts of named float32 tensors; see the module docstring.
    A conditional model's graphs all take one more input, `y [B, condition_dim]`
    (one-hot labels or condition vectors), after their others.
    """
    specs = _specs(model)
    likelihood, posterior = model.likelihood, model.posterior
    conditional = model.condition_dim is not None

    def encode(x, y=None):
        parameters = dict(model.posterior_parameters(x, y))
        return {"mean": parameters.pop("loc"), "scale": parameters.pop("scale"), **parameters}

    def decode(z, y=None):
        parameters = model.decoder_parameters(z, y)
        return {"mean": likelihood.mean_of(parameters), **parameters}

    def reconstruct(x, eps, y=None):
        z = posterior.reparameterize(model.posterior_parameters(x, y), eps)
        return {"reconstruction": model.decode_mean(z, y)}

    def sample(eps, y=None):
        return {"samples": model.decode_mean(model.prior.reparameterize(eps), y)}

    def elbo(x, eps, y=None):
        terms = model.elbo_terms(x, y, noise=eps[None])
        return {key: value for key, value in terms.items() if key != "loss"}

    def serving_default(x, y=None):
        return {"reconstruction": model(x if y is None else (x, y), training=False)}

    inputs = {
        "serving_default": (serving_default, ["x"]),
        "encode": (encode, ["x"]),
        "decode": (decode, ["z"]),
        "reconstruct": (reconstruct, ["x", "eps"]),
        "sample": (sample, ["eps"]),
        "elbo": (elbo, ["x", "eps"]),
    }
    extra = ["y"] if conditional else []
    return {
        name: (fn, [specs[key] for key in names + extra]) for name, (fn, names) in inputs.items()
    }


def _check_parts(model, requested, available, kind):
    unknown = [name for name in requested if name not in available]
    if unknown:
        raise ValueError(
            f"Received an invalid value for `signatures`: {kind} export has no "
            f"{unknown}. Available: {list(available)}"
        )
    if "sample" in requested and not model.prior.can_reparameterize:
        raise ValueError(
            f"Cannot export `sample`: {type(model.prior).__name__} cannot be sampled from "
            "standard normal noise alone. Leave `sample` out of the exported signatures."
        )


def default_parts(model, available):
    """All graphs in `available` that `model` supports."""
    can_sample = model.prior.can_reparameterize
    return tuple(name for name in available if name != "sample" or can_sample)


def next_version(base_dir, model_name):
    """1 + the largest integer version under `base_dir/model_name` (1 if none)."""
    root = os.path.join(base_dir, model_name)
    versions = [int(v) for v in os.listdir(root) if v.isdigit()] if os.path.isdir(root) else []
    return max(versions, default=0) + 1


def export_saved_model(model, base_dir, model_name="tfvae", version=None, signatures=None):
    """Writes a SavedModel in TF Serving's layout, `base_dir/model_name/version/`.

    Args:
      model: a trained `tfvae.VAE`.
      base_dir: the model base path TF Serving watches.
      model_name: TF Serving's `MODEL_NAME`. Default value: `"tfvae"`.
      version: integer version. Default value: one above the latest existing.
      signatures: names from `SAVED_MODEL_SIGNATURES`. Default value: all the
        model supports (`sample` needs a standard normal prior).

    Returns:
      The path of the written version directory.

    Raises:
      ValueError: if the version directory exists (it is never overwritten),
        or a requested signature cannot be exported.
    """
    import keras

    signatures = tuple(signatures or default_parts(model, SAVED_MODEL_SIGNATURES))
    _check_parts(model, signatures, SAVED_MODEL_SIGNATURES, "SavedModel")
    if "serving_default" not in signatures:
        raise ValueError("`signatures` must include 'serving_default' (TF Serving needs it).")
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
    functions = graph_functions(model)
    archive = keras.export.ExportArchive()
    archive.track(model)
    for name in signatures:
        fn, input_signature = functions[name]
        archive.add_endpoint(name, fn, input_signature=input_signature)
    archive.write_out(path, verbose=False)
    logger.info("wrote SavedModel %s with signatures %s", path, ", ".join(signatures))
    return path


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
    with open(path, "wb") as f:
        f.write(proto.SerializeToString())


def export_onnx(model, directory, graphs=None, opset=ONNX_OPSET):
    """Writes ONNX graphs `directory/<graph>.onnx` plus `metadata.json`.

    Args:
      model: a trained `tfvae.VAE`.
      directory: a new or empty directory.
      graphs: names from `ONNX_GRAPHS`. Default value: all the model supports.
      opset: the ONNX opset. Default value: `ONNX_OPSET` (17).

    Returns:
      `{graph: path}` of the written files.

    Raises:
      ValueError: if `directory` holds files (nothing is overwritten) or a
        graph cannot be converted (naming it).
    """
    graphs = tuple(graphs or default_parts(model, ONNX_GRAPHS))
    if "elbo" in graphs:
        raise ValueError(
            "Cannot export the `elbo` graph to ONNX: TFP's log-density shape ops have no ONNX "
            "converter. Export it as a SavedModel signature instead."
        )
    _check_parts(model, graphs, ONNX_GRAPHS, "ONNX")
    if os.path.isdir(directory) and os.listdir(directory):
        raise ValueError(f"{directory} already holds files; refusing to overwrite them.")
    os.makedirs(directory, exist_ok=True)
    functions = graph_functions(model)
    written = {}
    for name in graphs:
        fn, input_signature = functions[name]
        written[name] = os.path.join(directory, f"{name}.onnx")
        _convert_to_onnx(name, fn, input_signature, written[name], opset)
    metadata = {
        "opset": opset,
        "event_shape": list(model.event_shape),
        "latent_dim": model.latent_dim,
        "condition_dim": model.condition_dim,
        "likelihood": type(model.likelihood).__name__,
        "num_levels": getattr(model.likelihood, "num_levels", None),
        "graphs": {name: os.path.basename(path) for name, path in written.items()},
    }
    with open(os.path.join(directory, "metadata.json"), "w") as f:
        json.dump(metadata, f, indent=2)
    logger.info("wrote ONNX graphs %s to %s", ", ".join(graphs), directory)
    return written
