"""The ELBO gap on statically binarised MNIST: variants, log p(x) (K = 5,000), gap parts.

    python benchmarks/bench_mnist.py --data ../shared/data/binarized_mnist_trainval.npz
    python benchmarks/bench_mnist.py --data ... --variants VAE IWAE-5 --seeds 0 1 2 --epochs 200

Data: the Larochelle–Murray binarisation (`x_train` 50,000, `x_valid` 10,000).
The last 5,000 training images are held out for early stopping; numbers are
reported on `x_valid`, which training never sees. Every variant uses the same
784–512–256–(32) MLP family, batch 100, early stopping on the
held-out ELBO (patience 10) within `--epochs`, with Adam's rate decaying
from 1e-3 to `--final-lr` (cosine) over the budget. Each (variant, seed) is written
to `results/mnist/<variant>-<seed>.json` and skipped when present, so a long
table can be built over several runs. Not part of the tests.
"""

import argparse
import json
import os
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

VARIANTS = {
    "VAE": {},
    "IWAE-5": {"objective": "iwae", "k": 5, "gradient_estimator": "dreg"},
    "IWAE-50": {"objective": "iwae", "k": 50, "gradient_estimator": "dreg"},
    "IAF": {"posterior": "iaf"},
    "VampPrior": {"prior": "vamp", "num_components": 500},
    "hierarchical": {"posterior": "hierarchical", "top_latent_dim": 16},
}


def _load(path):
    with np.load(path) as f:
        x_train, x_valid = f["x_train"], f["x_valid"]
    flat = lambda x: x.reshape(len(x), -1).astype("float32")  # noqa: E731
    return flat(x_train), flat(x_valid)


def run(name, seed, args):
    import keras
    import tensorflow as tf

    import tfvae
    from tfvae import gap

    x_train, x_valid = _load(args.data)
    x_fit, x_stop = x_train[:-5000], x_train[-5000:]
    keras.utils.set_random_seed(seed)
    model = tfvae.build_vae((784,), 32, hidden_units=(512, 256), seed=seed, **VARIANTS[name])
    steps = -(-len(x_fit) // 100) * args.epochs
    learning_rate = keras.optimizers.schedules.CosineDecay(1e-3, steps, alpha=args.final_lr / 1e-3)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), jit_compile=True,
                  steps_per_execution=50)
    stop = keras.callbacks.EarlyStopping(monitor="val_elbo", mode="max", patience=args.patience,
                                         restore_best_weights=True)
    train = tf.data.Dataset.from_tensor_slices(x_fit).shuffle(len(x_fit), seed=seed).batch(100)
    start = time.perf_counter()
    history = model.fit(train, epochs=args.epochs, validation_data=(x_stop,), callbacks=[stop],
                        verbose=args.verbose).history
    train_seconds = time.perf_counter() - start

    start = time.perf_counter()
    metrics = tfvae.evaluation.evaluate_model(model, x_valid[: args.eval_examples],
                                              num_samples=args.k, seed=seed, batch_size=100)
    eval_seconds = time.perf_counter() - start
    start = time.perf_counter()
    decomposition = gap.decompose_gap(model, x_valid[: args.gap_examples], steps=args.gap_steps,
                                      eval_samples=1000, log_px_samples=args.gap_k, seed=seed)
    gap_seconds = time.perf_counter() - start
    return {
        "variant": name, "seed": seed, "options": VARIANTS[name],
        "epochs_trained": len(history["loss"]), "best_epoch": int(np.argmax(history["val_elbo"])) + 1,
        "train_seconds": train_seconds, "eval_seconds": eval_seconds, "gap_seconds": gap_seconds,
        "val_elbo_curve": [float(v) for v in history["val_elbo"]],
        "elbo_curve": [float(v) for v in history["elbo"]],  # training ELBO, for overfitting
        "elbo": metrics["elbo"], "log_px": metrics["log_px"], "gap": metrics["elbo_gap"],
        "kl": metrics["kl"], **{k: metrics[k] for k in ("kl_z1", "kl_z2") if k in metrics},
        "active_units": metrics["active_units"], "eval_examples": metrics["num_examples"],
        "k": args.k,
        "gap_examples": args.gap_examples,
        "gap_subset": {key: float(np.mean(decomposition[key])) for key in (
            "log_px", "elbo", "elbo_optimized", "gap", "approximation_gap", "amortization_gap")},
        "gap_subset_mc_stderr": {key: float(np.sqrt(np.sum(decomposition[key + "_stderr"] ** 2))
                                        / len(decomposition[key])) for key in (
            "log_px", "elbo", "elbo_optimized", "gap", "approximation_gap", "amortization_gap")},
        "gap_last_improvement": decomposition["last_improvement"],
        "gap_unconverged": decomposition["num_unconverged"],
        "gap_steps_taken": decomposition["steps"],
        "gap_log_px_ess_min": float(np.min(decomposition["log_px_ess"])),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="binarized_mnist_trainval.npz")
    parser.add_argument("--variants", nargs="+", default=["VAE", "IWAE-5", "IAF", "VampPrior",
                                                          "hierarchical"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--patience", type=int, default=10)
    parser.add_argument("--final-lr", type=float, default=1e-4,
                        help="Adam's rate decays from 1e-3 to this over --epochs (cosine)")
    parser.add_argument("--k", type=int, default=5000, help="importance samples for log p(x)")
    parser.add_argument("--eval-examples", type=int, default=10000)
    parser.add_argument("--gap-examples", type=int, default=500)
    parser.add_argument("--gap-steps", type=int, default=4000,
                        help="the most steps of q*'s optimisation (it stops once converged)")
    parser.add_argument("--gap-k", type=int, default=1000)
    parser.add_argument("--verbose", type=int, default=2)
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results",
                                                         "mnist"))
    args = parser.parse_args(argv)
    os.makedirs(args.output, exist_ok=True)
    for seed in args.seeds:  # seed-major: a stopped run leaves whole seeds
        for name in args.variants:
            path = os.path.join(args.output, f"{name}-{seed}.json")
            if os.path.exists(path):
                continue
            result = run(name, seed, args)
            with open(path + ".tmp", "w") as f:
                json.dump(result, f, indent=2)
            os.replace(path + ".tmp", path)
            print(json.dumps(result))


if __name__ == "__main__":
    main()
