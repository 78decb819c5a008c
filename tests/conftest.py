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


@pytest.fixture(scope="session")
def shapes_tcvae_run(tmp_path_factory):
    """A finished β-TCVAE `tfvae train` run on the built-in shapes (tiny settings), shared
    by the command-line and data tests. Read-only: copy it to change it."""
    from tfvae import cli

    from helpers import TINY_RUN

    output = str(tmp_path_factory.mktemp("runs") / "shapes_tc")
    assert cli.main(["train", "--dataset", "shapes", "--objective", "beta_tcvae", "--tc-weight",
                     "6", "--warmup-epochs", "1", "--output", output, *TINY_RUN]) == 0
    return output


# Fast-subset tests measured at 1.4 s or more (pytest --durations, 2026-11-26), moved
# to the full suite to keep the inner loop under 90 s; each module keeps cheap tests.
_SLOW_BY_TIME = {
    "tests/test_training.py::test_history_records_beta_and_the_learning_rate_at_each_epochs_last_step[1-False]",
    "tests/test_training.py::test_model_still_works_after_a_rejected_call[fit_dataset]",
    "tests/test_training.py::test_model_still_works_after_a_rejected_call[fit_tensor]",
    "tests/test_training.py::test_labels_and_sample_weights_are_accepted",
    "tests/test_training.py::test_good_data_passes_fit_evaluate_and_predict",
    "tests/test_training.py::test_the_model_stores_its_schedule_and_fit_follows_it",
    "tests/test_compat.py::test_golden_model_gives_the_same_numbers[conditional_hierarchy]",
    "tests/test_compat.py::test_golden_model_gives_the_same_numbers[iaf]",
    "tests/test_report.py::test_write_figures_and_markdown[conditional]",
    "tests/test_conditioning.py::test_a_user_pipeline_with_a_bad_label_gives_nan_terms_for_that_row_under_xla",
    "tests/test_conditioning.py::test_a_rejected_dataset_leaves_the_model_trainable_and_other_call_forms_work",
    "tests/test_gap.py::test_optimized_posterior_beats_the_encoder_on_every_example",
    "tests/test_model.py::test_model_groups_split_latent_dimensions_evenly",
    "tests/test_evaluation.py::test_progress_bar_shows_the_examples_and_leaves_the_numbers_alone",
    "tests/test_evaluation.py::test_evaluate_model_is_the_batchwise_mean_of_the_model_s_own_estimates",
    "tests/test_evaluation.py::test_evaluate_model_reports_the_surgery_terms_of_its_first_examples",
    "tests/test_callbacks.py::test_stop_on_non_finite_stops_a_user_pipeline_with_a_nan_example[3]",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.nodeid in _SLOW_ELSEWHERE or item.nodeid in _SLOW_BY_TIME:
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
