"""InfoVAE / MMD-VAE (`tfvae.mmd`, objective "mmd"): the estimator against numpy and a closed
form, the objective's terms by hand, the config round trip and refusals (fast); training on
one device, on two replicas and under XLA, and the command line (one slow test).

Run as a script (`python tests/test_mmd.py OUT.json RUN_DIR`), this module is the slow
test's job: TF's logical devices are configured at process start, so it runs in a
subprocess.
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------
# Independent numpy references.


def _np_kernel(a, b, kernel, scale):
    """k for every pair of rows of a `[n, d]` and b `[m, d]`, by explicit differences."""
    squared = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    return np.exp(-squared / scale) if kernel == "rbf" else scale / (scale + squared)


def _np_unbiased_mmd(z, prior_z, kernel, scale, valid=None):
    """Gretton et al.'s MMD²_u from pair sets: the mean kernel over pairs of posterior
    samples of different examples, plus over pairs of distinct prior samples, minus twice
    the mean over (posterior, prior) pairs. z `[L, B, d]`."""
    num_samples, batch, _ = z.shape
    valid = np.ones(batch, bool) if valid is None else valid
    samples = z[:, valid].reshape(-1, z.shape[-1])
    owner = np.tile(np.arange(valid.sum()), num_samples)
    qq = _np_kernel(samples, samples, kernel, scale)[owner[:, None] != owner[None, :]].mean()
    pp = _np_kernel(prior_z, prior_z, kernel, scale)[~np.eye(len(prior_z), dtype=bool)].mean()
    qp = _np_kernel(samples, prior_z, kernel, scale).mean()
    return qq + pp - 2.0 * qp


def _np_terms(z, prior_z, kernel, scale, valid):
    """The documented per-example split, for one sample per example: z `[B, d]`."""
    k_qq = _np_kernel(z, z, kernel, scale)
    k_pp = _np_kernel(prior_z, prior_z, kernel, scale)
    m, n = len(prior_z), valid.sum()
    pp = (k_pp.sum() - np.trace(k_pp)) / (m * (m - 1))
    terms = np.full(len(z), np.nan)
    for i in np.flatnonzero(valid):
        others = [j for j in np.flatnonzero(valid) if j != i]
        terms[i] = (k_qq[i, others].sum() / (n - 1) + pp
                    - 2.0 * _np_kernel(z[i:i + 1], prior_z, kernel, scale).mean())
    return terms


# ---------------------------------------------------------------------------
# The estimator.


@pytest.mark.parametrize("kernel", ["rbf", "imq"])
def test_mmd_matches_an_independent_numpy_estimator_and_ignores_invalid_rows(kernel):
    from tfvae import mmd

    rng = np.random.default_rng(0)
    z = rng.normal(size=(2, 6, 3)).astype("float32")  # L = 2 samples of 6 examples
    prior_z = rng.normal(size=(7, 3)).astype("float32")
    valid = np.array([True, True, False, True, True, True])
    scale = mmd.bandwidth(3)
    assert scale == 6.0  # 2 · d · σ² with σ = 1
    expected = _np_unbiased_mmd(z, prior_z, kernel, scale, valid)
    poisoned = z.copy()
    poisoned[:, 2] = np.nan  # the invalid row's samples enter no other row's term
    for samples in (z, poisoned):
        terms = mmd.mmd_terms(samples, prior_z, kernel, scale, valid).numpy()
        assert np.isfinite(terms[valid]).all()
        np.testing.assert_allclose(terms[valid].mean(), expected, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(mmd.mmd(samples, prior_z, kernel, scale, valid), expected,
                                   rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(mmd.mmd(z, prior_z, kernel, scale),
                               _np_unbiased_mmd(z, prior_z, kernel, scale), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(mmd.kernel_matrix(z[0], prior_z, kernel, scale),
                               _np_kernel(z[0], prior_z, kernel, scale), rtol=1e-6)


def test_mmd_is_near_zero_for_one_distribution_and_matches_the_closed_form_for_a_shift():
    from tfvae import mmd

    rng = np.random.default_rng(1)
    n, d = 800, 2
    scale = mmd.bandwidth(d)
    delta = np.array([1.0, -0.5])
    # For N(μ, I) against N(μ + δ, I) and k = exp(−‖x − y‖² / C):
    # MMD² = 2 (1 + 4/C)^(−d/2) (1 − exp(−‖δ‖² / (C + 4))).
    closed = (2.0 * (1.0 + 4.0 / scale) ** (-d / 2)
              * (1.0 - np.exp(-(delta @ delta) / (scale + 4.0))))
    same, shifted = [], []
    for _ in range(3):
        x, y = rng.normal(size=(2, n, d)).astype("float32")
        same.append(float(mmd.mmd(x, y, "rbf", scale)))
        shifted.append(float(mmd.mmd(x, y + delta, "rbf", scale)))
    x, y = rng.normal(size=(2, n, d)).astype("float32")
    same_imq, shifted_imq = mmd.mmd(x, y, "imq", scale), mmd.mmd(x, y + delta, "imq", scale)
    assert abs(np.mean(same)) < 0.01 * closed
    # Standard errors of the means of 3 estimates: ~0.0005 (same), ~0.008 (shifted).
    np.testing.assert_allclose(np.mean(shifted), closed, rtol=0.15)
    assert abs(same_imq) < 0.005 and shifted_imq > 20 * abs(same_imq)


# ---------------------------------------------------------------------------
# The objective.


def _model(**kwargs):
    import tfvae

    return tfvae.build_vae((6,), 3, hidden_units=(8,), seed=0, objective="mmd", **kwargs)


def test_objective_terms_are_the_elbo_terms_plus_lambda_times_the_mmd_split():
    import tfvae
    from tfvae import mmd

    model = _model(mmd_weight=7.0, mmd_kernel="imq", beta=0.5)
    rng = np.random.default_rng(2)
    x = (rng.uniform(size=(5, 6)) < 0.5).astype("float32")
    x[3, 0] = np.nan  # an invalid row: NaN terms, and no part in the others'
    noise = rng.normal(size=(1, 5, 3)).astype("float32")
    terms = {k: v.numpy() for k, v in model.objective_terms(tf.constant(x), seed=11,
                                                            noise=noise).items()}
    elbo = {k: v.numpy() for k, v in model.elbo_terms(tf.constant(x), seed=11,
                                                      noise=noise).items()}
    parameters = model.posterior_parameters(tf.constant(x))
    z = parameters["loc"].numpy() + parameters["scale"].numpy() * noise[0]
    # The prior's samples: a standard normal prior's are the stream's noise itself.
    prior_z = tfvae.random.standard_normal(
        [5, 3], tfvae.random.fold_in(tfvae.random.make_seed(11), mmd.PRIOR_STREAM)).numpy()
    valid = np.isfinite(x).all(axis=1)
    expected = _np_terms(z, prior_z, "imq", 2.0 * 3, valid)
    assert np.isnan(terms["loss"][3]) and np.isnan(terms["mmd"][3])
    np.testing.assert_allclose(terms["mmd"][valid], expected[valid], rtol=1e-5, atol=1e-6)
    for key in ("elbo", "reconstruction", "kl"):
        np.testing.assert_allclose(terms[key][valid], elbo[key][valid], rtol=1e-6, err_msg=key)
    # elbo_terms' loss is −reconstruction + β · KL (β = 0.5).
    np.testing.assert_allclose(terms["loss"][valid],
                               elbo["loss"][valid] + 7.0 * expected[valid], rtol=1e-5)


def test_get_config_round_trip_keeps_the_objective_and_its_terms():
    import tfvae

    model = _model(mmd_weight=3.0, mmd_kernel="imq")
    config = model.get_config()
    assert (config["objective"], config["mmd_weight"], config["mmd_kernel"]) == ("mmd", 3.0, "imq")
    rebuilt = tfvae.VAE.from_config(config)
    rebuilt.set_weights(model.get_weights())
    objective = rebuilt.objective
    assert (objective.name, objective.mmd_weight, objective.mmd_kernel) == ("mmd", 3.0, "imq")
    x = tf.constant((np.random.default_rng(3).uniform(size=(4, 6)) < 0.5).astype("float32"))
    a, b = model.objective_terms(x, seed=5), rebuilt.objective_terms(x, seed=5)
    for key in ("loss", "mmd"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-6, err_msg=key)


def test_bad_hyperparameters_and_priors_are_refused_by_name(tmp_path, capsys):
    import tfvae
    from tfvae import cli

    from helpers import invalid
    from helpers import raises

    with invalid("mmd_weight", -1.0):
        _model(mmd_weight=-1.0)
    with raises("`mmd_kernel`", "linear", "rbf", "imq"):
        _model(mmd_kernel="linear")
    with raises("`mmd_weight`", "objective='mmd'"):  # it does not act on the ELBO
        tfvae.build_vae((6,), 3, hidden_units=(8,), objective="elbo", mmd_weight=5.0)
    with raises("`prior`", "VampPrior", "objective='mmd'"):
        _model(prior="vamp")
    assert cli.main(["train", "--objective", "mmd", "--mmd-weight", "-1", "--output",
                     str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--mmd-weight" in err
    assert cli.main(["train", "--objective", "mmd", "--prior", "vamp", "--output",
                     str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "VampPrior" in err
    assert not os.path.exists(tmp_path / "r")


# ---------------------------------------------------------------------------
# Training: one device and two replicas, in one subprocess (this module run as a script):
# TF's logical devices are configured at process start. (XLA = eager: the conformance
# registry's "mmd" variant; the command line: below, without training.)

GLOBAL_BATCH = 32
TRAINED = {"objective": "mmd", "mmd_weight": 100.0, "mmd_kernel": "imq"}


def _train(strategy, jit_compile=False):
    """A fixed-seed MMD-VAE on 128 digits in global batches of 32, two epochs."""
    import keras

    import tfvae

    (x, _), _ = tfvae.data.load_digits()
    with strategy.scope():
        model = tfvae.build_vae((8, 8, 1), 4, hidden_units=(16,), seed=0, **TRAINED)
        model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=jit_compile)
    assert model.jit_compile is jit_compile  # Keras falls back silently otherwise
    dataset = tf.data.Dataset.from_tensor_slices(x[:128]).batch(GLOBAL_BATCH)
    history = model.fit(dataset, epochs=2, verbose=0).history
    return {"replicas": strategy.num_replicas_in_sync,
            "history": {k: [float(v) for v in vs] for k, vs in history.items()},
            "weights": [w.tolist() for w in model.get_weights()]}


def _terms_of_an_uneven_batch(strategy):
    """The objective's terms for 5 digits split 3 + 2 across the replicas (or all on one
    device), each replica given its rows' offset in the global batch: the rows, concatenated."""
    import tfvae

    (x, _), _ = tfvae.data.load_digits()
    x = tf.constant(x[:5])
    with strategy.scope():
        model = tfvae.build_vae((8, 8, 1), 4, hidden_units=(16,), seed=0, **TRAINED)
    rows = [(0, 3), (3, 5)] if strategy.num_replicas_in_sync == 2 else [(0, 5)]

    def values(context):
        start, stop = rows[context.replica_id_in_sync_group]
        return x[start:stop], tf.constant(start)

    @tf.function
    def step(inputs):
        return strategy.run(lambda v: model.objective_terms(v[0], seed=7, offset=v[1]),
                            args=(inputs,))

    terms = step(strategy.experimental_distribute_values_from_function(values))
    return {key: np.concatenate([t.numpy() for t in strategy.experimental_local_results(value)])
            .tolist() for key, value in terms.items()}


