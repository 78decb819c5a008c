"""Runs on tables: `tfvae train --dataset table.csv` and every run command on its directory.

A table run directory holds what an image run's does, and `table.json`:

    run.json      the RunConfig (as for every run)
    table.json    what makes it a table run: the labels column, the score the
                  threshold is on, its samples, the contamination, the table's rows
    model.keras   the model with the best validation ELBO, with its schema
                  (`TabularLikelihood.schema`) and the continuous columns'
                  standardisation inside: it takes raw rows
    last.keras    the model after the latest finite epoch (for `--resume`)
    history.csv   the epoch logs
    metrics.json  held-out ELBO terms and log p(x) of the validation rows
                  (`evaluation.evaluate_model`), their ROC-AUC and PR-AUC when the
                  table has 0/1 labels (`detection_metrics`), `feature_scores` (each
                  column's mean score on the training rows, in the order of
                  `columns`), and `threshold`: the
                  (1 − contamination) quantile of the training rows' scores
                  (`tfvae.anomaly`), which `score --threshold auto` applies;
                  `graph_threshold`: the same quantile of the exported `score` graph's
                  score at eps = 0 (−ELBO, `anomaly.noise_scores`), which `tfvae export`
                  bakes into that graph's `flag`
    curves.png, scores.png, feature_scores.png, report.md
                  the training curves, the histogram of the training rows' scores
                  with the threshold, the mean score per column, and the report

The table is split at random (by the run's seed) into training and validation
rows (20 %, `split_rows`); the column types are inferred from the whole table
(labels never used) unless a schema file says otherwise, and the standardisation
is fitted on the training rows. Checkpoints, early stopping on the validation
ELBO, `--resume` and the run directory's transaction are an image run's
(`tfvae.runs`); a resumed run keeps its schema and standardisation.

Every run command reads a table run: `tfvae.runs.load_run` loads it (checking
its model against `run_likelihood`), and the commands read its data with
`held_out` (the run's validation or training rows, or a whole `--dataset`
table with the run's columns, `read_rows`) where an image run's are read with
`tfvae.runs.held_out`:

* `evaluate`: the ELBO terms, log p(x), active units (and `--decompose-gap`),
  and, with 0/1 labels, the ROC-AUC and PR-AUC of the run's score;
* `encode`: each row's posterior;
* `score`: each row's score, per-column scores and flag (`score`);
* `sample`: raw rows drawn from the model (`sample`), not an image;
* `export`: the graphs, with `score` (`export_model`);
* `train --resume`: `train(resume=True)`.
"""

import dataclasses
import json
import logging
import os

import keras
import numpy as np

from tfvae import anomaly
from tfvae import builders
from tfvae import data as data_lib
from tfvae import evaluation
from tfvae import files
from tfvae import random as tfvae_random
from tfvae import tables
from tfvae import tabular
from tfvae.tabular_likelihood import TabularLikelihood

__all__ = [
    "check_sample_output",
    "detection_metrics",
    "export_model",
    "GRAPH_SCORE",
    "held_out",
    "is_table_run",
    "parse_threshold",
    "read_rows",
    "read_settings",
    "read_table_run",
    "RUN_SCORE",
    "run_likelihood",
    "run_schema",
    "sample",
    "SAMPLE_BATCH",
    "SAMPLE_EXTENSIONS",
    "sample_rows",
    "score",
    "split_rows",
    "SPLITS",
    "TABLE_FILE",
    "train",
    "VALIDATION_FRACTION",
]

logger = logging.getLogger(__name__)

TABLE_FILE = "table.json"
VALIDATION_FRACTION = 0.2
# The score a table run's threshold is on, and `tfvae score` writes.
RUN_SCORE = "log_px"
# The score `graph_threshold` is on: the exported `score` graph's at eps = 0
# (`anomaly.noise_scores`), which `tfvae export` bakes into the graph's `flag`.
GRAPH_SCORE = "elbo_at_eps_0"


def is_table_run(directory):
    """Whether `directory` is a table run (it holds `table.json`)."""
    return os.path.isfile(os.path.join(directory, TABLE_FILE))


def split_rows(n, seed):
    """`(training rows, validation rows)`: the indices a table run of `n` rows trains and
    validates on (a permutation by `seed`; 20 % held out)."""
    if n < 3:
        raise ValueError(f"Received an invalid value for `dataset`: a table run needs at least "
                         f"3 rows (2 to train on, 1 to validate). Received: {n} rows")
    order = np.random.default_rng(seed).permutation(n)
    held = max(1, int(round(VALIDATION_FRACTION * n)))
    return np.sort(order[held:]), np.sort(order[:held])


