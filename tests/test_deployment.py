"""Deployment end to end: `tfvae export` from a trained run, the TF Serving client against a
local stand-in server, the ONNX runner without TensorFlow, and the Dockerfile's references."""

import http.server
import json
import os
import pathlib
import re
import shlex
import socket
import subprocess
import sys
import threading
import tomllib
import urllib.request

import numpy as np
import pytest
import tensorflow as tf

import tfvae
from tfvae import cli

import dockerfile_build
from helpers import data_for, splits_npz, tiny_model

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
    """TF Serving's REST API (`/metadata`, columnar `:predict`, `{"error": ...}` answers) over
    SavedModels loaded in this process: `models` maps a model name to a loaded SavedModel."""

    models = {}
    requests = []
    _PATH = re.compile(r"/v1/models/([^/:]+)(?:/versions/(\d+))?(/metadata|:predict)$")

    def _answer(self, status, payload):
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _model(self, action):
        match = self._PATH.match(self.path)
        if not match or match.group(3) != action:
            self._answer(404, {"error": f"Malformed request: {self.command} {self.path}"})
            return None
        name = match.group(1)
        if name not in self.models:
            self._answer(404, {"error": f"Servable not found for request: Latest({name})"})
            return None
        return self.models[name]

    def do_GET(self):  # noqa: N802 - http.server's naming
        loaded = self._model("/metadata")
        if loaded is None:
            return
        defs = {}
        for name, fn in loaded.signatures.items():
            def info(spec):
                dims = [{"size": str(-1 if d is None else d), "name": ""} for d in spec.shape]
                return {"dtype": "DT_FLOAT", "tensor_shape": {"dim": dims, "unknown_rank": False},
                        "name": f"{name}_{spec.name}:0"}
            defs[name] = {"inputs": {k: info(v) for k, v in fn.structured_input_signature[1].items()},
                          "outputs": {k: info(v) for k, v in fn.structured_outputs.items()},
                          "method_name": "tensorflow/serving/predict", "defaults": {}}
        defs["__saved_model_init_op"] = {"inputs": {}, "outputs": {}, "method_name": "",
                                         "defaults": {}}
        self._answer(200, {"model_spec": {"name": "tfvae", "signature_name": "", "version": "1"},
                           "metadata": {"signature_def": {"signature_def": defs}}})

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append((self.path, body))
        loaded = self._model(":predict")
        if loaded is None:
            return
        name = body.get("signature_name", "serving_default")
        if name not in loaded.signatures:
            self._answer(400, {"error": f'Serving signature name: "{name}" not found in signature def'})
            return
        signature = loaded.signatures[name]
        try:
            inputs = {k: tf.constant(v, tf.float32) for k, v in body["inputs"].items()}
            outputs = {k: v.numpy().tolist() for k, v in signature(**inputs).items()}
        except (TypeError, ValueError, tf.errors.OpError) as error:
            self._answer(400, {"error": str(error)})  # (multi-line, as TF Serving's can be)
            return
        if len(outputs) == 1:  # TF Serving unwraps a single output
            outputs = next(iter(outputs.values()))
        self._answer(200, {"outputs": outputs})

    def log_message(self, *args):
        pass


