"""Tables as data: `.csv`, `.parquet` and `.npz` files read as `[n, d]` feature rows.

A table's columns are typed by a `Schema`: each feature column is

* `continuous`: any finite number (modelled by a Gaussian, on the column's
  standardised scale: `tfvae.TabularLikelihood`);
* `binary`: one of exactly two values (its `vocabulary`; the first is coded 0,
  the second 1), modelled by a Bernoulli;
* `categorical`: one of the `K` values of its `vocabulary` (coded 0..K-1),
  modelled by a categorical distribution over K + 1 outcomes. The extra code
  `K` is the **unknown** slot: a value not seen when the schema was inferred
  is coded `K` at scoring time (with a warning naming the column), so a row
  with an unseen category gets a low likelihood instead of an error;
* `ignore`: read but not a feature (an identifier, a free-text note).

A labels column (`labels=`: anomaly labels, classes) is never a feature.

`infer_schema` types the columns from the training table: text columns are
categorical (binary when they hold exactly two values), number columns with
exactly two values are binary and other number columns continuous. A small
JSON schema file overrides any column (`Schema.read` / `infer_schema(overrides=)`)::

    {"labels": "is_fraud",
     "columns": {"zip_code": "categorical", "customer_id": "ignore"},
     "constant": "ignore"}

(`"constant": "ignore"` drops columns with one value instead of refusing them.)

`Schema.encode(columns)` turns a table into the float32 rows the model takes:
continuous columns raw (unscaled: the model standardises them itself), binary
columns 0/1 and categorical columns their codes. Bad input raises a
`ValueError` naming the column: a missing value, text in a number column, a
constant column (nothing to learn; declare it `ignore`), a value of a binary
column that is neither of its two, a feature column missing from the table,
and a column that looks like labels (`label`, `y`, `target`, ...) used as a
feature without the schema saying so.
"""

import csv
import dataclasses
import json
import logging
import math
import os

import numpy as np

from tfvae import files

__all__ = [
    "array_columns",
    "Column",
    "EXTENSIONS",
    "FEATURE_KINDS",
    "infer_schema",
    "is_table",
    "KINDS",
    "LABEL_LIKE",
    "labels_of",
    "load_table",
    "MISSING",
    "NPZ_FEATURES",
    "NPZ_LABELS",
    "read_overrides",
    "read_table",
    "save_table",
    "Schema",
    "write_schema",
]

logger = logging.getLogger(__name__)

KINDS = ("continuous", "binary", "categorical", "ignore")
FEATURE_KINDS = ("continuous", "binary", "categorical")
EXTENSIONS = (".csv", ".parquet", ".npz")
# Cells read as missing values in a .csv (case-insensitive, after stripping spaces).
MISSING = ("", "na", "n/a", "nan", "null", "none", "?")
# Column names taken for labels: using one as a feature needs the schema to say so.
LABEL_LIKE = ("label", "labels", "y", "target", "class", "anomaly", "outlier", "is_anomaly")
# The `.npz` keys of the feature matrix and of its labels.
NPZ_FEATURES = ("X", "x")
NPZ_LABELS = ("y", "Y")


def _fail(name, expected, received):
    raise ValueError(f"Received an invalid value for `{name}`, expected {expected}. "
                     f"Received: {received}")


def _column_error(column, message):
    raise ValueError(f"Column {column!r}: {message}")


def _key(value):
    """A cell as a vocabulary entry: a float if it reads as a number, else its text."""
    if isinstance(value, (bool, np.bool_)):
        return float(value)
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        return text


def _sorted_vocabulary(values):
    """Numbers first (ascending), then text (alphabetical)."""
    return tuple(sorted(set(values), key=lambda v: (isinstance(v, str), v if isinstance(
        v, str) else "", v if not isinstance(v, str) else 0.0)))


def _is_missing(value):
    if value is None:
        return True
    if isinstance(value, (float, np.floating)):
        return math.isnan(value)
    return isinstance(value, str) and value.strip().lower() in MISSING