def _check_config(config):
    if config.strategy != "default" or config.conditional or config.architecture != "mlp":
        raise ValueError("Received an invalid value for `dataset`: a table run trains an MLP "
                         "on one device, unconditional (no --strategy, --conditional or "
                         f"--architecture conv). Received: dataset={config.dataset!r}")


def read_settings(directory):
    """A table run's `table.json`: `labels_column`, `score`, `score_samples`,
    `contamination` (and `rows`, the table's rows, for runs written since it is recorded)."""
    with open(os.path.join(directory, TABLE_FILE)) as f:
        return json.load(f)


def train(config, output, labels_column=None, schema_file=None, contamination=0.1,
          overwrite=False, resume=False, epochs=None, verbose=1):
    """Trains a VAE with a `TabularLikelihood` on the table `config.dataset`, or resumes one.

    Checkpoints, the history and early stopping are an image run's
    (`tfvae.runs.training_callbacks`): `last.keras` after every finite epoch,
    `model.keras` only when the validation ELBO beats every earlier epoch's. A
    resumed run continues from its newest loadable checkpoint with its optimizer
    state and its saved schema and standardisation (nothing is fitted again), its
    table read with that schema and split by its seed as before. The optimizer,
    learning-rate schedule, XLA and steps per call are an image run's
    (`tfvae.runs.compile_run`). Table runs write no TensorBoard logs.

    Args:
      config: a `tfvae.runs.RunConfig` (its `likelihood`, `filters` and `binarize`
        do not apply: rows get the per-column likelihood). Ignored with `resume`:
        the run's own `run.json` is used.
      output: the run directory.
      labels_column: the table's labels column, never a feature (an `.npz`'s `y`
        is its labels). Default value: `None`.
      schema_file: a JSON schema file (`tfvae.tabular.read_overrides`). Default value: `None`.
      contamination: the expected fraction of anomalies among the training rows,
        in (0, 0.5]: sets the threshold. Default value: `0.1`.
      overwrite: replace an earlier run in `output`. Default value: `False`.
      resume: continue the table run in `output` (`labels_column`, `schema_file` and
        `contamination` come from its `table.json` and model). Default value: `False`.
      epochs: if not None, the run's epoch budget (with `resume`: extends or
        shortens the saved one, recorded in `run.json` once trained). Default value: `None`.
      verbose: Keras's progress output. Default value: `1`.

    Returns:
      The metrics dict written to `metrics.json`.

    Raises:
      tfvae.runs.TrainingDiverged: the loss became NaN or infinite (the last
        finite checkpoint is kept).
      ValueError: a bad configuration, table or output directory.
    """
    from tfvae import runs  # the application layer

    if resume:
        if overwrite:
            raise ValueError("Received an invalid value for `resume`: a run is resumed or "
                             "overwritten, not both. Received: resume=True, overwrite=True")
        runs.check_output(output, resume=True)
        if not is_table_run(output):
            raise ValueError(f"Cannot resume `{output}` as a table run: it holds no "
                             f"{TABLE_FILE}.")
        config = runs.read_config(os.path.join(output, runs.RUN_FILE))
        settings = read_settings(output)
        contamination = settings["contamination"]
    if epochs is not None:
        config = dataclasses.replace(config, epochs=epochs)
    config.validate()
    _check_config(config)
    if not resume:
        anomaly.VAEDetector(contamination=contamination)  # checks it, in one line
        overrides = None if schema_file is None else tabular.read_overrides(schema_file)
        x, labels, schema = tabular.load_table(config.dataset, labels=labels_column,
                                               overrides=overrides)
        labels = _numeric(labels)
        split_rows(len(x), config.seed)  # enough rows
        settings = {"labels_column": schema.labels, "score": RUN_SCORE,
                    "score_samples": config.eval_samples, "contamination": contamination,
                    "rows": int(len(x))}
    runs.check_output(output, overwrite=overwrite, resume=resume)  # before anything is written
    run_output = runs.RunOutput(output, overwrite=overwrite, resume=resume).begin()
    try:
        if resume:
            model, initial_epoch, history = runs.resume_state(output)
            if model is None:
                raise ValueError(f"Cannot resume `{output}`: it has no checkpoint yet; train "
                                 "it again with --overwrite.")
            schema = run_schema(model, output)
            x, labels = read_rows(config.dataset, schema)
            if settings.get("rows", len(x)) != len(x):
                raise ValueError(f"Received an invalid value for `dataset`: the run trained on "
                                 f"{settings['rows']} rows of {config.dataset!r}, which now "
                                 f"has {len(x)}; its split would differ. Received: "
                                 f"dataset={config.dataset!r}")
        else:
            files.write_json(os.path.join(output, runs.RUN_FILE), dataclasses.asdict(config))
            files.write_json(os.path.join(output, TABLE_FILE), settings)
            model, initial_epoch, history = None, 0, {}
        train_rows, validation_rows = split_rows(len(x), config.seed)
        x_train, x_val = x[train_rows], x[validation_rows]
        keras.utils.set_random_seed(config.seed)  # the application layer seeds the process
        if model is None:
            model = _new_model(config, schema, x_train)
        # Adam at the run's learning rate and schedule, XLA and steps per call as
        # for image runs; a resumed model keeps its optimizer's state.
        runs.compile_run(model, config, len(x_train), resumed=initial_epoch > 0)
        stop, callbacks = runs.training_callbacks(
            config, output, history, resume=resume,
            on_checkpoint=None if overwrite else run_output.commit)
        if initial_epoch < config.epochs:
            model.fit(data_lib.make_dataset(x_train, min(config.batch_size, len(x_train)),
                                            seed=config.seed),
                      epochs=config.epochs, initial_epoch=initial_epoch,
                      validation_data=data_lib.make_dataset(x_val, 256, shuffle=False),
                      callbacks=callbacks, shuffle=False, verbose=verbose)
        runs.raise_if_diverged(stop, output)
        metrics = _evaluate(config, output, settings, x, labels, train_rows, validation_rows)
        if resume and epochs is not None:  # the new budget, once trained to it
            files.write_json(os.path.join(output, runs.RUN_FILE), dataclasses.asdict(config))
        run_output.commit()
        return metrics
    except BaseException:
        run_output.abort()
        raise
    finally:
        run_output.close()


