"""tfvae.tables: per-example tables written batch by batch, whole or not at all."""

import csv
import os
import zipfile

import numpy as np
import pytest

from tfvae import tables

from helpers import invalid, raises


def _parts(sizes=(4, 0, 3, 5), seed=0):
    """Batches of columns as `evaluation.iter_scores` / `iter_encodings` yield them."""
    rng = np.random.default_rng(seed)
    parts, start = [], 0
    for size in sizes:
        parts.append({
            "index": np.arange(start, start + size),
            "label": rng.integers(0, 10, size).astype("int32"),
            "elbo": rng.normal(size=size) * 1e3,
            "code": rng.normal(size=(size, 2)).astype("float32"),
            "scale": rng.uniform(size=(size, 2, 3)),
            "valid": rng.uniform(size=size) > 0.5,
        })
        start += size
    return parts


def _whole(parts):
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}


def _expected_csv(columns):
    """The CSV text, built independently: a flattened header, ints as ints, floats by repr."""
    names, cells = [], []
    for name, array in columns.items():
        if array.ndim == 1:
            names.append(name)
        else:
            names += [name + "".join(f"_{i}" for i in index)
                      for index in np.ndindex(*array.shape[1:])]
        integer = array.dtype.kind in "iu"
        for row in array.reshape(len(array), -1).T:
            cells.append([str(int(v)) if integer else repr(float(np.float64(v))) for v in row])
    rows = zip(*cells)
    return ",".join(names) + "\n" + "".join(",".join(row) + "\n" for row in rows)


def test_csv_is_written_batch_by_batch_and_reads_back(tmp_path):
    parts, path = _parts(), tmp_path / "scores.csv"
    assert tables.write_table(path, parts) == 12
    whole = _whole(parts)
    assert path.read_text() == _expected_csv(whole)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["index", "label", "elbo", "code_0", "code_1", *(
        f"scale_{i}_{j}" for i in range(2) for j in range(3)), "valid"]
    np.testing.assert_array_equal([int(r["index"]) for r in rows], np.arange(12))
    np.testing.assert_array_equal([int(r["label"]) for r in rows], whole["label"])
    np.testing.assert_array_equal([float(r["elbo"]) for r in rows], whole["elbo"])  # exact
    np.testing.assert_array_equal([float(r["code_1"]) for r in rows], whole["code"][:, 1])
    np.testing.assert_array_equal([float(r["scale_1_2"]) for r in rows], whole["scale"][:, 1, 2])
    assert {r["valid"] for r in rows} <= {"0.0", "1.0"}  # booleans are not integers (as numpy)
    assert sorted(os.listdir(tmp_path)) == ["scores.csv"]


def test_npz_is_streamed_and_np_load_reads_the_concatenation(tmp_path):
    parts, path = _parts(), tmp_path / "codes.npz"
    with tables.TableWriter(path) as table:
        for part in parts:
            table.write(part)
            assert not path.exists()  # committed only at the end
    assert table.rows == 12
    whole = _whole(parts)
    with np.load(path) as loaded:
        assert list(loaded) == list(whole)
        for key, value in whole.items():
            assert loaded[key].dtype == value.dtype and loaded[key].shape == value.shape
            np.testing.assert_array_equal(loaded[key], value)
    with zipfile.ZipFile(path) as archive:
        assert archive.namelist() == [key + ".npy" for key in whole]
    assert sorted(os.listdir(tmp_path)) == ["codes.npz"]  # the raw column files are gone


@pytest.mark.parametrize("name", ["t.csv", "t.npz"])
def test_a_failure_mid_write_leaves_nothing_and_keeps_an_older_table(tmp_path, name):
    path = tmp_path / name
    parts = _parts()
    with pytest.raises(RuntimeError, match="interrupted"):
        with tables.TableWriter(path) as table:
            table.write(parts[0])
            assert len(os.listdir(tmp_path)) == 1  # the hidden temporary table only
            raise RuntimeError("interrupted")
    assert os.listdir(tmp_path) == []
    path.write_bytes(b"the old table")
    with pytest.raises(ValueError, match="`columns`"):
        tables.write_table(path, [parts[0], {"index": np.arange(2)}])  # columns changed
    assert path.read_bytes() == b"the old table" and os.listdir(tmp_path) == [name]


def test_a_failure_while_assembling_the_npz_leaves_nothing(tmp_path, monkeypatch):
    path = tmp_path / "t.npz"
    path.write_bytes(b"old")

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tables.shutil, "copyfileobj", broken)
    with pytest.raises(OSError, match="No space left"):
        tables.write_table(path, _parts())
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["t.npz"]


