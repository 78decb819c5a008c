"""The binarised-MNIST table (README) from `results/mnist/*.json` written by bench_mnist.py.

    python benchmarks/mnist_table.py [--results benchmarks/results/mnist]

Prints one markdown row per variant: mean ± sample sd over the seeds present
(a single seed shows no spread), in nats per validation digit; then one row per
`tfvae train` recipe measured by bench_cli_defaults.py (`results/mnist_cli/`, the
columns it does not measure shown as —); then each variant's log p(x) gain over
the plain VAE beside both seed-to-seed spreads.
"""

import argparse
import glob
import json
import os

import numpy as np

ORDER = ("VAE", "IWAE-5", "IWAE-50", "IAF", "VampPrior", "hierarchical")
LABELS = {
    "VAE": "VAE (diagonal q, N(0, I))",
    "IWAE-5": "IWAE, k = 5 (DReG)",
    "IWAE-50": "IWAE, k = 50 (DReG)",
    "IAF": "IAF posterior (2 steps)",
    "VampPrior": "VampPrior (500 pseudo-inputs)",
    "hierarchical": "two stochastic layers (z₁ 32, z₂ 16)",
}


def _cell(values, digits=2):
    values = np.asarray(values, np.float64)
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def _in_order(names):
    """Variant names in the table's order (unknown names last)."""
    return sorted(names, key=lambda n: ORDER.index(n) if n in ORDER else len(ORDER))


def rows(results):
    by_variant = {}
    for result in results:
        by_variant.setdefault(result["variant"], []).append(result)
    lines = []
    for name in _in_order(by_variant):
        runs = sorted(by_variant[name], key=lambda r: r["seed"])
        get = lambda key: [r[key] for r in runs]  # noqa: E731
        subset = lambda key: [r["gap_subset"][key] for r in runs]  # noqa: E731
        kl = _cell(get("kl"))
        if all("kl_z1" in r for r in runs):
            kl += f" (z₁ {_cell(get('kl_z1'), 1)}, z₂ {_cell(get('kl_z2'), 1)})"
        lines.append(
            f"| {LABELS.get(name, name)} | {len(runs)} | {_cell(get('elbo'))} | "
            f"{_cell(get('log_px'))} | {_cell(get('gap'))} | {_cell(subset('amortization_gap'))} | "
            f"{_cell(subset('approximation_gap'))} | {kl} | {_cell(get('active_units'), 0)} | "
            f"{_cell(np.asarray(get('train_seconds')) / 60, 1)} | "
            f"{_cell(np.asarray(get('eval_seconds')) / 60, 1)} |")
    return lines


def cli_rows(results):
    """One row per `tfvae train` recipe (learning rate and schedule) of bench_cli_defaults.py."""
    by_recipe = {}
    for result in results:
        config = result["config"]
        key = (config.get("lr_schedule", "constant"), config["learning_rate"])
        by_recipe.setdefault(key, []).append(result)
    lines = []
    default = (DEFAULT_SCHEDULE, DEFAULT_RATE)
    for (schedule, rate), runs in sorted(by_recipe.items(), key=lambda kv: kv[0] != default):
        get = lambda key: [r[key] for r in runs]  # noqa: E731
        recipe = (f"cosine {_rate(rate)} → {_rate(rate * 0.1)}" if schedule == "cosine"
                  else f"{schedule} {_rate(rate)}")
        label = ("`tfvae train` defaults" if (schedule, rate) == default else "`tfvae train`")
        lines.append(
            f"| {label} (Adam {recipe}) | {len(runs)} | "
            f"{_cell(get('elbo'))} | {_cell(get('log_px'))} | {_cell(get('gap'))} | — | — | "
            f"{_cell(get('kl'))} | {_cell(get('active_units'), 0)} | — | "
            f"{_cell(np.asarray(get('eval_seconds')) / 60, 1)} |")
    return lines


def _rate(rate):
    """A learning rate as `1e-3`, `2e-4`."""
    mantissa, exponent = f"{rate:e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


# The command line's defaults, for labelling its row (tfvae.runs.RunConfig).
DEFAULT_SCHEDULE, DEFAULT_RATE = "cosine", 1e-3


def margins(results, baseline="VAE"):
    """Each variant's log p(x) gain over `baseline` against both seed-to-seed spreads.

    The gain is the difference of the seed means; "same seed" pairs runs that share
    their seed (initialisation and shuffling), a paired view of the same gain. A gain
    counts as resolved when it is larger than both sample sds (each needs ≥ 2 seeds).
    """
    by_variant = {}
    for result in results:
        by_variant.setdefault(result["variant"], {})[result["seed"]] = result["log_px"]
    base = by_variant.get(baseline, {})
    if len(base) < 2:
        return []
    base_sd = np.std(list(base.values()), ddof=1)
    lines = []
    for name in _in_order(set(by_variant) - {baseline}):
        values = by_variant[name]
        gain = np.mean(list(values.values())) - np.mean(list(base.values()))
        paired = [values[s] - base[s] for s in sorted(values) if s in base]
        sd = np.std(list(values.values()), ddof=1) if len(values) > 1 else None
        if sd is None:
            resolved, sd_cell = "one seed", "—"
        else:
            resolved, sd_cell = ("yes" if gain > max(sd, base_sd) else "no"), f"{sd:.2f}"
        lines.append(f"| {LABELS.get(name, name)} | {gain:+.2f} | "
                     f"{', '.join(f'{d:+.2f}' for d in paired)} | {sd_cell} | {base_sd:.2f} | "
                     f"{resolved} |")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=os.path.join(os.path.dirname(__file__), "results",
                                                          "mnist"))
    parser.add_argument("--cli-results", default=os.path.join(os.path.dirname(__file__),
                                                              "results", "mnist_cli"))
    args = parser.parse_args(argv)
    results = []
    for path in sorted(glob.glob(os.path.join(args.results, "*.json"))):
        with open(path) as f:
            results.append(json.load(f))
    print("| variant | seeds | ELBO | log p(x) | gap | amortization | approximation | KL | "
          "active units | train (min) | eval (min) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    print("\n".join(rows(results)))
    cli = []
    for path in sorted(glob.glob(os.path.join(args.cli_results, "*.json"))):
        with open(path) as f:
            cli.append(json.load(f))
    if cli:
        print("\n".join(cli_rows(cli)))
    lines = margins(results)
    if lines:
        print()
        print("| variant | log p(x) gain over the VAE | same seed | variant sd | VAE sd | "
              "gain > both sds |")
        print("| --- | ---: | ---: | ---: | ---: | :---: |")
        print("\n".join(lines))


if __name__ == "__main__":
    main()
