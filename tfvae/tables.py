"""Per-example tables written as they are computed.

`TableWriter(path)` takes one dict of columns per batch (`{name: array [b]
or [b, ...]}`, e.g. from `evaluation.iter_scores`) and appends it to the
table, so the whole table is never held in memory. The format follows the
extension:

* `.csv`: a header from the first batch, a column per value (a column of
  shape `[b, 2, 3]` named `name` becomes `name_0_0`, ..., `name_1_2`);
  integer columns printed as integers, the others as `repr(float(v))`
  (the shortest text that reads back to the same float64).
* `.npz`: one `.npy` per column, as `np.savez` writes it (`np.load` reads it).
  Each column is streamed to an unnamed temporary file beside the table;
  closing assembles the zip archive from them in chunks.
* `.parquet` (only when `pyarrow` is installed; not a dependency of tfvae):
  the columns of the `.csv`, with their dtypes, one row group per batch.

The table is written to a temporary file in its folder and renamed over
`path` only when the `with` block ends without an exception
(`tfvae.files.atomic_open`): a failure leaves no partial table, no temporary
file, and any earlier file at `path` as it was.
"""

import contextlib
import logging
import os
import shutil
import tempfile
import zipfile
from collections.abc import Mapping

import numpy as np

from tfvae import files

__all__ = [
    "flat_names",
    "TableWriter",
    "write_table",
]

logger = logging.getLogger(__name__)

# Numeric columns only: booleans, signed and unsigned integers, floats.
_KINDS = "biuf"
_CHUNK_BYTES = 1 << 20


def _fail(name, expected, received):
    raise ValueError(f"Received an invalid value for `{name}`, expected {expected}. "
                     f"Received: {received}")


def flat_names(name, shape):
    """The table's column names for a column `name` whose rows have `shape`.

    `name` itself for scalar rows, else `name_i_j...` for every index of
    `shape` in C order (e.g. `code_0`, `code_1` for `[b, 2]`).
    """
    if not shape:
        return [name]
    return [f"{name}_{'_'.join(map(str, index))}" for index in np.ndindex(*shape)]


def _flat(value):
    """`[b, ...]` -> `[b, prod(...)]` (also for b = 0)."""
    return value.reshape(len(value), int(np.prod(value.shape[1:], dtype=np.int64)))


class _CsvSink:
    """Rows of text: the header at the first batch, then each batch's rows."""

    mode = "w"

    def __init__(self, f, stack):
        self.f = f

    def start(self, layout):
        self.f.write(",".join(n for name, (_, shape) in layout.items()
                              for n in flat_names(name, shape)) + "\n")

    def write(self, columns):
        values = [_flat(value) for value in columns.values()]
        table = np.concatenate([v.astype(np.float64) for v in values], axis=1)
        integer = np.concatenate([np.full(v.shape[1], np.issubdtype(v.dtype, np.integer))
                                  for v in values])
        self.f.writelines(",".join(str(int(v)) if is_int else repr(float(v))
                                   for v, is_int in zip(row, integer)) + "\n"
                          for row in table)

    def finish(self, rows):
        pass


class _NpzSink:
    """One unnamed raw file per column while writing; a zip of `.npy` files at the end."""

    mode = "wb"

    def __init__(self, f, stack):
        self.f, self.stack = f, stack
        self.directory = os.path.dirname(os.path.abspath(f.name))
        self.raw, self.layout = {}, {}

    def start(self, layout):
        self.layout = layout
        for name in layout:
            self.raw[name] = self.stack.enter_context(tempfile.TemporaryFile(dir=self.directory))

    def write(self, columns):
        for name, value in columns.items():
            self.raw[name].write(np.ascontiguousarray(value).tobytes())

    def finish(self, rows):
        with zipfile.ZipFile(self.f, "w", compression=zipfile.ZIP_STORED,
                             allowZip64=True) as archive:
            for name, (dtype, shape) in self.layout.items():
                header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                          "shape": (rows, *shape)}
                raw = self.raw[name]
                raw.seek(0)
                with archive.open(name + ".npy", "w", force_zip64=True) as entry:
                    np.lib.format.write_array_header_1_0(entry, header)
                    shutil.copyfileobj(raw, entry, _CHUNK_BYTES)


def _pyarrow(path):
    try:
        import pyarrow  # noqa: F401  (optional: not a dependency of tfvae)
        import pyarrow.parquet
    except ImportError:
        _fail("path", "a .csv or .npz table (.parquet needs the pyarrow package, which is "
              "not installed)", f"path={path!r}")
    return pyarrow, pyarrow.parquet


