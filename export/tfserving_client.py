#!/usr/bin/env python3
"""Send a REST `:predict` request for one tfvae signature to TF Serving and print the result.

Needs only the Python standard library and numpy.

    python export/tfserving_client.py --signature encode --x digits.npy
    python export/tfserving_client.py --signature sample --eps-batch 4
    python export/tfserving_client.py --signature reconstruct --x digits.npy --eps zeros

Inputs are `.npy` files (or `zeros` / `random` for eps and z); the request uses
TF Serving's columnar format: {"signature_name": ..., "inputs": {name: list}}.
"""

import argparse
import json
import sys
import urllib.request

import numpy as np

SIGNATURE_INPUTS = {
    "serving_default": ("x",),
    "encode": ("x",),
    "decode": ("z",),
    "reconstruct": ("x", "eps"),
    "sample": ("eps",),
    "elbo": ("x", "eps"),
}


def predict(url, signature, inputs, timeout=30.0):
    """POSTs `inputs` (name -> array) to a `:predict` URL; returns name -> array."""
    body = json.dumps({
        "signature_name": signature,
        "inputs": {name: np.asarray(value).tolist() for name, value in inputs.items()},
    }).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        outputs = json.loads(response.read())["outputs"]
    if not isinstance(outputs, dict):  # TF Serving unwraps a single output
        outputs = {"output": outputs}
    return {name: np.asarray(value, dtype="float32") for name, value in outputs.items()}


def _array(text, batch, width, rng):
    if text == "zeros":
        return np.zeros((batch, width), "float32")
    if text == "random":
        return rng.standard_normal((batch, width)).astype("float32")
    return np.load(text).astype("float32")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://localhost:8501/v1/models/tfvae:predict")
    parser.add_argument("--signature", choices=tuple(SIGNATURE_INPUTS), default="serving_default")
    parser.add_argument("--x", help=".npy file of data [batch, ...]")
    parser.add_argument("--z", default="random", help=".npy, 'zeros' or 'random'")
    parser.add_argument("--eps", default="random", help=".npy, 'zeros' or 'random'")
    parser.add_argument("--eps-batch", type=int, default=4, help="batch when eps/z are generated")
    parser.add_argument("--latent-dim", type=int, default=8, help="width when eps/z are generated")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", help="write the outputs to this .npz file")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    inputs = {}
    for name in SIGNATURE_INPUTS[args.signature]:
        if name == "x":
            if not args.x:
                parser.error(f"--x is required for the {args.signature} signature")
            inputs["x"] = np.load(args.x).astype("float32")
        else:
            batch = len(inputs["x"]) if "x" in inputs else args.eps_batch
            inputs[name] = _array(getattr(args, name), batch, args.latent_dim, rng)
    outputs = predict(args.url, args.signature, inputs)
    for name, value in outputs.items():
        print(f"{name}: shape {value.shape}")
        print(np.array2string(value, precision=4, threshold=40))
    if args.save:
        np.savez(args.save, **outputs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