@dataclasses.dataclass(frozen=True)
class Column:
    """One column of a table: its `name`, `kind` (`KINDS`) and, for binary and
    categorical columns, its `vocabulary` (the values in code order)."""

    name: str
    kind: str
    vocabulary: tuple = ()

    def __post_init__(self):
        if self.kind not in KINDS:
            _fail("kind", f"one of {KINDS}", f"kind={self.kind!r} for column {self.name!r}")
        vocabulary = tuple(_key(v) for v in self.vocabulary)
        object.__setattr__(self, "vocabulary", vocabulary)
        if self.kind == "binary" and len(vocabulary) != 2:
            _column_error(self.name, f"a binary column needs exactly 2 values; its vocabulary "
                          f"is {list(vocabulary)}")
        if self.kind == "categorical" and len(vocabulary) < 1:
            _column_error(self.name, "a categorical column needs a vocabulary of at least one "
                          "value")
        if len(set(vocabulary)) != len(vocabulary):
            _column_error(self.name, f"its vocabulary repeats values: {list(vocabulary)}")

    @property
    def num_outcomes(self):
        """Outcomes the likelihood scores: K + 1 for a categorical column (the last is
        the unknown slot), 2 for a binary one, 0 for a continuous one."""
        return {"categorical": len(self.vocabulary) + 1, "binary": 2}.get(self.kind, 0)

    def to_config(self):
        config = {"name": self.name, "kind": self.kind}
        if self.vocabulary:
            config["vocabulary"] = list(self.vocabulary)
        return config

    def encode(self, values):
        """Codes one column's raw `values` `[n]` as float64 (see the module docstring)."""
        values = np.asarray(values, dtype=object if np.asarray(values).dtype.kind in "OUS"
                            else np.float64)
        missing = [i for i, v in enumerate(values) if _is_missing(v)]
        if missing:
            _column_error(self.name, f"missing value in row {missing[0]} ({len(missing)} rows "
                          "in all); fill or drop them first")
        if self.kind == "continuous":
            if values.dtype == object:
                out = np.empty(len(values))
                for i, v in enumerate(values):
                    key = _key(v)
                    if isinstance(key, str):
                        _column_error(self.name, f"text {key!r} in row {i} of a continuous "
                                      "column (declare the column 'categorical' in the schema "
                                      "if it is one)")
                    out[i] = key
                values = out
            if not np.all(np.isfinite(values)):
                row = int(np.flatnonzero(~np.isfinite(values))[0])
                _column_error(self.name, f"non-finite value {values[row]!r} in row {row}")
            return values.astype(np.float64)
        index = {v: i for i, v in enumerate(self.vocabulary)}
        codes = np.empty(len(values))
        unknown = []
        for i, v in enumerate(values):
            code = index.get(_key(v))
            if code is None:
                if self.kind == "binary":
                    _column_error(self.name, f"value {_key(v)!r} in row {i} is neither of the "
                                  f"binary column's values {list(self.vocabulary)}")
                unknown.append(i)
                code = len(self.vocabulary)
            codes[i] = code
        if unknown:
            logger.warning("column %r: %d rows hold categories not seen in training (first: "
                           "%r in row %d); they are coded as the unknown category %d",
                           self.name, len(unknown), values[unknown[0]], unknown[0],
                           len(self.vocabulary))
        return codes

    @classmethod
    def from_config(cls, config):
        return cls(config["name"], config["kind"], tuple(config.get("vocabulary", ())))


