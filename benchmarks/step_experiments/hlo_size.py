"""HLO size of one compiled train step: tfvae (and ablations) against keras.io's VAE.

    cd /work/wt-speed && PYTHONPATH=/work/wt-speed:/work/wt-speed/benchmarks:/work/wt-speed/experiments \
        /work/main/.venv/bin/python experiments/hlo_size.py --variants tfvae,bare [--dump DIR]

Counts, for `tf.function(train_step, jit_compile=True)` on a [None, 28, 28, 1] input:
TF graph ops (the traced function), HLO instructions before optimisation, and after
XLA's CPU optimisation the instructions of the entry computation (each fusion is one
kernel launch) and the fusions.
"""

import argparse
import collections
import os
import re

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import ablations  # noqa: E402
import bench_training  # noqa: E402


def _entry_ops(hlo):
    """Opcodes of the ENTRY computation's instructions."""
    body = hlo[hlo.index("ENTRY"):]
    body = body[body.index("{") + 1: body.index("\n}")]
    ops = collections.Counter()
    for line in body.splitlines():
        m = re.search(r"=\s*\S+(?:\s*\{[^}]*\})?\s+([a-z\-]+)\(", line)
        if m:
            ops[m.group(1)] += 1
    return ops


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--variants", default="tfvae")
    parser.add_argument("--dump")
    args = parser.parse_args(argv)

    import keras
    import tensorflow as tf

    x = np.random.default_rng(0).integers(0, 2, (128, 28, 28, 1)).astype("float32")
    for name in ["keras_io"] + args.variants.split(","):
        if name == "keras_io":
            model = bench_training.keras_io_vae(x.shape[1:], 20, "mlp")
        else:
            model = ablations.build(name, x.shape[1:])
        model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=True)
        model.optimizer.build(model.trainable_variables)
        step = tf.function(model.train_step, jit_compile=True)
        spec = tf.TensorSpec([None, 28, 28, 1], tf.float32)
        graph = step.get_concrete_function(spec).graph
        n_tf = len(graph.get_operations())
        ir = step.experimental_get_compiler_ir(tf.constant(x))
        hlo, opt = ir(stage="hlo"), ir(stage="optimized_hlo")
        n_hlo = sum(1 for line in hlo.splitlines() if " = " in line)
        n_opt = sum(1 for line in opt.splitlines() if " = " in line)
        entry = _entry_ops(opt)
        fusions = entry.get("fusion", 0)
        params = entry.get("parameter", 0)
        top = ", ".join(f"{k} {v}" for k, v in entry.most_common(8))
        print(f"{name:24s} tf ops {n_tf:5d} | hlo {n_hlo:5d} | optimized {n_opt:5d} | "
              f"entry {sum(entry.values()):4d} (fusions {fusions}, parameters {params}) | {top}")
        if args.dump:
            os.makedirs(args.dump, exist_ok=True)
            for stage, text in (("hlo", hlo), ("opt", opt)):
                with open(os.path.join(args.dump, f"{name}.{stage}.txt"), "w") as f:
                    f.write(text)


if __name__ == "__main__":
    main()
