"""Conformance: every model variant passes the same tests as the plain model.

Each variant (β-VAE, IWAE and IWAE + DReG, IAF, planar-flow and full-covariance posteriors,
mixture and Vamp priors, a two-layer hierarchy, conditional MLP and conv
models, free bits per group, β-TCVAE, InfoVAE (MMD), VQ-VAE, and a model of
table rows with a `TabularLikelihood` over continuous, binary and categorical
columns) is checked for

* serialisation: `.keras` save / load keeps the config, the weights, and
  exactly the ELBO terms and training objective at a fixed seed and `predict`;
* `jit_compile`: training under XLA gives the same weights and history as
  training in a plain graph (tfvae's noise is identical on both paths);
* SavedModel export: every signature computes, at two batch sizes, what the
  Keras model computes eagerly through its parts' seams and TFP distributions
  (rtol 1e-5; atol 1e-6, 2e-5 for the Monte Carlo `elbo` terms);
* ONNX export: every graph the model supports passes the ONNX checker at
  tfvae's opset, runs in onnxruntime and agrees with the same references
  (rtol, atol 1e-5); the graphs that cannot be exported are refused with a
  clear `ValueError` before anything is written. A table model's `score` graph
  (−ELBO and per-column scores) is checked in both formats against scipy's
  column terms (`helpers.table_column_scores`) plus the KL.

The harness asks the parts what they are instead of assuming Gaussians: the
data are drawn from the likelihood itself at neutral parameters (`_data`: binary
data for a Bernoulli head, every column's codes for a table's, each row checked
by its `validate_data`); the reported metrics are the ELBO's plus the
objective's and the posterior's own (`metric_names`) and one KL per layer; the `decode` graph's input is what the
posterior declares (`decode_input_spec`: z, or a VQ-VAE's integer codes, drawn
from the values its `decode_input_rows` accepts); the references go through
`posterior_outputs`, `latent_from_decode_input`, `loss_terms` and the prior's
`reparameterize`, and the encoder's `mean`/`scale` outputs are checked against q
as a TFP distribution wherever the posterior has a closed-form mean. The graphs
a variant cannot export are the ones its parts refuse (`export_refusal`, read
through `tfvae.export.part_refusal`), and each variant states which those are
(`score` is refused unless its likelihood has per-column terms, `column_terms`).

Models are tiny (binary data `(8,)` or `(4, 4, 1)`, table rows `(4,)`, latent
size 2 to 5, hidden width 8) and each variant is built and fitted once per module.

The checks on fitted models are `slow` (a fit per variant, exports, XLA); the
inner loop (`-m "not slow"`) builds every variant and rebuilds it from its config.

A property that every variant must have belongs here, as a test over `NAMES`,
not in a feature's test file.
"""

import dataclasses
import json
from typing import Callable, Optional

import keras
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
from scipy import stats

import tfvae
from tfvae import export
from tfvae import hierarchy
from tfvae import objectives
from tfvae import tabular
from tfvae.tabular_likelihood import TabularLikelihood

from helpers import table_column_scores

tfd = tfp.distributions

NUM_CLASSES = 3
NUM_EXAMPLES = 32
BATCH_SIZES = (1, 5)
GRAPH_INPUTS = {
    "serving_default": ("x",),
    "encode": ("x",),
    "decode": ("z",),
    "reconstruct": ("x", "eps"),
    "sample": ("eps",),
    "elbo": ("x", "eps"),
    "score": ("x", "eps"),
}


# ---------------------------------------------------------------------------
# The variants.


def _mlp_vae(**kwargs):
    return tfvae.build_vae((8,), 2, hidden_units=(8,), seed=0, **kwargs)


