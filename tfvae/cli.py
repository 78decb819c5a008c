"""The `tfvae` command: `train`, `evaluate`, `encode`, `score`, `sample`, `export`, `prepare-data`.

The command only parses arguments and calls library functions. Every expected
failure (a bad argument, a file that cannot be read or written, a failed
download) ends with a one-line reason on stderr and exit status 2; anything
else is a bug and keeps its traceback.

The console script enters through `tfvae_main.py` (outside the package), which
loads TensorFlow with its native log lines silenced before `import tfvae`.
"""

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import sys

from tfvae import files

__all__ = [
    "main",
    "MAX_GRID_BYTES",
    "MAX_SAMPLE_BYTES",
]

logger = logging.getLogger("tfvae")

# The commands that read a run directory (each holds a files.ReadLock on it while it runs).
_READERS = ("evaluate", "encode", "score", "sample", "export")
# The most float32 data `tfvae sample` decodes in one go: into a .npy, and into a .png grid.
MAX_SAMPLE_BYTES = 2 * 2**30
MAX_GRID_BYTES = 64 * 2**20
# `tfvae train` options that `--resume` honours; it takes every other setting from run.json.
_RESUME_OPTIONS = ("epochs", "quiet", "verbose", "output", "resume")
# `tfvae train` options whose flag is not `--` + the field name with dashes.
_FLAGS = {"jit_compile": "--jit"}
# The exceptions that are the user's or the machine's, not tfvae's: a bad value or file
# (ValueError, including json.JSONDecodeError and UnicodeDecodeError), and any OSError
# (permissions, missing or full disks, PIL's UnidentifiedImageError, network errors).
_EXPECTED_ERRORS = (ValueError, OSError)


def _units(text):
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")


