"""Exported graphs: ONNX Runtime against the SavedModel, with and without the input guard.

    python benchmarks/bench_export.py [--repeats 15] [--threads 1]
        [--models mlp mnist_mlp levels_mlp conv] [--graphs encode reconstruct]
        [--ort-config session.intra_op.allow_spinning=0] [--json FILE]

Each model (untrained, its weights and biases moved by N(0, 0.05²) noise: timing
does not depend on the values, but a freshly built model's biases are exactly
zero and tf2onnx drops a zero bias, which changes the ONNX graph — the convolution
inputs lose their static shapes and ONNX Runtime fuses no `Gemm` — so the graphs
are those of a trained model) is exported four
times with `tfvae.export`: SavedModel and ONNX, each with the bad-input guard
("invalid in, NaN out") and without it (`guard=False`, the exporters' switch for
exactly this measurement). Every graph is then called in this one process, the
four variants interleaved (their order rotated) in each of `--repeats` rounds:
the SavedModel's signature from TensorFlow (`tf.saved_model.load(...)
.signatures[name](**tensors)`, eager, as a TF-side client calls it) and the
ONNX graph through `onnxruntime.InferenceSession.run` (CPU provider,
`ORT_ENABLE_ALL` graph optimizations). Both runtimes get the same number of
intra-op threads, `--threads` (default 1), and run one op at a time
(TensorFlow's inter-op pool: 1 thread; ONNX Runtime's sequential executor);
`--ort-config KEY=VALUE` adds ONNX Runtime session config entries (e.g.
`session.intra_op.allow_spinning=0`). The one-minute load average before and
after each model is recorded:
with more threads than free cores both runtimes' parallel kernels wait for
their slowest thread, and ONNX Runtime's default (one per physical core,
spinning) suffers most from other processes' load. A round times `calls` calls of one variant (B = 1: 200, B = 1,000: 10);
the figure is the median over rounds of the mean time per call, in ms.

Derived columns, each the median over rounds of a ratio within the round (the
variants ran one after the other, so load from other processes mostly cancels):
the guard's share of the guarded graph's time, `1 − unguarded / guarded`, and
ONNX Runtime's time over the SavedModel's (< 1: ONNX Runtime is faster); beside
it `onnx_over_saved_model_best`, the ratio of the two fastest rounds (on a
loaded machine the least disturbed round of each runtime).
Inputs are valid rows of the likelihood's data (binary, or integer levels for
`levels_mlp`); `eps` is N(0, I).

Run against a checkout without the `guard` switch (tfvae 0.2.0), the unguarded
columns are left empty.
"""

import argparse
import json
import os
import platform
import shutil
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

MODELS = {
    # name: (event_shape, latent_dim, build_vae keyword arguments)
    "mlp": ((8, 8, 1), 8, dict(hidden_units=(256, 128))),  # `tfvae train`'s default model
    "mnist_mlp": ((28, 28, 1), 20, dict(hidden_units=(400,))),
    "levels_mlp": ((8, 8, 1), 8, dict(hidden_units=(256, 128), likelihood="discretized_logistic")),
    "conv": ((8, 8, 1), 8, dict(architecture="conv", filters=(32, 64))),
}
GRAPHS = ("encode", "reconstruct", "decode", "sample")
BATCHES = (1, 1000)
VARIANTS = ("saved_model", "saved_model_unguarded", "onnx", "onnx_unguarded")


def _inputs(model, batch, seed=0):
    rng = np.random.default_rng(seed)
    if getattr(model.likelihood, "num_levels", None):
        x = rng.integers(0, model.likelihood.num_levels, (batch,) + model.event_shape)
    else:
        x = rng.uniform(size=(batch,) + model.event_shape) < 0.5
    noise = rng.standard_normal((batch, model.latent_dim)).astype("float32")
    return {"x": x.astype("float32"), "eps": noise, "z": noise}


def _feeds(name, inputs):
    return {"encode": ("x",), "decode": ("z",), "reconstruct": ("x", "eps"),
            "sample": ("eps",)}[name]


