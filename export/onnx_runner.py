#!/usr/bin/env python3
"""Run exported tfvae ONNX graphs with only numpy and onnxruntime (no TensorFlow), as on an edge device.

    python export/onnx_runner.py DIR encode --x digits.npy --save latents.npz
    python export/onnx_runner.py DIR decode --z latents.npy --save images.npz
    python export/onnx_runner.py DIR reconstruct --x digits.npy [--eps zeros]
    python export/onnx_runner.py DIR sample -n 16 --seed 0 --save samples.npy

DIR is what `tfvae export RUN --format onnx` wrote: `*.onnx` and `metadata.json`.
"""

import argparse
import json
import os
import sys

import numpy as np
import onnxruntime as ort


class OnnxVAE:
    """The exported graphs of one tfvae model, run by onnxruntime."""

    def __init__(self, directory):
        with open(os.path.join(directory, "metadata.json")) as f:
            self.metadata = json.load(f)
        self.latent_dim = self.metadata["latent_dim"]
        self.sessions = {
            name: ort.InferenceSession(os.path.join(directory, file),
                                       providers=["CPUExecutionProvider"])
            for name, file in self.metadata["graphs"].items()
        }

    def run(self, graph, **inputs):
        """Runs one graph; returns {output name: array}."""
        if graph not in self.sessions:
            raise ValueError(f"no {graph!r} graph here; have {sorted(self.sessions)}")
        session = self.sessions[graph]
        feeds = {name: np.asarray(value, dtype=np.float32) for name, value in inputs.items()}
        names = [output.name for output in session.get_outputs()]
        return dict(zip(names, session.run(names, feeds)))

    def encode(self, x):
        return self.run("encode", x=x)

    def decode(self, z):
        return self.run("decode", z=z)

    def reconstruct(self, x, eps=None):
        eps = np.zeros((len(x), self.latent_dim), np.float32) if eps is None else eps
        return self.run("reconstruct", x=x, eps=eps)["reconstruction"]

    def sample(self, n, seed=0):
        eps = np.random.default_rng(seed).standard_normal((n, self.latent_dim)).astype(np.float32)
        return self.run("sample", eps=eps)["samples"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory")
    parser.add_argument("graph", choices=("encode", "decode", "reconstruct", "sample"))
    parser.add_argument("--x", help=".npy data for encode / reconstruct")
    parser.add_argument("--z", help=".npy latents for decode")
    parser.add_argument("--eps", default="zeros", help="'zeros', 'random' or .npy (reconstruct)")
    parser.add_argument("-n", "--num", type=int, default=16, help="samples to draw")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", help="write the result (.npy for one array, .npz for several)")
    args = parser.parse_args(argv)
    vae = OnnxVAE(args.directory)
    if args.graph == "encode":
        result = vae.encode(np.load(args.x))
    elif args.graph == "decode":
        result = vae.decode(np.load(args.z))
    elif args.graph == "reconstruct":
        x = np.load(args.x)
        if args.eps == "zeros":
            eps = None
        elif args.eps == "random":
            eps = np.random.default_rng(args.seed).standard_normal((len(x), vae.latent_dim))
        else:
            eps = np.load(args.eps)
        result = {"reconstruction": vae.reconstruct(x, eps)}
    else:
        result = {"samples": vae.sample(args.num, args.seed)}
    for name, value in result.items():
        print(f"{name}: shape {value.shape}, mean {value.mean():.4f}")
    if args.save:
        if args.save.endswith(".npy") and len(result) == 1:
            np.save(args.save, next(iter(result.values())))
        else:
            np.savez(args.save, **result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
