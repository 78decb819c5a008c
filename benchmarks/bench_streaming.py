"""Peak memory and training throughput of `tfvae train`: in-memory vs streamed (issue 19, item 5).

For each N, the script builds N 28x28 binary digits by tiling the static
binarised MNIST training digits (uint8 0/1, `[N, 28, 28]`) into a temporary
`.npz` (key `x`: tfvae makes its own 80/20 split), converts it with
`tfvae prepare-data ... --shards 16` to TFRecords, and (for the N in `--png`)
writes a folder of N PNG files (28x28, mode L, pixel 0/255). Then it runs
`tfvae train --epochs E` (default 3) on each path, alternating the paths, under
`/usr/bin/time -v`:

* peak RSS = "Maximum resident set size" of the whole `tfvae train` process;
* training throughput = N_train * (E - 1) / (training time of epochs 2..E),
  where an epoch's training time runs from Keras' `on_epoch_begin` to the
  `on_test_begin` of its validation pass (a timing callback the script adds to
  `keras.Model.fit` in the same process: `--child` runs the `tfvae` console
  script's `main` with that one patch). Epoch 1 (tracing, XLA compilation)
  is not timed; start-up, evaluation and report are outside the epochs. N_train
  is read from the run's `metrics.json` / `run.json`.

Every measurement is appended to the run's JSON file as soon as it is taken, so
an interrupted run keeps what it measured. Temporary data are deleted per N.

    python benchmarks/bench_streaming.py --ns 50000,200000,1000000 --repeats 3 --png 50000
    python benchmarks/bench_streaming.py --table benchmarks/results/streaming/*.json
"""

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results", "streaming")
DIGITS = os.path.join(REPO, "..", "shared", "data", "binarized_mnist_trainval.npz")
TRAIN_FLAGS = ["--eval-samples", "1", "--no-tensorboard", "--patience", "100", "--quiet",
               "--overwrite"]
PATH_NAMES = {"npz": "in-memory (.npz)", "records": "TFRecords (16 shards)",
              "png": "PNG folder"}


def tfvae_cmd():
    exe = os.path.join(os.path.dirname(sys.executable), "tfvae")
    return [exe] if os.path.exists(exe) else [sys.executable, "-m", "tfvae.cli"]


def git_commit():
    try:
        out = subprocess.run(["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "tfvae"],
                               capture_output=True, text=True).stdout.strip()
        return out + ("-dirty" if dirty else "")
    except (subprocess.CalledProcessError, FileNotFoundError):
        return None


def env():
    e = dict(os.environ)
    e["PYTHONPATH"] = REPO + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    e.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return e


def digits(n, source=DIGITS):
    with np.load(source) as archive:
        x = archive["x_train"].reshape(-1, 28, 28).astype(np.uint8)
    reps = -(-n // len(x))
    return np.tile(x, (reps, 1, 1))[:n]


def write_png_folder(x, folder):
    from PIL import Image

    os.makedirs(folder)
    for i, image in enumerate(x):
        Image.fromarray(image * np.uint8(255), mode="L").save(
            os.path.join(folder, f"{i:08d}.png"), compress_level=1)


def timed(cmd, log):
    """`(seconds, peak RSS bytes, returncode)` of `cmd` run under GNU time -v."""
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True,
                          env=env())
    seconds = time.perf_counter() - start
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n" + proc.stdout[-4000:] + proc.stderr[-6000:] + "\n")
    found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    rss = int(found.group(1)) * 1024 if found else None
    return seconds, rss, proc.returncode


def n_train(output):
    for name in ("metrics.json", "run.json"):
        path = os.path.join(output, name)
        if not os.path.exists(path):
            continue
        with open(path) as f:
            text = f.read()
        found = re.search(r'"train_examples":\s*(\d+)', text)
        if found:
            return int(found.group(1))
    return None


def child(timings, argv):
    """`tfvae train ARGV` in this process, with a Keras callback timing each epoch.

    The callback is added to `keras.Model.fit` (tfvae's model calls it through
    `super().fit`); it records, per epoch, the wall time from the epoch's start
    to the start of its validation pass (the training part alone) and to the
    epoch's end. Nothing else of the CLI changes.
    """
    import keras

    epochs = []

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            epochs.append({"epoch": epoch + 1, "start": time.perf_counter(), "steps": 0})

        def on_train_batch_end(self, batch, logs=None):
            epochs[-1]["steps"] = batch + 1

        def on_test_begin(self, logs=None):
            if epochs and "train_seconds" not in epochs[-1]:
                epochs[-1]["train_seconds"] = time.perf_counter() - epochs[-1]["start"]

        def on_epoch_end(self, epoch, logs=None):
            e = epochs[-1]
            e["epoch_seconds"] = time.perf_counter() - e.pop("start")
            e.setdefault("train_seconds", e["epoch_seconds"])
            with open(timings, "w") as f:
                json.dump(epochs, f)

    fit = keras.Model.fit

    def timed_fit(self, *args, **kwargs):
        kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), EpochTimer()]
        return fit(self, *args, **kwargs)

    keras.Model.fit = timed_fit
    sys.path.insert(0, REPO)
    import tfvae_main  # the `tfvae` console script's entry point

    return tfvae_main.main(argv)