def _job(output):
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    one = tf.distribute.get_strategy()
    result = {"single": _train(one), "mirrored": _train(mirrored),
              "single_uneven": _terms_of_an_uneven_batch(one),
              "mirrored_uneven": _terms_of_an_uneven_batch(mirrored)}
    with open(output, "w") as f:
        json.dump(result, f)


def _assert_same_training(a, b, keys, rtol, atol):
    for key in keys:
        np.testing.assert_allclose(b["history"][key], a["history"][key], rtol=rtol, atol=atol,
                                   err_msg=key)
    for wa, wb in zip(a["weights"], b["weights"]):
        np.testing.assert_allclose(np.asarray(wb), np.asarray(wa), rtol=rtol, atol=atol)


@pytest.mark.slow
def test_two_replicas_train_the_mmd_objective_as_one_device(tmp_path):
    output = tmp_path / "mmd.json"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, __file__, str(output)],
                            env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = json.loads(output.read_text())
    single = runs["single"]
    assert (single["replicas"], runs["mirrored"]["replicas"]) == (1, 2)
    assert {"loss", "elbo", "mmd"} <= set(single["history"])
    assert np.isfinite(single["history"]["loss"]).all()
    assert single["history"]["loss"][-1] < single["history"]["loss"][0]
    # Two replicas = one device: the MMD is computed on the all-gathered global batch
    # against one prior draw. A per-replica MMD (each replica's 16 examples against its
    # own draw) would give other mmd values and other weights.
    _assert_same_training(single, runs["mirrored"], ("loss", "elbo", "kl", "mmd"), 1e-5, 1e-6)
    # Replicas holding 3 and 2 examples of a batch of 5 give one device's terms.
    for key, values in runs["single_uneven"].items():
        np.testing.assert_allclose(runs["mirrored_uneven"][key], values, rtol=1e-5, atol=1e-6,
                                   err_msg=key)


if __name__ == "__main__":
    _job(sys.argv[1])


def test_the_command_line_builds_the_mmd_objective_from_its_flags():
    from tfvae import builders
    from tfvae import cli

    args = cli._parser().parse_args(["train", "--objective", "mmd", "--mmd-weight", "10",
                                     "--mmd-kernel", "imq", "--hidden-units", "8"])
    config = cli._config(args).validate()
    model = builders.build_vae(**config.model_kwargs((8, 8, 1)))
    assert (model.objective.name, model.objective.mmd_weight, model.objective.mmd_kernel) == (
        "mmd", 10.0, "imq")
    assert "mmd" in [m.name for m in model.metrics]
