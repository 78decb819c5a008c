"""Runs on tables: `tfvae train --dataset table.csv` and `tfvae score RUN --threshold ...`.

A table run directory holds what an image run's does for the commands that
support tables (`train`, `score`):

    run.json      the RunConfig (as for every run)
    table.json    what makes it a table run: the labels column, the score the
                  threshold is on, its samples, the contamination
    model.keras   the model, with its schema (`TabularLikelihood.schema`) and the
                  continuous columns' standardisation inside: it takes raw rows
    history.csv   the epoch logs
    metrics.json  held-out ELBO terms and log p(x) (`evaluation.evaluate_model`), and
                  `threshold`: the (1 − contamination) quantile of the training rows'
                  scores (`tfvae.anomaly`), which `score --threshold auto` applies;
                  `graph_threshold`: the same quantile of the exported `score` graph's
                  score at eps = 0 (−ELBO, `anomaly.noise_scores`), which `tfvae export`
                  bakes into that graph's `flag`

The table is split at random (by the run's seed) into training and validation
rows (20 %); the column types are inferred from the whole table (labels never
used) unless a schema file says otherwise, and the standardisation is fitted
on the training rows. Training stops early on the validation ELBO and keeps
the best weights. The directory is written as `tfvae.runs.RunOutput`
writes a run: under its lock, whole or not at all.
"""

import dataclasses
import json
import logging
import os

import keras
import numpy as np

from tfvae import anomaly
from tfvae import builders
from tfvae import callbacks as callbacks_lib
from tfvae import data as data_lib
from tfvae import evaluation
from tfvae import files
from tfvae import tables
from tfvae import tabular
from tfvae.tabular_likelihood import TabularLikelihood

