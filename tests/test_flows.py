"""IAF posteriors: autoregressive masks, exact log-determinants and inverses, and the model."""

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
from scipy import stats

import tfvae
from tfvae import flows, objectives

tfd = tfp.distributions


def _head(d=4, steps=2):
    head = tfvae.IAFPosterior(d, num_steps=steps, hidden_units=12, context_dim=3)
    # Larger random MADE weights than the near-identity start, so the flow matters.
    rng = np.random.default_rng(0)
    for layer in head.made_hidden + head.made_output:
        layer.kernel.assign(rng.normal(size=layer.kernel.shape).astype("float32") * 0.5)
        layer.bias.assign(rng.normal(size=layer.bias.shape).astype("float32") * 0.3)
    params = tf.constant(rng.normal(size=(5, head.params_size)), tf.float32)
    return head, params


def test_made_outputs_depend_only_on_earlier_latents():
    d, c, hidden = 5, 2, 16
    to_hidden, to_output = flows.made_masks(d, c, hidden)
    # Connectivity of output j to input i through the masks (path counts).
    connectivity = (to_hidden @ to_output)[:d]  # rows: z_i, columns: [m_1..m_d, s_1..s_d]
    for block in (connectivity[:, :d], connectivity[:, d:]):
        assert np.all(block[np.tril_indices(d)] == 0)  # no z_i reaches an output j ≤ i
        assert np.all(block[np.triu_indices(d, 1)] > 0)  # every z_i reaches outputs j > i
    assert np.all((to_hidden @ to_output)[d:] > 0)  # the context reaches every output


def test_flow_density_matches_the_change_of_variables_formula():
    head, params = _head()
    parameters = head.parameters(params)
    q = head.distribution(parameters)
    eps = tf.constant(np.random.default_rng(1).normal(size=(5, 4)), tf.float32)
    z0 = parameters["loc"] + parameters["scale"] * eps
    with tf.GradientTape() as tape:
        tape.watch(z0)
        z = head.reparameterize(parameters, eps * 0 + (z0 - parameters["loc"]) / parameters["scale"])
    jacobian = tape.batch_jacobian(z, z0).numpy().astype(np.float64)
    log_det = np.linalg.slogdet(jacobian)[1]
    base = stats.norm.logpdf(z0.numpy(), parameters["loc"].numpy(), parameters["scale"].numpy()).sum(-1)
    # A fresh tensor (no bijector cache): log q uses the exact sequential inverse.
    z_fresh = tf.constant(z.numpy())
    np.testing.assert_allclose(q.log_prob(z_fresh), base - log_det, rtol=1e-4, atol=1e-4)
    assert np.max(np.abs(log_det)) > 0.05  # the flow is not the identity


def test_inverse_recovers_the_base_sample_and_sampling_paths_agree():
    head, params = _head(d=3, steps=3)
    parameters = head.parameters(params)
    q, sampler = head.sampler(parameters)
    eps = tf.constant(np.random.default_rng(2).normal(size=(7, 5, 3)), tf.float32)
    z = objectives.posterior_sample(q, 7, noise=eps, reparameterize=sampler)
    np.testing.assert_allclose(z, head.reparameterize(parameters, eps), rtol=1e-5, atol=1e-6)
    z0 = q.bijector.inverse(tf.constant(z.numpy()))
    np.testing.assert_allclose(z0, parameters["loc"] + parameters["scale"] * eps, rtol=1e-4, atol=1e-5)


def _linear_gaussian(rng):
    """x = W z + b + σ ε with z ~ N(0, I₂): data `[3, 4]`, exact log p(x), decode, p(z)."""
    w, b, sigma = rng.normal(size=(4, 2)), rng.normal(size=4), 0.5
    x = rng.normal(size=(3, 4))
    log_px = stats.multivariate_normal(b, w @ w.T + sigma**2 * np.eye(4)).logpdf(x)
    wt, bt = tf.constant(w, tf.float32), tf.constant(b, tf.float32)

    def decode(z):
        return tfd.Independent(tfd.Normal(tf.linalg.matvec(wt, z) + bt, sigma), 1)

    return x, log_px, decode, tfvae.StandardNormalPrior(2).distribution()


def test_kl_is_monte_carlo_and_elbo_is_below_log_evidence_on_a_linear_gaussian_model():
    rng = np.random.default_rng(3)
    x, log_px, decode, prior = _linear_gaussian(rng)
    head = tfvae.IAFPosterior(2, num_steps=2, hidden_units=8, context_dim=2)
    params = tf.constant(rng.normal(size=(3, head.params_size)), tf.float32)
    q = head(params)
    with pytest.raises(ValueError, match="no analytic KL"):
        tfvae.kl_divergence(q, prior, kl="analytic")
    terms = tfvae.elbo(tf.constant(x, tf.float32), q, decode, prior, num_samples=20_000, seed=1)
    assert np.all(terms["elbo"].numpy() < log_px)


@pytest.fixture(scope="module")
def digits():
    return tfvae.data.load_digits()


