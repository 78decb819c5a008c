"""Fault injection (issue 12): a run directory survives kill -9, a full disk, a second
writer, a diverging run and an overwrite with bad data; `tfvae.files` writes whole files.

The fast tests exercise `tfvae.files` and the lock directly. The slow ones run the
command: a driver script in a subprocess patches `tfvae.files.commit` (the one rename
every write goes through) to SIGKILL its own process at a chosen write, or runs under a
small `RLIMIT_FSIZE`; the library has no fault hooks of its own.
"""

import csv
import hashlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest

from tfvae import cli
from tfvae import files
from tfvae import report as report_lib
from tfvae import runs

from helpers import TINY_RUN
from helpers import raises
from helpers import splits_npz

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _snapshot(directory):
    """`{relative path: sha256}` of every file below `directory` (the state to compare;
    a run holds a `tensorboard/` folder)."""
    result = {}
    for folder, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                result[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
    return dict(sorted(result.items()))


def _dead_pid():
    """The PID of a process that has exited (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.fixture
def live_pid():
    """The PID of another live process on this host (a sleeping child), for lock owners."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield child.pid
    child.kill()
    child.wait()


def _write_lock(directory, pid, host=None):
    with open(os.path.join(directory, files.LOCK_FILE), "w") as f:
        json.dump({"pid": pid, "host": host or socket.gethostname()}, f)


def _driver(tmp_path, body):
    """Writes a driver script that imports this checkout's tfvae and runs `body`."""
    path = tmp_path / "driver.py"
    path.write_text(textwrap.dedent(body))
    return path


def _run_driver(path, *args, timeout=600):
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.path.join(ROOT, "tests"),
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, str(path), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=ROOT)


def _assert_run_is_whole(directory):
    """Every `.keras` file loads with finite weights; every `.json` file is strict JSON."""
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if name.endswith(".keras") and not name.startswith("."):
            model = keras.saving.load_model(path)
            assert all(np.all(np.isfinite(w)) for w in model.get_weights()), name
        elif name.endswith(".json") and not name.startswith("."):
            with open(path) as f:
                json.load(f, parse_constant=lambda c: pytest.fail(f"{name} holds {c}"))


def _epoch(directory, name):
    return files.read_model_metadata(os.path.join(directory, name))["epoch"]


def _history_rows(directory):
    with open(os.path.join(directory, "history.csv")) as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------
# tfvae.files: whole files or none.


def test_atomic_open_replaces_the_file_only_on_success(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with files.atomic_open(str(path)) as f:
            f.write("half")
            raise RuntimeError("interrupted")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["a.txt"]  # no temporary file left behind
    files.write_text(str(path), "new")
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["a.txt"]


def test_a_failed_commit_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "a.json"
    files.write_json(str(path), {"x": 1})

    def refuse(temporary, target):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files, "commit", refuse)
    with pytest.raises(OSError, match="No space left"):
        files.write_json(str(path), {"x": 2})
    assert json.loads(path.read_text()) == {"x": 1}
    assert os.listdir(tmp_path) == ["a.json"]


def test_new_files_get_the_permissions_open_would_give(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    files.write_text(str(tmp_path / "a.txt"), "x")
    assert os.stat(tmp_path / "a.txt").st_mode & 0o777 == 0o666 & ~umask


def test_write_json_is_strict_json_with_non_finite_values_flagged(tmp_path):
    path = tmp_path / "m.json"
    files.write_json(str(path), {"elbo": math.nan, "kl": np.float32(1.5), "n": np.int64(3),
                                 "curve": [1.0, math.inf], "name": "run"})
    value = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(c))
    assert value == {"elbo": None, "kl": 1.5, "n": 3, "curve": [1.0, None], "name": "run",
                     "non_finite": ["curve", "elbo"]}
    files.write_json(str(path), {"elbo": -1.0})
    assert json.loads(path.read_text()) == {"elbo": -1.0}  # no flag when all are finite


def test_remove_temporaries_removes_only_unfinished_writes(tmp_path):
    names = [".last.keras.0a1b2c3d.tmp.keras", ".history.csv.deadbeef.tmp", "last.keras",
             ".tfvae.lock", "notes.tmp"]
    for name in names:
        (tmp_path / name).write_text("x")
    assert files.remove_temporaries(str(tmp_path)) == names[:2][::-1]
    assert sorted(os.listdir(tmp_path)) == sorted(names[2:])


