#!/usr/bin/env python3
"""Run exported tfvae ONNX graphs with only numpy and onnxruntime (no TensorFlow), as on an edge device.

    python export/onnx_runner.py DIR encode --x digits.npy --save latents.npz
    python export/onnx_runner.py DIR decode --z latents.npy --save images.npz
    python export/onnx_runner.py DIR reconstruct --x digits.npy [--eps zeros]
    python export/onnx_runner.py DIR sample -n 16 --seed 0 --save samples.npy
    python export/onnx_runner.py DIR sample --y labels.npy      # a conditional model
    python export/onnx_runner.py DIR score --x rows.npy --save scores.npz   # a table run

DIR is what `tfvae export RUN --format onnx` wrote: `*.onnx`, `weights.bin` (the
weights of all the graphs, each stored once; the graphs refer to it, so keep it
beside them) and `metadata.json`.
Latent widths and inputs come from the graphs themselves; `--y` (integer class
labels `[B]`, one-hot encoded here, or one-hot rows `[B, C]` of any numeric type)
is required for a conditional model and refused for an unconditional one. Noise
(`--eps`, `--z`) is zeros unless given, so answers are deterministic; `sample`'s
eps is N(0, I) drawn from `--seed`. These rules are the same as
`tfserving_client.py`'s, so both tools answer the same request alike. Inputs
that go together (`x`, `eps`, `z`, `y`) must have the same number of rows; an
empty batch (B = 0) gives empty outputs. Rows the model refuses (NaN, data
outside the likelihood's range, a `y` row that is not one-hot) come back as NaN
rows. Expected failures end with one line on stderr and exit status 2.
"""

import argparse
import json
import os
import sys

import numpy as np
import onnxruntime as ort


class RunnerError(ValueError):
    """An expected failure, told to the user in one line."""


def _load_npy(path, flag):
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise RunnerError(f"cannot read {flag} {path}: {error}".splitlines()[0]) from error