def _train_arguments(train, defaults=True):
    """`tfvae train`'s options: one per `RunConfig` field, `--field-name` with `dest` the field.

    Choices come from the registries the library checks names against, and
    defaults from `RunConfig`, so `RunConfig(**fields of args)` is the run.
    With `defaults=False` an option the user did not pass is left out of the
    parsed namespace (see `_passed_options`).
    """
    from tfvae import builders
    from tfvae import data
    from tfvae import objective_parts
    from tfvae import options
    from tfvae import runs

    config = runs.RunConfig()

    def option(name, *flags, **kwargs):
        flags = flags or (_flag(name),)
        default = getattr(config, name) if defaults else argparse.SUPPRESS
        train.add_argument(*flags, dest=name, default=default, **kwargs)

    option("dataset", help="'digits' (built in, offline), a TensorFlow Datasets name (mnist, "
           "fashion_mnist, binarized_mnist, cifar10), a .npy/.npz file, a folder of images, "
           "or TFRecords written by `tfvae prepare-data` (their folder, or a glob of shards); "
           "folders, TFRecords and TFDS are streamed, not loaded into memory "
           "(default: %(default)s)")
    option("image_size", type=_units,
           help="image folders: scale every image to cover H,W and crop its center, so "
           "images of any sizes mix (default: all images must have the first one's size)")
    option("image_channels", type=int, choices=(0, 1, 3),
           help="image folders: 1 (greyscale) or 3 (RGB) channels (default: 0, the first "
           "image's)")
    option("skip_corrupt", action="store_true",
           help="streamed datasets: skip examples that cannot be read or decoded instead of "
           "stopping at the first")
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
    option("objective", choices=objective_parts.names(),
           help="what training minimises: the ELBO, the importance-weighted bound (iwae), "
           "β-TCVAE's split KL (β scales its three weights), ... (each objective's options "
           "below name it)")
    # Every named part's own hyperparameters, as its class declares them.
    for name, (spec, kind, owner) in builders.hyperparameters().items():
        if spec.flag:
            option(name, type=spec.type, choices=spec.choices,
                   help=f"{kind} {owner}: {spec.help} (default: %(default)s)")
    option("epochs", type=int)
    option("batch_size", type=int)
    option("learning_rate", type=float, help="Adam's initial learning rate (default: "
           "%(default)s)")
    option("lr_schedule", choices=options.LR_SCHEDULES,
           help="constant, or cosine: decay to 0.1x the learning rate over --epochs, by the "
           "optimizer's step count, so --resume continues it (default: %(default)s)")
    option("patience", type=int, help="early-stopping patience in epochs")
    option("seed", type=int)
    option("jit_compile", _FLAGS["jit_compile"], action=argparse.BooleanOptionalAction,
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
    option("gap_steps", type=int, help="the most optimisation steps per example for "
           "--decompose-gap; it stops earlier once every example has converged")
    option("tensorboard", action=argparse.BooleanOptionalAction,
           help="write TensorBoard logs into OUTPUT/tensorboard: scalars per epoch, "
           "reconstructions, samples and latent histograms (default: on; "
           "`tensorboard --logdir runs/`)")


def _config(args):
    """The `RunConfig` that `tfvae train`'s arguments describe."""
    from tfvae import runs

    return runs.RunConfig(**{f.name: getattr(args, f.name)
                             for f in dataclasses.fields(runs.RunConfig)})


def _parser(defaults=True):
    """The command's parser; `defaults=False` leaves `train`'s unpassed options out."""
    def default(value):
        return value if defaults else argparse.SUPPRESS

    # `--verbose` is accepted before the command and after it (`tfvae train --verbose`).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="show TensorFlow's native log lines and other libraries' log "
                        "messages and progress bars")
    parser = argparse.ArgumentParser(prog="tfvae", description=__doc__.splitlines()[0],
                                     parents=[common])
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a VAE and write a report", parents=[common],
                           description="Train a VAE, evaluate it on held-out data, write figures "
                           "and report.md into --output.")
    _train_arguments(train, defaults)
    train.add_argument("--output", default=default("runs/digits"),
                       help="run directory (default: runs/digits)")
    mode = train.add_mutually_exclusive_group()
    mode.add_argument("--overwrite", action="store_true", default=default(False),
                      help="replace an earlier run in --output")
    mode.add_argument("--resume", action="store_true", default=default(False),
                      help="continue the run in --output with its saved settings; only "
                      "--epochs (train up to this many epochs in all), --quiet and --verbose "
                      "may be given with it")
    train.add_argument("--quiet", action="store_true", default=default(False),
                       help="no progress bars")
    # Tables (--dataset a .csv, .parquet, or .npz with a matrix X): tfvae.table_runs.
    train.add_argument("--labels-column", default=default(None),
                       help="tables: the labels column (e.g. anomaly labels), never a feature")
    train.add_argument("--schema", default=default(None),
                       help="tables: a JSON schema file overriding inferred column types, e.g. "
                       '{"labels": "y", "columns": {"zip": "categorical", "id": "ignore"}}')
    train.add_argument("--contamination", type=float, default=default(0.1),
                       help="tables: the expected fraction of anomalies in the training rows; "
                       "sets the threshold recorded in metrics.json (default: 0.1)")

    evaluate = sub.add_parser("evaluate", help="evaluate a trained run on held-out data",
                              parents=[common],
                              description="ELBO, reconstruction, KL, importance-sampled log p(x), "
                              "the ELBO gap and active units on the run's validation split, or on --dataset "
                              "/ --split.")
    _run_and_data_arguments(evaluate)
    evaluate.add_argument("--num-samples", type=int, default=1000,
                          help="importance samples K for log p(x) (default: %(default)s)")
    evaluate.add_argument("--decompose-gap", action="store_true",
                          help="also split the gap into amortization and approximation gaps "
                          "(writes OUTPUT_gap.png)")
    evaluate.add_argument("--gap-examples", type=int, default=500,
                          help="examples for --decompose-gap (default: %(default)s)")
    evaluate.add_argument("--gap-steps", type=int, default=4000,
                          help="the most optimisation steps per example for --decompose-gap; "
                          "it stops earlier once every example has converged (default: "
                          "%(default)s)")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--output", help="JSON file (default: RUN/evaluation.json)")
    evaluate.add_argument("--overwrite", action="store_true")

    export = sub.add_parser("export", help="export a trained run for serving", parents=[common],
                            description="Write a SavedModel in TF Serving's layout "
                            "(OUTPUT/MODEL_NAME/VERSION) or ONNX graphs (OUTPUT/*.onnx).")
    export.add_argument("run", help="a run directory written by `tfvae train`")
    export.add_argument("--format", choices=tuple(_EXPORTERS), required=True)
    export.add_argument("--output", help="base directory (default: RUN/export/FORMAT)")
    export.add_argument("--model-name", default="tfvae", help="TF Serving model name")
    export.add_argument("--version", type=int, help="SavedModel version (default: next free)")
    export.add_argument("--opset", type=int, default=None, help="ONNX opset (default: 17)")
    export.add_argument("--quantize", choices=("int8", "int8-static"), default=None,
                        help="ONNX only: also write quantized graphs (GRAPH.int8.onnx), with "
                        "their size, latency and parity on the run's validation data in "
                        "metadata.json. int8: dynamic (int8 MatMul/Gemm weights); "
                        "int8-static: int8 MatMul/Gemm/Conv weights and uint8 activations "
                        "calibrated on the first 512 examples of the run's training split")

    for name, text in (("encode", "write every example's posterior q(z|x): mean, scale, code"),
                       ("score", "write per-example ELBO terms, reconstruction error and "
                        "log p(x) (anomaly scores)")):
        command = sub.add_parser(name, help=text, parents=[common],
                                 description=text[0].upper() + text[1:] + ", one row per "
                                 "example in the dataset's order (labels too, when it has them).")
        _run_and_data_arguments(command)
        command.add_argument("--batch-size", type=int, default=256)
        command.add_argument("--overwrite", action="store_true")
    encode_parser, score_parser = sub.choices["encode"], sub.choices["score"]
    encode_parser.add_argument("--output", help="a .npz (arrays) or .csv (one row per example) "
                               "file (default: RUN/codes-SPLIT.npz)")
    score_parser.add_argument("--output", help="a .csv or .npz file "
                              "(default: RUN/scores-SPLIT.csv)")
    score_parser.add_argument("--num-samples", type=int, default=None,
                              help="also score log p(x) with K importance samples (default: no)")
    score_parser.add_argument("--seed", type=int, default=0)
    score_parser.add_argument("--threshold", default=None,
                              help="table runs: flag rows whose score (-log p(x)) exceeds 'auto' "
                              "(the training threshold in RUN/metrics.json) or a number "
                              "(default: auto)")

    prepare = sub.add_parser(
        "prepare-data", help="convert a dataset to TFRecord shards, read fast and streamed",
        parents=[common],
        description="Write any dataset tfvae reads as TFRecord shards in tfvae's record format "
        "(see tfvae.records), one set per split, so a large dataset is converted once and then "
        "streamed, and a multi-worker run reads each worker's share of the files.")
    prepare.add_argument("source", help="a dataset as `tfvae train --dataset` takes it")
    prepare.add_argument("--output", required=True, help="the folder to create")
    prepare.add_argument("--shards", type=int, default=8,
                         help="shard files per split (default: %(default)s)")
    prepare.add_argument("--seed", type=int, default=0,
                         help="the random train/validation split's seed, for a source without "
                         "predefined splits (default: %(default)s)")
    prepare.add_argument("--validation-fraction", type=float, default=0.2,
                         help="the random split's validation fraction (default: %(default)s)")
    prepare.add_argument("--image-size", type=_units, default=None,
                         help="image folders: resize and center-crop to H,W")
    prepare.add_argument("--image-channels", type=int, choices=(1, 3), default=None,
                         help="image folders: 1 (greyscale) or 3 (RGB)")
    prepare.add_argument("--skip-corrupt", action="store_true",
                         help="leave out examples that cannot be read")

    sample = sub.add_parser("sample", help="generate data from the prior", parents=[common],
                            description="Decode z ~ p(z): an image grid (.png) or an array "
                            "(.npy); for a table run, rows drawn from p(x|z) with the table's "
                            "columns and values (.csv, .parquet; .npz or .npy for tables of "
                            "numbers).")
    sample.add_argument("run", help="a run directory written by `tfvae train`")
    sample.add_argument("-n", "--num", type=int, default=64)
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--label", type=int, default=None,
                        help="conditional runs: the label to generate (default: every label "
                        "in turn)")
    sample.add_argument("--output", help="a .png or .npy file (default: RUN/samples-SEED.png); "
                        "table runs: a .csv, .parquet, .npz or .npy file (default: "
                        "RUN/samples-SEED.csv)")
    sample.add_argument("--overwrite", action="store_true")
    return parser