def _hierarchical_vae():
    keras.utils.set_random_seed(0)
    posterior = hierarchy.HierarchicalPosterior((3, 2), hidden_units=8)
    likelihood = tfvae.BernoulliLikelihood((8,))
    encoder = tfvae.MLP(posterior.params_size, (8,), name="encoder")
    decoder = tfvae.MLP(likelihood.params_size, (8,), name="decoder")  # sees z1 only
    return tfvae.VAE(encoder, decoder, posterior, likelihood, seed=0)


def _vq_vae():
    # Two positions of D = 2 over a codebook of K = 4.
    return tfvae.build_vae((8,), 4, hidden_units=(8,), seed=0, posterior="vq", codebook_size=4,
                           code_dim=2)


def _training_table():
    """A table of every feature kind, raw: two continuous columns on their own scales, a
    yes/no column and a colour column of three values (`tfvae.tabular` codes them)."""
    rng = np.random.default_rng(0)
    n = NUM_EXAMPLES
    return {"amount": rng.normal(50.0, 10.0, n), "member": rng.choice(["no", "yes"], n),
            "colour": rng.choice(["red", "green", "blue"], n), "weight": rng.normal(70.0, 5.0, n)}


def _table_vae():
    """A VAE of table rows, built as `VAEDetector` and `tfvae train` build one: the schema
    inferred from the training table (`tabular.infer_schema`: continuous, binary and
    categorical columns, the last with an unknown slot), its rows coded by the schema and
    the `TabularLikelihood`'s standardisation adapted on them."""
    table = _training_table()
    schema = tabular.infer_schema(table)
    rows = schema.encode(table)
    head = TabularLikelihood(schema)
    head.adapt(rows)
    return tfvae.build_vae(rows.shape[1:], 2, hidden_units=(8,), likelihood=head, seed=0)


def _conditional_conv_vae():
    return tfvae.build_vae((4, 4, 1), 2, architecture="conv", filters=(4,), seed=0,
                           condition_dim=NUM_CLASSES)


@dataclasses.dataclass(frozen=True)
class Variant:
    """How to build a variant and what it must turn out to be.

    Attributes:
      build: builds the (unfitted) model; the same weights on every call.
      posterior, prior, encoder, likelihood: the expected classes of those parts.
      config: `get_config()` entries that make the variant what it is.
      sample_refused_by: for priors that cannot be sampled from noise, the
        class name the `sample` export error must give.
      metrics: what `fit` reports beyond `loss` and the ELBO's terms (the
        objective's, the posterior's own, the KL per layer).
    """

    build: Callable[[], tfvae.VAE]
    posterior: type = tfvae.DiagonalGaussianPosterior
    prior: type = tfvae.StandardNormalPrior
    encoder: type = tfvae.MLP
    likelihood: type = tfvae.BernoulliLikelihood
    config: dict = dataclasses.field(default_factory=dict)
    sample_refused_by: Optional[str] = None
    metrics: frozenset = frozenset()


