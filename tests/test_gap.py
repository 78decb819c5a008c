"""tfvae.gap: the ELBO gap split into approximation and amortization, against closed forms.

On a linear-Gaussian model p(z) = N(0, I), p(x|z) = N(Wz + b, σ²I) everything is
known: the posterior is N(m, S) with precision Λ = I + WᵀW/σ², S = Λ⁻¹,
m = S Wᵀ(x − b)/σ², and ELBO(q) = log p(x) − KL(q ‖ p(z|x)). So
* a full-covariance family contains the posterior: approximation gap 0, and the
  amortization gap is KL(q_φ ‖ p(z|x));
* the best diagonal q (minimising KL(q ‖ p(z|x))) has mean m and variances
  1/diag(Λ): its approximation gap is KL(q*_diag ‖ p(z|x)), a known number.
"""

import keras
import numpy as np
import pytest
from scipy import stats

import tfvae
from tfvae import gap

D_LATENT, D_DATA, SIGMA = 2, 3, 0.5


def _kl_gauss(m0, s0, m1, s1):
    s1_inv = np.linalg.inv(s1)
    dm = m1 - m0
    return 0.5 * (np.trace(s1_inv @ s0) + dm @ s1_inv @ dm - len(m0)
                  + np.log(np.linalg.det(s1) / np.linalg.det(s0)))


def _linear_gaussian(posterior):
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(D_DATA, D_LATENT)), rng.normal(size=D_DATA)
    x = (rng.normal(size=(6, D_LATENT)) @ w.T + b + SIGMA * rng.normal(size=(6, D_DATA)))
    keras.utils.set_random_seed(1)
    encoder = tfvae.MLP(posterior.params_size, (), name="encoder")
    decoder = tfvae.MLP(D_DATA, (), name="decoder")
    model = tfvae.VAE(encoder, decoder, posterior, tfvae.GaussianLikelihood((D_DATA,), scale=SIGMA),
                      seed=0)
    decoder.weights[0].assign(w.T.astype("float32"))
    decoder.weights[1].assign(b.astype("float32"))
    precision = np.eye(D_LATENT) + w.T @ w / SIGMA**2
    cov = np.linalg.inv(precision)
    means = (cov @ w.T @ (x - b).T / SIGMA**2).T
    log_px = stats.multivariate_normal(b, w @ w.T + SIGMA**2 * np.eye(D_DATA)).logpdf(x)
    return model, x.astype("float32"), means, cov, precision, log_px


@pytest.mark.slow
@pytest.mark.parametrize("family", ["full", "diagonal"])
def test_gap_parts_match_the_closed_forms(family):
    head = (tfvae.FullCovarianceGaussianPosterior(D_LATENT) if family == "full"
            else tfvae.DiagonalGaussianPosterior(D_LATENT))
    model, x, means, cov, precision, log_px = _linear_gaussian(head)
    q = model.encode(x)
    q_mean, q_cov = q.mean().numpy(), q.covariance().numpy()
    kl_phi = np.array([_kl_gauss(q_mean[i], q_cov[i], means[i], cov) for i in range(len(x))])
    best_cov = cov if family == "full" else np.diag(1.0 / np.diag(precision))
    kl_star = np.array([_kl_gauss(means[i], best_cov, means[i], cov) for i in range(len(x))])
    if family == "diagonal":
        assert kl_star.min() > 0.01  # the family really misses the posterior here

    got = gap.decompose_gap(model, x, steps=800, learning_rate=0.05, eval_samples=4000,
                            log_px_samples=4000, seed=0)

    # log p(x) (a defensive mixture around q*, K = 4,000 on a 2-D latent) is close to
    # exact, within its stated error.
    assert np.all(got["log_px_stderr"] < 0.01)
    assert np.all(np.abs(got["log_px"] - log_px) < 4 * got["log_px_stderr"] + 1e-3)
    # The two ELBOs match their closed forms within their Monte Carlo error.
    tolerance = 4 * got["elbo_stderr"] + 0.01
    assert np.all(np.abs(got["elbo"] - (log_px - kl_phi)) < tolerance)
    star_tolerance = 4 * got["elbo_optimized_stderr"] + 0.02  # + the optimiser's residual
    assert np.all(np.abs(got["elbo_optimized"] - (log_px - kl_star)) < star_tolerance)
    # The parts: approximation gap KL(q* ‖ p(z|x)) (0 for the full family), amortization
    # gap KL(q_φ ‖ p(z|x)) − KL(q* ‖ p(z|x)); batch means, with the errors above.
    mean_tolerance = 4 * np.sqrt(np.mean(got["elbo_optimized_stderr"] ** 2) / len(x)) + 0.02
    assert abs(np.mean(got["approximation_gap"]) - np.mean(kl_star)) < mean_tolerance
    amortization_tolerance = 4 * np.sqrt(np.mean(got["elbo_stderr"] ** 2) / len(x)) + 0.02
    assert abs(np.mean(got["amortization_gap"]) - np.mean(kl_phi - kl_star)) < (
        amortization_tolerance + mean_tolerance)
    np.testing.assert_allclose(got["approximation_gap"] + got["amortization_gap"], got["gap"],
                               rtol=1e-5, atol=1e-5)
    assert abs(got["last_improvement"]) < 0.05
    # `steps` is a maximum: the optimisation stopped once every example had converged.
    assert got["converged"].all() and got["optimization_trace"].shape == (got["steps"],)
    assert got["steps"] <= 800


