"""The `tfvae` command: `train`, `evaluate`, `sample`, `export`.

The command only parses arguments and calls library functions; a bad argument
ends with a one-line reason on stderr and exit status 2.
"""

import argparse
import json
import logging
import os
import sys

from tfvae import builders

logger = logging.getLogger("tfvae")


def _units(text):
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")


def _parser():
    from tfvae.runs import RunConfig

    defaults = RunConfig()
    parser = argparse.ArgumentParser(prog="tfvae", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a VAE and write a report",
                           description="Train a VAE, evaluate it on held-out data, write figures "
                           "and report.md into --output.")
    train.add_argument("--dataset", default=defaults.dataset,
                       help="'digits' (built in, offline), a TensorFlow Datasets name (mnist, "
                       "fashion_mnist, binarized_mnist, cifar10), a .npy/.npz file, or a folder "
                       "of images (default: %(default)s)")
    train.add_argument("--binarize", choices=("none", "static", "dynamic"), default="none",
                       help="binarise [0, 1] data for a Bernoulli likelihood: one fixed draw "
                       "(static) or a fresh draw every batch (dynamic)")
    train.add_argument("--architecture", choices=builders.ARCHITECTURES, default=defaults.architecture)
    train.add_argument("--latent-dim", type=int, default=defaults.latent_dim)
    train.add_argument("--likelihood", choices=tuple(builders.LIKELIHOODS), default=defaults.likelihood)
    train.add_argument("--posterior", choices=tuple(builders.POSTERIORS), default=defaults.posterior)
    train.add_argument("--prior", choices=builders.PRIORS, default=defaults.prior)
    train.add_argument("--top-latent-dim", type=int, default=defaults.top_latent_dim,
                       help="size of z2 for --posterior hierarchical (z1 has --latent-dim; "
                       "default: latent-dim // 2)")
    train.add_argument("--conditional", action="store_true",
                       help="a conditional VAE on the dataset's labels: q(z|x, y), p(x|z, y)")
    train.add_argument("--hidden-units", type=_units, default=defaults.hidden_units,
                       help="MLP widths, e.g. 256,128 (default: 256,128)")
    train.add_argument("--filters", type=_units, default=defaults.filters,
                       help="conv channels, e.g. 32,64 (default: 32,64)")
    train.add_argument("--beta", type=float, default=defaults.beta)
    train.add_argument("--warmup-epochs", type=float, default=defaults.warmup_epochs,
                       help="linear KL warm-up from β=0 over this many epochs (default: none)")
    train.add_argument("--free-bits", type=float, default=defaults.free_bits,
                       help="nats of KL not penalised: per example on the total, or per group "
                       "with --free-bits-groups")
    train.add_argument("--free-bits-groups", type=int, default=defaults.free_bits_groups,
                       help="apply --free-bits per group of latent dimensions (a hierarchy's "
                       "groups are its 2 layers), on the batch mean (default: off)")
    train.add_argument("--num-samples", type=int, default=defaults.num_samples,
                       help="posterior samples per example in the training ELBO")
    train.add_argument("--objective", choices=("elbo", "iwae"), default=defaults.objective,
                       help="train on the ELBO or the importance-weighted bound")
    train.add_argument("--k", type=int, default=defaults.k, help="importance samples for iwae")
    train.add_argument("--gradient-estimator", choices=("standard", "dreg"),
                       default=defaults.gradient_estimator,
                       help="IWAE encoder gradients: standard or doubly reparameterised")
    train.add_argument("--epochs", type=int, default=defaults.epochs)
    train.add_argument("--batch-size", type=int, default=defaults.batch_size)
    train.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    train.add_argument("--patience", type=int, default=defaults.patience,
                       help="early-stopping patience in epochs")
    train.add_argument("--seed", type=int, default=defaults.seed)
    train.add_argument("--jit", action=argparse.BooleanOptionalAction, default=None,
                       help="compile the train step with XLA (default: on for mlp, and for "
                       "conv on a GPU; on a CPU XLA's convolutions are slower)")
    train.add_argument("--steps-per-execution", type=int, default=defaults.steps_per_execution,
                       help="training steps per compiled call (default: %(default)s)")
    train.add_argument("--strategy", choices=("default", "mirrored", "multiworker"),
                       default="default", help="tf.distribute strategy: mirrored over local "
                       "GPUs, or multiworker with the cluster in TF_CONFIG (default: %(default)s)")
    train.add_argument("--mixed-precision", choices=("none", "float16", "bfloat16"),
                       default="none", help="networks in low precision, densities and KL in "
                       "float32; float16 adds loss scaling (default: %(default)s)")
    train.add_argument("--eval-samples", type=int, default=defaults.eval_samples,
                       help="importance samples for the held-out log p(x)")
    train.add_argument("--output", default="runs/digits", help="run directory (default: %(default)s)")
    mode = train.add_mutually_exclusive_group()
    mode.add_argument("--overwrite", action="store_true", help="replace an earlier run in --output")
    mode.add_argument("--resume", action="store_true", help="continue the run in --output")
    train.add_argument("--quiet", action="store_true", help="no progress bars")

    evaluate = sub.add_parser("evaluate", help="evaluate a trained run on held-out data",
                              description="ELBO, reconstruction, KL, importance-sampled log p(x), "
                              "the ELBO gap and active units on the run's validation split.")
    evaluate.add_argument("run", help="a run directory written by `tfvae train`")
    evaluate.add_argument("--num-samples", type=int, default=1000,
                          help="importance samples K for log p(x) (default: %(default)s)")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--output", help="JSON file (default: RUN/evaluation.json)")
    evaluate.add_argument("--overwrite", action="store_true")

    export = sub.add_parser("export", help="export a trained run for serving",
                            description="Write a SavedModel in TF Serving's layout "
                            "(OUTPUT/MODEL_NAME/VERSION) or ONNX graphs (OUTPUT/*.onnx).")
    export.add_argument("run", help="a run directory written by `tfvae train`")
    export.add_argument("--format", choices=("saved_model", "onnx"), required=True)
    export.add_argument("--output", help="base directory (default: RUN/export/FORMAT)")
    export.add_argument("--model-name", default="tfvae", help="TF Serving model name")
    export.add_argument("--version", type=int, help="SavedModel version (default: next free)")
    export.add_argument("--opset", type=int, default=None, help="ONNX opset (default: 17)")

    sample = sub.add_parser("sample", help="generate data from the prior",
                            description="Decode z ~ p(z): an image grid (.png) or an array (.npy).")
    sample.add_argument("run", help="a run directory written by `tfvae train`")
    sample.add_argument("-n", "--num", type=int, default=64)
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--label", type=int, default=None,
                        help="conditional runs: the label to generate (default: every label "
                        "in turn)")
    sample.add_argument("--output", help="a .png or .npy file (default: RUN/samples-SEED.png)")
    sample.add_argument("--overwrite", action="store_true")
    return parser


