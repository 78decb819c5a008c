"""Files that are whole or absent: atomic writes, and the run directory's lock.

Every file of a run is written to a temporary name in its own directory,
flushed and fsynced, then moved over the target with `os.replace` (`commit`):
a reader, or a process killed at any moment, sees the old file or the new
one, never a half-written one. A failed write leaves the old file as it was
and removes the temporary file.

`RunLock` is an exclusive lock file (created with `O_CREAT | O_EXCL`) that
holds its owner's PID and host, so a second writer can be refused with the
owner's name and a lock left by a killed process can be recognised as stale.
"""

import contextlib
import errno
import json
import logging
import math
import numbers
import os
import re
import secrets
import socket
import time
import zipfile

__all__ = [
    "atomic_open",
    "commit",
    "FRESH_LOCK_SECONDS",
    "fsync_directory",
    "fsync_file",
    "fsync_path",
    "is_leftover",
    "json_safe",
    "LOCK_FILE",
    "METADATA_ENTRY",
    "process_alive",
    "read_model_metadata",
    "READER_PREFIX",
    "ReadLock",
    "remove_stale_temporaries",
    "remove_temporaries",
    "RunLock",
    "save_figure",
    "save_model",
    "write_json",
    "write_text",
    "write_with",
]

logger = logging.getLogger(__name__)

LOCK_FILE = ".tfvae.lock"
READER_PREFIX = ".tfvae.reader-"  # + PID-token: one file per process reading a run
FRESH_LOCK_SECONDS = 10.0  # an unreadable lock this young is one being written


def fsync_file(f):
    """Flushes the open file object `f` and fsyncs it, so its bytes are on disk."""
    f.flush()
    os.fsync(f.fileno())


def fsync_path(path):
    """fsyncs the file (or directory) at `path`, written by someone else (`model.save`, ...).

    Raises:
      OSError: `path` cannot be opened or synced.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_directory(directory, best_effort=True):
    """Makes a rename in `directory` durable.

    Args:
      directory: the directory (`""`: the current one).
      best_effort: ignore an `OSError` (platforms where a directory cannot be
        opened or synced); `False` raises it. Default value: `True`.
    """
    try:
        fsync_path(directory or ".")
    except OSError:
        if not best_effort:
            raise


def commit(temporary, path):
    """Moves the finished, fsynced file `temporary` over `path` (one atomic rename)."""
    os.replace(temporary, path)
    fsync_directory(os.path.dirname(path))


def _temporary_name(path, suffix=""):
    """Creates an empty, new file beside `path` (permissions from the umask, as `open`).

    Its name, `.NAME.PID-XXXXXXXX.tmp`, carries the writer's PID, so the next write
    of `path` can delete what a killed writer left (`remove_stale_temporaries`).
    """
    directory, name = os.path.split(path)
    remove_stale_temporaries(path)
    while True:
        temporary = os.path.join(directory,
                                 f".{name}.{os.getpid()}-{secrets.token_hex(4)}.tmp{suffix}")
        try:
            os.close(os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            continue
        return temporary


_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?:(?P<pid>\d+)-)?[0-9a-f]{8}\.tmp(\.[A-Za-z0-9]+)?$")


def remove_stale_temporaries(path):
    """Deletes the temporary files of `path` that a writer killed on this host left beside it
    (those whose PID is no longer alive); returns their names."""
    directory, name = os.path.split(path)
    removed = []
    try:
        entries = os.listdir(directory or ".")
    except OSError:
        return removed
    for entry in entries:
        found = _TEMPORARY.match(entry)
        if (found and found.group("name") == name and found.group("pid")
                and not process_alive(int(found.group("pid")))):
            _remove_quietly(os.path.join(directory, entry))
            removed.append(entry)
    if removed:
        logger.info("removed %d temporary files of %s left by killed writers", len(removed), path)
    return removed


def is_leftover(name):
    """Whether a file name in a run directory is a lock (the writer's or a reader's) or an
    unfinished temporary file, not part of the run."""
    return name == LOCK_FILE or name.startswith(READER_PREFIX) or bool(_TEMPORARY.match(name))


def remove_temporaries(directory):
    """Deletes temporary files an interrupted write left in `directory`; returns their names.

    Call it only while holding the directory's lock (another writer's
    temporary files are still being written).
    """
    removed = []
    for name in sorted(os.listdir(directory)):
        if _TEMPORARY.match(name):
            _remove_quietly(os.path.join(directory, name))
            removed.append(name)
    if removed:
        logger.info("removed %d unfinished temporary files in %s", len(removed), directory)
    return removed


def _remove_quietly(path):
    with contextlib.suppress(OSError):
        os.remove(path)


@contextlib.contextmanager
def atomic_open(path, mode="w"):
    """Opens a temporary file beside `path`; on a clean exit it replaces `path`.

    Args:
      path: the file to write.
      mode: `"w"` (text) or `"wb"` (bytes). Default value: `"w"`.

    Yields:
      The open temporary file. If the block raises, `path` is left as it was.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"Received an invalid value for `mode`, expected 'w' or 'wb'. "
                         f"Received: mode={mode!r}")
    temporary = _temporary_name(path)
    try:
        with open(temporary, mode) as f:
            yield f
            fsync_file(f)
        commit(temporary, path)
    except OSError as error:
        _remove_quietly(temporary)
        if error.filename in (None, temporary):  # a full disk: name the file being written
            raise OSError(error.errno, error.strerror or str(error), path) from error
        raise
    except BaseException:
        _remove_quietly(temporary)
        raise