def _new_model(config, schema, x_train):
    """A new model for `schema`: its standardisation fitted on the training rows."""
    head = TabularLikelihood(schema, scale="per_dimension")
    head.adapt(x_train)
    kwargs = config.model_kwargs((x_train.shape[1],))
    kwargs.update(likelihood=head)
    return builders.build_vae(**kwargs)


def _evaluate(config, output, settings, x, labels, train_rows, validation_rows):
    """Evaluates the run's best model (`model.keras`), writes `metrics.json` and the report.

    Returns:
      The metrics: the held-out ELBO terms and log p(x) of the validation rows
      (`evaluation.evaluate_model`), their ROC-AUC and PR-AUC when the table has
      0/1 labels (`detection_metrics`), the thresholds, and `feature_scores`:
      each column's mean −E_q[log p_j(x_j|z)] over the training rows, in the order
      of `columns`.
    """
    from tfvae import runs

    model = runs.load_model(os.path.join(output, "model.keras"))
    history = runs.read_history(os.path.join(output, "history.csv"))
    x_train, x_val = x[train_rows], x[validation_rows]
    metrics = evaluation.evaluate_model(model, x_val, num_samples=config.eval_samples,
                                        seed=config.seed)
    metrics["epochs_trained"] = len(history.get("loss", []))
    metrics.update(detection_metrics(model, settings, x_val,
                                     None if labels is None else labels[validation_rows],
                                     seed=config.seed))
    contamination = settings["contamination"]
    train_scores = anomaly.scores(model, x_train, settings["score"], settings["score_samples"],
                                  seed=config.seed)
    graph_scores = anomaly.noise_scores(model, x_train)
    shares = anomaly.feature_scores(model, x_train, settings["score_samples"], seed=config.seed)
    names = model.likelihood.schema.names
    metrics.update(threshold=anomaly.contamination_threshold(train_scores, contamination),
                   threshold_score=settings["score"],
                   graph_threshold=anomaly.contamination_threshold(graph_scores, contamination),
                   graph_threshold_score=GRAPH_SCORE, contamination=contamination,
                   train_rows=int(len(train_rows)), columns=names,
                   feature_scores=shares.mean(axis=0).tolist())
    files.write_json(os.path.join(output, "metrics.json"), metrics)
    _write_report(config, output, history, metrics, train_scores)
    return metrics