def _run_and_data_arguments(command):
    """`RUN [--dataset D] [--split S]`: a trained run and the data it is applied to."""
    from tfvae import data

    command.add_argument("run", help="a run directory written by `tfvae train`")
    command.add_argument("--dataset", default=None,
                         help="a TFDS name, a .npy/.npz file or an image folder, prepared as "
                         "the run prepares its held-out data (default: the run's own dataset)")
    every = command.prog.split()[-1] in ("encode", "score")
    command.add_argument(
        "--split", choices=data.SPLITS + ((data.ALL,) if every else ()), default=None,
        help="which split of the dataset. A .npz needs only the split asked for: x_test "
        "(y_test) for test, x_valid / x_val / x_validation for validation, x_train for train, "
        "whatever other arrays it lacks; x (or x_train alone) is split at random into train "
        "and validation; an error lists the arrays a file holds. Elsewhere test needs a TFDS "
        "name or an image folder with test/"
        + ("; all: every example in the dataset's order (default: all with --dataset, "
           "else validation)" if every else " (default: validation)"))


def _check_positive(args, *names):
    """Refuses a non-positive integer flag in one line naming the flag (not the library's
    parameter it becomes)."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"Received an invalid value for `{flag}`, expected a positive "
                             f"integer. Received: {flag}={value}")


def _check_seed(seed):
    from tfvae import runs

    if not 0 <= seed <= runs.MAX_SEED:
        raise ValueError("Received an invalid value for `--seed`, expected an integer in "
                         f"0..{runs.MAX_SEED}. Received: --seed={seed}")


def _refuse_existing(path, overwrite):
    if os.path.exists(path) and not overwrite:
        raise ValueError(f"{path} exists; pass --overwrite to replace it.")


def _check_output_file(path, overwrite, argument="--output"):
    """Refuses an output file that could not be written, before any work is done.

    The file must not be a directory, its folder must exist and be writable,
    and an existing file needs `--overwrite`.
    """
    if not path:
        raise ValueError(f"Received an invalid value for `{argument}`, expected a file path. "
                         f"Received: {argument}={path!r}")
    if os.path.isdir(path):
        raise ValueError(f"Received an invalid value for `{argument}`: {path!r} is a directory, "
                         "expected a file path.")
    _refuse_existing(path, overwrite)
    _check_writable_folder(os.path.dirname(os.path.abspath(path)), path, argument)


def _check_writable_folder(folder, path, argument):
    if not os.path.isdir(folder):
        raise ValueError(f"Received an invalid value for `{argument}`: the folder {folder!r} "
                         f"does not exist. Received: {argument}={path!r}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"Received an invalid value for `{argument}`: the folder {folder!r} "
                         f"is not writable. Received: {argument}={path!r}")


def _check_run_directory(path):
    """Refuses a `run` argument that is not a folder (before its default outputs are checked)."""
    if not os.path.isdir(path):
        raise ValueError(f"`{path}` is not a tfvae run directory (not an existing folder).")


def _check_output_directory(path, argument="--output"):
    """Refuses an output directory that is empty or names an existing file."""
    if not path:
        raise ValueError(f"Received an invalid value for `{argument}`, expected a directory "
                         f"path. Received: {argument}={path!r}")
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"Received an invalid value for `{argument}`: {path!r} is a file, "
                         "expected a directory.")


def _passed_options(argv):
    """The `dest`s of the options the user actually gave (defaults left out)."""
    return set(vars(_parser(defaults=False).parse_args(argv))) - {"command"}


def _check_resume_options(args, argv):
    """Refuses `train --resume` with options it would ignore (it reads them from run.json)."""
    if not args.resume:
        return
    ignored = sorted(_passed_options(argv) - set(_RESUME_OPTIONS))
    if ignored:
        flags = ", ".join(_flag(name) for name in ignored)
        raise ValueError(
            f"--resume continues the run in {args.output!r} with the settings in its run.json; "
            f"it would ignore {flags}. Pass only --epochs (to train up to more epochs), "
            "--quiet and --verbose with --resume, or start a new run.")


def _flag(dest):
    """The option string of `tfvae train`'s option `dest` (`jit_compile` -> `--jit`)."""
    return _FLAGS.get(dest, "--" + dest.replace("_", "-"))


