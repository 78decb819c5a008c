"""Figures and a markdown report for a trained model (matplotlib, headless).

Figures are `matplotlib.figure.Figure` objects saved directly, never through
pyplot: nothing here selects a backend or touches pyplot's global state.
"""

import logging
import os

import numpy as np
from matplotlib.figure import Figure

from tfvae import evaluation
from tfvae import files

__all__ = [
    "plot_curves",
    "plot_feature_scores",
    "plot_gap",
    "plot_grid",
    "plot_latent_space",
    "plot_reconstructions",
    "plot_samples",
    "plot_score_histogram",
    "plot_traversal",
    "to_display",
    "write_figures",
    "write_markdown",
]

logger = logging.getLogger(__name__)

_TERMS = ("elbo", "reconstruction", "kl")


def _is_image(shape):
    return len(shape) == 3 and shape[-1] in (1, 3) or len(shape) == 2


def to_display(model, x):
    """Scales data to [0, 1] for display (integer-level likelihoods hold 0..K-1)."""
    x = np.asarray(x, dtype="float32")
    levels = getattr(model.likelihood, "num_levels", None)
    if levels:
        x = x / float(levels - 1)
    return np.clip(x, 0.0, 1.0)


def _show(ax, image):
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])


def _save(fig, path):
    """Writes the figure to `path` atomically (a temporary file, then a rename)."""
    files.save_figure(fig, path, dpi=110, bbox_inches="tight")
    logger.info("wrote %s", path)
    return path


def plot_curves(history, path):
    """Per-epoch ELBO, reconstruction and KL, train and validation."""
    fig = Figure(figsize=(13, 3.6))
    axes = fig.subplots(1, 3)
    epochs = np.arange(1, len(history.get("loss", [])) + 1)
    for ax, key in zip(axes, _TERMS):
        if key in history:
            ax.plot(epochs, history[key], label="train")
        if "val_" + key in history:
            ax.plot(epochs, history["val_" + key], label="validation")
        ax.set_title(f"{key} (nats / example)")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)


