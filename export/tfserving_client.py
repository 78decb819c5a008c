#!/usr/bin/env python3
"""Send a REST `:predict` request for one tfvae signature to TF Serving and print the result.

Needs only the Python standard library and numpy.

    python export/tfserving_client.py --signature encode --x digits.npy
    python export/tfserving_client.py --signature sample --batch 4
    python export/tfserving_client.py --signature reconstruct --x digits.npy --eps zeros
    python export/tfserving_client.py --signature sample --y labels.npy    # conditional model
    python export/tfserving_client.py --url http://host:8501/v1/models/tfvae/versions/2 ...

The client first reads the model's signatures from TF Serving
(`GET <url>/metadata`): which signatures exist, their inputs, and the widths of
`eps`, `z` and `y` (so nothing like a latent size is passed by hand). Inputs are
`.npy` files (or `zeros` / `random` for eps and z); `--y` (integer labels,
one-hot encoded here, or one-hot rows) is required for a conditional model and
refused for an unconditional one. The request uses TF Serving's columnar
format: {"signature_name": ..., "inputs": {name: list}}. Expected failures
(the server's error text, an unreachable server, a signature the model does not
have) end with one line on stderr and exit status 2.
"""

import argparse
import json
import re
import sys
import urllib.error
import urllib.request

import numpy as np

# Why a tfvae export may lack a signature (TF Serving's metadata does not say).
NOT_EXPORTED = {
    "sample": "tfvae exports `sample` only for priors sampled from standard normal noise "
              "alone (standard normal, hierarchical), not for a mixture-of-Gaussians or "
              "VampPrior prior",
}
_INTERNAL = "__saved_model_init_op"


class ClientError(RuntimeError):
    """An expected failure, told to the user in one line."""


def model_url(url):
    """The model's REST URL (`.../v1/models/NAME[/versions/V]`) from it or its `:predict` URL."""
    url = url.rstrip("/")
    for suffix in (":predict", "/metadata"):
        if url.endswith(suffix):
            url = url[: -len(suffix)]
    return url


def _one_line(text):
    return " ".join(str(text).split())


