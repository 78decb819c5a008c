"""tfvae.runs: the run configuration's rules, output directories, labels and datasets.

(End-to-end training runs through the command line are in test_cli.py.)
"""

import json

import numpy as np
import pytest

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


def test_prepare_output_never_clobbers_what_it_does_not_own(tmp_path):
    fresh = tmp_path / "fresh"
    runs.prepare_output(str(fresh))
    assert fresh.is_dir()
    runs.prepare_output(str(fresh))  # empty: fine
    (fresh / "notes.txt").write_text("mine")
    with raises("refusing to overwrite", "--overwrite", "--resume"):
        runs.prepare_output(str(fresh))
    with raises("Refusing to delete", "not a tfvae run directory"):
        runs.prepare_output(str(fresh), overwrite=True)
    with raises("Cannot resume", "holds no run.json"):
        runs.prepare_output(str(fresh), resume=True)
    with raises("Cannot resume", "does not exist or is empty"):
        runs.prepare_output(str(tmp_path / "missing"), resume=True)
    assert (fresh / "notes.txt").read_text() == "mine"
    # A run directory may be resumed, or replaced with --overwrite.
    (fresh / runs.RUN_FILE).write_text(json.dumps({}))
    runs.prepare_output(str(fresh), resume=True)
    assert (fresh / "notes.txt").exists()
    runs.prepare_output(str(fresh), overwrite=True)
    assert fresh.is_dir() and list(fresh.iterdir()) == []


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
