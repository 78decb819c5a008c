"""VQ-VAE (`tfvae.vq`): quantisation, straight-through gradients, losses, EMA, the uniform code
prior, training through `build_vae` and the CLI, serialisation and export.

References are numpy / scipy computations of the definitions (nearest code by brute
force, the losses written out, Φ from scipy), not the module's own output.
"""

import json
import math
import os
import warnings

import keras
import numpy as np
import onnxruntime as ort
import pytest
import tensorflow as tf
from scipy import stats

import tfvae
from tfvae import export
from tfvae import vq

from helpers import TINY_RUN, splits_npz
from helpers import raises


def _posterior(latent_dim=6, codebook_size=5, code_dim=2, **kwargs):
    return tfvae.VQPosterior(latent_dim, codebook_size=codebook_size, code_dim=code_dim,
                             seed=0, **kwargs)


def _nearest_numpy(vectors, codebook):
    distances = np.sum(np.square(vectors[..., None, :] - codebook), axis=-1)  # brute force
    return np.argmin(distances, axis=-1)


def _binary(n, shape, seed=0):
    return (np.random.default_rng(seed).uniform(size=(n,) + shape) < 0.5).astype("float32")


def _mlp_vq(**kwargs):
    return tfvae.build_vae((8,), 4, hidden_units=(8,), seed=0, posterior="vq",
                           codebook_size=5, **kwargs)


# ---------------------------------------------------------------------------
# Quantisation, gradients and losses.


def test_quantisation_picks_the_nearest_code():
    rng = np.random.default_rng(1)
    codebook = rng.standard_normal((7, 3)).astype("float32")
    vectors = rng.standard_normal((50, 4, 3)).astype("float32")
    got = vq.nearest_codes(tf.constant(vectors), tf.constant(codebook)).numpy()
    np.testing.assert_array_equal(got, _nearest_numpy(vectors, codebook))

    posterior = _posterior(latent_dim=6, codebook_size=5, code_dim=2)
    z_e = rng.standard_normal((9, 6)).astype("float32")
    parameters = posterior.parameters(tf.constant(z_e))
    book = posterior.codebook.numpy()
    codes = _nearest_numpy(z_e.reshape(9, 3, 2), book)
    np.testing.assert_array_equal(parameters["codes"], codes)
    np.testing.assert_array_equal(parameters["z_q"], book[codes].reshape(9, 6))


