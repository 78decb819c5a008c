"""tfvae.tabular: reading tables, typing their columns, coding rows, bad input."""

import json
import logging

import numpy as np
import pytest

from tfvae import tabular

from helpers import raises


def _write_csv(path, header, rows):
    path.write_text(",".join(header) + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def mixed_csv(tmp_path):
    rows = [[1.5, "yes", "red", 10, 0], [2.5, "no", "green", 20, 1], [-0.5, "yes", "blue", 10, 0],
            [4.0, "no", "red", 30, 0]]
    return _write_csv(tmp_path / "t.csv", ["amount", "member", "colour", "visits", "label"], rows)


def test_a_csv_is_typed_and_coded_column_by_column(mixed_csv):
    x, labels, schema = tabular.load_table(mixed_csv, labels="label")
    assert [(c.name, c.kind) for c in schema.features] == [
        ("amount", "continuous"), ("member", "binary"), ("colour", "categorical"),
        ("visits", "continuous")]
    assert schema.features[1].vocabulary == ("no", "yes")
    assert schema.features[2].vocabulary == ("blue", "green", "red")
    expected = np.array([[1.5, 1, 2, 10], [2.5, 0, 1, 20], [-0.5, 1, 0, 10], [4.0, 0, 2, 30]])
    np.testing.assert_array_equal(x, expected.astype(np.float32))
    np.testing.assert_array_equal(labels, [0, 1, 0, 0])
    assert "label" not in schema.names


def test_a_schema_survives_its_config_and_codes_new_rows_the_same_way(mixed_csv):
    columns, _ = tabular.read_table(mixed_csv)
    schema = tabular.infer_schema(columns, labels="label")
    again = tabular.Schema.from_config(json.loads(json.dumps(schema.to_config())))
    assert again == schema
    np.testing.assert_array_equal(again.encode(columns), schema.encode(columns))


def test_a_schema_file_overrides_inferred_kinds(mixed_csv, tmp_path):
    path = tmp_path / "schema.json"
    path.write_text(json.dumps({"labels": "label",
                                "columns": {"visits": "categorical", "amount": "ignore"}}))
    x, _, schema = tabular.load_table(mixed_csv, overrides=tabular.read_overrides(str(path)))
    assert schema.names == ["member", "colour", "visits"]
    assert schema.features[2].vocabulary == (10.0, 20.0, 30.0)
    np.testing.assert_array_equal(x[:, 2], [0, 1, 0, 2])


def test_an_unseen_category_gets_the_unknown_code_and_a_warning(mixed_csv, tmp_path, caplog):
    _, _, schema = tabular.load_table(mixed_csv, labels="label")
    other = _write_csv(tmp_path / "new.csv", ["amount", "member", "colour", "visits"],
                       [[1.0, "yes", "purple", 10], [1.0, "no", "red", 10]])
    with caplog.at_level(logging.WARNING, logger="tfvae.tabular"):
        x, labels, _ = tabular.load_table(other, schema=schema)
    assert x[:, 2].tolist() == [3, 2]  # K = 3 known colours: code 3 is "unknown"
    assert labels is None
    assert "colour" in caplog.text and "purple" in caplog.text


def test_npz_tables_read_X_and_y(tmp_path):
    rng = np.random.default_rng(0)
    X = np.c_[rng.normal(size=20), rng.integers(0, 2, 20)]
    path = tmp_path / "d.npz"
    np.savez(path, X=X, y=np.arange(20) % 2)
    assert tabular.is_table(str(path))
    x, labels, schema = tabular.load_table(str(path))
    assert schema.names == ["x_0", "x_1"] and [c.kind for c in schema.features] == [
        "continuous", "binary"]
    np.testing.assert_allclose(x, X.astype(np.float32))
    np.testing.assert_array_equal(labels, np.arange(20) % 2)


def test_parquet_tables_read_like_csv(mixed_csv, tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    columns, _ = tabular.read_table(mixed_csv)
    table = pa.table({name: list(values) for name, values in columns.items()})
    path = str(tmp_path / "t.parquet")
    pq.write_table(table, path)
    x, labels, schema = tabular.load_table(path, labels="label")
    reference, reference_labels, reference_schema = tabular.load_table(mixed_csv, labels="label")
    assert schema == reference_schema
    np.testing.assert_array_equal(x, reference)
    np.testing.assert_array_equal(labels, reference_labels)


@pytest.mark.parametrize("header, rows, labels, fragments", [
    (["a", "b"], [[1, 2], ["", 3], [2, 4]], None, ["'a'", "missing value in row 1"]),
    (["a", "b"], [[1, 2], [2, "NA"], [2, 4]], None, ["'b'", "missing"]),
    (["a", "b"], [[1, 2], ["abc", 3], [2, 4]], None, ["'a'", "'abc'", "row 1"]),
    (["a", "b"], [[1, 5], [2, 5], [3, 5]], None, ["'b'", "constant"]),
    (["a", "label"], [[1, 0], [2, 1], [3, 0]], None, ["'label'", "labels"]),
    (["a", "target"], [[1, 0], [2, 1], [3, 0]], "missing_col", ["'missing_col'", "not in"]),
])
def test_bad_tables_name_the_column(tmp_path, header, rows, labels, fragments):
    path = _write_csv(tmp_path / "bad.csv", header, rows)
    with raises(*fragments):
        tabular.load_table(path, labels=labels)


def test_a_labels_column_cannot_also_be_a_feature():
    with raises("'y'", "labels column"):
        tabular.Schema([tabular.Column("a", "continuous"), tabular.Column("y", "binary", (0, 1))],
                       labels="y")


def test_scoring_rows_are_checked_against_the_schema(mixed_csv, tmp_path):
    _, _, schema = tabular.load_table(mixed_csv, labels="label")
    text = _write_csv(tmp_path / "s.csv", ["amount", "member", "colour", "visits"],
                      [["lots", "yes", "red", 10]])
    with raises("'amount'", "'lots'", "continuous"):
        tabular.load_table(text, schema=schema)
    binary = _write_csv(tmp_path / "b.csv", ["amount", "member", "colour", "visits"],
                        [[1, "maybe", "red", 10]])
    with raises("'member'", "'maybe'", "binary"):
        tabular.load_table(binary, schema=schema)
    short = _write_csv(tmp_path / "c.csv", ["amount", "member", "visits"], [[1, "yes", 10]])
    with raises("'colour'", "no such column"):
        tabular.load_table(short, schema=schema)


def test_constant_columns_can_be_ignored_instead(tmp_path):
    columns = tabular.array_columns(np.c_[np.arange(4.0), np.ones(4)])
    schema = tabular.infer_schema(columns, constant="ignore")
    assert schema.names == ["x_0"] and schema.columns[1].kind == "ignore"
    path = tmp_path / "schema.json"
    path.write_text(json.dumps({"constant": "ignore"}))
    assert tabular.infer_schema(columns, overrides=tabular.read_overrides(str(path))) == schema
    path.write_text(json.dumps({"constant": "drop"}))
    with raises("`schema`", "'drop'"):
        tabular.read_overrides(str(path))


def test_bad_files_are_refused(tmp_path):
    with raises("`dataset`", ".csv, .parquet or .npz"):
        tabular.read_table(str(tmp_path / "t.txt"))
    with raises("`dataset`", "no such file"):
        tabular.read_table(str(tmp_path / "none.csv"))
    ragged = tmp_path / "r.csv"
    ragged.write_text("a,b\n1,2\n3\n")
    with raises("`dataset`", "row 2"):
        tabular.read_table(str(ragged))
    np.savez(tmp_path / "z.npz", images=np.zeros((2, 3)))
    with raises("`dataset`", "'X'"):
        tabular.read_table(str(tmp_path / "z.npz"))


def test_decode_is_the_inverse_of_encode_and_refuses_the_unknown_code(mixed_csv):
    columns, _ = tabular.read_table(mixed_csv)
    schema = tabular.infer_schema(columns, labels="label")
    decoded = schema.decode(schema.encode(columns))
    assert list(decoded) == schema.names
    for name in schema.names:  # the raw values back, text as text
        if decoded[name].dtype == object:
            assert list(decoded[name]) == list(columns[name])
        else:
            np.testing.assert_array_equal(decoded[name], columns[name])
    assert decoded["member"].dtype == object and decoded["amount"].dtype == np.float64
    assert schema.text_columns == ["member", "colour"]
    unknown = schema.encode(columns)
    unknown[1, 2] = 3  # colour's unknown slot: no value to decode to
    with raises("'colour'", "row 1", "unknown"):
        schema.decode(unknown)
    with raises("`rows`", "(4, 3)"):
        schema.decode(unknown[:, :3])


@pytest.mark.parametrize("extension", [".csv", ".parquet"])
def test_save_table_writes_what_read_table_reads_back(mixed_csv, tmp_path, extension):
    if extension == ".parquet":
        pytest.importorskip("pyarrow")
    columns, _ = tabular.read_table(mixed_csv)
    columns["amount"] = np.array([1.5, 2.5, -0.1 + 0.2, 4.0])  # a float with no short form
    path = tmp_path / f"again{extension}"
    assert tabular.save_table(path, columns) == 4
    again, _ = tabular.read_table(path)
    assert list(again) == list(columns)
    np.testing.assert_array_equal(again["amount"], columns["amount"])  # float64 exactly
    assert list(again["colour"]) == list(columns["colour"])
    np.testing.assert_array_equal(again["visits"], columns["visits"])


def test_save_table_npz_holds_numbers_only(tmp_path):
    columns = {"a": np.array([1.0, 2.5]), "b": np.array([0.0, 1.0])}
    tabular.save_table(tmp_path / "t.npz", columns)
    again, labels = tabular.read_table(tmp_path / "t.npz")
    np.testing.assert_array_equal(np.c_[again["x_0"], again["x_1"]], [[1.0, 0.0], [2.5, 1.0]])
    assert labels is None
    with raises("`path`", "['b']", ".csv"):
        tabular.save_table(tmp_path / "u.npz", {"a": columns["a"], "b": np.array(["x", "y"],
                                                                                   dtype=object)})
    assert not (tmp_path / "u.npz").exists()
    with raises("`path`", ".csv, .parquet or .npz"):
        tabular.save_table(tmp_path / "t.txt", columns)