def _write_with_open(path):
    with open(path, "w") as f:
        f.write("x")


@pytest.mark.parametrize("write", [
    lambda path: files.write_text(path, "x"),
    lambda path: files.write_json(path, {"x": 1}),
    lambda path: files.write_with(path, _write_with_open),
])
def test_a_write_fsyncs_its_file_before_the_rename_and_the_directory_after(
        tmp_path, monkeypatch, write):
    # Linux's /proc names what each fsynced descriptor is open on.
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.path.realpath(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(source, target):
        events.append(("rename", os.path.realpath(source)))
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    write(str(tmp_path / "a.txt"))
    [temporary] = [name for event, name in events if event == "rename"]
    assert events == [("fsync", temporary), ("rename", temporary),
                      ("fsync", os.path.realpath(tmp_path))]
    assert os.listdir(tmp_path) == ["a.txt"]


def test_a_directory_fsync_is_best_effort_unless_asked_to_raise(tmp_path):
    missing = str(tmp_path / "missing")
    assert files.fsync_directory(missing) is None
    with pytest.raises(FileNotFoundError):
        files.fsync_directory(missing, best_effort=False)
    files.fsync_directory(str(tmp_path), best_effort=False)


# ---------------------------------------------------------------------------
# The lock: one writer; a lock whose process is gone is taken over.


def test_the_lock_refuses_a_live_owner_and_takes_over_a_stale_one(tmp_path, caplog):
    directory = str(tmp_path)
    lock = files.RunLock(directory).acquire()
    holder = json.loads((tmp_path / files.LOCK_FILE).read_text())
    assert holder == {"pid": os.getpid(), "host": socket.gethostname()}
    assert files.RunLock.owner(directory) == holder
    with raises(f"PID {os.getpid()}", "is still being trained by"):
        files.RunLock(directory).acquire()
    lock.release()
    # A lock file just created, its owner not yet written in: live, for a few seconds.
    (tmp_path / files.LOCK_FILE).write_text("")
    with raises("another process"):
        files.RunLock(directory).acquire()
    old = time.time() - 2 * files.FRESH_LOCK_SECONDS
    os.utime(tmp_path / files.LOCK_FILE, (old, old))
    assert files.RunLock.owner(directory) is None
    files.RunLock(directory).acquire().release()
    assert not (tmp_path / files.LOCK_FILE).exists() and files.RunLock.owner(directory) is None
    pid = _dead_pid()
    _write_lock(directory, pid)
    assert files.RunLock.owner(directory) is None
    with caplog.at_level("WARNING", logger="tfvae.files"):
        files.RunLock(directory).acquire().release()
    assert "stale lock" in caplog.text
    # A lock from another host cannot be checked: it counts as live.
    _write_lock(directory, pid, host="elsewhere.example")
    with raises(f"PID {pid} on host elsewhere.example"):
        files.RunLock(directory).acquire()


@pytest.mark.parametrize("pid", [0, -1, 99999999999999, "own"])
def test_a_lock_naming_an_impossible_pid_or_this_process_unheld_is_stale(tmp_path, pid):
    # 0.2.0 refused such runs forever, or crashed with OverflowError (issue 20 finding 15).
    directory = str(tmp_path)
    _write_lock(directory, os.getpid() if pid == "own" else pid)
    assert files.RunLock.owner(directory) is None
    files.RunLock(directory).acquire().release()


def test_a_lock_whose_pid_was_reused_by_a_later_process_is_stale(tmp_path):
    # A live process started after the lock was written did not write it.
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        directory = str(tmp_path)
        _write_lock(directory, child.pid)
        assert files.RunLock.owner(directory) is not None  # written now: the child's
        old = time.time() - 3600
        os.utime(tmp_path / files.LOCK_FILE, (old, old))  # written an hour before it started
        assert files.RunLock.owner(directory) is None
    finally:
        child.kill()
        child.wait()


def _fake_run(directory):
    os.makedirs(directory)
    with open(os.path.join(directory, runs.RUN_FILE), "w") as f:
        json.dump({"epochs": 1}, f)
    return directory


@pytest.mark.parametrize("mode", ["--overwrite", "--resume"])
def test_a_second_writer_is_refused_in_one_line_naming_the_pid(tmp_path, capsys, mode,
                                                               live_pid):
    run = _fake_run(str(tmp_path / "run"))
    _write_lock(run, live_pid)
    before = _snapshot(run)
    extra = TINY_RUN if mode == "--overwrite" else ["--quiet"]  # --resume reads run.json
    assert cli.main(["train", "--output", run, mode, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"still being trained by PID {live_pid}" in err
    assert _snapshot(run) == before


def test_reading_a_run_that_is_being_trained_is_refused(tmp_path, live_pid):
    run = _fake_run(str(tmp_path / "run"))
    _write_lock(run, live_pid)
    with raises("still being trained by", f"PID {live_pid}"):
        runs.load_run(run)
    _write_lock(run, _dead_pid())  # stale: the run reads as usual (here: it has no model)
    with raises("no model.keras"):
        runs.load_run(run)


def test_a_stale_lock_alone_does_not_make_a_directory_a_used_one(tmp_path):
    directory = tmp_path / "run"
    directory.mkdir()
    _write_lock(str(directory), _dead_pid())
    runs.check_output(str(directory))  # neither "already holds files" nor a live writer
    # What a kill during a first start's run.json write leaves: the lock and a temporary.
    (directory / f".run.json.{_dead_pid()}-0123abcd.tmp.json").write_text("{")
    with raises("Cannot resume", "holds no run yet", "start it again without --resume"):
        runs.check_output(str(directory), resume=True)
    runs.check_output(str(directory))  # ... and a new start is allowed


# ---------------------------------------------------------------------------
# Runs: validation before the output is touched.


def _bad_npz(path, where):
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.uniform(size=(40, 4, 4)).astype("float32"),
              "x_valid": rng.uniform(size=(12, 4, 4)).astype("float32")}
    if where == "one_example":
        arrays["x_train"] = arrays["x_train"][:1]
    else:
        arrays["x_train" if where == "train" else "x_valid"][3, 1, 2] = np.nan
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize("where, split", [("train", "train"), ("valid", "validation"),
                                          ("one_example", "training")])
def test_a_bad_split_is_refused_before_the_output_is_created(tmp_path, where, split):
    dataset = _bad_npz(tmp_path / "bad.npz", where)
    output = str(tmp_path / "run")
    with raises("`dataset`", f"{split} split", "bad.npz"):
        runs.train(runs.RunConfig(dataset=dataset, epochs=1, hidden_units=(4,)), output)
    assert not os.path.exists(output)


@pytest.mark.slow
@pytest.mark.parametrize("dataset, fragments", [
    ("missing.npz", ["`--dataset`", "no such file"]),
    ("nan_train", ["`--dataset`", "train split"]),
    ("nan_valid", ["`--dataset`", "validation split"]),
])
def test_overwrite_with_bad_data_keeps_the_earlier_run(digits_run, tmp_path, capsys, dataset,
                                                       fragments):
    run = str(tmp_path / "run")
    shutil.copytree(digits_run, run)
    before = _snapshot(run)
    if dataset.startswith("nan_"):
        dataset = _bad_npz(tmp_path / f"{dataset}.npz", dataset[4:])
    else:
        dataset = str(tmp_path / dataset)
    assert cli.main(["train", "--output", run, "--overwrite", "--dataset", dataset,
                     *TINY_RUN]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(f in err for f in fragments), err
    assert _snapshot(run) == before
    assert sorted(os.listdir(tmp_path)) == sorted(
        name for name in ("run", "nan_train.npz", "nan_valid.npz") if (tmp_path / name).exists())


@pytest.mark.slow
def test_a_diverging_overwrite_restores_the_earlier_run(digits_run, tmp_path, capsys):
    run = str(tmp_path / "run")
    shutil.copytree(digits_run, run)
    before = _snapshot(run)
    assert cli.main(["train", "--output", run, "--overwrite", *TINY_RUN,
                     "--learning-rate", "1e6"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "diverged in epoch 1" in err and "--learning-rate" in err
    assert _snapshot(run) == before
    assert os.listdir(tmp_path) == ["run"]  # the moved-aside copy is gone
    # A fresh diverging run leaves nothing behind, so the retry is not refused.
    fresh = str(tmp_path / "fresh")
    with pytest.raises(runs.TrainingDiverged, match="no checkpoint was written"):
        runs.train(runs.RunConfig(epochs=2, latent_dim=2, hidden_units=(16,), batch_size=128,
                                  learning_rate=1e6), fresh, verbose=0)
    assert not os.path.exists(fresh)


@pytest.mark.slow
def test_an_overwrite_that_fails_after_its_first_checkpoint_restores_the_earlier_run(
        digits_run, tmp_path, tmp_path_factory, monkeypatch):
    # The new run trains and checkpoints, then its report fails: the earlier run must
    # come back whole (0.2.0 had deleted it at the first checkpoint).
    run = str(tmp_path / "run")
    shutil.copytree(digits_run, run)
    before = _snapshot(run)

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report_lib, "write_figures", broken)
    dataset = str(tmp_path_factory.mktemp("data") / "d.npz")
    splits_npz(dataset)  # small (40 training examples): the restore is tested, not the data
    config = runs.RunConfig(dataset=dataset, epochs=1, latent_dim=2, hidden_units=(16,),
                            batch_size=128, eval_samples=2, tensorboard=False)
    with pytest.raises(OSError, match="No space left"):
        runs.train(config, run, overwrite=True, verbose=0)
    assert _snapshot(run) == before
    assert os.listdir(tmp_path) == ["run"]


@pytest.mark.slow
def test_a_successful_overwrite_replaces_the_run_and_removes_the_old_copy(digits_run, tmp_path,
                                                                         tmp_path_factory):
    run = str(tmp_path / "run")
    shutil.copytree(digits_run, run)
    dataset = str(tmp_path_factory.mktemp("data") / "d.npz")
    splits_npz(dataset)  # small (40 training examples): the replacement is tested, not the data
    assert cli.main(["train", "--output", run, "--overwrite", "--dataset", dataset, *TINY_RUN,
                     "--epochs", "1"]) == 0
    assert os.listdir(tmp_path) == ["run"]
    assert len(_history_rows(run)) == 1
    assert not os.path.exists(os.path.join(run, files.LOCK_FILE))
    _assert_run_is_whole(run)


# ---------------------------------------------------------------------------
# kill -9 at each write point.

_KILL_DRIVER = """
    import os, signal, sys
    from tfvae import cli, files

    target, nth = sys.argv[1], int(sys.argv[2])
    commit, seen = files.commit, []

    def commit_or_die(temporary, path):
        # The temporary file is complete; die instead of renaming it.
        if os.path.basename(path) == target:
            seen.append(path)
            if len(seen) == nth:
                os.kill(os.getpid(), signal.SIGKILL)
        commit(temporary, path)

    files.commit = commit_or_die
    sys.exit(cli.main(sys.argv[3:]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("target, nth", [
    # One kill per kind of write (the settings, the history, each checkpoint — the
    # second last.keras, once a first one exists —, the metrics, a figure and the
    # report go through files.commit alike); each costs a subprocess run.
    ("run.json", 1), ("history.csv", 1), ("model.keras", 1), ("last.keras", 2),
    ("metrics.json", 1), ("curves.png", 1),
])
def test_kill_9_at_a_write_leaves_a_run_that_resumes(tmp_path, target, nth):
    run = str(tmp_path / "run")
    # A small dataset (40 training examples: one step an epoch): every write point is
    # the same as on the digits, each epoch and the final evaluation cheaper.
    splits_npz(tmp_path / "d.npz", test=False)
    tiny = ["--dataset", str(tmp_path / "d.npz"), *TINY_RUN]
    driver = _driver(tmp_path, _KILL_DRIVER)
    result = _run_driver(driver, target, nth, "train", "--output", run, *tiny)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    names = os.listdir(run)
    assert target not in names or nth > 1  # the killed write never appeared
    _assert_run_is_whole(run)
    if target == "last.keras" and nth == 2:
        assert _epoch(run, "last.keras") == 1
    if target == "run.json":
        # Nothing to resume: the directory holds only the dead process's lock and a
        # temporary file, and a plain retry is not refused.
        assert all(n == files.LOCK_FILE or n.startswith(".run.json.") for n in names)
        with pytest.raises(ValueError, match="holds no run yet .* without --resume"):
            runs.check_output(run, resume=True)  # what `--resume` says, in one line
        assert cli.main(["train", "--output", run, *tiny]) == 0
    else:
        assert cli.main(["train", "--output", run, "--resume", "--quiet"]) == 0
    rows = _history_rows(run)
    assert [int(row["epoch"]) for row in rows] == [0, 1]
    assert _epoch(run, "last.keras") == 2
    assert json.load(open(os.path.join(run, "metrics.json")))["epochs_trained"] == 2
    assert not any(name.startswith(".") for name in os.listdir(run))  # no lock, no temporaries
    _assert_run_is_whole(run)


# ---------------------------------------------------------------------------
# A full disk.

_FULL_DISK_DRIVER = """
    import resource, signal, sys
    from tfvae import runs

    from tfvae import files

    limit, save_model = int(sys.argv[1]), files.save_model
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG

    def fill_the_disk_then_save(*args, **kwargs):
        # The disk fills up during training (after the checkpoints were read).
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        return save_model(*args, **kwargs)

    files.save_model = fill_the_disk_then_save
    try:
        runs.train(None, sys.argv[2], resume=True, verbose=0, epochs=3)
    except OSError as error:
        print(f"OSError {error.errno}: {error}", file=sys.stderr)
        sys.exit(2)
"""


@pytest.mark.slow
def test_a_full_disk_keeps_the_previous_checkpoints(digits_run, tmp_path):
    run = str(tmp_path / "run")
    shutil.copytree(digits_run, run)
    before = _snapshot(run)
    # Larger than run.json and history.csv, smaller than a .keras file.
    limit = 20_000
    assert os.path.getsize(os.path.join(run, "model.keras")) > limit
    driver = _driver(tmp_path, _FULL_DISK_DRIVER)
    result = _run_driver(driver, limit, run)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith("OSError 27")  # EFBIG
    after = _snapshot(run)
    for name in ("model.keras", "last.keras", "metrics.json", "report.md"):
        assert after[name] == before[name], name
    assert not any(name.startswith(".") for name in after)  # no temporaries, no lock
    _assert_run_is_whole(run)
    # With room again, the run resumes from the same checkpoint, to the new budget.
    assert runs.train(None, run, resume=True, verbose=0, epochs=3)["epochs_trained"] == 3
    assert json.load(open(os.path.join(run, "run.json")))["epochs"] == 3
    assert _epoch(run, "last.keras") == 3 and len(_history_rows(run)) == 3


@pytest.mark.slow
def test_resume_falls_back_to_model_keras_when_last_keras_is_truncated(digits_run, tmp_path,
                                                                     caplog):
    run = str(tmp_path / "run")
    shutil.copytree(digits_run, run)
    best_epoch = _epoch(run, "model.keras")
    with open(os.path.join(run, "last.keras"), "r+b") as f:
        f.truncate(3147)  # what a kill -9 mid-write left before issue 12
    with caplog.at_level("WARNING", logger="tfvae.runs"):
        metrics = runs.train(None, run, resume=True, verbose=0, epochs=3)
    warnings = [r.getMessage() for r in caplog.records
                if r.levelname == "WARNING" and r.name.startswith("tfvae")]
    assert len(warnings) == 1
    assert "from model.keras" in warnings[0] and "not a loadable Keras model" in warnings[0]
    # Training went on from model.keras's epoch; the history was cut back to it first.
    assert metrics["epochs_trained"] == 3 and len(_history_rows(run)) == 3
    assert _epoch(run, "last.keras") == 3 and best_epoch <= 2
    _assert_run_is_whole(run)


# ---------------------------------------------------------------------------
# Two processes on one run directory.

_LIVE_TRAIN_DRIVER = """
    import os, sys, time
    from tfvae import cli, files

    commit = files.commit

    def commit_then_stall(temporary, path):
        # A training process that is alive and holds the lock, but uses no CPU: it
        # stalls after its first checkpoint until the test kills it.
        commit(temporary, path)
        if os.path.basename(path) == "model.keras":
            time.sleep(600)

    files.commit = commit_then_stall
    sys.exit(cli.main(["train", "--output", sys.argv[1], *sys.argv[2:]]))
"""


@pytest.mark.slow
def test_a_live_training_process_keeps_out_a_second_writer_and_readers(tmp_path, capsys):
    run = str(tmp_path / "run")
    splits_npz(tmp_path / "d.npz", test=False)  # small: the lock, not the data, is tested
    tiny = ["--dataset", str(tmp_path / "d.npz"), *TINY_RUN]
    driver = _driver(tmp_path, _LIVE_TRAIN_DRIVER)
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"}
    process = subprocess.Popen([sys.executable, str(driver), run, *tiny], env=env, cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not os.path.exists(os.path.join(run, "model.keras")):
            assert process.poll() is None and time.time() < deadline
            time.sleep(0.5)
        for mode in ("--overwrite", "--resume"):
            extra = tiny if mode == "--overwrite" else ["--quiet"]  # --resume reads run.json
            assert cli.main(["train", "--output", run, mode, *extra]) == 2
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1 and f"PID {process.pid}" in err, err
        assert cli.main(["evaluate", run, "--num-samples", "2"]) == 2
        err = capsys.readouterr().err.strip()
        assert f"still being trained by PID {process.pid}" in err
        assert process.poll() is None  # still alive, undisturbed
    finally:
        process.kill()
        process.wait()
    # Killed, its lock is stale: the run resumes (here with a small budget).
    assert runs.train(None, run, resume=True, verbose=0, epochs=2) is not None
    _assert_run_is_whole(run)


def test_the_next_write_of_a_file_removes_what_a_killed_writer_left(tmp_path):
    # 0.2.0 left `.X.tmp` files of killed encode / score / evaluate / sample runs behind
    # for good (issue 20 finding 15); they now carry the writer's PID.
    path = tmp_path / "scores.csv"
    dead, live = _dead_pid(), os.getpid()
    for pid in (dead, live):
        (tmp_path / f".scores.csv.{pid}-0123abcd.tmp").write_text("half")
    (tmp_path / ".other.csv.1-0123abcd.tmp").write_text("another file's")
    files.write_text(str(path), "whole\n")
    assert path.read_text() == "whole\n"
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([".other.csv.1-0123abcd.tmp", f".scores.csv.{live}-0123abcd.tmp",
                           "scores.csv"])
    assert files.is_leftover(f".scores.csv.{dead}-0123abcd.tmp")
    assert files.is_leftover(".scores.csv.0123abcd.tmp")  # 0.2.0's names still count


def test_a_live_reader_keeps_out_an_overwrite_and_a_resume(tmp_path, capsys, live_pid):
    # 0.2.0 checked the lock only when a reader started: `evaluate R &` then
    # `train --output R --overwrite` replaced the model under it (issue 20 finding 11).
    run = _fake_run(str(tmp_path / "run"))
    reader = os.path.join(run, f"{files.READER_PREFIX}{live_pid}-0123abcd")
    _write_lock(run, live_pid)
    os.replace(os.path.join(run, files.LOCK_FILE), reader)  # a reader's file, not a writer's
    before = _snapshot(run)
    for mode, extra in (("--overwrite", TINY_RUN), ("--resume", ["--quiet"])):
        assert cli.main(["train", "--output", run, mode, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"being read by PID {live_pid}" in err
        assert _snapshot(run) == before
    # A reader that is gone keeps nobody out, and its file is cleaned up.
    dead = _dead_pid()
    os.remove(reader)
    with open(os.path.join(run, f"{files.READER_PREFIX}{dead}-0123abcd"), "w") as f:
        json.dump({"pid": dead, "host": socket.gethostname()}, f)
    assert files.ReadLock.readers(run) == []
    assert not [n for n in os.listdir(run) if n.startswith(files.READER_PREFIX)]


@pytest.mark.slow
def test_a_reader_is_refused_while_a_writer_holds_the_run_and_holds_its_lock_while_reading(
        tmp_path, live_pid, monkeypatch, digits_run):
    run = _fake_run(str(tmp_path / "run"))
    _write_lock(run, live_pid)
    with raises("still being trained by", f"PID {live_pid}"):
        with files.ReadLock(run):
            pass
    assert not [n for n in os.listdir(run) if n.startswith(files.READER_PREFIX)]
    # `tfvae evaluate` holds its reader file for the whole evaluation.
    from tfvae import evaluation

    seen = []

    def evaluate(*args, **kwargs):
        seen.extend(n for n in os.listdir(digits_run) if n.startswith(files.READER_PREFIX))
        return {"elbo": -1.0}

    monkeypatch.setattr(evaluation, "evaluate_model", evaluate)
    assert cli.main(["evaluate", digits_run, "--output", str(tmp_path / "e.json")]) == 0
    assert len(seen) == 1 and seen[0].startswith(f"{files.READER_PREFIX}{os.getpid()}-")
    assert not [n for n in os.listdir(digits_run) if n.startswith(files.READER_PREFIX)]
