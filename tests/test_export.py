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

from helpers import invalid, raises, refused_rows

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
    q, sampler = model.posterior_sampler(*model.prepare_inputs(x))
    scale = q.stddev() if isinstance(model.posterior, tfvae.DiagonalGaussianPosterior) else q.scale.to_dense()
    z_q = objectives.posterior_sample(q, 1, noise=eps[None], reparameterize=sampler)[0]
    terms = objectives.elbo(x, q, model.likelihood_fn(), model.prior.distribution(),
                            kl=model.kl_method, noise=eps[None], reparameterize=sampler)
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
    expected_signatures = set(export.SAVED_MODEL_SIGNATURES) - {"score"}  # tables only
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
    for name in set(export.SAVED_MODEL_SIGNATURES) - {"score"}:  # (`score`: tables only)
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
    assert set(written) == set(export.ONNX_GRAPHS) - {"score"}  # (`score`: tables only)
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


# ---------------------------------------------------------------------------
# Arguments: a plain model name, a supported opset.

BAD_MODEL_NAMES = ["", ".", "..", "../../escaped", "a/b", "/abs", "a\\b", ".hidden", "a b",
                   "naïve", "x" * 256, None, 3]


@pytest.mark.parametrize("model_name", BAD_MODEL_NAMES)
def test_model_name_must_be_a_plain_name(tmp_path, model_name):
    base = tmp_path / "models"
    base.mkdir()
    with invalid("model_name", model_name, "plain name"):
        export.export_saved_model(_model(), str(base), model_name)
    assert not list(tmp_path.rglob("*"))[1:], list(tmp_path.rglob("*"))  # only `models/`, empty
    assert not (tmp_path.parent / "escaped").exists()


@pytest.mark.parametrize("model_name", ["tfvae", "vae-2", "my_model.v1", "A0"])
def test_plain_model_names_are_accepted(model_name):
    assert export.check_model_name(model_name) == model_name


def test_opset_must_be_one_the_installed_converters_support(tmp_path):
    from tf2onnx import constants

    low, high = export.supported_opsets()
    # The bounds come from the installed packages: tf2onnx knows an IR version for each,
    # onnx knows the opset, and the default lies inside.
    assert {low, high} <= set(constants.OPSET_TO_IR_VERSION)
    assert high <= onnx.defs.onnx_opset_version() and low <= export.ONNX_OPSET <= high
    model = _model()
    for opset in (0, -5, low - 1, high + 1, 2.5, "17", True):
        with invalid("opset", opset, f"[{low}, {high}]"):
            export.export_onnx(model, str(tmp_path / "onnx"), opset=opset)
    assert not list(tmp_path.iterdir())
    assert export.check_opset(None) == export.ONNX_OPSET