def _session_options(threads, config=()):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    for entry in config:
        key, value = entry.split("=", 1)
        options.add_session_config_entry(key, value)
    return options


def _trained_like(model, seed=1):
    """`model` with every weight moved by N(0, 0.05²) noise: no exactly-zero biases."""
    rng = np.random.default_rng(seed)
    model.set_weights([w + 0.05 * rng.standard_normal(w.shape).astype(w.dtype)
                       for w in model.get_weights()])
    return model


def _set_tensorflow_threads(threads):
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)


def _export(model, root, threads, config=()):
    """`{variant: {graph: callable(feeds)}}` and the files' sizes."""
    import onnxruntime as ort
    import tensorflow as tf

    from tfvae import export

    callers, sizes = {}, {}
    for guard in (True, False):
        suffix = "" if guard else "_unguarded"
        kwargs = {} if guard else {"guard": False}
        try:
            path = export.export_saved_model(model, os.path.join(root, "sm" + suffix), "vae",
                                             **kwargs)
            written = export.export_onnx(model, os.path.join(root, "onnx" + suffix), **kwargs)
        except TypeError:  # a tfvae without the `guard` switch
            continue
        loaded = tf.saved_model.load(path)
        signatures = {name: loaded.signatures[name] for name in GRAPHS}
        callers["saved_model" + suffix] = {
            name: (lambda fn: lambda feeds: fn(**feeds))(fn) for name, fn in signatures.items()}
        callers["saved_model" + suffix]["_keep"] = loaded  # keep the variables alive
        sessions = {name: ort.InferenceSession(file, _session_options(threads, config),
                                               providers=["CPUExecutionProvider"])
                    for name, file in written.items()}
        callers["onnx" + suffix] = {
            name: (lambda s: lambda feeds: s.run(None, feeds))(s) for name, s in sessions.items()}
        if guard:
            with open(os.path.join(root, "onnx", export.ONNX_METADATA)) as f:
                onnx_metadata = json.load(f)
            sizes = {"onnx_bytes": {name: os.path.getsize(file) for name, file in written.items()},
                     "onnx_weights_bytes": onnx_metadata.get("weights", {}).get("bytes"),
                     "onnx_total_bytes": onnx_metadata.get("onnx_total_bytes"),
                     # Each graph with its own copy of its weights (0.2.0's layout).
                     "onnx_unshared_bytes": _unshared_bytes(written),
                     "saved_model_bytes": sum(
                         os.path.getsize(os.path.join(d, f))
                         for d, _, files in os.walk(path) for f in files)}
    return callers, sizes


def _unshared_bytes(written):
    try:
        from tfvae import onnx_weights
    except ImportError:  # a tfvae whose graphs hold their own weights
        return sum(os.path.getsize(file) for file in written.values())
    return sum(onnx_weights.graph_bytes(file) for file in written.values())


def _time(callers, feeds_by_variant, calls, repeats):
    times = {variant: [] for variant in callers}
    for fn in callers.values():  # warm up
        for _ in range(3):
            fn(feeds_by_variant[fn])
    variants = list(callers)
    for round_ in range(repeats):
        shift = round_ % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            fn = callers[variant]
            feeds = feeds_by_variant[fn]
            start = time.perf_counter()
            for _ in range(calls):
                fn(feeds)
            times[variant].append((time.perf_counter() - start) / calls)
    return {variant: np.asarray(t) for variant, t in times.items()}