def test_optimized_posterior_beats_the_encoder_on_every_example():
    model, x, means, cov, _, _ = _linear_gaussian(tfvae.FullCovarianceGaussianPosterior(D_LATENT))
    raw, trace = gap.optimize_posterior(model, x, steps=800, learning_rate=0.05, seed=3)
    parameters = model.posterior.parameters(raw)
    # q* is the exact posterior up to the optimiser's noise: KL(q* ‖ p(z|x)) is tiny,
    # while the encoder's q was nats away.
    loc, scale = parameters["loc"].numpy(), parameters["scale"].numpy()
    q = model.encode(x)
    for i in range(len(x)):
        kl_star = _kl_gauss(loc[i], scale[i] @ scale[i].T, means[i], cov)
        kl_phi = _kl_gauss(q.mean().numpy()[i], q.covariance().numpy()[i], means[i], cov)
        assert kl_star < 0.02 and kl_phi > 0.5, (i, kl_star, kl_phi)
    np.testing.assert_allclose(loc, means, atol=0.1)
    assert trace[-1] > trace[0]


@pytest.mark.slow
@pytest.mark.parametrize("kwargs", [{"posterior": "iaf"}, {"posterior": "hierarchical"},
                                    {"condition_dim": 3}])
def test_every_tensor_parameterised_family_decomposes(kwargs):
    model = tfvae.build_vae((4,), 2, hidden_units=(8,), seed=0, **kwargs)
    x = (np.random.default_rng(0).uniform(size=(5, 4)) > 0.5).astype("float32")
    y = np.arange(5) % 3 if "condition_dim" in kwargs else None
    got = gap.decompose_gap(model, x, y=y, steps=50, eval_samples=200, log_px_samples=200)
    for key in ("log_px", "elbo", "elbo_optimized", "approximation_gap", "amortization_gap"):
        assert got[key].shape == (5,) and np.all(np.isfinite(got[key]))
    # Optimising q for each x cannot do much worse than the encoder's q.
    assert np.mean(got["amortization_gap"]) > -3 * np.mean(got["elbo_stderr"])