VARIANTS = {
    "plain": Variant(lambda: _mlp_vae(), config={"beta": 1.0, "objective": "elbo"}),
    "beta": Variant(lambda: _mlp_vae(beta=4.0), config={"beta": 4.0}),
    "iwae": Variant(lambda: _mlp_vae(objective="iwae", k=3),
                    config={"objective": "iwae", "k": 3, "gradient_estimator": "standard"},
                    metrics=frozenset({"iwae"})),
    "iwae_dreg": Variant(lambda: _mlp_vae(objective="iwae", k=3, gradient_estimator="dreg"),
                         config={"objective": "iwae", "k": 3, "gradient_estimator": "dreg"},
                         metrics=frozenset({"iwae"})),
    "iaf": Variant(lambda: _mlp_vae(posterior="iaf"), posterior=tfvae.IAFPosterior),
    "planar": Variant(lambda: _mlp_vae(posterior="planar"), posterior=tfvae.PlanarFlowPosterior),
    "full": Variant(lambda: _mlp_vae(posterior="full"),
                    posterior=tfvae.FullCovarianceGaussianPosterior),
    "mixture": Variant(lambda: _mlp_vae(prior="mixture", num_components=3),
                       prior=tfvae.MixtureOfGaussiansPrior,
                       sample_refused_by="MixtureOfGaussiansPrior"),
    "vamp": Variant(lambda: _mlp_vae(prior="vamp", num_components=3), prior=tfvae.VampPrior,
                    sample_refused_by="VampPrior"),
    "hierarchical": Variant(_hierarchical_vae, posterior=hierarchy.HierarchicalPosterior,
                            prior=hierarchy.HierarchicalPrior,
                            metrics=frozenset({"kl_z1", "kl_z2"})),
    "conditional_mlp": Variant(lambda: _mlp_vae(condition_dim=NUM_CLASSES),
                               config={"condition_dim": NUM_CLASSES}),
    "conditional_conv": Variant(_conditional_conv_vae, encoder=tfvae.ConvEncoder,
                                config={"condition_dim": NUM_CLASSES}),
    "free_bits_groups": Variant(lambda: _mlp_vae(free_bits=0.5, free_bits_groups=2),
                                config={"free_bits": 0.5, "free_bits_groups": 2}),
    "beta_tcvae": Variant(
        lambda: _mlp_vae(objective="beta_tcvae", tc_weight=6.0, dataset_size=NUM_EXAMPLES),
        config={"objective": "beta_tcvae", "tc_weight": 6.0, "mi_weight": 1.0,
                "dwkl_weight": 1.0, "dataset_size": NUM_EXAMPLES},
        metrics=frozenset({"mi", "tc", "dwkl"})),
    "mmd": Variant(lambda: _mlp_vae(objective="mmd", mmd_weight=10.0),
                   config={"objective": "mmd", "mmd_weight": 10.0, "mmd_kernel": "rbf"},
                   metrics=frozenset({"mmd"})),
    "vq": Variant(_vq_vae, posterior=tfvae.VQPosterior, prior=tfvae.UniformCodePrior,
                  metrics=frozenset({"codebook", "commitment"})),
    "table": Variant(_table_vae, likelihood=TabularLikelihood),
}
NAMES = list(VARIANTS)


class _Zoo:
    """Builds and fits each variant once (without XLA) for all tests of the module."""

    def __init__(self):
        self._fitted = {}

    def fitted(self, name):
        """Returns `(model, initial_weights, history)` for variant `name`."""
        if name not in self._fitted:
            model = VARIANTS[name].build()
            initial = model.get_weights()
            self._fitted[name] = (model, initial, _fit(model, jit_compile=False))
        return self._fitted[name]


@pytest.fixture(scope="module")
def zoo():
    return _Zoo()


# ---------------------------------------------------------------------------
# Helpers.


def _conditional(model):
    return model.condition_dim is not None


def _data(model, n, seed):
    """Data `[n] + event_shape` the likelihood scores and, for a conditional model, integer
    labels `[n]`.

    The rows are drawn from the likelihood itself at neutral parameters (a zero decoder
    output), so the harness assumes no kind of data: a Bernoulli head gives fair coin
    flips (binary data), a table's head gives each column's codes (a categorical column's
    K + 1, its unknown slot included, a binary column's 0/1) and continuous columns on the
    raw scale it was adapted to. Every row is checked with the head's `validate_data`."""
    likelihood = model.likelihood
    neutral = likelihood.distribution(likelihood.parameters(tf.zeros([n, likelihood.params_size])))
    x = tf.cast(neutral.sample(seed=tf.constant([seed, 0])), tf.float32).numpy()
    assert x.shape == (n,) + model.event_shape
    likelihood.validate_data(x)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_CLASSES, n) if _conditional(model) else None
    return x, labels


def _fit(model, jit_compile):
    """Two epochs of 32 examples in batches of 16, unshuffled; returns the history."""
    model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=jit_compile)
    assert model.jit_compile is jit_compile  # Keras falls back silently otherwise
    x, labels = _data(model, NUM_EXAMPLES, seed=0)
    return model.fit(x, labels, epochs=2, batch_size=16, shuffle=False, verbose=0).history


