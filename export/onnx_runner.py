#!/usr/bin/env python3
"""Run exported tfvae ONNX graphs with only numpy and onnxruntime (no TensorFlow), as on an edge device.

    python export/onnx_runner.py DIR encode --x digits.npy --save latents.npz
    python export/onnx_runner.py DIR decode --z latents.npy --save images.npz
    python export/onnx_runner.py DIR reconstruct --x digits.npy [--eps zeros]
    python export/onnx_runner.py DIR sample -n 16 --seed 0 --save samples.npy
    python export/onnx_runner.py DIR sample --y labels.npy      # a conditional model

DIR is what `tfvae export RUN --format onnx` wrote: `*.onnx` and `metadata.json`.
Latent widths and inputs come from the graphs themselves; `--y` (integer labels,
one-hot encoded here, or one-hot rows) is required for a conditional model and
refused for an unconditional one. Rows the model refuses (NaN, data outside the
likelihood's range, a `y` row that is not one-hot) come back as NaN rows.
Expected failures end with one line on stderr and exit status 2.
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
    """The exported graphs of one tfvae model, run by onnxruntime."""

    def __init__(self, directory):
        try:
            with open(os.path.join(directory, "metadata.json")) as f:
                self.metadata = json.load(f)
        except (OSError, ValueError) as error:
            raise RunnerError(
                f"{directory} is not a tfvae ONNX export (no readable metadata.json: "
                f"{error})".splitlines()[0]) from error
        self.sessions = {
            name: ort.InferenceSession(os.path.join(directory, file),
                                       providers=["CPUExecutionProvider"])
            for name, file in self.metadata["graphs"].items()
        }
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

    def condition(self, y, batch):
        """`y` as float one-hot rows `[batch, condition_dim]` (`None` for an unconditional model).

        Integer labels `[batch]` are one-hot encoded; float rows are used as given.
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
        y = np.asarray(y)
        if y.dtype.kind in "iu":
            if y.ndim != 1 or (y.size and (y.min() < 0 or y.max() >= c)):
                raise RunnerError(
                    f"--y labels must be a 1-D array of integers in [0, {c}); got shape "
                    f"{y.shape} with values in [{y.min() if y.size else '-'}, "
                    f"{y.max() if y.size else '-'}]")
            y = np.eye(c, dtype=np.float32)[y]
        elif y.dtype.kind != "f" or y.ndim != 2 or y.shape[1] != c:
            raise RunnerError(
                f"--y must be integer labels (batch,) or float rows (batch, {c}); got shape "
                f"{y.shape} and dtype {y.dtype}")
        if len(y) != batch:
            raise RunnerError(f"--y has {len(y)} rows for a batch of {batch}")
        return y.astype(np.float32)

    def run(self, graph, y=None, **inputs):
        """Runs one graph; returns {output name: array}. `y` as for `condition`."""
        session = self._session(graph)
        feeds = {name: np.asarray(value, dtype=np.float32) for name, value in inputs.items()}
        batch = len(next(iter(feeds.values())))
        y = self.condition(y, batch)
        if y is not None:
            feeds["y"] = y
        expected = self.inputs(graph)
        for name, value in feeds.items():
            shape = expected[name]
            if value.ndim != len(shape) or any(s not in (-1, v) for s, v in zip(shape, value.shape)):
                raise RunnerError(
                    f"`{graph}` takes {name} of shape {tuple(shape)} (-1: any); got "
                    f"{value.shape}")
        names = [output.name for output in session.get_outputs()]
        return dict(zip(names, session.run(names, feeds)))

    def encode(self, x, y=None):
        return self.run("encode", x=x, y=y)

    def decode(self, z, y=None):
        return self.run("decode", z=z, y=y)

    def reconstruct(self, x, eps=None, y=None):
        if eps is None:
            eps = np.zeros((len(x), self.width("reconstruct", "eps")), np.float32)
        return self.run("reconstruct", x=x, eps=eps, y=y)["reconstruction"]

    def sample(self, n, seed=0, y=None):
        width = self.width("sample", "eps")
        eps = np.random.default_rng(seed).standard_normal((n, width)).astype(np.float32)
        return self.run("sample", eps=eps, y=y)["samples"]


def _noise(text, batch, width, seed):
    if text == "zeros":
        return np.zeros((batch, width), np.float32)
    if text == "random":
        return np.random.default_rng(seed).standard_normal((batch, width)).astype(np.float32)
    return _load_npy(text, "--eps")


def _run(args):
    vae = OnnxVAE(args.directory)
    y = None if args.y is None else _load_npy(args.y, "--y")
    if args.graph in ("encode", "reconstruct") and not args.x:
        raise RunnerError(f"--x is required for {args.graph}")
    if args.graph == "decode" and not args.z:
        raise RunnerError("--z is required for decode")
    if args.graph == "encode":
        return vae.encode(_load_npy(args.x, "--x"), y)
    if args.graph == "decode":
        return vae.decode(_load_npy(args.z, "--z"), y)
    if args.graph == "reconstruct":
        x = _load_npy(args.x, "--x")
        eps = _noise(args.eps, len(x), vae.width("reconstruct", "eps"), args.seed)
        return {"reconstruction": vae.reconstruct(x, eps, y)}
    num = args.num if args.num is not None else (len(y) if y is not None else 16)
    if y is not None and args.num is not None and args.num != len(y):
        raise RunnerError(f"-n {args.num} differs from the {len(y)} rows of --y")
    return {"samples": vae.sample(num, args.seed, y)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory")
    parser.add_argument("graph", choices=("encode", "decode", "reconstruct", "sample"))
    parser.add_argument("--x", help=".npy data for encode / reconstruct")
    parser.add_argument("--z", help=".npy latents for decode")
    parser.add_argument("--y", help=".npy labels (integers) or one-hot rows: conditional models")
    parser.add_argument("--eps", default="zeros", help="'zeros', 'random' or .npy (reconstruct)")
    parser.add_argument("-n", "--num", type=int, default=None,
                        help="samples to draw (default: the rows of --y, else 16)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", help="write the result (.npy for one array, .npz for several)")
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