@pytest.mark.slow
def test_repeated_calls_on_one_model_read_its_current_weights():
    # decompose_gap compiles its functions once per model: a later call must still see
    # weights changed in between (nothing of the model is frozen into the graphs).
    model = tfvae.build_vae((4,), 2, hidden_units=(4,), seed=0, prior="vamp")
    x = (np.random.default_rng(0).uniform(size=(5, 4)) > 0.5).astype("float32")
    kwargs = {"steps": 20, "eval_samples": 20, "log_px_samples": 20, "seed": 0}
    first = gap.decompose_gap(model, x, **kwargs)
    weights = model.get_weights()
    model.set_weights([w + 0.5 for w in weights])
    changed = gap.decompose_gap(model, x, **kwargs)
    model.set_weights(weights)
    again = gap.decompose_gap(model, x, **kwargs)
    for key in ("log_px", "elbo", "elbo_optimized", "raw_optimized"):
        assert not np.allclose(changed[key], first[key]), key
        np.testing.assert_array_equal(again[key], first[key])


@pytest.mark.parametrize("kwargs, match", [
    ({"steps": 0}, "steps"), ({"learning_rate": -1.0}, "learning_rate"),
    ({"num_samples": 0}, "num_samples"), ({"eval_samples": 0}, "eval_samples"),
    ({"seed": -1}, "seed"),
])
def test_bad_arguments_name_themselves(kwargs, match):
    model = tfvae.build_vae((4,), 2, hidden_units=(4,))
    with pytest.raises(ValueError, match=match):
        gap.decompose_gap(model, np.zeros((2, 4), "float32"), **kwargs)


# ---------------------------------------------------------------------------
# Converge or say so: bad encoders on a linear-Gaussian model with a diagonal head.


def _designed_model(precision, sigma=0.5, data_dim=4, n=6, seed=0):
    """A linear-Gaussian VAE whose posterior precision is `precision` (`Λ = I + WᵀW/σ²`),
    a diagonal head and a linear encoder; returns the model, x and the closed forms."""
    rng = np.random.default_rng(seed)
    d = len(precision)
    rotation = np.linalg.qr(rng.normal(size=(data_dim, data_dim)))[0][:, :d]
    w = rotation @ (sigma * np.linalg.cholesky(precision - np.eye(d)).T)
    b = rng.normal(size=data_dim)
    x = rng.normal(size=(n, d)) @ w.T + b + sigma * rng.normal(size=(n, data_dim))
    keras.utils.set_random_seed(1)
    head = tfvae.DiagonalGaussianPosterior(d)
    encoder = tfvae.MLP(head.params_size, (), name="encoder")
    decoder = tfvae.MLP(data_dim, (), name="decoder")
    model = tfvae.VAE(encoder, decoder, head,
                      tfvae.GaussianLikelihood((data_dim,), scale=sigma), seed=0)
    decoder.weights[0].assign(w.T.astype("float32"))
    decoder.weights[1].assign(b.astype("float32"))
    cov = np.linalg.inv(precision)
    gain = cov @ w.T / sigma**2  # posterior mean = gain (x − b)
    truth = {
        "log_px": stats.multivariate_normal(b, w @ w.T + sigma**2 * np.eye(data_dim)).logpdf(x),
        "means": (gain @ (x - b).T).T, "cov": cov, "gain": gain, "b": b,
        # KL(q* ‖ p(z|x)) of the best diagonal q (mean m, variances 1/Λ_jj).
        "approximation_gap": 0.5 * (np.sum(np.log(np.diag(precision)))
                                    - np.linalg.slogdet(precision)[1]),
    }
    return model, x.astype("float32"), truth


def _set_linear_encoder(model, kernel, bias, scale):
    """q_φ(z|x) = N(x kernel + bias, scale² I) through the diagonal head's softplus."""
    d = kernel.shape[1]
    raw_scale = np.log(np.expm1(scale))
    model.encoder.weights[0].assign(np.concatenate([kernel, np.zeros_like(kernel)], 1)
                                    .astype("float32"))
    model.encoder.weights[1].assign(np.concatenate([bias, np.full(d, raw_scale)])
                                    .astype("float32"))


def _elbo_closed_form(model, x, truth, raw):
    """ELBO(q) = log p(x) − KL(q ‖ p(z|x)) for raw diagonal-head parameters `[n, 2d]`."""
    parameters = model.posterior.parameters(raw)
    loc, scale = parameters["loc"].numpy(), parameters["scale"].numpy()
    kl = np.array([_kl_gauss(loc[i], np.diag(scale[i] ** 2), truth["means"][i], truth["cov"])
                   for i in range(len(x))])
    return truth["log_px"] - kl


