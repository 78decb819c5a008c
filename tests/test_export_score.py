"""The `score` export graph: raw table rows and noise in; −ELBO, per-column scores and a flag out."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

import tfvae
from tfvae import anomaly
from tfvae import export
from tfvae import tabular
from tfvae.tabular_likelihood import TabularLikelihood

from helpers import invalid, raises, refused_rows, table_column_scores

SCHEMA = tabular.Schema([
    tabular.Column("amount", "continuous"),
    tabular.Column("member", "binary", ("no", "yes")),
    tabular.Column("colour", "categorical", ("red", "green", "blue")),  # code 3: unknown
    tabular.Column("weight", "continuous"),
])
UNKNOWN = 3.0


def _rows(n, seed=0):
    rng = np.random.default_rng(seed)
    return np.c_[rng.normal(50, 10, n), rng.integers(0, 2, n), rng.integers(0, 3, n),
                 rng.normal(70, 5, n)].astype(np.float32)


@pytest.fixture(scope="module")
def model():
    head = TabularLikelihood(SCHEMA)
    head.adapt(_rows(64))
    return tfvae.build_vae((4,), 2, hidden_units=(8,), likelihood=head, seed=0)


def _score_graph(model, threshold=None):
    fn, signature = export.graph_functions(model, threshold=threshold)["score"]
    traced = tf.function(fn, input_signature=signature, autograph=False)
    return lambda x, eps: {k: v.numpy() for k, v in traced(tf.constant(x), tf.constant(eps)).items()}


def _column_scores(model, x, eps):
    """−log p_j(x_j|z) with scipy at z = μ + σ·eps (the independent answer), the continuous
    columns standardised by numpy's mean and std of the rows the head was adapted on."""
    q = model.encode(x)
    z = q.mean().numpy() + q.stddev().numpy() * eps
    train = _rows(64)[:, [0, 3]]
    return table_column_scores(model.likelihood, model.decoder_parameters(tf.constant(z)), x,
                               train.mean(0), train.std(0))


def test_score_is_the_one_sample_negative_elbo_with_scipy_s_column_terms(model):
    x = _rows(6, seed=1)
    x[0, 2] = UNKNOWN  # an unseen category: its own slot, a valid row
    eps = np.random.default_rng(2).standard_normal((6, 2)).astype(np.float32)
    out = _score_graph(model)(x, eps)
    assert set(out) == {"score", "feature_scores"}  # no threshold: no flag
    # The Keras model's own ELBO at the same noise (objectives.tensor_elbo's path).
    keras_elbo = model.elbo_terms(tf.constant(x), noise=tf.constant(eps[None]))["elbo"].numpy()
    np.testing.assert_allclose(out["score"], -keras_elbo, rtol=1e-5, atol=1e-4)
    columns = _column_scores(model, x, eps)
    np.testing.assert_allclose(out["feature_scores"], columns, rtol=1e-4, atol=1e-4)
    q = model.encode(x)
    mu, sigma = q.mean().numpy(), q.stddev().numpy()
    kl = 0.5 * np.sum(mu ** 2 + sigma ** 2 - 1 - 2 * np.log(sigma), axis=1)
    np.testing.assert_allclose(out["score"], columns.sum(1) + kl, rtol=1e-4, atol=1e-4)
    # eps = 0: the deterministic score, which a table run's graph_threshold is on.
    zero = np.zeros_like(eps)
    np.testing.assert_allclose(_score_graph(model)(x, zero)["score"],
                               anomaly.noise_scores(model, x), rtol=1e-5, atol=1e-4)


def test_averaged_over_noise_it_is_the_detector_s_elbo_score(model):
    x, draws = _rows(4, seed=3), 400
    eps = np.random.default_rng(4).standard_normal((draws * 4, 2)).astype(np.float32)
    one = _score_graph(model)(np.tile(x, (draws, 1)), eps)["score"].reshape(draws, 4)
    detector = anomaly.scores(model, x, "elbo", num_samples=draws, seed=0)
    error = one.std(0) * np.sqrt(2.0 / draws)  # both are means of `draws` draws
    assert np.all(np.abs(one.mean(0) - detector) < 5 * error + 1e-3), (one.mean(0), detector)


def test_flag_is_score_above_the_baked_in_threshold(model):
    x = _rows(40, seed=5)
    eps = np.zeros((40, 2), np.float32)
    threshold = float(np.median(_score_graph(model)(x, eps)["score"]))
    out = _score_graph(model, threshold)(x, eps)
    np.testing.assert_array_equal(out["flag"], (out["score"] > threshold).astype(np.float32))
    assert out["flag"].dtype == np.float32 and 0 < out["flag"].sum() < 40
    with invalid("threshold", float("nan")):
        export.graph_functions(model, threshold=float("nan"))


