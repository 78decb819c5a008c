"""The shapes disentanglement tables (README) from `results/shapes/*.json` (bench_shapes.py).

    python benchmarks/shapes_table.py [--results benchmarks/results/shapes]
                                      [--population benchmarks/results/shapes_population]

One markdown row per variant: mean ± sample sd over the seeds present, on the
first 2,000 validation images (nats per image; MIG in [0, 1]); `mi`, `tc`, ...
for those images' own aggregate posterior, `*_heldout` for the population's
estimated by leaving each image out. With `--population` (runs of
`bench_shapes.py --population`), a second table per (variant, seed): the
surgery terms three ways — the 2,000 images' set, held out, and all 20,808
images (the population itself), each ± its own error.
"""

import argparse
import glob
import json
import os

import numpy as np

ORDER = ("VAE", "beta-VAE (4)", "beta-TCVAE (6)")
COLUMNS = (("elbo", 1), ("log_px", 1), ("kl", 2), ("mi", 2), ("mi_heldout", 2), ("tc", 2),
           ("tc_heldout", 2), ("dwkl", 2), ("marginal_kl", 2), ("active_units", 0), ("mig", 3),
           ("mig_shape", 3), ("mig_scale", 3), ("mig_rotation", 3), ("mig_x", 3), ("mig_y", 3))
TERMS = ("mi", "marginal_kl", "tc", "dwkl")


def _cell(values, digits):
    values = np.asarray(values, np.float64)
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def _runs(directory):
    by_variant = {}
    for path in sorted(glob.glob(os.path.join(directory, "*.json"))):
        with open(path) as f:
            result = json.load(f)
        by_variant.setdefault(result["variant"], []).append(result)
    return sorted(by_variant.items(),
                  key=lambda item: ORDER.index(item[0]) if item[0] in ORDER else len(ORDER))


def _label(name):
    return name.replace("beta", "β")


def _with_error(run, key, error):
    return f"{run[key]:.2f} ± {run[error]:.2f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=os.path.join(os.path.dirname(__file__), "results",
                                                          "shapes"))
    parser.add_argument("--population", default=None)
    args = parser.parse_args(argv)
    print("| variant | seeds | " + " | ".join(name for name, _ in COLUMNS) + " |")
    print("| --- | ---: |" + " ---: |" * len(COLUMNS))
    for name, runs in _runs(args.results):
        cells = [_cell([r[key] for r in runs], digits) for key, digits in COLUMNS]
        print(f"| {_label(name)} | {len(runs)} | " + " | ".join(cells) + " |")
    if args.population is None:
        return
    print()
    print("| variant | seed | term | 2,000 images (set) | 2,000 images (held out) "
          "| 20,808 images (population) |")
    print("| --- | ---: | --- | ---: | ---: | ---: |")
    for name, runs in _runs(args.population):
        for run in runs:
            for term in TERMS:
                print(f"| {_label(name)} | {run['seed']} | {term} | "
                      f"{_with_error(run, term, term + '_mc_stderr')} | "
                      f"{_with_error(run, term + '_heldout', term + '_heldout_stderr')} | "
                      f"{_with_error(run, 'population_' + term, 'population_' + term + '_mc_stderr')} |")


if __name__ == "__main__":
    main()
