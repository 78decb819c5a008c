"""The `tfvae` command: `train`, `evaluate`, `sample`, `export`.

The command only parses arguments and calls library functions; a bad argument
ends with a one-line reason on stderr and exit status 2.
"""

import argparse
import dataclasses
import json
import logging
import os
import sys

from tfvae import builders
from tfvae import data

logger = logging.getLogger("tfvae")


def _units(text):
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")


def _train_arguments(train):
    """`tfvae train`'s options: one per `RunConfig` field, `--field-name` with `dest` the field.

    Choices come from the registries the library checks names against, and
    defaults from `RunConfig`, so `RunConfig(**fields of args)` is the run.
    """
    from tfvae import options
    from tfvae import runs

    defaults = runs.RunConfig()

    def option(name, *flags, **kwargs):
        flags = flags or ("--" + name.replace("_", "-"),)
        train.add_argument(*flags, dest=name, default=getattr(defaults, name), **kwargs)

    option("dataset", help="'digits' (built in, offline), a TensorFlow Datasets name (mnist, "
           "fashion_mnist, binarized_mnist, cifar10), a .npy/.npz file, or a folder "
           "of images (default: %(default)s)")
    option("binarize", choices=data.BINARIZE,
           help="binarise [0, 1] data for a Bernoulli likelihood: one fixed draw "
           "(static) or a fresh draw every batch (dynamic)")
    option("architecture", choices=builders.ARCHITECTURES)
    option("latent_dim", type=int)
    option("likelihood", choices=tuple(builders.LIKELIHOODS))
    option("posterior", choices=tuple(builders.POSTERIORS))
    option("prior", choices=tuple(builders.PRIORS))
    option("top_latent_dim", type=int,
           help="size of z2 for --posterior hierarchical (z1 has --latent-dim; "
           "default: latent-dim // 2)")
    option("conditional", action="store_true",
           help="a conditional VAE on the dataset's labels: q(z|x, y), p(x|z, y)")
    option("hidden_units", type=_units, help="MLP widths, e.g. 256,128 (default: 256,128)")
    option("filters", type=_units, help="conv channels, e.g. 32,64 (default: 32,64)")
    option("beta", type=float)
    option("warmup_epochs", type=float,
           help="linear KL warm-up from β=0 over this many epochs (default: none)")
    option("free_bits", type=float,
           help="nats of KL not penalised: per example on the total, or per group "
           "with --free-bits-groups")
    option("free_bits_groups", type=int,
           help="apply --free-bits per group of latent dimensions (a hierarchy's "
           "groups are its 2 layers), on the batch mean (default: off)")
    option("num_samples", type=int, help="posterior samples per example in the training ELBO")
    option("objective", choices=options.OBJECTIVES,
           help="train on the ELBO or the importance-weighted bound")
    option("k", type=int, help="importance samples for iwae")
    option("gradient_estimator", choices=options.GRADIENT_ESTIMATORS,
           help="IWAE encoder gradients: standard or doubly reparameterised")
    option("epochs", type=int)
    option("batch_size", type=int)
    option("learning_rate", type=float)
    option("patience", type=int, help="early-stopping patience in epochs")
    option("seed", type=int)
    option("jit_compile", "--jit", action=argparse.BooleanOptionalAction,
           help="compile the train step with XLA (default: on for mlp, and for "
           "conv on a GPU; on a CPU XLA's convolutions are slower)")
    option("steps_per_execution", type=int,
           help="training steps per compiled call (default: %(default)s)")
    option("strategy", choices=runs.STRATEGIES,
           help="tf.distribute strategy: mirrored over local GPUs, or multiworker with the "
           "cluster in TF_CONFIG (default: %(default)s)")
    option("mixed_precision", choices=tuple(runs.PRECISION_POLICIES),
           help="networks in low precision, densities and KL in float32; float16 adds loss "
           "scaling (default: %(default)s)")
    option("eval_samples", type=int, help="importance samples for the held-out log p(x)")
    option("decompose_gap", action="store_true",
           help="split the held-out ELBO gap into amortization and approximation gaps "
           "(optimises q per example; see --gap-examples)")
    option("gap_examples", type=int, help="held-out examples for --decompose-gap")


def _config(args):
    """The `RunConfig` that `tfvae train`'s arguments describe."""
    from tfvae import runs

    return runs.RunConfig(**{f.name: getattr(args, f.name)
                             for f in dataclasses.fields(runs.RunConfig)})


