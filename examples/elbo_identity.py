"""log p(x) = ELBO + KL(q‖p(z|x)) on a linear-Gaussian VAE. Run: python examples/elbo_identity.py [--quick] [--output DIR]"""

import csv
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import tfvae  # noqa: E402
from _common import example_parser, fresh_output_dir  # noqa: E402


def gaussian_log_density(x, mean, cov):
    """log N(x; mean, cov) for each row of x, in float64 numpy (via a Cholesky factor)."""
    x = np.asarray(x, np.float64)
    chol = np.linalg.cholesky(cov)
    white = np.linalg.solve(chol, (x - mean).T)  # L⁻¹ (x − m), shape [D, n]
    log_det = 2.0 * np.sum(np.log(np.diag(chol)))
    dim = x.shape[1]
    return -0.5 * (dim * np.log(2 * np.pi) + log_det + np.sum(white**2, axis=0))


def exact_log_px(x, w, b, sigma):
    """The linear-Gaussian marginal: p(x) = N(x; b, W Wᵀ + σ² I)."""
    cov = w @ w.T + sigma**2 * np.eye(w.shape[0])
    return gaussian_log_density(x, b, cov)


def kl_to_exact_posterior(q_mean, q_cov, x, w, b, sigma):
    """KL(q(z|x) ‖ p(z|x)) per example, in numpy.

    The exact posterior is p(z|x) = N(Σ Wᵀ(x − b)/σ², Σ) with Σ = (I + WᵀW/σ²)⁻¹.
    """
    d = w.shape[1]
    precision = np.eye(d) + w.T @ w / sigma**2
    post_cov = np.linalg.inv(precision)
    # Row n is Σ Wᵀ(x_n − b)/σ² (Σ is symmetric).
    post_mean = (np.asarray(x, np.float64) - b) @ w @ post_cov / sigma**2
    diff = post_mean - q_mean
    trace = np.einsum("ij,nji->n", precision, q_cov)
    mahalanobis = np.einsum("ni,ij,nj->n", diff, precision, diff)
    log_det_ratio = -np.linalg.slogdet(precision)[1] - np.linalg.slogdet(q_cov)[1]
    return 0.5 * (trace + mahalanobis - d + log_det_ratio)


class IdentityMonitor(keras.callbacks.Callback):
    """Before training and after every epoch: exact log p(x), ELBO, gap and the IS estimate."""

    def __init__(self, x, sigma, elbo_samples, ll_samples):
        super().__init__()
        self.x, self.sigma = x, sigma
        self.elbo_samples, self.ll_samples = elbo_samples, ll_samples
        self.rows = []

    def current_decoder(self):
        dense = self.model.decoder
        # Dense computes z @ kernel + bias, so the model's W (x = W z + b) is kernel.T.
        w = keras.ops.convert_to_numpy(dense.kernel).astype(np.float64).T
        b = keras.ops.convert_to_numpy(dense.bias).astype(np.float64)
        return w, b

    def record(self, epoch):
        w, b = self.current_decoder()
        log_px = exact_log_px(self.x, w, b, self.sigma)  # numpy, float64
        q = self.model.encode(self.x)
        q_mean = keras.ops.convert_to_numpy(q.mean()).astype(np.float64)
        q_cov = keras.ops.convert_to_numpy(q.covariance()).astype(np.float64)
        kl = kl_to_exact_posterior(q_mean, q_cov, self.x, w, b, self.sigma)  # numpy, exact
        terms = self.model.elbo(self.x, num_samples=self.elbo_samples, seed=epoch)
        elbo = np.asarray(terms["elbo"])
        estimate = np.asarray(self.model.log_likelihood(
            self.x, num_samples=self.ll_samples, seed=epoch, chunk_size=self.ll_samples
        ))
        gap = log_px - elbo
        row = {
            "epoch": epoch,
            "exact_log_px": float(np.mean(log_px)),
            "elbo": float(np.mean(elbo)),
            "gap": float(np.mean(gap)),
            "kl_to_posterior": float(np.mean(kl)),
            # Per example, gap − KL is only the ELBO's Monte Carlo error, so this
            # is the standard error of the mean gap around the exact KL.
            "gap_stderr": float(np.std(gap - kl) / np.sqrt(len(gap))),
            "log_likelihood_estimate": float(np.mean(estimate)),
        }
        self.rows.append(row)
        print(
            f"{epoch:5d}  {row['exact_log_px']:12.4f}  {row['elbo']:9.4f}  {row['gap']:8.4f}"
            f"  {row['kl_to_posterior']:10.4f}  {row['log_likelihood_estimate']:13.4f}"
        )

    def on_train_begin(self, logs=None):
        print("epoch  exact log p(x)       ELBO       gap  KL(q‖post)  IS log p(x)")
        self.record(0)

    def on_epoch_end(self, epoch, logs=None):
        self.record(epoch + 1)


