"""Shared fixtures: the library's messages shown, the real sample (skipped when unset) and a small
generated demo dataset."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(autouse=True)
def library_messages():
    """Show the library's log messages on stdout / stderr, as the CLI and the notebooks do."""
    from wbc.config import show_logs

    show_logs()


@pytest.fixture(scope="session")
def real_sample() -> Path:
    """Path of the real sample (``$WBC_REAL_SAMPLE``); skips the test when it is not available."""
    env = os.environ.get("WBC_REAL_SAMPLE")
    if not env or not Path(env).is_dir():
        pytest.skip("WBC_REAL_SAMPLE is not set (or not a folder): real-sample tests skipped")
    return Path(env).resolve()


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """A small demo dataset in the real layouts, generated once per test session."""
    from wbc.demo import generate_demo

    root = tmp_path_factory.mktemp("demo-data")
    generate_demo(root, per_class=6, seed=0)
    return root
