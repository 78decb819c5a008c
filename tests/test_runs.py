"""tfvae.runs: the run configuration's rules, output directories, labels and datasets.

(End-to-end training runs through the command line are in test_cli.py.)
"""

import json
import os

import numpy as np
import pytest

from tfvae import files
from tfvae import runs
from tfvae.runs import RunConfig

from helpers import invalid, raises


def test_the_default_configuration_is_valid():
    config = RunConfig().validate()
    assert config.hidden_units == (256, 128) and config.filters == (32, 64)
    assert RunConfig(hidden_units=[8, 4], filters=[2]).validate().hidden_units == (8, 4)


@pytest.mark.parametrize("kwargs, fragments", [
    ({"objective": "iwae", "warmup_epochs": 5}, ["`objective`", "no KL term", "warmup_epochs=5"]),
    ({"objective": "iwae", "beta": 2.0}, ["`objective`", "no KL term", "beta=2.0"]),
    ({"objective": "iwae", "free_bits": 0.5}, ["`objective`", "no KL term", "free_bits=0.5"]),
    ({"top_latent_dim": 2}, ["`top_latent_dim`", "needs posterior='hierarchical'"]),
    ({"free_bits_groups": 2}, ["`free_bits_groups`", "needs free_bits > 0"]),
    ({"free_bits_groups": 2, "objective": "iwae"},
     ["`free_bits_groups`", "objective='elbo'", "objective='iwae'"]),
    ({"posterior": "hierarchical", "prior": "mixture"}, ["`prior`", "use prior='standard_normal'"]),
    ({"free_bits_groups": 2, "free_bits": 0.5, "posterior": "full"},
     ["`free_bits_groups`", "diagonal Gaussian posterior", "FullCovarianceGaussianPosterior"]),
    ({"free_bits_groups": 2, "free_bits": 0.5, "prior": "vamp"},
     ["`free_bits_groups`", "standard normal prior", "VampPrior"]),
    ({"conditional": True, "prior": "vamp"}, ["`conditional`", "pseudo-inputs carry no labels", "conditional=True"]),
    ({"conditional": "yes"}, ["`conditional`", "True or False", "conditional='yes'"]),
])
def test_options_that_do_not_go_together_are_refused(kwargs, fragments):
    with raises(*fragments):
        RunConfig(**kwargs).validate()


@pytest.mark.parametrize("name, value", [
    ("architecture", "transformer"), ("likelihood", "poisson"), ("posterior", "lowrank"),
    ("prior", "vampire"), ("binarize", "sometimes"), ("strategy", "tpu"),
    ("mixed_precision", "float8"), ("latent_dim", 0), ("epochs", -1), ("k", 2.5),
    ("top_latent_dim", -1), ("free_bits_groups", -2), ("beta", -1.0), ("learning_rate", 0.0),
    ("seed", -1), ("hidden_units", (0,)), ("filters", ()),
])
def test_each_field_is_checked(name, value):
    with invalid(name, value):
        RunConfig(**{name: value}).validate()


def test_good_variant_configurations_pass():
    for kwargs in ({"posterior": "hierarchical", "top_latent_dim": 2, "free_bits": 0.5,
                    "free_bits_groups": 2},
                   {"objective": "iwae", "k": 3, "gradient_estimator": "dreg"},
                   {"conditional": True, "free_bits": 0.2, "free_bits_groups": 2}):
        assert RunConfig(**kwargs).validate() is not None


def test_check_output_never_clobbers_what_it_does_not_own(tmp_path):
    fresh = tmp_path / "fresh"
    runs.check_output(str(fresh))
    fresh.mkdir()
    runs.check_output(str(fresh))  # empty: fine
    (fresh / "notes.txt").write_text("mine")
    with raises("refusing to overwrite", "--overwrite", "--resume"):
        runs.check_output(str(fresh))
    with raises("Refusing to delete", "not a tfvae run directory"):
        runs.check_output(str(fresh), overwrite=True)
    with raises("Cannot resume", "holds no run.json"):
        runs.check_output(str(fresh), resume=True)
    with raises("Cannot resume", "does not exist or is empty"):
        runs.check_output(str(tmp_path / "missing"), resume=True)
    with raises("`output`", "is a file"):
        runs.check_output(str(fresh / "notes.txt"))
    with invalid("output", ""):
        runs.check_output("")
    assert (fresh / "notes.txt").read_text() == "mine"
    (fresh / runs.RUN_FILE).write_text(json.dumps({}))
    runs.check_output(str(fresh), resume=True)
    runs.check_output(str(fresh), overwrite=True)
    assert sorted(os.listdir(fresh)) == ["notes.txt", "run.json"]