_CORRELATED = 8.0 * (0.25 * np.eye(2) + 0.75)  # partial correlation −0.75, Λ − I ⪰ 0

_ENCODERS = {
    # (kernel, bias, scale) from the posterior's gain G and offset: mean = G (x − b).
    "wide": lambda t: (t["gain"].T, -t["gain"] @ t["b"], 3.0),
    "narrow and far": lambda t: (t["gain"].T, -t["gain"] @ t["b"] + 4.0, 0.05),
    "wrong sign": lambda t: (-t["gain"].T, t["gain"] @ t["b"], 0.3),
}


@pytest.fixture(scope="module")
def correlated():
    """`_designed_model(_CORRELATED)`, shared: each test sets the whole encoder (its only
    weights a test changes), and decompose_gap's compiled functions are reused."""
    return _designed_model(_CORRELATED)


@pytest.mark.slow
@pytest.mark.parametrize("encoder", ["narrow and far", "wrong sign"])  # "wide": the coverage test
def test_bad_encoders_converge_to_the_closed_form_split(correlated, encoder):
    model, x, truth = correlated
    _set_linear_encoder(model, *_ENCODERS[encoder](truth))
    elbo_phi = _elbo_closed_form(model, x, truth, model.encoder_output(x))
    tolerance = 0.01
    got = gap.decompose_gap(model, x, steps=3000, learning_rate=0.05, tolerance=tolerance,
                            eval_samples=2000, log_px_samples=2000, seed=1)
    assert got["converged"].all() and got["num_unconverged"] == 0, got["final_gain"]
    assert got["steps"] < 3000
    best_elbo = truth["log_px"] - truth["approximation_gap"]
    # Within the stated error: 3 Monte Carlo standard errors plus the optimiser's residual,
    # which a converged example keeps below a few window tolerances.
    residual = 3 * tolerance
    assert np.all(np.abs(got["elbo_optimized"] - best_elbo)
                  < 3 * got["elbo_optimized_stderr"] + residual)
    assert np.all(np.abs(got["approximation_gap"] - truth["approximation_gap"])
                  < 3 * got["approximation_gap_stderr"] + residual)
    assert np.all(np.abs(got["amortization_gap"] - (best_elbo - elbo_phi))
                  < 3 * got["amortization_gap_stderr"] + residual)
    assert np.all(np.abs(got["log_px"] - truth["log_px"]) < 3 * got["log_px_stderr"])
    assert np.all(got["log_px_ess"] > 100)


@pytest.mark.slow
def test_too_few_steps_are_flagged_not_reported_as_converged(correlated, caplog):
    model, x, truth = correlated
    _set_linear_encoder(model, *_ENCODERS["narrow and far"](truth))
    with caplog.at_level("WARNING", logger="tfvae.gap"):
        got = gap.decompose_gap(model, x, steps=20, eval_samples=40, log_px_samples=20)
    assert got["steps"] == 20 and got["optimization_trace"].shape == (20,)
    assert not got["converged"].any() and got["num_unconverged"] == len(x)
    assert np.all(got["final_gain"] > 0.01)
    # The flagged split really is wrong: the approximation gap is far above the truth.
    assert np.all(got["approximation_gap"] > truth["approximation_gap"] + 1.0)
    assert f"{len(x)} of {len(x)} examples did not converge" in caplog.text


# ---------------------------------------------------------------------------
# Honest errors: 95 % intervals cover the exact value, for each estimate's own target.


def _coverage(errors, stderrs):
    return float(np.mean(np.abs(np.asarray(errors)) < 1.96 * np.asarray(stderrs)))