def write_with(path, write):
    """Writes `path` atomically with `write(temporary_path)`, for writers that take a path.

    The temporary file sits beside `path` with the same extension (writers
    such as `np.save` or `Figure.savefig` go by it); it is fsynced and moved
    over `path`. A failed write leaves any earlier `path` untouched; an
    `OSError` without a file name (a full disk) is raised again naming `path`.
    """
    temporary = _temporary_name(path, suffix=os.path.splitext(path)[1])
    try:
        write(temporary)
        fsync_path(temporary)
        commit(temporary, path)
    except OSError as error:
        _remove_quietly(temporary)
        if error.filename in (None, temporary):
            raise OSError(error.errno, error.strerror or str(error), path) from error
        raise
    except BaseException:
        _remove_quietly(temporary)
        raise
    return path


def write_text(path, text):
    """Writes `text` to `path` atomically."""
    with atomic_open(path) as f:
        f.write(text)
    return path


def json_safe(value):
    """`value` with every non-finite float replaced by None, and the keys that held one.

    Returns:
      `(cleaned, non_finite)`: a copy of the dict `value`, and the sorted names
      of its top-level keys whose values were (or contained) NaN or infinity.
    """
    def clean(item):
        if isinstance(item, numbers.Integral) and not isinstance(item, bool):
            return int(item), True
        if isinstance(item, numbers.Real) and not isinstance(item, bool):
            number = float(item)
            return (number, True) if math.isfinite(number) else (None, False)
        if isinstance(item, dict):
            pairs = {key: clean(entry) for key, entry in item.items()}
            return ({key: pair[0] for key, pair in pairs.items()},
                    all(pair[1] for pair in pairs.values()))
        if isinstance(item, (list, tuple)):
            pairs = [clean(entry) for entry in item]
            return [pair[0] for pair in pairs], all(pair[1] for pair in pairs)
        return item, True

    cleaned, non_finite = {}, []
    for key, item in value.items():
        cleaned[key], finite = clean(item)
        if not finite:
            non_finite.append(key)
    return cleaned, sorted(non_finite)


def write_json(path, value):
    """Writes the dict `value` to `path` atomically as strict JSON.

    Non-finite numbers (which JSON cannot hold) are written as `null`, and the
    keys that held them are listed under `"non_finite"`.
    """
    cleaned, non_finite = json_safe(value)
    if non_finite:
        cleaned["non_finite"] = non_finite
    text = json.dumps(cleaned, indent=2, sort_keys=True, allow_nan=False)
    return write_text(path, text + "\n")


METADATA_ENTRY = "tfvae.json"