@pytest.fixture()
def serving():
    """A fake TF Serving on 127.0.0.1; yields `(models dict to fill, base URL)`."""
    _FakeServing.models, _FakeServing.requests = {}, []
    server = http.server.HTTPServer(("127.0.0.1", 0), _FakeServing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    sys.path.insert(0, str(ROOT / "export"))
    try:
        yield _FakeServing.models, f"http://127.0.0.1:{server.server_port}/v1/models"
    finally:
        server.shutdown()
        server.server_close()
        sys.path.remove(str(ROOT / "export"))


def _serve(models, name, model, root):
    models[name] = tf.saved_model.load(
        tfvae.export.export_saved_model(model, str(root), name))


def _one_line_error(capsys, *fragments):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err
    return err


@pytest.mark.slow
def test_tfserving_client_sends_a_predict_request(trained, serving):
    root, model, x = trained["root"], trained["model"], trained["x"]
    models, base = serving
    _serve(models, "tfvae", model, root / "serving")
    import tfserving_client

    assert tfserving_client.main(["--url", f"{base}/tfvae:predict", "--signature", "encode",
                                  "--x", str(root / "x.npy"), "--save", str(root / "enc.npz")]) == 0
    encoded = np.load(root / "enc.npz")
    np.testing.assert_allclose(encoded["mean"], model.encode(x).mean(), rtol=1e-5, atol=1e-5)
    outputs = tfserving_client.predict(f"{base}/tfvae", "reconstruct",
                                       {"x": x, "eps": np.zeros((5, model.latent_dim))},
                                       output_names=["reconstruction"])
    np.testing.assert_allclose(outputs["reconstruction"], model.reconstruct(x), rtol=1e-5, atol=1e-5)
    request_path, body = _FakeServing.requests[0]
    assert request_path == "/v1/models/tfvae:predict"
    assert body["signature_name"] == "encode" and np.shape(body["inputs"]["x"]) == x.shape


def _hierarchical_vae():
    from tfvae import hierarchy

    posterior = hierarchy.HierarchicalPosterior((3, 2), hidden_units=8, seed=0)
    likelihood = tfvae.BernoulliLikelihood((8,))
    encoder = tfvae.MLP(posterior.params_size, (8,), name="encoder")
    decoder = tfvae.MLP(likelihood.params_size, (8,), name="decoder")
    return tfvae.VAE(encoder, decoder, posterior, likelihood, seed=0)


@pytest.mark.slow
def test_tfserving_client_takes_y_and_reads_widths_from_the_metadata(tmp_path, serving, capsys):
    import tfserving_client

    models, base = serving
    conditional = tiny_model(architecture="conv", condition_dim=3)
    hierarchical = _hierarchical_vae()
    _serve(models, "cond", conditional, tmp_path)
    _serve(models, "hier", hierarchical, tmp_path)
    x = data_for("bernoulli", n=4)
    labels = np.array([0, 2, 1, 2])
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", labels)
    np.save(tmp_path / "y_onehot.npy", np.eye(3, dtype="float32")[labels])
    for y_file in ("y.npy", "y_onehot.npy"):  # labels or one-hot rows
        assert tfserving_client.main([
            "--url", f"{base}/cond", "--signature", "encode", "--x", str(tmp_path / "x.npy"),
            "--y", str(tmp_path / y_file), "--save", str(tmp_path / "enc.npz")]) == 0
        q = conditional.encode(x, y=labels)
        np.testing.assert_allclose(np.load(tmp_path / "enc.npz")["mean"], q.mean(), rtol=1e-5,
                                   atol=1e-5)
    # sample: the batch is --y's, eps's width the signature's (latent_dim 3).
    assert tfserving_client.main(["--url", f"{base}/cond", "--signature", "sample", "--seed", "3",
                                  "--y", str(tmp_path / "y.npy"),
                                  "--save", str(tmp_path / "s.npz")]) == 0
    eps = np.random.default_rng(3).standard_normal((4, 3)).astype("float32")
    expected = conditional.likelihood.mean(conditional.decode(eps, y=labels))
    np.testing.assert_allclose(np.load(tmp_path / "s.npz")["samples"], expected, rtol=1e-5, atol=1e-5)
    assert tfserving_client.main(["--url", f"{base}/cond", "--signature", "encode",
                                  "--x", str(tmp_path / "x.npy")]) == 2
    _one_line_error(capsys, "conditional", "--y")
    # The hierarchy's z is [z1, z2] (3 + 2 = 5 wide), read from its metadata.
    assert tfserving_client.main(["--url", f"{base}/hier", "--signature", "sample", "--batch", "6",
                                  "--seed", "1", "--save", str(tmp_path / "h.npz")]) == 0
    eps = np.random.default_rng(1).standard_normal((6, 5)).astype("float32")
    z = hierarchical.prior.reparameterize(tf.constant(eps))
    np.testing.assert_allclose(np.load(tmp_path / "h.npz")["samples"],
                               hierarchical.decode_mean(z), rtol=1e-5, atol=1e-5)
    capsys.readouterr()
    assert tfserving_client.main(["--url", f"{base}/hier", "--signature", "sample",
                                  "--y", str(tmp_path / "y.npy")]) == 2
    _one_line_error(capsys, "not conditional")


@pytest.mark.slow
def test_tfserving_client_errors_are_one_line(tmp_path, serving, capsys):
    import tfserving_client

    models, base = serving
    mixture = tiny_model(prior="mixture", num_components=2)
    _serve(models, "mix", mixture, tmp_path)
    np.save(tmp_path / "x.npy", data_for("bernoulli", n=2))
    capsys.readouterr()
    # A signature that was not exported, and why.
    assert tfserving_client.main(["--url", f"{base}/mix", "--signature", "sample"]) == 2
    _one_line_error(capsys, "no `sample` signature", "VampPrior", "standard normal")
    # TF Serving's own error text (404 for an unknown model).
    assert tfserving_client.main(["--url", f"{base}/nosuch", "--signature", "encode",
                                  "--x", str(tmp_path / "x.npy")]) == 2
    _one_line_error(capsys, "HTTP 404", "Servable not found for request: Latest(nosuch)")
    # A 400 answer: its `error` text, not a bare HTTPError.
    with pytest.raises(tfserving_client.ClientError, match="HTTP 400") as error:
        tfserving_client.predict(f"{base}/mix", "decode", {"z": np.zeros((2, 7))})
    assert "\n" not in str(error.value) and re.search("shape|size", str(error.value)), error.value
    with pytest.raises(tfserving_client.ClientError, match='HTTP 400 .*: Serving signature name: "sample" not found'):
        tfserving_client.predict(f"{base}/mix", "sample", {"eps": np.zeros((2, 3))})
    # x of the wrong shape is caught from the metadata, before the request.
    np.save(tmp_path / "bad.npy", np.zeros((2, 4, 4, 1), "float32"))
    assert tfserving_client.main(["--url", f"{base}/mix", "--signature", "encode",
                                  "--x", str(tmp_path / "bad.npy")]) == 2
    _one_line_error(capsys, "x of shape (-1, 6, 5, 1)")
    # Nobody listening.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    assert tfserving_client.main(["--url", f"http://127.0.0.1:{closed}/v1/models/tfvae",
                                  "--signature", "encode", "--x", str(tmp_path / "x.npy")]) == 2
    _one_line_error(capsys, "cannot reach TF Serving")