def run_model(name, repeats, threads=1, config=(), graphs=GRAPHS):
    import tensorflow as tf

    import tfvae

    event_shape, latent_dim, kwargs = MODELS[name]
    model = _trained_like(tfvae.build_vae(event_shape, latent_dim, seed=0, **kwargs))
    root = tempfile.mkdtemp(prefix="bench_export_")
    load_before = os.getloadavg()[0]
    try:
        callers, sizes = _export(model, root, threads, config)
        results = {}
        for graph in graphs:
            for batch in BATCHES:
                inputs = _inputs(model, batch)
                keys = _feeds(graph, inputs)
                feeds_by_variant = {}
                graph_callers = {}
                for variant, fns in callers.items():
                    fn = fns[graph]
                    graph_callers[variant] = fn
                    if variant.startswith("saved_model"):
                        feeds_by_variant[fn] = {k: tf.constant(inputs[k]) for k in keys}
                    else:
                        feeds_by_variant[fn] = {k: inputs[k] for k in keys}
                timed = _time(graph_callers, feeds_by_variant,
                              calls=200 if batch == 1 else 10, repeats=repeats)
                row = {"graph": graph, "batch": batch}
                for variant, t in timed.items():
                    row[variant] = {"median_ms": 1000 * float(np.median(t)),
                                    "range_ms": [1000 * float(t.min()), 1000 * float(t.max())]}
                # Paired per round (adjacent in time), then the median: drift cancels.
                for fmt in ("saved_model", "onnx"):
                    if f"{fmt}_unguarded" in timed:
                        row[f"{fmt}_guard_share"] = float(
                            np.median(1 - timed[f"{fmt}_unguarded"] / timed[fmt]))
                row["onnx_over_saved_model"] = float(
                    np.median(timed["onnx"] / timed["saved_model"]))
                # The fastest round of each: what each runtime does when the machine lets it.
                row["onnx_over_saved_model_best"] = float(
                    timed["onnx"].min() / timed["saved_model"].min())
                results[f"{graph}/{batch}"] = row
                print(_line(name, row), flush=True)
        return {"model": name, "event_shape": list(event_shape), "latent_dim": latent_dim,
                "build_vae": {k: list(v) if isinstance(v, tuple) else v
                              for k, v in kwargs.items()},
                "weight_bytes": int(sum(w.nbytes for w in model.get_weights())), **sizes,
                "load_average": [load_before, os.getloadavg()[0]], "rows": results}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _fmt(value, digits=3):
    return "–" if value is None else f"{value:.{digits}f}"


def _line(model, row):
    ms = {v: row.get(v, {}).get("median_ms") for v in VARIANTS}
    share = {f: row.get(f"{f}_guard_share") for f in ("saved_model", "onnx")}
    percent = {f: None if s is None else 100 * s for f, s in share.items()}
    return (f"| {model} | {row['graph']} | {row['batch']:,} | {_fmt(ms['saved_model'])} | "
            f"{_fmt(ms['saved_model_unguarded'])} | {_fmt(percent['saved_model'], 1)} % | "
            f"{_fmt(ms['onnx'])} | {_fmt(ms['onnx_unguarded'])} | "
            f"{_fmt(percent['onnx'], 1)} % | "
            f"{_fmt(row['onnx_over_saved_model'], 2)} | "
            f"{_fmt(row['onnx_over_saved_model_best'], 2)} |")


HEADER = ("| model | graph | B | SavedModel ms | unguarded | guard share | ONNX Runtime ms | "
          "unguarded | guard share | ORT ÷ SavedModel | fastest rounds |\n"
          "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mlp", "mnist_mlp", "levels_mlp"],
                        choices=list(MODELS))
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads of both runtimes (default 1)")
    parser.add_argument("--graphs", nargs="+", default=list(GRAPHS), choices=list(GRAPHS))
    parser.add_argument("--ort-config", nargs="*", default=[], metavar="KEY=VALUE",
                        help="ONNX Runtime session config entries")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)

    import onnxruntime as ort
    import tensorflow as tf

    _set_tensorflow_threads(args.threads)  # before TensorFlow runs anything
    print(HEADER)
    for entry in args.ort_config:
        if "=" not in entry:
            parser.error(f"--ort-config takes KEY=VALUE entries; received {entry!r}")
    results = [run_model(name, args.repeats, args.threads, args.ort_config, args.graphs)
               for name in args.models]
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "tensorflow": tf.__version__, "onnxruntime": ort.__version__,
              "repeats": args.repeats, "intra_op_threads": args.threads,
              "inter_op_threads": 1, "ort_config": args.ort_config, "models": results}
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