def test_rows_the_model_refuses_give_nan_in_every_output(model):
    x = _rows(8, seed=6)
    x[1, 0] = np.nan
    x[2, 3] = np.inf
    x[3, 2] = UNKNOWN + 1  # outside the vocabulary and its unknown slot
    x[4, 1] = 0.5  # not a binary code
    x[5, 2] = 1.5  # not an integer code
    x[6, 2] = UNKNOWN  # valid
    eps = np.zeros((8, 2), np.float32)
    eps[7, 1] = np.nan
    refused_x = refused_rows(model.likelihood, x)
    refused = refused_x | ~np.isfinite(eps).all(1)
    np.testing.assert_array_equal(refused, [0, 1, 1, 1, 1, 1, 0, 1])
    out = _score_graph(model, threshold=0.0)(x, eps)
    assert set(out) == {"score", "feature_scores", "flag"}
    functions = export.graph_functions(model)  # the table's other graphs guard alike
    for name in ("serving_default", "encode", "reconstruct", "elbo"):
        fn, signature = functions[name]
        traced = tf.function(fn, input_signature=signature, autograph=False)
        given = traced(*[tf.constant({"x": x, "eps": eps}[k]) for k in export.GRAPH_INPUTS[name]])
        out.update({f"{name}/{k}": v.numpy() for k, v in given.items()})
    for key, value in out.items():
        rows = value.reshape(8, -1)
        graph = key.split("/")[0] if "/" in key else "score"
        expected = refused if "eps" in export.GRAPH_INPUTS[graph] else refused_x
        np.testing.assert_array_equal(np.isnan(rows).all(1), expected, err_msg=key)
        assert np.isfinite(rows[~expected]).all(), key


def test_an_empty_batch_gives_empty_outputs(model):
    out = _score_graph(model, threshold=1.0)(np.zeros((0, 4), np.float32),
                                             np.zeros((0, 2), np.float32))
    assert {k: v.shape for k, v in out.items()} == {"score": (0,), "feature_scores": (0, 4),
                                                   "flag": (0,)}


def test_models_without_column_terms_refuse_score_and_say_why(tmp_path):
    images = tfvae.build_vae((6,), 2, hidden_units=(8,), seed=0)
    reason = "BernoulliLikelihood has no per-column terms"
    assert reason in export.part_refusal(images, "score")
    assert "score" not in export.default_parts(images, export.SAVED_MODEL_SIGNATURES)
    assert reason in export.skipped_parts(images, ("serving_default",), "SavedModel")["score"]
    with raises("Cannot export `score`", reason):
        export.export_saved_model(images, str(tmp_path), signatures=("serving_default", "score"))
    with raises("Cannot export `score`", reason):
        export.export_onnx(images, str(tmp_path / "onnx"), graphs=("score",))
    assert not list(tmp_path.iterdir())  # refused before anything was written


