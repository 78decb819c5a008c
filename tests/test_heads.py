"""Tests for tfvae.heads: every head against independent numpy/scipy formulas, the
posterior capabilities, constructor checks, and the data each likelihood refuses.

Each head is described once in `CASES` together with an independent numpy
reference for its log-density (and mean) written from the parametrisation in
the head's docstring, so every test below runs over every head.
"""

import math

import numpy as np
import pytest
import keras
import scipy.special as sp
import scipy.stats as st
import tensorflow as tf
import tensorflow_probability as tfp

import tfvae
from tfvae import heads
from tfvae import priors

import helpers
from helpers import invalid, raises, tiny_model

tfd = tfp.distributions

BATCH = 4


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(1234)


# ---------------------------------------------------------------------------
# Independent numpy references.


def softplus(x):
    return np.logaddexp(0.0, x)


def inv_softplus(y):
    return np.log(np.expm1(y))


def np_fill_triangular(x):
    """numpy version of `tfp.math.fill_triangular(x)` (lower), from its documented algorithm."""
    m = x.shape[-1]
    n = int(np.sqrt(0.25 + 2 * m) - 0.5)
    assert n * (n + 1) // 2 == m
    flat = np.concatenate([x[..., n:], x[..., ::-1]], axis=-1)
    return np.tril(flat.reshape(*x.shape[:-1], n, n))


def np_fill_scale_tril(raw, min_scale):
    """`tfb.FillScaleTriL(diag_bijector=Softplus(), diag_shift=min_scale)` in numpy."""
    tril = np_fill_triangular(raw)
    n = tril.shape[-1]
    idx = np.arange(n)
    tril[..., idx, idx] = softplus(tril[..., idx, idx]) + min_scale
    return tril


def _sum_event(a):
    return a.reshape(a.shape[0], -1).sum(axis=-1)


def np_bernoulli_log_prob(logits, x):
    return _sum_event(x * sp.log_expit(logits) + (1.0 - x) * sp.log_expit(-logits))


def np_continuous_bernoulli_log_norm(lam):
    """log C(λ), C(λ) = 2 atanh(1 − 2λ) / (1 − 2λ), with C(½) = 2."""
    t = 1.0 - 2.0 * lam
    safe = np.where(np.abs(t) < 1e-12, 0.5, t)
    c = np.where(np.abs(t) < 1e-12, 2.0, 2.0 * np.arctanh(safe) / safe)
    return np.log(c)


def np_continuous_bernoulli_log_prob(logits, x):
    lam = sp.expit(logits)
    log_c = np_continuous_bernoulli_log_norm(lam)
    return _sum_event(log_c + x * np.log(lam) + (1.0 - x) * np.log1p(-lam))


def np_continuous_bernoulli_mean(logits):
    lam = sp.expit(logits)
    return lam / (2.0 * lam - 1.0) + 1.0 / (2.0 * np.arctanh(1.0 - 2.0 * lam))


def np_discretized_logistic_probs(p, num_levels, min_scale):
    """P(x = k) for every level k, shape `p.shape[:-1] + [num_levels]`.

    The head's parametrisation (see DiscretizedLogisticLikelihood._distribution):
    μ = h + h·p₀ and s = softplus(p₁ + softplus⁻¹(h / 4)) + min_scale with
    h = (K − 1) / 2; then P(k) = F(k + ½) − F(k − ½), P(0) = F(½),
    P(K−1) = 1 − F(K − 1.5), F the logistic CDF.
    """
    half = (num_levels - 1) / 2.0
    mu = (half + half * p[..., 0])[..., None]
    s = (softplus(p[..., 1] + inv_softplus(half / 4.0)) + min_scale)[..., None]
    k = np.arange(num_levels, dtype=np.float64)
    with np.errstate(divide="ignore"):
        za = np.where(k == 0, -np.inf, (k - 0.5 - mu) / s)
        zb = np.where(k == num_levels - 1, np.inf, (k + 0.5 - mu) / s)
    # Difference of CDFs on the left of μ, of survival functions on the right
    # (both exact in float64; avoids cancellation near 0 or 1).
    left = sp.expit(zb) - sp.expit(za)
    right = sp.expit(-za) - sp.expit(-zb)
    return np.where(k <= mu, left, right)


def _take_level(values, x):
    """values `[..., K]`, integer-valued x `[...]` -> values[..., x]."""
    return np.take_along_axis(values, x.astype(np.int64)[..., None], axis=-1)[..., 0]


# ---------------------------------------------------------------------------
# The heads under test.


class Case:
    def __init__(
        self,
        id,
        make,
        event_shape,
        params_size,
        params_per_element,
        sample_x,
        np_log_prob,
        np_mean,
        learned=False,
        tfp_mean=True,
        params_scale=1.0,
    ):
        self.id = id
        self.make = make
        self.event_shape = tuple(event_shape)
        self.params_size = params_size
        self.params_per_element = params_per_element
        self.sample_x = sample_x
        self.np_log_prob = np_log_prob  # (head, params float64 [B, P], x float64) -> [B]
        self.np_mean = np_mean  # (head, params float64 [B, P]) -> [B] + event_shape
        self.learned = learned
        self.tfp_mean = tfp_mean
        self.params_scale = params_scale

    def params(self, rng, batch=BATCH):
        return (self.params_scale * rng.standard_normal((batch, self.params_size))).astype(
            np.float32
        )

    def head(self, rng=None):
        head = self.make()
        if self.learned and rng is not None:
            # Move learned weights away from their initial values.
            for w in head.weights:
                w.assign(rng.normal(0.0, 0.7, size=w.shape).astype(np.float32))
        return head


def _real(shape):
    return lambda rng, b: rng.standard_normal((b, *shape)).astype(np.float32)


def _unit(shape):
    def sample(rng, b):
        x = rng.uniform(0.0, 1.0, size=(b, *shape))
        x[0] = rng.integers(0, 2, size=shape)  # one binary example, the rest grey values
        return x.astype(np.float32)

    return sample