def _runner():
    import importlib.util

    spec = importlib.util.spec_from_file_location("onnx_runner", ROOT / "export" / "onnx_runner.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_onnx_runner_serves_conditional_and_hierarchical_models(tmp_path, capsys):
    runner = _runner()
    conditional = tiny_model(architecture="conv", condition_dim=3)
    hierarchical = _hierarchical_vae()
    tfvae.export.export_onnx(conditional, str(tmp_path / "cond"))
    tfvae.export.export_onnx(hierarchical, str(tmp_path / "hier"))
    x = data_for("bernoulli", n=4)
    labels = np.array([1, 0, 2, 2])
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", labels)
    cond = str(tmp_path / "cond")
    assert runner.main([cond, "encode", "--x", str(tmp_path / "x.npy"), "--y",
                        str(tmp_path / "y.npy"), "--save", str(tmp_path / "e.npz")]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "e.npz")["mean"],
                               conditional.encode(x, y=labels).mean(), rtol=1e-5, atol=1e-5)
    assert runner.main([cond, "sample", "--y", str(tmp_path / "y.npy"), "--seed", "2",
                        "--save", str(tmp_path / "s.npy")]) == 0
    eps = np.random.default_rng(2).standard_normal((4, 3)).astype("float32")
    np.testing.assert_allclose(np.load(tmp_path / "s.npy"),
                               conditional.likelihood.mean(conditional.decode(eps, y=labels)),
                               rtol=1e-5, atol=1e-5)
    capsys.readouterr()
    assert runner.main([cond, "reconstruct", "--x", str(tmp_path / "x.npy")]) == 2
    _one_line_error(capsys, "conditional", "--y")

    hier = str(tmp_path / "hier")
    vae = runner.OnnxVAE(hier)
    assert vae.width("sample", "eps") == 5 and vae.width("decode", "z") == 5
    assert vae.inputs("encode") == {"x": [-1, 8]}
    xh = data_for("bernoulli", n=3)[:, :, 0, 0].reshape(3, -1)[:, :1].repeat(8, 1)
    np.save(tmp_path / "xh.npy", xh)
    assert runner.main([hier, "reconstruct", "--x", str(tmp_path / "xh.npy"),
                        "--save", str(tmp_path / "r.npy")]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "r.npy"), hierarchical.reconstruct(xh),
                               rtol=1e-5, atol=1e-5)
    assert runner.main([hier, "sample", "-n", "5", "--seed", "7", "--save",
                        str(tmp_path / "hs.npy")]) == 0
    eps = np.random.default_rng(7).standard_normal((5, 5)).astype("float32")
    expected = hierarchical.decode_mean(hierarchical.prior.reparameterize(tf.constant(eps)))
    np.testing.assert_allclose(np.load(tmp_path / "hs.npy"), expected, rtol=1e-5, atol=1e-5)
    encoded = vae.encode(xh)
    assert encoded["mean"].shape == (3, 3)  # z1's width

    capsys.readouterr()
    assert runner.main([hier, "sample", "--y", str(tmp_path / "y.npy")]) == 2
    _one_line_error(capsys, "not conditional")


@pytest.mark.slow
def test_onnx_runner_says_why_a_graph_was_not_exported(tmp_path, capsys):
    runner = _runner()
    tfvae.export.export_onnx(tiny_model(prior="vamp", num_components=2), str(tmp_path / "vamp"))
    capsys.readouterr()
    assert runner.main([str(tmp_path / "vamp"), "sample", "-n", "2"]) == 2
    _one_line_error(capsys, "no `sample` graph", "VampPrior cannot be sampled from standard normal")
    assert runner.main([str(tmp_path / "missing"), "sample"]) == 2
    _one_line_error(capsys, "not a tfvae ONNX export")
    # The graphs keep their weights in one shared file: without it, one line saying so.
    os.remove(tmp_path / "vamp" / tfvae.export.WEIGHTS_FILE)
    assert runner.main([str(tmp_path / "vamp"), "encode", "--x", "unused.npy"]) == 2
    _one_line_error(capsys, "weights.bin is missing", "copy it with the .onnx files")


def test_dockerfile_references_exist_and_images_are_pinned():
    text = (ROOT / "Dockerfile").read_text()
    images = re.findall(r"^ARG \w+_IMAGE=(\S+)", text, flags=re.M)
    assert images and all(re.search(r":\d+\.\d+", image) for image in images), images
    for image in images:  # a digest, where one is pinned, is a whole sha256 beside its tag
        assert "@" not in image or re.search(r":\d+\.\d+\S*@sha256:[0-9a-f]{64}$", image), image
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