ELBO_TERMS = frozenset({"elbo", "reconstruction", "kl"})


def _metric_names(model):
    """What `fit` reports, as the parts declare it: `loss`, the ELBO's terms, the
    objective's and the posterior's own terms, and one KL per layer of a hierarchy."""
    return ({"loss"} | ELBO_TERMS | set(model.objective.metric_names)
            | set(model.posterior.metric_names)
            | {f"kl_{layer}" for layer in model.posterior.layer_names})


def _elbo_names(model):
    """The terms of `model.elbo` (the ELBO's, the posterior's own and the per-layer KLs)."""
    return _metric_names(model) - {"loss"} - set(model.objective.metric_names)


def _decode_name(model):
    return model.posterior.decode_input_spec().name


# The values tried, entry by entry, for a `decode` input that accepts only some.
_CANDIDATE_VALUES = np.arange(-8.0, 64.0, 0.5, dtype="float32")


def _decode_input(model, batch, rng):
    """`batch` rows of the `decode` graph's input (`decode_input_spec`): standard normal
    draws where the posterior takes any finite value (`decode_input_rows` is None), else
    values drawn uniformly from the candidates it accepts in every entry (a VQ-VAE's
    codes 0..K−1), every row checked to be accepted."""
    spec = model.posterior.decode_input_spec()
    shape = (batch,) + tuple(spec.shape[1:])
    value = rng.standard_normal(shape).astype("float32")
    if model.posterior.decode_input_rows(tf.constant(value)) is None:
        return value
    constant_rows = np.broadcast_to(_CANDIDATE_VALUES.reshape((-1,) + (1,) * (len(shape) - 1)),
                                    (len(_CANDIDATE_VALUES),) + shape[1:])
    accepted = _CANDIDATE_VALUES[np.asarray(
        model.posterior.decode_input_rows(tf.constant(constant_rows)))]
    assert len(accepted) > 1, "fewer than two accepted decode input values among the candidates"
    value = rng.choice(accepted, size=shape).astype("float32")
    assert np.all(model.posterior.decode_input_rows(tf.constant(value)))
    return value


def _graph_inputs(model, batch, seed):
    """Inputs of the export graphs (`y` one-hot), and the integer labels behind `y`:
    `eps` for the posterior's noise, `noise` for the prior's (`sample`) and the `decode`
    graph's input under its declared name."""
    x, labels = _data(model, batch, seed)
    rng = np.random.default_rng(seed + 100)
    inputs = {
        "x": x,
        "eps": rng.standard_normal((batch, model.latent_dim)).astype("float32"),
        "noise": rng.standard_normal((batch, model.latent_dim)).astype("float32"),
        _decode_name(model): _decode_input(model, batch, rng),
    }
    if labels is not None:
        inputs["y"] = np.eye(NUM_CLASSES, dtype="float32")[labels]
    return inputs, labels


def _feeds(model, name, inputs):
    """The named inputs of graph `name`, in order; a conditional model's `y` comes last."""
    names = tuple(_decode_name(model) if key == "z" else key for key in GRAPH_INPUTS[name])
    names += ("y",) if _conditional(model) else ()
    feeds = {key: inputs[key] for key in names}
    if name == "sample":
        feeds["eps"] = inputs["noise"]
    return feeds