def measure(kind, dataset, n, work, log, epochs):
    output = os.path.join(work, f"run-{kind}-{n}")
    timings = os.path.join(work, f"epochs-{kind}-{n}.json")
    argv = ["train", "--dataset", dataset, "--epochs", str(epochs), "--output", output,
            *TRAIN_FLAGS]
    cmd = [sys.executable, os.path.abspath(__file__), "--child", timings, "--", *argv]
    seconds, rss, rc = timed(cmd, log)
    out = {"path": kind, "n": n, "dataset": dataset, "epochs": epochs, "seconds": seconds,
           "peak_rss_bytes": rss, "returncode": rc, "command": " ".join(cmd),
           "train_examples": n_train(output)}
    shutil.rmtree(output, ignore_errors=True)
    if os.path.exists(timings):
        with open(timings) as f:
            out["epoch_timings"] = json.load(f)
        os.remove(timings)
        timed_epochs = out["epoch_timings"][1:]  # epoch 1 holds tracing and XLA compilation
        if timed_epochs and out["train_examples"]:
            train_s = sum(e["train_seconds"] for e in timed_epochs)
            epoch_s = sum(e["epoch_seconds"] for e in timed_epochs)
            out["train_examples_per_s"] = out["train_examples"] * len(timed_epochs) / train_s
            out["epoch_examples_per_s"] = out["train_examples"] * len(timed_epochs) / epoch_s
    print(f"  {kind:8s} N={n:>8,d}: {seconds:6.1f} s total, peak RSS {(rss or 0) / 2**30:5.2f} GB,"
          f" train {out.get('train_examples_per_s', 0):8,.0f} ex/s (epochs 2-{epochs}), rc={rc}",
          flush=True)
    return out


def save(result, path):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=2)
    os.replace(tmp, path)


def run(args):
    os.makedirs(RESULTS, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = os.path.join(RESULTS, f"streaming-{stamp}.json")
    log = os.path.join(args.work, "train.log")
    os.makedirs(args.work, exist_ok=True)
    result = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
              "command": " ".join([sys.executable, *sys.argv]), "tfvae_commit": git_commit(),
              "rss_method": "GNU /usr/bin/time -v, Maximum resident set size of the whole "
                            "tfvae train process",
              "throughput_method": "N_train * (epochs - 1) / sum over epochs 2.. of the wall "
                                   "time from on_epoch_begin to the validation pass's "
                                   "on_test_begin (a Keras callback added to Model.fit)",
              "train_flags": TRAIN_FLAGS, "cpus": os.cpu_count(), "measurements": [],
              "prepare": []}
    print(f"results -> {path}", flush=True)
    for n in args.ns:
        folder = os.path.join(args.work, str(n))
        os.makedirs(folder, exist_ok=True)
        npz = os.path.join(folder, "digits.npz")
        np.savez(npz, x=digits(n))
        kinds = [k for k in args.paths if not (k == "npz" and n > args.max_npz)]
        datasets = {"npz": npz}
        if "records" in kinds and n <= args.max_records:
            rec = os.path.join(folder, "records")
            t, rss, rc = timed([*tfvae_cmd(), "prepare-data", npz, "--output", rec, "--shards",
                                "16"], log)
            result["prepare"].append({"n": n, "seconds": t, "peak_rss_bytes": rss, "rc": rc})
            print(f"prepare-data N={n:,}: {t:.1f} s", flush=True)
            datasets["records"] = rec
        if "png" in kinds and n in args.png:
            png = os.path.join(folder, "png")
            t = time.perf_counter()
            write_png_folder(np.load(npz)["x"], png)
            print(f"wrote {n:,} PNGs: {time.perf_counter() - t:.1f} s", flush=True)
            datasets["png"] = png
        kinds = [k for k in kinds if k in datasets]
        repeats = args.repeats if n <= args.repeat_below else 1
        for r in range(repeats):
            for kind in kinds:  # alternated: in-memory, records, png, in-memory, ...
                m = measure(kind, datasets[kind], n, folder, log, args.epochs)
                m["repeat"] = r
                result["measurements"].append(m)
                save(result, path)
        shutil.rmtree(folder, ignore_errors=True)
    print(table([path]))