def _write_report(config, output, history, metrics, train_scores):
    """`curves.png`, `scores.png`, `feature_scores.png` and `report.md` of a table run."""
    from tfvae import report  # matplotlib: the command layer only

    names = metrics["columns"]
    figures = {
        "curves": report.plot_curves(history, os.path.join(output, "curves.png")),
        "scores": report.plot_score_histogram(
            train_scores, metrics["threshold"], os.path.join(output, "scores.png"),
            xlabel=f"score: −{metrics['threshold_score']} (nats)"),
        "feature_scores": report.plot_feature_scores(
            names, metrics["feature_scores"], os.path.join(output, "feature_scores.png")),
    }
    figures = {name: os.path.basename(path) for name, path in figures.items()}
    described = dict(dataclasses.asdict(config), likelihood="tabular (per column)",
                     binarize="none")
    notes = [
        f"Anomaly score: −{metrics['threshold_score']} per row (higher = more anomalous). "
        f"Threshold {metrics['threshold']:.4f}: the {1 - metrics['contamination']:.0%} "
        f"quantile of the {metrics['train_rows']} training rows' scores (contamination "
        f"{metrics['contamination']}); `tfvae score RUN --threshold auto` flags rows above it.",
        "",
    ]
    if "roc_auc" in metrics:
        notes += [f"On the validation rows' labels ({metrics['anomalies']} anomalies in "
                  f"{metrics['num_examples']}): ROC-AUC {metrics['roc_auc']:.4f}, PR-AUC "
                  f"(average precision) {metrics['pr_auc']:.4f}.", ""]
    report.write_markdown(os.path.join(output, "report.md"), described, metrics, figures,
                          notes=notes)


def _numeric(labels):
    """Labels as an array when they are numbers (they can be written and ranked), else None."""
    if labels is None:
        return None
    labels = np.asarray(labels)
    return labels if labels.dtype.kind in "biuf" else None


def run_schema(model, directory="the run"):
    """The `tfvae.tabular.Schema` of a table run's model (its `TabularLikelihood`'s).

    Raises:
      ValueError: the model does not take table rows.
    """
    if not isinstance(model.likelihood, TabularLikelihood):
        raise ValueError(f"`{directory}`: {TABLE_FILE} says it is a table run, but its "
                         "model does not take table rows.")
    return model.likelihood.schema


def run_likelihood(directory, model):
    """A new head of the kind and shape of a table run's model's (no weights fitted): what
    `tfvae.runs.load_run` builds the run's settings with, to check they describe its model."""
    run_schema(model, directory)
    return TabularLikelihood.from_config(model.likelihood.get_config())


def read_table_run(directory):
    """`(table settings, metrics, model)` of a table run directory."""
    from tfvae import runs

    settings = read_settings(directory)
    metrics_path = os.path.join(directory, "metrics.json")
    metrics = {}
    if os.path.isfile(metrics_path):
        with open(metrics_path) as f:
            metrics = json.load(f)
    model = runs.load_model(os.path.join(directory, "model.keras"))
    run_schema(model, directory)
    return settings, metrics, model


def read_rows(dataset, schema):
    """The rows of the table file `dataset` coded with a run's `schema`, and its labels.

    The table must have the schema's columns: every feature column, and no
    column the schema does not know besides its labels column (columns the
    schema ignores may be present or not).

    Returns:
      `(x float32 [n, d], labels [n] or None)`: the labels column's values (or an
      `.npz`'s `y`) when they are numbers, else None.

    Raises:
      ValueError: naming `dataset`, the missing and the extra columns; or a
        column with a value it cannot code (`tfvae.tabular.Schema.encode`).
    """
    columns, npz_labels = tabular.read_table(dataset)
    known = {column.name for column in schema.columns} | {schema.labels}
    missing = [name for name in schema.names if name not in columns]
    extra = [name for name in columns if name not in known]
    if missing or extra:
        found = "; ".join(part for part in (
            f"missing {missing}" if missing else "", f"extra {extra}" if extra else "") if part)
        raise ValueError(f"Received an invalid value for `dataset`: {dataset!r} does not have "
                         f"the run's columns ({found}); the run was trained on {schema.names}"
                         + (f" with labels {schema.labels!r}" if schema.labels else "")
                         + f". Received: dataset={dataset!r}")
    x = schema.encode(columns)
    labels = tabular.labels_of(columns, schema)
    return x, _numeric(npz_labels if labels is None else labels)


# `split`s of a table run's data: its own table's training or validation rows, or every row.
SPLITS = ("train", "validation", "all")


