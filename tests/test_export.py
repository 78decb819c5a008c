"""Export parity: SavedModel signatures and ONNX graphs compute what the Keras model computes."""

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tensorflow as tf

import tfvae
from tfvae import export
from tfvae import objectives

LEVELS = ("categorical", "discretized_logistic")


def _model(likelihood="bernoulli", architecture="mlp", **kwargs):
    kwargs.setdefault("hidden_units", (16,))
    kwargs.setdefault("filters", (4, 8))
    return tfvae.build_vae((6, 5, 1), 3, likelihood=likelihood, architecture=architecture,
                           seed=0, **kwargs)


def _inputs(model, batch, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(batch,) + model.event_shape).astype("float32")
    if getattr(model.likelihood, "num_levels", None):
        x = np.round(x * 255).astype("float32")
    eps = rng.standard_normal((batch, model.latent_dim)).astype("float32")
    z = rng.standard_normal((batch, model.latent_dim)).astype("float32")
    return x, eps, z


def _reference(model, x, eps, z):
    """The Keras model's own answers, through its TFP distributions."""
    q = model.encode(x)
    scale = q.stddev() if isinstance(model.posterior, tfvae.DiagonalGaussianPosterior) else q.scale.to_dense()
    z_q = objectives.posterior_sample(q, 1, noise=eps[None])[0]
    terms = objectives.elbo(x, q, model.likelihood_fn(), model.prior.distribution(),
                            kl=model.kl_method, noise=eps[None])
    reference = {
        "encode": {"mean": q.mean(), "scale": scale},
        "decode": {"mean": model.likelihood.mean(model.decode(z))},
        "reconstruct": {"reconstruction": model.likelihood.mean(model.decode(z_q))},
        "serving_default": {"reconstruction": model.reconstruct(x)},
        "elbo": {key: terms[key] for key in ("elbo", "reconstruction", "kl")},
    }
    if isinstance(model.prior, tfvae.StandardNormalPrior):
        reference["sample"] = {"samples": model.likelihood.mean(model.decode(z))}
    return {name: {k: np.asarray(v) for k, v in outputs.items()} for name, outputs in reference.items()}


def _feeds(name, x, eps, z):
    return {
        "serving_default": {"x": x}, "encode": {"x": x}, "decode": {"z": z},
        "reconstruct": {"x": x, "eps": eps}, "sample": {"eps": z}, "elbo": {"x": x, "eps": eps},
    }[name]


def _tolerance(model):
    return 1e-3 if getattr(model.likelihood, "num_levels", None) else 2e-5


# ---------------------------------------------------------------------------
# SavedModel.


@pytest.mark.slow
@pytest.mark.parametrize("likelihood, architecture, extra", [
    # (bernoulli / mlp / diagonal / standard normal: test_conformance.py, variant "plain".)
    ("discretized_logistic", "conv", {"posterior": "full"}),
    ("gaussian_predicted", "mlp", {"prior": "mixture", "num_components": 2}),
])
def test_saved_model_signatures_match_keras_at_two_batch_sizes(tmp_path, likelihood, architecture, extra):
    model = _model(likelihood, architecture, **extra)
    path = export.export_saved_model(model, str(tmp_path), "vae")
    assert path == os.path.join(str(tmp_path), "vae", "1")
    loaded = tf.saved_model.load(path)
    expected_signatures = set(export.SAVED_MODEL_SIGNATURES)
    if "prior" in extra:
        expected_signatures.discard("sample")
    assert set(loaded.signatures) == expected_signatures
    for batch in (1, 7):
        x, eps, z = _inputs(model, batch, seed=batch)
        reference = _reference(model, x, eps, z)
        for name in expected_signatures:
            outputs = loaded.signatures[name](**{k: tf.constant(v) for k, v in _feeds(name, x, eps, z).items()})
            for key, value in reference[name].items():
                np.testing.assert_allclose(outputs[key].numpy(), value, rtol=1e-5,
                                           atol=_tolerance(model), err_msg=f"{name}/{key}")
            assert outputs[next(iter(outputs))].shape[0] == batch