class Schema:
    """The columns of a table, typed (see the module docstring).

    Args:
      columns: `Column`s in the table's order (features and ignored columns).
      labels: the name of the labels column, never a feature. Default value: `None`.
    """

    def __init__(self, columns, labels=None):
        self.columns = tuple(columns)
        self.labels = labels
        names = [c.name for c in self.columns]
        if len(set(names)) != len(names):
            _fail("columns", "distinct column names", f"columns {names}")
        if labels is not None and labels in names:
            kind = self.columns[names.index(labels)].kind
            if kind != "ignore":
                _column_error(labels, f"it is the labels column, so it cannot also be a "
                              f"{kind} feature")
        if not self.features:
            _fail("columns", "at least one feature column (continuous, binary or categorical)",
                  f"columns {[c.to_config() for c in self.columns]}")

    @property
    def features(self):
        """The feature columns, in order (the model's `d` columns)."""
        return tuple(c for c in self.columns if c.kind in FEATURE_KINDS)

    @property
    def names(self):
        """The feature columns' names."""
        return [c.name for c in self.features]

    def encode(self, columns):
        """The float32 rows `[n, d]` of the table `columns` (`{name: values [n]}`).

        Raises:
          ValueError: naming the column, for a feature column missing from
            `columns` or a value it cannot code (module docstring).
        """
        missing = [c.name for c in self.features if c.name not in columns]
        if missing:
            _column_error(missing[0], f"the table has no such column (it has "
                          f"{list(columns)[:20]}); the model was trained on {self.names}")
        encoded = [c.encode(columns[c.name]) for c in self.features]
        return np.stack(encoded, axis=1).astype(np.float32)

    def decode(self, rows):
        """The table `{name: values [n]}` of coded rows `[n, d]`: the inverse of `encode`.

        Continuous columns come as they are (float64); binary and categorical
        columns as their vocabulary values (float64 when every value of the
        vocabulary is a number, else an object array of the values).

        Raises:
          ValueError: naming the column, for a code that is not one of its
            vocabulary's (the unknown slot K has no value to decode to).
        """
        rows = np.asarray(rows, np.float64)
        features = self.features
        if rows.ndim != 2 or rows.shape[1] != len(features):
            _fail("rows", f"coded rows [n, {len(features)}] ({self.names})",
                  f"rows with shape {rows.shape}")
        table = {}
        for j, column in enumerate(features):
            values = rows[:, j]
            if column.kind == "continuous":
                table[column.name] = values.copy()
                continue
            bad = (values < 0) | (values >= len(column.vocabulary)) | (np.floor(values) != values)
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                _column_error(column.name, f"code {values[row]!r} in row {row} is not one of "
                              f"its {len(column.vocabulary)} values {list(column.vocabulary)} "
                              "(the unknown category has no value)")
            numeric = not any(isinstance(v, str) for v in column.vocabulary)
            vocabulary = np.array(column.vocabulary, dtype=np.float64 if numeric else object)
            table[column.name] = vocabulary[values.astype(np.int64)]
        return table

    @property
    def text_columns(self):
        """The feature columns whose vocabulary holds text (their values are not numbers)."""
        return [c.name for c in self.features if any(isinstance(v, str) for v in c.vocabulary)]

    def to_config(self):
        return {"labels": self.labels, "columns": [c.to_config() for c in self.columns]}

    @classmethod
    def from_config(cls, config):
        return cls([Column.from_config(c) for c in config["columns"]], config.get("labels"))

    def __eq__(self, other):
        return isinstance(other, Schema) and self.to_config() == other.to_config()

    def __repr__(self):
        kinds = ", ".join(f"{c.name}: {c.kind}" for c in self.columns)
        return f"Schema({kinds}; labels={self.labels!r})"


def read_overrides(path):
    """A schema file (JSON: `{"labels": NAME, "columns": {NAME: KIND or {"kind": KIND,
    "vocabulary": [...]}}}`) as the `overrides` of `infer_schema`."""
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except json.JSONDecodeError as error:
        _fail("schema", "a JSON schema file", f"{path!r} ({error})")
    if not isinstance(config, dict) or not set(config) <= {"labels", "columns", "constant"} \
            or not isinstance(config.get("columns", {}), dict) \
            or config.get("constant", "error") not in ("error", "ignore"):
        _fail("schema", 'a JSON object {"labels": NAME, "columns": {NAME: KIND}, "constant": '
              '"error" or "ignore"}', f"{path!r} with {str(config)[:200]}")
    return config


