"""Training on several machines: two worker processes on 127.0.0.1 under MultiWorkerMirroredStrategy
(configured by TF_CONFIG) train alike, and only the chief writes the run folder."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_pipeline import write_toy_split

from wbc import multiworker, runs

TASK = Path(__file__).with_name("multiworker_task.py")


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_workers_end_with_identical_weights_and_only_the_chief_writes(tmp_path):
    split = write_toy_split(tmp_path / "data", per_class=12)
    shared = tmp_path / "shared"  # what would be shared storage on a cluster
    shared.mkdir()
    run_dir = shared / "run"
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    workers = []
    for index in range(2):
        scratch = tmp_path / f"tmp{index}"
        scratch.mkdir()
        env = os.environ | {
            "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
            "TMPDIR": str(scratch),
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }
        command = [sys.executable, str(TASK), str(split), str(run_dir), str(tmp_path / f"weights{index}.npz")]
        workers.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    try:
        outputs = [worker.communicate(timeout=300)[0].decode(errors="replace") for worker in workers]
    finally:
        for worker in workers:
            worker.kill()
    for worker in workers:
        assert worker.returncode == 0, "\n\n".join(f"worker {i}:\n{out[-2500:]}" for i, out in enumerate(outputs))

    first, second = np.load(tmp_path / "weights0.npz"), np.load(tmp_path / "weights1.npz")
    assert len(first.files) == len(second.files) > 0
    for key in first.files:
        np.testing.assert_array_equal(first[key], second[key], err_msg=key)  # bit for bit: one model, two workers

    assert runs.is_complete(run_dir)
    assert [p.name for p in shared.iterdir()] == ["run"]  # the chief's run folder, nothing else
    assert list((tmp_path / "tmp1").iterdir()) == []  # worker 1 trained in a scratch folder, since removed
    model, config = runs.load_run(run_dir)
    assert config["replicas"] == 2 and config["epochs_run"] == 2
    for key, saved in zip(first.files, model.get_weights()):  # the chief saved what both workers hold
        np.testing.assert_array_equal(first[key], saved, err_msg=key)


@pytest.mark.parametrize(
    "tf_config, chief",
    [
        (None, True),
        ({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 0}}, True),
        ({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}, False),
        ({"cluster": {"chief": ["c:1"], "worker": ["a:1"]}, "task": {"type": "worker", "index": 0}}, False),
        ({"cluster": {"chief": ["c:1"], "worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}, True),
    ],
)
def test_the_chief_is_named_by_tf_config(monkeypatch, tf_config, chief):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", json.dumps(tf_config))
    assert multiworker.is_chief() is chief


@pytest.mark.parametrize("index, locked", [(0, True), (1, False)])
def test_the_command_line_locks_the_shared_run_folder_on_the_chief_only(tmp_path, monkeypatch, index, locked):
    from wbc import cli, train
    from wbc.locking import lock_path

    split = write_toy_split(tmp_path / "data", per_class=4)
    run_dir = tmp_path / "shared" / "run"
    seen = []
    monkeypatch.setattr(train, "train_model", lambda *args, **kwargs: seen.append(lock_path(run_dir).exists()))
    cluster = {"worker": ["a:1", "b:1"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
    argv = ["train", "--split-dir", str(split), "--model", "cnn1", "--out", str(run_dir), "--quiet"]
    assert cli.main(argv) == 0
    assert seen == [locked]  # worker 1 would otherwise hold, or be refused, the chief's lock


def test_the_precisions_train_accepts_are_the_policies_notebook_10_knows():
    from wbc import lessons, train

    assert set(train.PRECISIONS) == {"auto", *lessons.POLICIES}