def held_out(config, model, dataset=None, split=None):
    """A table run's data for `tfvae evaluate` / `encode`, coded with its model's schema.

    Args:
      config: the run's `RunConfig`.
      model: the run's model (its schema reads the table).
      dataset: a table file, read whole. Default value: the run's own table.
      split: `"train"` or `"validation"` (the run's own rows, as `split_rows`
        split them by its seed), or `"all"`. Default value: `"all"` with a
        `dataset`, else `"validation"`.

    Returns:
      `(x float32 [n, d], labels [n] or None)` (`read_rows`).
    """
    split = split if split is not None else "all" if dataset is not None else "validation"
    if split not in SPLITS or (dataset is not None and split != "all"):
        expected = ("'all': a --dataset is read whole" if dataset is not None else
                    f"one of {SPLITS}: the run's own table has training and validation rows")
        raise ValueError(f"Received an invalid value for `split` for a table run, expected "
                         f"{expected}. Received: split={split!r}")
    x, labels = read_rows(config.dataset if dataset is None else dataset, run_schema(model))
    if split == "all":
        return x, labels
    rows = split_rows(len(x), config.seed)[split == "validation"]
    return x[rows], None if labels is None else labels[rows]


def detection_metrics(model, settings, x, labels, seed=0):
    """How well the run's score ranks the labelled anomalies among coded rows `x`.

    The score is the run's (`settings["score"]` with `settings["score_samples"]`
    samples, as `score` writes it); labels are 1 for an anomaly, 0 otherwise.

    Returns:
      `{}` without labels; `{"detection_skipped": reason}` when the labels are not
      0/1 of both kinds; else `roc_auc` (the probability that an anomaly outscores
      a normal row, ties counted half), `pr_auc` (average precision: the mean,
      over the anomalies, of the precision among the rows scored at least as
      high) and `anomalies` (their number).
    """
    if labels is None:
        return {}
    labels = np.asarray(labels)
    values = set(np.unique(labels).tolist())
    if not values <= {0, 1}:
        return {"detection_skipped": "the labels are not 0/1 (1 = anomaly): "
                f"{sorted(values)[:5]}"}
    if len(values) < 2:
        return {"detection_skipped": f"the labels are all {values.pop()}: ROC-AUC and PR-AUC "
                "need anomalies and normal rows"}
    from sklearn import metrics as sklearn_metrics  # a dependency of tfvae

    values = anomaly.scores(model, x, settings["score"], settings["score_samples"], seed=seed)
    labels = labels.astype(np.int64)
    return {"roc_auc": float(sklearn_metrics.roc_auc_score(labels, values)),
            "pr_auc": float(sklearn_metrics.average_precision_score(labels, values)),
            "anomalies": int(labels.sum())}


# Rows `sample_rows` decodes per batch, and the sample files it writes.
SAMPLE_BATCH = 8192
SAMPLE_EXTENSIONS = (".csv", ".parquet", ".npz", ".npy")


def sample_rows(model, n, seed=0):
    """`n` raw table rows drawn from a table run's model: z ~ p(z), then x ~ p(x|z).

    Continuous columns on the raw scale (the model's standardisation undone),
    binary and categorical columns as their vocabulary values; a categorical
    column is drawn among its known values (`TabularLikelihood.sample_of` with
    `unknown=False`). Batch `i` of `SAMPLE_BATCH` rows draws from `fold_in(seed, i)`.

    Returns:
      `{name: values [n]}` in the schema's feature order (`Schema.decode`).
    """
    schema = run_schema(model)
    base = tfvae_random.make_seed(seed)
    codes = []
    for i, start in enumerate(range(0, n, SAMPLE_BATCH)):
        batch_seed = tfvae_random.fold_in(base, i)
        z = model.sample_latents(min(SAMPLE_BATCH, n - start), seed=batch_seed)
        codes.append(model.likelihood.sample_of(model.decoder_parameters(z),
                                                tfvae_random.fold_in(batch_seed, 1),
                                                unknown=False).numpy())
    return schema.decode(np.concatenate(codes))