def _parser():
    parser = argparse.ArgumentParser(prog="tfvae", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a VAE and write a report",
                           description="Train a VAE, evaluate it on held-out data, write figures "
                           "and report.md into --output.")
    _train_arguments(train)
    train.add_argument("--output", default="runs/digits", help="run directory (default: %(default)s)")
    mode = train.add_mutually_exclusive_group()
    mode.add_argument("--overwrite", action="store_true", help="replace an earlier run in --output")
    mode.add_argument("--resume", action="store_true", help="continue the run in --output")
    train.add_argument("--quiet", action="store_true", help="no progress bars")

    evaluate = sub.add_parser("evaluate", help="evaluate a trained run on held-out data",
                              description="ELBO, reconstruction, KL, importance-sampled log p(x), "
                              "the ELBO gap and active units on the run's validation split, or on --dataset "
                              "/ --split.")
    evaluate.add_argument("run", help="a run directory written by `tfvae train`")
    evaluate.add_argument("--dataset", default=None,
                          help="evaluate on this dataset (a TFDS name or a .npy/.npz file or "
                          "image folder) instead of the run's own (default: the run's)")
    evaluate.add_argument("--split", choices=data.SPLITS, default="validation",
                          help="which split of the dataset (default: %(default)s; test needs "
                          "a TFDS name or a .npz with x_test)")
    evaluate.add_argument("--num-samples", type=int, default=1000,
                          help="importance samples K for log p(x) (default: %(default)s)")
    evaluate.add_argument("--decompose-gap", action="store_true",
                          help="also split the gap into amortization and approximation gaps "
                          "(writes OUTPUT_gap.png)")
    evaluate.add_argument("--gap-examples", type=int, default=500,
                          help="examples for --decompose-gap (default: %(default)s)")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--output", help="JSON file (default: RUN/evaluation.json)")
    evaluate.add_argument("--overwrite", action="store_true")

    export = sub.add_parser("export", help="export a trained run for serving",
                            description="Write a SavedModel in TF Serving's layout "
                            "(OUTPUT/MODEL_NAME/VERSION) or ONNX graphs (OUTPUT/*.onnx).")
    export.add_argument("run", help="a run directory written by `tfvae train`")
    export.add_argument("--format", choices=tuple(_EXPORTERS), required=True)
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

    metrics = runs.train(_config(args), args.output, overwrite=args.overwrite,
                         resume=args.resume, verbose=0 if args.quiet else 1)
    if metrics:  # empty on multi-worker workers other than the chief
        _print_table(metrics)
        print(f"report: {os.path.join(args.output, 'report.md')}")


def _print_table(metrics):
    from tfvae import evaluation

    print(f"{'quantity':<16}{'value':>14}")
    for key, text in evaluation.summary(metrics):
        print(f"{key:<16}{text:>14}")


def _evaluate(args):
    from tfvae import evaluation, report, runs

    output = args.output or os.path.join(args.run, "evaluation.json")
    figure = os.path.splitext(output)[0] + "_gap.png"
    _refuse_existing(output, args.overwrite)
    if args.decompose_gap:
        _refuse_existing(figure, args.overwrite)
    config, model = runs.load_run(args.run)
    x, y = runs.held_out(config, dataset=args.dataset, split=args.split)
    y = None if model.condition_dim is None else y
    metrics = evaluation.evaluate_model(model, x, num_samples=args.num_samples, seed=args.seed,
                                        y=y, verbose=int(sys.stdout.isatty()))
    metrics.update(dataset=args.dataset or config.dataset, split=args.split)
    if args.decompose_gap:
        metrics.update(evaluation.gap_decomposition(model, x, y=y, num_examples=args.gap_examples,
                                                    seed=args.seed))
        report.plot_gap({os.path.basename(os.path.normpath(args.run)): metrics}, figure)
        print(f"wrote {figure}")
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
        report.plot_grid(report.to_display(model, samples), output, "samples from the prior")
    print(f"wrote {output}")


def _export_saved_model(model, output, args):
    from tfvae import export

    path = export.export_saved_model(model, output, args.model_name, version=args.version)
    print(f"wrote SavedModel {path}")


def _export_onnx(model, output, args):
    from tfvae import export

    written = export.export_onnx(model, output, opset=args.opset or export.ONNX_OPSET)
    for name, path in written.items():
        print(f"wrote {name}: {path}")


# `tfvae export --format` names -> writers.
_EXPORTERS = {"saved_model": _export_saved_model, "onnx": _export_onnx}


def _export(args):
    from tfvae import runs

    output = args.output or os.path.join(args.run, "export", args.format)
    _, model = runs.load_run(args.run)
    _EXPORTERS[args.format](model, output, args)


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
