"""`tfvae train` with its defaults on binarised MNIST, measured as bench_mnist.py measures.

    tfvae train --dataset ../shared/data/binarized_mnist_trainval.npz --hidden-units 512,256 \
        --latent-dim 32 --batch-size 100 --epochs 30 --patience 10 --output runs/mnist-defaults
    python benchmarks/bench_cli_defaults.py --run runs/mnist-defaults --name defaults-0

The run is the command line's own (its learning rate and schedule, its data
pipeline: all 50,000 training digits, early stopping on the validation digits);
this script only scores its `model.keras` as `bench_mnist.py` scores the
benchmark recipe: the first `--eval-examples` validation digits, log p(x) with
K = `--k` importance samples, seed 0, batches of 100. The result goes to
`results/mnist_cli/<name>.json` with the run's settings and its history. Not part
of the tests.
"""

import argparse
import csv
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a finished `tfvae train` run directory")
    parser.add_argument("--name", required=True, help="the result's name")
    parser.add_argument("--k", type=int, default=5000, help="importance samples for log p(x)")
    parser.add_argument("--eval-examples", type=int, default=2000)
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results",
                                                         "mnist_cli"))
    args = parser.parse_args(argv)

    import tfvae
    from tfvae import runs

    config, model = runs.load_run(args.run)
    x, _ = runs.held_out(config)  # the validation split, prepared as the run prepares it
    start = time.perf_counter()
    metrics = tfvae.evaluation.evaluate_model(model, x[: args.eval_examples], num_samples=args.k,
                                              seed=0, batch_size=100, surgery_examples=0)
    eval_seconds = time.perf_counter() - start
    with open(os.path.join(args.run, "history.csv"), newline="") as f:
        history = list(csv.DictReader(f))
    val_elbo = [float(row["val_elbo"]) for row in history]
    result = {
        "name": args.name, "run": os.path.abspath(args.run),
        "config": json.load(open(os.path.join(args.run, runs.RUN_FILE))),
        "epochs_trained": len(history),
        "best_epoch": max(range(len(val_elbo)), key=val_elbo.__getitem__) + 1,
        "val_elbo_curve": val_elbo,
        "learning_rate_curve": [float(row["learning_rate"]) for row in history],
        "elbo": metrics["elbo"], "log_px": metrics["log_px"], "gap": metrics["elbo_gap"],
        "kl": metrics["kl"], "active_units": metrics["active_units"],
        "eval_examples": metrics["num_examples"], "k": args.k, "eval_seconds": eval_seconds,
    }
    os.makedirs(args.output, exist_ok=True)
    path = os.path.join(args.output, f"{args.name}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(result, f, indent=2)
    os.replace(path + ".tmp", path)
    print(json.dumps({k: v for k, v in result.items() if not k.endswith("curve")}))


if __name__ == "__main__":
    main()
