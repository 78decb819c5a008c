"""Training speed and quality: tfvae `fit` against a keras.io-style Keras VAE, a hand-written
`tf.function` loop and PyTorch, on the same in-memory data and model.

    python benchmarks/bench_training.py --mnist ../shared/data/mnist_t10k.npz
    python benchmarks/bench_training.py --mnist ../shared/data/mnist_t10k.npz --scaling
    python benchmarks/bench_training.py --mnist ../shared/data/mnist_t10k.npz --jit \
        --steps-per-execution 16 --baseline-same-flags --implementations tfvae,keras_io \
        --paired-epochs 20

Each implementation runs in its own subprocess (clean timing and peak memory).
Models: the classic VAE (D–400–20 MLP, Bernoulli likelihood, Adam 1e-3) and a
small conv VAE. Reported: examples per second over the median timed epoch
(`fit`; after one warm-up epoch that includes tracing/compilation) or over all
timed epochs (tf_loop, torch), the ratio to keras_io paired repeat by repeat,
held-out ELBO in nats, and peak resident memory, plus one summary line with
both models' flags. `--paired-epochs N` also times tfvae against keras_io with
the same flags in one process, alternating single epochs (the least noisy
ratio on a shared machine). Without --mnist it uses the built-in 8×8 digits.
Not part of the test suite.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

IMPLEMENTATIONS = ("tfvae", "keras_io", "tf_loop", "torch")


# ---------------------------------------------------------------------------
# Data.


def load_data(mnist_path):
    """Binarised data `(x_train, x_test)` as float32 `[n, H, W, 1]` in {0, 1}."""
    if mnist_path:
        with np.load(mnist_path) as archive:
            x = archive["x"].reshape(-1, 28, 28, 1).astype("float32") / 255.0
        x_train, x_test = x[:9000], x[9000:]
    else:
        from sklearn import datasets

        x = (datasets.load_digits().images / 16.0).astype("float32")[..., None]
        x_train, x_test = x[:1500], x[1500:]
    return (x_train > 0.5).astype("float32"), (x_test > 0.5).astype("float32")


# ---------------------------------------------------------------------------
# Implementations. Each returns (examples/second over timed epochs, held-out ELBO).


def _time_epochs(run_epoch, epochs, n):
    """Examples/second over `epochs` epochs, after one untimed warm-up epoch."""
    run_epoch()  # warm-up: tracing, XLA compilation, allocator growth
    start = time.perf_counter()
    for _ in range(epochs):
        run_epoch()
    return epochs * n / (time.perf_counter() - start)


def _time_fit(model, x, args):
    """Examples/second of one `fit` call over 1 + `epochs` epochs; the first is not timed.

    Also leaves the timed epochs' seconds in `args.epoch_seconds` (the child reports them)."""
    import keras

    times = []

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.start)

    model.fit(x, batch_size=args.batch_size, epochs=1 + args.epochs, verbose=0,
              callbacks=[EpochTimer()])
    args.epoch_seconds = times[1:]
    return args.epochs * len(x) / sum(times[1:])


def run_tfvae(x_train, x_test, args):
    import keras

    import tfvae

    model = tfvae.build_vae(x_train.shape[1:], args.latent_dim, architecture=args.model_kind,
                            hidden_units=(400,), filters=(32, 64), seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=args.jit,
                  steps_per_execution=args.steps_per_execution)
    rate = _time_fit(model, x_train, args)
    elbo = float(np.mean([model.elbo(x_test, seed=s)["elbo"].numpy().mean() for s in range(5)]))
    return rate, elbo