def infer_schema(columns, labels=None, overrides=None, constant="error"):
    """Types the columns of the table `columns` (`{name: values [n]}`, in order).

    Args:
      columns: the training table (e.g. `read_table(path)`).
      labels: the labels column's name (never a feature). Default value:
        `None` (or `overrides["labels"]`).
      overrides: `{"labels": NAME, "columns": {NAME: KIND or {"kind": ...,
        "vocabulary": [...]}}}` (a schema file, `read_overrides`); columns
        not named are inferred. Default value: `None`.
      constant: what a column with one value becomes: `"error"` (a
        `ValueError` naming it) or `"ignore"`. Default value: `"error"`
        (or `overrides["constant"]`).

    Returns:
      A `Schema`.
    """
    if constant not in ("error", "ignore"):
        _fail("constant", "'error' or 'ignore'", f"constant={constant!r}")
    overrides = dict(overrides or {})
    constant = overrides.get("constant", constant)
    declared = dict(overrides.get("columns", {}))
    labels = overrides.get("labels", labels) if labels is None else labels
    if labels is not None and labels not in columns:
        _column_error(labels, f"the labels column is not in the table (it has "
                      f"{list(columns)[:20]})")
    unknown = [name for name in declared if name not in columns]
    if unknown:
        _column_error(unknown[0], f"the schema declares it but the table has no such column "
                      f"(it has {list(columns)[:20]})")
    result = []
    for name, values in columns.items():
        if name == labels:
            continue
        if name in declared:
            spec = declared[name]
            spec = {"kind": spec} if isinstance(spec, str) else dict(spec)
            kind = spec.get("kind")
            if kind in ("binary", "categorical") and "vocabulary" not in spec:
                spec["vocabulary"] = _sorted_vocabulary(
                    _key(v) for v in _present(name, values))
            result.append(Column(name, kind, tuple(spec.get("vocabulary", ()))))
            continue
        if str(name).strip().lower() in LABEL_LIKE:
            _column_error(name, "its name says labels, and labels must not be used as a "
                          f"feature: pass labels={name!r} (--labels-column), or declare it in "
                          "the schema to use it as a feature")
        result.append(_infer_column(name, values, constant))
    return Schema(result, labels)


def _present(name, values):
    """`values`, after refusing missing ones."""
    values = list(values)
    missing = [i for i, v in enumerate(values) if _is_missing(v)]
    if missing:
        _column_error(name, f"missing value in row {missing[0]} ({len(missing)} rows in all); "
                      "fill or drop them first")
    return values


def _infer_column(name, values, constant):
    keys = [_key(v) for v in _present(name, values)]
    text = [i for i, k in enumerate(keys) if isinstance(k, str)]
    if text and len(text) < len(keys):
        row = text[0]
        _column_error(name, f"text {keys[row]!r} in row {row} of a column of numbers "
                      "(declare the column 'categorical' in the schema if it is one)")
    vocabulary = _sorted_vocabulary(keys)
    if len(vocabulary) == 1:
        if constant == "ignore":
            logger.warning("column %r is constant (%r): ignored", name, vocabulary[0])
            return Column(name, "ignore")
        _column_error(name, f"it is constant (every value is {vocabulary[0]!r}): there is "
                      "nothing to learn from it; drop it or declare it 'ignore' in the schema")
    if len(vocabulary) == 2:
        return Column(name, "binary", vocabulary)
    if text:
        return Column(name, "categorical", vocabulary)
    if not all(math.isfinite(k) for k in keys):
        row = next(i for i, k in enumerate(keys) if not math.isfinite(k))
        _column_error(name, f"non-finite value {keys[row]!r} in row {row}")
    return Column(name, "continuous")


def array_columns(x):
    """A numeric matrix `[n, d]` as a table `{"x_0": [n], ..., "x_{d-1}": [n]}`."""
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] < 1:
        _fail("X", "a 2-D array of rows [n, d]", f"X with shape {x.shape}")
    if x.dtype.kind not in "biuf":
        _fail("X", "numbers", f"X with dtype {x.dtype}")
    return {f"x_{j}": x[:, j] for j in range(x.shape[1])}


