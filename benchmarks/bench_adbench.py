"""tfvae's VAEDetector against PyOD (IForest, ECOD, KNN, VAE) on ADBench's classical datasets.

    python benchmarks/bench_adbench.py --data ../shared/data/adbench \\
        --peers-python /work/benchenv-adbench/bin/python --seeds 0 1 2 3 4
    python benchmarks/bench_adbench.py --data ../shared/data/adbench --datasets 14_glass 29_Pima \\
        --seeds 0 --configs vae              # a quick subset
    python benchmarks/bench_adbench.py --table benchmarks/results/adbench/results.jsonl

ADBench's unsupervised protocol (Han et al., 2022): for each dataset and seed, a
stratified 70 / 30 split; every detector is fitted on the 70 % **without labels**
and scores the 30 %; ROC-AUC and PR-AUC (average precision) on the 30 %. Fit time
includes each detector's training-score pass (PyOD computes `decision_scores_` in
`fit`; so does `VAEDetector`); score time is `decision_function` on the 30 %.

tfvae runs in this process (the project's environment). PyOD runs in a subprocess
with `--peers-python` (a separate environment: `pip install pyod torch tqdm`, see
benchmarks/README.md); the script hands it the same split indices, so every
detector sees the same rows. PyOD's detectors run with their default settings
(IForest and VAE seeded; VAE with `verbose=0`).

One tfvae training per (config, dataset, seed) is scored four ways (`--scores`):
−ELBO, −IWAE-k, −log p(x) and −reconstruction. Each config is one setting for all
datasets (`CONFIGS`). Results: one JSON line per (detector, dataset, seed) appended
to `--output` (a rerun skips rows already there), and the Markdown tables with
`--table`.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# tfvae's detector settings: one setting for all datasets (`VAEDetector` arguments).
_COMMON = dict(latent_dim=8, hidden_units=(64, 32), epochs=50, batch_size=64,
               learning_rate=1e-3, num_score_samples=64, iwae_k=10, jit_compile=True,
               steps_per_execution=16)
CONFIGS = {
    "vae": dict(_COMMON),
    "iwae_train": dict(_COMMON, objective="iwae", k=5),
    "iaf": dict(_COMMON, posterior="iaf"),
}
SCORES = ("elbo", "iwae", "log_px", "reconstruction")
PEERS = ("IForest", "ECOD", "KNN", "PyOD-VAE")


def split_indices(y, seed):
    """ADBench's stratified 70 / 30 split."""
    from sklearn.model_selection import train_test_split

    index = np.arange(len(y))
    train, test = train_test_split(index, test_size=0.3, stratify=y, random_state=seed)
    return np.sort(train), np.sort(test)


def metrics(y, scores):
    from sklearn.metrics import average_precision_score, roc_auc_score

    return {"roc_auc": float(roc_auc_score(y, scores)),
            "pr_auc": float(average_precision_score(y, scores))}


def load(path):
    with np.load(path) as archive:
        return archive["X"].astype(np.float64), archive["y"].astype(int)


