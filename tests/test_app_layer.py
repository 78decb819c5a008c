"""The application layer (issue 10): one home for option rules, registries behind the
command's choices, and library calls without process-global side effects."""

import argparse
import dataclasses
import os
import random
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfvae
from tfvae import builders
from tfvae import cli
from tfvae import data
from tfvae import evaluation
from tfvae import runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python(code):
    """Runs `code` in a fresh interpreter that imports this checkout's tfvae; returns stdout."""
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("MPLBACKEND", None)
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                            text=True, timeout=300, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


# ---------------------------------------------------------------------------
# `import tfvae` loads the library only.


@pytest.mark.slow
def test_import_tfvae_loads_neither_matplotlib_nor_the_command_layer():
    out = _python("""
        import sys
        import keras  # Keras itself imports matplotlib when it is installed
        before = {name for name in sys.modules if name.split(".")[0] == "matplotlib"}
        import numpy as np
        import tfvae
        import matplotlib
        added = {name for name in sys.modules if name.split(".")[0] == "matplotlib"} - before
        assert not added, sorted(added)
        assert matplotlib.rcParams._get_backend_or_none() is None  # no backend chosen
        for name in ("tfvae.runs", "tfvae.report", "tfvae.cli"):
            assert name not in sys.modules, name
        assert "object" not in vars(np)
        from tfvae import runs  # still a submodule import
        assert tfvae.runs is runs and "tfvae.report" in sys.modules
        print("ok")
    """)
    assert out.strip().endswith("ok")


@pytest.mark.slow
def test_import_tfvae_needs_no_matplotlib():
    out = _python("""
        import sys
        sys.modules["matplotlib"] = None  # as if it were not installed
        import tfvae
        model = tfvae.build_vae((4,), 2, hidden_units=(4,), seed=0)
        print("ok", model.latent_dim)
    """)
    assert out.strip().endswith("ok 2")


@pytest.mark.slow
def test_the_runs_attribute_loads_lazily():
    out = _python("""
        import sys
        import tfvae
        assert "tfvae.runs" not in sys.modules
        assert tfvae.runs.RunConfig().latent_dim == 8
        assert "tfvae.runs" in sys.modules
        try:
            tfvae.no_such_thing
        except AttributeError as error:
            assert "no_such_thing" in str(error)
        print("ok")
    """)
    assert out.strip().endswith("ok")


def test_every_module_declares_its_public_names():
    """`__all__` per module (issue 22): what it lists exists, and the internals that
    other modules or tests reach for (`export.graph_functions`,
    `objectives.global_batch`) are not in it."""
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(tfvae.__path__):
        module = importlib.import_module(f"tfvae.{info.name}")
        declared = getattr(module, "__all__", None)
        assert declared is not None, info.name
        assert [name for name in declared if not hasattr(module, name)] == [], info.name
        assert len(set(declared)) == len(declared), info.name
    assert "graph_functions" not in tfvae.export.__all__
    assert "global_batch" not in tfvae.objectives.__all__
    assert tfvae.model.__all__ == ["VAE"]


@pytest.mark.slow
def test_figures_choose_no_backend_and_leave_no_pyplot_figures(tmp_path):
    out = _python(f"""
        import matplotlib
        import numpy as np
        from matplotlib import _pylab_helpers
        from tfvae import report
        images = np.random.default_rng(0).uniform(size=(4, 8, 8, 1))
        report.plot_grid(images, {str(tmp_path / "grid.png")!r}, "grid")
        report.plot_curves({{"loss": [2.0, 1.0], "elbo": [-2.0, -1.0]}},
                           {str(tmp_path / "curves.png")!r})
        assert matplotlib.rcParams._get_backend_or_none() is None
        assert _pylab_helpers.Gcf.get_num_fig_managers() == 0
        print("ok")
    """)
    assert out.strip().endswith("ok")
    for name in ("grid.png", "curves.png"):
        assert (tmp_path / name).stat().st_size > 0


# ---------------------------------------------------------------------------
# ONNX export lends NumPy its removed `np.object` alias only while converting.


def test_export_onnx_leaves_numpy_without_np_object(tmp_path):
    assert "object" not in vars(np)
    model = tfvae.build_vae((4,), 2, hidden_units=(4,), seed=0)
    written = tfvae.export.export_onnx(model, str(tmp_path / "onnx"), graphs=["decode"])
    assert os.path.getsize(written["decode"]) > 0
    assert "object" not in vars(np)


def test_the_np_object_alias_is_kept_when_numpy_had_it():
    assert "object" not in vars(np)
    with tfvae.export._numpy_object_alias():
        assert vars(np)["object"] is object
    assert "object" not in vars(np)
    sentinel = object()
    np.object = sentinel
    try:
        with tfvae.export._numpy_object_alias():
            assert vars(np)["object"] is sentinel
        assert vars(np)["object"] is sentinel
    finally:
        vars(np).pop("object", None)


# ---------------------------------------------------------------------------
# build_vae(seed=) seeds the model's own weights and nothing else.

