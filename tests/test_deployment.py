"""Deployment end to end: `tfvae export` from a trained run, the TF Serving client against a
local stand-in server, the ONNX runner without TensorFlow, and the Dockerfile's references."""

import http.server
import json
import os
import pathlib
import re
import subprocess
import sys
import threading

import numpy as np
import pytest
import tensorflow as tf

import tfvae
from tfvae import cli

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, digits_run):
    """The shared finished run (conftest.py); everything this module writes goes in `root`."""
    root = tmp_path_factory.mktemp("deploy")
    run = digits_run
    _, model = tfvae.runs.load_run(run)
    x = tfvae.data.load_digits()[1][0][:5]
    np.save(root / "x.npy", x)
    return {"root": root, "run": run, "model": model, "x": x}


@pytest.mark.slow
def test_cli_exports_both_formats_from_a_trained_run(trained, capsys):
    run, root = trained["run"], trained["root"]
    assert cli.main(["export", run, "--format", "saved_model", "--output", str(root / "models")]) == 0
    assert (root / "models" / "tfvae" / "1" / "saved_model.pb").exists()
    assert cli.main(["export", run, "--format", "saved_model", "--output", str(root / "models"),
                     "--version", "1"]) == 2
    assert "never overwritten" in capsys.readouterr().err
    assert cli.main(["export", run, "--format", "onnx", "--output", str(root / "onnx")]) == 0
    for name in ("encode", "decode", "reconstruct", "sample"):
        assert (root / "onnx" / f"{name}.onnx").exists()
    assert cli.main(["export", run, "--format", "onnx", "--output", str(root / "onnx")]) == 2


def _run_without_tensorflow(script, args, cwd):
    """Runs `script` in a fresh interpreter in which importing TensorFlow fails."""
    code = (
        "import runpy, sys\n"
        "for name in ('tensorflow', 'keras', 'tf2onnx', 'tensorflow_probability', 'tfvae'):\n"
        "    sys.modules[name] = None  # any import of these raises ImportError\n"
        f"sys.argv = [{str(script)!r}] + {list(args)!r}\n"
        f"runpy.run_path({str(script)!r}, run_name='__main__')\n"
    )
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_onnx_runner_works_without_tensorflow(trained):
    root, model, x = trained["root"], trained["model"], trained["x"]
    onnx_dir = root / "onnx_runner"
    tfvae.export.export_onnx(model, str(onnx_dir))
    script = ROOT / "export" / "onnx_runner.py"
    result = _run_without_tensorflow(
        script, [str(onnx_dir), "reconstruct", "--x", str(root / "x.npy"), "--save", "r.npy"], root)
    assert result.returncode == 0, result.stderr[-3000:]
    np.testing.assert_allclose(np.load(root / "r.npy"), model.reconstruct(x), rtol=1e-5, atol=2e-5)
    result = _run_without_tensorflow(
        script, [str(onnx_dir), "sample", "-n", "6", "--seed", "4", "--save", "s.npy"], root)
    assert result.returncode == 0, result.stderr[-3000:]
    eps = np.random.default_rng(4).standard_normal((6, model.latent_dim)).astype(np.float32)
    expected = model.decode(eps).mean().numpy()
    np.testing.assert_allclose(np.load(root / "s.npy"), expected, rtol=1e-5, atol=2e-5)
    result = _run_without_tensorflow(
        script, [str(onnx_dir), "encode", "--x", str(root / "x.npy"), "--save", "e.npz"], root)
    assert result.returncode == 0, result.stderr[-3000:]
    encoded = np.load(root / "e.npz")
    q = model.encode(x)
    np.testing.assert_allclose(encoded["mean"], q.mean(), rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(encoded["scale"], q.stddev(), rtol=1e-5, atol=2e-5)


class _FakeServing(http.server.BaseHTTPRequestHandler):
    """Answers TF Serving's REST `:predict` (columnar format) from a loaded SavedModel."""

    saved_model = None
    requests = []

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append((self.path, body))
        signature = self.saved_model.signatures[body.get("signature_name", "serving_default")]
        inputs = {k: tf.constant(v, tf.float32) for k, v in body["inputs"].items()}
        outputs = {k: v.numpy().tolist() for k, v in signature(**inputs).items()}
        if len(outputs) == 1:  # TF Serving unwraps a single output
            outputs = next(iter(outputs.values()))
        payload = json.dumps({"outputs": outputs}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.mark.slow
def test_tfserving_client_sends_a_predict_request(trained):
    root, model, x = trained["root"], trained["model"], trained["x"]
    path = tfvae.export.export_saved_model(model, str(root / "serving"), "tfvae")
    _FakeServing.saved_model = tf.saved_model.load(path)
    server = http.server.HTTPServer(("127.0.0.1", 0), _FakeServing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/v1/models/tfvae:predict"
        sys.path.insert(0, str(ROOT / "export"))
        import tfserving_client

        assert tfserving_client.main(["--url", url, "--signature", "encode", "--x",
                                      str(root / "x.npy"), "--save", str(root / "enc.npz")]) == 0
        encoded = np.load(root / "enc.npz")
        np.testing.assert_allclose(encoded["mean"], model.encode(x).mean(), rtol=1e-5, atol=1e-5)
        outputs = tfserving_client.predict(url, "reconstruct", {"x": x, "eps": np.zeros((5, model.latent_dim))})
        np.testing.assert_allclose(outputs["output"], model.reconstruct(x), rtol=1e-5, atol=1e-5)
        request_path, body = _FakeServing.requests[0]
        assert request_path == "/v1/models/tfvae:predict"
        assert body["signature_name"] == "encode" and np.shape(body["inputs"]["x"]) == x.shape
    finally:
        server.shutdown()
        sys.path.remove(str(ROOT / "export"))


def test_dockerfile_references_exist_and_images_are_pinned():
    text = (ROOT / "Dockerfile").read_text()
    images = re.findall(r"^ARG \w+_IMAGE=(\S+)", text, flags=re.M)
    assert images and all(re.search(r":\d+\.\d+", image) for image in images), images
    assert "tensorflow/serving" in text
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", text, flags=re.M):
        for path in source.split():
            assert (ROOT / path).exists(), f"Dockerfile copies missing {path}"
    assert "ENV MODEL_NAME=tfvae" in text and "EXPOSE 8500 8501" in text
    # The commands it runs exist in this repository's CLI.
    for command in re.findall(r"tfvae (train|export|evaluate|sample)\b", text):
        with pytest.raises(SystemExit) as exit_info:
            cli.main([command, "--help"])
        assert exit_info.value.code == 0
    assert "--format saved_model" in text and "--model-name tfvae" in text
    config = (ROOT / "export" / "models.config").read_text()
    assert 'name: "tfvae"' in config and 'base_path: "/models/tfvae"' in config