def _request(url, body=None, timeout=30.0):
    """GET (or POST `body`) JSON; raises `ClientError` with the server's error text."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        text = error.read().decode("utf-8", "replace")
        try:
            text = json.loads(text)["error"]
        except (ValueError, KeyError, TypeError):
            pass
        raise ClientError(
            f"TF Serving answered HTTP {error.code} for {url}: {_one_line(text) or error.reason}"
        ) from None
    except urllib.error.URLError as error:
        raise ClientError(f"cannot reach TF Serving at {url}: {error.reason}") from None
    except (OSError, ValueError) as error:  # timeouts, resets, a non-JSON answer
        raise ClientError(f"no usable answer from TF Serving at {url}: {_one_line(error)}") from None


def signatures(url, timeout=30.0):
    """`{signature: {"inputs": {name: shape}, "outputs": [names]}}` from TF Serving's metadata
    (shapes with -1 for dynamic sizes)."""
    answer = _request(model_url(url) + "/metadata", timeout=timeout)
    try:
        defs = answer["metadata"]["signature_def"]["signature_def"]
        result = {}
        for name, definition in defs.items():
            if name == _INTERNAL:
                continue
            inputs = {
                key: [int(d.get("size", -1)) for d in info["tensor_shape"].get("dim", [])]
                for key, info in definition.get("inputs", {}).items()
            }
            result[name] = {"inputs": inputs, "outputs": sorted(definition.get("outputs", {}))}
        return result
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ClientError(f"unexpected metadata from TF Serving at {url}: missing {error}") from None


def predict(url, signature, inputs, timeout=30.0, output_names=None):
    """POSTs `inputs` (name -> array) to the model's `:predict`; returns name -> array.

    TF Serving unwraps a single output; it is named from `output_names` (from
    the metadata) if given, else `"output"`.
    """
    body = {
        "signature_name": signature,
        "inputs": {name: np.asarray(value).tolist() for name, value in inputs.items()},
    }
    answer = _request(model_url(url) + ":predict", body, timeout)
    if "outputs" not in answer:
        raise ClientError(f"TF Serving's answer has no `outputs`: {_one_line(answer)[:200]}")
    outputs = answer["outputs"]
    if not isinstance(outputs, dict):  # TF Serving unwraps a single output
        name = output_names[0] if output_names and len(output_names) == 1 else "output"
        outputs = {name: outputs}
    return {name: np.asarray(value, dtype="float32") for name, value in outputs.items()}


def _load(path, flag):
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ClientError(_one_line(f"cannot read {flag} {path}: {error}")) from None


def _array(text, batch, width, rng, flag):
    if text == "zeros":
        return np.zeros((batch, width), "float32")
    if text == "random":
        return rng.standard_normal((batch, width)).astype("float32")
    return _load(text, flag).astype("float32")


def condition(y, width, batch):
    """Labels `[batch]` → one-hot `[batch, width]`; float rows `[batch, width]` as given."""
    y = np.asarray(y)
    if y.dtype.kind in "iu":
        if y.ndim != 1 or (y.size and (y.min() < 0 or y.max() >= width)):
            raise ClientError(f"--y labels must be a 1-D array of integers in [0, {width}); got "
                              f"shape {y.shape}" + (f", values in [{y.min()}, {y.max()}]"
                                                    if y.size else ""))
        y = np.eye(width, dtype="float32")[y]
    elif y.dtype.kind != "f" or y.ndim != 2 or y.shape[1] != width:
        raise ClientError(f"--y must be integer labels (batch,) or float rows (batch, {width}); "
                          f"got shape {y.shape} and dtype {y.dtype}")
    if batch is not None and len(y) != batch:
        raise ClientError(f"--y has {len(y)} rows for a batch of {batch}")
    return y.astype("float32")


def _check_shape(name, value, shape, signature):
    if value.ndim != len(shape) or any(s not in (-1, v) for s, v in zip(shape, value.shape)):
        raise ClientError(f"`{signature}` takes {name} of shape {tuple(shape)} (-1: any); got "
                          f"{value.shape}")


def build_inputs(args, spec, rng):
    """The request's inputs for one signature from the flags and its metadata `spec`."""
    signature, wanted = args.signature, spec["inputs"]
    if "y" in wanted and args.y is None:
        raise ClientError(f"this model is conditional (y of width {wanted['y'][-1]}): pass --y, a "
                          ".npy of integer labels or one-hot rows")
    if "y" not in wanted and args.y is not None:
        raise ClientError("this model is not conditional: it takes no --y")
    inputs = {}
    if "x" in wanted:
        if not args.x:
            raise ClientError(f"--x is required for the {signature} signature")
        inputs["x"] = _load(args.x, "--x").astype("float32")
    y = _load(args.y, "--y") if args.y is not None else None
    batch = len(inputs["x"]) if "x" in inputs else (len(y) if y is not None else args.batch)
    for name in ("z", "eps"):
        if name in wanted:
            inputs[name] = _array(getattr(args, name), batch, wanted[name][-1], rng, f"--{name}")
    if y is not None:
        inputs["y"] = condition(y, wanted["y"][-1], batch)
    unknown = sorted(set(wanted) - set(inputs))
    if unknown:
        raise ClientError(f"`{signature}` takes inputs {unknown} this client cannot supply")
    for name, value in inputs.items():
        _check_shape(name, value, wanted[name], signature)
    return inputs


def _run(args):
    available = signatures(args.url, args.timeout)
    if args.signature not in available:
        why = NOT_EXPORTED.get(args.signature, "it was not exported")
        raise ClientError(f"the model at {model_url(args.url)} has no `{args.signature}` "
                          f"signature ({why}); it has {sorted(available)}")
    spec = available[args.signature]
    inputs = build_inputs(args, spec, np.random.default_rng(args.seed))
    return predict(args.url, args.signature, inputs, args.timeout, spec["outputs"])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://localhost:8501/v1/models/tfvae",
                        help="the model's REST URL, .../v1/models/NAME[/versions/V] (a "
                             ":predict URL is accepted too)")
    parser.add_argument("--signature", default="serving_default",
                        help="the signature to call (see export/README.md)")
    parser.add_argument("--x", help=".npy file of data [batch, ...]")
    parser.add_argument("--y", help=".npy labels (integers) or one-hot rows: conditional models")
    parser.add_argument("--z", default="random", help=".npy, 'zeros' or 'random'")
    parser.add_argument("--eps", default="random", help=".npy, 'zeros' or 'random'")
    parser.add_argument("--batch", "--eps-batch", type=int, default=4,
                        help="batch when eps/z are generated and there is no --x or --y")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    parser.add_argument("--save", help="write the outputs to this .npz file")
    args = parser.parse_args(argv)
    if not re.search(r"/v1/models/[^/:]+", args.url):
        parser.error(f"--url must be a TF Serving model URL .../v1/models/NAME; got {args.url}")
    try:
        outputs = _run(args)
    except ClientError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    for name, value in outputs.items():
        print(f"{name}: shape {value.shape}")
        print(np.array2string(value, precision=4, threshold=40))
    if args.save:
        np.savez(args.save, **outputs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