@pytest.mark.slow
def test_onnx_export_runs_at_the_lowest_and_highest_supported_opset(tmp_path):
    model = _model("gaussian_predicted", posterior="full")
    x, _, _ = _inputs(model, 3)
    q = model.encode(x)
    reference = {"mean": q.mean(), "scale": q.scale.to_dense()}
    for opset in export.supported_opsets():
        written = export.export_onnx(model, str(tmp_path / str(opset)), graphs=("encode",),
                                     opset=opset)
        proto = onnx.load(written["encode"])
        assert proto.opset_import[0].version == opset
        session = ort.InferenceSession(written["encode"], providers=["CPUExecutionProvider"])
        mean, scale = session.run(["mean", "scale"], {"x": x})
        np.testing.assert_allclose(mean, reference["mean"], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(scale, reference["scale"], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------
# The bad-input contract: a NaN output row exactly where the Keras model refuses the input row.


def _bad_x_rows(model, seed=0):
    """Rows of x the likelihood accepts and rows it refuses (NaN, inf, out of range, scaled
    wrongly, non-integer levels), in one batch."""
    x, _, _ = _inputs(model, 8, seed)
    levels = getattr(model.likelihood, "num_levels", None)
    x[1].flat[0] = np.nan
    x[2].flat[3] = np.inf
    x[3].flat[2] = -0.5
    x[4] = x[4] * 255 if not levels else x[4] / 255  # 0..255 for [0, 1] heads; [0, 1] for levels
    x[5].flat[1] = 256.0 if levels else 1.5
    if model.likelihood.support.closed[0]:
        x[6].flat[0] = 0.0  # still valid (the lower end of [0, 1] and of the levels)
    return x


def _refused_by_keras(model, x):
    """Per row: does the likelihood's own `validate_data` refuse it? (the independent answer)"""
    return refused_rows(model.likelihood, x)


def _traced(functions, name):
    """Graph `name` traced as the exporters trace it (eager calls would hit eager-only checks)."""
    fn, input_signature = functions[name]
    return tf.function(fn, input_signature=input_signature, autograph=False)


def _nan_rows(value):
    value = np.asarray(value).reshape(len(value), -1)
    assert np.all(np.isnan(value).all(1) | np.isfinite(value).all(1))  # whole rows or none
    return np.isnan(value).all(1)


@pytest.mark.parametrize("likelihood", list(tfvae.builders.LIKELIHOODS))
def test_every_graph_gives_nan_rows_exactly_where_the_likelihood_refuses_x(likelihood):
    model = _model(likelihood)
    x = _bad_x_rows(model)
    refused = _refused_by_keras(model, x)
    assert refused[1] and refused[2] and not refused[0] and not refused[6]
    _, eps, z = _inputs(model, len(x))
    functions = export.graph_functions(model)
    for name in ("serving_default", "encode", "reconstruct", "elbo"):
        fn = _traced(functions, name)
        outputs = fn(*[tf.constant({"x": x, "eps": eps}[key]) for key in export.GRAPH_INPUTS[name]])
        for key, value in outputs.items():
            np.testing.assert_array_equal(_nan_rows(value), refused, err_msg=f"{name}/{key}")
    # Valid rows are the Keras model's answers.
    good = ~refused
    encoded = _traced(functions, "encode")(tf.constant(x))
    np.testing.assert_allclose(encoded["mean"].numpy()[good], model.encode(x[good]).mean(),
                               rtol=1e-5, atol=1e-6)


def test_non_finite_noise_and_latents_give_nan_rows():
    model = _model(prior="mixture", num_components=2, posterior="full")
    x, eps, z = _inputs(model, 4)
    eps[1, 0], eps[3, 2], z[2, 1] = np.nan, -np.inf, np.inf
    functions = export.graph_functions(model)
    reconstruction = _traced(functions, "reconstruct")(tf.constant(x), tf.constant(eps))
    np.testing.assert_array_equal(_nan_rows(reconstruction["reconstruction"]), [0, 1, 0, 1])
    decoded = _traced(functions, "decode")(tf.constant(z))
    for key, value in decoded.items():
        np.testing.assert_array_equal(_nan_rows(value), [0, 0, 1, 0], err_msg=key)
    terms = _traced(functions, "elbo")(tf.constant(x), tf.constant(eps))
    np.testing.assert_array_equal(_nan_rows(terms["kl"]), [0, 1, 0, 1])


def _bad_y(condition_dim, batch):
    """One-hot rows, then rows that are not one-hot: two ones, none, a 0.5, a NaN."""
    y = np.eye(condition_dim, dtype="float32")[np.arange(batch) % condition_dim]
    y[1, :2] = 1.0
    y[2] = 0.0
    y[3, 0], y[3, 1] = 0.5, 0.5
    y[4, 0] = np.nan
    return y, np.array([i in (1, 2, 3, 4) for i in range(batch)])


@pytest.mark.parametrize("y_format", ["one_hot", "vectors"])
def test_y_rows_that_are_not_one_hot_give_nan_rows(y_format):
    model = _model(condition_dim=3)
    x, eps, z = _inputs(model, 6)
    y, not_one_hot = _bad_y(3, 6)
    expected = not_one_hot if y_format == "one_hot" else ~np.isfinite(y).all(1)
    functions = export.graph_functions(model, y_format=y_format)
    feeds = {"x": x, "eps": eps, "z": z}
    for name in ("serving_default", "encode", "decode", "reconstruct", "sample"):
        fn = _traced(functions, name)
        args = [tf.constant(feeds[key]) for key in export.GRAPH_INPUTS[name]] + [tf.constant(y)]
        for key, value in fn(*args).items():
            np.testing.assert_array_equal(_nan_rows(value), expected, err_msg=f"{name}/{key}")
    with invalid("y_format", "labels"):
        export.graph_functions(model, y_format="labels")


@pytest.mark.slow
@pytest.mark.parametrize("likelihood, architecture", [("bernoulli", "conv"),
                                                      ("discretized_logistic", "mlp")])
def test_saved_model_and_onnx_agree_on_bad_inputs(tmp_path, likelihood, architecture):
    """Both formats obey one contract: the same NaN rows, and the same (Keras) values elsewhere."""
    model = _model(likelihood, architecture, condition_dim=3)
    x = _bad_x_rows(model)
    batch = len(x)
    _, eps, z = _inputs(model, batch, seed=1)
    y, bad_y = _bad_y(3, batch)
    y[5:] = np.eye(3, dtype="float32")[[0, 1, 2]]  # rows 5.. have one-hot y (and maybe bad x)
    bad_y[5:] = False
    eps[7, 0] = np.nan
    z[6, 1] = np.inf
    bad_x = _refused_by_keras(model, x)
    bad_noise, bad_z = ~np.isfinite(eps).all(1), ~np.isfinite(z).all(1)
    expected = {
        "serving_default": bad_x | bad_y, "encode": bad_x | bad_y, "decode": bad_z | bad_y,
        "reconstruct": bad_x | bad_noise | bad_y, "sample": bad_noise | bad_y,
    }
    loaded = tf.saved_model.load(export.export_saved_model(model, str(tmp_path), "vae"))
    written = export.export_onnx(model, str(tmp_path / "onnx"))
    labels = np.argmax(np.nan_to_num(y), 1)
    feeds = {"x": x, "eps": eps, "z": z, "y": y}
    for name, nan_rows in expected.items():
        inputs = {key: feeds[key] for key in export.GRAPH_INPUTS[name] + ("y",)}
        if name == "sample":
            inputs["eps"] = eps
        saved = loaded.signatures[name](**{k: tf.constant(v) for k, v in inputs.items()})
        session = ort.InferenceSession(written.get(name, written["reconstruct"]),
                                       providers=["CPUExecutionProvider"]) if name in written else None
        ran = dict(zip([o.name for o in session.get_outputs()], session.run(None, inputs))) if session else {}
        for key, value in saved.items():
            value = value.numpy()
            np.testing.assert_array_equal(_nan_rows(value), nan_rows, err_msg=f"SavedModel {name}/{key}")
            if key in ran:
                np.testing.assert_array_equal(_nan_rows(ran[key]), nan_rows, err_msg=f"ONNX {name}/{key}")
                np.testing.assert_allclose(ran[key][~nan_rows], value[~nan_rows], rtol=1e-5,
                                           atol=_tolerance(model), err_msg=f"{name}/{key}")
    # Valid rows are the Keras model's answers.
    good = ~expected["reconstruct"]
    recon = loaded.signatures["reconstruct"](**{k: tf.constant(feeds[k]) for k in ("x", "eps", "y")})
    q, sampler = model.posterior_sampler(*model.prepare_inputs(x[good], labels[good]))
    z_q = objectives.posterior_sample(q, 1, noise=eps[good][None], reparameterize=sampler)[0]
    np.testing.assert_allclose(recon["reconstruction"].numpy()[good],
                               model.likelihood.mean(model.decode(z_q, y=labels[good])),
                               rtol=1e-5, atol=_tolerance(model))


# ---------------------------------------------------------------------------
# Writes: all or nothing; metadata; skipped graphs said out loud.


def test_a_failed_onnx_export_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = []

    def convert(name, fn, input_signature, path, opset):
        calls.append(name)
        if len(calls) == 2:
            raise ValueError(f"Cannot export the `{name}` graph to ONNX: injected")
        with open(path, "wb") as f:
            f.write(b"graph")

    monkeypatch.setattr(export, "_convert_to_onnx", convert)
    with pytest.raises(ValueError, match="injected"):
        export.export_onnx(_model(), str(tmp_path / "onnx"))
    assert calls and not list(tmp_path.iterdir())  # no directory, no hidden leftovers
    (tmp_path / "empty").mkdir()  # an empty directory stays as it was
    with pytest.raises(ValueError, match="injected"):
        calls.clear()
        export.export_onnx(_model(), str(tmp_path / "empty"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]
    assert not list((tmp_path / "empty").iterdir())


@pytest.mark.slow
def test_a_failed_saved_model_export_leaves_no_version_behind(tmp_path, monkeypatch):
    def write_file(path, data):  # the disk fills up after the SavedModel, at the metadata
        with open(path, "wb") as f:
            f.write(data[:3])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "_write_file", write_file)
    with pytest.raises(OSError, match="No space left"):
        export.export_saved_model(_model(), str(tmp_path), "vae")
    assert [p.name for p in tmp_path.rglob("*")] == ["vae"]  # no version 1, no hidden leftovers
    assert export.next_version(str(tmp_path), "vae") == 1


@pytest.mark.slow
def test_skipped_graphs_are_warned_about_and_recorded(tmp_path, caplog):
    model = _model(prior="mixture", num_components=2)
    with caplog.at_level("WARNING", logger="tfvae.export"):
        export.export_onnx(model, str(tmp_path / "onnx"), graphs=None)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("`sample`" in m and "MixtureOfGaussiansPrior" in m for m in warnings), warnings
    assert not any("`score`" in m for m in warnings), warnings  # (tables only: no loss here)
    with open(tmp_path / "onnx" / "metadata.json") as f:
        metadata = json.load(f)
    assert "no per-column terms" in metadata["skipped"]["score"]
    assert "MixtureOfGaussiansPrior" in metadata["skipped"]["sample"]
    assert "elbo" in metadata["skipped"] and set(metadata["graphs"]) == {"encode", "decode",
                                                                        "reconstruct"}
    assert metadata["inputs"]["reconstruct"] == {"x": [-1, 6, 5, 1], "eps": [-1, 3]}
    assert metadata["data_range"] == {"low": 0.0, "high": 1.0, "integers": False}

    caplog.clear()
    with caplog.at_level("WARNING", logger="tfvae.export"):
        path = export.export_saved_model(model, str(tmp_path / "models"), "vae")
    assert any("`sample`" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    with open(os.path.join(path, "assets.extra", "tfvae.json")) as f:
        saved = json.load(f)
    assert "MixtureOfGaussiansPrior" in saved["skipped"]["sample"] and "elbo" in saved["inputs"]
    assert set(tf.saved_model.load(path).signatures) == set(saved["inputs"])


# ---------------------------------------------------------------------------
# The guard on row reductions (issue 20): the same rows as the likelihood's own rule.


def _edge_x_rows(model):
    """Rows at the edges of each rule: bounds hit exactly, −0.0, one bad element in a big
    row, ±inf together, non-integer levels close to an integer, and (unbounded data)
    finite values whose row sum overflows float32."""
    x, _, _ = _inputs(model, 10, seed=3)
    levels = getattr(model.likelihood, "num_levels", None)
    low, high = model.likelihood.data_range
    x[0] = low if np.isfinite(low) else -3.0e38
    x[1] = high if np.isfinite(high) else 3.0e38  # Σ overflows: still valid data
    x[2].flat[-1] = -0.0
    x[3].flat[-1] = np.nextafter(np.float32(high if np.isfinite(high) else 3.4e38), np.inf)
    x[4].flat[0], x[4].flat[1] = np.inf, -np.inf
    x[5].flat[-1] = np.nan
    x[6].flat[4] = low - 1e-6 if np.isfinite(low) else -3.4e38  # (not a denormal: TF flushes)
    if levels:
        x[7].flat[2] = 3.0 + 2 ** -20
    x[8] = np.float32(1e-30) if not levels else x[8]
    return x


@pytest.mark.parametrize("likelihood", list(tfvae.builders.LIKELIHOODS))
def test_the_row_guard_refuses_exactly_the_rows_support_mask_refuses(likelihood):
    model = _model(likelihood)
    x = np.concatenate([_edge_x_rows(model), _bad_x_rows(model)])
    expected = ~model.likelihood.support_mask(tf.constant(x)).numpy()
    assert expected.any() and not expected.all()
    np.testing.assert_array_equal(_refused_by_keras(model, x), expected)
    encoded = _traced(export.graph_functions(model), "encode")(tf.constant(x))
    unguarded = _traced(export.graph_functions(model, guard=False), "encode")(tf.constant(x))
    for key, value in encoded.items():  # refused rows all NaN, the others untouched
        value = value.numpy()
        assert np.isnan(value[expected]).all(), key
        np.testing.assert_array_equal(value[~expected], unguarded[key].numpy()[~expected],
                                      err_msg=key)


def test_the_guard_compares_rows_not_elements():
    """No comparison or boolean op of the guarded graphs works on a whole `x`: the
    guard reads x in row reductions and compares `[B]` vectors (0.2.0 masked every
    element, which took most of ONNX Runtime's time at B = 1,000)."""
    boolean_ops = {"IsFinite", "IsNan", "IsInf", "Less", "LessEqual", "Greater", "GreaterEqual",
                   "Equal", "LogicalAnd", "LogicalOr", "LogicalNot", "All", "SelectV2", "Select"}
    for likelihood in ("bernoulli", "discretized_logistic", "gaussian_predicted"):
        model = _model(likelihood)
        for name in ("encode", "reconstruct"):
            fn, input_signature = export.graph_functions(model)[name]
            graph = tf.function(fn, input_signature=input_signature,
                                autograph=False).get_concrete_function().graph
            wide = [op.name for op in graph.get_operations() if op.type in boolean_ops
                    and any(out.shape.rank is None or out.shape.rank > 1 for out in op.outputs)]
            assert not wide, (likelihood, name, wide)


def test_inputs_with_other_row_counts_are_an_error_not_a_broadcast():
    model = _model(condition_dim=3)
    functions = export.graph_functions(model)
    x, eps, _ = _inputs(model, 7)
    y = np.eye(3, dtype="float32")[np.arange(7) % 3]
    reconstruct = _traced(functions, "reconstruct")
    assert reconstruct(tf.constant(x), tf.constant(eps), tf.constant(y))[
        "reconstruction"].shape[0] == 7
    for bad_eps, bad_y in ((eps[:3], y), (eps[:1], y), (eps, y[:1]), (eps, y[:0])):
        with pytest.raises(tf.errors.InvalidArgumentError, match="rows_must_match"):
            reconstruct(tf.constant(x), tf.constant(bad_eps), tf.constant(bad_y))
    with pytest.raises(tf.errors.InvalidArgumentError, match="rows_must_match"):
        _traced(functions, "sample")(tf.constant(eps), tf.constant(y[:1]))


@pytest.mark.parametrize("architecture", ["mlp", "conv"])
def test_an_empty_batch_gives_empty_outputs(architecture):
    model = _model("discretized_logistic", architecture, condition_dim=3)
    functions = export.graph_functions(model)
    assert set(functions) == set(export.SAVED_MODEL_SIGNATURES) - {"score"}  # (tables only)
    for name in functions:
        fn, input_signature = functions[name]
        empty = [tf.zeros([0] + spec.shape[1:].as_list()) for spec in input_signature]
        one = [tf.zeros([1] + spec.shape[1:].as_list()) for spec in input_signature]
        traced = _traced(functions, name)
        got, reference = traced(*empty), traced(*one)
        assert set(got) == set(reference)
        for key, value in got.items():
            assert value.shape == (0,) + tuple(reference[key].shape[1:]), (name, key)


# ---------------------------------------------------------------------------
# Leftovers of killed exports.


def _dead_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _fake_convert(name, fn, input_signature, path, opset):
    """A one-node graph in place of the conversion (fast)."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], name, [x], [y])
    onnx.save(helper.make_model(graph), path)


def test_the_next_export_removes_staging_folders_of_dead_processes(tmp_path, monkeypatch):
    import hashlib
    import socket

    monkeypatch.setattr(export, "_convert_to_onnx", _fake_convert)
    host = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
    other_host = "0" * 8 if host != "0" * 8 else "1" * 8
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = _dead_pid()
        removed = [f".onnx.tmp-{dead}-{host}-0123abcd",  # killed on this host
                   f".onnx.tmp-{dead}-0123abcd",  # killed, named by 0.2.0
                   f".1.tmp-{os.getpid()}-{host}-0123abcd",  # an earlier process with our PID
                   ".1.tmp-99999999999999999999-0123abcd"]  # no such PID anywhere
        kept = [f".onnx.tmp-{running.pid}-{host}-0123abcd",  # an export still running
                f".onnx.tmp-{dead}-{other_host}-0123abcd",  # another machine's (shared disk)
                ".onnx.tmp-mine"]  # not an export's name
        for name in removed + kept:
            (tmp_path / name).mkdir()
            (tmp_path / name / "encode.onnx").write_bytes(b"half")
        export.export_onnx(_model(), str(tmp_path / "onnx"))
    finally:
        running.kill()
        running.wait()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept + ["onnx"])


@pytest.mark.slow
def test_an_export_killed_mid_write_is_cleaned_up_by_the_next(tmp_path, monkeypatch):
    script = f"""
import os, signal, sys
sys.path.insert(0, {os.path.dirname(os.path.dirname(os.path.abspath(__file__)))!r})
import tfvae
from tfvae import export
def convert(name, fn, input_signature, path, opset):
    open(path, "wb").write(b"half a graph")
    os.kill(os.getpid(), signal.SIGKILL)
export._convert_to_onnx = convert
export.export_onnx(tfvae.build_vae((6, 5, 1), 3, hidden_units=(16,), seed=0), {str(tmp_path / "onnx")!r})
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=300,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == -9, result.stderr[-2000:]
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert len(leftovers) == 1 and leftovers[0].startswith(".onnx.tmp-"), leftovers
    monkeypatch.setattr(export, "_convert_to_onnx", _fake_convert)
    export.export_onnx(_model(), str(tmp_path / "onnx"))
    assert [p.name for p in tmp_path.iterdir()] == ["onnx"]


# ---------------------------------------------------------------------------
# Both formats: one named batch dimension, empty batches, each weight once, sizes.


@pytest.mark.slow
@pytest.mark.parametrize("architecture", ["mlp", "conv"])
def test_both_formats_share_one_batch_dimension_and_take_empty_batches(tmp_path, architecture):
    model = _model("bernoulli", architecture, condition_dim=3)
    written = export.export_onnx(model, str(tmp_path / "onnx"))
    loaded = tf.saved_model.load(export.export_saved_model(model, str(tmp_path / "sm"), "vae"))
    x, eps, z = _inputs(model, 4)
    y = np.eye(3, dtype="float32")[[0, 1, 2, 0]]
    feeds = {"x": x, "eps": eps, "z": z, "y": y}
    for name, path in written.items():
        proto = onnx.load(path)
        for value in list(proto.graph.input) + list(proto.graph.output):
            assert value.type.tensor_type.shape.dim[0].dim_param == "batch", (name, value.name)
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        inputs = {i.name: feeds[i.name] for i in session.get_inputs()}
        empty = {key: value[:0] for key, value in inputs.items()}
        full = dict(zip([o.name for o in session.get_outputs()], session.run(None, inputs)))
        got = dict(zip([o.name for o in session.get_outputs()], session.run(None, empty)))
        saved = loaded.signatures[name](**{k: tf.constant(v) for k, v in empty.items()})
        for key, value in full.items():
            assert got[key].shape == (0,) + value.shape[1:], (name, key)
            assert tuple(saved[key].shape) == (0,) + value.shape[1:], (name, key)
        if len(inputs) > 1:  # a row count that differs from the first input's is refused
            mismatched = {**inputs, list(inputs)[-1]: inputs[list(inputs)[-1]][:1]}
            with pytest.raises(Exception, match="rows_must_match"):  # onnxruntime's types
                session.run(None, mismatched)
            with pytest.raises(tf.errors.InvalidArgumentError, match="rows_must_match"):
                loaded.signatures[name](**{k: tf.constant(v) for k, v in mismatched.items()})


@pytest.mark.slow
def test_the_saved_model_holds_each_weight_once_and_both_formats_report_sizes(tmp_path):
    model = _model("gaussian_predicted", hidden_units=(64, 32))
    weights = sum(w.nbytes for w in model.get_weights())
    path = export.export_saved_model(model, str(tmp_path / "sm"), "vae")
    reader = tf.train.load_checkpoint(os.path.join(path, "variables", "variables"))
    shapes = {k: v for k, v in reader.get_variable_to_shape_map().items()
              if k != "_CHECKPOINTABLE_OBJECT_GRAPH"}
    stored = sum(reader.get_tensor(key).nbytes for key in shapes)
    assert stored <= weights, (stored, weights, sorted(shapes))  # 0.2.0: twice the weights
    kernels = [w for w in model.weights if len(w.shape) == 2]
    assert sum(len(s) == 2 for s in shapes.values()) == len(kernels)
    with open(os.path.join(path, export.SAVED_MODEL_METADATA)) as f:
        metadata = json.load(f)
    assert metadata["weight_bytes"] == weights
    files = [os.path.join(d, n) for d, _, names in os.walk(path) for n in names
             if not n.endswith("tfvae.json")]
    assert metadata["saved_model_bytes"] == sum(os.path.getsize(f) for f in files)
    assert metadata["variables_bytes"] < 1.05 * weights + 4096

    written = export.export_onnx(model, str(tmp_path / "onnx"))
    with open(tmp_path / "onnx" / "metadata.json") as f:
        onnx_metadata = json.load(f)
    assert onnx_metadata["weight_bytes"] == weights
    assert onnx_metadata["onnx_bytes"] == {name: os.path.getsize(p) for name, p in written.items()}
    shared = tmp_path / "onnx" / export.WEIGHTS_FILE
    assert onnx_metadata["weights"]["bytes"] == os.path.getsize(shared)
    assert onnx_metadata["onnx_total_bytes"] == sum(
        os.path.getsize(p) for p in written.values()) + os.path.getsize(shared)


@pytest.mark.slow
def test_the_onnx_graphs_hold_each_weight_once_in_one_shared_file(tmp_path):
    """Four graphs, three of them with the decoder: every Keras weight is in `weights.bin`
    exactly once (its bytes, found by search), nothing weight-sized is left inside a graph,
    and the graphs still compute the model's answers from their path."""
    model = _model(hidden_units=(24, 12))
    rng = np.random.default_rng(3)  # distinct values: no two weights share their bytes
    model.set_weights([rng.standard_normal(w.shape).astype(w.dtype) for w in model.get_weights()])
    written = export.export_onnx(model, str(tmp_path / "onnx"))
    assert sorted(os.listdir(tmp_path / "onnx")) == sorted(
        [f"{name}.onnx" for name in written] + [export.WEIGHTS_FILE, "metadata.json"])
    stored = (tmp_path / "onnx" / export.WEIGHTS_FILE).read_bytes()
    network = [np.asarray(w) for w in model.trainable_weights]  # (not the training schedule)
    for weight in network:
        assert stored.count(weight.tobytes()) == 1, weight.shape
    weights = sum(w.nbytes for w in network)
    assert weights <= len(stored) <= weights + 64 * len(network)
    for name, path in written.items():
        proto = onnx.load(path, load_external_data=False)
        inline = [t.name for t in proto.graph.initializer
                  if t.data_location != onnx.TensorProto.EXTERNAL and np.prod(t.dims) > 1
                  and t.data_type == onnx.TensorProto.FLOAT]
        assert not inline, (name, inline)
    x, eps, z = _inputs(model, 5)
    reference = _reference(model, x, eps, z)
    for name, path in written.items():
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        outputs = dict(zip([o.name for o in session.get_outputs()],
                           session.run(None, _feeds(name, x, eps, z))))
        for key, value in reference[name].items():
            np.testing.assert_allclose(outputs[key], value, rtol=1e-5, atol=2e-5)


# ---------------------------------------------------------------------------
# int8.


def test_a_graph_without_matmul_weights_is_refused_for_quantization():
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 3])
    added = helper.make_model(helper.make_graph([helper.make_node("Add", ["x", "x"], ["out"])],
                                                "g", [x], [out]))
    assert "no MatMul or Gemm" in export.quantization_refusal(added)
    weight = helper.make_tensor("w", TensorProto.FLOAT, [3, 3], [0.0] * 9)
    multiplied = helper.make_model(helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["out"])], "g", [x], [out], [weight]))
    assert export.quantization_refusal(multiplied) is None
    model = _model()
    with invalid("quantize", "int4"):
        export.export_onnx(model, "unused", quantize="int4", validation_data=np.zeros((1, 6, 5, 1)))
    with invalid("validation_data", None):
        export.export_onnx(model, "unused", quantize="int8")


