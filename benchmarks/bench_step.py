"""Per-step cost of tfvae's training step against keras.io's VAE, paired in one process.

    python benchmarks/bench_step.py --mnist ../shared/data/mnist_t10k.npz

At plain Keras defaults (`compile()` without XLA, one step per call: what a
`model.fit` user gets first) both models — the same D–400–20 MLP, Bernoulli
likelihood, Adam 1e-3, batch 128 — run Keras' own compiled `train_function`
on the same batches, in alternating blocks; the report is the median over
blocks of the paired ratio keras_io time / tfvae time (> 1: tfvae is faster),
with a second keras_io model as a noise check (its ratio to the first should
be 1). Whole-`fit` timings across subprocesses (`bench_training.py`) vary by
±10 % run to run on these machines; paired blocks in one process cancel most
of that. Uses Keras' internal `TFEpochIterator` to feed `train_function`.
"""

import argparse
import json
import os
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import bench_training  # noqa: E402  (same folder)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", help="mnist_t10k.npz (default: built-in digits)")
    parser.add_argument("--blocks", type=int, default=40)
    parser.add_argument("--steps", type=int, default=15, help="train steps per block")
    parser.add_argument("--json", help="write the result here")
    args = parser.parse_args(argv)

    import keras
    from keras.src.backend.tensorflow.trainer import TFEpochIterator

    import tfvae

    x, _ = bench_training.load_data(args.mnist)
    models = {
        "tfvae": tfvae.build_vae(x.shape[1:], 20, hidden_units=(400,), seed=0),
        "keras_io": bench_training.keras_io_vae(x.shape[1:], 20, "mlp"),
        "keras_io#2": bench_training.keras_io_vae(x.shape[1:], 20, "mlp"),
    }

    def batches(model):
        while True:
            iterator = TFEpochIterator(x=x, batch_size=128, steps_per_execution=1, shuffle=True,
                                       distribute_strategy=model.distribute_strategy)
            for _, _, step_iterator in iterator:
                yield step_iterator

    feeds = {}
    for name, model in models.items():
        model.compile(optimizer=keras.optimizers.Adam(1e-3))  # plain defaults
        model.fit(x, batch_size=128, epochs=1, verbose=0)  # trace and warm up
        feeds[name] = batches(model)
    times = {name: [] for name in models}
    for block in range(args.blocks):
        order = list(models) if block % 2 == 0 else list(models)[::-1]
        for name in order:
            start = time.perf_counter()
            for _ in range(args.steps):
                models[name].train_function(next(feeds[name]))
            times[name].append(time.perf_counter() - start)
    base = np.asarray(times["keras_io"])
    result = {
        "tfvae_speed_vs_keras_io": float(np.median(base / np.asarray(times["tfvae"]))),
        "keras_io#2_speed_vs_keras_io": float(np.median(base / np.asarray(times["keras_io#2"]))),
        "ms_per_step": {name: 1000 * float(np.median(t)) / args.steps for name, t in times.items()},
        "blocks": args.blocks, "steps": args.steps,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