__all__ = [
    "is_table_run",
    "parse_threshold",
    "read_table_run",
    "RUN_SCORE",
    "score",
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


def train(config, output, labels_column=None, schema_file=None, contamination=0.1,
          overwrite=False, verbose=1):
    """Trains a VAE with a `TabularLikelihood` on the table `config.dataset`.

    Args:
      config: a `tfvae.runs.RunConfig` (its `likelihood`, `architecture`,
        `filters` and `binarize` do not apply: rows get the per-column likelihood).
      output: the run directory.
      labels_column: the table's labels column, never a feature (an `.npz`'s `y`
        is its labels). Default value: `None`.
      schema_file: a JSON schema file (`tfvae.tabular.read_overrides`). Default value: `None`.
      contamination: the expected fraction of anomalies among the training rows,
        in (0, 0.5]: sets the threshold. Default value: `0.1`.
      overwrite: replace an earlier run in `output`. Default value: `False`.
      verbose: Keras's progress output. Default value: `1`.

    Returns:
      The metrics dict written to `metrics.json`.
    """
    from tfvae import runs  # the application layer

    config.validate()
    if config.strategy != "default" or config.conditional or config.architecture != "mlp":
        raise ValueError("Received an invalid value for `dataset`: a table run trains an MLP "
                         "on one device, unconditional (no --strategy, --conditional or "
                         f"--architecture conv). Received: dataset={config.dataset!r}")
    anomaly.VAEDetector(contamination=contamination)  # checks it, in one line
    overrides = None if schema_file is None else tabular.read_overrides(schema_file)
    x, labels, schema = tabular.load_table(config.dataset, labels=labels_column,
                                           overrides=overrides)
    train_rows, validation_rows = split_rows(len(x), config.seed)
    runs.check_output(output, overwrite=overwrite)  # refusals before anything is written
    run_output = runs.RunOutput(output, overwrite=overwrite).begin()
    try:
        files.write_json(os.path.join(output, runs.RUN_FILE), dataclasses.asdict(config))
        files.write_json(os.path.join(output, TABLE_FILE), {
            "labels_column": schema.labels, "score": RUN_SCORE,
            "score_samples": config.eval_samples, "contamination": contamination})
        metrics = _fit(config, output, schema, x[train_rows], x[validation_rows], verbose)
        model = metrics.pop("model")
        train_scores = anomaly.scores(model, x[train_rows], RUN_SCORE,
                                      config.eval_samples, seed=config.seed)
        graph_scores = anomaly.noise_scores(model, x[train_rows])
        metrics.update(threshold=anomaly.contamination_threshold(train_scores, contamination),
                       threshold_score=RUN_SCORE,
                       graph_threshold=anomaly.contamination_threshold(graph_scores,
                                                                       contamination),
                       graph_threshold_score=GRAPH_SCORE, contamination=contamination,
                       train_rows=int(len(train_rows)), columns=schema.names)
        files.write_json(os.path.join(output, "metrics.json"), metrics)
        run_output.commit()
        return metrics
    except BaseException:
        run_output.abort()
        raise
    finally:
        run_output.close()


def _fit(config, output, schema, x_train, x_val, verbose):
    """Trains and saves the model; returns the held-out metrics, and the model under `model`."""
    keras.utils.set_random_seed(config.seed)  # the application layer seeds the process
    head = TabularLikelihood(schema, scale="per_dimension")
    head.adapt(x_train)
    kwargs = config.model_kwargs((x_train.shape[1],))
    kwargs.update(likelihood=head)
    model = builders.build_vae(**kwargs)
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate))
    stop = callbacks_lib.StopOnNonFinite()
    history_path = os.path.join(output, "history.csv")
    callbacks = [stop, callbacks_lib.AtomicCSVLogger(history_path),
                 keras.callbacks.EarlyStopping(monitor="val_elbo", mode="max",
                                               patience=config.patience,
                                               restore_best_weights=True)]
    batch_size = min(config.batch_size, len(x_train))
    model.fit(data_lib.make_dataset(x_train, batch_size, seed=config.seed), epochs=config.epochs,
              validation_data=data_lib.make_dataset(x_val, 256, shuffle=False),
              callbacks=callbacks, shuffle=False, verbose=verbose)
    if stop.diverged_epoch is not None:
        raise ValueError(f"Training diverged in epoch {stop.diverged_epoch}: the loss became "
                         f"{stop.value}. Try a lower --learning-rate.")
    files.save_model(model, os.path.join(output, "model.keras"))
    metrics = evaluation.evaluate_model(model, x_val, num_samples=config.eval_samples,
                                        seed=config.seed)
    metrics["epochs_trained"] = len(model.history.history.get("loss", []))
    metrics["model"] = model
    return metrics


def read_table_run(directory):
    """`(table settings, metrics, model)` of a table run directory."""
    from tfvae import runs

    with open(os.path.join(directory, TABLE_FILE)) as f:
        settings = json.load(f)
    metrics_path = os.path.join(directory, "metrics.json")
    metrics = {}
    if os.path.isfile(metrics_path):
        with open(metrics_path) as f:
            metrics = json.load(f)
    model = runs.load_model(os.path.join(directory, "model.keras"))
    if not isinstance(model.likelihood, TabularLikelihood):
        raise ValueError(f"`{directory}`: {TABLE_FILE} says it is a table run, but its "
                         "model.keras does not take table rows.")
    return settings, metrics, model


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
    x, labels, _ = tabular.load_table(dataset, schema=schema)
    values = anomaly.scores(model, x, settings["score"], samples, seed=seed)
    shares = anomaly.feature_scores(model, x, samples, seed=seed)
    columns = {"index": np.arange(len(x), dtype=np.int64)}
    if labels is not None and np.asarray(labels).dtype.kind in "biuf":
        columns["label"] = np.asarray(labels)
    columns["score"] = values
    for j, name in enumerate(schema.names):
        columns[f"feature_{name}"] = shares[:, j]
    columns["flag"] = (values > threshold).astype(np.int64)
    return tables.write_table(output, [columns]), threshold
