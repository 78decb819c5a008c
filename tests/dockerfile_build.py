"""What the Dockerfile's install step sees, reproduced without Docker (not a test module).

`install_sources(root)` reads the Dockerfile: the `COPY` lines of its first stage before
the `RUN pip install` line, with the build context filtered by `.dockerignore`, and
`copy_install_sources(root, dest)` lays exactly those files out in `dest`, as they sit
in the image's WORKDIR when `pip install .` runs. `install_wheel(...)` then builds a
wheel from them and installs it into a fresh venv that sees the running interpreter's
installed packages (TensorFlow and the rest) but not its `tfvae`, so the venv's
`bin/tfvae` is the console script as the image would have it.
"""

import fnmatch
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import venv


def _instructions(text):
    """The Dockerfile's instructions as `(KEYWORD, arguments)`, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", text)
    result = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        result.append((keyword.upper(), rest.strip()))
    return result


def install_copies(root):
    """`[(sources, destination)]` of the COPY lines before the first stage's `pip install`."""
    copies = []
    for keyword, rest in _instructions((pathlib.Path(root) / "Dockerfile").read_text()):
        if keyword == "RUN" and re.search(r"\bpip install\b", rest):
            return copies
        if keyword == "COPY":
            words = shlex.split(rest)
            assert not any(w.startswith("--") for w in words), f"unexpected COPY flags: {rest}"
            copies.append((words[:-1], words[-1]))
    raise AssertionError("the Dockerfile has no `RUN pip install` line")


def dockerignore_patterns(root):
    path = pathlib.Path(root) / ".dockerignore"
    lines = path.read_text().splitlines() if path.exists() else []
    patterns = [line.strip().strip("/") for line in lines
                if line.strip() and not line.strip().startswith("#")]
    assert not any(p.startswith("!") for p in patterns), "exceptions (!) are not handled here"
    return patterns


def ignored(relative, patterns):
    """Whether `.dockerignore` leaves the context path `relative` (or a folder above it) out."""
    parts = pathlib.PurePosixPath(relative).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        for prefix in prefixes:
            if fnmatch.fnmatchcase(prefix, pattern):
                return True
            if pattern.startswith("**/") and fnmatch.fnmatchcase(prefix.split("/")[-1],
                                                                  pattern[3:]):
                return True
    return False


def context_files(root, source):
    """The context's files under `source` (a file or folder) that `.dockerignore` keeps."""
    root = pathlib.Path(root)
    patterns = dockerignore_patterns(root)
    top = root / source
    paths = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
    return [p for p in paths if not ignored(p.relative_to(root).as_posix(), patterns)]


def copy_install_sources(root, dest):
    """Copies what the install step's COPY lines copy into `dest` (the image's WORKDIR)."""
    root, dest = pathlib.Path(root), pathlib.Path(dest)
    copied = []
    for sources, target in install_copies(root):
        into_folder = target.endswith("/") or target in (".", "./") or len(sources) > 1
        for source in sources:
            assert (root / source).exists(), f"the Dockerfile copies missing {source}"
            for path in context_files(root, source):
                if (root / source).is_dir():  # a folder's contents go into the target
                    out = dest / target / path.relative_to(root / source)
                elif into_folder:
                    out = dest / target / path.name
                else:
                    out = dest / target
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, out)
                copied.append(out.relative_to(dest).as_posix())
    return copied


def _setuptools_is_new_enough():
    try:
        from importlib.metadata import version

        return int(version("setuptools").split(".")[0]) >= 77
    except Exception:  # noqa: BLE001 - not installed, or an odd version string
        return False


def build_wheel(source, out):
    """`pip wheel` of the folder `source` into `out`; returns the wheel's path.

    Offline (`--no-build-isolation`) when this interpreter has the setuptools that
    pyproject.toml asks for; otherwise pip's build isolation fetches it from the
    package index, as `pip install .` does in the Docker build."""
    isolation = ["--no-build-isolation"] if _setuptools_is_new_enough() else []
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", *isolation,
         "--wheel-dir", str(out), str(source)],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    wheels = sorted(pathlib.Path(out).glob("tfvae-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def fresh_venv(path):
    """A venv at `path` without pip whose site-packages also sees this interpreter's
    packages (a `.pth` line, which adds the folder but runs none of its `.pth` hooks, so
    an editable `tfvae` installed there stays invisible). Returns its python."""
    venv.EnvBuilder(with_pip=False, symlinks=True).create(path)
    python = pathlib.Path(path) / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True, env=clean_env()).stdout.strip()
    return python, pathlib.Path(site)


def clean_env():
    """This environment without PYTHONPATH (which would put a checkout's tfvae first)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("CUDA_VISIBLE_DEVICES", "")
    return env


def install_wheel(wheel, venv_dir):
    """Installs `wheel` (no dependencies) into a fresh venv at `venv_dir`, then lets the venv
    see this interpreter's packages. Returns the venv's `bin/` folder."""
    python, site = fresh_venv(venv_dir)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
         "--no-index", str(wheel)], capture_output=True, text=True, timeout=600, env=clean_env())
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    # After the install, so pip never sees (or touches) the packages of this interpreter.
    (site / "_tfvae_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return pathlib.Path(venv_dir) / "bin"