def save_model(model, path, metadata=None):
    """Saves a Keras model to `path` (a `.keras` file) atomically.

    Args:
      model: the model.
      path: the `.keras` file.
      metadata: a JSON-serialisable dict stored inside the archive (as
        `tfvae.json`, which Keras ignores), so it is written atomically with
        the weights; read it back with `read_model_metadata`. Default value: `None`.
    """
    temporary = _temporary_name(path, suffix=".keras")
    try:
        model.save(temporary)
        if metadata is not None:
            with zipfile.ZipFile(temporary, "a") as archive:
                archive.writestr(METADATA_ENTRY, json.dumps(metadata, allow_nan=False))
        fsync_path(temporary)
        commit(temporary, path)
    except BaseException:
        _remove_quietly(temporary)
        raise
    return path


def read_model_metadata(path):
    """The metadata `save_model` stored in the `.keras` file `path`, or None."""
    try:
        with zipfile.ZipFile(path) as archive:
            value = json.loads(archive.read(METADATA_ENTRY))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    return value if isinstance(value, dict) else None


def save_figure(figure, path, **kwargs):
    """Saves a matplotlib figure to `path` atomically (format from the extension)."""
    extension = os.path.splitext(path)[1].lstrip(".").lower() or "png"
    with atomic_open(path, "wb") as f:
        figure.savefig(f, format=extension, **kwargs)
    return path


def _age(path):
    try:
        return time.time() - os.path.getmtime(path)
    except OSError:
        return float("inf")


# The lock files this process holds (a lock naming this process's PID that it does not
# hold was left by an earlier process with the same PID, e.g. PID 1 in a container).
_HELD_LOCKS = set()


def process_alive(pid):
    """Whether a process `pid` runs on this host (this process included)."""
    if pid == os.getpid():
        return True
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    except (OverflowError, ValueError):
        return False  # no such PID can exist
    except OSError as error:
        return error.errno != errno.ESRCH
    return True


def _lock_owner_alive(pid, path):
    """Whether the process `pid` that wrote the lock file `path` still holds it: this
    process only if it holds that lock, another only if it is alive."""
    if pid == os.getpid():
        return os.path.abspath(path) in _HELD_LOCKS
    return process_alive(pid)


def _writer_gone(pid, host, path, alive):
    """Whether the process that wrote the lock file `path` (PID and host inside it) is gone:
    on this host, `alive(pid, path)` is false, or the PID now belongs to a process started
    after the file was written (a reused PID). Another host's writer is never judged gone."""
    return host == socket.gethostname() and (
        not alive(pid, path) or _started_after(pid, time.time() - _age(path)))