VARIANTS = [
    {},
    {"architecture": "conv", "filters": (4,)},
    {"posterior": "iaf"},
    {"posterior": "hierarchical"},
    {"prior": "mixture", "num_components": 3},
    {"prior": "vamp", "num_components": 3},
]


def _build(seed, **kwargs):
    return tfvae.build_vae((6, 6, 1), 2, hidden_units=(8,), seed=seed, **kwargs)


def _random_initial_weights(model):
    """The weights drawn at random (constants such as zero biases are the same for any seed)."""
    return {w.path.split("/", 1)[1]: w.numpy() for w in model.weights if np.ptp(w.numpy()) > 0}


@pytest.mark.parametrize("kwargs", VARIANTS, ids=lambda k: "-".join(map(str, k.values())) or "mlp")
def test_build_vae_seed_gives_the_same_weights_and_other_seeds_other_weights(kwargs):
    a, b, c = (_random_initial_weights(_build(seed, **kwargs)) for seed in (3, 3, 4))
    assert a and sorted(a) == sorted(b) == sorted(c)
    for path in a:
        np.testing.assert_array_equal(a[path], b[path], err_msg=path)
        assert not np.array_equal(a[path], c[path]), path
    # Every random layer draws its own values: no two kernels of one model coincide.
    kernels = [w.ravel()[:4] for w in a.values() if w.size >= 4]
    assert len({tuple(k) for k in kernels}) == len(kernels)


def _global_draws():
    """One draw from each process-global random source a library could disturb."""
    return (random.random(), np.random.random(), keras.random.uniform((3,)).numpy(),
            tf.random.uniform((3,)).numpy())


@pytest.mark.parametrize("kwargs", VARIANTS[:4], ids=["mlp", "conv", "iaf", "hierarchical"])
def test_build_vae_leaves_the_global_random_state_alone(kwargs):
    keras.utils.set_random_seed(11)
    reference = _global_draws()
    keras.utils.set_random_seed(11)
    _build(5, **kwargs)
    after = _global_draws()
    for want, got in zip(reference, after):
        np.testing.assert_array_equal(got, want)


def test_seeded_networks_keep_their_seed_and_unseeded_ones_load_as_before():
    mlp = tfvae.MLP(3, (4,), seed=7)
    assert mlp.get_config()["seed"] == 7
    assert tfvae.MLP.from_config(mlp.get_config()).seed == 7
    old = {k: v for k, v in tfvae.ConvDecoder((4, 4, 1), (2,)).get_config().items() if k != "seed"}
    assert tfvae.ConvDecoder.from_config(old).seed is None
    iaf = tfvae.IAFPosterior(2, seed=1)
    assert tfvae.IAFPosterior.from_config(iaf.get_config()).seed == 1
    assert tfvae.HierarchicalPrior((2, 1), seed=2).get_config()["seed"] == 2


def test_a_seeded_model_saves_and_reloads(tmp_path):
    model = _build(2, posterior="hierarchical")
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    for want, got in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------------------
# The command's choices are the registries', and its options are RunConfig's fields.


def _train_parser():
    parser = cli._parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices["train"]


def test_train_choices_are_the_registries():
    actions = {a.dest: a for a in _train_parser()._actions}
    expected = {
        "likelihood": builders.LIKELIHOODS,
        "posterior": builders.POSTERIORS,
        "prior": builders.PRIORS,
        "architecture": builders.ARCHITECTURES,
        "binarize": data.BINARIZE,
        "strategy": runs.STRATEGIES,
        "mixed_precision": runs.PRECISION_POLICIES,
        "objective": tfvae.objective_parts.names(),
        "gradient_estimator": tfvae.objective_parts.IWAE.hyperparameters[
            "gradient_estimator"].choices,
    }
    for dest, registry in expected.items():
        assert tuple(actions[dest].choices) == tuple(registry), dest