def profile(args):
    """Bare input pipelines, no model: examples/s of one pass over the 50k training split.

    The in-memory pipeline (`tfvae.data.make_dataset`), the streamed ones
    (`tfvae.sources.pipeline` over the records and the PNG folder), shuffled and not.
    """
    from tfvae import data as data_lib
    from tfvae import sources

    n = args.ns[0]
    folder = os.path.join(args.work, f"profile-{n}")
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    npz = os.path.join(folder, "digits.npz")
    x = digits(n)
    np.savez(npz, x=x)
    subprocess.run([*tfvae_cmd(), "prepare-data", npz, "--output", os.path.join(folder, "rec"),
                    "--shards", "16"], check=True, env=env(), capture_output=True)
    write_png_folder(x, os.path.join(folder, "png"))
    found = data_lib.source_splits(os.path.join(folder, "rec"), seed=0)
    rec = found["train"]
    png = data_lib.source_splits(os.path.join(folder, "png"), seed=0)["train"]
    (x_train, _), _ = data_lib.load(npz)
    results = {}

    def timed_pass(name, dataset, repeats=2):
        best = None
        for _ in range(repeats):
            start, count = time.perf_counter(), 0
            for batch in dataset:
                count += int((batch[0] if isinstance(batch, tuple) else batch).shape[0]
                             if not isinstance(batch, dict) else batch["x"].shape[0])
            seconds = time.perf_counter() - start
            best = seconds if best is None else min(best, seconds)
        results[name] = {"examples": count, "seconds": best, "examples_per_s": count / best}
        print(f"{name:60s} {count:7d} ex {best:6.2f} s {count / best:10,.0f} ex/s", flush=True)

    timed_pass("in-memory: data.make_dataset(shuffle)", data_lib.make_dataset(x_train, 64))
    timed_pass("records: sources.pipeline(shuffle)",
               sources.pipeline(rec, 64, "bernoulli", "none", shuffle=True))
    timed_pass("png: sources.pipeline(shuffle)",
               sources.pipeline(png, 64, "bernoulli", "none", shuffle=True))
    timed_pass("records: sources.pipeline(no shuffle)",
               sources.pipeline(rec, 64, "bernoulli", "none", shuffle=False))

    path = os.path.join(RESULTS, f"profile-{datetime.datetime.now():%Y%m%d-%H%M%S}.json")
    save({"date": datetime.datetime.now().isoformat(timespec="seconds"), "n": n,
          "command": " ".join([sys.executable, *sys.argv]), "tfvae_commit": git_commit(),
          "passes": results}, path)
    shutil.rmtree(folder, ignore_errors=True)


def fit_slope(points):
    """Least-squares slope (bytes per example) and intercept of peak RSS against N."""
    if len({n for n, _ in points}) < 2:
        return None, None
    n, rss = np.array(points, dtype=np.float64).T
    slope, intercept = np.polyfit(n, rss, 1)
    return slope, intercept


def speeds(m):
    """`(mean, median-epoch)` training examples/s of a measurement (epochs 2.. only)."""
    timed_epochs = m.get("epoch_timings", [])[1:]
    if not timed_epochs or not m.get("train_examples"):
        return None, None
    seconds = [e["train_seconds"] for e in timed_epochs]
    return (m["train_examples"] * len(seconds) / sum(seconds),
            m["train_examples"] / float(np.median(seconds)))