def read_table(path):
    """Reads a table file: `{name: values [n]}` in column order, and the `.npz`'s labels.

    * `.csv`: a header row, then one row per example; a column whose every
      present cell reads as a number is float64 (missing cells NaN), any
      other column an object array of its text.
    * `.parquet`: needs `pyarrow` (not a dependency of tfvae); number and
      boolean columns as float64 (nulls NaN), others as objects.
    * `.npz`: the matrix `X` (or `x`) `[n, d]` as columns `x_0` .. `x_{d-1}`;
      `y` is returned as the labels.

    Returns:
      `(columns, labels)`: labels from an `.npz`'s `y`, else `None`.
    """
    path = os.fspath(path)
    extension = os.path.splitext(path)[1].lower()
    if extension not in EXTENSIONS:
        _fail("dataset", "a table file ending in .csv, .parquet or .npz", f"{path!r}")
    if not os.path.isfile(path):
        _fail("dataset", "an existing table file", f"{path!r} (no such file)")
    if extension == ".csv":
        return _read_csv(path), None
    if extension == ".parquet":
        return _read_parquet(path), None
    return _read_npz(path)


def save_table(path, columns):
    """Writes the table `columns` (`{name: values [n]}`, in order) to a file `read_table` reads
    back, whole or not at all (a temporary file renamed over `path`).

    * `.csv`: a header row of the names, then one row per example: text as it
      is, integral numbers as integers, other numbers as `repr(float)` (the
      shortest text that reads back to the same float64);
    * `.parquet` (needs `pyarrow`): number columns as float64, text columns as strings;
    * `.npz`: the matrix `X` `[n, d]` (float64) and `columns`, the names (`read_table`
      names `X`'s columns `x_0`, ...); every value must be a number.

    Args:
      path: a `.csv`, `.parquet` or `.npz` file.
      columns: `{name: values [n]}`, every column `n` values (numbers, or text).

    Returns:
      The number of rows written.
    """
    path = os.fspath(path)
    extension = os.path.splitext(path)[1].lower()
    if extension not in EXTENSIONS:
        _fail("path", "a table file ending in .csv, .parquet or .npz", f"path={path!r}")
    columns = {str(name): np.asarray(values) for name, values in columns.items()}
    lengths = {len(values) for values in columns.values()}
    if not columns or len(lengths) != 1 or any(v.ndim != 1 for v in columns.values()):
        _fail("columns", "a non-empty dict of columns {name: values [n]}, all of n values",
              f"columns with shapes {[v.shape for v in columns.values()]}")
    text = [name for name, values in columns.items() if values.dtype.kind not in "biuf"]
    if extension == ".npz" and text:
        _fail("path", "a .csv or .parquet file: an .npz holds a matrix of numbers, and columns "
              f"{text} hold text", f"path={path!r}")
    rows = lengths.pop()
    if extension == ".csv":
        with files.atomic_open(path) as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(list(columns))
            cells = [[_cell(v) for v in values] for values in columns.values()]
            writer.writerows(zip(*cells))
    elif extension == ".parquet":
        try:
            import pyarrow as pa  # optional: not a dependency of tfvae
            import pyarrow.parquet as pq
        except ImportError:
            _fail("path", "a .csv or .npz table (.parquet needs the pyarrow package, which is "
                  "not installed)", f"path={path!r}")
        table = pa.table({name: pa.array([str(v) for v in values] if name in text
                                         else values.astype(np.float64))
                          for name, values in columns.items()})
        files.write_with(path, lambda target: pq.write_table(table, target))
    else:
        matrix = np.stack([v.astype(np.float64) for v in columns.values()], axis=1)
        names = np.array(list(columns))
        with files.atomic_open(path, "wb") as f:
            np.savez(f, X=matrix, columns=names)
    return rows


def _cell(value):
    """A table value as `.csv` text (see `save_table`)."""
    if isinstance(value, str):
        return value
    value = float(value)
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def is_table(path):
    """Whether `path` names a table `read_table` reads: a `.csv` or `.parquet`
    file, or an `.npz` with a matrix `X` / `x` of rank 2 and no predefined splits."""
    path = str(path)
    if path.lower().endswith((".csv", ".parquet")):
        return True
    if not path.lower().endswith(".npz") or not os.path.isfile(path):
        return False
    try:
        with np.load(path) as archive:
            keys = set(archive.files)
            if "X" in keys:
                return archive["X"].ndim == 2
    except (OSError, ValueError):
        return False
    return False