def _levels(shape, num_levels):
    def sample(rng, b):
        x = rng.integers(0, num_levels, size=(b, *shape))
        x.flat[0], x.flat[-1] = 0, num_levels - 1  # always hit both edge bins
        return x.astype(np.float32)

    return sample


def _diag_case(d, min_scale):
    def log_prob(head, p, x):
        loc, raw = p[:, :d], p[:, d:]
        return st.norm.logpdf(x, loc, softplus(raw) + min_scale).sum(-1)

    return Case(
        f"diag_gaussian_posterior_min{min_scale}",
        lambda: heads.DiagonalGaussianPosterior(d, min_scale=min_scale),
        (d,),
        2 * d,
        None,
        _real((d,)),
        log_prob,
        lambda head, p: p[:, :d],
    )


def _full_case(d, min_scale):
    def log_prob(head, p, x):
        loc = p[:, :d]
        tril = np_fill_scale_tril(p[:, d:], min_scale)
        return np.array(
            [
                st.multivariate_normal(loc[i], tril[i] @ tril[i].T).logpdf(x[i])
                for i in range(len(p))
            ]
        )

    return Case(
        f"full_gaussian_posterior_min{min_scale}",
        lambda: heads.FullCovarianceGaussianPosterior(d, min_scale=min_scale),
        (d,),
        d + d * (d + 1) // 2,
        None,
        _real((d,)),
        log_prob,
        lambda head, p: p[:, :d],
    )


def _bernoulli_case(shape):
    n = int(np.prod(shape))
    return Case(
        "bernoulli",
        lambda: heads.BernoulliLikelihood(shape),
        shape,
        n,
        1,
        _unit(shape),
        lambda head, p, x: np_bernoulli_log_prob(p.reshape(x.shape), x),
        lambda head, p: sp.expit(p.reshape(-1, *shape)),
        params_scale=2.0,
    )


def _continuous_bernoulli_case(shape):
    n = int(np.prod(shape))
    return Case(
        "continuous_bernoulli",
        lambda: heads.ContinuousBernoulliLikelihood(shape),
        shape,
        n,
        1,
        _unit(shape),
        lambda head, p, x: np_continuous_bernoulli_log_prob(p.reshape(x.shape), x),
        lambda head, p: np_continuous_bernoulli_mean(p.reshape(-1, *shape)),
        params_scale=2.0,
    )


def _gaussian_case(shape, scale, initial_scale=0.7, min_scale=0.05):
    n = int(np.prod(shape))
    k = 2 if scale == "predicted" else 1

    def log_prob(head, p, x):
        p = p.reshape(-1, *shape, k)
        loc = p[..., 0]
        if scale == "predicted":
            sigma = softplus(p[..., 1] + inv_softplus(initial_scale - min_scale)) + min_scale
        elif isinstance(scale, str):
            sigma = softplus(np.asarray(head.raw_scale.numpy(), np.float64)) + min_scale
        else:
            sigma = scale
        return _sum_event(st.norm.logpdf(x, loc, sigma))

    return Case(
        f"gaussian_{scale}",
        lambda: heads.GaussianLikelihood(
            shape, scale=scale, initial_scale=initial_scale, min_scale=min_scale
        ),
        shape,
        n * k,
        k,
        _real(shape),
        log_prob,
        lambda head, p: p.reshape(-1, *shape, k)[..., 0],
        learned=scale in ("shared", "per_dimension"),
    )


def _categorical_case(shape, num_levels):
    n = int(np.prod(shape))

    def log_prob(head, p, x):
        logp = sp.log_softmax(p.reshape(-1, *shape, num_levels), axis=-1)
        return _sum_event(_take_level(logp, x))

    def mean(head, p):
        probs = sp.softmax(p.reshape(-1, *shape, num_levels), axis=-1)
        return (probs * np.arange(num_levels)).sum(-1)

    return Case(
        f"categorical_{num_levels}",
        lambda: heads.CategoricalPixelLikelihood(shape, num_levels=num_levels),
        shape,
        n * num_levels,
        num_levels,
        _levels(shape, num_levels),
        log_prob,
        mean,
    )


def _discretized_logistic_case(shape, num_levels, min_scale=1e-2):
    n = int(np.prod(shape))

    def probs(p):
        return np_discretized_logistic_probs(p.reshape(-1, *shape, 2), num_levels, min_scale)

    def log_prob(head, p, x):
        return _sum_event(np.log(_take_level(probs(p), x)))

    def mean(head, p):
        return (probs(p) * np.arange(num_levels)).sum(-1)

    return Case(
        f"discretized_logistic_{num_levels}",
        lambda: heads.DiscretizedLogisticLikelihood(
            shape, num_levels=num_levels, min_scale=min_scale
        ),
        shape,
        n * 2,
        2,
        _levels(shape, num_levels),
        log_prob,
        mean,
        tfp_mean=False,
        params_scale=0.7,
    )


IMAGE = (3, 2, 1)
VECTOR = (4,)

CASES = [
    _diag_case(3, 1e-5),
    _diag_case(3, 0.5),
    _full_case(3, 1e-5),
    _full_case(3, 0.5),
    _bernoulli_case(IMAGE),
    _continuous_bernoulli_case(VECTOR),
    _gaussian_case(IMAGE, 0.3),
    _gaussian_case(VECTOR, "shared"),
    _gaussian_case(IMAGE, "per_dimension"),
    _gaussian_case(IMAGE, "predicted", initial_scale=1.3),
    _categorical_case(IMAGE, 5),
    _categorical_case(VECTOR, 256),
    _discretized_logistic_case(IMAGE, 5, min_scale=0.05),
    _discretized_logistic_case(VECTOR, 256),
]
LIKELIHOOD_CASES = [c for c in CASES if c.params_per_element is not None]
IMAGE_LIKELIHOOD_CASES = [c for c in LIKELIHOOD_CASES if len(c.event_shape) == 3]

cases = pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)


