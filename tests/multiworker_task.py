"""One worker of the two-worker test (tests/test_multiworker.py): ``train_model`` under the TF_CONFIG
set by the test, with the final weights saved to WEIGHTS_NPZ for comparison.

    python tests/multiworker_task.py SPLIT_DIR RUN_DIR WEIGHTS_NPZ
"""

import sys
from pathlib import Path

import numpy as np

from wbc import runs
from wbc.train import TrainConfig, train_model

split_dir, run_dir, weights_npz = (Path(arg) for arg in sys.argv[1:4])
finish_run = runs.finish_run


def finish_and_keep_weights(out_dir, model, *args, **kwargs):
    np.savez(weights_npz, *model.get_weights())  # every worker, the chief and the others
    return finish_run(out_dir, model, *args, **kwargs)


runs.finish_run = finish_and_keep_weights
train_model(split_dir, run_dir, TrainConfig(model="cnn1", image_size=32, epochs=2, batch_size=8, seed=3), verbose=0)
