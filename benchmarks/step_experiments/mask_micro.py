"""Cost of `valid_rows` formulations for Bernoulli data under XLA on CPU ([128, 784] rows).

    PYTHONPATH=/work/wt-speed /work/main/.venv/bin/python experiments/mask_micro.py
"""
import os, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np, tensorflow as tf
import tfvae

N = 64
rng = np.random.default_rng(0)
xs = tf.constant((rng.random((N, 128, 28, 28, 1)) > 0.5).astype("float32"))
head = tfvae.BernoulliLikelihood((28, 28, 1))


def current(x):
    return head.support_mask(x)


def minmax_sum(x):
    flat = tf.reshape(x, [tf.shape(x)[0], -1])
    return ((tf.reduce_min(flat, 1) >= 0.0) & (tf.reduce_max(flat, 1) <= 1.0)
            & tf.math.is_finite(tf.reduce_sum(flat, 1)))


def count_bad(x):
    flat = tf.reshape(x, [tf.shape(x)[0], -1])
    ok = tf.math.is_finite(flat) & (flat >= 0.0) & (flat <= 1.0)
    return tf.reduce_sum(tf.cast(ok, tf.float32), 1) == tf.cast(tf.shape(flat)[1], tf.float32)


def flat_current(x):
    flat = tf.reshape(x, [tf.shape(x)[0], -1])
    ok = tf.math.is_finite(flat) & (flat >= 0.0) & (flat <= 1.0)
    return tf.reduce_all(ok, 1)


def distance(x):
    # max over the row of the distance outside [0, 1]; NaN propagates through the sum
    flat = tf.reshape(x, [tf.shape(x)[0], -1])
    out = tf.reduce_sum(tf.nn.relu(-flat) + tf.nn.relu(flat - 1.0), 1)
    return tf.equal(out, 0.0)  # inf -> inf, NaN -> NaN: both not equal 0


def none(x):
    return tf.reduce_sum(x[:, :1, 0, 0], 1) > -1.0


fns = {k: v for k, v in globals().items() if k in ("current", "flat_current", "minmax_sum", "count_bad", "distance", "none")}
# correctness on edge rows
edge = np.zeros((6, 28, 28, 1), "float32"); edge[1, 0, 0] = np.nan; edge[2, 3, 3] = np.inf
edge[3, 5, 5] = -1e-7; edge[4, 5, 5] = 1.0000001; edge[5] = 1.0
for k, f in fns.items():
    if k != "none":
        print(k, tf.function(f, jit_compile=True)(tf.constant(edge)).numpy())

def looped(f):
    def run():
        def body(i, acc):
            return i + 1, acc + tf.reduce_sum(tf.cast(f(xs[i]), tf.float32))
        return tf.while_loop(lambda i, a: i < N, body, (tf.constant(0), tf.constant(0.0)))[1]
    return tf.function(run, jit_compile=True)

comp = {k: looped(f) for k, f in fns.items()}
for c in comp.values():
    c()
res = {k: [] for k in comp}
for _ in range(20):
    for k, c in comp.items():
        t = time.perf_counter(); c().numpy(); res[k].append((time.perf_counter() - t) / N * 1e6)
for k, v in res.items():
    print(f"{k:14s} {np.median(v):7.1f} us per [128, 784] batch (min {np.min(v):.1f})")
