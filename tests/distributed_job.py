"""Training jobs run in subprocesses by test_distribute.py (TF's devices and collectives are
configured at process start, so they cannot run inside the pytest process).

    python tests/distributed_job.py mirrored OUT.json   # one device vs MirroredStrategy on 2 CPUs
    python tests/distributed_job.py worker OUT.json     # one MultiWorkerMirroredStrategy worker (TF_CONFIG)
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


def train(strategy, variant=False):
    """The reference job: a fixed-seed VAE on 256 digits, global batch 64, 3 epochs."""
    import keras

    import tfvae

    (x, y), _ = tfvae.data.load_digits()
    x, y = x[:256], y[:256]
    with strategy.scope():
        model = tfvae.build_vae((8, 8, 1), 4, hidden_units=(32,), seed=0,
                                **(VARIANT if variant else {}))
        model.compile(optimizer=keras.optimizers.Adam(1e-2))
    dataset = tf.data.Dataset.from_tensor_slices((x, y) if variant else x).batch(GLOBAL_BATCH)
    history = model.fit(dataset, epochs=EPOCHS, verbose=0).history
    return {
        "replicas": strategy.num_replicas_in_sync,
        "history": history,
        "weights": [w.tolist() for w in model.get_weights()],
    }


def main(mode, output):
    if mode == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        # One strategy object for both jobs: two MirroredStrategy instances in one
        # process hand out clashing collective keys.
        mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        result = {
            "single": train(tf.distribute.get_strategy()),
            "mirrored": train(mirrored),
            "single_variant": train(tf.distribute.get_strategy(), variant=True),
            "mirrored_variant": train(mirrored, variant=True),
        }
    elif mode == "worker":
        result = train(tf.distribute.MultiWorkerMirroredStrategy())
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    with open(output, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