@pytest.mark.slow
def test_gap_intervals_cover_the_closed_forms_with_a_correlated_posterior():
    # Partial correlation 0.75: the best diagonal q* is under-dispersed (the weights of
    # q* alone have infinite variance), the case where log p(x) used to be biased low.
    model, x, truth = _designed_model(_CORRELATED, n=20)
    _set_linear_encoder(model, *_ENCODERS["wide"](truth))
    elbo_phi = _elbo_closed_form(model, x, truth, model.encoder_output(x))
    errors = {key: [] for key in ("log_px", "elbo", "elbo_optimized", "gap",
                                  "approximation_gap", "amortization_gap")}
    stderrs = {key: [] for key in errors}
    to_optimum, optimum_stderr, mean_z = [], [], []
    for seed in range(5):  # 100 intervals per quantity
        got = gap.decompose_gap(model, x, steps=3000, learning_rate=0.05, seed=seed)
        assert got["converged"].all()
        elbo_star = _elbo_closed_form(model, x, truth, got["raw_optimized"])  # its own target
        exact = {"log_px": truth["log_px"], "elbo": elbo_phi, "elbo_optimized": elbo_star,
                 "gap": truth["log_px"] - elbo_phi,
                 "approximation_gap": truth["log_px"] - elbo_star,
                 "amortization_gap": elbo_star - elbo_phi}
        for key in errors:
            errors[key].append(got[key] - exact[key])
            stderrs[key].append(got[key + "_stderr"])
        # Against the family's optimum (the closed-form approximation gap).
        to_optimum.append(got["approximation_gap"] - truth["approximation_gap"])
        optimum_stderr.append(got["approximation_gap_stderr"])
        # The mean over these examples, with its Monte Carlo error (examples fixed).
        mean_z.append(np.mean(to_optimum[-1]) / np.sqrt(np.sum(optimum_stderr[-1] ** 2)) * len(x))
    for key in errors:
        assert 0.90 <= _coverage(errors[key], stderrs[key]) <= 0.99, key
    inside = np.abs(np.concatenate(to_optimum)) < 2 * np.concatenate(optimum_stderr)
    assert inside.mean() >= 0.90
    assert np.all(np.abs(mean_z) < 3), mean_z


def test_the_means_carry_the_monte_carlo_error_and_the_spread_between_examples_apart(
        monkeypatch):
    from tfvae import evaluation

    rng = np.random.default_rng(0)
    n = 8
    parts = {key: rng.normal(size=n) for key in (
        "approximation_gap", "amortization_gap", "log_px", "elbo", "elbo_optimized")}
    parts |= {key + "_stderr": rng.uniform(0.1, 0.5, size=n) for key in list(parts)}
    parts |= {"log_px_ess": np.array([5.0, 50, 500, 9, 10, 700, 800, 900]),
              "converged": np.array([True] * 6 + [False] * 2), "steps": 123,
              "last_improvement": 0.0}
    monkeypatch.setattr(evaluation.gap, "decompose_gap", lambda model, x, y, seed, **kw: parts)
    model = tfvae.build_vae((4,), 2, hidden_units=(4,))
    got = evaluation.gap_decomposition(model, np.zeros((n, 4), "float32"), num_examples=n)
    for key, name in (("approximation_gap", "approximation_gap"), ("log_px", "gap_log_px")):
        assert got[name] == pytest.approx(parts[key].mean())
        # Examples fixed: the errors of the n independent estimates, added in quadrature.
        assert got[name + "_mc_stderr"] == pytest.approx(
            np.sqrt(np.sum(parts[key + "_stderr"] ** 2)) / n)
        assert got[name + "_examples_stderr"] == pytest.approx(stats.sem(parts[key]))
    assert got["gap_unconverged"] == 2 and got["gap_steps"] == 123
    assert got["gap_log_px_low_ess"] == 2 and got["gap_log_px_ess_min"] == 5.0
    assert got["gap_log_px_ess_median"] == pytest.approx(275.0)
    assert "2 of 8 examples did not converge in 123 steps" in evaluation.gap_note(got)
    assert evaluation.gap_note({**got, "gap_unconverged": 0}) is None