def _old_run(directory):
    directory.mkdir()
    (directory / runs.RUN_FILE).write_text("{}")
    (directory / "model.keras").write_bytes(b"weights")
    return {name: (directory / name).read_bytes() for name in os.listdir(directory)}


def test_overwrite_moves_the_old_run_aside_and_puts_it_back_on_abort(tmp_path):
    run = tmp_path / "run"
    before = _old_run(run)
    output = runs.RunOutput(str(run), overwrite=True).begin()
    assert sorted(os.listdir(tmp_path)) == [f".run.old-{os.getpid()}", "run"]
    assert os.listdir(run) == [files.LOCK_FILE]  # the new run, locked
    (run / "run.json").write_text('{"epochs": 1}')
    output.abort()
    output.close()
    assert os.listdir(tmp_path) == ["run"]
    assert {name: (run / name).read_bytes() for name in os.listdir(run)} == before


def test_a_failure_while_moving_the_old_run_aside_puts_it_back(tmp_path, monkeypatch):
    run = tmp_path / "run"
    before = _old_run(run)

    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "makedirs", no_space)  # after the rename, before the new run
    with pytest.raises(OSError, match="No space left"):
        runs.RunOutput(str(run), overwrite=True).begin()
    assert os.listdir(tmp_path) == ["run"]
    assert {name: (run / name).read_bytes() for name in os.listdir(run)} == before  # no lock


def test_overwrite_deletes_the_old_run_once_the_new_one_has_a_checkpoint(tmp_path):
    run = tmp_path / "run"
    _old_run(run)
    output = runs.RunOutput(str(run), overwrite=True).begin()
    (run / "last.keras").write_bytes(b"new")
    output.commit()
    output.abort()  # after the first checkpoint, a failure keeps the new run
    output.close()
    assert os.listdir(tmp_path) == ["run"]
    assert sorted(os.listdir(run)) == ["last.keras"]


def test_a_failed_new_run_leaves_nothing_behind(tmp_path):
    for existed in (False, True):
        run = tmp_path / f"run{existed}"
        if existed:
            run.mkdir()
        output = runs.RunOutput(str(run)).begin()
        (run / "run.json").write_text("{}")
        output.abort()
        output.close()
        assert run.exists() is existed and (not existed or os.listdir(run) == [])
        runs.check_output(str(run))  # a retry is not refused


def test_resume_never_removes_anything(tmp_path):
    run = tmp_path / "run"
    before = _old_run(run)
    (run / ".history.csv.0123abcd.tmp").write_text("half")  # left by a killed write
    output = runs.RunOutput(str(run), resume=True).begin()
    output.abort()
    output.close()
    assert {name: (run / name).read_bytes() for name in os.listdir(run)} == before


def test_condition_dim_is_the_number_of_classes():
    conditional = RunConfig(conditional=True)
    assert runs.condition_dim(RunConfig(), None) is None
    assert runs.condition_dim(conditional, np.array([0, 3, 1]), np.array([5, 0])) == 6
    with raises("`conditional`", "integer class labels", "'digits'"):
        runs.condition_dim(conditional, None)
    with raises("`conditional`", "integer class labels"):
        runs.condition_dim(conditional, np.array([0.5, 1.0]))
    with raises("`conditional`", "non-negative class indices"):
        runs.condition_dim(conditional, np.array([0, 1]), np.array([-1]))


