"""Cost of the step's noise under XLA on CPU: keras.random.normal (SeedGenerator) vs tfvae's hash.

    PYTHONPATH=/work/wt-speed /work/main/.venv/bin/python experiments/rng_micro.py
"""
import os, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np, keras, tensorflow as tf
from tfvae import objectives, random as tr

sg = keras.random.SeedGenerator(1337)
it = tf.Variable(0, dtype=tf.int64)
N = 200  # draws per call, in a loop inside the compiled function

def loop(draw):
    def body(i, acc):
        return i + 1, acc + tf.reduce_sum(draw(i))
    return tf.while_loop(lambda i, a: i < N, body, (tf.constant(0), tf.constant(0.0)))[1]

fns = {
    "keras.random.normal+SeedGenerator": tf.function(lambda: loop(lambda i: keras.random.normal([1, 128, 20], seed=sg)), jit_compile=True),
    "tf.random.stateless_normal": tf.function(lambda: loop(lambda i: tf.random.stateless_normal([1, 128, 20], seed=tf.stack([i, 7]))), jit_compile=True),
    "tfvae standard_noise(fold_in)": tf.function(lambda: loop(lambda i: objectives.standard_noise(128, 1, 20, tr.fold_in(5, i))), jit_compile=True),
    "zeros": tf.function(lambda: loop(lambda i: tf.zeros([1, 128, 20]) + tf.cast(i, tf.float32)), jit_compile=True),
}
for f in fns.values():
    f()
res = {k: [] for k in fns}
for r in range(15):
    for k, f in fns.items():
        t = time.perf_counter(); f().numpy(); res[k].append((time.perf_counter() - t) / N * 1e6)
for k, v in res.items():
    print(f"{k:40s} {np.median(v):8.1f} us/draw (min {np.min(v):.1f})")