def _assert_encode_is_q(encode, q, parameters, posterior):
    """The `encode` graph's `mean` and `scale` are q's as a TFP distribution, where the
    posterior writes its mean out (`closed_form_mean`): `mean` = E_q[z], and `scale`
    the standard deviations `[B, d]` or a Cholesky factor `[B, d, d]` of q's covariance."""
    if posterior.closed_form_mean(parameters) is None:
        return  # (a flow's or a hierarchy's `mean`/`scale` are its base Gaussian's)
    np.testing.assert_allclose(encode["mean"], q.mean(), rtol=1e-5, atol=1e-6)
    if "scale" not in encode:
        return
    scale = np.asarray(encode["scale"])
    if scale.ndim == 2:
        np.testing.assert_allclose(scale, q.stddev(), rtol=1e-5, atol=1e-6)
    else:
        np.testing.assert_allclose(scale @ np.swapaxes(scale, -1, -2), q.covariance(),
                                   rtol=1e-5, atol=1e-6)


def _hierarchical_layer_kls(model, x, z, y):
    """`KL₁ = log q(z₁|x) − log p(z₁|z₂)`, `KL₂ = log q(z₂|z₁) − log p(z₂)` with scipy."""
    d1 = model.posterior.latent_dims[0]
    z1, z2 = z[:, :d1], z[:, d1:]
    q1 = model.posterior_parameters(tf.constant(x), y)
    q2_loc, q2_scale = model.posterior.top(tf.constant(z1))
    p1_loc, p1_scale = model.prior.bottom(tf.constant(z2))

    def log_normal(v, loc, scale):
        return stats.norm.logpdf(v, np.asarray(loc), np.asarray(scale)).sum(-1)

    kl_z1 = log_normal(z1, q1["loc"], q1["scale"]) - log_normal(z1, p1_loc, p1_scale)
    kl_z2 = log_normal(z2, q2_loc, q2_scale) - log_normal(z2, 0.0, 1.0)
    return kl_z1, kl_z2


def _reference(model, inputs, labels):
    """What each export graph must output, from the Keras model and its TFP distributions.

    Conditional models are given the integer labels here (one-hot encoded by
    the model) while the graphs get the one-hot `y`, so the two conventions
    are checked against each other too.
    """
    x, eps, noise = inputs["x"], inputs["eps"], inputs["noise"]
    y = None if labels is None else tf.constant(inputs["y"])
    posterior = model.posterior
    q = model.encode(x, y=labels)
    parameters = model.posterior_parameters(*model.prepare_inputs(x, labels))
    encode = model.posterior_outputs(*model.prepare_inputs(x, labels))
    _assert_encode_is_q(encode, q, parameters, posterior)

    z_q = objectives.posterior_sample(q, 1, noise=eps[None], reparameterize=lambda e: (
        posterior.reparameterize(parameters, e)))[0]
    p_x = model.decode(z_q, y=labels)
    reconstruction = p_x.log_prob(x)
    prior = model.prior.distribution()
    try:
        kl = tfd.kl_divergence(q, prior)
    except NotImplementedError:
        kl = q.log_prob(z_q) - prior.log_prob(z_q)
    elbo = {"elbo": reconstruction - kl, "reconstruction": reconstruction, "kl": kl,
            **posterior.loss_terms(parameters)}  # (a VQ-VAE's codebook and commitment terms)
    if posterior.layer_names:
        elbo["kl_z1"], elbo["kl_z2"] = _hierarchical_layer_kls(model, x, z_q.numpy(), y)

    z = posterior.latent_from_decode_input(tf.constant(inputs[_decode_name(model)]))
    reference = {
        "serving_default": {"reconstruction": model(x if labels is None else (x, labels))},
        "encode": encode,
        "decode": {"mean": model.likelihood.mean(model.decode(z, y=labels)),
                   **model.decoder_parameters(z, y)},
        "reconstruct": {"reconstruction": model.likelihood.mean(p_x)},
        "elbo": elbo,
    }
    if model.prior.can_reparameterize:
        samples = model.decode(model.prior.reparameterize(tf.constant(noise)), y=labels)
        reference["sample"] = {"samples": model.likelihood.mean(samples)}
    if model.likelihood.column_terms:  # a table's head: the `score` graph, with scipy's terms
        columns = table_column_scores(model.likelihood, model.decoder_parameters(z_q, y), x,
                                      *model.likelihood.column_stats())
        reference["score"] = {"score": columns.sum(axis=1) + np.asarray(kl),
                              "feature_scores": columns}
    return {name: {k: np.asarray(v) for k, v in out.items()} for name, out in reference.items()}