def test_empty_batches_and_no_batches(tmp_path):
    empty = {"index": np.zeros(0, "int64"), "x": np.zeros((0, 2))}
    tables.write_table(tmp_path / "a.csv", [empty])
    assert (tmp_path / "a.csv").read_text() == "index,x_0,x_1\n"
    tables.write_table(tmp_path / "a.npz", [empty])
    with np.load(tmp_path / "a.npz") as loaded:
        assert loaded["x"].shape == (0, 2) and loaded["index"].dtype == np.int64
    assert tables.write_table(tmp_path / "b.csv", []) == 0
    assert (tmp_path / "b.csv").read_text() == ""


@pytest.mark.parametrize("columns, fragments", [
    ([1, 2], ["`columns`", "dict of arrays", "columns of type list"]),
    ({}, ["`columns`", "non-empty"]),
    ({"a": np.zeros(3), "b": np.zeros(2)}, ["`columns`", "same number of rows", "a: 3, b: 2"]),
    ({"a": np.float64(1.0)}, ["`columns`", "same number of rows", "a: None"]),
    ({"a": np.array(["x", "y"])}, ["`columns`", "numeric", "'a' with dtype <U1"]),
])
def test_bad_batches_are_refused(tmp_path, columns, fragments):
    with raises(*fragments):
        with tables.TableWriter(tmp_path / "t.csv") as table:
            table.write(columns)
    assert os.listdir(tmp_path) == []


def test_later_batches_must_match_the_first(tmp_path):
    first = {"a": np.zeros(2), "b": np.zeros((2, 3), "int64")}
    for later, shown in (({"a": np.zeros(2, "float32"), "b": first["b"]}, "a: float32"),
                         ({"a": np.zeros(2), "b": np.zeros((2, 4), "int64")}, "b: int64(4,)")):
        with raises("`columns`", "a: float64(), b: int64(3,)", shown):
            tables.write_table(tmp_path / "t.npz", [first, later])
    assert os.listdir(tmp_path) == []


def test_bad_paths_and_misuse_are_refused(tmp_path):
    with invalid("path", str(tmp_path / "t.json"), ".csv, .npz or .parquet"):
        tables.TableWriter(tmp_path / "t.json")
    writer = tables.TableWriter(tmp_path / "t.csv")
    with raises("not open"):
        writer.write({"a": np.zeros(1)})


def test_parquet_has_the_csv_s_columns_with_their_dtypes(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    parts, path = _parts(), tmp_path / "t.parquet"
    tables.write_table(path, parts)
    table, whole = pq.read_table(path), _whole(parts)
    assert table.column_names[:4] == ["index", "label", "elbo", "code_0"]
    np.testing.assert_array_equal(table["label"].to_numpy(), whole["label"])
    assert table["label"].type == "int32"
    np.testing.assert_array_equal(table["scale_1_2"].to_numpy(), whole["scale"][:, 1, 2])
    assert sorted(os.listdir(tmp_path)) == ["t.parquet"]


def test_parquet_without_pyarrow_is_a_one_line_error(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_pyarrow(name, *args, **kwargs):
        if name.startswith("pyarrow"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    with invalid("path", str(tmp_path / "t.parquet"), "needs the pyarrow package"):
        tables.TableWriter(tmp_path / "t.parquet")


def test_memory_stays_flat_in_the_number_of_rows(tmp_path):
    import tracemalloc

    def parts():
        for i in range(200):  # 200 batches of 88 kB: 17.6 MB of table
            yield {"index": np.arange(i * 1000, (i + 1) * 1000), "x": np.full((1000, 10), i * 0.5)}

    tracemalloc.start()
    try:
        tables.write_table(tmp_path / "t.npz", parts())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4e6  # a few batches and the 1 MB copy buffer (2.2 MB measured), not the table
    with np.load(tmp_path / "t.npz") as loaded:
        np.testing.assert_array_equal(loaded["x"][::1000, 0], np.arange(200) * 0.5)
        np.testing.assert_array_equal(loaded["index"], np.arange(200000))


def test_the_scores_of_a_dataset_written_as_they_come(tmp_path):
    import tensorflow as tf

    import tfvae
    from tfvae import evaluation

    model = tfvae.build_vae((6,), 2, hidden_units=(4,), seed=0)
    x = (np.random.default_rng(0).uniform(size=(10, 6)) > 0.5).astype("float32")
    labels = np.arange(10) % 3
    dataset = tf.data.Dataset.from_tensor_slices((x, labels)).batch(4)
    assert tables.write_table(tmp_path / "s.npz", evaluation.iter_scores(model, dataset)) == 10
    want = evaluation.score_examples(model, x, batch_size=4)
    with np.load(tmp_path / "s.npz") as got:
        assert list(got) == ["index", "label", *want]
        np.testing.assert_array_equal(got["index"], np.arange(10))
        np.testing.assert_array_equal(got["label"], labels)
        for key, value in want.items():
            np.testing.assert_array_equal(got[key], value)