def _one_sample_elbo(model, x, mean, scale, noise):
    """log p(x|z) + log N(z; 0, I) − log N(z; mean, scale²) at z = mean + scale · noise,
    the Gaussian terms with scipy."""
    from scipy import stats

    z = mean + scale * noise
    log_px = model.decode(z).log_prob(x).numpy()
    return (log_px + stats.norm.logpdf(z).sum(1)
            - stats.norm.logpdf(z, mean, scale).sum(1))


@pytest.mark.slow
def test_int8_export_writes_quantized_graphs_with_their_measured_parity(tmp_path, monkeypatch):
    model = _model(hidden_units=(64, 32))
    rng = np.random.default_rng(5)
    x = (rng.uniform(size=(40,) + model.event_shape) < 0.5).astype("float32")
    written = export.export_onnx(model, str(tmp_path / "onnx"), quantize="int8",
                                 validation_data=x)
    with open(tmp_path / "onnx" / "metadata.json") as f:
        metadata = json.load(f)
    assert set(metadata["graphs"]) == set(written) == set(metadata["quantized"])
    noise = np.random.default_rng(0).standard_normal((40, 3)).astype("float32")
    sessions = {}
    for name, path in written.items():
        entry = metadata["quantized"][name]
        int8_path = tmp_path / "onnx" / f"{name}.int8.onnx"
        assert entry["file"] == int8_path.name
        assert entry["onnx_bytes"] == os.path.getsize(int8_path)
        # `bytes`, `float_bytes`: each graph on its own, with its weights inside it.
        assert entry["bytes"] == pytest.approx(len(onnx.load(str(int8_path)).SerializeToString()),
                                               rel=0.02)
        assert entry["float_bytes"] == pytest.approx(len(onnx.load(path).SerializeToString()),
                                                     rel=0.02)
        assert entry["bytes"] < 0.8 * entry["float_bytes"]
        assert set(entry["latency_ms"]) == {"1", "1000"}
        assert entry["validation_examples"] == 40
        proto = onnx.load(str(int8_path))
        assert any(node.op_type in ("MatMulInteger", "DynamicQuantizeMatMul")
                   for node in proto.graph.node)
        sessions[name] = (ort.InferenceSession(path, providers=["CPUExecutionProvider"]),
                          ort.InferenceSession(str(int8_path), providers=["CPUExecutionProvider"]))
    # The int8 graphs share their weights too, in their own file (an int8-only device needs
    # only it), a quarter of the float kernels' bytes and the float biases.
    int8_weights = tmp_path / "onnx" / export.INT8_WEIGHTS_FILE
    assert metadata["int8_weights"]["bytes"] == os.path.getsize(int8_weights)
    assert os.path.getsize(int8_weights) < 0.5 * metadata["weights"]["bytes"]
    # The recorded errors are the two graphs' differences on the validation data.
    float_q, int8_q = (dict(zip(["mean", "scale"], s.run(["mean", "scale"], {"x": x})))
                       for s in sessions["encode"])
    for key in ("mean", "scale"):
        error = np.max(np.abs(int8_q[key] - float_q[key]))
        assert 0 < error < 0.1
        np.testing.assert_allclose(metadata["quantized"]["encode"]["max_abs_error"][key], error,
                                   rtol=1e-6)
    # ELBO in nats: the int8 encoder's q with the float decoder against the float path.
    elbo = metadata["quantized"]["encode"]["elbo_nats"]
    float_elbo = _one_sample_elbo(model, x, float_q["mean"], float_q["scale"], noise)
    int8_elbo = _one_sample_elbo(model, x, int8_q["mean"], int8_q["scale"], noise)
    np.testing.assert_allclose(elbo["float"], float_elbo.mean(), rtol=1e-4)
    np.testing.assert_allclose(elbo["int8"], int8_elbo.mean(), rtol=1e-4)
    np.testing.assert_allclose(elbo["mean_difference"], (int8_elbo - float_elbo).mean(),
                               atol=1e-3)
    assert "refused" in metadata["quantized"]["reconstruct"]["elbo_nats"]
    assert abs(metadata["quantized"]["decode"]["elbo_nats"]["mean_difference"]) < 1.0

    # A graph whose int8 version would not be smaller (a small conv decoder whose
    # convolutions stay convolutions: its MatMul weights are few, the quantization ops add
    # bytes) is refused, with the reason.
    from tfvae import onnx_dense

    monkeypatch.setattr(onnx_dense, "MAX_ELEMENTS", 0)
    conv = _model(architecture="conv")
    export.export_onnx(conv, str(tmp_path / "conv"), graphs=("decode",), quantize="int8",
                       validation_data=x)
    with open(tmp_path / "conv" / "metadata.json") as f:
        assert "not smaller" in json.load(f)["quantized"]["decode"]["refused"]
    assert sorted(os.listdir(tmp_path / "conv")) == ["decode.onnx", "metadata.json", "weights.bin"]

    # A quantizer that fails is a refusal with its reason, not a crash.
    import onnxruntime.quantization as quantization

    def broken(*args, **kwargs):
        raise RuntimeError("injected failure\nwith a second line")

    monkeypatch.setattr(quantization, "quantize_dynamic", broken)
    export.export_onnx(model, str(tmp_path / "broken"), graphs=("encode",), quantize="int8",
                       validation_data=x)
    with open(tmp_path / "broken" / "metadata.json") as f:
        refused = json.load(f)["quantized"]["encode"]
    assert refused == {"refused": "onnxruntime's quantizer failed: injected failure"}
    assert sorted(os.listdir(tmp_path / "broken")) == ["encode.onnx", "metadata.json",
                                                      "weights.bin"]


