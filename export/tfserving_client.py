#!/usr/bin/env python3
"""Send a REST `:predict` request for one tfvae signature to TF Serving and print the result.

Needs only the Python standard library and numpy.

    python export/tfserving_client.py --signature encode --x digits.npy
    python export/tfserving_client.py --signature sample --batch 4 --seed 0
    python export/tfserving_client.py --signature reconstruct --x digits.npy [--eps zeros]
    python export/tfserving_client.py --signature sample --y labels.npy    # conditional model
    python export/tfserving_client.py --signature score --x rows.npy       # a table run
    python export/tfserving_client.py --url http://host:8501/v1/models/tfvae/versions/2 ...

The client first reads the model's signatures from TF Serving
(`GET <url>/metadata`): which signatures exist, their inputs, and the widths of
`eps`, `z` and `y` (so nothing like a latent size is passed by hand). Inputs are
`.npy` files (or `zeros` / `random` for eps and z); `--y` (integer class labels
`[B]`, one-hot encoded here, or one-hot rows `[B, C]` of any numeric type) is
required for a conditional model and refused for an unconditional one. Noise
(`--eps`, `--z`) is zeros unless given, so answers are deterministic; `sample`'s
eps is N(0, I) drawn from `--seed`. These rules are the same as
`onnx_runner.py`'s, so both tools answer the same request alike. Inputs that go
together (`x`, `eps`, `z`, `y`) must have the same number of rows; an empty
batch (B = 0) gives empty outputs of the signature's shapes without a request.
The request uses TF Serving's columnar format: {"signature_name": ..., "inputs":
{name: list}}. Expected failures (the server's error text, an unreachable
server, a signature the model does not have, mismatched rows) end with one line
on stderr and exit status 2.
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
    "score": "tfvae exports `score` only for models of table rows (a likelihood with "
             "per-column terms: `tfvae train --dataset table.csv`)",
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


def _shape(info):
    return [int(d.get("size", -1)) for d in info.get("tensor_shape", {}).get("dim", [])]


def signatures(url, timeout=30.0):
    """`{signature: {"inputs": {name: shape}, "outputs": [names], "output_shapes": {name:
    shape}}}` from TF Serving's metadata (shapes with -1 for dynamic sizes)."""
    answer = _request(model_url(url) + "/metadata", timeout=timeout)
    try:
        defs = answer["metadata"]["signature_def"]["signature_def"]
        result = {}
        for name, definition in defs.items():
            if name == _INTERNAL:
                continue
            inputs = {key: _shape(info) for key, info in definition.get("inputs", {}).items()}
            outputs = {key: _shape(info) for key, info in definition.get("outputs", {}).items()}
            result[name] = {"inputs": inputs, "outputs": sorted(outputs), "output_shapes": outputs}
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


def noise(text, batch, width, seed):
    """eps or z `[batch, width]`: `zeros` or `random` (N(0, I) drawn from `seed`)."""
    if batch < 0:
        raise ClientError(f"the batch size must be >= 0; got {batch}")
    if text == "zeros":
        return np.zeros((batch, width), "float32")
    if text == "random":
        return np.random.default_rng(seed).standard_normal((batch, width)).astype("float32")
    raise ClientError(f"noise must be 'zeros', 'random' or a .npy file; got {text!r}")


def _rows(value, name):
    value = np.asarray(value)
    if value.ndim == 0:
        raise ClientError(f"{name} must have a batch dimension; got a scalar")
    return len(value)


def check_rows(arrays):
    """The common row count of `{name: array}` (`None` if empty); raises `ClientError` naming
    the first two arrays whose row counts differ, and their counts."""
    counts = [(name, _rows(value, name)) for name, value in arrays.items() if value is not None]
    if not counts:
        return None
    for name, count in counts[1:]:
        if count != counts[0][1]:
            first, first_count = counts[0]
            raise ClientError(
                f"{first} has {first_count} rows but {name} has {count}: inputs that go "
                "together need one row per example each")
    return counts[0][1]


def condition_rows(y, width):
    """`y` → float32 rows `[batch, width]`: integer class labels `[batch]` one-hot encoded,
    rows `[batch, width]` (float, integer or bool) as given. The same rule as
    onnx_runner.py's `condition_rows`."""
    y = np.asarray(y)
    if y.dtype.kind in "iu" and y.ndim == 1:
        if y.size and (y.min() < 0 or y.max() >= width):
            raise ClientError(f"--y labels must be integers in [0, {width}); got values in "
                              f"[{y.min()}, {y.max()}]")
        return np.eye(width, dtype="float32")[y]
    if y.dtype.kind in "iufb" and y.ndim == 2:
        if y.shape[1] != width:
            raise ClientError(f"--y rows must be one-hot rows of width {width} (the model's "
                              f"condition_dim); got shape {y.shape}")
        return y.astype("float32")
    hint = " (float labels: cast them to integers)" if y.dtype.kind == "f" and y.ndim == 1 else ""
    raise ClientError(f"--y must be integer class labels (batch,) or one-hot rows (batch, "
                      f"{width}); got shape {y.shape} and dtype {y.dtype}{hint}")


