"""The gap split's accuracy against closed forms: convergence and the log p(x) proposal.

Two linear-Gaussian measurements (exact log p(x), exact best diagonal q*):

1. issue 21's case (d = 4, D = 7, σ = 0.6, an encoder with weights ½ N(0, 1) and
   scale 1.5): `decompose_gap` with the old fixed 300 steps and with the default
   convergence-checked run, against the closed-form approximation gap;
2. log p(x) with the KL-optimal diagonal q* as the proposal, alone and in the
   defensive mixture (`tfvae.marginal`), on a posterior with partial correlations
   0.75: mean z-score and the coverage of 95 % intervals over replicates.

    PYTHONPATH=. python benchmarks/bench_gap.py [--examples 20] [--replicates 40]
"""

import argparse
import time

import numpy as np


def issue_case(examples):
    import keras
    from scipy import stats

    import tfvae
    from tfvae import gap

    d, data_dim, sigma = 4, 7, 0.6
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(data_dim, d)), rng.normal(size=data_dim)
    x = (rng.normal(size=(examples, d)) @ w.T + b
         + sigma * rng.normal(size=(examples, data_dim))).astype("float32")
    keras.utils.set_random_seed(1)
    head = tfvae.DiagonalGaussianPosterior(d)
    encoder = tfvae.MLP(head.params_size, (), name="encoder")
    decoder = tfvae.MLP(data_dim, (), name="decoder")
    model = tfvae.VAE(encoder, decoder, head,
                      tfvae.GaussianLikelihood((data_dim,), scale=sigma), seed=0)
    decoder.weights[0].assign(w.T.astype("float32"))
    decoder.weights[1].assign(b.astype("float32"))
    encoder.weights[0].assign((0.5 * rng.normal(size=(data_dim, 2 * d))).astype("float32"))
    encoder.weights[1].assign(np.r_[np.zeros(d), np.full(d, np.log(np.expm1(1.5)))]
                              .astype("float32"))
    precision = np.eye(d) + w.T @ w / sigma**2
    truth = 0.5 * (np.sum(np.log(np.diag(precision))) - np.linalg.slogdet(precision)[1])
    log_px = stats.multivariate_normal(b, w @ w.T + sigma**2 * np.eye(data_dim)).logpdf(x)
    print(f"issue 21's case, {examples} examples: closed-form approximation gap {truth:.3f}")
    print("| run | steps | unconverged | approximation gap ± MC error "
          "| log p(x) error ± MC error | seconds |")
    print("| --- | --- | --- | --- | --- | --- |")
    for label, kwargs in (("300 steps (the old default)", {"steps": 300}),
                          ("default (converge or flag)", {})):
        start = time.perf_counter()
        got = gap.decompose_gap(model, x, **kwargs)
        seconds = time.perf_counter() - start
        n = len(x)
        approx_se = np.sqrt(np.sum(got["approximation_gap_stderr"] ** 2)) / n
        px_se = np.sqrt(np.sum(got["log_px_stderr"] ** 2)) / n
        print(f"| {label} | {got['steps']} | {got['num_unconverged']} | "
              f"{np.mean(got['approximation_gap']):.3f} ± {approx_se:.3f} | "
              f"{np.mean(got['log_px'] - log_px):+.3f} ± {px_se:.3f} | {seconds:.0f} |")


def proposal_coverage(examples, replicates, k=1000):
    import tensorflow as tf
    import tensorflow_probability as tfp
    from scipy import stats

    from tfvae import marginal, objectives

    tfd = tfp.distributions
    rng = np.random.default_rng(0)
    d, data_dim, sigma, rho = 3, 5, 0.5, 0.75
    precision = 8.0 * ((1 - rho) * np.eye(d) + rho)
    w = np.linalg.qr(rng.normal(size=(data_dim, data_dim)))[0][:, :d] @ (
        sigma * np.linalg.cholesky(precision - np.eye(d)).T)
    b = rng.normal(size=data_dim)
    x = (rng.normal(size=(examples, d)) @ w.T + b
         + sigma * rng.normal(size=(examples, data_dim))).astype("float32")
    means = (np.linalg.inv(precision) @ w.T @ (x - b).T / sigma**2).T
    log_px = stats.multivariate_normal(b, w @ w.T + sigma**2 * np.eye(data_dim)).logpdf(x)
    q_star = tfd.MultivariateNormalDiag(means.astype("float32"), np.tile(
        1 / np.sqrt(np.diag(precision)), (examples, 1)).astype("float32"))
    wt, bt = tf.constant(w.T, tf.float32), tf.constant(b, tf.float32)

    def decode(z):
        return tfd.Independent(tfd.Normal(z @ wt + bt, sigma), 1)

    prior = tfd.MultivariateNormalDiag(tf.zeros(d))
    sampler = lambda eps: q_star.mean() + q_star.stddev() * eps  # noqa: E731 (q*'s reparameterize)
    estimators = {
        "q* alone": tf.function(lambda seed: marginal.log_likelihood_from_weights(
            objectives.log_importance_weights(x, q_star, decode, prior, k, seed=seed,
                                              reparameterize=sampler)),
            autograph=False),
        "defensive mixture": tf.function(lambda seed: marginal.defensive_log_likelihood(
            x, q_star, decode, prior, k, seed=seed, chunk_size=500, reparameterize=sampler),
            autograph=False),
    }
    print(f"\nlog p(x), K = {k}, partial correlations {rho}, {examples} examples × "
          f"{replicates} replicates")
    print("| proposal | mean error (nats) | mean z | 95 % coverage | mean ESS |")
    print("| --- | --- | --- | --- | --- |")
    for label, estimate in estimators.items():
        errors, z, ess = [], [], []
        for seed in range(replicates):
            got = estimate(tf.constant([seed, 11]))
            error = got["log_px"].numpy() - log_px
            errors.append(error)
            z.append(error / got["stderr"].numpy())
            ess.append(got["ess"].numpy())
        errors, z = np.concatenate(errors), np.concatenate(z)
        print(f"| {label} | {errors.mean():+.4f} | {z.mean():+.2f} | "
              f"{np.mean(np.abs(z) < 1.96):.3f} | {np.mean(ess):.0f} |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=20)
    parser.add_argument("--replicates", type=int, default=40)
    args = parser.parse_args(argv)
    issue_case(args.examples)
    proposal_coverage(args.examples, args.replicates)


if __name__ == "__main__":
    main()