def _keras_io_models(input_shape, latent_dim, kind):
    """Encoder/decoder as in keras.io's VAE example (a Sampling layer, functional models)."""
    import keras
    from keras import layers, ops

    class Sampling(layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.seed_generator = keras.random.SeedGenerator(1337)

        def call(self, inputs):
            z_mean, z_log_var = inputs
            epsilon = keras.random.normal(shape=ops.shape(z_mean), seed=self.seed_generator)
            return z_mean + ops.exp(0.5 * z_log_var) * epsilon

    inputs = keras.Input(shape=input_shape)
    if kind == "conv":
        h = layers.Conv2D(32, 3, strides=2, padding="same", activation="relu")(inputs)
        h = layers.Conv2D(64, 3, strides=2, padding="same", activation="relu")(h)
        h = layers.Flatten()(h)
    else:
        h = layers.Dense(400, activation="relu")(layers.Flatten()(inputs))
    z_mean = layers.Dense(latent_dim)(h)
    z_log_var = layers.Dense(latent_dim)(h)
    z = Sampling()([z_mean, z_log_var])
    encoder = keras.Model(inputs, [z_mean, z_log_var, z])
    latent = keras.Input(shape=(latent_dim,))
    size = int(np.prod(input_shape))
    if kind == "conv":
        hh, ww = -(-input_shape[0] // 4), -(-input_shape[1] // 4)
        g = layers.Dense(hh * ww * 64, activation="relu")(latent)
        g = layers.Reshape((hh, ww, 64))(g)
        g = layers.Conv2DTranspose(64, 3, strides=2, padding="same", activation="relu")(g)
        g = layers.Conv2DTranspose(32, 3, strides=2, padding="same", activation="relu")(g)
        g = layers.Cropping2D(((0, 4 * hh - input_shape[0]), (0, 4 * ww - input_shape[1])))(g)
        logits = layers.Conv2D(1, 3, padding="same")(g)
    else:
        g = layers.Dense(400, activation="relu")(latent)
        logits = layers.Reshape(input_shape)(layers.Dense(size)(g))
    decoder = keras.Model(latent, logits)
    return encoder, decoder


def keras_io_vae(input_shape, latent_dim, kind):
    """keras.io's VAE example (custom `train_step`, mean losses), uncompiled."""
    import keras
    import tensorflow as tf
    from keras import ops

    keras.utils.set_random_seed(0)
    encoder, decoder = _keras_io_models(input_shape, latent_dim, kind)

    class VAE(keras.Model):
        def __init__(self, encoder, decoder, **kwargs):
            super().__init__(**kwargs)
            self.encoder, self.decoder = encoder, decoder
            self.total_loss_tracker = keras.metrics.Mean(name="total_loss")
            self.reconstruction_loss_tracker = keras.metrics.Mean(name="reconstruction_loss")
            self.kl_loss_tracker = keras.metrics.Mean(name="kl_loss")

        @property
        def metrics(self):
            return [self.total_loss_tracker, self.reconstruction_loss_tracker, self.kl_loss_tracker]

        def losses_for(self, data):
            z_mean, z_log_var, z = self.encoder(data)
            logits = self.decoder(z)
            reconstruction_loss = ops.mean(ops.sum(
                keras.losses.binary_crossentropy(data, logits, from_logits=True, axis=()),
                axis=(1, 2, 3)))
            kl_loss = -0.5 * (1 + z_log_var - ops.square(z_mean) - ops.exp(z_log_var))
            kl_loss = ops.mean(ops.sum(kl_loss, axis=1))
            return reconstruction_loss, kl_loss

        def train_step(self, data):
            with tf.GradientTape() as tape:
                reconstruction_loss, kl_loss = self.losses_for(data)
                total_loss = reconstruction_loss + kl_loss
            grads = tape.gradient(total_loss, self.trainable_weights)
            self.optimizer.apply_gradients(zip(grads, self.trainable_weights))
            self.total_loss_tracker.update_state(total_loss)
            self.reconstruction_loss_tracker.update_state(reconstruction_loss)
            self.kl_loss_tracker.update_state(kl_loss)
            return {m.name: m.result() for m in self.metrics}

    return VAE(encoder, decoder)


def run_keras_io(x_train, x_test, args):
    import keras

    vae = keras_io_vae(x_train.shape[1:], args.latent_dim, args.model_kind)
    flags = {}
    if args.baseline_same_flags:
        flags = dict(jit_compile=args.jit, steps_per_execution=args.steps_per_execution)
    vae.compile(optimizer=keras.optimizers.Adam(1e-3), **flags)
    rate = _time_fit(vae, x_train, args)
    elbo = -float(np.mean([sum(float(t) for t in vae.losses_for(x_test)) for _ in range(5)]))
    return rate, elbo


def run_tf_loop(x_train, x_test, args):
    """A hand-written `tf.function` step over tfvae's model (no Keras fit loop)."""
    import keras
    import tensorflow as tf

    import tfvae

    model = tfvae.build_vae(x_train.shape[1:], args.latent_dim, architecture=args.model_kind,
                            hidden_units=(400,), filters=(32, 64), seed=0)
    optimizer = keras.optimizers.Adam(1e-3)
    optimizer.build(model.trainable_variables)
    step = tf.Variable(0, dtype=tf.int32)

    @tf.function(jit_compile=args.jit)
    def train_step(x):
        with tf.GradientTape() as tape:
            seed = tf.stack([step, 7])
            loss = -tf.reduce_mean(model.elbo_terms(x, training=True, seed=seed)["elbo"])
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        step.assign_add(1)
        return loss

    dataset = tf.data.Dataset.from_tensor_slices(x_train).shuffle(len(x_train)).batch(
        args.batch_size).prefetch(tf.data.AUTOTUNE)

    def epoch():
        for batch in dataset:
            train_step(batch)

    rate = _time_epochs(epoch, args.epochs, len(x_train))
    elbo = float(np.mean([model.elbo(x_test, seed=s)["elbo"].numpy().mean() for s in range(5)]))
    return rate, elbo


def run_torch(x_train, x_test, args):
    import torch
    from torch import nn

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count())
    shape = x_train.shape[1:]
    size, d = int(np.prod(shape)), args.latent_dim

    class VAE(nn.Module):
        def __init__(self):
            super().__init__()
            if args.model_kind == "conv":
                hh, ww = -(-shape[0] // 4), -(-shape[1] // 4)
                self.enc = nn.Sequential(
                    nn.Conv2d(1, 32, 3, 2, 1), nn.ReLU(), nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(),
                    nn.Flatten(), nn.Linear(64 * hh * ww, 2 * d))
                self.dec = nn.Sequential(
                    nn.Linear(d, 64 * hh * ww), nn.ReLU(), nn.Unflatten(1, (64, hh, ww)),
                    nn.ConvTranspose2d(64, 64, 3, 2, 1, output_padding=1), nn.ReLU(),
                    nn.ConvTranspose2d(64, 32, 3, 2, 1, output_padding=1), nn.ReLU(),
                    nn.Conv2d(32, 1, 3, 1, 1))
            else:
                self.enc = nn.Sequential(nn.Flatten(), nn.Linear(size, 400), nn.ReLU(),
                                         nn.Linear(400, 2 * d))
                self.dec = nn.Sequential(nn.Linear(d, 400), nn.ReLU(), nn.Linear(400, size))

        def neg_elbo(self, x):
            mu, raw = self.enc(x).chunk(2, dim=-1)
            sigma = nn.functional.softplus(raw) + 1e-5
            z = mu + sigma * torch.randn_like(mu)
            logits = self.dec(z)
            if args.model_kind == "conv":
                logits = logits[..., : shape[0], : shape[1]]
            logits = logits.reshape(len(x), -1)
            rec = nn.functional.binary_cross_entropy_with_logits(
                logits, x.reshape(len(x), -1), reduction="none").sum(-1)
            kl = 0.5 * (mu**2 + sigma**2 - 1 - 2 * torch.log(sigma)).sum(-1)
            return (rec + kl).mean()

    model = VAE()
    if args.torch_init == "glorot":  # Keras' default initialisation, for a like-for-like start
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    layout = (0, 3, 1, 2) if args.model_kind == "conv" else (0, 1, 2, 3)
    xt = torch.from_numpy(np.ascontiguousarray(x_train.transpose(layout)))
    xv = torch.from_numpy(np.ascontiguousarray(x_test.transpose(layout)))

    def epoch():
        for i in torch.randperm(len(xt)).split(args.batch_size):
            optimizer.zero_grad(set_to_none=True)
            loss = model.neg_elbo(xt[i])
            loss.backward()
            optimizer.step()

    rate = _time_epochs(epoch, args.epochs, len(xt))
    with torch.no_grad():
        elbo = -float(np.mean([model.neg_elbo(xv).item() for _ in range(5)]))
    return rate, elbo


def run_paired_epochs(x_train, args):
    """tfvae and the keras.io VAE in one process, both with this run's --jit and
    --steps-per-execution, alternating single `fit` epochs (order swapped every round)
    after one warm-up epoch each; returns the per-round ratios of keras_io's epoch
    time to tfvae's (> 1: tfvae is faster) and both models' epoch times."""
    import keras

    import tfvae

    models = {
        "tfvae": tfvae.build_vae(x_train.shape[1:], args.latent_dim, architecture=args.model_kind,
                                 hidden_units=(400,), filters=(32, 64), seed=0),
        "keras_io": keras_io_vae(x_train.shape[1:], args.latent_dim, args.model_kind),
    }
    times = {name: [] for name in models}

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds = time.perf_counter() - self.start

    def epoch(model):
        timer = EpochTimer()
        model.fit(x_train, batch_size=args.batch_size, epochs=1, verbose=0, callbacks=[timer])
        return timer.seconds

    for model in models.values():
        model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=args.jit,
                      steps_per_execution=args.steps_per_execution)
        epoch(model)  # warm-up: tracing, XLA compilation
    for round_ in range(args.paired_epochs):
        for name in (models if round_ % 2 == 0 else list(models)[::-1]):
            times[name].append(epoch(models[name]))
    ratios = [k / t for k, t in zip(times["keras_io"], times["tfvae"])]
    return {"ratios": ratios, "epoch_seconds": times}


RUNNERS = {"tfvae": run_tfvae, "keras_io": run_keras_io, "tf_loop": run_tf_loop, "torch": run_torch}


# ---------------------------------------------------------------------------
# Driver.


def _parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", help="path to mnist_t10k.npz (default: built-in digits)")
    parser.add_argument("--model-kind", choices=("mlp", "conv"), default="mlp")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--latent-dim", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=8, help="timed epochs after one warm-up")
    parser.add_argument("--jit", action="store_true", help="XLA for tfvae and the tf loop")
    parser.add_argument("--steps-per-execution", type=int, default=1)
    parser.add_argument("--implementations", default=",".join(IMPLEMENTATIONS))
    parser.add_argument("--baseline-same-flags", action="store_true",
                        help="give the keras.io baseline the same --jit/--steps-per-execution")
    parser.add_argument("--scaling", action="store_true",
                        help="also sweep tfvae over batch sizes 32..1024 and latent sizes")
    parser.add_argument("--torch-init", choices=("default", "glorot"), default="default",
                        help="PyTorch's own initialisation, or Keras' Glorot uniform")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs per implementation, interleaved; the median is reported")
    parser.add_argument("--paired-epochs", type=int, default=0,
                        help="also time tfvae against keras_io (same flags) in one process, "
                        "alternating this many single epochs each; reports the median "
                        "per-epoch ratio (less noisy than separate processes)")
    parser.add_argument("--json", help="write all results to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser


def _child(args):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    x_train, x_test = load_data(args.mnist)
    if args.child == "paired":
        print(json.dumps(run_paired_epochs(x_train, args)))
        return
    rate, elbo = RUNNERS[args.child](x_train, x_test, args)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {"rate": rate, "elbo": elbo, "peak_mb": peak_mb}
    if getattr(args, "epoch_seconds", None):
        result["epoch_seconds"] = [round(t, 4) for t in args.epoch_seconds]
        # A single stalled epoch (a compile-heavy process descheduled on a shared machine
        # stalls for seconds with ~no CPU used) would dominate the mean over 8 short
        # epochs; the median epoch is what the table and the ratios use.
        result["rate_median_epoch"] = len(x_train) / float(np.median(args.epoch_seconds))
    print(json.dumps(result))


def run_child(name, argv):
    out = subprocess.run([sys.executable, __file__, *argv, "--child", name],
                         capture_output=True, text=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    if out.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _speed(run):
    """A run's examples/s: over its median epoch where epochs were timed (`fit`), else
    over all timed epochs (tf_loop, torch)."""
    return run.get("rate_median_epoch", run["rate"])


def _median(runs):
    """Median speed (`_speed`), ELBO and peak memory over repeated runs, with the range."""
    rates = sorted(_speed(r) for r in runs)
    return {
        "rate": float(np.median(rates)), "rate_min": rates[0], "rate_max": rates[-1],
        "elbo": float(np.median([r["elbo"] for r in runs])),
        "peak_mb": float(np.median([r["peak_mb"] for r in runs])),
        "runs": runs,
    }


def run_repeated(names, argv, repeats):
    """Runs each implementation `repeats` times, interleaved, so slow phases of a
    noisy machine hit every implementation alike; returns medians."""
    runs = {name: [] for name in names}
    for _ in range(repeats):
        for name in names:
            runs[name].append(run_child(name, argv))
            print(name, runs[name][-1], flush=True)
    return {name: _median(r) for name, r in runs.items()}


def _flags(name, args):
    """The speed flags an implementation ran with, for the table."""
    if name == "torch":
        return "eager"
    if name == "tf_loop":
        return "XLA" if args.jit else "graph"
    if name == "keras_io" and not args.baseline_same_flags:
        return "Keras defaults"
    flags = ["XLA" if args.jit else "no XLA"]
    flags.append(f"{args.steps_per_execution} steps/call")
    return ", ".join(flags)


def paired_ratios(rows, name, reference):
    """`name`'s rate ÷ `reference`'s, repeat by repeat (the runs of repeat i ran back to
    back, so a slow phase of a shared machine hits both)."""
    return [_speed(a) / _speed(b) for a, b in zip(rows[name]["runs"], rows[reference]["runs"])]


def _table(rows, reference, args):
    """The Markdown table: rates, the paired ratio to `reference`, ELBO and peak memory."""
    lines = [f"| implementation | flags | examples/s (median epoch; median, range of runs) | × {reference} "
             "(paired median, range) | held-out ELBO (nats) | peak MB (median) |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for name, r in rows.items():
        ratio = "–"
        if reference in rows:
            ratios = paired_ratios(rows, name, reference)
            ratio = (f"{np.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f})"
                     if name != reference else "1.00")
        lines.append(f"| {name} | {_flags(name, args)} | {r['rate']:,.0f} "
                     f"({r['rate_min']:,.0f}–{r['rate_max']:,.0f}) | {ratio} | "
                     f"{r['elbo']:.2f} | {r['peak_mb']:,.0f} |")
    return "\n".join(lines)


def _summary(rows, reference, args):
    """One line: tfvae's speed ratio to the reference, with the flags and peak memory."""
    if "tfvae" not in rows or reference not in rows:
        return ""
    ratios = paired_ratios(rows, "tfvae", reference)
    return (f"tfvae ÷ {reference} speed: {np.median(ratios):.2f}× (median of {len(ratios)} "
            f"paired repeats, {min(ratios):.2f}–{max(ratios):.2f}); tfvae {_flags('tfvae', args)}, "
            f"{reference} {_flags(reference, args)}; peak memory {rows['tfvae']['peak_mb']:,.0f} MB "
            f"vs {rows[reference]['peak_mb']:,.0f} MB")


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    if args.child:
        return _child(args)
    base = [a for a in argv if a != "--scaling"]
    results = {"settings": vars(args)}
    if args.paired_epochs:
        flags = f"{'XLA' if args.jit else 'no XLA'}, {args.steps_per_execution} steps/call"
        paired = run_child("paired", base)
        ratios = paired["ratios"]
        q1, q3 = np.quantile(ratios, [0.25, 0.75])
        line = (f"tfvae ÷ keras_io speed in one process, both with {flags}: "
                f"{np.median(ratios):.2f}× (median of {len(ratios)} paired epochs, "
                f"quartiles {q1:.2f}–{q3:.2f})")
        print(line, flush=True)
        results["paired_epochs"] = {**paired, "summary": line}
    results["main"] = run_repeated(args.implementations.split(","), base, args.repeats)
    print(_table(results["main"], "keras_io", args))
    summary = _summary(results["main"], "keras_io", args)
    if summary:
        print(summary)
        results["summary"] = summary
    if args.scaling:
        for flag, values in (("--batch-size", (32, 64, 128, 256, 512, 1024)),
                             ("--latent-dim", (2, 20, 64, 256))):
            key = flag.strip("-").replace("-", "_")
            results[key] = {}
            for value in values:
                runs = [run_child("tfvae", base + [flag, str(value)]) for _ in range(args.repeats)]
                results[key][value] = _median(runs)
                print(key, value, {k: round(v) for k, v in results[key][value].items()
                                   if k != "runs"}, flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