def test_the_dockerfile_copies_everything_pip_install_needs():
    """The install step's COPY lines (filtered by .dockerignore) hold the metadata, the readme,
    every package and every top-level module pyproject.toml names (tfvae_main.py, the console
    script's entry point, which 0.2.0's Dockerfile left out)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    copies = dockerfile_build.install_copies(ROOT)
    copied = set()
    for sources, _ in copies:
        for source in sources:
            copied.update(p.relative_to(ROOT).as_posix()
                          for p in dockerfile_build.context_files(ROOT, source))
    needed = {"pyproject.toml", "setup.py", project["project"]["readme"], "tfvae/__init__.py"}
    needed |= {f"{module}.py" for module in project["tool"]["setuptools"]["py-modules"]}
    entry = project["project"]["scripts"]["tfvae"].split(":")[0]
    needed.add(f"{entry}.py")
    assert needed <= copied, f"the Dockerfile does not copy {sorted(needed - copied)}"
    assert not any("__pycache__" in path for path in copied)
    # The context keeps runs trained outside Docker (`--build-arg RUN_DIR=runs/digits`) and
    # drops caches and the hidden leftovers of killed exports.
    patterns = dockerfile_build.dockerignore_patterns(ROOT)
    assert not dockerfile_build.ignored("runs/digits/model.keras", patterns)
    for junk in ("tfvae/__pycache__/cli.cpython-311.pyc", ".git/HEAD", ".venv/bin/python",
                 "models/tfvae/.1.tmp-ab12"):
        assert dockerfile_build.ignored(junk, patterns), junk


@pytest.mark.slow
def test_a_wheel_of_the_dockerfile_s_files_installs_a_tfvae_command_that_trains_and_exports(
        tmp_path):
    """What `docker build` does up to the export, without Docker: a wheel from exactly the files
    the Dockerfile copies before `pip install .`, installed into a fresh venv, whose own
    `tfvae` command then trains one epoch on a small .npz and exports a SavedModel."""
    dockerfile_build.copy_install_sources(ROOT, tmp_path / "src")
    wheel = dockerfile_build.build_wheel(tmp_path / "src", tmp_path / "dist")
    bin_dir = dockerfile_build.install_wheel(wheel, tmp_path / "venv")
    work = tmp_path / "work"
    work.mkdir()

    def run(*command):
        result = subprocess.run([str(c) for c in command], cwd=work, capture_output=True,
                                text=True, timeout=900, env=dockerfile_build.clean_env())
        assert result.returncode == 0, (command, result.stdout[-2000:], result.stderr[-3000:])
        return result.stdout

    # The wheel's modules answer, not a checkout's (or an editable install's).
    # (Found as an import finds them, without importing TensorFlow: the commands below do.)
    where = run(bin_dir / "python", "-c",
                "import importlib.util as u; print(u.find_spec('tfvae').origin); "
                "print(u.find_spec('tfvae_main').origin)")
    assert all(pathlib.Path(line).is_relative_to(tmp_path / "venv") for line in where.split()), where
    assert "train" in run(bin_dir / "tfvae", "--help")
    # A small .npz (40 training examples): the install, not the data, is tested.
    arrays = splits_npz(work / "d.npz")
    run(bin_dir / "tfvae", "train", "--dataset", "d.npz", "--output", "run", "--epochs", "1",
        "--latent-dim", "2", "--hidden-units", "8", "--eval-samples", "2", "--batch-size", "256",
        "--quiet")
    run(bin_dir / "tfvae", "export", "run", "--format", "saved_model", "--output", "models",
        "--model-name", "tfvae", "--version", "1")
    # The export serves the trained model: its reconstruction is the Keras model's.
    _, model = tfvae.runs.load_run(str(work / "run"))
    x = arrays["x_valid"][:4, :, :, None].astype("float32")
    loaded = tf.saved_model.load(str(work / "models" / "tfvae" / "1"))
    served = loaded.signatures["serving_default"](x=tf.constant(x))["reconstruction"]
    np.testing.assert_allclose(served, model.reconstruct(x), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------
# One behaviour across tools: the ONNX runner and the TF Serving client read the same
# flags the same way. The fast tests run the runner on small hand-made graphs with the
# exported graphs' inputs and outputs (each input's batch dimension named separately,
# as tf2onnx names them), so they need neither TensorFlow nor an export.

_W = np.arange(8, dtype="float32").reshape(2, 4) / 8  # z [B, 2] -> [B, 4]
_WY = np.arange(12, dtype="float32").reshape(3, 4) + 1  # y [B, 3] -> [B, 4]


def _stub_export(directory, conditional=False):
    """A directory `onnx_runner.OnnxVAE` reads: encode/decode/reconstruct/sample over x [B, 4],
    latents [B, 2] (and y [B, 3]): mean = z W (+ y W_y), reconstruction = x + eps W (+ y W_y),
    samples = eps W (+ y W_y); encode's mean is x's first two columns (+ y W_y[:, :2]), its
    scale ones."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    directory.mkdir()
    count = iter(range(1000))

    def value(name, width):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, [f"unk__{next(count)}", width])

    def with_y(nodes, out, inputs):
        if not conditional:
            return nodes + [helper.make_node("Identity", [out + "_0"], [out])], inputs
        weights = "WY2" if out == "mean" and "x" in [i.name for i in inputs] else "WY"
        return (nodes + [helper.make_node("MatMul", ["y", weights], ["yw"]),
                         helper.make_node("Add", [out + "_0", "yw"], [out])],
                inputs + [value("y", 3)])

    graphs = {
        "encode": ([helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["mean_0"]),
                    helper.make_node("Mul", ["mean_0", "zero"], ["scale_z"]),
                    helper.make_node("Add", ["scale_z", "one"], ["scale"])],
                   [value("x", 4)], [value("mean", 2), value("scale", 2)], "mean"),
        "decode": ([helper.make_node("MatMul", ["z", "W"], ["mean_0"])],
                   [value("z", 2)], [value("mean", 4)], "mean"),
        "reconstruct": ([helper.make_node("MatMul", ["eps", "W"], ["ew"]),
                         helper.make_node("Add", ["x", "ew"], ["reconstruction_0"])],
                        [value("x", 4), value("eps", 2)], [value("reconstruction", 4)],
                        "reconstruction"),
        "sample": ([helper.make_node("MatMul", ["eps", "W"], ["samples_0"])],
                   [value("eps", 2)], [value("samples", 4)], "samples"),
    }
    constants = [numpy_helper.from_array(_W, "W"), numpy_helper.from_array(_WY, "WY"),
                 numpy_helper.from_array(_WY[:, :2], "WY2"),
                 numpy_helper.from_array(np.array([0], "int64"), "starts"),
                 numpy_helper.from_array(np.array([2], "int64"), "ends"),
                 numpy_helper.from_array(np.array([1], "int64"), "axes"),
                 numpy_helper.from_array(np.array(0, "float32"), "zero"),
                 numpy_helper.from_array(np.array(1, "float32"), "one")]
    for name, (nodes, inputs, outputs, main_output) in graphs.items():
        nodes, inputs = with_y(nodes, main_output, inputs)
        graph = helper.make_graph(nodes, name, inputs, outputs, constants)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.save(model, directory / f"{name}.onnx")
    metadata = {"graphs": {name: f"{name}.onnx" for name in graphs},
                "condition_dim": 3 if conditional else None, "skipped": {}}
    (directory / "metadata.json").write_text(json.dumps(metadata))
    return str(directory)