def table(paths):
    """The markdown table of result files; ratios against the in-memory run beside each one."""
    rows, slopes = [], {}
    for path in paths:
        with open(path) as f:
            result = json.load(f)
        if "measurements" not in result:
            continue
        ms = [m for m in result["measurements"] if m.get("peak_rss_bytes")]
        ref = {}
        for m in ms:
            if m["path"] == "npz" and speeds(m)[0]:
                ref.setdefault(m["n"], {})[m.get("repeat", 0)] = speeds(m)
        for m in ms:
            mean, median = speeds(m)
            base = ref.get(m["n"], {}).get(m.get("repeat", 0))
            ratio = (mean / base[0], median / base[1]) if mean and base else (None, None)
            rows.append({"path": m["path"], "n": m["n"], "rss": m["peak_rss_bytes"] / 2**30,
                         "mean": mean, "median": median, "ratio": ratio,
                         "repeat": m.get("repeat", 0), "epochs": m.get("epochs"),
                         "file": os.path.basename(path)})
            slopes.setdefault(m["path"], []).append((m["n"], m["peak_rss_bytes"]))

    def num(v, fmt):
        return "—" if v is None else format(v, fmt)

    lines = ["| path | N | epochs (timed) | peak RSS (GB) | train examples/s, median epoch "
             "(mean) | ratio to in-memory, median epoch (mean) |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    order = {"npz": 0, "records": 1, "png": 2}
    rows.sort(key=lambda r: (r["n"], r["file"], r["repeat"], order[r["path"]]))
    for r in rows:
        lines.append(f"| {PATH_NAMES[r['path']]} | {r['n']:,} | {r['epochs']} ({r['epochs'] - 1}) "
                     f"| {r['rss']:.2f} | {num(r['median'], ',.0f')} ({num(r['mean'], ',.0f')}) "
                     f"| {num(r['ratio'][1], '.2f')} ({num(r['ratio'][0], '.2f')}) |")
    lines.append("")
    ratios = {}
    for r in rows:
        if r["path"] != "npz" and r["ratio"][1] is not None:
            ratios.setdefault((r["path"], r["n"]), []).append(r["ratio"][1])
    for (kind, n), values in sorted(ratios.items(), key=lambda item: (item[0][1], item[0][0])):
        lines.append(f"* {PATH_NAMES[kind]} / in-memory at N = {n:,} (median-epoch ratios, "
                     f"each against the in-memory run beside it): "
                     f"{', '.join(f'{v:.2f}' for v in values)}"
                     + (f"; median {np.median(values):.2f}" if len(values) > 1 else ""))
    for kind, points in slopes.items():
        slope, intercept = fit_slope(points)
        ns = sorted({n for n, _ in points})
        if slope is None:
            lines.append(f"* {PATH_NAMES[kind]}: one N only ({ns[0]:,}), no slope")
        else:
            lines.append(f"* {PATH_NAMES[kind]}: peak RSS slope {slope / 1024:.4f} KB per example "
                         f"(least squares over N = {', '.join(f'{n:,}' for n in ns)}, every run; "
                         f"intercept {intercept / 2**30:.2f} GB)")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ns", default="50000,200000,1000000",
                        type=lambda s: [int(v) for v in s.split(",")])
    parser.add_argument("--paths", default="npz,records,png", type=lambda s: s.split(","))
    parser.add_argument("--png", default="50000", type=lambda s: [int(v) for v in s.split(",") if v],
                        help="the N for which a PNG folder is written (slow)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the small-N pairs")
    parser.add_argument("--repeat-below", type=int, default=50000)
    parser.add_argument("--max-npz", type=int, default=1000000)
    parser.add_argument("--max-records", type=int, default=5000000)
    parser.add_argument("--work", default="/tmp/tfvae-stream-bench")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run (2.. are timed)")
    parser.add_argument("--table", nargs="+", help="print the table of these result files")
    parser.add_argument("--profile", action="store_true",
                        help="time bare input pipelines over the first --ns (no model)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    argv = sys.argv[1:]
    if argv and argv[0] == "--child":
        sys.exit(child(argv[1], argv[3:]))
    args = parser.parse_args()
    if args.table:
        print(table(args.table))
    elif args.profile:
        profile(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
