"""Disentanglement on the procedural shapes: VAE, β-VAE and β-TCVAE, over seeds.

    python benchmarks/bench_shapes.py [--seeds 0 1 2] [--epochs 30]

Data: `tfvae.data.load("shapes")` (20,808 32×32 binary images with five known
factors: shape, scale, rotation, x, y; a random 80/20 split). Every variant
is the same 1024–256–128–(10) MLP with a Bernoulli likelihood, Adam 1e-3,
batch 64, `--epochs` epochs (the best held-out ELBO restored). On the first
2,000 validation images: ELBO, the ELBO surgery terms (index-code MI and
KL(q(z) ‖ p(z))), the β-TCVAE split of the mean KL (MI, total correlation,
dimension-wise KL) with the aggregate posterior over those 2,000 images, and
the MIG of the posterior means for the five factors; a latent traversal per
model in `results/shapes/`. Each (variant, seed) is written to
`results/shapes/<variant>-<seed>.json` and skipped when present. Not part of
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


def run(name, seed, args, output):
    import keras
    import tensorflow as tf

    import tfvae
    from tfvae import evaluation, objectives, report

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
    parameters = model.posterior_parameters(*model.prepare_inputs(x))
    z = model.posterior.reparameterize(parameters, tf.random.stateless_normal(
        [4, EVAL, model.latent_dim], seed=[seed, 7]))
    split = objectives.tc_decomposition(z, parameters["loc"], parameters["scale"],
                                        model.prior.distribution().log_prob, dataset_size=EVAL)
    mig = evaluation.disentanglement_metrics(model, x, factors, known["names"])
    report.plot_traversal(model, x, os.path.join(output, f"{name}-{seed}-traversal.png"))
    return {
        "variant": name, "seed": seed, "options": VARIANTS[name], "epochs": args.epochs,
        "best_epoch": int(np.argmax(history["val_elbo"])) + 1, "train_seconds": train_seconds,
        **{key: metrics[key] for key in ("elbo", "reconstruction", "kl", "log_px",
                                         "mutual_information", "marginal_kl", "active_units")},
        **{key: float(np.mean(value)) for key, value in split.items()},
        **mig,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--verbose", type=int, default=2)
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