def run_tfvae(config, X, y, train, test, seed, scores):
    import resource

    from tfvae.anomaly import VAEDetector

    rows = []
    start = time.perf_counter()
    detector = VAEDetector(score=scores[0], seed=seed, **CONFIGS[config]).fit(X[train])
    fit_time = time.perf_counter() - start
    for score in scores:
        detector.set_params(score=score)
        start = time.perf_counter()
        values = detector.decision_function(X[test])
        score_time = time.perf_counter() - start
        rows.append({"detector": f"tfvae-{config}-{score}", **metrics(y[test], values),
                     "fit_s": fit_time, "score_s": score_time,
                     "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
    return rows


def peer_worker(job_path, out_path):
    """Runs in the peers' environment: every (dataset, seed) in the job, each PyOD detector."""
    import resource

    with open(job_path) as f:
        job = json.load(f)
    from pyod.models.ecod import ECOD
    from pyod.models.iforest import IForest
    from pyod.models.knn import KNN
    from pyod.models.vae import VAE

    makers = {"IForest": lambda seed: IForest(random_state=seed), "ECOD": lambda seed: ECOD(),
              "KNN": lambda seed: KNN(),
              "PyOD-VAE": lambda seed: VAE(random_state=seed, verbose=0)}
    with open(out_path, "a") as out:
        for task in job["tasks"]:
            X, y = load(task["path"])
            train, test = np.array(task["train"]), np.array(task["test"])
            for name in task["peers"]:
                start = time.perf_counter()
                try:
                    detector = makers[name](task["seed"]).fit(X[train])
                except Exception as error:  # noqa: BLE001  (a peer's failure is a result)
                    out.write(json.dumps({**task["key"], "detector": name,
                                          "error": str(error)[:200]}) + "\n")
                    out.flush()
                    continue
                fit_time = time.perf_counter() - start
                start = time.perf_counter()
                values = detector.decision_function(X[test])
                score_time = time.perf_counter() - start
                # The worker's peak so far: per (dataset, seed) and the peers it ran.
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                out.write(json.dumps({**task["key"], "detector": name,
                                      **metrics(y[test], values), "fit_s": fit_time,
                                      "score_s": score_time, "peak_rss_mb": peak}) + "\n")
                out.flush()


def _done(path):
    if not os.path.exists(path):
        return set()
    with open(path) as f:
        return {(r["dataset"], r["seed"], r["detector"]) for r in map(json.loads, f)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/adbench")
    parser.add_argument("--datasets", nargs="*", default=None,
                        help="file names without .npz (default: every .npz in --data)")
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--configs", nargs="*", default=["vae"], choices=tuple(CONFIGS))
    parser.add_argument("--scores", nargs="*", default=list(SCORES), choices=SCORES)
    parser.add_argument("--peers", nargs="*", default=list(PEERS), choices=PEERS)
    parser.add_argument("--peers-python", default=None,
                        help="the peers' environment's python (default: no peers)")
    parser.add_argument("--output", default="benchmarks/results/adbench/results.jsonl")
    parser.add_argument("--table", nargs="*", default=None,
                        help="print the tables of results files (with --datasets, --seeds "
                        "and --only to select rows)")
    parser.add_argument("--only", default=None,
                        help="--table: only detectors whose name starts with this")
    parser.add_argument("--peer-worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.peer_worker:
        return peer_worker(*args.peer_worker)
    if args.table:
        seeds = None if args.seeds == [0, 1, 2, 3, 4] else args.seeds
        print(tables(args.table, args.datasets, seeds, args.only))
        return 0
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    names = args.datasets or sorted(f[:-4] for f in os.listdir(args.data) if f.endswith(".npz"))
    done = _done(args.output)
    for name in names:
        path = os.path.join(args.data, name + ".npz")
        X, y = load(path)
        for seed in args.seeds:
            train, test = split_indices(y, seed)
            key = {"dataset": name, "seed": seed, "n": int(len(X)), "d": int(X.shape[1]),
                   "anomalies": float(y.mean())}
            peers = [p for p in args.peers if (name, seed, p) not in done]
            if args.peers_python and peers:
                with tempfile.TemporaryDirectory() as folder:
                    job = os.path.join(folder, "job.json")
                    with open(job, "w") as f:
                        json.dump({"tasks": [{"path": os.path.abspath(path), "seed": seed,
                                              "key": key, "peers": peers,
                                              "train": train.tolist(),
                                              "test": test.tolist()}]}, f)
                    subprocess.run([args.peers_python, os.path.abspath(__file__),
                                    "--peer-worker", job, os.path.abspath(args.output)],
                                   check=True)
                print(f"{name} seed {seed}: peers done", flush=True)
            for config in args.configs:
                if all((name, seed, f"tfvae-{config}-{s}") in done for s in args.scores):
                    continue
                rows = run_tfvae(config, X, y, train, test, seed, args.scores)
                with open(args.output, "a") as out:
                    for row in rows:
                        out.write(json.dumps({**key, **row}) + "\n")
                best = max(rows, key=lambda r: r["roc_auc"])
                print(f"{name} seed {seed}: tfvae-{config} fit {rows[0]['fit_s']:.1f}s, "
                      f"best {best['detector']} {best['roc_auc']:.3f}", flush=True)
    print(tables([args.output]))
    return 0


def tables(paths, datasets=None, seeds=None, only=None):
    """Markdown: mean ROC-AUC / PR-AUC per dataset and detector, average ranks, times
    (rows of the `paths` files, optionally of some datasets, seeds and detectors only)."""
    rows = []
    for path in paths:
        with open(path) as f:
            rows += [r for r in map(json.loads, f) if "error" not in r]
    rows = [r for r in rows if (datasets is None or r["dataset"] in datasets)
            and (seeds is None or r["seed"] in seeds)
            and (only is None or r["detector"].startswith(only))]
    detectors = sorted({r["detector"] for r in rows}, key=lambda d: (d.startswith("tfvae"), d))
    datasets = sorted({r["dataset"] for r in rows}, key=lambda d: int(d.split("_")[0]))
    cell = {}
    for r in rows:
        cell.setdefault((r["dataset"], r["detector"]), []).append(r)
    # Datasets on which every detector ran (ranks compare like with like).
    complete = [d for d in datasets if all((d, k) in cell for k in detectors)]
    out = []
    for measure in ("roc_auc", "pr_auc"):
        out.append(f"\n### {measure.replace('_', '-').upper()} (mean over seeds)\n")
        out.append("| dataset | seeds | " + " | ".join(detectors) + " |")
        out.append("| --- | ---: | " + " | ".join("---:" for _ in detectors) + " |")
        for d in datasets:
            seeds = max(len(cell.get((d, k), [])) for k in detectors)
            values = [np.mean([r[measure] for r in cell[(d, k)]]) if (d, k) in cell else None
                      for k in detectors]
            best = max(v for v in values if v is not None)
            out.append(f"| {d} | {seeds} | " + " | ".join(
                "–" if v is None else (f"**{v:.3f}**" if v == best else f"{v:.3f}")
                for v in values) + " |")
        if complete:
            means = [np.mean([np.mean([r[measure] for r in cell[(d, k)]]) for d in complete])
                     for k in detectors]
            ranks = np.mean([_ranks([np.mean([r[measure] for r in cell[(d, k)]])
                                     for k in detectors]) for d in complete], axis=0)
            out.append(f"| **mean ({len(complete)} datasets)** | | " + " | ".join(
                f"{m:.3f}" for m in means) + " |")
            out.append("| **average rank** | | " + " | ".join(f"{r:.2f}" for r in ranks) + " |")
    out.append("\n### Time per fit and per scoring of the 30 % "
               "(s, median over datasets and seeds), by the dataset's size, and peak memory\n")
    bins = ((0, 1000), (1000, 5000), (5000, None))
    names = [f"fit, n < {bins[0][1]:,}", f"fit, {bins[1][0]:,} ≤ n < {bins[1][1]:,}",
             f"fit, n ≥ {bins[2][0]:,}"]
    out.append("| detector | fit | score | " + " | ".join(names)
               + " | peak RSS (MB, median / max) |")
    out.append("| --- | ---: | ---: | " + " | ".join("---:" for _ in names) + " | ---: |")
    for k in detectors:
        mine = [r for r in rows if r["detector"] == k]
        by_size = []
        for low, high in bins:
            fits = [r["fit_s"] for r in mine if r["n"] >= low and (high is None or r["n"] < high)]
            by_size.append(f"{np.median(fits):.1f} ({len(fits)})" if fits else "–")
        peaks = [r["peak_rss_mb"] for r in mine if "peak_rss_mb" in r]
        memory = f"{np.median(peaks):,.0f} / {max(peaks):,.0f}" if peaks else "–"
        out.append(f"| {k} | {np.median([r['fit_s'] for r in mine]):.2f} | "
                   f"{np.median([r['score_s'] for r in mine]):.2f} | " + " | ".join(by_size)
                   + f" | {memory} |")
    out.append("\n(In parentheses: the fits in each size bin. tfvae's peak is its whole "
               "process's so far, TensorFlow's runtime included; a PyOD row's is its worker "
               "process's, one per dataset and seed.)")
    out.append(headline(cell, datasets))
    tf_rows = {}
    for r in rows:
        if r["detector"].startswith("tfvae-"):
            config, score = r["detector"][6:].rsplit("-", 1)
            tf_rows.setdefault((config, r["dataset"], r["seed"]), {})[score] = r["roc_auc"]
    pairs = [v for v in tf_rows.values() if "log_px" in v and "elbo" in v]
    if pairs:
        wins = sum(v["log_px"] > v["elbo"] for v in pairs)
        ties = sum(v["log_px"] == v["elbo"] for v in pairs)
        out.append(f"\n−log p(x) beats −ELBO in ROC-AUC in {wins} of {len(pairs)} "
                   f"(config, dataset, seed) runs ({ties} ties).")
        # Per (config, dataset): the two scores' ROC-AUC averaged over the same seeds.
        means = {}
        for (config, dataset, _), v in tf_rows.items():
            if "log_px" in v and "elbo" in v:
                means.setdefault((config, dataset), []).append((v["log_px"], v["elbo"]))
        per_dataset = [np.mean(v, axis=0) for v in means.values()]
        better = sum(a > b for a, b in per_dataset)
        same = sum(a == b for a, b in per_dataset)
        gaps = [a - b for a, b in per_dataset]
        out.append(f"Averaged over seeds, −log p(x) beats −ELBO on {better} of "
                   f"{len(per_dataset)} (config, dataset) pairs ({same} ties); the mean "
                   f"difference in ROC-AUC is {np.mean(gaps):+.4f} (range "
                   f"{min(gaps):+.3f} to {max(gaps):+.3f}).")
    return "\n".join(out)


# The comparison the issue asks for: tfvae's one configuration (its setting and its score,
# both chosen on the selection datasets: benchmarks/adbench_selection.py) against PyOD's.
HEADLINE = ("ECOD", "IForest", "KNN", "PyOD-VAE", "tfvae-vae-elbo")


def headline(cell, datasets, detectors=HEADLINE):
    """Markdown: the five detectors alone on the datasets and seeds where all five ran —
    mean ROC-AUC / PR-AUC, average ranks, and tfvae's wins against each peer."""
    # Per dataset, only the seeds every one of the five ran (like against like).
    shared = {}
    for d in datasets:
        if all((d, k) in cell for k in detectors):
            common = set.intersection(*({r["seed"] for r in cell[(d, k)]} for k in detectors))
            if common:
                shared[d] = common
    complete = list(shared)
    if not complete:
        return ""
    cell = {(d, k): [r for r in cell[(d, k)] if r["seed"] in shared[d]]
            for d in complete for k in detectors}
    seeds = sorted({len(shared[d]) for d in complete})
    out = [f"\n### tfvae's configuration against PyOD's detectors ({len(complete)} datasets "
           f"and seeds where all five ran; {'–'.join(map(str, sorted({seeds[0], seeds[-1]})))} seeds each)\n",
           "| | " + " | ".join(detectors) + " |",
           "| --- | " + " | ".join("---:" for _ in detectors) + " |"]
    mine = detectors[-1]
    for measure in ("roc_auc", "pr_auc"):
        means = np.array([[np.mean([r[measure] for r in cell[(d, k)]]) for k in detectors]
                          for d in complete])
        label = measure.replace("_", "-").upper()
        out.append(f"| mean {label} | " + " | ".join(f"{v:.3f}" for v in means.mean(0)) + " |")
        ranks = np.mean([_ranks(row) for row in means], axis=0)
        out.append(f"| average rank ({label}) | " + " | ".join(f"{v:.2f}" for v in ranks)
                   + " |")
        wins = [int(np.sum(means[:, -1] > means[:, j])) for j in range(len(detectors) - 1)]
        out.append(f"| {mine} ahead ({label}) | " + " | ".join(
            f"{w} of {len(complete)}" for w in wins) + " | |")
    return "\n".join(out)


def _ranks(values):
    """Rank 1 = best (highest); ties share the mean rank."""
    values = np.asarray(values)
    order = (-values).argsort(kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    for v in np.unique(values):
        ranks[values == v] = ranks[values == v].mean()
    return ranks


if __name__ == "__main__":
    sys.exit(main())