def test_straight_through_gradient_and_losses_match_hand_computations():
    posterior = _posterior(latent_dim=4, codebook_size=3, code_dim=2, commitment_weight=0.3)
    rng = np.random.default_rng(2)
    z_e = tf.Variable(rng.standard_normal((5, 4)).astype("float32"))
    weights = tf.constant(rng.standard_normal((4,)).astype("float32"))

    def f(z):  # a nonlinear "decoder loss"
        return tf.reduce_sum(tf.sin(z) * weights)

    with tf.GradientTape(persistent=True) as tape:
        parameters = posterior.parameters(z_e)
        z = posterior.reparameterize(parameters, tf.zeros((5, 4)))
        loss = f(z)
        terms = posterior.loss_terms(parameters, training=True)
    z_q = posterior.codebook.numpy()[_nearest_numpy(z_e.numpy().reshape(5, 2, 2),
                                                    posterior.codebook.numpy())].reshape(5, 4)
    np.testing.assert_array_equal(z, z_q)  # the value of z_q, exactly
    # d loss / d z_e is d f / d z at z_q: cos(z_q) · w.
    np.testing.assert_allclose(tape.gradient(loss, z_e), np.cos(z_q) * weights.numpy(),
                               rtol=1e-6)
    assert tape.gradient(loss, posterior.codebook) is None  # the decoder never moves codes

    squared = np.sum(np.square(z_e.numpy() - z_q), axis=-1)
    np.testing.assert_allclose(terms["codebook"], squared, rtol=1e-6)
    np.testing.assert_allclose(terms["commitment"], 0.3 * squared, rtol=1e-6)
    # The codebook loss moves the codes only, the commitment loss the encoder only.
    assert tape.gradient(terms["codebook"], z_e) is None
    assert tape.gradient(terms["commitment"], posterior.codebook) is None
    np.testing.assert_allclose(tape.gradient(terms["commitment"], z_e),
                               2 * 0.3 * (z_e.numpy() - z_q), rtol=1e-5)
    expected = np.zeros((3, 2), np.float32)
    codes = parameters["codes"].numpy()
    for b in range(5):
        for p in range(2):
            expected[codes[b, p]] += 2 * (z_q[b, 2 * p:2 * p + 2] - z_e.numpy()[b, 2 * p:2 * p + 2])
    np.testing.assert_allclose(tf.convert_to_tensor(
        tape.gradient(terms["codebook"], posterior.codebook)), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kl", ["auto", "mc"])
def test_kl_is_positions_times_log_k(kl):
    model = tfvae.build_vae((8,), 6, hidden_units=(8,), seed=0, posterior="vq",
                            codebook_size=7, code_dim=2, kl=kl)
    terms = model.elbo(_binary(4, (8,)), seed=0)
    # "mc" asks TFP's objects: log q(z_q) = 0 under the point mass, log p = −3 log 7.
    np.testing.assert_allclose(terms["kl"], np.full(4, 3 * math.log(7)), rtol=1e-6)
    np.testing.assert_allclose(terms["elbo"], terms["reconstruction"] - 3 * math.log(7),
                               rtol=1e-6)


def test_bad_options_are_refused_by_name():
    with raises("`latent_dim`", "latent_dim=5", "code_dim=2"):
        tfvae.VQPosterior(5, code_dim=2)
    with raises("`ema_decay`", "ema_decay=1.0"):
        _mlp_vq(ema_decay=1.0)
    with raises("`codebook_size`", "codebook_size=0"):
        tfvae.build_vae((8,), 4, posterior="vq", codebook_size=0)
    with raises("`prior`", "prior='mixture'"):
        tfvae.build_vae((8,), 4, posterior="vq", prior="mixture")
    with raises("`prior`", "UniformCodePrior"):
        posterior = _posterior(latent_dim=4)
        tfvae.VAE(tfvae.MLP(4, (8,)), tfvae.MLP(8, (8,)), posterior,
                  tfvae.BernoulliLikelihood((8,)), prior=tfvae.StandardNormalPrior(4))
    with raises("`codebook_size`", "posterior='vq'"):  # another posterior's option
        tfvae.build_vae((8,), 4, codebook_size=16)


def test_cli_refuses_a_prior_name_for_vq_in_one_line(tmp_path, capsys):
    from tfvae import cli

    code = cli.main(["train", "--output", str(tmp_path / "r"), *TINY_RUN, "--posterior", "vq",
                     "--prior", "mixture"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "brings its own prior" in err, err
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------
# The prior and the EMA update.


def test_uniform_code_prior_maps_noise_to_uniform_codes():
    model = tfvae.build_vae((8,), 6, hidden_units=(8,), seed=0, posterior="vq",
                            codebook_size=5, code_dim=2)
    prior, book = model.prior, model.posterior.codebook.numpy()
    eps = np.random.default_rng(3).standard_normal((4000, 6)).astype("float32")
    expected = np.minimum(np.floor(5 * stats.norm.cdf(eps[:, ::2])), 4).astype(int)
    codes = prior.codes_from_noise(tf.constant(eps)).numpy()
    np.testing.assert_array_equal(codes, expected)
    np.testing.assert_allclose(prior.reparameterize(tf.constant(eps)), book[codes].reshape(-1, 6))
    counts = np.bincount(codes.reshape(-1), minlength=5)
    assert stats.chisquare(counts).pvalue > 1e-3  # uniform over the K codes
    # p(z) as a TFP object: samples on the code grid, log p = −positions · log K there.
    z = model.prior.distribution().sample(64, seed=(1, 2)).numpy().reshape(64, 3, 2)
    assert np.all(np.min(np.abs(z[:, :, None, :] - book).sum(-1), axis=-1) == 0)
    np.testing.assert_allclose(model.prior.distribution().log_prob(z.reshape(64, 6)),
                               -3 * math.log(5), rtol=1e-6)
    assert model.sample(3, seed=0).shape == (3, 8)


def test_ema_update_moves_codes_to_the_mean_of_their_encoder_outputs():
    posterior = _posterior(latent_dim=2, codebook_size=4, code_dim=2, ema_decay=0.5)
    assert not posterior.codebook.trainable and posterior.metric_names == ("commitment",)
    before = posterior.codebook.numpy().copy()
    z_e = tf.constant(np.random.default_rng(4).standard_normal((40, 2)).astype("float32"))
    codes = posterior.parameters(z_e)["codes"].numpy()[:, 0]
    used = np.unique(codes)
    means = np.stack([z_e.numpy()[codes == k].mean(0) for k in used])
    first = None
    for step in range(40):
        terms = posterior.loss_terms(posterior.parameters(z_e), training=True)
        if first is None:
            first = posterior.codebook.numpy().copy()
            # One step: each used code moves toward the mean of its vectors.
            assert np.all(np.linalg.norm(first[used] - means, axis=-1)
                          < np.linalg.norm(before[used] - means, axis=-1))
        assert set(terms) == {"commitment"}
    # Held fixed, the assignments converge to their clusters' means (k-means' update).
    after = posterior.codebook.numpy()
    final_codes = _nearest_numpy(z_e.numpy(), after)
    for k in np.unique(final_codes):
        np.testing.assert_allclose(after[k], z_e.numpy()[final_codes == k].mean(0), atol=1e-3)
    # Evaluation (training=False) leaves the codebook alone.
    posterior.loss_terms(posterior.parameters(z_e), training=False)
    np.testing.assert_array_equal(posterior.codebook.numpy(), after)


# ---------------------------------------------------------------------------
# Training, serialisation and usage.


def _fit(model, jit_compile, x):
    model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=jit_compile)
    assert model.jit_compile is jit_compile
    return model.fit(x, epochs=2, batch_size=16, shuffle=False, verbose=0).history


# (The plain MLP VQ model: the conformance registry's "vq" variant, XLA = eager.)
_BUILDS = {
    "mlp_ema": (lambda: _mlp_vq(ema_decay=0.9), (8,)),
    "conv": (lambda: tfvae.build_vae((4, 4, 1), 4, architecture="conv", filters=(4,), seed=0,
                                     posterior="vq", codebook_size=5), (4, 4, 1)),
}


@pytest.mark.slow
def test_fit_under_xla_matches_fit_without():
    """MLP with the EMA codebook, and conv: the same history and weights with XLA."""
    for name, (build, shape) in _BUILDS.items():
        x = _binary(32, shape)
        eager, xla = build(), build()
        initial = eager.posterior.codebook.numpy().copy()
        history = _fit(eager, False, x)
        xla_history = _fit(xla, True, x)
        names = {"loss", "elbo", "reconstruction", "kl"} | set(eager.posterior.metric_names)
        assert set(history) == names | {"beta", "learning_rate"}, name
        for key, values in history.items():
            np.testing.assert_allclose(xla_history[key], values, rtol=1e-4, atol=1e-4,
                                       err_msg=f"{name} {key}")
        # The codebook learned (by gradient, or by EMA).
        assert np.max(np.abs(eager.posterior.codebook.numpy() - initial)) > 1e-3, name
        for got, want in zip(xla.get_weights(), eager.get_weights()):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=name)


def test_keras_round_trip_keeps_config_weights_and_terms(tmp_path):
    model = _mlp_vq(commitment_weight=0.5)
    x = _binary(16, (8,))
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert type(loaded.posterior) is tfvae.VQPosterior
    assert type(loaded.prior) is tfvae.UniformCodePrior
    config = json.loads(json.dumps(model.get_config()))
    assert json.loads(json.dumps(loaded.get_config())) == config
    assert config["posterior"]["config"]["commitment_weight"] == 0.5
    for got, want in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(got, want)
    seed = tfvae.random.make_seed(3)
    expected = model.objective_terms(tf.constant(x), seed=seed)
    got = loaded.objective_terms(tf.constant(x), seed=seed)
    assert set(got) == set(expected) >= {"codebook", "commitment"}
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    # The loaded prior is bound to the loaded codebook.
    np.testing.assert_array_equal(loaded.sample(4, seed=1), model.sample(4, seed=1))


def test_codebook_usage_counts_the_codes_of_the_data():
    model = tfvae.build_vae((8,), 4, hidden_units=(8,), seed=0, posterior="vq",
                            codebook_size=6, code_dim=1)
    x = _binary(50, (8,), seed=5)
    z_e = model.encoder(x).numpy()
    codes = _nearest_numpy(z_e.reshape(-1, 1), model.posterior.codebook.numpy())
    counts = np.bincount(codes, minlength=6)
    usage = vq.codebook_usage(model, x, batch_size=7)
    np.testing.assert_array_equal(usage["counts"], counts)
    assert usage["dead_codes"] == int(np.sum(counts == 0))
    np.testing.assert_allclose(usage["perplexity"], np.exp(stats.entropy(counts / counts.sum())))
    with raises("`model`", "DiagonalGaussianPosterior"):
        vq.codebook_usage(tfvae.build_vae((8,), 2, hidden_units=(8,)), x)


# ---------------------------------------------------------------------------
# Export and the command line.


def _export_references(model, batch, seed):
    """Inputs of the export graphs and what each must output, from the Keras model's
    networks and a numpy nearest-code search and codebook lookup."""
    rng = np.random.default_rng(seed)
    x = _binary(batch, model.event_shape, seed=seed)
    eps = rng.standard_normal((batch, model.latent_dim)).astype("float32")
    book, positions = model.posterior.codebook.numpy(), model.posterior.positions
    k = model.posterior.codebook_size
    codes = _nearest_numpy(model.encoder(x).numpy().reshape(batch, positions, -1), book)
    given = rng.integers(0, k, (batch, positions))
    prior_codes = np.minimum(np.floor(k * stats.norm.cdf(
        eps.reshape(batch, positions, -1)[..., 0])), k - 1).astype(int)

    def z(c):
        return book[c].reshape(batch, model.latent_dim)

    expected = {
        "encode": {"codes": codes.astype("float32"), "mean": z(codes)},
        "decode": {"mean": model.decode_mean(z(given)),
                   "logits": model.decoder_parameters(z(given))["logits"]},
        "reconstruct": {"reconstruction": model.decode_mean(z(codes))},
        "sample": {"samples": model.decode_mean(z(prior_codes))},
    }
    feeds = {"encode": {"x": x}, "decode": {"codes": given.astype("float32")},
             "reconstruct": {"x": x, "eps": eps}, "sample": {"eps": eps}}
    return feeds, expected


@pytest.mark.slow
def test_cli_trains_and_exports_a_vq_run_whose_graphs_match_keras(tmp_path):
    """`tfvae train --posterior vq --codebook-size 16`, then `tfvae export` in both formats:
    `encode` gives the codes, `decode` takes them, with parity against the Keras model at
    two batch sizes, and NaN rows exactly for invalid codes."""
    from tfvae import cli

    output = str(tmp_path / "run")
    splits_npz(tmp_path / "d.npz")  # 40 training examples: what is checked needs no more
    assert cli.main(["train", "--dataset", str(tmp_path / "d.npz"), "--output", output,
                     *TINY_RUN, "--epochs", "1", "--latent-dim", "4", "--posterior", "vq",
                     "--codebook-size", "16"]) == 0
    with open(os.path.join(output, "run.json")) as f:
        assert json.load(f)["codebook_size"] == 16
    with open(os.path.join(output, "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["kl"] == pytest.approx(2 * math.log(16), rel=1e-5)
    # No ELBO surgery for a point-mass q: the reason, in the metrics and the report.
    assert "has_density is False" in metrics["surgery_skipped"]
    assert "mutual_information" not in metrics
    with open(os.path.join(output, "report.md")) as f:
        assert "ELBO surgery (the mean KL's split) is not reported: VQPosterior" in f.read()
    model = keras.saving.load_model(os.path.join(output, "model.keras"))
    assert model.posterior.codebook_size == 16 and model.posterior.positions == 2
    assert cli.main(["export", output, "--format", "saved_model"]) == 0
    assert cli.main(["export", output, "--format", "onnx"]) == 0
    root = os.path.join(output, "export")
    saved = tf.saved_model.load(os.path.join(root, "saved_model", "tfvae", "1"))
    with open(os.path.join(root, "onnx", export.ONNX_METADATA)) as f:
        graphs = set(json.load(f)["graphs"])
    assert graphs == {"encode", "decode", "reconstruct", "sample"}  # ONNX has no `elbo`
    sessions = {name: ort.InferenceSession(os.path.join(root, "onnx", f"{name}.onnx"),
                                           providers=["CPUExecutionProvider"])
                for name in graphs}
    assert [i.name for i in sessions["decode"].get_inputs()] == ["codes"]
    for batch in (1, 5):
        feeds, expected = _export_references(model, batch, seed=batch)
        for graph, want in expected.items():
            onnx_names = [o.name for o in sessions[graph].get_outputs()]
            outputs = {"SavedModel": saved.signatures[graph](
                **{k: tf.constant(v) for k, v in feeds[graph].items()}),
                "ONNX": dict(zip(onnx_names, sessions[graph].run(None, feeds[graph])))}
            for kind, got in outputs.items():
                assert set(got) == set(want), (kind, graph)
                for key, value in want.items():
                    np.testing.assert_allclose(np.asarray(got[key]), np.asarray(value), rtol=1e-5,
                                               atol=1e-5, err_msg=f"{kind} {graph} {key} {batch}")
    # Invalid codes in (out of range, fractional, NaN), NaN rows out, in both formats.
    bad = np.array([[0, 1], [16, 0], [1.5, 2], [np.nan, 0], [15, 15]], np.float32)
    for got in (saved.signatures["decode"](codes=tf.constant(bad))["mean"].numpy(),
                sessions["decode"].run(None, {"codes": bad})[0]):
        rows = np.isnan(got.reshape(5, -1)).all(-1)
        np.testing.assert_array_equal(rows, [False, True, True, True, False])


def test_int8_export_measures_the_decode_graph_on_the_validation_datas_codes(tmp_path):
    """`export_onnx(quantize="int8")` of a VQ model feeds the `decode` graph what it takes,
    the validation data's codes (`Posterior.decode_input_of`), not z: the recorded errors
    are the float and int8 graphs' differences on the codes of a numpy nearest-code search."""
    model = tfvae.build_vae((8,), 4, hidden_units=(64, 32), seed=0, posterior="vq",
                            codebook_size=5)
    x = _binary(40, (8,), seed=3)
    export.export_onnx(model, str(tmp_path / "onnx"), graphs=("decode",), quantize="int8",
                       validation_data=x)
    with open(tmp_path / "onnx" / export.ONNX_METADATA) as f:
        entry = json.load(f)["quantized"]["decode"]
    assert "refused" not in entry and entry["validation_examples"] == 40
    book = model.posterior.codebook.numpy()
    codes = _nearest_numpy(model.encoder(x).numpy().reshape(40, 2, -1), book).astype("float32")
    float_out, int8_out = (
        ort.InferenceSession(str(tmp_path / "onnx" / name), providers=["CPUExecutionProvider"])
        .run(["mean", "logits"], {"codes": codes}) for name in ("decode.onnx", entry["file"]))
    for key, got, want in zip(("mean", "logits"), int8_out, float_out):
        error = np.max(np.abs(got - want))
        assert error > 0, key  # quantized, so the two graphs differ somewhere
        np.testing.assert_allclose(entry["max_abs_error"][key], error, rtol=1e-6, err_msg=key)


def test_evaluation_states_why_elbo_surgery_does_not_apply_to_a_point_mass():
    """ELBO surgery scores codes under other examples' densities; a VQ posterior declares it
    has none (`has_density`), so `evaluate_model` reports the reason instead of inf/NaN
    (without a RuntimeWarning) and `elbo_surgery` refuses by name."""
    from tfvae import evaluation

    model = _mlp_vq()
    assert tfvae.DiagonalGaussianPosterior.has_density and not model.posterior.has_density
    x = _binary(20, (8,), seed=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        metrics = evaluation.evaluate_model(model, x, num_samples=2, surgery_examples=10)
    assert "has_density is False" in metrics["surgery_skipped"]
    assert "VQPosterior" in metrics["surgery_skipped"]
    assert not {"mutual_information", "marginal_kl", "surgery_examples"} & set(metrics)
    numbers = [v for v in metrics.values() if isinstance(v, float)]
    assert numbers and np.all(np.isfinite(numbers))
    # The KL is the constant positions · log K (2 positions, K = 5).
    assert metrics["kl"] == pytest.approx(2 * math.log(5), rel=1e-6)
    with raises("ELBO surgery does not apply", "point mass"):
        evaluation.elbo_surgery(model, x)