def test_is_chief_reads_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert runs.is_chief()
    cluster = {"worker": ["a:1", "b:2"]}
    for index, chief in ((0, True), (1, False)):
        monkeypatch.setenv("TF_CONFIG", json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": index}}))
        assert runs.is_chief() is chief
    monkeypatch.setenv("TF_CONFIG", json.dumps(
        {"cluster": {"chief": ["c:0"], **cluster}, "task": {"type": "worker", "index": 0}}))
    assert not runs.is_chief()


def test_load_dataset_prepares_the_data_for_the_likelihood():
    (x_train, y_train), (x_val, y_val) = runs.load_dataset(RunConfig(binarize="static"))
    assert x_train.shape == (1438, 8, 8, 1) and x_val.shape == (359, 8, 8, 1)
    assert set(np.unique(x_train)) <= {0.0, 1.0} and set(np.unique(x_val)) <= {0.0, 1.0}
    assert y_train.shape == (1438,)
    # Dynamic binarisation keeps the training data grey (the pipeline draws) and
    # fixes one draw of the validation data.
    (grey, _), (val, _) = runs.load_dataset(RunConfig(binarize="dynamic"))
    assert len(np.unique(grey)) > 2 and set(np.unique(val)) <= {0.0, 1.0}
    (levels, _), _ = runs.load_dataset(RunConfig(likelihood="categorical"))
    np.testing.assert_array_equal(levels, np.round(levels))
    assert levels.max() == 255.0


def test_load_run_refuses_directories_without_a_run(tmp_path):
    with raises("not a tfvae run directory", "no run.json"):
        runs.load_run(str(tmp_path))
    (tmp_path / runs.RUN_FILE).write_text(json.dumps({"epochs": 1}))
    with raises("holds no trained model", "no model.keras"):
        runs.load_run(str(tmp_path))


@pytest.mark.parametrize("text, fragments", [
    ("not json", ["is not valid JSON"]),
    ("[1, 2]", ["should hold a JSON object", "list"]),
    ('{"epochs": 2, "colour": "red"}', ["unknown settings", "colour"]),
    ('{"latent_dim": "8"}', ["`latent_dim`", "latent_dim='8'"]),
    ('{"dataset": 5}', ["`dataset`", "dataset=5"]),
    ('{"hidden_units": "wide"}', ["`hidden_units`"]),
    ('{"jit_compile": "yes"}', ["`jit_compile`"]),
])
def test_a_bad_run_json_is_one_line_naming_the_file(tmp_path, text, fragments):
    path = tmp_path / runs.RUN_FILE
    path.write_text(text)
    with raises(str(path), *fragments) as error:
        runs.load_run(str(tmp_path))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("content", [b"", b"junk", b"PK\x03\x04 truncated zip"])
def test_a_junk_model_file_is_not_loadable_rather_than_missing(tmp_path, content):
    (tmp_path / runs.RUN_FILE).write_text("{}")
    (tmp_path / "model.keras").write_bytes(content)
    with raises("model.keras", "is not a loadable Keras model") as error:
        runs.load_run(str(tmp_path))
    assert "File not found" not in str(error.value)


@pytest.mark.parametrize("value", ["{not json", "[]", '{"task": "worker"}',
                                   '{"task": {"type": "worker", "index": "one"}}'])
def test_a_malformed_tf_config_is_named(monkeypatch, value):
    monkeypatch.setenv("TF_CONFIG", value)
    with raises("TF_CONFIG"):
        runs.is_chief()
    with raises("TF_CONFIG"):
        runs.make_strategy("multiworker")


def test_too_many_classes_are_refused_before_a_huge_one_hot():
    with raises("`conditional`", "largest label is 999999999", "class indices"):
        runs.condition_dim(RunConfig(conditional=True), np.array([0, 1, 999_999_999]))


def test_a_symlinked_output_a_seed_beyond_32_bits_and_dynamic_binarisation_are_named(
        tmp_path):
    # Issue 20 findings 15 and 16: --overwrite renamed a symlinked --output; a large seed
    # failed inside NumPy; binarize='static' was reported when 'dynamic' was passed.
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "link")
    with raises("`output`", "symbolic link", str(tmp_path / "real")):
        runs.check_output(str(tmp_path / "link"), overwrite=True)
    with invalid("seed", 2**32):
        RunConfig(seed=2**32).validate()
    np.save(tmp_path / "wide.npy", np.linspace(-2, 2, 40, dtype="float32").reshape(20, 2))
    with invalid("binarize", "dynamic", "[0, 1]"):
        runs.load_dataset(RunConfig(dataset=str(tmp_path / "wide.npy"), binarize="dynamic"))