def main(argv=None):
    parser = example_parser(__doc__)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument(
        "--posterior", choices=("full", "diagonal"), default="full",
        help="full-covariance q can match the exact Gaussian posterior; diagonal may not",
    )
    args = parser.parse_args(argv)
    epochs = args.epochs or (5 if args.quick else 25)
    n = 1000 if args.quick else 2000
    batch_size = 20 if args.quick else 50
    elbo_samples = 32 if args.quick else 100  # posterior samples per example for the ELBO
    ll_samples = 200 if args.quick else 1000  # importance samples for log p(x)
    output = fresh_output_dir(args.output, "elbo_identity")

    # A known linear-Gaussian model: z ~ N(0, I_d), x | z ~ N(W z + b, σ² I_D).
    data_dim, latent_dim, sigma = 5, 2, 0.5
    rng = np.random.default_rng(0)
    w_true = rng.normal(size=(data_dim, latent_dim))
    b_true = rng.normal(size=data_dim)
    z = rng.normal(size=(n, latent_dim))
    x = (z @ w_true.T + b_true + sigma * rng.normal(size=(n, data_dim))).astype("float32")
    print(f"data: {n} points, D={data_dim}, d={latent_dim}, σ={sigma}; log p(x) under the "
          f"true W, b: {np.mean(exact_log_px(x, w_true, b_true, sigma)):.4f} nats")

    # The same model family in tfvae: linear encoder, linear decoder, fixed σ.
    keras.utils.set_random_seed(0)
    if args.posterior == "full":
        posterior = tfvae.FullCovarianceGaussianPosterior(latent_dim)
    else:
        posterior = tfvae.DiagonalGaussianPosterior(latent_dim)
    likelihood = tfvae.GaussianLikelihood(event_shape=(data_dim,), scale=sigma)
    encoder = keras.layers.Dense(posterior.params_size, name="encoder")
    decoder = keras.layers.Dense(data_dim, name="decoder")
    model = tfvae.VAE(encoder, decoder, posterior, likelihood, num_samples=1, seed=0)
    steps = epochs * -(-n // batch_size)
    learning_rate = keras.optimizers.schedules.CosineDecay(2e-2, steps)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate))

    # Every row checks log p(x) = ELBO + KL(q(z|x) ‖ p(z|x)): the gap log p(x) − ELBO
    # matches the KL computed exactly in numpy, up to the ELBO's Monte Carlo noise.
    monitor = IdentityMonitor(x, sigma, elbo_samples, ll_samples)
    model.fit(x, epochs=epochs, batch_size=batch_size, callbacks=[monitor], verbose=0)

    path = os.path.join(output, "elbo_identity.csv")
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(monitor.rows[0]))
        writer.writeheader()
        writer.writerows(monitor.rows)
    first, last = monitor.rows[0], monitor.rows[-1]
    print(f"gap (= KL(q(z|x) || p(z|x)), mean over x): {first['gap']:.4f} at the start, "
          f"{last['gap']:.4f} at the end; table in {path}")

    result = {key: [row[key] for row in monitor.rows] for key in monitor.rows[0]}
    result.update(
        output=output,
        csv_path=path,
        true_log_px=float(np.mean(exact_log_px(x, w_true, b_true, sigma))),
        posterior=args.posterior,
    )
    return result


if __name__ == "__main__":
    main()
