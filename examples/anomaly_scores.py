"""Score unseen digit classes as anomalies with per-example log p(x). Run: python examples/anomaly_scores.py [--quick] [--output DIR]"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

import tfvae  # noqa: E402
from _common import example_parser, fresh_output_dir  # noqa: E402

NORMAL_CLASSES = (0, 1, 2, 3, 4)


def roc_auc(normal, anomalous):
    """P(score of an anomaly > score of a normal example), ties counted ½ (Mann–Whitney U / n₁n₂)."""
    normal, anomalous = np.asarray(normal), np.asarray(anomalous)
    greater = (anomalous[:, None] > normal[None, :]).sum()
    ties = (anomalous[:, None] == normal[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(normal) * len(anomalous)))


def chance_sd(n_normal, n_anomalous):
    """The standard deviation of the AUC of uninformative scores: √((n₁ + n₂ + 1) / (12 n₁ n₂))."""
    return float(np.sqrt((n_normal + n_anomalous + 1) / (12.0 * n_normal * n_anomalous)))


def main(argv=None):
    parser = example_parser(__doc__)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--num-samples", type=int, default=None, help="importance samples K")
    args = parser.parse_args(argv)
    epochs = args.epochs or (15 if args.quick else 150)
    num_samples = args.num_samples or (20 if args.quick else 500)
    output = fresh_output_dir(args.output, "anomaly_scores")

    # Statically binarised digits, so that log p(x) is a proper (discrete) likelihood.
    (x_train, y_train), (x_val, y_val) = tfvae.data.load_digits()
    x_train = tfvae.data.prepare(x_train, "bernoulli", "static", seed=0)
    x_val = tfvae.data.prepare(x_val, "bernoulli", "static", seed=1)
    normal_train = np.isin(y_train, NORMAL_CLASSES)
    print(f"training on classes {NORMAL_CLASSES}: {normal_train.sum()} digits")

    model = tfvae.build_vae((8, 8, 1), 8, hidden_units=(128, 64), seed=0)
    model.compile(optimizer=keras.optimizers.Adam(2e-3))
    model.fit(x_train[normal_train], epochs=epochs, batch_size=64, verbose=0)

    # Per-example scores of every held-out digit, in input order.
    scores = tfvae.evaluation.score_examples(model, x_val, num_samples=num_samples, seed=0)
    anomalous = ~np.isin(y_val, NORMAL_CLASSES)
    results = {}
    for key, sign in (("log_px", -1.0), ("elbo", -1.0), ("squared_error", 1.0)):
        score = sign * scores[key]  # higher = more anomalous
        results[key] = roc_auc(score[~anomalous], score[anomalous])
    sd = chance_sd(int((~anomalous).sum()), int(anomalous.sum()))
    for key, auc in results.items():
        print(f"ROC AUC, unseen classes vs held-out seen classes, by {key:>13}: {auc:.3f} "
              f"(chance 0.5 ± {sd:.3f})")

    figure = Figure(figsize=(6, 3.5))
    ax = figure.subplots()
    bins = np.linspace(scores["log_px"].min(), scores["log_px"].max(), 30)
    ax.hist(scores["log_px"][~anomalous], bins=bins, alpha=0.6, label=f"seen classes {NORMAL_CLASSES}")
    ax.hist(scores["log_px"][anomalous], bins=bins, alpha=0.6, label="unseen classes")
    ax.set_xlabel(f"log p(x), nats ({num_samples} importance samples)")
    ax.set_ylabel("held-out digits")
    ax.legend()
    figure_path = os.path.join(output, "log_px_histogram.png")
    figure.savefig(figure_path, dpi=110, bbox_inches="tight")
    print(f"wrote {figure_path}")

    result = {"output": output, "epochs": epochs, "num_samples": num_samples, "auc": results,
              "chance_sd": sd, "figure": figure_path,
              "scores": {key: value.tolist() for key, value in scores.items()},
              "anomalous": anomalous.tolist()}
    with open(os.path.join(output, "anomaly_scores.json"), "w") as f:
        json.dump(result, f)
    return result


if __name__ == "__main__":
    main()