class _ParquetSink:
    """The `.csv`'s flattened columns with their dtypes, a row group per batch."""

    mode = "wb"

    def __init__(self, f, stack):
        self.pa, self.pq = _pyarrow(f.name)  # present: `TableWriter` checked it
        self.f, self.writer = f, None

    def _table(self, columns):
        arrays, names = [], []
        for name, value in columns.items():
            flat = _flat(value)
            names += flat_names(name, value.shape[1:])
            arrays += [self.pa.array(np.ascontiguousarray(flat[:, j]))
                       for j in range(flat.shape[1])]
        return self.pa.Table.from_arrays(arrays, names=names)

    def start(self, layout):
        empty = {name: np.zeros((0, *shape), dtype) for name, (dtype, shape) in layout.items()}
        self.writer = self.pq.ParquetWriter(self.f, self._table(empty).schema)

    def write(self, columns):
        self.writer.write_table(self._table(columns))

    def finish(self, rows):
        if self.writer is not None:
            self.writer.close()


_SINKS = {".csv": _CsvSink, ".npz": _NpzSink, ".parquet": _ParquetSink}


class TableWriter:
    """A per-example table written batch by batch, whole or not at all.

    Use it as a context manager::

        with tables.TableWriter("scores.csv") as table:
            for part in evaluation.iter_scores(model, dataset):
                table.write(part)

    The first batch fixes the columns: their names and order, dtypes and the
    shape of a row; every later batch must have the same. On a clean exit the
    table replaces `path` (atomically); on an exception nothing is left.

    Args:
      path: the table's file: `.csv`, `.npz` or (with pyarrow) `.parquet`.

    Attributes:
      rows: the number of rows written so far.
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        extension = os.path.splitext(self.path)[1].lower()
        if extension not in _SINKS:
            _fail("path", "a file ending in .csv, .npz or .parquet", f"path={self.path!r}")
        if extension == ".parquet":
            _pyarrow(self.path)
        self._sink_class = _SINKS[extension]
        self._stack = self._sink = self._layout = None
        self.rows = 0

    def __enter__(self):
        if self._stack is not None:
            raise ValueError(f"The TableWriter for {self.path!r} is already open: a writer "
                             "writes one table.")
        stack = contextlib.ExitStack()
        f = stack.enter_context(files.atomic_open(self.path, self._sink_class.mode))
        self._stack, self._sink = stack, self._sink_class(f, stack)
        return self

    def write(self, columns):
        """Appends one batch: `columns` is `{name: array [b] or [b, ...]}`, b rows each.

        Raises:
          ValueError: for a batch that is not such a dict of numeric arrays,
            or whose columns differ from the first batch's.
        """
        if self._sink is None:
            raise ValueError(f"The TableWriter for {self.path!r} is not open: write inside "
                             "its `with` block.")
        columns = self._check(columns)
        if self._layout is None:
            self._layout = {name: (value.dtype, value.shape[1:]) for name, value in columns.items()}
            self._sink.start(self._layout)
        else:
            self._check_layout(columns)
        self._sink.write({name: columns[name] for name in self._layout})
        self.rows += len(next(iter(columns.values())))

    @staticmethod
    def _check(columns):
        if not isinstance(columns, Mapping) or not columns:
            _fail("columns", "a non-empty dict of arrays {name: [batch, ...]}",
                  f"columns of type {type(columns).__name__}")
        arrays = {str(name): np.asarray(value) for name, value in columns.items()}
        lengths = {name: len(value) if value.ndim else None for name, value in arrays.items()}
        if None in lengths.values() or len(set(lengths.values())) != 1:
            _fail("columns", "arrays with the same number of rows",
                  "columns with rows " + ", ".join(f"{n}: {r}" for n, r in lengths.items()))
        for name, value in arrays.items():
            if value.dtype.kind not in _KINDS:
                _fail("columns", "numeric columns (bool, integer or float)",
                      f"column {name!r} with dtype {value.dtype}")
        return arrays

    def _check_layout(self, columns):
        layout = {name: (value.dtype, value.shape[1:]) for name, value in columns.items()}
        if layout != self._layout:
            def show(layout_):
                return ", ".join(f"{n}: {d}{tuple(s)}" for n, (d, s) in layout_.items())
            _fail("columns", f"the first batch's columns ({show(self._layout)})",
                  f"columns ({show(layout)})")

    def __exit__(self, exc_type, exc, traceback):
        if self._stack is None:
            return False
        stack, self._stack = self._stack, None
        if exc_type is None:
            try:
                self._sink.finish(self.rows)
            except BaseException as error:
                stack.__exit__(type(error), error, error.__traceback__)  # removes the file
                raise
            stack.close()  # commits: the table replaces `path`
            logger.info("wrote %s (%d rows)", self.path, self.rows)
        else:
            stack.__exit__(exc_type, exc, traceback)
        self._sink = None
        return False


def write_table(path, parts):
    """Writes an iterable of column dicts (one per batch) to the table `path`.

    Args:
      path: a `.csv`, `.npz` or (with pyarrow) `.parquet` file (see `TableWriter`).
      parts: dicts `{name: array [b, ...]}`, e.g. `evaluation.iter_scores(...)`.

    Returns:
      The number of rows written.
    """
    with TableWriter(path) as table:
        for part in parts:
            table.write(part)
    return table.rows