def _client():
    import importlib.util

    spec = importlib.util.spec_from_file_location("tfserving_client",
                                                  ROOT / "export" / "tfserving_client.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tools():
    return _runner(), _client()


@pytest.fixture(scope="module")
def stubs(tmp_path_factory, tools):
    root = tmp_path_factory.mktemp("stubs")
    x = np.random.default_rng(0).uniform(size=(7, 4)).astype("float32")
    np.save(root / "x7.npy", x)
    np.save(root / "x0.npy", x[:0])
    for rows in (0, 1, 3, 7):
        np.save(root / f"eps{rows}.npy", np.full((rows, 2), 0.5, "float32"))
    labels = np.array([0, 2, 1, 1, 0, 2, 2])
    np.save(root / "y7.npy", labels)
    np.save(root / "y3.npy", labels[:3])
    return {"root": root, "x": x, "labels": labels,
            "plain": _stub_export(root / "plain"), "cond": _stub_export(root / "cond", True)}


_LABELS = np.array([2, 0, 1])
_ONE_HOT = np.eye(3, dtype="float32")[_LABELS]


@pytest.mark.parametrize("y", [
    _LABELS, _LABELS.astype("int32"), _LABELS.astype("uint8"),  # class labels [B]
    _ONE_HOT, _ONE_HOT.astype("float64"),                      # one-hot rows [B, C] ...
    _ONE_HOT.astype("int64"), _ONE_HOT.astype("int32"), _ONE_HOT.astype(bool),  # ... of any type
], ids=["labels", "labels_int32", "labels_uint8", "rows", "rows_float64", "rows_int64",
        "rows_int32", "rows_bool"])
def test_both_tools_take_labels_and_one_hot_rows_of_any_numeric_type(tools, y):
    for tool in tools:
        rows = tool.condition_rows(y, 3)
        assert rows.dtype == np.float32
        np.testing.assert_array_equal(rows, _ONE_HOT)


@pytest.mark.parametrize("y, fragments", [
    (np.array([0.0, 2.0, 1.0]), ("integer class labels", "float64", "cast them to integers")),
    (np.array([0, 3, 1]), ("integers in [0, 3)", "[0, 3]")),
    (np.array([-1, 0, 1]), ("integers in [0, 3)",)),
    (np.eye(4, dtype="int64")[:3], ("width 3", "(3, 4)")),
    (np.zeros((3, 3, 1)), ("one-hot rows (batch, 3)", "(3, 3, 1)")),
    (np.array(["a", "b", "c"]), ("integer class labels", "<U1")),
], ids=["float_labels", "label_too_big", "negative_label", "wide_rows", "3d", "strings"])
def test_both_tools_refuse_the_same_y_forms_in_one_line(tools, y, fragments):
    for tool, error in zip(tools, ("RunnerError", "ClientError")):
        with pytest.raises(getattr(tool, error)) as info:
            tool.condition_rows(y, 3)
        message = str(info.value)
        assert "\n" not in message and message.startswith("--y"), message
        for fragment in fragments:
            assert fragment in message, message


def test_onnx_runner_refuses_inputs_whose_rows_differ_before_running_a_graph(tools, stubs, capsys):
    runner, _ = tools
    root, plain, cond = stubs["root"], stubs["plain"], stubs["cond"]
    for eps in ("eps3.npy", "eps1.npy"):  # 1 row would broadcast silently in onnxruntime
        assert runner.main([plain, "reconstruct", "--x", str(root / "x7.npy"),
                            "--eps", str(root / eps)]) == 2
        _one_line_error(capsys, "--x has 7 rows but --eps has", eps[3])
    assert runner.main([cond, "reconstruct", "--x", str(root / "x7.npy"),
                        "--y", str(root / "y3.npy")]) == 2
    _one_line_error(capsys, "--x has 7 rows but --y has 3")
    assert runner.main([cond, "sample", "-n", "5", "--y", str(root / "y7.npy")]) == 2
    _one_line_error(capsys, "-n 5 differs from the 7 rows of --y")
    # The API: a ValueError naming both arguments and their row counts.
    vae = runner.OnnxVAE(plain)
    with pytest.raises(ValueError, match=r"^`x` has 7 rows but `eps` has 1: "):
        vae.reconstruct(stubs["x"], eps=np.zeros((1, 2)))
    with pytest.raises(ValueError, match=r"^`x` has 7 rows but `eps` has 3: "):
        vae.run("reconstruct", x=stubs["x"], eps=np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"--y has 3 rows for a batch of 7|`x` has 7 rows but `y` has 3"):
        runner.OnnxVAE(cond).encode(stubs["x"], y=stubs["labels"][:3])
    with pytest.raises(ValueError, match=r"`encode` takes inputs \['x'\]; got \['eps'\]"):
        vae.run("encode", x=stubs["x"], eps=np.zeros((7, 2)))


def test_onnx_runner_sets_its_threads_and_does_not_spin_by_default(tools, stubs, capsys):
    runner, _ = tools
    root, plain = stubs["root"], stubs["plain"]
    options = runner.session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.intra_op_num_threads == 0  # onnxruntime's own default
    spinning = runner.session_options(threads=2, spinning=True)
    assert spinning.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert spinning.intra_op_num_threads == 2
    one = runner.OnnxVAE(plain, threads=1)
    assert one.sessions["encode"].get_session_options().intra_op_num_threads == 1
    np.testing.assert_array_equal(one.encode(stubs["x"])["mean"],
                                  runner.OnnxVAE(plain).encode(stubs["x"])["mean"])
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="threads must be an integer >= 1"):
            runner.OnnxVAE(plain, threads=bad)
    assert runner.main([plain, "encode", "--x", str(root / "x7.npy"), "--threads", "0"]) == 2
    _one_line_error(capsys, "--threads must be >= 1; got 0")


