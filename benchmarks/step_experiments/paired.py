"""Paired, in-process timing of tfvae's compiled train step (and ablations of it)
against the keras.io-style VAE, both with XLA and 16 steps per execution.

    cd /work/wt-speed && PYTHONPATH=/work/wt-speed:/work/wt-speed/benchmarks \
        /work/main/.venv/bin/python experiments/paired.py --mnist ../shared/data/mnist_t10k.npz \
        --variants tfvae,no_mask,... --rounds 40

Every model runs Keras' own `train_function` (jit_compile=True, steps_per_execution=16)
on the same endless stream of full batches of 128; each round times `--calls` calls
(16 steps each) of every model, in a shuffled order; the report is per variant the
median over rounds of keras_io's time / the variant's time (> 1: faster than
keras.io) and the median ms per step. `keras_io#2` is the noise check.
"""

import argparse
import json
import os
import random
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import ablations  # noqa: E402  (same folder)
import bench_training  # noqa: E402  (benchmarks/ on PYTHONPATH)


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--mnist")
    parser.add_argument("--variants", default="tfvae")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--calls", type=int, default=4, help="train_function calls per block")
    parser.add_argument("--steps-per-execution", type=int, default=16)
    parser.add_argument("--no-jit", action="store_true")
    parser.add_argument("--mode", choices=("steps", "fit"), default="steps",
                        help="steps: train_function calls on full batches; fit: one "
                        "`fit(x, epochs=1)` per block on all 9,000 digits (as bench_training)")
    parser.add_argument("--threads", type=int, default=0, help="intra/inter-op threads (0: TF's)")
    parser.add_argument("--extra", help="module registering ablations.EXTRA variants")
    parser.add_argument("--json")
    args = parser.parse_args(argv)

    import keras
    import tensorflow as tf

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    if args.extra:
        __import__(args.extra)

    x_all, _ = bench_training.load_data(args.mnist)
    x = x_all[: (len(x_all) // 128) * 128]
    names = ["keras_io", "keras_io#2"] + [v for v in args.variants.split(",") if v]
    models = {}
    for name in names:
        if name.startswith("keras_io"):
            models[name] = bench_training.keras_io_vae(x.shape[1:], 20, "mlp")
        else:
            models[name] = ablations.build(name, x.shape[1:])
        models[name].compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=not args.no_jit,
                             steps_per_execution=args.steps_per_execution)

    def feed():
        # Full batches only, batch dimension unknown as in `fit`; endless.
        data = tf.data.Dataset.from_tensor_slices(x).shuffle(len(x), seed=0).batch(128)
        return iter(data.repeat().prefetch(2))

    epoch_time = []

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            epoch_time.append(time.perf_counter() - self.start)

    def fit_epoch(model):
        model.fit(x_all, batch_size=128, epochs=1, verbose=0, callbacks=[EpochTimer()])
        return epoch_time.pop()

    feeds = {}
    for name, model in models.items():
        if args.mode == "fit":
            fit_epoch(model)  # trace, compile (full and partial batch), warm up
            continue
        model.make_train_function()
        feeds[name] = feed()
        for _ in range(8):  # trace, compile, warm up
            model.train_function(feeds[name])
    times = {name: [] for name in models}
    cpu = {name: [] for name in models}
    rng = random.Random(0)
    for r in range(args.rounds):
        order = list(models)
        rng.shuffle(order)
        for name in order:
            c0 = time.process_time()
            if args.mode == "fit":
                times[name].append(fit_epoch(models[name]))
                cpu[name].append(time.process_time() - c0)
                continue
            fn, it = models[name].train_function, feeds[name]
            start = time.perf_counter()
            for _ in range(args.calls):
                fn(it)
            models[name].optimizer.iterations.numpy()  # sync
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - c0)
        if r % 10 == 9:
            print(f"round {r + 1}", flush=True, file=sys.stderr)
    steps = args.calls * args.steps_per_execution if args.mode == "steps" else -(-len(x_all) // 128)
    base = np.asarray(times["keras_io"])
    cbase = np.asarray(cpu["keras_io"])
    rows = {}
    for name, t in times.items():
        t = np.asarray(t)
        ratios = base / t
        cratio = float(np.median(cbase / np.asarray(cpu[name])))
        rows[name] = {"ratio_vs_keras_io": float(np.median(ratios)),
                      "ratio_q25": float(np.quantile(ratios, 0.25)),
                      "ratio_q75": float(np.quantile(ratios, 0.75)),
                      "ms_per_step": 1000 * float(np.median(t)) / steps,
                      "ms_per_step_min": 1000 * float(np.min(t)) / steps,
                      "cpu_ratio_vs_keras_io": cratio,
                      "cpu_ms_per_step": 1000 * float(np.median(cpu[name])) / steps}
    for name, r in rows.items():
        print(f"{name:24s} ratio {r['ratio_vs_keras_io']:.3f} "
              f"[{r['ratio_q25']:.3f}, {r['ratio_q75']:.3f}]  "
              f"{r['ms_per_step']:.3f} ms/step (min {r['ms_per_step_min']:.3f}) | cpu ratio "
              f"{r['cpu_ratio_vs_keras_io']:.3f}, {r['cpu_ms_per_step']:.3f} cpu-ms/step")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows, "times": times, "cpu": cpu}, f, indent=1)


if __name__ == "__main__":
    main()