def check_sample_output(output, schema):
    """Refuses a file `sample` cannot write rows of `schema` to, before any work.

    Rows go to a `.csv` or `.parquet` (named columns, text values as they are),
    or to an `.npz` (`X` and the names) or `.npy` (the matrix `[n, d]`) when
    every value is a number; an image cannot hold them.
    """
    extension = os.path.splitext(output)[1].lower()
    if extension not in SAMPLE_EXTENSIONS:
        raise ValueError("Received an invalid value for `output`: a table run samples rows, "
                         "written to a .csv, .parquet, .npz or .npy file (not an image). "
                         f"Received: output={output!r}")
    if extension in (".npz", ".npy") and schema.text_columns:
        raise ValueError(f"Received an invalid value for `output`: columns "
                         f"{schema.text_columns} hold text, and a {extension} holds numbers; "
                         f"write a .csv or .parquet. Received: output={output!r}")
    if extension == ".parquet":
        try:
            import pyarrow  # noqa: F401  (optional: not a dependency of tfvae)
        except ImportError:
            raise ValueError("Received an invalid value for `output`: .parquet needs the "
                             "pyarrow package, which is not installed. Received: "
                             f"output={output!r}") from None


def sample(model, n, output, seed=0):
    """Writes `n` rows drawn from a table run's model (`sample_rows`) to `output`.

    Args:
      model: the table run's model.
      n: the number of rows.
      output: a `.csv` or `.parquet` (the schema's column names and values), or
        an `.npz` / `.npy` for tables of numbers (`check_sample_output`); written
        whole or not at all.
      seed: the draws' seed. Default value: `0`.

    Returns:
      The number of rows written.
    """
    check_sample_output(output, run_schema(model))
    columns = sample_rows(model, n, seed=seed)
    if output.lower().endswith(".npy"):
        matrix = np.stack([values.astype(np.float64) for values in columns.values()], axis=1)
        files.write_with(output, lambda path: np.save(path, matrix))
        return len(matrix)
    return tabular.save_table(output, columns)


def export_model(directory):
    """`(model, threshold)` for `tfvae export` of a table run: the threshold its `score`
    graph's `flag` bakes in (`metrics.json`'s `graph_threshold`), or None (no `flag`) for a
    run trained before it was recorded."""
    _, metrics, model = read_table_run(directory)
    threshold = metrics.get("graph_threshold")
    if threshold is None:
        logger.warning("`%s` has no graph_threshold in metrics.json (trained by an older "
                       "tfvae): the exported `score` graph has no `flag`", directory)
    return model, threshold


def parse_threshold(text):
    """`--threshold`: `"auto"` (the run's training threshold) or a number."""
    if text is None or text == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not np.isfinite(value):
        raise ValueError("Received an invalid value for `--threshold`, expected 'auto' or a "
                         f"number. Received: --threshold={text!r}")
    return value


def score(directory, dataset, output, threshold="auto", num_samples=None, seed=0):
    """Scores every row of the table `dataset` with a table run's model.

    Writes `output` (`.csv` or `.npz`, whole or not at all) with, per row:
    `index`, `label` (numeric labels, when the table has the run's labels
    column or an `.npz`'s `y`), `score` (−log p(x), higher = more anomalous),
    `feature_<column>` (each column's −E_q[log p_j(x_j|z)]) and `flag` (1 where
    `score > threshold`).

    Args:
      directory: the table run.
      dataset: a table file (default of the command: the run's own).
      output: the `.csv` / `.npz` to write.
      threshold: `"auto"` (the run's `metrics.json` threshold) or a number.
        Default value: `"auto"`.
      num_samples: importance samples per row. Default value: the run's.
      seed: the noise's seed. Default value: `0`.

    Returns:
      `(rows, threshold)`: the number of rows written and the threshold applied.
    """
    settings, metrics, model = read_table_run(directory)
    if threshold == "auto":
        if "threshold" not in metrics:
            raise ValueError(f"Received an invalid value for `--threshold`: `{directory}` has "
                             "no training threshold in metrics.json; pass a number. Received: "
                             "--threshold=auto")
        threshold = float(metrics["threshold"])
    samples = settings["score_samples"] if num_samples is None else num_samples
    schema = model.likelihood.schema
    x, labels = read_rows(dataset, schema)
    values = anomaly.scores(model, x, settings["score"], samples, seed=seed)
    shares = anomaly.feature_scores(model, x, samples, seed=seed)
    columns = {"index": np.arange(len(x), dtype=np.int64)}
    if labels is not None:
        columns["label"] = labels
    columns["score"] = values
    for j, name in enumerate(schema.names):
        columns[f"feature_{name}"] = shares[:, j]
    columns["flag"] = (values > threshold).astype(np.int64)
    return tables.write_table(output, [columns]), threshold
