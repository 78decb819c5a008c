import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import tfvae  # noqa: E402  (after the TF environment variables)

# test_compat.py is kept exactly as it was written against the 0.1.0 golden files, so
# its one full command-line run (resume a run, then evaluate) is marked slow here.
_SLOW_ELSEWHERE = {
    "tests/test_compat.py::test_golden_run_resumes_its_warm_up",
    "tests/test_compat.py::test_golden_model_exports_with_parity",  # SavedModel + ONNX
}


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """A finished `tfvae train` run on the built-in digits with tiny settings, shared by the
    command-line and deployment tests. Read-only: copy it to change it."""
    from tfvae import cli

    from helpers import TINY_RUN

    output = str(tmp_path_factory.mktemp("runs") / "digits")
    assert cli.main(["train", "--output", output, *TINY_RUN]) == 0
    return output


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.nodeid in _SLOW_ELSEWHERE:
            item.add_marker(pytest.mark.slow)


# Shared by test_model.py and test_training.py.

@pytest.fixture(scope="module")
def digits():
    return tfvae.data.load_digits()


@pytest.fixture(scope="module")
def vec_model():
    model = tfvae.build_vae((4,), 2, hidden_units=(8,), seed=0)
    model.compile(optimizer="adam")
    return model


@pytest.fixture(scope="module")
def img_model():
    model = tfvae.build_vae((3, 3, 1), 2, hidden_units=(8,), seed=0)
    model.compile(optimizer="adam")
    return model