def test_onnx_needs_the_kl_in_closed_form(tmp_path):
    head = TabularLikelihood(SCHEMA)
    head.adapt(_rows(64))
    mixture = tfvae.build_vae((4,), 2, hidden_units=(8,), likelihood=head, prior="mixture",
                              num_components=2, seed=0)
    assert "score" in export.default_parts(mixture, export.SAVED_MODEL_SIGNATURES)
    assert "score" not in export.default_parts(mixture, export.ONNX_GRAPHS, "ONNX")
    with raises("Cannot export `score`", "no closed form", "SavedModel export has `score`"):
        export.export_onnx(mixture, str(tmp_path / "onnx"), graphs=("score",))
    # The SavedModel's graph takes its Monte Carlo KL at the same z, as the ELBO does.
    x, eps = _rows(3, seed=7), np.random.default_rng(8).standard_normal((3, 2)).astype(np.float32)
    keras_elbo = mixture.elbo_terms(tf.constant(x), noise=tf.constant(eps[None]))["elbo"]
    np.testing.assert_allclose(_score_graph(mixture)(x, eps)["score"], -keras_elbo.numpy(),
                               rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------------------
# `tfvae export` of a table run: both formats, served as the Keras model scores.


@pytest.mark.slow
def test_tfvae_export_of_a_table_run_serves_score_in_both_formats(tmp_path):
    import onnxruntime as ort

    from tfvae import cli, runs, table_runs

    from test_table_runs import TINY, _mixed_csv

    table = _mixed_csv(tmp_path / "t.csv")
    run = str(tmp_path / "run")
    assert cli.main(["train", "--dataset", table, "--labels-column", "is_fraud",
                     "--output", run, *TINY]) == 0
    assert cli.main(["export", run, "--format", "saved_model"]) == 0
    assert cli.main(["export", run, "--format", "onnx"]) == 0
    _, metrics, model = table_runs.read_table_run(run)
    assert metrics["graph_threshold_score"] == "elbo_at_eps_0"
    threshold = metrics["graph_threshold"]

    schema = model.likelihood.schema
    x, _, _ = tabular.load_table(table, schema=schema)
    x = x.astype(np.float32)
    colour = schema.names.index("colour")
    x[1, colour] = schema.features[colour].num_outcomes - 1  # the unknown slot
    x[2, 0] = np.nan
    eps = np.random.default_rng(0).standard_normal((len(x), model.latent_dim)).astype(np.float32)
    eps[:10] = 0.0
    valid = np.ones(len(x), bool)
    valid[2] = False
    reference = -model.elbo_terms(tf.constant(x[valid]),
                                  noise=tf.constant(eps[None, valid]))["elbo"].numpy()

    saved = tf.saved_model.load(os.path.join(run, "export", "saved_model", "tfvae", "1"))
    sessions = ort.InferenceSession(os.path.join(run, "export", "onnx", "score.onnx"),
                                    providers=["CPUExecutionProvider"])
    names = [o.name for o in sessions.get_outputs()]
    for name in ("encode", "decode", "reconstruct", "sample", "score"):  # every graph is fed
        graph = ort.InferenceSession(os.path.join(run, "export", "onnx", f"{name}.onnx"),
                                     providers=["CPUExecutionProvider"])
        assert [i.name for i in graph.get_inputs()] == list(export.GRAPH_INPUTS[name]), name

    def serve(rows, noise):
        served = saved.signatures["score"](x=tf.constant(rows), eps=tf.constant(noise))
        onnx_out = dict(zip(names, sessions.run(None, {"x": rows, "eps": noise})))
        return {k: v.numpy() for k, v in served.items()}, onnx_out

    for out in serve(x, eps):
        assert set(out) == {"score", "feature_scores", "flag"}
        np.testing.assert_allclose(out["score"][valid], reference, rtol=1e-5, atol=1e-4)
        assert np.isnan(out["score"][2]) and np.isnan(out["feature_scores"][2]).all()
        assert np.isnan(out["flag"][2])
        np.testing.assert_array_equal(out["flag"][valid], out["score"][valid] > threshold)
    for out in serve(np.zeros((0, 4), np.float32), np.zeros((0, model.latent_dim), np.float32)):
        assert out["score"].shape == (0,) and out["feature_scores"].shape == (0, 4)
    # The baked-in threshold is the training rows' (1 − contamination) quantile at eps = 0.
    seed = runs.read_config(os.path.join(run, runs.RUN_FILE)).seed
    train_rows, _ = table_runs.split_rows(len(x), seed)
    x_train, _, _ = tabular.load_table(table, schema=schema)
    train = x_train[train_rows].astype(np.float32)
    flagged = serve(train, np.zeros((len(train), model.latent_dim), np.float32))[1]["flag"]
    assert abs(flagged.mean() - metrics["contamination"]) <= 1.0 / len(train)
    # The edge runner and the TF Serving client send the same request (eps: zeros) for
    # `--x rows.npy`, and get the SavedModel's answer.
    import importlib.util
    import sys

    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "export")
    np.save(tmp_path / "rows.npy", x[:5])
    spec = importlib.util.spec_from_file_location("onnx_runner", os.path.join(root,
                                                                              "onnx_runner.py"))
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    assert runner.main([os.path.join(run, "export", "onnx"), "score", "--x",
                        str(tmp_path / "rows.npy"), "--save", str(tmp_path / "s.npz")]) == 0
    sys.path.insert(0, root)
    try:
        import tfserving_client
    finally:
        sys.path.remove(root)
    args = tfserving_client.build_parser().parse_args(
        ["--signature", "score", "--x", str(tmp_path / "rows.npy")])
    request = tfserving_client.build_inputs(
        args, {"inputs": {"x": [-1, 4], "eps": [-1, model.latent_dim]}})
    assert not request["eps"].any()
    served = {k: v.numpy() for k, v in saved.signatures["score"](
        **{k: tf.constant(v) for k, v in request.items()}).items()}
    edge = np.load(tmp_path / "s.npz")
    for key in ("score", "feature_scores", "flag"):
        np.testing.assert_allclose(edge[key], served[key], rtol=1e-5, atol=1e-4, err_msg=key)
    for path in ("saved_model/tfvae/1/assets.extra/tfvae.json", "onnx/metadata.json"):
        with open(os.path.join(run, "export", path)) as f:
            entry = json.load(f)["score"]
        assert entry == {"columns": schema.names, "threshold": threshold,
                         "outputs": ["score", "feature_scores", "flag"]}