class OnnxVAE:
    """The exported graphs of one tfvae model, run by onnxruntime.

    Args:
      directory: what `tfvae export --format onnx` wrote.
      threads: onnxruntime's intra-op threads per graph; `None` (default) leaves its own
        default (one per physical core). Set it to the cores you can count on.
      spinning: whether idle intra-op threads spin waiting for work (onnxruntime's
        default). Default `False`: on a machine shared with other work, spinning threads
        take cores from the threads they wait for (benchmarks/README.md, issue 20).
    """

    def __init__(self, directory, threads=None, spinning=False):
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                    or threads < 1):
            raise RunnerError(f"threads must be an integer >= 1; got {threads!r}")
        try:
            with open(os.path.join(directory, "metadata.json")) as f:
                self.metadata = json.load(f)
        except (OSError, ValueError) as error:
            raise RunnerError(
                f"{directory} is not a tfvae ONNX export (no readable metadata.json: "
                f"{error})".splitlines()[0]) from error
        weights = self.metadata.get("weights", {}).get("file")
        if weights and not os.path.isfile(os.path.join(directory, weights)):
            raise RunnerError(
                f"{os.path.join(directory, weights)} is missing: the graphs keep their weights "
                "there (copy it with the .onnx files)")
        options = session_options(threads, spinning)
        self.sessions = {name: _session(os.path.join(directory, file), options)
                         for name, file in self.metadata["graphs"].items()}
        self.condition_dim = self.metadata.get("condition_dim")

    def inputs(self, graph):
        """`{input name: shape}` of `graph`, read from the graph (-1 for dynamic sizes)."""
        return {i.name: [d if isinstance(d, int) else -1 for d in i.shape]
                for i in self._session(graph).get_inputs()}

    def width(self, graph, name):
        """The last dimension of input `name` of `graph` (e.g. the latent width of eps)."""
        return self.inputs(graph)[name][-1]

    def _session(self, graph):
        if graph not in self.sessions:
            reason = self.metadata.get("skipped", {}).get(graph)
            why = f": {reason}" if reason else ""
            raise RunnerError(
                f"this export has no `{graph}` graph{why}. Graphs here: {sorted(self.sessions)}")
        return self.sessions[graph]

    def condition(self, y, batch=None):
        """`y` as float rows `[batch, condition_dim]` (`None` for an unconditional model).

        Integer class labels `[batch]` are one-hot encoded; rows `[batch, condition_dim]`
        (float, integer or bool one-hot rows) are used as given.
        """
        c = self.condition_dim
        if c is None:
            if y is not None:
                raise RunnerError("this model is not conditional: it takes no --y")
            return None
        if y is None:
            raise RunnerError(
                f"this model is conditional (condition_dim={c}): pass --y, a .npy of integer "
                f"labels in [0, {c}) or one-hot rows [batch, {c}]")
        y = condition_rows(y, c)
        if batch is not None and len(y) != batch:
            raise RunnerError(f"--y has {len(y)} rows for a batch of {batch}")
        return y

    def run(self, graph, y=None, **inputs):
        """Runs one graph; returns {output name: array}. `y` as for `condition`.

        Raises `RunnerError` (a `ValueError`) in one line for inputs the graph does not
        take, shapes it does not take and inputs whose row counts differ; an empty batch
        gives empty outputs of the graph's output shapes without running it.
        """
        session = self._session(graph)
        expected = self.inputs(graph)
        unknown = sorted(set(inputs) - set(expected))
        if unknown:
            raise RunnerError(f"`{graph}` takes inputs {sorted(expected)}; got {unknown}")
        feeds = {name: _floats(value, name) for name, value in inputs.items()}
        y = self.condition(y)
        if y is not None:
            feeds["y"] = y
        for name, value in feeds.items():
            shape = expected[name]
            if value.ndim != len(shape) or any(s not in (-1, v) for s, v in zip(shape, value.shape)):
                raise RunnerError(
                    f"`{graph}` takes {name} of shape {tuple(shape)} (-1: any); got "
                    f"{value.shape}")
        check_rows({f"`{name}`": value for name, value in feeds.items()})
        outputs = session.get_outputs()
        batch = len(next(iter(feeds.values())))
        if batch == 0:
            return {o.name: np.zeros((0, *_static(o.shape[1:], graph, o.name)), np.float32)
                    for o in outputs}
        names = [output.name for output in outputs]
        return dict(zip(names, session.run(names, feeds)))

    def encode(self, x, y=None):
        return self.run("encode", x=x, y=y)

    def decode(self, z, y=None):
        return self.run("decode", z=z, y=y)

    def reconstruct(self, x, eps=None, y=None):
        """The reconstruction at z = g(eps; q(z|x)); `eps` defaults to zeros."""
        if eps is None:
            eps = np.zeros((_rows(x, "x"), self.width("reconstruct", "eps")), np.float32)
        return self.run("reconstruct", x=x, eps=eps, y=y)["reconstruction"]

    def sample(self, n, seed=0, y=None, eps=None):
        """`n` samples at eps ~ N(0, I) drawn from `seed` (or the given `eps [n, d]`)."""
        if eps is None:
            eps = noise("random", n, self.width("sample", "eps"), seed)
        return self.run("sample", eps=eps, y=y)["samples"]

    def score(self, x, eps=None, y=None):
        """A table model's `score` graph on raw coded rows `x [B, d]`: {`score` [B] (−ELBO at
        z = g(eps; q(z|x))), `feature_scores` [B, d], `flag` [B] when the export has a
        threshold}; `eps` defaults to zeros (the deterministic score)."""
        if eps is None:
            eps = np.zeros((_rows(x, "x"), self.width("score", "eps")), np.float32)
        return self.run("score", x=x, eps=eps, y=y)


def session_options(threads=None, spinning=False):
    """onnxruntime's session options for tfvae's graphs: all graph optimizations, one op at
    a time, `threads` intra-op threads (`None`: onnxruntime's default), spinning idle
    threads only with `spinning`."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    if threads is not None:
        options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return options


def _session(path, options=None):
    """An onnxruntime session of the graph at `path` (its external weights are read from its
    directory); a missing or unreadable graph is a `RunnerError`."""
    try:
        return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001 - onnxruntime's own exception types
        raise RunnerError(f"cannot load {path}: {error}".splitlines()[0]) from error


def _rows(value, name):
    value = np.asarray(value)
    if value.ndim == 0:
        raise RunnerError(f"{name} must have a batch dimension; got a scalar")
    return len(value)


def check_rows(arrays):
    """Raises `RunnerError` unless every array of `{name: array}` has the same number of rows
    (its first dimension), naming the first two that differ and their row counts."""
    counts = [(name, _rows(value, name)) for name, value in arrays.items() if value is not None]
    if not counts:
        return None
    for name, count in counts[1:]:
        if count != counts[0][1]:
            first, first_count = counts[0]
            raise RunnerError(
                f"{first} has {first_count} rows but {name} has {count}: inputs that go "
                "together need one row per example each")
    return counts[0][1]


def condition_rows(y, width):
    """`y` → float32 rows `[batch, width]`: integer class labels `[batch]` one-hot encoded,
    rows `[batch, width]` (float, integer or bool) as given. The same rule as
    tfserving_client.py's `condition_rows`."""
    y = np.asarray(y)
    if y.dtype.kind in "iu" and y.ndim == 1:
        if y.size and (y.min() < 0 or y.max() >= width):
            raise RunnerError(f"--y labels must be integers in [0, {width}); got values in "
                              f"[{y.min()}, {y.max()}]")
        return np.eye(width, dtype=np.float32)[y]
    if y.dtype.kind in "iufb" and y.ndim == 2:
        if y.shape[1] != width:
            raise RunnerError(f"--y rows must be one-hot rows of width {width} (the model's "
                              f"condition_dim); got shape {y.shape}")
        return y.astype(np.float32)
    hint = " (float labels: cast them to integers)" if y.dtype.kind == "f" and y.ndim == 1 else ""
    raise RunnerError(f"--y must be integer class labels (batch,) or one-hot rows (batch, "
                      f"{width}); got shape {y.shape} and dtype {y.dtype}{hint}")