@pytest.mark.slow
def test_a_run_json_that_does_not_describe_the_model_is_refused(digits_run, tmp_path):
    # 0.2.0 accepted edited run.json values silently (issue 20 finding 14).
    import json
    import shutil

    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    original = json.loads((run / "run.json").read_text())
    for edit, fragment in (({"latent_dim": 3}, "latent_dim=3"),
                           ({"likelihood": "gaussian_shared"}, "likelihood"),
                           ({"conditional": True}, "conditional=True")):
        (run / "run.json").write_text(json.dumps({**original, **edit}))
        with raises("run.json does not describe model.keras", fragment):
            runs.load_run(str(run))
    runs.load_run(digits_run)  # the original matches


def test_a_failed_resume_leaves_run_json_as_it_was(tmp_path):
    # 0.2.0 recorded the new --epochs before the resume had loaded anything (issue 20
    # finding 15).
    import dataclasses
    import json

    run = tmp_path / "run"
    run.mkdir()
    config = RunConfig(epochs=2, latent_dim=2, hidden_units=(8,)).validate()
    (run / "run.json").write_text(json.dumps(dataclasses.asdict(config)))
    for name in ("last.keras", "model.keras"):
        (run / name).write_bytes(b"not a zip archive")
    before = (run / "run.json").read_bytes()
    with raises("no checkpoint loads"):
        runs.train(config, str(run), resume=True, epochs=9, verbose=0)
    assert (run / "run.json").read_bytes() == before


# ---------------------------------------------------------------------------
# The learning-rate schedule (`--lr-schedule`): new runs decay, old runs keep their rate.

GOLDEN_RUN = os.path.join(os.path.dirname(__file__), "data", "golden_run")


def _cosine(lr0, total, t):
    """The cosine decay to 0.1 · lr0 over `total` steps, written out (numpy)."""
    return lr0 * (0.1 + 0.9 * 0.5 * (1.0 + np.cos(np.pi * np.minimum(t, total) / total)))


def test_new_runs_decay_and_a_run_json_without_a_schedule_reads_as_constant(tmp_path):
    assert RunConfig().lr_schedule == "cosine"
    golden = json.load(open(os.path.join(GOLDEN_RUN, "run.json")))
    assert "lr_schedule" not in golden  # written by 0.1.0, which trained at a constant rate
    assert runs.read_config(os.path.join(GOLDEN_RUN, "run.json")).lr_schedule == "constant"
    # A run.json that names its schedule keeps it.
    (tmp_path / "run.json").write_text(json.dumps({**golden, "lr_schedule": "cosine"}))
    assert runs.read_config(str(tmp_path / "run.json")).lr_schedule == "cosine"
    (tmp_path / "run.json").write_text(json.dumps({**golden, "lr_schedule": "step"}))
    with raises("`lr_schedule`", "lr_schedule='step'", "'constant', 'cosine'"):
        runs.read_config(str(tmp_path / "run.json"))
    with invalid("lr_schedule", "Cosine"):
        RunConfig(lr_schedule="Cosine").validate()


def test_a_runs_learning_rate_decays_over_its_epochs_and_an_old_run_keeps_its_constant():
    config = RunConfig(epochs=3, batch_size=128, learning_rate=4e-3)
    assert runs.steps_per_epoch(config, 1437) == 12 and runs.steps_per_epoch(config, 1536) == 12
    schedule = runs.learning_rate_of(config, 1437)  # 3 epochs of 12 steps
    steps = np.array([0, 18, 36, 50])
    np.testing.assert_allclose([float(schedule(int(t))) for t in steps],
                               _cosine(4e-3, 36, steps), rtol=1e-6)
    old = runs.read_config(os.path.join(GOLDEN_RUN, "run.json"))
    assert runs.learning_rate_of(old) == 0.002  # a constant, as 0.1.0 trained it
