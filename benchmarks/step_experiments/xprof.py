"""Per-HLO-op time inside the compiled train step (XLA CPU traceme annotations).

    cd /work/wt-speed && XLA_FLAGS=--xla_cpu_enable_xprof_traceme=true \
      PYTHONPATH=/work/wt-speed:/work/wt-speed/benchmarks:/work/wt-speed/experiments \
      /work/main/.venv/bin/python experiments/xprof.py --variant tfvae --calls 20

Traces `--calls` train_function calls (16 steps each) with tf.profiler and sums the
events per name (XLA ops, TF ops, executor events) per step, self-time not separated.
"""
import argparse, collections, glob, os, re, shutil, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import ablations, bench_training  # noqa: F401


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--variant", default="tfvae")
    p.add_argument("--mnist", default="../shared/data/mnist_t10k.npz")
    p.add_argument("--calls", type=int, default=20)
    p.add_argument("--top", type=int, default=45)
    p.add_argument("--logdir", default="/tmp/xprof_speed")
    a = p.parse_args()
    import keras, tensorflow as tf
    import proposal_variants  # noqa: F401  (registers the candidate variants)
    from tensorflow.tsl.profiler.protobuf import xplane_pb2
    x, _ = bench_training.load_data(a.mnist)
    x = x[:8960]
    if a.variant == "keras_io":
        m = bench_training.keras_io_vae(x.shape[1:], 20, "mlp")
    else:
        m = proposal_variants.build(a.variant, x.shape[1:])
    m.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=True, steps_per_execution=16)
    it = iter(tf.data.Dataset.from_tensor_slices(x).shuffle(8960, seed=0).batch(128).repeat().prefetch(2))
    m.make_train_function()
    for _ in range(10):
        m.train_function(it)
    m.optimizer.iterations.numpy()
    logdir = os.path.join(a.logdir, a.variant.replace("+", "_"))
    shutil.rmtree(logdir, ignore_errors=True)
    tf.profiler.experimental.start(logdir)
    t = time.perf_counter()
    for _ in range(a.calls):
        m.train_function(it)
    m.optimizer.iterations.numpy()
    wall = time.perf_counter() - t
    tf.profiler.experimental.stop()
    steps = a.calls * 16
    path = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)[0]
    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    totals = collections.Counter(); counts = collections.Counter()
    for plane in space.planes:
        md = plane.event_metadata
        for line in plane.lines:
            for ev in line.events:
                name = md[ev.metadata_id].name
                totals[(plane.name, name)] += ev.duration_ps / 1e6  # us
                counts[(plane.name, name)] += 1
    print(f"{a.variant}: wall {1000 * wall / steps:.3f} ms/step over {steps} steps (traced)")
    hlo = re.compile(r"^(?:[a-z][a-z0-9_\-]*|MatMul(?:_\d+)?|[A-Z][A-Za-z]*_?\d*)\.?\d*$")
    host = ("Iterator", "Executor", "Eager", "TFE_", "Kernel", "CpuExecutable", "BlockUntil",
            "ThunkExecutor", "multi_step", "PrefetchProduce", "__inference", "Function")
    xla = {k: v for k, v in totals.items()
           if "::" not in k[1] and hlo.match(k[1]) and not k[1].startswith(host)}
    print(f"sum of XLA op events: {sum(xla.values()) / steps:.1f} us/step; "
          f"CpuExecutable::ExecuteAsyncOnStream "
          f"{sum(v for k, v in totals.items() if k[1] == 'CpuExecutable::ExecuteAsyncOnStream') / steps:.1f}")
    if a.top < 0:
        for (plane, name), us in sorted(xla.items(), key=lambda kv: -kv[1]):
            print(f"{us / steps:9.1f} us/step  {name}")
        return
    for (plane, name), us in totals.most_common(a.top):
        print(f"{us / steps:9.1f} us/step  n/step {counts[(plane, name)] / steps:6.2f}  {plane[-12:]:12s} {name[:110]}")


if __name__ == "__main__":
    main()
