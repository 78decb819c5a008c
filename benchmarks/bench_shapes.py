"""Disentanglement on the procedural shapes: VAE, β-VAE and β-TCVAE, over seeds.

    python benchmarks/bench_shapes.py [--seeds 0 1 2] [--epochs 30] [--population]

Data: `tfvae.data.load("shapes")` (20,808 32×32 binary images with five known
factors: shape, scale, rotation, x, y; a random 80/20 split). Every variant
is the same 1024–256–128–(10) MLP with a Bernoulli likelihood, Adam 1e-3,
batch 64, `--epochs` epochs (the best held-out ELBO restored). On the first
2,000 validation images: ELBO, log p(x), and ELBO surgery (`elbo_surgery`,
2 draws per image): the index-code MI, KL(q(z) ‖ p(z)) and its split into
total correlation and dimension-wise KL, each twice — for the 2,000 images'
own aggregate posterior (`mi`, `tc`, ...; MI at most log 2,000) and for the
population's, each image left out of the mixture its codes are scored under
(`mi_heldout`, ...) — with their errors; and the MIG of the posterior means
for the five factors; a latent traversal per model in `results/shapes/`.
Each (variant, seed) is written to `results/shapes/<variant>-<seed>.json`
and skipped when present. Not part of
the tests.
"""

import argparse
import json
import os
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

VARIANTS = {
    "VAE": {},
    "beta-VAE (4)": {"beta": 4.0},
    "beta-TCVAE (6)": {"objective": "beta_tcvae", "tc_weight": 6.0},
}
EVAL = 2000
# elbo_surgery's keys and their short names in the results (and the README's table).
SURGERY = {"mutual_information": "mi", "marginal_kl": "marginal_kl",
           "total_correlation": "tc", "dimension_wise_kl": "dwkl"}


def run(name, seed, args, output):
    import keras

    import tfvae
    from tfvae import evaluation, report

    (x_train, _), (x_val, _) = tfvae.data.load("shapes")
    known = tfvae.data.load_factors("shapes", "validation")
    options = dict(VARIANTS[name])
    if options.get("objective") == "beta_tcvae":
        options["dataset_size"] = len(x_train)
    keras.utils.set_random_seed(seed)
    model = tfvae.build_vae((32, 32, 1), 10, hidden_units=(256, 128), seed=seed, **options)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=True, steps_per_execution=20)
    best = keras.callbacks.EarlyStopping(monitor="val_elbo", mode="max", patience=args.epochs,
                                         restore_best_weights=True)
    start = time.perf_counter()
    history = model.fit(x_train, epochs=args.epochs, batch_size=64, validation_data=(x_val,),
                        callbacks=[best], verbose=args.verbose).history
    train_seconds = time.perf_counter() - start

    x, factors = x_val[:EVAL], known["factors"][:EVAL]
    metrics = evaluation.evaluate_model(model, x, num_samples=100, seed=seed,
                                        surgery_examples=EVAL)
    mig = evaluation.disentanglement_metrics(model, x, factors, known["names"])
    report.plot_traversal(model, x, os.path.join(output, f"{name}-{seed}-traversal.png"))
    surgery = {}
    for key, short in SURGERY.items():
        for suffix in ("", "_mc_stderr", "_heldout", "_heldout_stderr"):
            if key + suffix in metrics:
                surgery[short + suffix] = metrics[key + suffix]
    if args.population:
        # The shapes are every combination of the factors once, so the data distribution is
        # uniform over these 20,808 images and the surgery of the whole set has the
        # population's terms as its target: only the Monte Carlo error of the draws remains.
        start = time.perf_counter()
        whole = evaluation.elbo_surgery(model, np.concatenate([x_train, x_val]), seed=seed,
                                        chunk_size=64)
        surgery["population_seconds"] = time.perf_counter() - start
        for key, short in SURGERY.items():
            for suffix in ("", "_mc_stderr"):
                if key + suffix in whole:
                    surgery["population_" + short + suffix] = whole[key + suffix]
        surgery["population_examples"] = whole["surgery_examples"]
    return {
        "variant": name, "seed": seed, "options": VARIANTS[name], "epochs": args.epochs,
        "best_epoch": int(np.argmax(history["val_elbo"])) + 1, "train_seconds": train_seconds,
        **{key: metrics[key] for key in ("elbo", "reconstruction", "kl", "log_px",
                                         "active_units", "mi_upper_bound", "mi_saturated")},
        **surgery,
        **mig,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--verbose", type=int, default=2)
    parser.add_argument("--population", action="store_true",
                        help="also ELBO surgery over all 20,808 images (the population; "
                             "N² = 4.3e8 densities per draw, minutes per model)")
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results",
                                                         "shapes"))
    args = parser.parse_args(argv)
    os.makedirs(args.output, exist_ok=True)
    for seed in args.seeds:
        for name in args.variants:
            path = os.path.join(args.output, f"{name}-{seed}.json")
            if os.path.exists(path):
                continue
            result = run(name, seed, args, args.output)
            with open(path + ".tmp", "w") as f:
                json.dump(result, f, indent=2)
            os.replace(path + ".tmp", path)
            print(json.dumps(result))


if __name__ == "__main__":
    main()