def _floats(value, name):
    try:
        value = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise RunnerError(f"{name} must be numbers: {error}".splitlines()[0]) from None
    _rows(value, name)
    return value


def _static(dims, graph, name):
    if not all(isinstance(d, int) for d in dims):
        raise RunnerError(f"an empty batch: the `{graph}` graph does not state the shape of "
                          f"its output {name} ({dims})")
    return dims


def noise(text, batch, width, seed):
    """eps or z `[batch, width]`: `zeros` or `random` (N(0, I) drawn from `seed`)."""
    if batch < 0:
        raise RunnerError(f"the batch size must be >= 0; got {batch}")
    if text == "zeros":
        return np.zeros((batch, width), np.float32)
    if text == "random":
        return np.random.default_rng(seed).standard_normal((batch, width)).astype(np.float32)
    raise RunnerError(f"noise must be 'zeros', 'random' or a .npy file; got {text!r}")


def _run(args):
    if args.threads is not None and args.threads < 1:
        raise RunnerError(f"--threads must be >= 1; got {args.threads}")
    vae = OnnxVAE(args.directory, threads=args.threads)
    wanted = vae.inputs(args.graph)  # (refuses a graph that was not exported, saying why)
    if args.num is not None and args.num < 0:
        raise RunnerError(f"-n must be >= 0; got {args.num}")
    if "x" in wanted and not args.x:
        raise RunnerError(f"--x is required for {args.graph}")
    given = {"x": _load_npy(args.x, "--x")} if "x" in wanted else {}
    for name in ("eps", "z"):
        text = getattr(args, name)
        if name in wanted and text not in (None, "zeros", "random"):
            given[name] = _load_npy(text, f"--{name}")
    y = None if args.y is None else _load_npy(args.y, "--y")
    flags = {f"--{name}": value for name, value in {**given, "y": y}.items()}
    batch = check_rows(flags)
    if batch is not None and args.num is not None and args.num != batch:
        first = next(flag for flag, value in flags.items() if value is not None)
        raise RunnerError(f"-n {args.num} differs from the {batch} rows of {first}")
    batch = batch if batch is not None else (args.num if args.num is not None else 16)
    for name in ("eps", "z"):
        if name in wanted and name not in given:
            text = getattr(args, name) or ("random" if args.graph == "sample" else "zeros")
            given[name] = noise(text, batch, wanted[name][-1], args.seed)
    return vae.run(args.graph, y=y, **given)


def build_parser():
    """The command line's flags."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory")
    parser.add_argument("graph", choices=("encode", "decode", "reconstruct", "sample", "score"))
    parser.add_argument("--x", help=".npy data for encode / reconstruct / score")
    parser.add_argument("--y", help=".npy integer class labels [B] or one-hot rows [B, C]: "
                                    "conditional models only")
    parser.add_argument("--z", help="decode's latents: .npy, 'zeros' (default) or 'random'")
    parser.add_argument("--eps", help="noise: .npy, 'zeros' or 'random' (N(0, I) from --seed); "
                                      "default zeros, but random for sample")
    parser.add_argument("-n", "--num", "--batch", type=int, default=None,
                        help="the batch when no input file gives it (default 16)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", help="write the result (.npy for one array, .npz for several)")
    parser.add_argument("--threads", type=int, default=None,
                        help="onnxruntime's intra-op threads (default: one per physical core)")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = _run(args)
    except RunnerError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    for name, value in result.items():
        finite = value[np.isfinite(value)]
        mean = f"{finite.mean():.4f}" if finite.size else "-"
        print(f"{name}: shape {value.shape}, mean {mean} ({value.size - finite.size} NaN)")
    if args.save:
        if args.save.endswith(".npy") and len(result) == 1:
            np.save(args.save, next(iter(result.values())))
        else:
            np.savez(args.save, **result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
