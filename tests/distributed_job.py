"""Training jobs run in subprocesses by test_distribute.py (TF's devices and collectives are
configured at process start, so they cannot run inside the pytest process).

    python tests/distributed_job.py mirrored OUT.json   # one device vs MirroredStrategy on 2 CPUs (and tcvae's jobs)
    python tests/distributed_job.py worker OUT.json     # one MultiWorkerMirroredStrategy worker (TF_CONFIG)
    python tests/distributed_job.py tcvae OUT.json      # β-TCVAE: one device vs MirroredStrategy on 2 CPUs
    python tests/distributed_job.py records OUT.json DIR          # one worker on record shards
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

GLOBAL_BATCH = 64
EPOCHS = 3


# A conditional two-layer model with free bits per layer: its label pipeline and
# its batch-mean free-bits decision must also be replica-independent.
VARIANT = {"posterior": "hierarchical", "top_latent_dim": 2, "free_bits": 0.5,
           "free_bits_groups": 2, "condition_dim": 10}


# β-TCVAE: its aggregate posterior needs the global batch (all-gathered across replicas).
TCVAE = {"objective": "beta_tcvae", "tc_weight": 6.0, "mi_weight": 0.5, "dataset_size": 256}


def train(strategy, variant=False, tcvae=False):
    """The reference job: a fixed-seed VAE on 253 digits, global batch 64 (the last batch of
    61 splits unevenly across two replicas, 31 + 30), 3 epochs."""
    import keras

    import tfvae

    (x, y), _ = tfvae.data.load_digits()
    x, y = x[:253], y[:253]
    with strategy.scope():
        model = tfvae.build_vae((8, 8, 1), 4, hidden_units=(32,), seed=0,
                                **(VARIANT if variant else {}), **(TCVAE if tcvae else {}))
        model.compile(optimizer=keras.optimizers.Adam(1e-2))
    dataset = tf.data.Dataset.from_tensor_slices((x, y) if variant else x).batch(GLOBAL_BATCH)
    history = model.fit(dataset, epochs=EPOCHS, verbose=0).history
    return {
        "replicas": strategy.num_replicas_in_sync,
        "history": history,
        "weights": [w.tolist() for w in model.get_weights()],
    }


def tc_terms_of_an_uneven_batch(strategy):
    """`objectives.tc_decomposition` on 5 examples split 3 + 2 across the replicas (or all on
    one device): each replica's rows, concatenated."""
    from tfvae import objectives
    from tfvae import priors

    rng = np.random.default_rng(0)
    loc = rng.normal(size=(5, 3)).astype("float32")
    scale = rng.uniform(0.5, 1.5, size=(5, 3)).astype("float32")
    z = (loc + scale * rng.standard_normal((2, 5, 3))).astype("float32")  # [L, batch, d]
    log_prior = priors.StandardNormalPrior(3).distribution().log_prob
    rows = [slice(0, 3), slice(3, 5)] if strategy.num_replicas_in_sync == 2 else [slice(0, 5)]

    def values(context):
        part = rows[context.replica_id_in_sync_group]
        return tf.constant(z[:, part]), tf.constant(loc[part]), tf.constant(scale[part])

    @tf.function
    def step(inputs):
        return strategy.run(lambda v: objectives.tc_decomposition(
            v[0], v[1], v[2], log_prior, dataset_size=40), args=(inputs,))

    terms = step(strategy.experimental_distribute_values_from_function(values))
    return {key: np.concatenate([t.numpy() for t in strategy.experimental_local_results(value)])
            .tolist() for key, value in terms.items()}


def _fit(strategy, dataset):
    import keras

    import tfvae

    with strategy.scope():
        model = tfvae.build_vae((8, 8, 1), 4, hidden_units=(32,), seed=0)
        model.compile(optimizer=keras.optimizers.Adam(1e-2))
    history = model.fit(dataset, epochs=EPOCHS, verbose=0).history
    return {"replicas": strategy.num_replicas_in_sync, "history": history,
            "weights": [w.tolist() for w in model.get_weights()]}


def train_on_records(strategy, folder):
    """A worker's job on the train shards of `folder`: the example ids it read in each of
    two epochs of the distributed input pipeline (FILE sharding), then training on it."""
    from tfvae import data
    from tfvae import sources

    source = data.source_splits(folder)["train"]
    ids = source.batches(GLOBAL_BATCH).map(lambda batch: batch["id"])
    distributed = strategy.experimental_distribute_dataset(ids)
    read = [[int(i) for batch in distributed
             for part in strategy.experimental_local_results(batch) for i in part.numpy()]
            for _ in range(2)]
    result = _fit(strategy, sources.pipeline(source, GLOBAL_BATCH, "bernoulli"))
    return {**result, "read": read}


def train_records_on_one_device(folder):
    """The single-device reference (test_distribute calls it in its own process): the
    global batches two workers make of two shards (a worker's half-batch from each
    shard, worker 0's first), as in-memory arrays."""
    from tfvae import data
    from tfvae import sources

    shards = [sources.RecordSource([file], source.event_shape, source.dtype, source.scale,
                                   source.labelled)
              for source in [data.source_splits(folder)["train"]] for file in source.files]
    rows = [np.concatenate([b["x"].numpy() for b in shard.batches(256)]) for shard in shards]
    half = GLOBAL_BATCH // len(rows)
    x = np.concatenate([part[start : start + half] for start in range(0, len(rows[0]), half)
                        for part in rows]).astype("float32")
    return _fit(tf.distribute.get_strategy(),
                tf.data.Dataset.from_tensor_slices(x).batch(GLOBAL_BATCH))


def _tcvae_jobs(one, mirrored):
    return {
        "single": train(one, tcvae=True),
        "mirrored": train(mirrored, tcvae=True),
        "single_uneven": tc_terms_of_an_uneven_batch(one),
        "mirrored_uneven": tc_terms_of_an_uneven_batch(mirrored),
    }


def main(mode, output, folder=None):
    if mode in ("mirrored", "tcvae"):
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        # One strategy object for both jobs: two MirroredStrategy instances in one
        # process hand out clashing collective keys.
        mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        one = tf.distribute.get_strategy()
    if mode == "mirrored":
        result = {
            "single": train(one),
            "mirrored": train(mirrored),
            "single_variant": train(one, variant=True),
            "mirrored_variant": train(mirrored, variant=True),
            # The β-TCVAE jobs too: one process (one TensorFlow start) for both modes.
            "tcvae": _tcvae_jobs(one, mirrored),
        }
    elif mode == "tcvae":
        result = _tcvae_jobs(one, mirrored)
    elif mode == "worker":
        result = train(tf.distribute.MultiWorkerMirroredStrategy())
    elif mode == "records":
        result = train_on_records(tf.distribute.MultiWorkerMirroredStrategy(), folder)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    with open(output, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
