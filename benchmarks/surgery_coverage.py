"""Coverage of ELBO surgery's Monte Carlo errors against quadrature, by regime.

    python benchmarks/surgery_coverage.py [--examples 20] [--scales 0.05 0.07]
                                          [--draws 4] [--replicates 200]

A 2-D diagonal-Gaussian encoder, linear in 3-D Gaussian data (the model of the
tests), on `--examples` points; its finite-set surgery terms (the mixture of
the N posteriors against N(0, I)) by Gauss–Hermite quadrature (60² nodes per
component, checked against 90²). `elbo_surgery` is then run with
`--replicates` seeds at `--draws` draws per example, and the share of 95 %
intervals (± 1.96 `*_mc_stderr`) that cover the quadrature value is printed
per term. Narrow `--scales` put the information near its ceiling log N, where
the per-draw values are skewed. Not part of the tests (the test runs one
regime: tests/test_evaluation.py).
"""

import argparse
import json
import os

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

TERMS = ("mutual_information", "marginal_kl", "kl_estimate", "total_correlation",
         "dimension_wise_kl")


def build(n, scale, seed=0):
    import tfvae

    rng = np.random.default_rng(seed)
    big, small = 3, 2
    a, c = rng.normal(size=(small, big)), 0.3 * rng.normal(size=small)
    mu, root = rng.normal(size=big), 0.5 * rng.normal(size=(big, big))
    x = rng.multivariate_normal(mu, root @ root.T + 0.2 * np.eye(big), size=n).astype("float32")
    posterior = tfvae.DiagonalGaussianPosterior(small)
    encoder = tfvae.MLP(posterior.params_size, (), name="encoder")
    model = tfvae.VAE(encoder, tfvae.MLP(big, (), name="decoder"), posterior,
                      tfvae.GaussianLikelihood((big,), scale=1.0), seed=0)
    kernel, bias = np.zeros((big, 2 * small)), np.zeros(2 * small)
    kernel[:, :small], bias[:small] = a.T, c
    bias[small:] = np.log(np.expm1(np.asarray(scale) - posterior.min_scale))
    encoder.weights[0].assign(kernel.astype("float32"))
    encoder.weights[1].assign(bias.astype("float32"))
    return model, x


def _log_normal(z, loc, scale):
    return -0.5 * np.square((z - loc) / scale) - np.log(scale) - 0.5 * np.log(2 * np.pi)


def _logsumexp(values, axis):
    top = values.max(axis, keepdims=True)
    return np.squeeze(top, axis) + np.log(np.exp(values - top).sum(axis))


def quadrature(loc, scale, nodes):
    t, w = np.polynomial.hermite.hermgauss(nodes)
    t, w = t * np.sqrt(2.0), w / np.sqrt(np.pi)
    grid = np.stack(np.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)
    weights = np.outer(w, w).reshape(-1)
    n = len(loc)
    terms = dict.fromkeys(TERMS, 0.0)
    for i in range(n):
        z = loc[i] + scale[i] * grid
        per_dimension = _log_normal(z[:, None, :], loc[None], scale[None])
        own = per_dimension[:, i].sum(-1)
        log_q = _logsumexp(per_dimension.sum(-1), 1) - np.log(n)
        product = (_logsumexp(per_dimension, 1) - np.log(n)).sum(-1)
        log_p = _log_normal(z, 0.0, 1.0).sum(-1)
        for key, values in zip(TERMS, (own - log_q, log_q - log_p, own - log_p,
                                       log_q - product, product - log_p)):
            terms[key] += weights @ values / n
    return terms


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=20)
    parser.add_argument("--scales", type=float, nargs=2, default=[0.05, 0.07])
    parser.add_argument("--draws", type=int, default=4)
    parser.add_argument("--replicates", type=int, default=200)
    args = parser.parse_args(argv)
    import logging

    from tfvae import evaluation

    logging.getLogger("tfvae.surgery").setLevel(logging.ERROR)
    model, x = build(args.examples, args.scales)
    q = model.encode(x)
    loc, scale = q.mean().numpy().astype(np.float64), q.stddev().numpy().astype(np.float64)
    exact, finer = quadrature(loc, scale, 60), quadrature(loc, scale, 90)
    covered = dict.fromkeys(TERMS, 0)
    for seed in range(args.replicates):
        got = evaluation.elbo_surgery(model, x, num_samples=args.draws, seed=seed)
        for key in TERMS:
            covered[key] += abs(got[key] - exact[key]) <= 1.96 * got[key + "_mc_stderr"]
    print(json.dumps({
        "examples": args.examples, "scales": args.scales, "draws": args.draws,
        "replicates": args.replicates, "log_n": float(np.log(args.examples)),
        "exact": exact, "quadrature_change_60_to_90": max(abs(exact[k] - finer[k]) for k in TERMS),
        "coverage": {key: count / args.replicates for key, count in covered.items()},
    }, indent=1))


if __name__ == "__main__":
    main()