@pytest.mark.slow
def test_static_int8_calibrates_activation_ranges_on_the_calibration_data(tmp_path):
    """`quantize="int8-static"`: activations are quantized with ranges from
    `calibration_data` (here x in [0, 0.5): x's uint8 scale is 0.5 / 255, where the
    validation data in [0, 1) would give 1 / 255), weights are int8, and the recorded
    parity is the graphs' difference on the validation data."""
    model = _model(hidden_units=(64, 32))
    rng = np.random.default_rng(7)
    x = rng.uniform(size=(60,) + model.event_shape).astype("float32")
    calibration = 0.5 * rng.uniform(size=(50,) + model.event_shape).astype("float32")
    with invalid("calibration_data", None):
        export.export_onnx(model, "unused", quantize="int8-static", validation_data=x)
    with raises("`calibration_data`", "int8-static' only"):
        export.export_onnx(model, "unused", quantize="int8", validation_data=x,
                           calibration_data=calibration)
    written = export.export_onnx(model, str(tmp_path / "onnx"), graphs=("encode",),
                                 quantize="int8-static", validation_data=x,
                                 calibration_data=calibration)
    with open(tmp_path / "onnx" / "metadata.json") as f:
        metadata = json.load(f)
    entry = metadata["quantized"]["encode"]
    assert metadata["quantize"] == "int8-static" and entry["mode"] == "static"
    assert entry["calibration_examples"] == 50 and entry["validation_examples"] == 60
    int8_path = str(tmp_path / "onnx" / entry["file"])
    proto = onnx.load(int8_path)
    ops = {node.op_type for node in proto.graph.node}
    assert "QuantizeLinear" in ops and "DynamicQuantizeLinear" not in ops
    initializers = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    x_flat = next(node.output[0] for node in proto.graph.node
                  if node.op_type == "Reshape" and node.input[0] == "x")
    x_scale = next(float(initializers[node.input[1]]) for node in proto.graph.node
                   if node.op_type == "QuantizeLinear" and node.input[0] == x_flat)
    np.testing.assert_allclose(x_scale, calibration.max() / 255, rtol=1e-5)
    weights = [initializers[node.input[0]] for node in proto.graph.node
               if node.op_type == "DequantizeLinear" and node.input[0] in initializers
               and initializers[node.input[0]].ndim == 2]
    assert weights and all(w.dtype == np.int8 for w in weights)
    float_session = ort.InferenceSession(written["encode"], providers=["CPUExecutionProvider"])
    int8_session = ort.InferenceSession(int8_path, providers=["CPUExecutionProvider"])
    for key in ("mean", "scale"):
        error = np.max(np.abs(int8_session.run([key], {"x": x})[0]
                              - float_session.run([key], {"x": x})[0]))
        assert 0 < error < np.inf  # (x above the calibrated 0.5 saturates: not small here)
        np.testing.assert_allclose(entry["max_abs_error"][key], error, rtol=1e-6)
    assert np.isfinite(entry["elbo_nats"]["mean_difference"])


