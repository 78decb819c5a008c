"""Throughput of the importance-sampled log p(x) against the bare decoder network.

    python benchmarks/bench_log_likelihood.py --data ../shared/data/binarized_mnist_trainval.npz

A 784–512–256–32 MLP VAE (Bernoulli likelihood) scores binarised digits with K
importance samples per example. The ceiling is the same decoder network alone,
compiled, on the same number of rows per call (batch × chunk); the ratio of
decoder evaluations per second (examples × K / seconds) is the overhead of
everything else (encoder, noise, densities, log-sum-exp). Both are timed in the
same process, interleaved, medians over repeats. The weights do not matter for
throughput, so the model is untrained. Without `--data`, the built-in digits are
tiled to 784 pixels (same shapes, offline).
"""

import argparse
import json
import os
import time

import numpy as np
import tensorflow as tf

import tfvae


def _data(path, n):
    if path:
        with np.load(path) as f:
            x = f["x_valid"].reshape(len(f["x_valid"]), -1).astype("float32")
    else:
        (x, _), _ = tfvae.data.load_digits()
        x = np.tile((x.reshape(len(x), -1) > 0.5).astype("float32"), (1, 13))[:, :784]
    return x[:n]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="binarized_mnist_trainval.npz (x_valid)")
    parser.add_argument("--examples", type=int, default=500, help="examples for the rate")
    parser.add_argument("--k", type=int, default=1000, help="importance samples for the rate")
    parser.add_argument("--batch", type=int, default=100, help="examples per call")
    parser.add_argument("--chunk", type=int, default=100, help="samples per chunk")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--full", action="store_true",
                        help="also time K = 5,000 over all 10,000 validation digits")
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results",
                                                         "log_likelihood.json"))
    args = parser.parse_args(argv)

    x = _data(args.data, max(args.examples, 10000 if args.full else 0))
    model = tfvae.build_vae((784,), 32, hidden_units=(512, 256), seed=0)
    rows = args.batch * args.chunk
    z = tf.random.normal([rows, 32], seed=1)

    @tf.function(jit_compile=True)
    def decoder_xla(z):
        return model.decoder(z)

    @tf.function
    def decoder_graph(z):
        return model.decoder(z)

    def time_decoder(fn):
        calls = max(1, args.examples * args.k // rows)
        fn(z)  # trace
        start = time.perf_counter()
        for _ in range(calls):
            fn(z).numpy()
        return calls * rows / (time.perf_counter() - start)

    def time_log_px():
        batches = [x[i : i + args.batch] for i in range(0, args.examples, args.batch)]
        model.log_likelihood(batches[0], num_samples=args.k, chunk_size=args.chunk, seed=0)
        start = time.perf_counter()
        for i, batch in enumerate(batches):
            model.log_likelihood(batch, num_samples=args.k, chunk_size=args.chunk, seed=i).numpy()
        return args.examples * args.k / (time.perf_counter() - start)

    rates = {"decoder_xla": [], "decoder_graph": [], "log_px": []}
    for _ in range(args.repeats):  # interleaved
        rates["decoder_xla"].append(time_decoder(decoder_xla))
        rates["decoder_graph"].append(time_decoder(decoder_graph))
        rates["log_px"].append(time_log_px())
    medians = {name: float(np.median(values)) for name, values in rates.items()}
    ceiling = max(medians["decoder_xla"], medians["decoder_graph"])
    result = {
        "setting": vars(args),
        "decoder_evaluations_per_second": medians,
        "ratio_to_bare_decoder": medians["log_px"] / ceiling,
    }
    print(f"bare decoder (XLA):   {medians['decoder_xla']:>12,.0f} rows/s")
    print(f"bare decoder (graph): {medians['decoder_graph']:>12,.0f} rows/s")
    print(f"log p(x):             {medians['log_px']:>12,.0f} decoder evaluations/s "
          f"= {result['ratio_to_bare_decoder']:.2f}x the faster bare decoder")
    if args.full:
        start = time.perf_counter()
        estimates = tfvae.evaluation.evaluate_model(model, x[:10000], num_samples=5000, seed=0,
                                                    batch_size=args.batch, verbose=1)
        result["full_k5000_10k_seconds"] = time.perf_counter() - start
        result["full_log_px"] = estimates["log_px"]
        print(f"K = 5,000 over 10,000 digits: {result['full_k5000_10k_seconds']:.0f} s")
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