def test_onnx_runner_answers_an_empty_batch_with_empty_outputs(tools, stubs, capsys):
    runner, _ = tools
    root, plain, cond = stubs["root"], stubs["plain"], stubs["cond"]
    vae = runner.OnnxVAE(cond)
    empty_y = np.zeros(0, "int64")
    encoded = vae.encode(np.zeros((0, 4)), y=empty_y)
    assert {k: v.shape for k, v in encoded.items()} == {"mean": (0, 2), "scale": (0, 2)}
    assert vae.decode(np.zeros((0, 2)), y=empty_y)["mean"].shape == (0, 4)
    assert vae.reconstruct(np.zeros((0, 4)), y=empty_y).shape == (0, 4)
    assert vae.sample(0, y=empty_y).shape == (0, 4)
    assert runner.main([plain, "reconstruct", "--x", str(root / "x0.npy"),
                        "--save", str(root / "r0.npy")]) == 0
    assert np.load(root / "r0.npy").shape == (0, 4)
    assert runner.main([plain, "sample", "-n", "0", "--save", str(root / "s0.npy")]) == 0
    assert np.load(root / "s0.npy").shape == (0, 4)
    capsys.readouterr()
    assert runner.main([plain, "sample", "-n", "-2"]) == 2
    _one_line_error(capsys, "-n must be >= 0; got -2")


@pytest.mark.parametrize("graph, flags", [
    ("reconstruct", ["--x", "x7.npy"]),                              # eps: zeros
    ("reconstruct", ["--x", "x7.npy", "--eps", "random", "--seed", "3"]),
    ("reconstruct", ["--x", "x7.npy", "--eps", "eps7.npy", "--y", "y7.npy"]),
    ("sample", []),                                                  # 16 rows of N(0, I), seed 0
    ("sample", ["--seed", "5", "-n", "3"]),
    ("sample", ["--eps", "zeros", "--y", "y3.npy"]),
    ("decode", ["--y", "y7.npy"]),                                   # z: zeros
    ("decode", ["--z", "random", "--batch", "2"]),
    ("encode", ["--x", "x7.npy", "--y", "y7.npy"]),
])
def test_the_runner_and_the_client_send_a_graph_the_same_inputs_for_the_same_flags(
        tools, stubs, monkeypatch, graph, flags):
    runner, client = tools
    monkeypatch.chdir(stubs["root"])
    conditional = "--y" in flags
    directory = stubs["cond" if conditional else "plain"]
    fed = {}

    def run(self, name, y=None, **inputs):
        fed.update(inputs)
        if y is not None:
            fed["y"] = self.condition(y)
        return {}

    monkeypatch.setattr(runner.OnnxVAE, "run", run)
    assert runner.main([directory, graph, *flags]) == 0
    vae = runner.OnnxVAE(directory)
    spec = {"inputs": vae.inputs(graph), "outputs": [], "output_shapes": {}}
    args = client.build_parser().parse_args(["--signature", graph, *flags])
    sent = client.build_inputs(args, spec)
    assert sorted(sent) == sorted(fed) == sorted(spec["inputs"])
    for name in sent:
        np.testing.assert_array_equal(sent[name], fed[name], err_msg=name)
    # The defaults: zeros, except sample's eps, N(0, I) from --seed (default 0) for 16 rows.
    if graph == "sample" and "--eps" not in flags:
        seed = int(flags[flags.index("--seed") + 1]) if "--seed" in flags else 0
        rows = 3 if "-n" in flags else 16
        np.testing.assert_array_equal(
            sent["eps"], np.random.default_rng(seed).standard_normal((rows, 2)).astype("float32"))
    elif graph in ("reconstruct", "decode") and not {"--eps", "--z"} & set(flags):
        assert not np.any(sent["eps" if graph == "reconstruct" else "z"])