def _read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows or not rows[0]:
        _fail("dataset", "a .csv file with a header row", f"{path!r} (empty)")
    header = [h.strip() for h in rows[0]]
    body = [r for r in rows[1:] if r]
    for i, row in enumerate(body):
        if len(row) != len(header):
            _fail("dataset", f"{len(header)} cells in every row (the header's)",
                  f"{path!r} row {i + 1} with {len(row)} cells")
    if len(set(header)) != len(header):
        _fail("dataset", "distinct column names in the header", f"{path!r} header {header}")
    columns = {}
    for j, name in enumerate(header):
        cells = [row[j] for row in body]
        columns[name] = _parse_cells(cells)
    return columns


def _parse_cells(cells):
    """float64 when every present cell is a number (missing: NaN), else the text."""
    numbers = np.empty(len(cells))
    for i, cell in enumerate(cells):
        if _is_missing(cell):
            numbers[i] = np.nan
            continue
        try:
            numbers[i] = float(cell)
        except ValueError:
            return np.array([None if _is_missing(c) else c.strip() for c in cells], dtype=object)
    return numbers


def _read_parquet(path):
    try:
        import pyarrow.parquet as pq  # optional: not a dependency of tfvae
    except ImportError:
        _fail("dataset", "a .csv or .npz table (.parquet needs the pyarrow package, which is "
              "not installed)", f"{path!r}")
    table = pq.read_table(path)
    columns = {}
    for name, column in zip(table.column_names, table.columns):
        values = column.to_pylist()
        if all(v is None or isinstance(v, (bool, int, float)) for v in values):
            columns[name] = np.array([np.nan if v is None else float(v) for v in values])
        else:
            columns[name] = np.array(values, dtype=object)
    return columns


def _read_npz(path):
    with np.load(path, allow_pickle=False) as archive:
        key = next((k for k in NPZ_FEATURES if k in archive.files), None)
        if key is None:
            _fail("dataset", "an .npz table with a matrix 'X' (or 'x') [n, d]",
                  f"{path!r} with keys {archive.files}")
        x = archive[key]
        labels_key = next((k for k in NPZ_LABELS if k in archive.files), None)
        labels = None if labels_key is None else archive[labels_key]
    if labels is not None and (labels.ndim != 1 or len(labels) != len(x)):
        _fail("dataset", f"labels 'y' [n] beside X [n, d] (n={len(x)})",
              f"{path!r} with y of shape {labels.shape}")
    return array_columns(x), labels


def labels_of(columns, schema):
    """The labels column of the table `columns` as an array, or `None` when the schema
    names none or the table lacks it (labels are optional when scoring)."""
    if schema.labels is None or schema.labels not in columns:
        return None
    values = columns[schema.labels]
    return np.asarray(values)


def load_table(path, schema=None, labels=None, overrides=None, constant="error"):
    """Reads a table file and codes it: `(x float32 [n, d], labels or None, schema)`.

    Args:
      path: a `.csv`, `.parquet` or `.npz` file (`read_table`).
      schema: the `Schema` to code with (a trained model's, when scoring);
        `None` infers one from this table (`infer_schema`). Default value: `None`.
      labels: the labels column (when inferring). Default value: `None`.
      overrides: a schema file's contents (when inferring). Default value: `None`.
      constant: `infer_schema`'s `constant`. Default value: `"error"`.
    """
    columns, npz_labels = read_table(path)
    if schema is None:
        schema = infer_schema(columns, labels=labels, overrides=overrides, constant=constant)
    x = schema.encode(columns)
    found = labels_of(columns, schema)
    return x, (npz_labels if found is None else found), schema


def write_schema(path, schema):
    """Writes `schema.to_config()` as JSON, whole or not at all."""
    files.write_json(path, schema.to_config())