def test_train_help_lists_the_registries(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "{" + ",".join(builders.PRIORS) + "}" in text
    assert "{" + ",".join(builders.POSTERIORS) + "}" in text


def test_every_run_config_field_is_one_train_option_with_its_default():
    actions = {a.dest: a for a in _train_parser()._actions}
    defaults = runs.RunConfig()
    for field in dataclasses.fields(runs.RunConfig):
        assert field.name in actions, field.name
        assert actions[field.name].default == getattr(defaults, field.name), field.name
    assert cli._config(_train_parser().parse_args([])) == defaults
    args = _train_parser().parse_args(["--posterior", "hierarchical", "--top-latent-dim", "3",
                                       "--no-jit", "--hidden-units", "8,4", "--conditional"])
    config = cli._config(args)
    assert (config.posterior, config.top_latent_dim, config.jit_compile, config.hidden_units,
            config.conditional) == ("hierarchical", 3, False, (8, 4), True)


def test_model_kwargs_build_the_run_model():
    config = runs.RunConfig(latent_dim=3, hidden_units=(8,), warmup_epochs=2, beta=0.5,
                            free_bits=0.1, free_bits_groups=3).validate()
    kwargs = config.model_kwargs((8, 8, 1), condition_dim=4)
    assert kwargs["beta"] == 0.0  # the warm-up starts at β = 0
    assert kwargs["free_bits_groups"] == 3 and kwargs["top_latent_dim"] is None
    model = builders.build_vae(**kwargs)
    assert (model.latent_dim, model.condition_dim, model.seed) == (3, 4, config.seed)


def test_metric_summary_keys_are_defined_once():
    metrics = {"elbo": -1.23456, "kl": 2.0, "active_units": 3, "num_samples": 5}
    assert evaluation.summary(metrics) == [("elbo", "-1.2346"), ("kl", "2.0000"),
                                           ("active_units", "3")]


def test_table_and_report_show_the_same_quantities(tmp_path, capsys):
    from tfvae import report

    metrics = {key: 1.5 for key in evaluation.SUMMARY_KEYS if key != "active_units"}
    metrics.update(active_units=2, num_samples=5, epochs_trained=1)
    cli._print_table(metrics)
    table = capsys.readouterr().out.splitlines()[1:]
    config = dataclasses.asdict(runs.RunConfig())
    text = open(report.write_markdown(str(tmp_path / "r.md"), config, metrics, {})).read()
    rows = [line for line in text.splitlines()
            if line.startswith("| ") and line.split()[1] not in ("quantity", "---")]
    assert [line.split()[0] for line in table] == [row.split()[1] for row in rows]
    assert [line.split()[0] for line in table] == list(evaluation.SUMMARY_KEYS)


# ---------------------------------------------------------------------------
# RunConfig and build_vae refuse the same combinations with the same words.

BAD = {
    "iwae+beta": {"objective": "iwae", "beta": 2.0},
    "iwae+warmup": {"objective": "iwae", "warmup_epochs": 5.0},
    "dreg+elbo": {"gradient_estimator": "dreg"},
    "dreg+iaf": {"objective": "iwae", "gradient_estimator": "dreg", "posterior": "iaf"},
    "dreg+vamp": {"objective": "iwae", "gradient_estimator": "dreg", "prior": "vamp"},
    "groups without free bits": {"free_bits_groups": 2},
    "groups with full posterior": {"free_bits_groups": 2, "free_bits": 0.1, "posterior": "full"},
    "groups with mixture prior": {"free_bits_groups": 2, "free_bits": 0.1, "prior": "mixture"},
    "hierarchical with mixture prior": {"posterior": "hierarchical", "prior": "mixture"},
    "top_latent_dim without hierarchy": {"top_latent_dim": 2},
    "conditional+vamp": {"conditional": True, "prior": "vamp"},
}


def _error(fn):
    with pytest.raises(ValueError) as error:
        fn()
    return str(error.value)


@pytest.mark.parametrize("name", sorted(BAD))
def test_run_config_refuses_what_build_vae_refuses_with_the_same_message(name):
    config = runs.RunConfig(latent_dim=3, hidden_units=(4,), **BAD[name])
    from_config = _error(config.validate)
    kwargs = config.model_kwargs((6,), condition_dim=1 if config.conditional else None)
    from_builder = _error(lambda: builders.build_vae(**kwargs))
    assert from_config.startswith("Received an invalid value for `")
    if name == "iwae+warmup":
        # build_vae has no warm-up; the run builds with β = 0 and KLWarmup raises it.
        assert from_config.split("Received:")[0] == from_builder.split("Received:")[0]
        assert "warmup_epochs=5.0" in from_config
    elif name == "conditional+vamp":
        # The same rule and words, naming the argument each caller's user set.
        assert from_config == from_builder.replace("`condition_dim`", "`conditional`").replace(
            "condition_dim=1", "conditional=True")
    else:
        assert from_config == from_builder


def test_a_biased_dreg_run_is_refused_before_any_output(tmp_path):
    output = tmp_path / "run"
    config = runs.RunConfig(objective="iwae", gradient_estimator="dreg", posterior="iaf")
    with pytest.raises(ValueError, match="'dreg' stops gradients"):
        runs.train(config, str(output))
    assert not output.exists()


def test_the_command_reports_a_refused_combination_in_one_line(tmp_path, capsys):
    code = cli.main(["train", "--output", str(tmp_path / "r"), "--objective", "iwae",
                     "--gradient-estimator", "dreg", "--prior", "vamp", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "'dreg' stops gradients" in err
    assert not (tmp_path / "r").exists()


def test_part_classes_name_the_parts_build_vae_builds():
    assert builders.part_classes("diagonal", "vamp") == (tfvae.DiagonalGaussianPosterior,
                                                         tfvae.VampPrior)
    assert builders.part_classes("hierarchical", "standard_normal") == (
        tfvae.HierarchicalPosterior, tfvae.HierarchicalPrior)
    for posterior in builders.POSTERIORS:
        for prior in builders.PRIORS:
            own_prior = posterior == "hierarchical" or getattr(
                builders.POSTERIORS[posterior], "own_prior", None) is not None
            if own_prior and prior != "standard_normal":
                continue
            model = tfvae.build_vae((6,), 2, hidden_units=(4,), posterior=posterior, prior=prior,
                                    num_components=2)
            assert (type(model.posterior), type(model.prior)) == builders.part_classes(
                posterior, prior)