def _assert_outputs_match(outputs, expected, batch, what, atol):
    assert set(outputs) == set(expected), what
    for key, value in expected.items():
        got = np.asarray(outputs[key])
        assert got.shape == value.shape and got.shape[0] == batch, f"{what}/{key}"
        np.testing.assert_allclose(got, value, rtol=1e-5, atol=atol, err_msg=f"{what}/{key}")


def _normalised(config):
    """A config as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(config))


def _refused_graphs(name):
    """The graphs variant `name` must refuse: `score` unless its likelihood has per-column
    terms (a table's, `column_terms`; tests/test_export_score.py) and `sample` for a prior
    without noise sampling."""
    variant = VARIANTS[name]
    return (({"score"} if not variant.likelihood.column_terms else set())
            | ({"sample"} if variant.sample_refused_by else set()))


def _expected_graphs(model, available):
    """The graphs of `available` that the model's parts do not refuse (`part_refusal`)."""
    return {graph for graph in available if not export.part_refusal(model, graph)}


# ---------------------------------------------------------------------------
# The variants are what they claim to be.


def _assert_same_elbo(got_model, model, n, seed):
    """Both models give exactly the same ELBO terms on `n` examples; returns `(x, labels,
    terms)`."""
    x, labels = _data(model, n, seed=seed)
    condition = {} if labels is None else {"y": labels}
    expected = model.elbo(x, seed=0, **condition)
    got = got_model.elbo(x, seed=0, **condition)
    assert set(got) == set(expected) == _elbo_names(model)
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    return x, labels, expected


def _posterior_uses_noise(model, x, labels):
    """Whether q's reparameterisation moves with its noise (asked of the posterior)."""
    parameters = model.posterior_parameters(*model.prepare_inputs(x, labels))
    rng = np.random.default_rng(4)
    a, b = (rng.standard_normal((len(x), model.latent_dim)).astype("float32") for _ in range(2))
    return not np.array_equal(model.posterior.reparameterize(parameters, a),
                              model.posterior.reparameterize(parameters, b))


def _assert_built_as_specified(model, variant):
    """The model's parts and config are the variant's; returns the config."""
    assert type(model.posterior) is variant.posterior
    assert type(model.prior) is variant.prior
    assert type(model.encoder) is variant.encoder
    assert type(model.likelihood) is variant.likelihood
    config = model.get_config()
    for key, value in variant.config.items():
        assert config[key] == value, key
    return config


@pytest.mark.parametrize("name", NAMES)
def test_variant_builds_and_rebuilds_from_its_config(name):
    """The inner loop's check of every variant: built (not fitted) as specified, and
    `from_config` + the same weights computes the same ELBO terms."""
    model = VARIANTS[name].build()
    config = _assert_built_as_specified(model, VARIANTS[name])
    assert _metric_names(model) == {"loss"} | ELBO_TERMS | VARIANTS[name].metrics
    assert {metric.name for metric in model.metrics} == _metric_names(model)
    # The graphs it cannot export are the ones its parts declare, each with a reason.
    refusals = {graph: export.part_refusal(model, graph)
                for graph in export.SAVED_MODEL_SIGNATURES}
    assert {graph for graph, reason in refusals.items() if reason} == _refused_graphs(name)
    # The `decode` input the posterior gives for x (`decode_input_of`, what int8 export's
    # parity feeds) decodes from x's deterministic code z = g(0; q(z|x)).
    x, labels = _data(model, 5, seed=3)
    value = model.posterior.decode_input_of(
        model.posterior_parameters(*model.prepare_inputs(x, labels)))
    assert tuple(value.shape[1:]) == tuple(model.posterior.decode_input_spec().shape[1:])
    np.testing.assert_array_equal(model.posterior.latent_from_decode_input(value),
                                  model.latent_code(x, labels))
    rebuilt = tfvae.VAE.from_config(config)
    assert _normalised(rebuilt.get_config()) == _normalised(config)
    rebuilt.set_weights(model.get_weights())
    _assert_same_elbo(rebuilt, model, n=5, seed=2)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_variant_is_built_as_specified(zoo, name):
    model, _, history = zoo.fitted(name)
    _assert_built_as_specified(model, VARIANTS[name])
    # The epoch logs also record the scheduled quantities (β for objectives with a KL term).
    schedules = {"learning_rate"} | ({"beta"} if model.objective.kl_weighted else set())
    assert set(history) == _metric_names(model) | schedules
    assert all(np.isfinite(v).all() for v in history.values())
    if model.hierarchical:  # the decoder sees z1 only
        assert model.decoder.get_build_config()["input_shape"][-1] == model.posterior.latent_dims[0]


# ---------------------------------------------------------------------------
# a. Serialisation.


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_keras_save_and_load_round_trips(zoo, name, tmp_path):
    model, _, _ = zoo.fitted(name)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")

    assert type(loaded) is tfvae.VAE
    config = _normalised(model.get_config())
    assert _normalised(loaded.get_config()) == config
    assert _normalised(tfvae.VAE.from_config(model.get_config()).get_config()) == config
    assert len(loaded.weights) == len(model.weights)
    for got, want in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(got, want)

    x, labels, expected = _assert_same_elbo(loaded, model, n=7, seed=1)
    condition = {} if labels is None else {"y": labels}
    # The training objective too (its loss carries β, free bits, IWAE's k).
    seed = tfvae.random.make_seed(3)
    y = None if labels is None else tf.one_hot(labels, NUM_CLASSES)
    expected_terms = model.objective_terms(tf.constant(x), y, seed=seed)
    got_terms = loaded.objective_terms(tf.constant(x), y, seed=seed)
    assert set(got_terms) == set(expected_terms) and "loss" in got_terms
    for key in expected_terms:
        np.testing.assert_array_equal(got_terms[key], expected_terms[key], err_msg=key)
    # The fixed seed is what makes them equal: another seed gives other noise, and other
    # terms unless q ignores its noise (a point mass: then every seed gives the same terms).
    other = model.elbo(x, seed=1, **condition)["reconstruction"]
    if _posterior_uses_noise(model, x, labels):
        assert not np.allclose(other, expected["reconstruction"])
    else:
        np.testing.assert_array_equal(other, expected["reconstruction"])

    inputs = x if labels is None else (x, labels)
    predicted = loaded.predict(inputs, verbose=0)
    assert predicted.shape == x.shape
    np.testing.assert_array_equal(predicted, model.predict(inputs, verbose=0))
    np.testing.assert_allclose(predicted, model(inputs), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------
# b. jit_compile.


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_training_under_xla_matches_training_without(zoo, name):
    reference, initial, history = zoo.fitted(name)
    model = VARIANTS[name].build()
    assert len(model.weights) == len(initial)
    for got, want in zip(model.get_weights(), initial):  # the same seed, the same start
        np.testing.assert_array_equal(got, want)
    xla_history = _fit(model, jit_compile=True)

    assert set(xla_history) == set(history)
    for key, values in history.items():
        np.testing.assert_allclose(xla_history[key], values, rtol=1e-4, atol=1e-4, err_msg=key)
    moved = max(np.max(np.abs(w - w0)) for w, w0 in zip(reference.get_weights(), initial))
    assert moved > 1e-3  # training changed the weights, so agreeing means something
    for variable, want in zip(model.weights, reference.get_weights()):
        np.testing.assert_allclose(variable.numpy(), want, rtol=1e-4, atol=1e-4,
                                   err_msg=variable.path)


# ---------------------------------------------------------------------------
# c. SavedModel.


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_saved_model_signatures_match_keras(zoo, name, tmp_path):
    model, _, _ = zoo.fitted(name)
    loaded = tf.saved_model.load(export.export_saved_model(model, str(tmp_path), "vae"))

    expected_signatures = _expected_graphs(model, export.SAVED_MODEL_SIGNATURES)
    assert set(loaded.signatures) == expected_signatures
    for signature in expected_signatures:
        specs = loaded.signatures[signature].structured_input_signature[1]
        assert set(specs) == set(_feeds(model, signature, _graph_inputs(model, 1, 0)[0]))
        assert all(spec.shape[0] is None for spec in specs.values())  # dynamic batch
    for batch in BATCH_SIZES:
        inputs, labels = _graph_inputs(model, batch, seed=batch)
        reference = _reference(model, inputs, labels)
        for signature in expected_signatures:
            feeds = _feeds(model, signature, inputs)
            outputs = loaded.signatures[signature](**{k: tf.constant(v) for k, v in feeds.items()})
            _assert_outputs_match(outputs, reference[signature], batch,
                                  f"{name} {signature} batch {batch}",
                                  atol=2e-5 if signature == "elbo" else 1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in NAMES if VARIANTS[n].sample_refused_by])
def test_sample_export_is_refused_for_priors_without_noise_sampling(zoo, name, tmp_path):
    model, _, _ = zoo.fitted(name)
    message = (f"Cannot export `sample`: {VARIANTS[name].sample_refused_by} cannot be sampled "
               "from standard normal noise")
    with pytest.raises(ValueError, match=message):
        export.export_saved_model(model, str(tmp_path), "vae",
                                  signatures=export.SAVED_MODEL_SIGNATURES)
    with pytest.raises(ValueError, match=message):
        export.export_onnx(model, str(tmp_path / "onnx"), graphs=("encode", "sample"))
    assert not list(tmp_path.iterdir())  # refused before anything was written


# ---------------------------------------------------------------------------
# d. ONNX. (The IWAE-objective and VampPrior models are variants here like any other.)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_onnx_graphs_match_keras(zoo, name, tmp_path):
    model, _, _ = zoo.fitted(name)
    # The one graph ONNX cannot express is refused by name, before anything is written.
    with pytest.raises(ValueError, match="Cannot export the `elbo` graph to ONNX"):
        export.export_onnx(model, str(tmp_path / "elbo"), graphs=("encode", "elbo"))
    assert not (tmp_path / "elbo").exists()

    written = export.export_onnx(model, str(tmp_path / "onnx"))
    expected_graphs = _expected_graphs(model, export.ONNX_GRAPHS)
    assert set(written) == expected_graphs
    with open(tmp_path / "onnx" / "metadata.json") as f:
        metadata = json.load(f)
    assert metadata["latent_dim"] == model.latent_dim
    assert metadata["condition_dim"] == model.condition_dim
    assert set(metadata["graphs"]) == expected_graphs
    assert metadata["opset"] == export.ONNX_OPSET
    for path in written.values():
        proto = onnx.load(path)
        onnx.checker.check_model(proto)
        assert proto.opset_import[0].version == export.ONNX_OPSET

    sessions = {graph: ort.InferenceSession(path, providers=["CPUExecutionProvider"])
                for graph, path in written.items()}
    for batch in BATCH_SIZES:
        inputs, labels = _graph_inputs(model, batch, seed=batch)
        reference = _reference(model, inputs, labels)
        for graph, session in sessions.items():
            feeds = _feeds(model, graph, inputs)
            assert [i.name for i in session.get_inputs()] == list(feeds)  # y last
            names = [o.name for o in session.get_outputs()]
            outputs = dict(zip(names, session.run(None, feeds)))
            _assert_outputs_match(outputs, reference[graph], batch,
                                  f"{name} {graph} batch {batch}", atol=1e-5)