def _data(case, seed=0):
    rng = np.random.default_rng(seed)
    head = case.head(rng)
    params = case.params(rng)
    x = case.sample_x(rng, BATCH)
    return head, params, x


def _log_prob(head, params, x):
    return head(tf.constant(params)).log_prob(tf.constant(x)).numpy()


# ---------------------------------------------------------------------------
# Shapes and densities.


@cases
def test_params_size(case):
    assert case.make().params_size == case.params_size


@cases
def test_distribution_shapes(case):
    head, params, x = _data(case)
    assert tuple(head.event_shape) == case.event_shape
    dist = head(tf.constant(params))
    assert isinstance(dist, tfd.Distribution)
    assert dist.batch_shape.as_list() == [BATCH]
    assert tuple(dist.event_shape.as_list()) == case.event_shape
    assert tuple(dist.sample(seed=1).shape) == (BATCH, *case.event_shape)
    log_prob = dist.log_prob(tf.constant(x))
    assert log_prob.shape == (BATCH,)
    assert log_prob.dtype == tf.float32


@cases
def test_log_prob_matches_numpy(case):
    head, params, x = _data(case)
    expected = case.np_log_prob(head, params.astype(np.float64), x.astype(np.float64))
    assert expected.shape == (BATCH,)
    assert np.all(np.isfinite(expected))
    np.testing.assert_allclose(_log_prob(head, params, x), expected, rtol=1e-4, atol=1e-4)


@cases
def test_mean_matches_numpy(case):
    head, params, _ = _data(case)
    dist = head(tf.constant(params))
    expected = case.np_mean(head, params.astype(np.float64))
    assert expected.shape == (BATCH, *case.event_shape)
    mean = head.mean(dist).numpy()
    assert mean.shape == expected.shape
    np.testing.assert_allclose(mean, expected, rtol=1e-4, atol=1e-4)
    if case.tfp_mean:
        np.testing.assert_allclose(dist.mean().numpy(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", IMAGE_LIKELIHOOD_CASES, ids=lambda c: c.id)
def test_likelihood_accepts_conv_decoder_layout(case):
    # A ConvDecoder emits [batch, H, W, C * k]; it must be read exactly like the flat layout.
    head, params, x = _data(case)
    h, w, c = case.event_shape
    conv_params = params.reshape(BATCH, h, w, c * case.params_per_element)
    np.testing.assert_array_equal(_log_prob(head, conv_params, x), _log_prob(head, params, x))


@cases
def test_wrong_params_size_raises(case):
    head = case.make()
    with pytest.raises(ValueError, match="params_size"):
        head(tf.zeros([BATCH, case.params_size + 1]))


def test_numpy_fill_triangular_reference_matches_tfp_documentation():
    # Example from the tfp.math.fill_triangular docstring.
    np.testing.assert_array_equal(
        np_fill_triangular(np.arange(1.0, 7.0)),
        [[4.0, 0.0, 0.0], [6.0, 5.0, 0.0], [3.0, 2.0, 1.0]],
    )


@pytest.mark.parametrize("min_scale", [1e-5, 0.5])
def test_full_covariance_scale_tril(min_scale):
    d = 4
    rng = np.random.default_rng(3)
    head = heads.FullCovarianceGaussianPosterior(d, min_scale=min_scale)
    params = (2.0 * rng.standard_normal((BATCH, head.params_size))).astype(np.float32)
    params[0, d:] = -30.0  # softplus(raw diagonal) underflows: diagonal must still be >= min_scale
    dist = head(tf.constant(params))
    tril = dist.scale_tril.numpy().astype(np.float64)
    assert tril.shape == (BATCH, d, d)
    np.testing.assert_array_equal(np.triu(tril, k=1), 0.0)
    diag = np.diagonal(tril, axis1=-2, axis2=-1)
    assert np.all(diag >= min_scale * (1 - 1e-6))
    assert np.all(diag > 0)
    np.testing.assert_allclose(
        tril, np_fill_scale_tril(params[:, d:].astype(np.float64), min_scale), rtol=1e-5, atol=1e-6
    )
    # log_prob against scipy with the distribution's own Cholesky factor (rows whose
    # covariance is well conditioned; row 0 is nearly singular by construction).
    x = rng.standard_normal((BATCH, d))
    expected = [
        st.multivariate_normal(params[i, :d], tril[i] @ tril[i].T).logpdf(x[i])
        for i in range(1, BATCH)
    ]
    log_prob = dist.log_prob(tf.constant(x, tf.float32)).numpy()
    np.testing.assert_allclose(log_prob[1:], expected, rtol=1e-4, atol=1e-4)


def test_continuous_bernoulli_normaliser_at_half():
    # λ = ½ (logit 0): C(½) = 2, so log p(x) = log 2 + log ½ = 0 for every x.
    head = heads.ContinuousBernoulliLikelihood((3,))
    x = np.array([[0.0, 0.3, 1.0]], np.float32)
    np.testing.assert_allclose(_log_prob(head, np.zeros((1, 3), np.float32), x), [0.0], atol=1e-5)


@pytest.mark.parametrize("num_levels", [2, 5, 256])
def test_discretized_logistic_probabilities_sum_to_one(num_levels):
    rng = np.random.default_rng(5)
    head = heads.DiscretizedLogisticLikelihood((1,), num_levels=num_levels)
    params = (1.5 * rng.standard_normal((BATCH, 2))).astype(np.float32)
    dist = head(tf.constant(params))
    levels = np.arange(num_levels, dtype=np.float32)
    x = np.broadcast_to(levels[:, None, None], (num_levels, BATCH, 1))
    probs = np.exp(dist.log_prob(tf.constant(x)).numpy().astype(np.float64)).T  # [B, K]
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-4)
    expected = np_discretized_logistic_probs(params.astype(np.float64), num_levels, 1e-2)
    np.testing.assert_allclose(probs, expected, rtol=1e-3, atol=1e-7)


@pytest.mark.parametrize("num_levels", [5, 256])
def test_categorical_probabilities_sum_to_one(num_levels):
    rng = np.random.default_rng(6)
    head = heads.CategoricalPixelLikelihood((1,), num_levels=num_levels)
    dist = head(tf.constant(rng.standard_normal((BATCH, num_levels)).astype(np.float32)))
    x = np.broadcast_to(np.arange(num_levels, dtype=np.float32)[:, None, None], (num_levels, BATCH, 1))
    probs = np.exp(dist.log_prob(tf.constant(x)).numpy().astype(np.float64))
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-4)