def _train(args, argv):
    from tfvae import runs, table_runs, tabular

    _check_output_directory(args.output)
    _check_resume_options(args, argv)
    if tabular.is_table(args.dataset) or (args.resume and table_runs.is_table_run(args.output)):
        return _train_table(args, argv)
    if args.labels_column is not None or args.schema is not None:
        raise ValueError("Received an invalid value for `--labels-column` / `--schema`: they "
                         "apply to tables (.csv, .parquet, or .npz with a matrix X). Received: "
                         f"--dataset={args.dataset!r}")
    kwargs = {}
    if args.resume and "epochs" in _passed_options(argv):
        kwargs["epochs"] = args.epochs  # train the resumed run up to this many epochs
    metrics = runs.train(_config(args), args.output, overwrite=args.overwrite,
                         resume=args.resume, verbose=0 if args.quiet else 1, **kwargs)
    if metrics:  # empty on multi-worker workers other than the chief
        _print_table(metrics)
        print(f"report: {os.path.join(args.output, 'report.md')}")


def _train_table(args, argv):
    """`tfvae train --dataset TABLE` (or `--resume` of a table run): `tfvae.table_runs.train`."""
    from tfvae import table_runs

    kwargs = {}
    if args.resume and "epochs" in _passed_options(argv):
        kwargs["epochs"] = args.epochs  # train the resumed run up to this many epochs
    metrics = table_runs.train(_config(args), args.output, labels_column=args.labels_column,
                               schema_file=args.schema, contamination=args.contamination,
                               overwrite=args.overwrite, resume=args.resume,
                               verbose=0 if args.quiet else 1, **kwargs)
    _print_table(metrics)
    print(f"threshold (-log p(x), contamination {metrics['contamination']}): "
          f"{metrics['threshold']:.4f}")
    print(f"report: {os.path.join(args.output, 'report.md')}")


def _print_table(metrics):
    from tfvae import evaluation

    print(f"{'quantity':<16}{'value':>14}")
    for key, text in evaluation.summary(metrics):
        print(f"{key:<16}{text:>14}")
    if evaluation.gap_note(metrics):
        print(f"warning: {evaluation.gap_note(metrics)}")
    if "surgery_skipped" in metrics:
        print(f"note: ELBO surgery not reported: {metrics['surgery_skipped']}")


