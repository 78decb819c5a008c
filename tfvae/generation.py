"""`Generation`: the `VAE` methods that make data, new (`sample`) or from given data
(`reconstruct`), through the model's public seams (a mixin, as `tfvae.bounds`)."""

from tfvae import _checks
from tfvae import objectives
from tfvae import random as tfvae_random

__all__ = ["Generation"]


class Generation:
    """`sample`, `sample_latents` and `reconstruct` for `tfvae.VAE` (a mixin before
    `keras.Model`); they use the model's `prior`, `conditioning`, `decode_mean`,
    `likelihood_fn`, `latent_code`, `prepare_inputs` and `posterior_sampler`."""

    def sample(self, n, seed=None, mean=True, y=None):
        """Generates `n` examples `[n] + event_shape`: z ~ p(z), then the likelihood's
        mean (or a sample if not `mean`). A conditional model takes one label or
        vector `y` for all `n`, or `n` of them."""
        n = _checks.positive_int("n", n)
        y = self.conditioning.prepare(y, n)
        seed = tfvae_random.make_seed(seed)
        z = self.sample_latents(n, seed=seed)
        if mean:
            return self.decode_mean(z, y)
        return self.likelihood_fn(y)(z).sample(seed=tfvae_random.fold_in(seed, 1))

    def sample_latents(self, n, seed=None):
        """`n` latents z ~ p(z) `[n, latent_dim]` (what `sample` decodes, for the same seed)."""
        n = _checks.positive_int("n", n)
        return objectives.posterior_sample(
            self.prior.distribution(), n, seed=tfvae_random.make_seed(seed), reparameterize=(
                self.prior.reparameterize if self.prior.can_reparameterize else None))

    def reconstruct(self, x, sample_latent=False, seed=None, y=None):
        """Reconstructs `x`: the likelihood's mean at E_q[z] (or at one z ~ q if `sample_latent`)."""
        if sample_latent:
            q, reparameterize = self.posterior_sampler(*self.prepare_inputs(x, y))
            z = objectives.posterior_sample(q, 1, seed=seed, reparameterize=reparameterize)[0]
        else:
            z = self.latent_code(x, y)
        return self.decode_mean(z, self.conditioning.prepare(y, z.shape[0]))