@pytest.mark.slow
def test_the_export_command_quantizes_with_parity_on_the_runs_validation_data(
        digits_run, tmp_path, capsys, monkeypatch):
    """`tfvae export --format onnx --quantize int8` (here rather than in test_cli.py: it is
    the export module's metadata that is checked)."""
    from tfvae import cli, runs

    output = str(tmp_path / "onnx")
    assert cli.main(["export", digits_run, "--format", "onnx", "--output", output,
                     "--quantize", "int8"]) == 0
    printed = capsys.readouterr().out
    assert "encode (int8)" in printed and "nats" in printed
    with open(os.path.join(output, "metadata.json")) as f:
        metadata = json.load(f)
    config = runs.read_config(os.path.join(digits_run, runs.RUN_FILE))
    x, _ = runs.held_out(config)
    assert metadata["quantized"]["encode"]["validation_examples"] == min(len(x), 1000)
    assert metadata["quantized"]["encode"]["elbo_nats"]["float"] < 0
    for name in metadata["graphs"]:
        assert os.path.exists(os.path.join(output, f"{name}.int8.onnx"))
    assert cli.main(["export", digits_run, "--format", "saved_model", "--output",
                     str(tmp_path / "sm"), "--quantize", "int8"]) == 2
    assert "--format onnx only" in capsys.readouterr().err
    assert not (tmp_path / "sm").exists()

    # int8-static: calibrated on the run's training split (its first 512 examples).
    given = {}

    def export_onnx(model, directory, **kwargs):
        given.update(kwargs)
        os.makedirs(directory)
        with open(os.path.join(directory, export.ONNX_METADATA), "w") as f:
            json.dump({"quantized": {}}, f)
        return {}

    monkeypatch.setattr(export, "export_onnx", export_onnx)
    assert cli.main(["export", digits_run, "--format", "onnx", "--output",
                     str(tmp_path / "static"), "--quantize", "int8-static"]) == 0
    train_x, _ = runs.held_out(config, split="train")
    assert given["quantize"] == "int8-static"
    np.testing.assert_array_equal(given["calibration_data"], train_x[:512])
    np.testing.assert_array_equal(given["validation_data"], x[:1000])


def test_the_row_guard_excludes_the_open_ends_a_likelihood_declares():
    class OpenUnitLikelihood(tfvae.ContinuousBernoulliLikelihood):
        support = tfvae.heads.Support(0.0, 1.0, closed=(False, True))

    head = OpenUnitLikelihood((3,))
    x = tf.constant([[0.0, 0.5, 0.5], [0.5, 0.5, 1.0], [1e-7, 0.5, 0.9], [0.5, -0.0, 0.5]])
    expected = [False, True, True, False]  # 0 (and −0) excluded at the open low end only
    np.testing.assert_array_equal(head.support_mask(x).numpy(), expected)
    np.testing.assert_array_equal(export._x_rows(head)(x).numpy(), expected)
