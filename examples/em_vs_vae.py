"""EM versus a VAE on probabilistic PCA of the digits. Run: python examples/em_vs_vae.py [--quick] [--output DIR]"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import tfvae  # noqa: E402
from _common import example_parser, fresh_output_dir  # noqa: E402


# ---------------------------------------------------------------------------
# Probabilistic PCA in numpy: p(z) = N(0, I_q), p(x|z) = N(W z + μ, σ² I_D),
# so p(x) = N(μ, C) with C = W Wᵀ + σ² I_D.


def ppca_log_likelihood(x, w, mu, sigma2):
    """Mean exact log p(x) over the rows of x (nats per example), in float64."""
    x = np.asarray(x, np.float64)
    dim = x.shape[1]
    chol = np.linalg.cholesky(w @ w.T + sigma2 * np.eye(dim))
    white = np.linalg.solve(chol, (x - mu).T)
    log_det = 2.0 * np.sum(np.log(np.diag(chol)))
    return float(np.mean(-0.5 * (dim * np.log(2 * np.pi) + log_det + np.sum(white**2, axis=0))))


def ppca_em_step(s, w, sigma2):
    """One EM step (Tipping & Bishop, 1999, eqs. 29-30) given the sample covariance S.

    E-step: q(z_n) = p(z_n | x_n) = N(M⁻¹Wᵀ(x_n − μ), σ² M⁻¹) with M = WᵀW + σ²I,
    which makes the bound equal log p(x). M-step: maximise the expected complete-data
    log-likelihood; in terms of S it is
      W' = S W (σ² I + M⁻¹ Wᵀ S W)⁻¹,   σ'² = tr(S − S W M⁻¹ W'ᵀ) / D.
    """
    dim, q = w.shape
    m_inv = np.linalg.inv(w.T @ w + sigma2 * np.eye(q))
    sw = s @ w
    w_new = sw @ np.linalg.inv(sigma2 * np.eye(q) + m_inv @ w.T @ sw)
    sigma2_new = np.trace(s - sw @ m_inv @ w_new.T) / dim
    return w_new, sigma2_new


def ppca_em(x, w, mu, sigma2, iterations):
    """Runs EM from (W, μ, σ²).

    Returns:
      `((W, μ, σ²), curve)`: the final parameters and log p(x) at the start and after each step.
    """
    x = np.asarray(x, np.float64)
    curve = [ppca_log_likelihood(x, w, mu, sigma2)]
    mu = x.mean(axis=0)  # the maximum-likelihood μ for any W, σ²
    centred = x - mu
    s = centred.T @ centred / len(x)
    for _ in range(iterations):
        w, sigma2 = ppca_em_step(s, w, sigma2)
        curve.append(ppca_log_likelihood(x, w, mu, sigma2))
    return (w, mu, sigma2), curve


def ppca_closed_form(x, q):
    """The maximum-likelihood PPCA fit from the eigendecomposition of S (Tipping & Bishop)."""
    x = np.asarray(x, np.float64)
    mu = x.mean(axis=0)
    s = (x - mu).T @ (x - mu) / len(x)
    eigenvalues, eigenvectors = np.linalg.eigh(s)
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues, eigenvectors = eigenvalues[order], eigenvectors[:, order]
    sigma2 = float(np.mean(eigenvalues[q:]))
    w = eigenvectors[:, :q] * np.sqrt(np.maximum(eigenvalues[:q] - sigma2, 0.0))
    return w, mu, sigma2


# ---------------------------------------------------------------------------
# The same model as an amortised VAE in tfvae.


def vae_ppca_parameters(model):
    """(W, μ, σ²) of the VAE's linear decoder and shared-σ Gaussian likelihood."""
    decoder = model.decoder
    w = keras.ops.convert_to_numpy(decoder.kernel).astype(np.float64).T  # Dense: z @ kernel + bias
    mu = keras.ops.convert_to_numpy(decoder.bias).astype(np.float64)
    p = model.decode(np.zeros((1, model.latent_dim), "float32"))
    sigma = float(keras.ops.convert_to_numpy(p.stddev())[0, 0])
    return w, mu, sigma**2


class PPCALogLikelihood(keras.callbacks.Callback):
    """Records the exact log p(x) of the VAE's current decoder, and its ELBO, every epoch."""

    def __init__(self, x):
        super().__init__()
        self.x = x
        self.log_likelihood, self.elbo = [], []

    def record(self, epoch):
        self.log_likelihood.append(ppca_log_likelihood(self.x, *vae_ppca_parameters(self.model)))
        terms = self.model.elbo(self.x, num_samples=10, seed=epoch)
        self.elbo.append(float(np.mean(terms["elbo"])))

    def on_train_begin(self, logs=None):
        self.record(0)

    def on_epoch_end(self, epoch, logs=None):
        self.record(epoch + 1)


def main(argv=None):
    parser = example_parser(__doc__)
    parser.add_argument("--latent-dim", type=int, default=8)
    parser.add_argument("--em-iterations", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None, help="VAE epochs")
    args = parser.parse_args(argv)
    q = args.latent_dim
    em_iterations = args.em_iterations or (10 if args.quick else 100)
    epochs = args.epochs or (3 if args.quick else 60)
    output = fresh_output_dir(args.output, "em_vs_vae")

    (x_train, _), (x_val, _) = tfvae.data.load_digits()
    x_train = x_train.reshape(len(x_train), 64)
    x_val = x_val.reshape(len(x_val), 64)
    print(f"digits as 64-D vectors: train {x_train.shape}, validation {x_val.shape}; q = {q}")

    # The VAE: linear encoder to a diagonal Gaussian q(z|x), linear decoder to the
    # mean of p(x|z) = N(W z + μ, σ² I) with one learned σ ("shared").
    keras.utils.set_random_seed(0)
    posterior = tfvae.DiagonalGaussianPosterior(q)
    likelihood = tfvae.GaussianLikelihood((64,), scale="shared")
    model = tfvae.VAE(
        keras.layers.Dense(posterior.params_size, name="encoder"),
        keras.layers.Dense(64, name="decoder"),
        posterior,
        likelihood,
        seed=0,
    )

    # EM starts from the VAE's initial decoder, so both curves share their first point.
    start = vae_ppca_parameters(model)
    (w_em, mu_em, sigma2_em), em_curve = ppca_em(x_train, *start, iterations=em_iterations)
    print(f"EM: log p(x) {em_curve[0]:.3f} at the start, {em_curve[-1]:.3f} after "
          f"{em_iterations} iterations (nats per digit, training data)")

    steps = epochs * -(-len(x_train) // 64)
    learning_rate = keras.optimizers.schedules.CosineDecay(1e-2, steps)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate))
    tracker = PPCALogLikelihood(x_train)
    model.fit(x_train, epochs=epochs, batch_size=64, callbacks=[tracker], verbose=0)
    vae_curve, vae_elbo = tracker.log_likelihood, tracker.elbo
    print(f"VAE: log p(x) {vae_curve[0]:.3f} at the start, {vae_curve[-1]:.3f} after {epochs} "
          f"epochs (its ELBO {vae_elbo[-1]:.3f})")

    mle = ppca_closed_form(x_train, q)
    mle_train = ppca_log_likelihood(x_train, *mle)
    held_out = {
        "em": ppca_log_likelihood(x_val, w_em, mu_em, sigma2_em),
        "vae": ppca_log_likelihood(x_val, *vae_ppca_parameters(model)),
        "closed_form": ppca_log_likelihood(x_val, *mle),
    }
    sigma_vae = np.sqrt(vae_ppca_parameters(model)[2])
    print(f"closed-form maximum likelihood: {mle_train:.3f} (σ = {np.sqrt(mle[2]):.4f}); "
          f"EM σ = {np.sqrt(sigma2_em):.4f}, VAE σ = {sigma_vae:.4f}")
    print("held-out log p(x): " + ", ".join(f"{k} {v:.3f}" for k, v in held_out.items()))

    # Left: the whole run. Right: the last few nats below the maximum.
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, zoom in zip(axes, (False, True)):
        ax.plot(em_curve, "o-", ms=3, label="EM: exact log p(x) (per iteration)")
        ax.plot(vae_curve, "s-", ms=3, label="VAE: exact log p(x) (per epoch)")
        ax.plot(vae_elbo, ":", color="C1", label="VAE: ELBO (per epoch)")
        ax.axhline(mle_train, color="k", ls="--", lw=1, label="closed-form maximum likelihood")
        ax.set_xlabel("EM iteration / VAE epoch")
        if zoom:
            ax.set_ylim(mle_train - 3.0, mle_train + 0.5)
            ax.set_title("near the maximum")
        else:
            ax.set_ylabel("log p(x), nats per digit (training data)")
            ax.set_title(f"Probabilistic PCA on 8×8 digits (q = {q})")
            ax.legend(loc="lower right")
    fig.tight_layout()
    plot_path = os.path.join(output, "em_vs_vae.png")
    fig.savefig(plot_path, dpi=100)
    plt.close(fig)

    result = {
        "output": output,
        "plot_path": plot_path,
        "em_log_likelihood": em_curve,
        "vae_log_likelihood": vae_curve,
        "vae_elbo": vae_elbo,
        "closed_form_log_likelihood": mle_train,
        "held_out_log_likelihood": held_out,
    }
    with open(os.path.join(output, "curves.json"), "w") as f:
        json.dump({k: v for k, v in result.items() if k != "output"}, f, indent=1)
    print(f"wrote {plot_path}")
    return result


if __name__ == "__main__":
    main()
