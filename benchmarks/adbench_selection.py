"""How `bench_adbench.py`'s one tfvae setting (`CONFIGS["vae"]`) was chosen, on 6 of the 29 datasets.

    python benchmarks/adbench_selection.py --data ../shared/data/adbench base s01 s03 steps2k
    python benchmarks/adbench_selection.py --summary benchmarks/results/adbench/selection.jsonl

Each candidate changes one thing in `bench_adbench._COMMON` and is trained on the 70 % of
six datasets (`SELECTION`, seeds 0 and 1, ADBench's split) and scored three ways. The
candidate with the best mean ROC-AUC is the setting used on every dataset; the other 23
datasets played no part in the choice (the six are in the full table too, so it
flatters tfvae slightly there). Rows: one JSON line per (candidate, dataset, seed).
"""

import argparse
import functools
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import bench_adbench  # noqa: E402

SELECTION = ["14_glass", "15_Hepatitis", "42_WBC", "45_wine", "6_cardio", "40_vowels"]
# name -> changes to bench_adbench._COMMON. `_min_scale` is TabularLikelihood's floor
# on σ (default 1e-3); `_min_steps` raises the epochs of a small table to at least
# that many optimizer steps.
CANDIDATES = {
    "base": {},
    "s01": {"_min_scale": 0.1},
    "s03": {"_min_scale": 0.3},
    "steps2k": {"_min_steps": 2000},
    "lat4": {"latent_dim": 4},
    "pred": {"likelihood_scale": "predicted"},
}
SCORES = ("elbo", "log_px", "reconstruction")


def run(data, names, output):
    from tfvae import anomaly
    from tfvae.tabular_likelihood import TabularLikelihood

    done = set()
    if os.path.exists(output):
        with open(output) as f:
            done = {(r["config"], r["dataset"], r["seed"]) for r in map(json.loads, f)}
    for config in names:
        extra = dict(CANDIDATES[config])
        min_scale = extra.pop("_min_scale", 1e-3)
        min_steps = extra.pop("_min_steps", 0)
        # The σ floor is not a VAEDetector option: the candidate swaps the head's default.
        anomaly.TabularLikelihood = functools.partial(TabularLikelihood, min_scale=min_scale)
        for name in SELECTION:
            X, y = bench_adbench.load(os.path.join(data, name + ".npz"))
            for seed in (0, 1):
                if (config, name, seed) in done:
                    continue
                train, test = bench_adbench.split_indices(y, seed)
                options = {**bench_adbench._COMMON, **extra}
                per_epoch = -(-len(train) // options["batch_size"])
                options["epochs"] = max(options["epochs"], -(-min_steps // per_epoch))
                start = time.perf_counter()
                detector = anomaly.VAEDetector(score="elbo", seed=seed, **options).fit(X[train])
                row = {"config": config, "dataset": name, "seed": seed,
                       "fit_s": time.perf_counter() - start}
                for score in SCORES:
                    detector.set_params(score=score)
                    row[score] = bench_adbench.metrics(
                        y[test], detector.decision_function(X[test]))["roc_auc"]
                print(json.dumps(row), flush=True)
                with open(output, "a") as f:
                    f.write(json.dumps(row) + "\n")


def summary(path):
    """Markdown: each candidate's mean ROC-AUC per score over the (dataset, seed) runs
    that every candidate finished."""
    with open(path) as f:
        rows = [json.loads(line) for line in f]
    by = {}
    for r in rows:
        by.setdefault(r["config"], {})[(r["dataset"], r["seed"])] = r
    common = set.intersection(*(set(v) for v in by.values()))
    lines = [f"| candidate | runs | " + " | ".join(f"−{s} (all its runs)" for s in SCORES)
             + f" | −elbo (the {len(common)} runs all finished) |",
             "| --- | ---: | " + " | ".join("---:" for _ in SCORES) + " | ---: |"]
    for config, runs in by.items():
        means = [np.mean([r[s] for r in runs.values()]) for s in SCORES]
        shared = np.mean([runs[k]["elbo"] for k in common]) if common else float("nan")
        lines.append(f"| {config} | {len(runs)} | " + " | ".join(f"{m:.3f}" for m in means)
                     + f" | {shared:.3f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("candidates", nargs="*", help=f"of {sorted(CANDIDATES)} (default: base)")
    parser.add_argument("--data", default="../shared/data/adbench")
    parser.add_argument("--output", default="benchmarks/results/adbench/selection.jsonl")
    parser.add_argument("--summary", default=None, help="print the table of a results file")
    args = parser.parse_args(argv)
    if args.summary:
        print(summary(args.summary))
        return 0
    unknown = sorted(set(args.candidates) - set(CANDIDATES))
    if unknown:
        parser.error(f"unknown candidates {unknown}; expected some of {sorted(CANDIDATES)}")
    run(args.data, args.candidates or ["base"], args.output)
    print(summary(args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
