"""tf.distribute: MirroredStrategy on two logical CPUs and MultiWorkerMirroredStrategy with two
worker processes on 127.0.0.1 reproduce single-device training exactly."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
JOB = ROOT / "tests" / "distributed_job.py"
# Subprocesses and multi-worker jobs: the whole module is slow.
pytestmark = pytest.mark.slow

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _assert_same_training(a, b, rtol=1e-5, atol=1e-6):
    for key in ("loss", "elbo", "reconstruction", "kl"):
        np.testing.assert_allclose(a["history"][key], b["history"][key], rtol=rtol, err_msg=key)
    for wa, wb in zip(a["weights"], b["weights"]):
        np.testing.assert_allclose(np.asarray(wa), np.asarray(wb), rtol=rtol, atol=atol)


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory):
    output = tmp_path_factory.mktemp("mirrored") / "result.json"
    result = subprocess.run([sys.executable, str(JOB), "mirrored", str(output)], env=ENV,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(output.read_text())


def test_mirrored_strategy_reproduces_single_device_training(mirrored):
    assert mirrored["single"]["replicas"] == 1 and mirrored["mirrored"]["replicas"] == 2
    # Same per-example noise, global-batch loss averaging and all-reduced
    # metrics: the trajectories agree to float rounding.
    _assert_same_training(mirrored["single"], mirrored["mirrored"])
    assert mirrored["single"]["history"]["loss"][0] > mirrored["single"]["history"]["loss"][-1]


def test_mirrored_conditional_hierarchy_with_free_bits_per_layer_matches_one_device(mirrored):
    # Labels reach every replica, and the free-bits decision uses the global batch mean.
    _assert_same_training(mirrored["single_variant"], mirrored["mirrored_variant"])
    assert {"kl_z1", "kl_z2"} <= set(mirrored["mirrored_variant"]["history"])


def test_mirrored_beta_tcvae_gathers_the_global_batch_and_matches_one_device(mirrored):
    # β-TCVAE's aggregate posterior is estimated over the global batch: each replica
    # all-gathers the posterior parameters, and gradients flow back through the gather.
    # A per-replica estimate would give other mi / tc / dwkl numbers and other weights.
    runs = mirrored["tcvae"]  # the job's `tcvae` part, run in the fixture's process
    assert runs["single"]["replicas"] == 1 and runs["mirrored"]["replicas"] == 2
    _assert_same_training(runs["single"], runs["mirrored"])
    for key in ("mi", "tc", "dwkl"):
        np.testing.assert_allclose(runs["mirrored"]["history"][key], runs["single"]["history"][key],
                                   rtol=1e-5, atol=1e-6, err_msg=key)
    assert runs["single"]["history"]["loss"][0] > runs["single"]["history"]["loss"][-1]
    # Replicas holding 3 and 2 examples of a batch of 5 give one device's terms.
    for key, values in runs["single_uneven"].items():
        np.testing.assert_allclose(runs["mirrored_uneven"][key], values, rtol=1e-6, atol=1e-6,
                                   err_msg=key)


def _launch_workers(tmp_path, argv_for, count=2):
    ports = [_free_port() for _ in range(count)]
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    processes = []
    for index in range(count):
        tf_config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        processes.append(subprocess.Popen(
            argv_for(index), env={**ENV, "TF_CONFIG": json.dumps(tf_config)}, cwd=tmp_path,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        ))
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=600)[0])
    finally:
        for process in processes:
            process.kill()
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output[-3000:]


def test_multi_worker_strategy_workers_agree_with_each_other_and_one_device(tmp_path, mirrored):
    _launch_workers(tmp_path, lambda i: [sys.executable, str(JOB), "worker", f"w{i}.json"])
    workers = [json.loads((tmp_path / f"w{i}.json").read_text()) for i in range(2)]
    assert workers[0]["replicas"] == workers[1]["replicas"] == 2
    _assert_same_training(workers[0], workers[1], rtol=0, atol=0)
    _assert_same_training(workers[0], mirrored["single"])


def test_multi_worker_record_shards_are_read_by_file_once_per_epoch_and_match_one_device(
        tmp_path):
    # 256 digits in two train shards (examples dealt round-robin); two workers.
    from tfvae import data, records, sources

    (x, _), (x_val, _) = data.load_digits()
    records.write_splits({"train": sources.ArraySource(x[:256]),
                          "validation": sources.ArraySource(x_val[:16])},
                         str(tmp_path / "rec"), shards=2)
    folder = str(tmp_path / "rec")
    _launch_workers(tmp_path, lambda i: [sys.executable, str(JOB), "records", f"w{i}.json",
                                         folder])
    workers = [json.loads((tmp_path / f"w{i}.json").read_text()) for i in range(2)]
    shard_ids = [set(range(i, 256, 2)) for i in range(2)]  # example i is in shard i mod 2
    for epoch in range(2):
        reads = [w["read"][epoch] for w in workers]
        # Each worker reads exactly its own shard (file sharding), so together they read
        # every training example exactly once per epoch.
        assert [set(r) for r in reads] == shard_ids and [len(r) for r in reads] == [128, 128]
    _assert_same_training(workers[0], workers[1], rtol=0, atol=0)
    # The model equals one device trained on the same global batches, to float rounding
    # (one device needs no strategy: the reference trains in this process).
    import distributed_job

    single = json.loads(json.dumps(distributed_job.train_records_on_one_device(folder)))
    _assert_same_training(workers[0], single)


def test_cli_multi_worker_run_is_written_by_the_chief_only(tmp_path):
    args = ["train", "--strategy", "multiworker", "--epochs", "1", "--latent-dim", "2",
            "--hidden-units", "8", "--eval-samples", "2", "--batch-size", "128", "--quiet"]
    code = "import sys; from tfvae import cli; sys.exit(cli.main(sys.argv[1:]))"
    _launch_workers(tmp_path, lambda i: [sys.executable, "-c", code, *args, "--output", f"run{i}"])
    assert (tmp_path / "run0" / "metrics.json").exists() and (tmp_path / "run0" / "model.keras").exists()
    assert not (tmp_path / "run1").exists()
    with open(tmp_path / "run0" / "run.json") as f:
        assert json.load(f)["strategy"] == "multiworker"