def _evaluate(args, argv):
    from tfvae import data, evaluation, report, runs, table_runs

    _check_run_directory(args.run)
    _check_positive(args, "num_samples", "gap_examples", "gap_steps")
    _check_seed(args.seed)
    output = os.path.join(args.run, "evaluation.json") if args.output is None else args.output
    _check_output_file(output, args.overwrite)
    figure = os.path.splitext(output)[0] + "_gap.png"
    if args.decompose_gap:
        _check_output_file(figure, args.overwrite)
    config = runs.read_config(os.path.join(args.run, runs.RUN_FILE)) if os.path.exists(
        os.path.join(args.run, runs.RUN_FILE)) else None
    dataset = args.dataset or (config.dataset if config else None)
    verbose = int(sys.stdout.isatty())
    table, split = table_runs.is_table_run(args.run), _split(args)
    if table:  # the run's own rows (`--split`: validation or train) or a whole `--dataset`
        split = args.split or ("all" if args.dataset else "validation")
        config, model = runs.load_run(args.run)
        x, labels = table_runs.held_out(config, model, dataset=args.dataset, split=args.split)
        y, reading = None, contextlib.nullcontext()
        metrics = evaluation.evaluate_model(model, x, num_samples=args.num_samples,
                                            seed=args.seed, verbose=verbose)
        metrics.update(table_runs.detection_metrics(model, table_runs.read_settings(args.run),
                                                    x, labels, seed=args.seed))
    elif config is not None and data.is_streamed(dataset):
        # Streamed: one pass for the means, the first examples for the bounded parts.
        model, x, reading = _run_data(args)
        y = None
        with reading:
            metrics = evaluation.evaluate_model(model, x, num_samples=args.num_samples,
                                                seed=args.seed, verbose=verbose)
    else:
        config, model = runs.load_run(args.run)
        x, y = runs.held_out(config, dataset=args.dataset, split=split)
        y = None if model.condition_dim is None else y
        reading = contextlib.nullcontext()
        metrics = evaluation.evaluate_model(model, x, num_samples=args.num_samples,
                                            seed=args.seed, y=y, verbose=verbose)
    metrics.update(dataset=args.dataset or config.dataset, split=split)
    known = None if table else data.load_factors(args.dataset or config.dataset, split,
                                                 seed=config.seed)
    if known is not None:
        metrics.update(evaluation.disentanglement_metrics(model, x, known["factors"],
                                                          known["names"], y=y))
    if args.decompose_gap:
        with reading:
            metrics.update(evaluation.gap_decomposition(model, x, y=y,
                                                        num_examples=args.gap_examples,
                                                        seed=args.seed, steps=args.gap_steps))
        name = os.path.basename(os.path.normpath(args.run))
        files.write_with(figure, lambda path: report.plot_gap({name: metrics}, path))
        print(f"wrote {figure}")
    files.write_json(output, metrics)  # strict JSON: non-finite values as null, listed
    _print_table(metrics)
    print(f"wrote {output}")


def _sample(args, argv):
    import numpy as np

    from tfvae import report, runs, table_runs

    _check_run_directory(args.run)
    _check_seed(args.seed)
    if table_runs.is_table_run(args.run):
        return _sample_table(args)
    output = os.path.join(args.run, f"samples-{args.seed}.png") if args.output is None \
        else args.output
    if not output.endswith((".png", ".npy")):
        raise ValueError(f"--output must end in .png or .npy. Received: {output!r}")
    _check_output_file(output, args.overwrite)
    if args.num < 1:
        raise ValueError("Received an invalid value for `--num`, expected a positive integer. "
                         f"Received: --num={args.num}")
    if args.label is not None and args.label < 0:
        raise ValueError("Received an invalid value for `--label`, expected a class index >= 0. "
                         f"Received: --label={args.label}")
    _, model = runs.load_run(args.run)
    size = args.num * int(np.prod(model.event_shape)) * 4
    limit = MAX_SAMPLE_BYTES if output.endswith(".npy") else MAX_GRID_BYTES
    if size > limit:
        raise ValueError(
            f"Received an invalid value for `--num`: {args.num:,} samples of shape "
            f"{tuple(model.event_shape)} take {size / 2**30:,.1f} GiB; a "
            f"{'.npy' if output.endswith('.npy') else '.png grid'} takes at most "
            f"{limit / 2**30:g} GiB. Received: --num={args.num}")
    labels = None
    if model.condition_dim is not None:
        if args.label is not None and args.label >= model.condition_dim:
            raise ValueError(
                "Received an invalid value for `--label`: the run conditions on "
                f"{model.condition_dim} classes, expected 0..{model.condition_dim - 1}. "
                f"Received: --label={args.label}")
        labels = np.arange(args.num) % model.condition_dim if args.label is None else args.label
    elif args.label is not None:
        raise ValueError("--label needs a conditional run (trained with --conditional).")
    samples = model.sample(args.num, seed=args.seed, y=labels).numpy()
    if output.endswith(".npy"):
        files.write_with(output, lambda path: np.save(path, samples))
    else:
        images = report.to_display(model, samples)
        files.write_with(output, lambda path: report.plot_grid(images, path,
                                                                 "samples from the prior"))
    print(f"wrote {output}")