def _refuse_existing(path, overwrite):
    if os.path.exists(path) and not overwrite:
        raise ValueError(f"{path} exists; pass --overwrite to replace it.")


def _train(args):
    from tfvae import runs

    config = runs.RunConfig(
        dataset=args.dataset, architecture=args.architecture, latent_dim=args.latent_dim,
        likelihood=args.likelihood, posterior=args.posterior, prior=args.prior,
        hidden_units=args.hidden_units, filters=args.filters, beta=args.beta,
        warmup_epochs=args.warmup_epochs, free_bits=args.free_bits, num_samples=args.num_samples,
        epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
        patience=args.patience, seed=args.seed, jit_compile=args.jit, eval_samples=args.eval_samples,
        steps_per_execution=args.steps_per_execution,
        binarize=args.binarize, strategy=args.strategy, mixed_precision=args.mixed_precision,
        objective=args.objective, k=args.k, gradient_estimator=args.gradient_estimator,
        top_latent_dim=args.top_latent_dim, free_bits_groups=args.free_bits_groups,
        conditional=args.conditional,
    )
    metrics = runs.train(config, args.output, overwrite=args.overwrite, resume=args.resume,
                         verbose=0 if args.quiet else 1)
    if metrics:  # empty on multi-worker workers other than the chief
        _print_table(metrics)
        print(f"report: {os.path.join(args.output, 'report.md')}")


def _print_table(metrics):
    keys = ("elbo", "reconstruction", "kl", "kl_z1", "kl_z2", "log_px", "elbo_gap",
            "bits_per_dim", "active_units")
    print(f"{'quantity':<16}{'value':>14}")
    for key in (key for key in keys if key in metrics):
        value = metrics[key]
        print(f"{key:<16}{value:>14.4f}" if isinstance(value, float) else f"{key:<16}{value:>14}")


def _evaluate(args):
    from tfvae import evaluation, runs

    output = args.output or os.path.join(args.run, "evaluation.json")
    _refuse_existing(output, args.overwrite)
    config, model = runs.load_run(args.run)
    x_val, y_val = runs.held_out(config)
    metrics = evaluation.evaluate_model(
        model, x_val, num_samples=args.num_samples, seed=args.seed,
        y=None if model.condition_dim is None else y_val,
    )
    with open(output, "w") as f:
        json.dump(metrics, f, indent=2, sort_keys=True)
    _print_table(metrics)
    print(f"wrote {output}")


def _sample(args):
    import numpy as np

    from tfvae import report, runs

    output = args.output or os.path.join(args.run, f"samples-{args.seed}.png")
    if not output.endswith((".png", ".npy")):
        raise ValueError(f"--output must end in .png or .npy. Received: {output}")
    _refuse_existing(output, args.overwrite)
    _, model = runs.load_run(args.run)
    labels = None
    if model.condition_dim is not None:
        labels = np.arange(args.num) % model.condition_dim if args.label is None else args.label
    elif args.label is not None:
        raise ValueError("--label needs a conditional run (trained with --conditional).")
    samples = model.sample(args.num, seed=args.seed, y=labels).numpy()
    if output.endswith(".npy"):
        np.save(output, samples)
    else:
        report.plot_grid(report._to_display(model, samples), output, "samples from the prior")
    print(f"wrote {output}")


def _export(args):
    from tfvae import export, runs

    output = args.output or os.path.join(args.run, "export", args.format)
    _, model = runs.load_run(args.run)
    if args.format == "saved_model":
        path = export.export_saved_model(model, output, args.model_name, version=args.version)
        print(f"wrote SavedModel {path}")
    else:
        written = export.export_onnx(model, output, opset=args.opset or export.ONNX_OPSET)
        for name, path in written.items():
            print(f"wrote {name}: {path}")


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = _parser().parse_args(argv)
    handlers = {"train": _train, "evaluate": _evaluate, "sample": _sample, "export": _export}
    try:
        handlers[args.command](args)
    except ValueError as error:
        print(f"tfvae {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