INTEGER_LEVEL_HEADS = pytest.mark.parametrize(
    "cls",
    [heads.CategoricalPixelLikelihood, heads.DiscretizedLogisticLikelihood],
    ids=["categorical", "discretized_logistic"],
)


@INTEGER_LEVEL_HEADS
@pytest.mark.parametrize("num_levels", [2, 5, 256])
def test_integer_level_encoder_input_rescales_to_unit_interval(cls, num_levels):
    head = cls((num_levels,), num_levels=num_levels)
    x = np.arange(num_levels, dtype=np.float32)[None]
    head.validate_data(x)
    np.testing.assert_allclose(head.encoder_input(x), x / (num_levels - 1.0), rtol=1e-6)
    np.testing.assert_allclose(
        head.encoder_input(tf.constant(x)).numpy(), x / (num_levels - 1.0), rtol=1e-6
    )


@INTEGER_LEVEL_HEADS
def test_single_level_is_rejected(cls):
    # One level is degenerate: encoder_input would compute 0 / 0 and feed NaN to the encoder.
    with pytest.raises(ValueError, match="num_levels"):
        cls((3,), num_levels=1)


# ---------------------------------------------------------------------------
# Learned scales of the Gaussian likelihood.


@pytest.mark.parametrize("scale", ["shared", "per_dimension", "predicted"])
def test_gaussian_learned_scale_starts_at_initial_scale(scale):
    # With zero decoder output the density is N(x; 0, initial_scale²) elementwise.
    shape, initial_scale = (3, 2), 0.7
    head = heads.GaussianLikelihood(shape, scale=scale, initial_scale=initial_scale)
    x = np.random.default_rng(7).standard_normal((BATCH, *shape)).astype(np.float32)
    params = np.zeros((BATCH, head.params_size), np.float32)
    expected = _sum_event(st.norm.logpdf(x.astype(np.float64), 0.0, initial_scale))
    np.testing.assert_allclose(_log_prob(head, params, x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "scale, weight_shape", [(0.3, None), ("predicted", None), ("shared", ()), ("per_dimension", (3, 2))]
)
def test_gaussian_scale_variables(scale, weight_shape):
    head = heads.GaussianLikelihood((3, 2), scale=scale)
    if weight_shape is None:
        assert head.trainable_variables == []
        return
    assert len(head.trainable_variables) == 1
    variable = head.trainable_variables[0]
    assert tuple(variable.shape) == weight_shape
    assert variable.dtype == "float32"
    rng = np.random.default_rng(8)
    params = tf.constant(rng.standard_normal((BATCH, head.params_size)).astype(np.float32))
    x = tf.constant(rng.standard_normal((BATCH, 3, 2)).astype(np.float32))
    with tf.GradientTape() as tape:
        loss = -tf.reduce_sum(head(params).log_prob(x))
    grad = tape.gradient(loss, variable)
    assert grad is not None
    assert np.all(np.abs(grad.numpy()) > 0)


# ---------------------------------------------------------------------------
# Serialisation, XLA and mixed precision.


@cases
@pytest.mark.parametrize("route", ["serialize_keras_object", "get_config"])
def test_serialization_round_trip(case, route):
    head, params, x = _data(case)
    if route == "serialize_keras_object":
        restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(head))
    else:
        restored = type(head).from_config(head.get_config())
    assert type(restored) is type(head)
    assert restored is not head
    assert restored.params_size == head.params_size
    assert tuple(restored.event_shape) == tuple(head.event_shape)
    assert len(restored.weights) == len(head.weights)
    if head.weights:
        restored.set_weights(head.get_weights())
    np.testing.assert_array_equal(_log_prob(restored, params, x), _log_prob(head, params, x))


@cases
def test_jit_compile_matches_eager(case):
    head, params, x = _data(case)

    @tf.function(jit_compile=True)
    def log_prob(p, y):
        return head(p).log_prob(y)

    compiled = log_prob(tf.constant(params), tf.constant(x)).numpy()
    np.testing.assert_allclose(compiled, _log_prob(head, params, x), rtol=1e-5, atol=1e-5)


@pytest.fixture
def global_policy():
    previous = keras.mixed_precision.global_policy()
    yield keras.mixed_precision.set_global_policy
    keras.mixed_precision.set_global_policy(previous)


@cases
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_params_give_float32_distribution(case, dtype, global_policy):
    global_policy(f"mixed_{dtype}")
    rng = np.random.default_rng(0)
    head = case.head(rng)
    for w in head.weights:
        assert w.dtype == "float32"
    params32 = case.params(rng)
    x = case.sample_x(rng, BATCH)
    low = tf.cast(tf.constant(params32), dtype)
    log_prob = head(low).log_prob(tf.constant(x))
    assert log_prob.dtype == tf.float32
    assert log_prob.shape == (BATCH,)
    # Same result as float32 parameters holding the same (rounded) values.
    rounded = tf.cast(low, tf.float32).numpy()
    np.testing.assert_allclose(log_prob.numpy(), _log_prob(head, rounded, x), rtol=1e-6, atol=1e-6)
    assert np.all(np.isfinite(log_prob.numpy()))


# ---------------------------------------------------------------------------
# Tensor-level parameters and means (what the export graphs use).


def _cb_mean_numeric(logit):
    """E[x] under the continuous Bernoulli by numerical integration of x p(x)."""
    lam = 1.0 / (1.0 + np.exp(-logit))
    x = np.linspace(0.0, 1.0, 200_001)
    density = lam**x * (1 - lam) ** (1 - x)
    return np.trapezoid(x * density, x) / np.trapezoid(density, x)


