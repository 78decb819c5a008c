"""Groups xprof.py --top -1 outputs (per-HLO-op µs/step) into the step's pieces; medians
of each piece's share of the XLA time over several traced runs.

    python experiments/xprof_categories.py experiments/out/xprof*_tfvae.txt
"""
import re, sys
import numpy as np

CATS = {
    "tfvae": [
        ("valid_rows mask (support_mask reduce_all)", r"^and_reduce_fusion$|^and_bitcast_fusion$"),
        ("noise hash + fold_in", r"^multiply_sqrt_fusion$"),
        ("metrics (stack, sums, 4 Mean trackers)", r"^bitcast_concatenate_fusion$|^wrapped_reduce-window$|^wrapped_reduce$|^bitcast_add_fusion|^divide_select_fusion|^wrapped_add\.[1-4]$|^copy\.(27|29|31|33)$"),
        ("beta schedule update", r"^add_select_fusion$|^copy\.68$|^copy$"),
        ("reparameterisation, KL, encoder-output grads", r"^add_bitcast_fusion$|^slice_exponential_fusion$|^wrapped_log-plus-one$|^multiply_reduce_fusion|^log_reduce_fusion$|^multiply_concatenate_fusion$"),
        ("Bernoulli log-lik + grad", r"^select_subtract_fusion$|^ynn_fusion\.2$|^subtract_multiply_fusion$"),
    ],
    "keras_io": [
        ("Philox RNG (keras.random.normal + SeedGenerator)", r"^bitcast_concatenate_fusion$|^multiply_concatenate_fusion$|^iota_add_fusion$|^broadcast_remainder_fusion$|^convert_multiply_fusion|^select_convert_fusion$|^or_convert_fusion$|^shift-right-logical_convert_fusion$|^copy\.6$"),
        ("metrics (3 Mean trackers)", r"^wrapped_add\.[1-3]$|^multiply_add_fusion\.2[24]$|^add_add_fusion$|^divide_select_fusion|^wrapped_reduce$|^copy\.3[357]$"),
        ("reparameterisation, KL, encoder-output grads", r"^multiply_add_fusion\.2[013]$|^add_exponential_fusion$|^multiply_exponential_fusion$|^subtract_multiply_fusion$|^wrapped_reduce-window$"),
        ("Bernoulli BCE + grad", r"^select_exponential_fusion$|^log-plus-one_add_fusion$|^ynn_fusion\.2$|^add_bitcast_fusion$"),
    ],
}
COMMON = [("matmuls (forward + backward)", r"^MatMul"),
          ("Adam updates", r"^multiply_add_fusion|^divide_subtract_fusion|^subtract_divide_fusion$|^wrapped_add$"),
          ("bias grads, ReLU, copies, rest", r".")]


def load(path):
    ops = {}
    for line in open(path):
        m = re.match(r"\s*([\d.]+) us/step\s+(\S+)$", line.rstrip())
        if m and m.group(2) not in ("PrefetchConsume", "ValidateInputTypeAndPlacement",
                                     "convert_to_tensor", "MemoryAllocation", "MemoryDeallocation"):
            ops[m.group(2)] = float(m.group(1))
    return ops


paths = sys.argv[1:]
kind = "keras_io" if "keras_io" in paths[0] else "tfvae"
cats = CATS[kind] + COMMON
shares = {name: [] for name, _ in cats}
totals = []
for path in paths:
    ops = load(path)
    total = sum(ops.values())
    totals.append(total)
    left = dict(ops)
    for name, pattern in cats:
        hit = [k for k in left if re.search(pattern, k)]
        shares[name].append(sum(left.pop(k) for k in hit) / total)
print(f"{kind}: {len(paths)} traced runs, XLA op time {np.median(totals):.0f} µs/step (median, traced)")
for name, s in shares.items():
    print(f"  {100 * np.median(s):5.1f} %  ({100 * min(s):.1f}–{100 * max(s):.1f})  {name}")
