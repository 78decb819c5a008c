"""Free bits per group of latents (Kingma et al., 2016), checked against numpy."""

import numpy as np
import pytest
import tensorflow as tf

import tfvae
from tfvae import objectives


def _kl_per_dim(loc, scale):
    return 0.5 * (loc**2 + scale**2 - 1.0) - np.log(scale)


def test_group_penalty_is_the_sum_of_clamped_batch_means_and_stops_inactive_gradients():
    rng = np.random.default_rng(0)
    loc = tf.Variable((rng.normal(size=(6, 4)) * [[2.0, 2.0, 0.05, 0.05]]).astype("float32"))
    scale = tf.constant(np.full((6, 4), 0.9, "float32"))
    x = tf.constant((rng.uniform(size=(6, 3)) > 0.5).astype("float32"))
    kernel = tf.constant(rng.normal(size=(4, 3)).astype("float32"))

    def decode(z):
        return tfvae.BernoulliLikelihood((3,))(z @ kernel)

    def groups(z):  # two groups: dims {0, 1} (informative) and {2, 3} (nearly collapsed)
        per_dim = 0.5 * (loc**2 + scale**2 - 1.0) - tf.math.log(scale)
        return tf.stack([tf.reduce_sum(per_dim[:, :2], -1), tf.reduce_sum(per_dim[:, 2:], -1)], -1)

    prior = tfvae.StandardNormalPrior(4).distribution()
    free_bits = 0.5
    with tf.GradientTape() as tape:
        q = tfvae.DiagonalGaussianPosterior(4).distribution({"loc": loc, "scale": scale})
        terms = objectives.elbo(x, q, decode, prior, free_bits=free_bits, group_kl=groups, seed=0)
        loss = tf.reduce_mean(terms["loss"])
    kl_groups = np.stack([_kl_per_dim(loc.numpy(), 0.9)[:, :2].sum(-1),
                          _kl_per_dim(loc.numpy(), 0.9)[:, 2:].sum(-1)], -1)
    np.testing.assert_allclose(terms["kl_groups"], kl_groups, rtol=1e-5)
    group_means = kl_groups.mean(0)
    assert group_means[0] > free_bits > group_means[1]  # one active, one clamped group
    expected = -terms["reconstruction"].numpy().mean() + np.maximum(group_means, free_bits).sum()
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    np.testing.assert_allclose(terms["kl"], kl_groups.sum(-1), rtol=1e-5)  # the reported KL
    # The clamped group's KL gets no gradient: only the likelihood pulls dims 2, 3.
    gradient = tape.gradient(loss, loc).numpy()
    with tf.GradientTape() as tape:
        q = tfvae.DiagonalGaussianPosterior(4).distribution({"loc": loc, "scale": scale})
        reconstruction_only = -tf.reduce_mean(
            objectives.elbo(x, q, decode, prior, seed=0)["reconstruction"])
    reference = tape.gradient(reconstruction_only, loc).numpy()
    np.testing.assert_allclose(gradient[:, 2:], reference[:, 2:], rtol=1e-5, atol=1e-7)
    assert np.max(np.abs(gradient[:, :2] - reference[:, :2])) > 1e-3


def test_model_groups_split_latent_dimensions_evenly():
    model = tfvae.build_vae((5,), 5, hidden_units=(8,), free_bits=0.3, free_bits_groups=2, seed=0)
    x = (np.random.default_rng(0).uniform(size=(7, 5)) > 0.5).astype("float32")
    parameters = model.posterior_parameters(tf.constant(x))
    groups = model.posterior.kl_groups(parameters, model.prior, model.free_bits_groups)(None).numpy()
    per_dim = _kl_per_dim(parameters["loc"].numpy(), parameters["scale"].numpy())
    np.testing.assert_allclose(groups, np.stack([per_dim[:, :3].sum(-1), per_dim[:, 3:].sum(-1)], -1),
                               rtol=1e-5, atol=1e-6)
    model.compile(optimizer="adam")
    history = model.fit(x, epochs=2, verbose=0).history
    assert np.isfinite(history["loss"]).all()
    assert model.get_config()["free_bits_groups"] == 2


@pytest.mark.parametrize("kwargs, match", [
    ({"free_bits_groups": 0, "free_bits": 0.1}, "free_bits_groups"),
    ({"free_bits_groups": 2}, "needs free_bits > 0"),
    ({"free_bits_groups": 2, "free_bits": 0.1, "objective": "iwae"}, "objective='elbo'"),
    ({"free_bits_groups": 4, "free_bits": 0.1}, "at most latent_dim=3"),
    ({"free_bits_groups": 2, "free_bits": 0.1, "posterior": "full"}, "diagonal Gaussian posterior"),
    ({"free_bits_groups": 2, "free_bits": 0.1, "prior": "mixture"}, "standard normal prior"),
])
def test_free_bits_groups_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tfvae.build_vae((4,), 3, hidden_units=(4,), **kwargs)


def test_a_hierarchy_clamps_the_total_kl_per_example_unless_grouped():
    x = (np.random.default_rng(1).uniform(size=(6, 5)) > 0.5).astype("float32")
    losses = {}
    for groups in (None, 2):
        model = tfvae.build_vae((5,), 3, hidden_units=(8,), posterior="hierarchical",
                                free_bits=4.0, free_bits_groups=groups, seed=0)
        terms = model.elbo_terms(tf.constant(x), seed=3)
        losses[groups] = terms["loss"].numpy()
        kl_groups = np.stack([terms["kl_z1"].numpy(), terms["kl_z2"].numpy()], -1)
        reconstruction = terms["reconstruction"].numpy()
    np.testing.assert_allclose(losses[None], -reconstruction + np.maximum(kl_groups.sum(-1), 4.0),
                               rtol=1e-5)
    active = kl_groups.mean(0) > 4.0
    expected = -reconstruction + np.where(active, kl_groups, 4.0).sum(-1)
    np.testing.assert_allclose(losses[2], expected, rtol=1e-5)