def _sample_table(args):
    """`tfvae sample TABLE_RUN`: raw rows drawn from the model (`tfvae.table_runs.sample`)."""
    from tfvae import runs, table_runs

    output = os.path.join(args.run, f"samples-{args.seed}.csv") if args.output is None \
        else args.output
    if args.label is not None:
        raise ValueError("Received an invalid value for `--label`: a table run is not "
                         f"conditional; it samples rows of every kind. Received: "
                         f"--label={args.label}")
    if args.num < 1:
        raise ValueError("Received an invalid value for `--num`, expected a positive integer. "
                         f"Received: --num={args.num}")
    _check_output_file(output, args.overwrite)
    _, model = runs.load_run(args.run)
    table_runs.check_sample_output(output, table_runs.run_schema(model, args.run))
    size = args.num * model.event_shape[0] * 8
    if size > MAX_SAMPLE_BYTES:
        raise ValueError(
            f"Received an invalid value for `--num`: {args.num:,} rows of "
            f"{model.event_shape[0]} columns take {size / 2**30:,.1f} GiB; a sample takes at "
            f"most {MAX_SAMPLE_BYTES / 2**30:g} GiB. Received: --num={args.num}")
    rows = table_runs.sample(model, args.num, output, seed=args.seed)
    print(f"wrote {output} ({rows} rows)")


def _table_output(args, default_name):
    """The checked `--output` of `encode`/`score`: a .npz or .csv file."""
    _check_run_directory(args.run)
    output = os.path.join(args.run, default_name) if args.output is None else args.output
    if not output.endswith((".npz", ".csv")):
        raise ValueError(f"Received an invalid value for `--output`, expected a .npz or .csv "
                         f"file. Received: --output={output!r}")
    _check_output_file(output, args.overwrite)
    if args.batch_size < 1:
        raise ValueError("Received an invalid value for `--batch-size`, expected a positive "
                         f"integer. Received: --batch-size={args.batch_size}")
    return output


def _split(args):
    """`--split`, by default every example of a `--dataset` (encode, score) or the validation
    split of the run's own data."""
    from tfvae import data

    if args.split is not None:
        return args.split
    every = args.command in ("encode", "score") and args.dataset is not None
    return data.ALL if every else "validation"


def _run_data(args, batch_size=256):
    """`(model, batches, reading)`: the run's model; the requested split as a stream of
    `(x, labels)` (or `x`) batches prepared as the run's held-out data (labels condition a
    conditional model and are carried as the `label` column otherwise: see
    `tfvae.evaluation.batches`); and a context naming an unreadable file of the stream."""
    import tensorflow as tf

    from tfvae import data, run_data, runs, table_runs

    config, model = runs.load_run(args.run)
    dataset = args.dataset or config.dataset
    if table_runs.is_table_run(args.run):
        x, labels = table_runs.held_out(config, model, dataset=args.dataset, split=args.split)
        labelled, reading = labels is not None, run_data.reading(())
        batches = tf.data.Dataset.from_tensor_slices(x if labels is None else (x, labels))
        batches = batches.batch(batch_size)
    elif data.is_streamed(dataset):
        batches, source = runs.held_out_stream(config, dataset, _split(args), batch_size)
        labelled, reading = source.labelled, run_data.reading([source], config.skip_corrupt)
    else:
        x, labels = runs.held_out(config, dataset=args.dataset, split=_split(args))
        labelled, reading = labels is not None, run_data.reading(())
        batches = tf.data.Dataset.from_tensor_slices(x if labels is None else (x, labels))
        batches = batches.batch(batch_size)
    if model.condition_dim is not None and not labelled:
        raise ValueError(f"Received an invalid value for `--dataset`: the run is conditional "
                         f"and {dataset!r} has no labels.")
    return model, batches, reading


def _write_rows(output, rows, reading):
    """Writes per-example row batches as they come (a .npz or .csv, whole or not at all);
    returns the number of rows."""
    from tfvae import tables

    with reading, tables.TableWriter(output) as table:
        for part in rows:
            table.write(part)
    return table.rows


def _encode(args, argv):
    from tfvae import evaluation

    output = _table_output(args, f"codes-{_split(args)}.npz")
    model, batches, reading = _run_data(args, args.batch_size)
    rows = _write_rows(output, evaluation.iter_encodings(model, batches,
                                                         verbose=int(sys.stdout.isatty())),
                       reading)
    print(f"wrote {output} ({rows} examples, latent_dim {model.latent_dim})")


def _score(args, argv):
    from tfvae import evaluation, table_runs

    table = table_runs.is_table_run(args.run)  # a table run scores every row
    output = _table_output(args, "scores-all.csv" if table else f"scores-{_split(args)}.csv")
    _check_seed(args.seed)
    _check_positive(args, "num_samples")
    if table:
        return _score_table(args, output)
    if args.threshold is not None:
        raise ValueError("Received an invalid value for `--threshold`: it applies to runs "
                         f"trained on tables, and {args.run!r} is not one. Received: "
                         f"--threshold={args.threshold!r}")
    model, batches, reading = _run_data(args, args.batch_size)
    rows = _write_rows(output, evaluation.iter_scores(model, batches,
                                                      num_samples=args.num_samples,
                                                      seed=args.seed,
                                                      verbose=int(sys.stdout.isatty())),
                       reading)
    print(f"wrote {output} ({rows} examples)")