@pytest.mark.slow
def test_both_tools_answer_a_conditional_conv_model_alike_and_as_keras_does(tmp_path, serving,
                                                                            capsys):
    """The same flags give the same answers from TF Serving (the stand-in) and ONNX Runtime —
    the Keras model's — with the default noise and integer one-hot rows; an empty batch gives
    empty outputs in both (a conv graph cannot run one); mismatched rows are one line."""
    import tfserving_client

    runner = _runner()
    models, base = serving
    model = tiny_model(architecture="conv", condition_dim=3)
    _serve(models, "cond", model, tmp_path / "serving")
    onnx_dir = str(tmp_path / "onnx")
    tfvae.export.export_onnx(model, onnx_dir)
    x, labels = data_for("bernoulli", n=5), np.array([0, 2, 1, 1, 0])
    files = {"x": x, "y": np.eye(3, dtype="int64")[labels], "eps3": np.zeros((3, 3), "float32"),
             "x0": x[:0], "y0": np.zeros(0, "int64")}
    for name, value in files.items():
        np.save(tmp_path / f"{name}.npy", value)
    url = f"{base}/cond"

    def both(graph, *flags):
        """Runs `graph` with `flags` in both tools; returns (client's, runner's) outputs."""
        flags = [str(tmp_path / f) if f.endswith(".npy") else f for f in flags]
        assert tfserving_client.main(["--url", url, "--signature", graph, *flags,
                                      "--save", str(tmp_path / "c.npz")]) == 0
        assert runner.main([onnx_dir, graph, *flags, "--save", str(tmp_path / "r.npz")]) == 0
        return dict(np.load(tmp_path / "c.npz")), dict(np.load(tmp_path / "r.npz"))

    served, run = both("reconstruct", "--x", "x.npy", "--y", "y.npy")  # eps: zeros
    expected = model.reconstruct(x, y=labels)
    np.testing.assert_allclose(served["reconstruction"], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(run["reconstruction"], expected, rtol=1e-5, atol=2e-5)
    served, run = both("sample", "--y", "y.npy", "--seed", "4")  # eps: N(0, I) from --seed
    eps = np.random.default_rng(4).standard_normal((5, 3)).astype("float32")
    expected = model.likelihood.mean(model.decode(eps, y=labels))
    np.testing.assert_allclose(served["samples"], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(run["samples"], expected, rtol=1e-5, atol=2e-5)
    served, run = both("decode", "--y", "y.npy")  # z: zeros
    expected = model.likelihood.mean(model.decode(np.zeros((5, 3), "float32"), y=labels))
    np.testing.assert_allclose(served["mean"], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(run["mean"], expected, rtol=1e-5, atol=2e-5)

    sent = len(_FakeServing.requests)
    for graph, flags in {"encode": ["--x", "x0.npy"], "reconstruct": ["--x", "x0.npy"],
                         "decode": [], "sample": []}.items():
        served, run = both(graph, *flags, "--y", "y0.npy")
        full = runner.OnnxVAE(onnx_dir).run(
            graph, y=labels[:1], **{"encode": {"x": x[:1]}, "reconstruct": {"x": x[:1], "eps": eps[:1]},
                                    "decode": {"z": eps[:1]}, "sample": {"eps": eps[:1]}}[graph])
        shapes = {name: (0, *value.shape[1:]) for name, value in full.items()}
        assert {k: v.shape for k, v in served.items()} == shapes, graph
        assert {k: v.shape for k, v in run.items()} == shapes, graph
    assert len(_FakeServing.requests) == sent  # answered from the metadata, no request

    capsys.readouterr()
    assert tfserving_client.main(["--url", url, "--signature", "reconstruct", "--x",
                                  str(tmp_path / "x.npy"), "--eps", str(tmp_path / "eps3.npy"),
                                  "--y", str(tmp_path / "y.npy")]) == 2
    _one_line_error(capsys, "--x has 5 rows but --eps has 3")
    assert runner.main([onnx_dir, "reconstruct", "--x", str(tmp_path / "x.npy"),
                        "--eps", str(tmp_path / "eps3.npy"), "--y", str(tmp_path / "y.npy")]) == 2
    _one_line_error(capsys, "--x has 5 rows but --eps has 3")
    assert len(_FakeServing.requests) == sent


# `tfvae train` flags appended to the README's training commands: a tiny run.
_TINY_TRAIN = ["--epochs", "1", "--latent-dim", "2", "--hidden-units", "16", "--eval-samples", "2",
               "--batch-size", "256", "--quiet"]


def _deployment_commands():
    """`(line, words)` of every command in export/README.md's sections 1 to 2b, in order."""
    text = (ROOT / "export" / "README.md").read_text()
    section = text[text.index("## 1. Train"):text.index("## Limits")]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append((line.strip(), words))
    return commands


@pytest.mark.slow
def test_the_deployment_readme_runs_as_written(tmp_path, monkeypatch, serving):
    """Every command of export/README.md's sections 1-2b, in order, in a folder holding the
    repository's `export/`: `tfvae` commands through the CLI (training at tiny scale:
    `_TINY_TRAIN` appended), `python -c` snippets in this interpreter and `python`
    scripts in a subprocess, `docker run ...
    tensorflow/serving` replaced by the stand-in TF Serving serving what the README exported
    (the client's commands get its `--url`, `curl` its address); `docker build` is not run.
    The ONNX runner's outputs are then compared with the Keras models."""
    models, base = serving
    (tmp_path / "export").symlink_to(ROOT / "export")
    monkeypatch.chdir(tmp_path)
    skipped, printed = [], {}
    for line, words in _deployment_commands():
        program = words[0]
        if program == "tfvae":
            args = words[1:] + (_TINY_TRAIN if words[1] == "train" else [])
            assert cli.main(args) == 0, line
        elif program == "docker" and "run" in words and "tensorflow/serving:" in line:
            base_path = tmp_path / "models" / "tfvae"  # what the README mounts as /models/tfvae
            latest = max(base_path.iterdir(), key=lambda version: int(version.name))
            models["tfvae"] = tf.saved_model.load(str(latest))
        elif program == "docker":
            skipped.append(line)
        elif program == "python" and words[1] == "-c":
            # One-line snippets (numpy, tfvae) run here, in this interpreter: a fresh
            # one would only add a TensorFlow import (the scripts below need none).
            assert len(words) == 3, line
            exec(compile(words[2], "<README python -c>", "exec"), {"__name__": "__main__"})
        elif program == "python":
            if words[1].endswith("tfserving_client.py"):
                words = words + ["--url", f"{base}/tfvae"]
            result = subprocess.run([sys.executable, *words[1:]], cwd=tmp_path, capture_output=True,
                                    text=True, timeout=600)
            assert result.returncode == 0, (line, result.stdout[-2000:], result.stderr[-3000:])
            printed[line] = result.stdout
        elif program == "curl":
            url = words[1].replace("http://localhost:8501/v1/models", base)
            with urllib.request.urlopen(url, timeout=60) as answer:
                metadata = json.loads(answer.read())
            signatures = metadata["metadata"]["signature_def"]["signature_def"]
            assert {"encode", "reconstruct", "sample", "serving_default"} <= set(signatures)
        else:
            raise AssertionError(f"export/README.md runs `{program}`, which this test cannot: {line}")
    assert skipped == ["docker build -t tfvae-serving . && docker run -p 8500:8500 -p 8501:8501 "
                       "tfvae-serving"], skipped

    x = np.load(tmp_path / "x.npy")
    client_lines = {line: out for line, out in printed.items() if "tfserving_client.py" in line}
    assert len(client_lines) == 3
    for line, out in client_lines.items():
        assert "shape (4," in out, (line, out)
    _, model = tfvae.runs.load_run(str(tmp_path / "runs" / "digits"))
    np.testing.assert_allclose(np.load(tmp_path / "recon.npy"), model.reconstruct(x),
                               rtol=1e-5, atol=2e-5)
    eps = np.random.default_rng(0).standard_normal((16, model.latent_dim)).astype("float32")
    np.testing.assert_allclose(np.load(tmp_path / "samples.npy"), model.decode(eps).mean(),
                               rtol=1e-5, atol=2e-5)
    _, conditional = tfvae.runs.load_run(str(tmp_path / "runs" / "digits_cond"))
    labels = np.load(tmp_path / "labels.npy")
    eps = np.random.default_rng(0).standard_normal((10, conditional.latent_dim)).astype("float32")
    np.testing.assert_allclose(np.load(tmp_path / "samples_cond.npy"),
                               conditional.decode(eps, y=labels).mean(), rtol=1e-5, atol=2e-5)
    x_labels = np.load(tmp_path / "x_labels.npy")
    np.testing.assert_allclose(np.load(tmp_path / "recon_cond.npy"),
                               conditional.reconstruct(x, y=x_labels), rtol=1e-5, atol=2e-5)


@pytest.mark.slow
def test_the_readme_names_every_output_of_each_posterior_s_encode_graph():
    """export/README.md's `encode` row names what the graph returns (a planar flow's `u`, `w`,
    `b`, not the IAF's `context`), with the widths it states."""
    text = (ROOT / "export" / "README.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| `encode` |"))
    x = data_for("bernoulli", n=2)
    widths = {}
    for posterior in ("diagonal", "iaf", "planar"):
        model = tiny_model(posterior=posterior)
        encode, _ = tfvae.export.graph_functions(model)["encode"]
        outputs = encode(tf.constant(x))
        for name, value in outputs.items():
            assert f"`{name}" in row, (posterior, name, row)
            widths[posterior, name] = value.shape[-1]
    d, steps = 3, 4  # tiny_model's latent_dim; the planar flow's default steps
    assert widths["planar", "u"] == widths["planar", "w"] == steps * d and widths["planar", "b"] == steps
    assert widths["iaf", "context"] == 16
    for stated in ("`u [B, T·d]`", "`w [B, T·d]`", "`b [B, T]`", "`context [B, c]`"):
        assert stated in row
