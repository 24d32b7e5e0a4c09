"""Start TensorFlow quietly.

TensorFlow 2.21 writes C++ log lines at import and at first device discovery (oneDNN notice,
"Could not find cuda drivers", "failed call to cuInit") that ``TF_CPP_MIN_LOG_LEVEL`` no longer
hides (they are logged before absl logging is initialised). :func:`import_tensorflow` imports
TensorFlow and lists devices once with the process's stderr (file descriptor 2) sent to
``/dev/null``, so what students see is what matters. Python errors are not hidden: they are
raised after stderr is restored. Set ``WBC_TF_VERBOSE=1`` to see everything.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from types import ModuleType


@contextlib.contextmanager
def silenced_stderr_fd() -> Iterator[None]:
    """Send file descriptor 2 (where C++ libraries log) to /dev/null for the block."""
    try:
        sys.stderr.flush()
    except (AttributeError, ValueError):
        pass
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def import_tensorflow() -> ModuleType:
    """Import TensorFlow (and Keras) and discover devices without the start-up log noise."""
    if "tensorflow" in sys.modules or os.environ.get("WBC_TF_VERBOSE") == "1":
        import tensorflow as tf

        return tf
    with silenced_stderr_fd():
        import keras  # noqa: F401  (imports TensorFlow, its backend)
        import tensorflow as tf

        tf.config.list_physical_devices()
    return tf


def lessons() -> ModuleType:
    """The generated module of notebook definitions (``wbc.lessons``), TensorFlow started quietly."""
    import_tensorflow()
    from wbc import lessons as module

    return module