def plot_grid(images, path, title, columns=8):
    """A grid of images `[n, H, W, C]` in [0, 1]; vectors are drawn as lines."""
    images = np.asarray(images)
    n = len(images)
    rows = int(np.ceil(n / columns))
    fig = Figure(figsize=(columns * 1.1, rows * 1.1 + 0.4))
    axes = fig.subplots(rows, columns, squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i < n and _is_image(images.shape[1:]):
            _show(ax, images[i])
        elif i < n:
            ax.plot(images[i].ravel())
            ax.set_xticks([])
            ax.set_yticks([])
        else:
            ax.axis("off")
    fig.suptitle(title)
    return _save(fig, path)


def _conditions(model, y, n):
    """The first `n` conditions for a conditional model (None otherwise)."""
    return None if model.condition_dim is None else y[:n]


def plot_reconstructions(model, x, path, n=8, y=None):
    """Originals (top row) above their reconstructions (bottom row)."""
    x = x[:n]
    recon = model.reconstruct(x, y=_conditions(model, y, n)).numpy()
    pair = np.concatenate([to_display(model, x), to_display(model, recon)])
    return plot_grid(pair, path, "originals (top) and reconstructions (bottom)", columns=len(x))


def plot_samples(model, path, n=32, seed=0):
    """Means of p(x|z) at z drawn from the prior (a conditional model: one row per label)."""
    if model.condition_dim is None:
        return plot_grid(to_display(model, model.sample(n, seed=seed).numpy()), path,
                         "samples from the prior (decoder means)")
    per_label = 8
    labels = np.repeat(np.arange(model.condition_dim), per_label)
    samples = model.sample(len(labels), seed=seed, y=labels).numpy()
    return plot_grid(to_display(model, samples), path,
                     "samples from the prior (rows: labels 0, 1, …)", columns=per_label)


def plot_traversal(model, x, path, steps=9, max_dims=8, y=None):
    """Each row varies one latent (the most active first) from −3 to 3 around the data mean.

    Only latents the decoder sees are traversed (z₁ in a hierarchy); a
    conditional model is decoded with the first example's condition.
    """
    means = model.latent_code(x[:512], y=_conditions(model, y, 512)).numpy()
    visible = model.prior.decoder_latent_dim
    order = np.argsort(-means[:, :visible].var(axis=0))[:max_dims]
    centre = means.mean(axis=0)
    values = np.linspace(-3, 3, steps)
    z = np.repeat(centre[None], len(order) * steps, axis=0)
    for row, dim in enumerate(order):
        z[row * steps : (row + 1) * steps, dim] = values
    condition = None if model.condition_dim is None else y[0]
    images = model.likelihood.mean(model.decode(z.astype("float32"), y=condition)).numpy()
    return plot_grid(to_display(model, images), path,
                     "latent traversal (rows: latents by activity; −3 … 3)", columns=steps)


def plot_latent_space(model, x, labels, path):
    """Posterior means in 2-D (the first two principal components if latent_dim > 2)."""
    means = model.latent_code(x, y=_conditions(model, labels, len(x))).numpy()
    if means.shape[1] > 2:
        centred = means - means.mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        points, axis_name = centred @ vt[:2].T, "principal component"
    elif means.shape[1] == 2:
        points, axis_name = means, "z"
    else:
        points, axis_name = np.concatenate([means, np.zeros_like(means)], 1), "z"
    fig = Figure(figsize=(5.5, 5))
    ax = fig.subplots()
    if labels is not None:
        scatter = ax.scatter(points[:, 0], points[:, 1], c=labels, cmap="tab10", s=8)
        fig.colorbar(scatter, ax=ax, label="label")
    else:
        ax.scatter(points[:, 0], points[:, 1], s=8)
    ax.set_xlabel(f"{axis_name} 1")
    ax.set_ylabel(f"{axis_name} 2")
    ax.set_title("posterior means of held-out data")
    return _save(fig, path)


def _gap_errors(metrics):
    """report.md's lines on the gap split's errors and convergence."""
    lines = []
    if "approximation_gap_mc_stderr" in metrics:
        lines += [
            "| part | mean | Monte Carlo error | spread between examples |",
            "| --- | --- | --- | --- |",
        ] + [
            f"| {key} | {metrics[key]:.3f} | ± {metrics[key + '_mc_stderr']:.3f} | "
            f"± {metrics[key + '_examples_stderr']:.3f} |"
            for key in ("approximation_gap", "amortization_gap", "gap_log_px")
            if key + "_mc_stderr" in metrics and key + "_examples_stderr" in metrics
        ] + [
            "",
            "The Monte Carlo error is the estimate's own standard error for these examples "
            "(what more samples would remove); the spread between examples, sd/√n, is how "
            "much the mean would move on other examples. log p(x) is importance-sampled with "
            "a defensive mixture of q* and a wide Student-t (effective sample size: smallest "
            f"{metrics.get('gap_log_px_ess_min', float('nan')):.0f}, median "
            f"{metrics.get('gap_log_px_ess_median', float('nan')):.0f}).",
            "",
        ]
    if metrics.get("gap_log_px_low_ess"):
        lines += [f"{metrics['gap_log_px_low_ess']} examples have fewer than "
                  f"{evaluation.LOW_ESS} effective samples: their log p(x) error bars are "
                  "themselves unreliable (raise `log_px_samples` of `tfvae.gap.decompose_gap`).",
                  ""]
    if metrics.get("gap_unconverged"):
        lines += [f"**Not converged:** {evaluation.gap_note(metrics)}.", ""]
    elif "gap_steps" in metrics:
        lines += [f"Every example's q* converged (within {metrics['gap_steps']} steps).", ""]
    return lines


def plot_gap(rows, path):
    """Stacked bars: each row's ELBO gap as amortization + approximation gap (nats).

    Args:
      rows: `{label: metrics}` with `amortization_gap` and `approximation_gap`
        (a label gets "(not converged)" when its `gap_unconverged` > 0).
      path: the PNG to write.
    """
    fig = Figure(figsize=(1.5 + 1.2 * len(rows), 3.5))
    ax = fig.add_subplot()
    labels = [label + (" (not converged)" if rows[label].get("gap_unconverged") else "")
              for label in rows]
    rows = dict(zip(labels, rows.values()))
    amortization = [rows[label]["amortization_gap"] for label in labels]
    approximation = [rows[label]["approximation_gap"] for label in labels]
    ax.bar(labels, amortization, label="amortization gap")
    ax.bar(labels, approximation, bottom=amortization, label="approximation gap")
    ax.set_ylabel("nats per example")
    ax.set_title("log p(x) − ELBO, split")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_score_histogram(scores, threshold, path, xlabel="score"):
    """A histogram of anomaly scores `[n]` with the threshold as a vertical line.

    Args:
      scores: the rows' scores (higher = more anomalous).
      threshold: the threshold rows are flagged above.
      path: the PNG to write.
      xlabel: what the score is. Default value: `"score"`.
    """
    scores = np.asarray(scores, np.float64)
    fig = Figure(figsize=(6, 3.6))
    ax = fig.add_subplot()
    ax.hist(scores[np.isfinite(scores)], bins=min(50, max(10, len(scores) // 10)), alpha=0.8)
    flagged = float(np.mean(scores > threshold)) if len(scores) else 0.0
    ax.axvline(threshold, color="C3", linestyle="--",
               label=f"threshold {threshold:.3g} ({flagged:.1%} of rows above)")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("rows")
    ax.set_title("training rows' anomaly scores")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_feature_scores(names, values, path):
    """Horizontal bars: each column's mean share of the score (nats), in the table's order.

    Args:
      names: the columns' names `[d]`.
      values: each column's mean score `[d]` (e.g. `tfvae.anomaly.feature_scores`
        averaged over rows).
      path: the PNG to write.
    """
    values = np.asarray(values, np.float64)
    fig = Figure(figsize=(6, 1.2 + 0.35 * len(values)))
    ax = fig.add_subplot()
    positions = np.arange(len(values))
    ax.barh(positions, values)
    ax.set_yticks(positions, [str(name) for name in names])
    ax.invert_yaxis()
    ax.set_xlabel("mean −E_q[log p_j(x_j|z)] (nats per row)")
    ax.set_title("score per column")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def write_figures(model, history, x_val, y_val, directory, seed=0):
    """Writes every figure into `directory`; returns `{name: filename}`."""
    figures = {
        "curves": plot_curves(history, os.path.join(directory, "curves.png")),
        "reconstructions": plot_reconstructions(
            model, x_val, os.path.join(directory, "reconstructions.png"), y=y_val),
        "samples": plot_samples(model, os.path.join(directory, "samples.png"), seed=seed),
        "traversal": plot_traversal(model, x_val, os.path.join(directory, "traversal.png"),
                                    y=y_val),
        "latent_space": plot_latent_space(model, x_val, y_val, os.path.join(directory, "latent_space.png")),
    }
    return {name: os.path.basename(path) for name, path in figures.items()}


# What `log_px` is, by `LikelihoodHead.score_kind` (metrics["likelihood_score"]).
_SCORES = {
    "mass": "a log-probability of discrete data, comparable with published likelihoods of "
            "the same data; `bits_per_dim` is −log_px / (D ln 2)",
    "density": "a log-density of continuous data: comparable between models of the same "
               "data, not with probabilities of discrete data (no `bits_per_dim`)",
    "cross_entropy": "not a likelihood: a Bernoulli likelihood scoring grey values is a "
                     "cross-entropy, not a normalised density (no `bits_per_dim`; train with "
                     "`--binarize auto` or a likelihood defined on grey values)",
}


def _score_note(config, metrics):
    """One line: the likelihood and preprocessing behind the numbers, and what log p(x) is."""
    binarize = config.get("binarize", "none")
    kind = metrics.get("likelihood_score")
    note = (f"Scored data: `{config['dataset']}` with binarize={binarize!r}, under a "
            f"{config['likelihood']} likelihood")
    return note + (f"; `log_px` is {_SCORES[kind]}." if kind in _SCORES else ".")


def write_markdown(path, config, metrics, figures, notes=()):
    """A short `report.md` linking the figures, with the final numbers.

    Args:
      path: the file to write.
      config: the run's settings (`dataclasses.asdict` of its `RunConfig`).
      metrics: its held-out numbers.
      figures: `{name: filename}` of the figures to link.
      notes: further markdown lines, after the numbers. Default value: `()`.
    """
    lines = [
        "# tfvae run report",
        "",
        f"Dataset `{config['dataset']}`, {config['architecture']} VAE, latent size "
        f"{config['latent_dim']}, {config['likelihood']} likelihood, "
        f"{config.get('posterior', 'diagonal')} posterior, {config['prior']} prior, "
        f"β = {config['beta']}, {metrics.get('epochs_trained', '?')} epochs.",
        "",
        "## Held-out numbers (nats per example)",
        "",
        "| quantity | value |",
        "| --- | --- |",
    ]
    lines += [f"| {key} | {text} |" for key, text in evaluation.summary(metrics)]
    lines += [
        "",
        f"`log_px` is importance-sampled with K = {metrics.get('num_samples')} samples; "
        "`elbo_gap = log_px − elbo` estimates KL(q(z|x) ‖ p(z|x)).",
        "",
        _score_note(config, metrics),
        "",
    ]
    if "mutual_information" in metrics:
        lines += [
            f"ELBO surgery (Hoffman & Johnson, 2016; first {metrics.get('surgery_examples')} "
            "examples): the mean KL is `mutual_information` I_q(x; z), what the code carries "
            "about x, plus `marginal_kl` KL(q(z) ‖ p(z)), how far the aggregate posterior is "
            "from the prior; for a factorised q and p that splits into `total_correlation` "
            "(dependence between the code's dimensions) and `dimension_wise_kl` (Chen et al., "
            "2018). Target: the aggregate posterior of these N examples, q_N(z) = (1/N) Σ_n "
            "q(z|x_n), whose information is at most log N = "
            f"{metrics.get('mi_upper_bound', 0):.2f} (here "
            f"{100 * metrics.get('mi_fraction_of_bound', 0):.0f}% of it); the `*_heldout` "
            "numbers score each example's codes under the others' mixture and estimate the "
            "population's terms (see `tfvae.surgery`).",
            "",
        ]
        if metrics.get("mi_saturated"):
            lines += [
                f"**The information estimate is within {metrics.get('saturation_nats', 2.0):g} "
                "nats of log N**: the set cannot show more, so `marginal_kl` and "
                "`total_correlation` are inflated by what it cuts off. Read them as upper "
                "limits, the `*_heldout` numbers as the other side (they err upward for the "
                "information), and use more examples.",
                "",
            ]
        if any(metrics.get(key, 0) < 0 for key in ("dimension_wise_kl",
                                                     "dimension_wise_kl_heldout")):
            lines += ["A negative `dimension_wise_kl` is estimation error (a KL is ≥ 0): read "
                      "it as about 0.", ""]
    elif "surgery_skipped" in metrics:
        lines += [f"ELBO surgery (the mean KL's split) is not reported: "
                  f"{metrics['surgery_skipped']}.", ""]
    if "mig" in metrics:
        gaps = ", ".join(f"{key[4:]} {value:.3f}" for key, value in metrics.items()
                         if key.startswith("mig_"))
        lines += [
            "`mig`: the Mutual Information Gap of the posterior means for the data's known "
            "factors (Chen et al., 2018; 0 = no code dimension singles out a factor, 1 = each "
            f"factor has a dimension of its own). Per factor: {gaps}.",
            "",
        ]
    lines += list(notes)
    if "gap_examples" in metrics:
        lines += [
            f"On the first {metrics['gap_examples']} held-out examples, q was also optimised "
            "per example (q*, decoder frozen): `amortization_gap = ELBO(q*) − ELBO(q_φ)` is "
            "what the encoder loses by predicting q, `approximation_gap = log p(x) − ELBO(q*)` "
            "what the posterior family loses (Cremer et al., 2018).",
            "",
        ] + _gap_errors(metrics)
    lines += [
        "",
        "## Figures",
        "",
    ]
    titles = {
        "curves": "Training curves",
        "reconstructions": "Reconstructions",
        "samples": "Prior samples",
        "traversal": "Latent traversal",
        "latent_space": "Latent space",
        "gap": "The ELBO gap, split (amortization + approximation)",
        "scores": "Training rows' scores and the threshold",
        "feature_scores": "Mean score per column",
    }
    for name, filename in figures.items():
        lines += [f"### {titles.get(name, name)}", "", f"![{name}]({filename})", ""]
    return files.write_text(path, "\n".join(lines))
