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


@pytest.fixture
def loopback_server(monkeypatch):
    """Start HTTP servers on 127.0.0.1 only: ``start(handler_class, state)`` serves until the test
    ends and sets ``state.url(path)``. Downloads are tested against these, never the internet."""
    import threading
    from http.server import ThreadingHTTPServer

    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    servers = []

    def start(handler_class, state):
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler_class)
        httpd.daemon_threads = True
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        state.url = lambda path: f"http://127.0.0.1:{httpd.server_address[1]}{path}"
        servers.append(httpd)
        return state

    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()
