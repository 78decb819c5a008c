"""VQ-VAE against the Gaussian VAE at the same budget: reconstruction and codebook usage.

    python benchmarks/bench_vq.py --dataset digits --epochs 50
    python benchmarks/bench_vq.py --dataset ../shared/data/binarized_mnist_trainval.npz \\
        --epochs 10 --hidden-units 512 256 --latent-dim 32

Each variant is one `tfvae train` run (`tfvae.runs.train`) with the same flags
and seed; only `--posterior` (and the VQ options) differ. On the run's held-out
split it reports, per example in nats, the reconstruction term at the model's
deterministic code (`log p(x | z)` at z = g(0; q): the posterior mean for the
Gaussian, z_q for VQ), its one-sample ELBO terms, the squared error of the
reconstructed means, and for VQ the codebook usage (`tfvae.vq.codebook_usage`:
perplexity, dead codes). Results go to `results/vq/<dataset>-<variant>.json`.
Not part of the tests.
"""

import argparse
import json
import os
import tempfile
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _variants(args):
    vq = {"posterior": "vq", "codebook_size": args.codebook_size, "code_dim": args.code_dim}
    return {"gaussian": {"posterior": "diagonal"}, "vq": vq,
            "vq_ema": {**vq, "ema_decay": 0.99}}


def _measure(model, x):
    from tfvae import vq

    out = {}
    z = model.latent_code(x)
    out["reconstruction_at_code"] = float(np.mean(model.decode(z).log_prob(x)))
    out["squared_error_at_code"] = float(np.mean(np.sum(
        np.square(np.asarray(model.decode_mean(z)) - x).reshape(len(x), -1), -1)))
    terms = model.elbo(x, seed=0)
    out.update({key: float(np.mean(terms[key])) for key in ("elbo", "reconstruction", "kl")})
    if isinstance(model.posterior, vq.VQPosterior):
        usage = vq.codebook_usage(model, x)
        out.update(perplexity=usage["perplexity"], dead_codes=usage["dead_codes"],
                   codebook_size=model.posterior.codebook_size)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--latent-dim", type=int, default=8)
    parser.add_argument("--hidden-units", type=int, nargs="+", default=[256, 128])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--codebook-size", type=int, default=64)
    parser.add_argument("--code-dim", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", nargs="+", default=["gaussian", "vq", "vq_ema"])
    args = parser.parse_args()

    from tfvae import runs

    name = os.path.splitext(os.path.basename(args.dataset))[0]
    results = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "vq")
    os.makedirs(results, exist_ok=True)
    for variant in args.variants:
        options = _variants(args)[variant]
        config = runs.RunConfig(dataset=args.dataset, epochs=args.epochs,
                                latent_dim=args.latent_dim, hidden_units=tuple(args.hidden_units),
                                batch_size=args.batch_size, seed=args.seed, eval_samples=10,
                                tensorboard=False, **options).validate()
        with tempfile.TemporaryDirectory() as output:
            start = time.perf_counter()
            runs.train(config, os.path.join(output, "run"), verbose=0)
            seconds = time.perf_counter() - start
            _, model = runs.load_run(os.path.join(output, "run"))
            _, (x_val, _) = runs.load_dataset(config)
            row = {"dataset": args.dataset, "variant": variant, "epochs": args.epochs,
                   "latent_dim": args.latent_dim, "hidden_units": args.hidden_units,
                   "batch_size": args.batch_size, "seed": args.seed, **options,
                   "train_seconds": round(seconds, 1), "heldout_examples": len(x_val),
                   **_measure(model, np.asarray(x_val, "float32"))}
        print(json.dumps(row))
        with open(os.path.join(results, f"{name}-{variant}.json"), "w") as f:
            json.dump(row, f, indent=2)


if __name__ == "__main__":
    main()
