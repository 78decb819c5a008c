"""The `tfvae` command's entry point: TensorFlow loads quietly, then `tfvae.cli.main` runs.

This module sits outside the `tfvae` package on purpose: `import tfvae` loads
TensorFlow (it registers the library's Keras classes), and TensorFlow's native
libraries print log lines while they load (oneDNN, CUDA) whatever
`TF_CPP_MIN_LOG_LEVEL` says. So the console script imports TensorFlow here
first, with the process's stderr sent to a temporary file (replayed if the
import fails), unless `--verbose` is given.
"""

import contextlib
import os
import sys
import tempfile


def main(argv=None):
    """The `tfvae` console script: returns the command's exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    options = argv[: argv.index("--")] if "--" in argv else argv
    _load_tensorflow(verbose="--verbose" in options)
    from tfvae import cli

    return cli.main(argv)


def _load_tensorflow(verbose):
    """Imports TensorFlow and finds its devices, native log lines hidden unless `verbose`."""
    if "tensorflow" in sys.modules:
        return
    if verbose:
        import tensorflow  # noqa: F401
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with _native_stderr_captured() as captured:
        try:
            import tensorflow as tf

            # Looking for devices here, not at the first op, keeps a machine without
            # a GPU from printing CUDA's "failed call to cuInit" error line.
            tf.config.list_physical_devices()
        except BaseException:
            captured.replay = True
            raise


class _Captured:
    replay = False


@contextlib.contextmanager
def _native_stderr_captured():
    """Sends file descriptor 2 to a temporary file; replays it if `.replay` is set."""
    captured = _Captured()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if captured.replay:
                sink.seek(0)
                sys.stderr.write(sink.read().decode(errors="replace"))


if __name__ == "__main__":
    sys.exit(main())