def _score_table(args, output):
    """`tfvae score TABLE_RUN`: per-row scores, per-feature scores and flags."""
    from tfvae import runs, table_runs

    if args.split not in (None, "all"):
        raise ValueError("Received an invalid value for `--split`: a table run scores every "
                         f"row of --dataset. Received: --split={args.split!r}")
    threshold = table_runs.parse_threshold(args.threshold)
    dataset = args.dataset or runs.read_config(os.path.join(args.run, runs.RUN_FILE)).dataset
    rows, applied = table_runs.score(args.run, dataset, output, threshold,
                                     num_samples=args.num_samples, seed=args.seed)
    print(f"wrote {output} ({rows} rows, flagged where score > {applied:.4f})")


def _export_saved_model(model, output, args, threshold=None):
    from tfvae import export

    if args.quantize is not None:
        raise ValueError("Received an invalid value for `--quantize`: it applies to "
                         f"--format onnx only. Received: --quantize={args.quantize} "
                         "--format saved_model")
    # threshold: a table run's, for its `score` graph's flag (else None).
    path = export.export_saved_model(model, output, args.model_name, version=args.version,
                                     threshold=threshold)
    print(f"wrote SavedModel {path}")


def _export_onnx(model, output, args, threshold=None):
    from tfvae import export

    # A given --opset goes to the library as it is (it refuses bad values).
    opset = export.ONNX_OPSET if args.opset is None else args.opset
    quantize = {}
    if args.quantize is not None:
        quantize = {"quantize": args.quantize,
                    "validation_data": _validation_sample(args.run, model)}
        if args.quantize == "int8-static":
            quantize["calibration_data"] = _validation_sample(
                args.run, model, limit=export.CALIBRATION_EXAMPLES, split="train")
    written = export.export_onnx(model, output, opset=opset, threshold=threshold, **quantize)
    for name, path in written.items():
        print(f"wrote {name}: {path}")
    if quantize:
        with open(os.path.join(output, export.ONNX_METADATA)) as f:
            quantized = json.load(f)["quantized"]
        for name, entry in quantized.items():
            if "refused" in entry:
                print(f"not quantized {name}: {entry['refused']}")
                continue
            elbo = entry["elbo_nats"].get("mean_difference")
            print(f"wrote {name} ({args.quantize}): {os.path.join(output, entry['file'])} "
                  f"({entry['size_ratio']:.2f}x the size, max abs error "
                  f"{max(v for v in entry['max_abs_error'].values() if v is not None):.2g}"
                  + (f", ELBO {elbo:+.3g} nats" if elbo is not None else "")
                  + f" on {entry['validation_examples']} validation examples)")


def _validation_sample(run, model, limit=1000, split="validation"):
    """The first `limit` examples of the run's `split` (prepared as its held-out data), as
    `x` or `(x, labels)` for a conditional model: what `--quantize` measures parity on
    (validation) and calibrates static quantization on (train)."""
    import numpy as np

    from tfvae import data, runs

    config = runs.read_config(os.path.join(run, runs.RUN_FILE))
    if data.is_streamed(config.dataset):
        batches, _ = runs.held_out_stream(config, None, split, batch_size=256)
        xs, ys, rows = [], [], 0
        for batch in batches:
            x, y = batch if isinstance(batch, tuple) else (batch, None)
            xs.append(np.asarray(x))
            ys.append(None if y is None else np.asarray(y))
            rows += len(xs[-1])
            if rows >= limit:
                break
        x = np.concatenate(xs)[:limit]
        y = None if ys[0] is None else np.concatenate(ys)[:limit]
    else:
        x, y = runs.held_out(config, split=split)
        x, y = x[:limit], None if y is None else y[:limit]
    return x if model.condition_dim is None else (x, y)


# `tfvae export --format` names -> writers.
_EXPORTERS = {"saved_model": _export_saved_model, "onnx": _export_onnx}


def _export(args, argv):
    from tfvae import runs, table_runs

    _check_run_directory(args.run)
    output = os.path.join(args.run, "export", args.format) if args.output is None else args.output
    _check_output_directory(output)
    if table_runs.is_table_run(args.run):  # its `score` graph flags at the run's threshold
        if args.quantize is not None:
            raise ValueError("Received an invalid value for `--quantize`: table runs are "
                             "exported in float only. Received: --quantize "
                             f"{args.quantize} for the table run {args.run!r}")
        model, threshold = table_runs.export_model(args.run)
        _EXPORTERS[args.format](model, output, args, threshold)
        return
    _, model = runs.load_run(args.run)
    _EXPORTERS[args.format](model, output, args)