@pytest.mark.slow
def test_saved_model_decode_exposes_likelihood_parameters(tmp_path):
    model = _model("gaussian_predicted")
    loaded = tf.saved_model.load(export.export_saved_model(model, str(tmp_path), "vae"))
    _, _, z = _inputs(model, 3)
    outputs = loaded.signatures["decode"](z=tf.constant(z))
    dist = model.decode(z).distribution
    np.testing.assert_allclose(outputs["loc"], dist.loc, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(outputs["scale"], dist.scale, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_saved_model_cli_lists_every_signature(tmp_path):
    model = _model()
    path = export.export_saved_model(model, str(tmp_path), "vae", version=3)
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    result = subprocess.run([cli, "show", "--dir", path, "--all"], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-2000:]
    for name in export.SAVED_MODEL_SIGNATURES:
        assert f"signature_def['{name}']" in result.stdout
    # Named inputs with a dynamic batch dimension.
    assert "inputs['eps'] tensor_info" in result.stdout and "shape: (-1, 3)" in result.stdout
    assert "outputs['reconstruction'] tensor_info" in result.stdout


@pytest.mark.slow
def test_saved_model_versions_are_never_overwritten(tmp_path):
    model = _model()
    first = export.export_saved_model(model, str(tmp_path), "vae")
    second = export.export_saved_model(model, str(tmp_path), "vae")
    assert first.endswith(os.path.join("vae", "1")) and second.endswith(os.path.join("vae", "2"))
    before = sorted(os.listdir(first))
    with pytest.raises(ValueError, match="never overwritten"):
        export.export_saved_model(model, str(tmp_path), "vae", version=1)
    assert sorted(os.listdir(first)) == before


def test_sample_signature_with_a_mixture_prior_is_a_clear_error(tmp_path):
    model = _model(prior="mixture", num_components=2)
    with pytest.raises(ValueError, match="Cannot export `sample`: MixtureOfGaussiansPrior"):
        export.export_saved_model(model, str(tmp_path), "vae", signatures=("serving_default", "sample"))


# ---------------------------------------------------------------------------
# ONNX.

# Every likelihood with both architectures, except bernoulli / mlp / diagonal: that is the
# conformance registry's variant "plain" (test_conformance.py).
ONNX_CASES = [(likelihood, architecture)
              for likelihood in tfvae.builders.LIKELIHOODS for architecture in ("mlp", "conv")
              if (likelihood, architecture) != ("bernoulli", "mlp")]


@pytest.mark.slow
@pytest.mark.parametrize("likelihood, architecture", ONNX_CASES)
def test_onnx_graphs_match_keras_at_two_batch_sizes(tmp_path, likelihood, architecture):
    posterior = "full" if architecture == "conv" else "diagonal"
    model = _model(likelihood, architecture, posterior=posterior)
    written = export.export_onnx(model, str(tmp_path / "onnx"))
    assert set(written) == set(export.ONNX_GRAPHS)
    with open(tmp_path / "onnx" / "metadata.json") as f:
        metadata = json.load(f)
    assert metadata["opset"] == export.ONNX_OPSET and metadata["latent_dim"] == 3
    for name, path in written.items():
        proto = onnx.load(path)
        onnx.checker.check_model(proto)
        assert proto.opset_import[0].version == export.ONNX_OPSET
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        for batch in (1, 5):
            x, eps, z = _inputs(model, batch, seed=batch)
            reference = _reference(model, x, eps, z)[name]
            output_names = [o.name for o in session.get_outputs()]
            outputs = dict(zip(output_names, session.run(None, _feeds(name, x, eps, z))))
            for key, value in reference.items():
                np.testing.assert_allclose(outputs[key], value, rtol=1e-5,
                                           atol=_tolerance(model), err_msg=f"{name}/{key}")


def test_onnx_refuses_a_non_empty_directory_and_names_graphs_it_cannot_export(tmp_path):
    model = _model()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="refusing to overwrite"):
        export.export_onnx(model, str(tmp_path / "mine"))
    with pytest.raises(ValueError, match="Cannot export the `elbo` graph to ONNX"):
        export.export_onnx(model, str(tmp_path / "e"), graphs=("elbo",))
    with pytest.raises(ValueError, match="has no \\['loss'\\]"):
        export.export_onnx(model, str(tmp_path / "f"), graphs=("loss",))