@pytest.mark.parametrize("logit", [-6.0, -1.0, -0.05, 0.0, 1e-4, 0.3, 4.0])
def test_continuous_bernoulli_mean_matches_numerical_integration(logit):
    head = heads.ContinuousBernoulliLikelihood((1,))
    mean = head.mean_of({"logits": tf.constant([[logit]], tf.float32)}).numpy()[0, 0]
    assert mean == pytest.approx(_cb_mean_numeric(logit), abs=2e-6)


@pytest.mark.parametrize(
    "head",
    [
        heads.BernoulliLikelihood((3, 2)),
        heads.ContinuousBernoulliLikelihood((3, 2)),
        heads.GaussianLikelihood((3, 2), scale="predicted"),
        heads.CategoricalPixelLikelihood((3, 2), num_levels=7),
        heads.DiscretizedLogisticLikelihood((3, 2), num_levels=9),
    ],
    ids=lambda h: type(h).__name__,
)
def test_mean_of_parameters_equals_distribution_mean(head):
    params = tf.constant(np.random.default_rng(0).normal(size=(4, head.params_size)), tf.float32)
    parameters = head.parameters(params)
    np.testing.assert_allclose(
        head.mean_of(parameters), head.mean(head(params)), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize(
    "head", [heads.DiagonalGaussianPosterior(3), heads.FullCovarianceGaussianPosterior(3)],
    ids=lambda h: type(h).__name__,
)
def test_posterior_reparameterize_matches_distribution_moments(head):
    params = tf.constant(np.random.default_rng(1).normal(size=(2, head.params_size)), tf.float32)
    parameters = head.parameters(params)
    eps = tf.constant(np.random.default_rng(2).normal(size=(100_000, 2, 3)), tf.float32)
    z = head.reparameterize(parameters, eps).numpy().astype(np.float64)
    dist = head(params)
    for b in range(2):
        np.testing.assert_allclose(z[:, b].mean(0), dist.mean().numpy()[b], atol=0.03)
        np.testing.assert_allclose(np.cov(z[:, b].T), dist.covariance().numpy()[b], atol=0.05)


# ---------------------------------------------------------------------------
# Posterior capabilities: what tfvae.VAE and tfvae.options ask a posterior.


def _np_kl_per_dimension(loc, scale):
    """KL(N(μ_j, σ_j²) ‖ N(0, 1)) per dimension, in float64."""
    loc, scale = np.asarray(loc, np.float64), np.asarray(scale, np.float64)
    return 0.5 * (loc**2 + scale**2 - 1.0) - np.log(scale)


@pytest.mark.parametrize("latent_dim, num_groups, sizes", [
    (5, 1, [5]), (5, 2, [3, 2]), (5, 3, [2, 2, 1]), (5, 5, [1] * 5), (4, 2, [2, 2]),
])
def test_kl_groups_are_sums_of_the_numpy_per_dimension_kl(latent_dim, num_groups, sizes):
    head = heads.DiagonalGaussianPosterior(latent_dim)
    rng = np.random.default_rng(latent_dim + num_groups)
    parameters = head.parameters(tf.constant(rng.normal(size=(6, head.params_size)), tf.float32))
    prior = priors.StandardNormalPrior(latent_dim)
    groups = head.kl_groups(parameters, prior, num_groups)
    z = tf.constant(rng.normal(size=(2, 6, latent_dim)), tf.float32)
    got = groups(z).numpy()
    assert got.shape == (6, num_groups)
    per_dim = _np_kl_per_dimension(parameters["loc"], parameters["scale"])
    bounds = np.cumsum([0] + sizes)  # contiguous groups, the first ones one larger
    expected = np.stack([per_dim[:, a:b].sum(-1) for a, b in zip(bounds[:-1], bounds[1:])], -1)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # The groups add up to the analytic KL of q to the prior, and ignore z (analytic).
    q = head.distribution(parameters)
    np.testing.assert_allclose(got.sum(-1), tfd.kl_divergence(q, prior.distribution()),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(groups(None), got)
    assert head.kl_groups(parameters, prior, None) is None


def test_posterior_capabilities():
    diagonal, full = heads.DiagonalGaussianPosterior(3), heads.FullCovarianceGaussianPosterior(3)
    assert diagonal.independent_dimensions and not full.independent_dimensions
    for head in (diagonal, full):
        assert isinstance(head, heads.Posterior)
        assert head.layer_names == () and head.dreg_unbiased
        prior = head.default_prior()
        assert type(prior) is priors.StandardNormalPrior and prior.latent_dim == 3
        assert head.check_prior(priors.MixtureOfGaussiansPrior(3, num_components=2)) is None
    # The base class leaves reparameterisation to each posterior.
    with pytest.raises(NotImplementedError):
        heads.Posterior().reparameterize({}, tf.zeros([1, 3]))


@pytest.mark.parametrize("prior", [priors.StandardNormalPrior(2), "standard_normal", None,
                                   heads.DiagonalGaussianPosterior(3)],
                         ids=["wrong_latent_dim", "name", "none", "not_a_prior"])
def test_check_prior_refuses_what_cannot_pair(prior):
    with raises("`prior`", "expected a tfvae prior with latent_dim=3", "latent_dim="):
        heads.DiagonalGaussianPosterior(3).check_prior(prior)


def test_vae_prior_latent_dim_mismatch():
    posterior = heads.DiagonalGaussianPosterior(2)
    likelihood = heads.BernoulliLikelihood((4,))
    parts = (tfvae.MLP(posterior.params_size, (8,)), tfvae.MLP(likelihood.params_size, (8,)),
             posterior, likelihood)
    with raises("`prior`", "latent_dim=2"):
        tfvae.VAE(*parts, prior=tfvae.StandardNormalPrior(3))


def test_vae_prior_latent_dim_mismatch_shows_received_latent_dim():
    # The repr of a Keras layer does not show its latent_dim, so the message
    # must say what the received prior's latent_dim was.
    posterior = heads.DiagonalGaussianPosterior(2)
    likelihood = heads.BernoulliLikelihood((4,))
    parts = (tfvae.MLP(posterior.params_size, (8,)), tfvae.MLP(likelihood.params_size, (8,)),
             posterior, likelihood)
    with raises("`prior`", "latent_dim=2", "latent_dim=3"):
        tfvae.VAE(*parts, prior=tfvae.StandardNormalPrior(3))


# ---------------------------------------------------------------------------
# Constructor arguments.

BAD_POSITIVE_INTS = helpers.BAD_POSITIVE_INTS


@pytest.mark.parametrize(
    "head", [heads.DiagonalGaussianPosterior, heads.FullCovarianceGaussianPosterior]
)
@pytest.mark.parametrize("latent_dim", BAD_POSITIVE_INTS)
def test_posterior_bad_latent_dim(head, latent_dim):
    with invalid("latent_dim", latent_dim):
        head(latent_dim=latent_dim)


@pytest.mark.parametrize("min_scale", [-1.0, math.nan, None])
def test_posterior_bad_min_scale(min_scale):
    with invalid("min_scale", min_scale):
        heads.DiagonalGaussianPosterior(2, min_scale=min_scale)


@pytest.mark.parametrize("scale", [-1.0, 0.0, math.nan, math.inf, None, True])
def test_gaussian_likelihood_bad_numeric_scale(scale):
    with invalid("scale", scale):
        heads.GaussianLikelihood(event_shape=(4,), scale=scale)


@pytest.mark.parametrize("scale", ["learned", "Shared", ""])
def test_gaussian_likelihood_unknown_scale_mode(scale):
    with invalid("scale", scale, "'shared'", "'per_dimension'", "'predicted'"):
        heads.GaussianLikelihood(event_shape=(4,), scale=scale)


@pytest.mark.parametrize(
    "head",
    [
        heads.BernoulliLikelihood,
        heads.ContinuousBernoulliLikelihood,
        heads.GaussianLikelihood,
        heads.CategoricalPixelLikelihood,
        heads.DiscretizedLogisticLikelihood,
    ],
)
@pytest.mark.parametrize("event_shape", [(), (0, 4), "abc", None])
def test_likelihood_bad_event_shape(head, event_shape):
    with invalid("event_shape", event_shape):
        head(event_shape)


@pytest.mark.parametrize(
    "head", [heads.CategoricalPixelLikelihood, heads.DiscretizedLogisticLikelihood]
)
@pytest.mark.parametrize("num_levels", BAD_POSITIVE_INTS)
def test_integer_likelihood_bad_num_levels(head, num_levels):
    with invalid("num_levels", num_levels):
        head((4,), num_levels=num_levels)


@pytest.mark.parametrize(
    "head", [heads.CategoricalPixelLikelihood, heads.DiscretizedLogisticLikelihood]
)
def test_integer_likelihood_needs_two_levels(head):
    # With one level, encoder_input divides by num_levels - 1 = 0 and the
    # encoder sees NaN; a 1-level likelihood is meaningless anyway.
    with invalid("num_levels", 1):
        head((4,), num_levels=1)


def test_good_head_arguments_pass():
    assert heads.DiagonalGaussianPosterior(latent_dim=1).params_size == 2
    assert heads.GaussianLikelihood((4,), scale=0.5).scale == 0.5
    assert heads.GaussianLikelihood((4,), scale="shared").scale == "shared"
    assert heads.CategoricalPixelLikelihood((4,), num_levels=2).params_size == 8


# ---------------------------------------------------------------------------
# Data values a likelihood cannot score, refused by every method that takes x.


@pytest.fixture(scope="module")
def likelihood_models():
    """One tiny (4,)-data model per likelihood whose data checks differ."""
    models = {}
    for name in (
        "bernoulli",
        "continuous_bernoulli",
        "gaussian",
        "categorical",
        "discretized_logistic",
    ):
        model = tfvae.build_vae((4,), 2, likelihood=name, hidden_units=(8,), seed=0)
        model.compile(optimizer="adam")
        models[name] = model
    return models


X_METHODS = helpers.X_METHODS


@pytest.mark.parametrize("likelihood", ["bernoulli", "continuous_bernoulli"])
@pytest.mark.parametrize("method", ["encode", "elbo", "reconstruct", "fit", "evaluate"])
def test_unit_interval_likelihood_rejects_values_outside_0_1(
    likelihood_models, likelihood, method
):
    model = likelihood_models[likelihood]
    head = type(model.likelihood).__name__
    with raises("`x`", head, "[0.0, 1.0]", "-0.5", "2.0"):
        X_METHODS[method](model, helpers.out_of_unit_range())


def test_bernoulli_rejects_unscaled_8bit_pixels(likelihood_models):
    x = np.random.default_rng(0).integers(0, 256, (8, 4)).astype("uint8")
    x[0, 0], x[0, 1] = 0, 255
    model = likelihood_models["bernoulli"]
    with raises("`x`", "BernoulliLikelihood", "[0.0, 1.0]", "255"):
        model.fit(x, epochs=1, verbose=0)
    with raises("`x`", "BernoulliLikelihood", "[0.0, 1.0]", "255"):
        model.elbo(x)


def test_bernoulli_rejects_out_of_range_validation_data(likelihood_models):
    model = likelihood_models["bernoulli"]
    with raises("`validation_data`", "BernoulliLikelihood", "2.0"):
        model.fit(
            helpers.unit_data(), validation_data=(helpers.out_of_unit_range(),), epochs=1,
            verbose=0
        )


def test_bernoulli_rejects_out_of_range_tensor_in_fit():
    # An eager tf.Tensor is as concrete as a NumPy array, so fit can check it.
    model = tfvae.build_vae((4,), 2, hidden_units=(8,), seed=0)
    model.compile(optimizer="adam")
    with raises("`x`", "BernoulliLikelihood", "-0.5", "2.0"):
        model.fit(tf.constant(helpers.out_of_unit_range()), epochs=1, batch_size=4, verbose=0)


@pytest.mark.parametrize("likelihood", ["categorical", "discretized_logistic"])
@pytest.mark.parametrize("method", ["encode", "elbo", "fit", "evaluate"])
def test_integer_likelihood_rejects_data_scaled_to_0_1(likelihood_models, likelihood, method):
    model = likelihood_models[likelihood]
    head = type(model.likelihood).__name__
    with raises("`x`", head, "integer levels", "0..255"):
        X_METHODS[method](model, helpers.unit_data())


@pytest.mark.parametrize("likelihood", ["categorical", "discretized_logistic"])
@pytest.mark.parametrize("bad", [-1.0, 256.0])
def test_integer_likelihood_rejects_levels_out_of_range(likelihood_models, likelihood, bad):
    x = np.full((8, 4), 7.0, "float32")
    x[3, 2] = bad
    head = type(likelihood_models[likelihood].likelihood).__name__
    with raises("`x`", head, "[0, 255]", repr(bad)):
        likelihood_models[likelihood].elbo(x)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("method", ["encode", "elbo", "fit", "evaluate"])
def test_gaussian_likelihood_rejects_non_finite_data(likelihood_models, bad, method):
    x = helpers.unit_data()
    x[2, 3] = bad
    with raises("`x`", "GaussianLikelihood", "NaN or infinity"):
        X_METHODS[method](likelihood_models["gaussian"], x)


def test_good_integer_and_gaussian_data_pass(likelihood_models):
    levels = np.random.default_rng(0).integers(0, 256, (4, 4)).astype("float32")
    levels[0, :2] = [0, 255]
    for name in ("categorical", "discretized_logistic"):
        assert np.all(np.isfinite(likelihood_models[name].elbo(levels)["elbo"].numpy()))
    gaussian = np.random.default_rng(0).normal(size=(4, 4)).astype("float32") * 10
    assert likelihood_models["gaussian"].elbo(gaussian)["elbo"].shape == (4,)


@pytest.mark.parametrize("likelihood, rows", [
    # Each row of x below, and whether the likelihood scores it.
    ("bernoulli", [True, True, False, False, False, False]),
    ("continuous_bernoulli", [True, True, False, False, False, False]),
    ("gaussian", [True, True, True, True, False, False]),
    ("categorical", [True, False, True, False, False, False]),
    ("discretized_logistic", [True, False, True, False, False, False]),
])
def test_support_mask_marks_the_rows_a_likelihood_scores(likelihood, rows):
    """Rows: zeros; 0.5s; 3s; one element 300; one NaN; one -inf. The mask must agree
    with `validate_data` (the eager check) row by row, inside an XLA-compiled graph."""
    model = tiny_model(likelihood)
    x = np.zeros((6, 6, 5, 1), "float32")
    x[1] = 0.5
    x[2] = 3.0
    x[3, 2, 2, 0] = 300.0
    x[4, 0, 1, 0] = np.nan
    x[5, 5, 4, 0] = -np.inf
    mask = tf.function(model.likelihood.support_mask, jit_compile=True)(tf.constant(x)).numpy()
    np.testing.assert_array_equal(mask, rows)
    for row, expected in zip(x, rows):
        try:
            model.likelihood.validate_data(row[None])
            accepted = True
        except ValueError:
            accepted = False
        assert accepted == expected


@pytest.mark.parametrize("kinds, expected", [
    (["mass"], "mass"), (["mass", "mass"], "mass"), (["density", "density"], "density"),
    (["mass", "cross_entropy", "mass"], "cross_entropy"), (["cross_entropy"], "cross_entropy"),
])
def test_the_score_kind_of_batches_is_that_of_their_concatenation(kinds, expected):
    head = tfvae.BernoulliLikelihood((3,))
    assert head.combine_score_kinds(kinds) == expected
    # Independently: Bernoulli batches of these kinds, scored whole.
    if set(kinds) <= {"mass", "cross_entropy"}:
        parts = [np.array([[0.0, 1.0, 0.5 if kind == "cross_entropy" else 1.0]]) for kind in kinds]
        assert head.score_kind(np.concatenate(parts)) == expected
    with raises("`kinds`", "kinds=[]"):
        head.combine_score_kinds([])


# ---------------------------------------------------------------------------
# A likelihood the library does not know: everything it needs from the data side comes
# from its declarations (support, prepare_data, binarize_modes), with no library change.


class BetaLikelihood(heads.LikelihoodHead):
    """p(x|z) = Π Beta(x_i; α_i, β_i) on the open interval (0, 1); α, β = softplus + 1e-3."""

    params_per_element = 2
    support = heads.Support(0.0, 1.0, closed=False)
    binarize_modes = ("none",)  # 0/1 data lie outside (0, 1)
    EPS = 1e-3

    def prepare_data(self, x):
        return tf.clip_by_value(x, self.EPS, 1.0 - self.EPS)  # [0, 1] data into (0, 1)

    def _parameters(self, flat):
        p = self._element_params(flat)
        return {"alpha": tf.nn.softplus(p[..., 0]) + 1e-3,
                "beta": tf.nn.softplus(p[..., 1]) + 1e-3}

    def distribution(self, parameters):
        return self._independent(tfd.Beta(parameters["alpha"], parameters["beta"]))

    def mean_of(self, parameters):
        return parameters["alpha"] / (parameters["alpha"] + parameters["beta"])


def test_a_new_likelihood_log_prob_is_scipys_beta():
    head = BetaLikelihood((3,))
    raw = np.random.default_rng(0).normal(size=(2, 6)).astype("float32")
    x = np.array([[0.1, 0.5, 0.9], [0.01, 0.3, 0.99]], "float32")
    p = raw.reshape(2, 3, 2).astype(np.float64)
    alpha, beta = softplus(p[..., 0]) + 1e-3, softplus(p[..., 1]) + 1e-3
    expected = st.beta.logpdf(x, alpha, beta).sum(-1)
    np.testing.assert_allclose(head(raw).log_prob(x).numpy(), expected, rtol=2e-4)


def test_an_open_interval_refuses_its_ends_in_validate_data_and_support_mask():
    head = BetaLikelihood((3,))
    for end in (0.0, 1.0):
        with raises("`x`", "BetaLikelihood", "(0.0, 1.0)", "0.0 and 1.0 excluded", f"{end}"):
            head.validate_data(np.array([[0.5, end, 0.5]], "float32"))
    head.validate_data(np.array([[1e-6, 0.5, 1 - 1e-6]], "float32"))
    # Rows: inside; an end each; out of range; NaN; next to the ends.
    x = np.array([[0.5] * 3, [0.0, 0.5, 0.5], [0.5, 0.5, 1.0], [0.5, 1.5, 0.5],
                  [np.nan, 0.5, 0.5], [np.nextafter(np.float32(0), np.float32(1)), 0.5,
                                       np.nextafter(np.float32(1), np.float32(0))]], "float32")
    rows = [True, False, False, False, False, True]
    mask = tf.function(head.support_mask, jit_compile=True)(tf.constant(x)).numpy()
    np.testing.assert_array_equal(mask, rows)
    # The closed interval of the Bernoulli keeps its ends (and its message).
    np.testing.assert_array_equal(heads.BernoulliLikelihood((3,)).support_mask(x).numpy(),
                                  [True, True, True, False, False, True])
    with raises("BernoulliLikelihood expects values in [0.0, 1.0]. Received: values in "
                "[0.5, 1.5]"):
        heads.BernoulliLikelihood((3,)).validate_data(x[3:4])


def test_a_new_likelihood_is_prepared_by_its_declarations(tmp_path):
    from tfvae import data, sources

    head = BetaLikelihood((4,))
    x = np.random.default_rng(0).uniform(size=(10, 4)).astype("float32")
    x[0, :2] = [0.0, 1.0]
    expected = np.clip(x, 1e-3, 1 - 1e-3)
    for binarize in ("none", "auto"):  # auto: a Beta does not binarise grey data
        np.testing.assert_array_equal(data.prepare(x, head, binarize), expected)
    head.validate_data(data.prepare(x, head))
    with raises("`binarize`", "'BetaLikelihood' likelihood models values in (0.0, 1.0)",
                "binarize='static'"):
        data.prepare(x, head, "static")
    with raises("`binarize`", "binarize='dynamic'"):
        sources.pipeline(sources.ArraySource(x), 5, head, "dynamic")
    streamed = sources.pipeline(sources.ArraySource(x), 4, head).as_numpy_iterator()
    np.testing.assert_array_equal(np.concatenate(list(streamed)), expected)


def test_a_new_likelihood_trains_and_refuses_its_ends():
    head = BetaLikelihood((4,))
    model = tfvae.build_vae((4,), 2, likelihood=head, hidden_units=(8,), seed=0)
    model.compile(optimizer="adam", jit_compile=False)
    from tfvae import data

    raw = np.random.default_rng(1).uniform(size=(32, 4)).astype("float32")
    raw[0, 0] = 0.0
    with raises("`x`", "BetaLikelihood", "(0.0, 1.0)"):
        model.fit(raw, epochs=1, batch_size=16, verbose=0)
    history = model.fit(data.prepare(raw, head), epochs=1, batch_size=32, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    # Invalid in, NaN out: the model's `valid_rows` follow the declared support.
    valid = model.valid_rows(tf.constant(raw[:2]), None).numpy()
    np.testing.assert_array_equal(valid, [False, True])


def _support_probes(support):
    """Values at the edges of a declared support and whether each lies in it, worked out
    here from the declaration's fields: NaN, ±inf, each finite end (in iff closed), the
    nearest float32 (or level) beyond it and inside it (no subnormals: TF flushes them),
    a non-integer next to a level, and a middle value."""
    f32 = np.float32
    levels = support.levels is not None
    finite = [e for e in (support.low, support.high) if math.isfinite(e)]
    middle = (support.low + 1 if levels else sum(finite) / 2 if len(finite) == 2
              else finite[0] + (1 if finite[0] == support.low else -1) if finite else 0.0)
    probes = [(np.nan, False), (np.inf, False), (-np.inf, False), (middle, True)]
    for end, closed, inward in ((support.low, support.closed[0], 1.0),
                                (support.high, support.closed[1], -1.0)):
        if not math.isfinite(end):
            continue
        probes.append((end, closed))
        if levels:
            probes += [(end - inward, False), (end + inward, True), (end + inward / 2, False)]
            continue
        for direction, inside in ((-inward, False), (inward, True)):
            value = np.nextafter(f32(end), f32(direction * np.inf))
            if 0 < abs(value) < np.finfo(np.float32).tiny:
                value = f32(direction * 1e-30)
            probes.append((value, inside))
    return probes


@pytest.mark.parametrize("likelihood", [*tfvae.builders.LIKELIHOODS, "test:beta"])
def test_every_likelihood_accepts_exactly_its_declared_support(likelihood):
    """For every registered likelihood (and one defined only here), `support_mask` (XLA)
    and `validate_data` accept exactly the values the declared `support` holds."""
    head = (BetaLikelihood((4,)) if likelihood == "test:beta"
            else tfvae.builders.likelihood_of(likelihood, (4,)))
    probes = _support_probes(head.support)
    middle = probes[3][0]
    x = np.full((len(probes), 4), middle, "float32")
    x[:, 2] = [value for value, _ in probes]
    expected = [inside for _, inside in probes]
    assert any(expected) and not all(expected)
    mask = tf.function(head.support_mask, jit_compile=True)(tf.constant(x)).numpy()
    np.testing.assert_array_equal(mask, expected, err_msg=str(probes))
    for row, inside in zip(x, expected):
        try:
            head.validate_data(row[None])
            accepted = True
        except ValueError:
            accepted = False
        assert accepted == inside, (row, head.support)