def _prepare_data(args, argv):
    from tfvae import data, records, run_data

    _check_output_directory(args.output)
    if os.path.exists(args.output):
        raise ValueError(f"Received an invalid value for `--output`: {args.output!r} exists; "
                         "choose a new folder (nothing is overwritten).")
    _check_writable_folder(os.path.dirname(os.path.abspath(args.output)), args.output,
                           "--output")
    if args.shards < 1:
        raise ValueError("Received an invalid value for `--shards`, expected a positive "
                         f"integer. Received: --shards={args.shards}")
    if args.image_size is not None and len(args.image_size) != 2:
        raise ValueError("Received an invalid value for `--image-size`, expected H,W. "
                         f"Received: --image-size={','.join(map(str, args.image_size))}")
    found = data.as_sources(
        args.source, validation_fraction=args.validation_fraction, seed=args.seed,
        image_size=args.image_size, channels=args.image_channels)
    with run_data.reading(found.values(), args.skip_corrupt):
        metadata = records.write_splits(found, args.output, shards=args.shards,
                                        skip_corrupt=args.skip_corrupt)
    for split, entry in metadata["splits"].items():
        print(f"{split}: {entry['examples']} examples in {len(entry['files'])} shard(s)")
    print(f"wrote {args.output} (shape {metadata['shape']}, {metadata['dtype']})")


def main(argv=None):
    """Runs the `tfvae` command; returns its exit status (0, or 2 for an expected failure)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    # Known before parsing: the parser's choices come from the library, which loads TensorFlow.
    verbose = "--verbose" in argv[:argv.index("--")] if "--" in argv else "--verbose" in argv
    _configure_logging(verbose)
    args = _parser().parse_args(argv)
    handlers = {"train": _train, "evaluate": _evaluate, "sample": _sample, "export": _export,
                "encode": _encode, "score": _score, "prepare-data": _prepare_data}
    try:
        if args.command in ("train", "evaluate", "encode", "score", "prepare-data"):
            _quiet_dataset_downloads(verbose)
        if args.command in _READERS and os.path.isdir(args.run):
            with files.ReadLock(args.run):  # held for the whole read: no overwrite under it
                handlers[args.command](args, argv)
        else:
            handlers[args.command](args, argv)
    except _EXPECTED_ERRORS as error:
        print(f"tfvae {args.command}: error: {_reason(error, args)}", file=sys.stderr)
        return 2
    return 0


def _reason(error, args):
    """One line saying what went wrong, naming the file where the error has one."""
    if isinstance(error, json.JSONDecodeError):
        text = f"{_json_source(error, args)} is not valid JSON ({error})"
    elif isinstance(error, OSError) and error.strerror and error.filename is not None:
        files = " -> ".join(repr(os.fspath(name)) for name in (error.filename, error.filename2)
                            if name is not None)
        text = f"{error.strerror}: {files}"
    else:
        text = _as_flags(str(error) or type(error).__name__, args)
    return " ".join(text.split())


# Parsed arguments that are positional, not `--flags`.
_POSITIONALS = ("command", "run", "source")
# Library argument names that are a command's positional argument.
_POSITIONAL_NAMES = {"prepare-data": {"dataset": "SOURCE"}}


def _as_flags(text, args):
    """The library's argument names in `text` as the command's flags: `latent_dim` ->
    `--latent-dim` (and `Received: latent_dim=0` -> `Received: --latent-dim 0`)."""
    for dest in vars(args):
        if dest in _POSITIONALS:
            continue
        flag = _flag(dest)
        text = text.replace(f"`{dest}`", f"`{flag}`").replace(f"Received: {dest}=",
                                                              f"Received: {flag} ")
    for name, positional in _POSITIONAL_NAMES.get(args.command, {}).items():
        text = text.replace(f"`{name}`", positional)
    return text


def _json_source(error, args):
    """What held the JSON text that failed to parse: TF_CONFIG, or the run's run.json."""
    if error.doc == os.environ.get("TF_CONFIG"):
        return "the environment variable TF_CONFIG"
    for folder in (getattr(args, "run", None), getattr(args, "output", None)):
        path = os.path.join(folder, "run.json") if folder else None
        if path and os.path.isfile(path):
            with contextlib.suppress(OSError, UnicodeDecodeError), open(path) as f:
                if f.read() == error.doc:
                    return repr(path)
    return "a JSON document"


def _configure_logging(verbose):
    """tfvae's own messages at INFO; other libraries' only when `verbose` (else errors only)."""
    logging.basicConfig(level=logging.INFO if verbose else logging.ERROR,
                        format="%(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)


def _quiet_dataset_downloads(verbose):
    """TFDS's download progress bars only with `--verbose` (a failure is one line anyway)."""
    if not verbose:
        import tensorflow_datasets as tfds

        tfds.display_progress_bar(False)


if __name__ == "__main__":
    sys.exit(main())