def _check_shape(name, value, shape, signature):
    if value.ndim != len(shape) or any(s not in (-1, v) for s, v in zip(shape, value.shape)):
        raise ClientError(f"`{signature}` takes {name} of shape {tuple(shape)} (-1: any); got "
                          f"{value.shape}")


def build_inputs(args, spec):
    """The request's inputs for one signature from the flags and its metadata `spec`."""
    signature, wanted = args.signature, spec["inputs"]
    if "y" in wanted and args.y is None:
        raise ClientError(f"this model is conditional (y of width {wanted['y'][-1]}): pass --y, a "
                          ".npy of integer labels or one-hot rows")
    if "y" not in wanted and args.y is not None:
        raise ClientError("this model is not conditional: it takes no --y")
    if args.batch is not None and args.batch < 0:
        raise ClientError(f"--batch must be >= 0; got {args.batch}")
    if "x" in wanted and not args.x:
        raise ClientError(f"--x is required for the {signature} signature")
    given = {"x": _load(args.x, "--x")} if "x" in wanted else {}
    for name in ("eps", "z"):
        text = getattr(args, name)
        if name in wanted and text not in (None, "zeros", "random"):
            given[name] = _load(text, f"--{name}")
    y = _load(args.y, "--y") if args.y is not None else None
    flags = {f"--{name}": value for name, value in {**given, "y": y}.items()}
    batch = check_rows(flags)
    if batch is not None and args.batch is not None and args.batch != batch:
        first = next(flag for flag, value in flags.items() if value is not None)
        raise ClientError(f"--batch {args.batch} differs from the {batch} rows of {first}")
    batch = batch if batch is not None else (args.batch if args.batch is not None else 16)
    inputs = {}
    for name, value in given.items():
        try:
            inputs[name] = np.asarray(value, "float32")
        except (TypeError, ValueError) as error:
            raise ClientError(_one_line(f"--{name} must be numbers: {error}")) from None
    for name in ("eps", "z"):
        if name in wanted and name not in inputs:
            text = getattr(args, name) or ("random" if signature == "sample" else "zeros")
            inputs[name] = noise(text, batch, wanted[name][-1], args.seed)
    if y is not None:
        inputs["y"] = condition_rows(y, wanted["y"][-1])
    unknown = sorted(set(wanted) - set(inputs))
    if unknown:
        raise ClientError(f"`{signature}` takes inputs {unknown} this client cannot supply")
    for name, value in inputs.items():
        _check_shape(name, value, wanted[name], signature)
    return inputs


def empty_outputs(spec, signature):
    """The signature's outputs for an empty batch, from the shapes in its metadata (TF
    Serving cannot take a request without rows: its JSON has no shape)."""
    outputs = {}
    for name, shape in spec["output_shapes"].items():
        if not shape or any(size < 0 for size in shape[1:]):
            raise ClientError(f"an empty batch: the `{signature}` signature's metadata does not "
                              f"state the shape of its output {name} ({shape})")
        outputs[name] = np.zeros((0, *shape[1:]), "float32")
    return outputs


def _run(args):
    available = signatures(args.url, args.timeout)
    if args.signature not in available:
        why = NOT_EXPORTED.get(args.signature, "it was not exported")
        raise ClientError(f"the model at {model_url(args.url)} has no `{args.signature}` "
                          f"signature ({why}); it has {sorted(available)}")
    spec = available[args.signature]
    inputs = build_inputs(args, spec)
    if len(next(iter(inputs.values()))) == 0:
        return empty_outputs(spec, args.signature)
    return predict(args.url, args.signature, inputs, args.timeout, spec["outputs"])


def build_parser():
    """The command line's flags."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://localhost:8501/v1/models/tfvae",
                        help="the model's REST URL, .../v1/models/NAME[/versions/V] (a "
                             ":predict URL is accepted too)")
    parser.add_argument("--signature", default="serving_default",
                        help="the signature to call (see export/README.md)")
    parser.add_argument("--x", help=".npy file of data [batch, ...]")
    parser.add_argument("--y", help=".npy integer class labels [B] or one-hot rows [B, C]: "
                                    "conditional models only")
    parser.add_argument("--z", help="decode's latents: .npy, 'zeros' (default) or 'random'")
    parser.add_argument("--eps", help="noise: .npy, 'zeros' or 'random' (N(0, I) from --seed); "
                                      "default zeros, but random for sample")
    parser.add_argument("--batch", "--eps-batch", "-n", "--num", type=int, default=None,
                        help="the batch when no input file gives it (default 16)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    parser.add_argument("--save", help="write the outputs to this .npz file")
    return parser


def main(argv=None):
    parser = build_parser()
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
