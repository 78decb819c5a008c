"""Held-out ELBO, IWAE bound, importance-sampled log p(x) and the gap for VAE variants.

    python benchmarks/bench_bounds.py                       # built-in digits, 3 seeds
    python benchmarks/bench_bounds.py --epochs 60 --seeds 0 1 2 3 4
    python benchmarks/bench_bounds.py --variants hierarchical   # rows whose name matches

Every variant gets the same budget (architecture, epochs, batch, optimizer) on
the built-in 8×8 digits with a Bernoulli likelihood; numbers are nats per
held-out digit, mean ± standard deviation over seeds. Not part of the tests.
"""

import argparse
import json
import os
import sys

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

VARIANTS = {
    "VAE": {},
    "β-VAE (β = 2)": {"beta": 2.0},
    "full-covariance q": {"posterior": "full"},
    "IAF q (2 steps)": {"posterior": "iaf"},
    "planar-flow q (4 steps)": {"posterior": "planar"},
    "IWAE (k = 8, DReG)": {"objective": "iwae", "k": 8, "gradient_estimator": "dreg"},
    "VampPrior (20)": {"prior": "vamp", "num_components": 20},
    "two-layer hierarchical (z₁ 8, z₂ 4)": {"posterior": "hierarchical", "top_latent_dim": 4},
}


def run(name, seed, args):
    import keras

    import tfvae

    (x_train, _), (x_val, _) = tfvae.data.load_digits()
    model = tfvae.build_vae((8, 8, 1), args.latent_dim, hidden_units=(256, 128), seed=seed,
                            **VARIANTS[name])
    model.compile(optimizer=keras.optimizers.Adam(2e-3), jit_compile=True, steps_per_execution=16)
    model.fit(x_train, epochs=args.epochs, batch_size=64, verbose=0)
    terms = [model.elbo(x_val, seed=s) for s in range(10)]
    elbo = np.mean([t["elbo"].numpy() for t in terms])
    # The KL, and a hierarchy's per-layer KL terms, in nats.
    kls = {key: float(np.mean([t[key].numpy() for t in terms]))
           for key in terms[0] if key.startswith("kl")}
    iwae = float(np.mean(model.iwae_bound(x_val, k=50, seed=1, chunk_size=50).numpy()))
    log_px = float(np.mean(model.log_likelihood(x_val, num_samples=args.k, seed=2).numpy()))
    return {"elbo": float(elbo), "iwae_50": iwae, "log_px": log_px, "gap": log_px - float(elbo),
            **kls}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--latent-dim", type=int, default=8)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--k", type=int, default=1000, help="importance samples for log p(x)")
    parser.add_argument("--variants", nargs="+", default=None,
                        help="run only variants whose name contains one of these words")
    parser.add_argument("--json", help="write the raw results here")
    args = parser.parse_args(argv)
    names = [name for name in VARIANTS if args.variants is None
             or any(word.lower() in name.lower() for word in args.variants)]
    results = {name: [run(name, seed, args) for seed in args.seeds] for name in names}
    keys = ("elbo", "iwae_50", "log_px", "gap")
    print(f"{args.epochs} epochs, latent {args.latent_dim}, seeds {args.seeds}, log p(x) with K = {args.k}")
    print("| variant | ELBO | IWAE-50 | log p(x) | gap = log p(x) − ELBO |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, runs in results.items():
        cells = [f"{np.mean([r[k] for r in runs]):.2f} ± {np.std([r[k] for r in runs]):.2f}" for k in keys]
        print(f"| {name} | " + " | ".join(cells) + " |")
    for name, runs in results.items():
        kls = {k: np.mean([r[k] for r in runs]) for k in runs[0] if k.startswith("kl")}
        print(f"{name}: " + ", ".join(f"{k} = {v:.2f}" for k, v in kls.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
