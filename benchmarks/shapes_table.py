"""The shapes disentanglement table (README) from `results/shapes/*.json` (bench_shapes.py).

    python benchmarks/shapes_table.py [--results benchmarks/results/shapes]

One markdown row per variant: mean ± sample sd over the seeds present, on the
first 2,000 validation images (nats per image; MIG in [0, 1]).
"""

import argparse
import glob
import json
import os

import numpy as np

ORDER = ("VAE", "beta-VAE (4)", "beta-TCVAE (6)")
COLUMNS = (("elbo", 1), ("log_px", 1), ("kl", 2), ("mi", 2), ("tc", 2), ("dwkl", 2),
           ("marginal_kl", 2), ("active_units", 0), ("mig", 3), ("mig_shape", 3),
           ("mig_scale", 3), ("mig_rotation", 3), ("mig_x", 3), ("mig_y", 3))


def _cell(values, digits):
    values = np.asarray(values, np.float64)
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=os.path.join(os.path.dirname(__file__), "results",
                                                          "shapes"))
    args = parser.parse_args(argv)
    by_variant = {}
    for path in sorted(glob.glob(os.path.join(args.results, "*.json"))):
        with open(path) as f:
            result = json.load(f)
        by_variant.setdefault(result["variant"], []).append(result)
    print("| variant | seeds | " + " | ".join(name for name, _ in COLUMNS) + " |")
    print("| --- | ---: |" + " ---: |" * len(COLUMNS))
    for name in sorted(by_variant, key=lambda n: ORDER.index(n) if n in ORDER else len(ORDER)):
        runs = by_variant[name]
        cells = [_cell([r[key] for r in runs], digits) for key, digits in COLUMNS]
        print(f"| {name.replace('beta', 'β')} | {len(runs)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