def _started_after(pid, moment):
    """Whether process `pid` started after `moment` (a Unix time): then it is not the
    process that wrote a lock at `moment` but a later one that got the same PID.
    False where the start time cannot be read (not Linux)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        started = boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return False
    return started > moment + 2.0  # /proc's boot time is whole seconds


class RunLock:
    """An exclusive lock on a run directory: a file holding the owner's PID and host.

    Args:
      directory: the run directory (must exist).
    """

    def __init__(self, directory):
        self.directory = directory
        self.path = os.path.join(directory, LOCK_FILE)
        self.held = False

    @staticmethod
    def owner(directory):
        """`{"pid", "host"}` of the live process holding `directory`'s lock, else None.

        A lock whose process is gone (on this host), whose PID is impossible or
        this process's own, or whose PID now belongs to a process started after
        the lock was written (a reused PID), or an unreadable lock file, counts as
        no lock. A lock from another host counts as live.
        """
        path = os.path.join(directory, LOCK_FILE)
        try:
            with open(path) as f:
                holder = json.load(f)
            pid, host = int(holder["pid"]), str(holder["host"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            # Created but not yet written by a starting owner, or junk left behind.
            if _age(path) < FRESH_LOCK_SECONDS:
                return {"pid": None, "host": None}
            logger.warning("ignoring the unreadable lock file %s", path)
            return None
        if _writer_gone(pid, host, path, alive=_lock_owner_alive):
            return None
        return {"pid": pid, "host": host}

    @staticmethod
    def describe(owner):
        """'PID n' (with the host when it is another machine)."""
        if owner["pid"] is None:
            return "another process (its lock file is being written)"
        if owner["host"] == socket.gethostname():
            return f"PID {owner['pid']}"
        return f"PID {owner['pid']} on host {owner['host']}"

    def acquire(self):
        """Takes the lock; a stale lock is taken over with a warning.

        Raises:
          ValueError: another live process holds the lock (the message names its PID).
        """
        holder = {"pid": os.getpid(), "host": socket.gethostname()}
        for attempt in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self.owner(self.directory)
                if owner is not None or attempt:
                    who = self.describe(owner) if owner else "another process"
                    raise ValueError(
                        f"`{self.directory}` is still being trained by {who} (lock file "
                        f"{self.path}); wait for it to finish, or choose another --output."
                    ) from None
                logger.warning("taking over the stale lock %s (its process is gone)", self.path)
                _remove_quietly(self.path)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(holder, f)
                fsync_file(f)
            self.held = True
            _HELD_LOCKS.add(os.path.abspath(self.path))
            return self

    def release(self):
        """Removes the lock file if this object holds it."""
        if self.held:
            _remove_quietly(self.path)
            _HELD_LOCKS.discard(os.path.abspath(self.path))
            self.held = False

    def move_to(self, directory):
        """Follows the lock file after its directory was renamed to `directory`."""
        if self.held:
            _HELD_LOCKS.discard(os.path.abspath(self.path))
        self.directory = directory
        self.path = os.path.join(directory, LOCK_FILE)
        if self.held:
            _HELD_LOCKS.add(os.path.abspath(self.path))


class ReadLock:
    """A shared lock on a run directory, held by a process reading it for its whole read.

    Each reader writes its own file (`.tfvae.reader-PID-TOKEN`, holding its PID and
    host), then checks that no writer holds the `RunLock`; a writer, once it holds
    the `RunLock`, checks that no live reader is left (`readers`). As both announce
    themselves before they look for the other, one of two that start together
    always sees the other, so a run is never replaced under a reader (0.2.0 only
    checked the lock when a reader started).

    Use it as a context manager around everything that reads the run::

        with files.ReadLock(run_directory):
            config, model = runs.load_run(run_directory)
            ...

    Args:
      directory: the run directory.

    Raises:
      ValueError: on entering, a live process is training the run (naming its PID).
    """

    def __init__(self, directory):
        self.directory = directory
        self.path = None

    def __enter__(self):
        name = f"{READER_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        path = os.path.join(self.directory, name)
        try:
            with open(path, "x") as f:
                json.dump({"pid": os.getpid(), "host": socket.gethostname()}, f)
        except OSError:
            return self  # a folder we cannot write into: nobody can replace the run either
        self.path = path
        owner = RunLock.owner(self.directory)
        if owner is not None:
            self._remove()
            raise ValueError(f"`{self.directory}` is still being trained by "
                             f"{RunLock.describe(owner)}; wait until training ends.")
        return self

    def __exit__(self, *unused):
        self._remove()

    def _remove(self):
        if self.path is not None:
            _remove_quietly(self.path)
            self.path = None

    @staticmethod
    def readers(directory):
        """`[{"pid", "host"}]` of the live processes reading `directory` (files of dead
        readers on this host are removed)."""
        found = []
        try:
            names = os.listdir(directory)
        except OSError:
            return found
        for name in names:
            if not name.startswith(READER_PREFIX):
                continue
            path = os.path.join(directory, name)
            try:
                with open(path) as f:
                    holder = json.load(f)
                pid, host = int(holder["pid"]), str(holder["host"])
            except (OSError, ValueError, KeyError, TypeError):
                if _age(path) >= FRESH_LOCK_SECONDS:
                    _remove_quietly(path)
                continue
            if pid == os.getpid() and host == socket.gethostname():
                continue  # this process's own read
            if _writer_gone(pid, host, path, alive=lambda pid, path: process_alive(pid)):
                _remove_quietly(path)
                continue
            found.append({"pid": pid, "host": host})
        return found