@pytest.mark.slow
def test_iaf_vae_trains(digits):
    (x_train, _), (x_val, _) = digits
    model = tfvae.build_vae((8, 8, 1), 4, hidden_units=(64,), posterior="iaf", seed=0)
    model.compile(optimizer=keras.optimizers.Adam(2e-3))
    before = model.evaluate(x_val, verbose=0, return_dict=True)
    model.fit(x_train, epochs=3, batch_size=64, verbose=0)
    after = model.evaluate(x_val, verbose=0, return_dict=True)
    assert after["elbo"] > before["elbo"] + 5
    # (Saving, XLA, SavedModel and ONNX: test_conformance.py, variant "iaf".)


# ---------------------------------------------------------------------------
# Planar flows.


def _planar(d=3, steps=3, seed=0):
    head = tfvae.PlanarFlowPosterior(d, num_steps=steps)
    rng = np.random.default_rng(seed)
    params = tf.constant(rng.normal(size=(5, head.params_size)) * 1.5, tf.float32)
    return head, head.parameters(params)


def test_planar_density_matches_the_change_of_variables_formula_and_the_inverse_is_exact():
    head, parameters = _planar()
    q = head.distribution(parameters)
    eps = tf.constant(np.random.default_rng(1).normal(size=(5, 3)), tf.float32)
    z0 = parameters["loc"] + parameters["scale"] * eps
    with tf.GradientTape() as tape:
        tape.watch(z0)
        z = head.reparameterize(parameters, (z0 - parameters["loc"]) / parameters["scale"])
    jacobian = tape.batch_jacobian(z, z0).numpy().astype(np.float64)
    log_det = np.linalg.slogdet(jacobian)[1]
    base = stats.norm.logpdf(z0.numpy(), parameters["loc"].numpy(), parameters["scale"].numpy()).sum(-1)
    z_fresh = tf.constant(z.numpy())  # no bijector cache: the bisection inverse is used
    np.testing.assert_allclose(q.log_prob(z_fresh), base - log_det, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(q.bijector.inverse(z_fresh), z0, rtol=1e-4, atol=1e-4)
    assert np.max(np.abs(log_det)) > 0.05  # the flow is not the identity
    # Each step keeps wᵀû ≥ −1, the invertibility condition.
    for step in head._steps(parameters):
        assert np.all(step._c.numpy() >= -1.0 - 1e-6)


def test_planar_samples_agree_and_the_elbo_is_below_log_evidence():
    rng = np.random.default_rng(3)
    x, log_px, decode, prior = _linear_gaussian(rng)
    head = tfvae.PlanarFlowPosterior(2, num_steps=2)
    parameters = head.parameters(tf.constant(rng.normal(size=(3, head.params_size)), tf.float32))
    q, sampler = head.sampler(parameters)
    eps = tf.constant(rng.normal(size=(4, 3, 2)), tf.float32)
    np.testing.assert_allclose(objectives.posterior_sample(q, noise=eps, reparameterize=sampler),
                               head.reparameterize(parameters, eps), rtol=1e-5, atol=1e-6)
    terms = tfvae.elbo(tf.constant(x, tf.float32), q, decode, prior, num_samples=20_000, seed=1,
                       reparameterize=sampler)
    assert np.all(terms["elbo"].numpy() < log_px)
    iwae = tfvae.iwae_bound(tf.constant(x, tf.float32), q, decode, prior, 2000, seed=2,
                            reparameterize=sampler).numpy()
    assert np.all(terms["elbo"].numpy() < iwae)  # (one draw of a poor q's IWAE may exceed log p(x))


@pytest.mark.slow
def test_planar_vae_trains(digits):
    (x_train, _), (x_val, _) = digits
    model = tfvae.build_vae((8, 8, 1), 4, hidden_units=(64,), posterior="planar", seed=0)
    model.compile(optimizer=keras.optimizers.Adam(2e-3))
    before = model.evaluate(x_val, verbose=0, return_dict=True)
    model.fit(x_train, epochs=3, batch_size=64, verbose=0)
    assert model.evaluate(x_val, verbose=0, return_dict=True)["elbo"] > before["elbo"] + 5
    # (Saving, XLA, SavedModel and ONNX: test_conformance.py, variant "planar".)


def test_planar_inverse_has_the_exact_gradient_and_steps_stay_invertible():
    from tfvae.flows import _PlanarStep

    rng = np.random.default_rng(5)
    step = _PlanarStep(tf.constant(rng.normal(size=(4, 3)) * 2, tf.float32),
                       tf.constant(rng.normal(size=(4, 3)) * 2, tf.float32),
                       tf.constant(rng.normal(size=(4, 1)), tf.float32))
    y = tf.constant(rng.normal(size=(4, 3)), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(y)
        z = step.inverse(y)
    jacobian = tape.batch_jacobian(z, y).numpy()
    z = tf.constant(z.numpy())  # a fresh tensor: no bijector cache
    with tf.GradientTape() as tape:
        tape.watch(z)
        y_again = step.forward(z)
    forward_jacobian = tape.batch_jacobian(y_again, z).numpy()
    # The inverse's Jacobian is the inverse of the forward Jacobian at z.
    np.testing.assert_allclose(jacobian, np.linalg.inv(forward_jacobian), rtol=1e-3, atol=1e-4)
    # Even for wᵀu far below −1 the step keeps wᵀû > −1.
    extreme = _PlanarStep(tf.constant([[-9.0, 0.0]]), tf.constant([[2.0, 0.0]]), tf.constant([[0.0]]))
    assert extreme._c.numpy().item() > -1.0
