"""Training on several machines: ``tf.distribute.MultiWorkerMirroredStrategy`` set up by ``TF_CONFIG``.

Each machine runs the same ``python -m wbc train`` command with its own ``TF_CONFIG`` (the cluster's
addresses, and which task this machine is); ``configure_device`` (notebook 10) then returns the
strategy. Every worker trains on its share of each batch and all end with the same weights; only
the chief writes the run folder (:func:`is_chief`), the others write into a temporary folder that
is removed afterwards. See README, "Training on several machines".
"""

from __future__ import annotations

import json
import os


def _tf_config() -> dict:
    raw = os.environ.get("TF_CONFIG")
    return json.loads(raw) if raw else {}


def task() -> tuple[str, int] | None:
    """This process's (task type, index) from ``TF_CONFIG``; None when it is unset (one machine)."""
    spec = _tf_config().get("task")
    return None if spec is None else (str(spec.get("type", "worker")), int(spec.get("index", 0)))


def is_chief() -> bool:
    """True for the task that writes the run: the ``chief`` task, or worker 0 when the cluster has no chief."""
    this = task()
    return (
        this is None or this[0] == "chief" or (this == ("worker", 0) and "chief" not in _tf_config().get("cluster", {}))
    )


def shard_by_batch(dataset, batch_size: int):
    """``dataset`` ready for several workers: whole batches only (the last, incomplete one is left out, at
    most ``batch_size - 1`` images an epoch: Keras 3 stalls on a batch too small to split across the
    workers), and each worker takes its share of every batch (the pipeline reads files from a list, so
    TensorFlow's default, sharding by file, does not apply)."""
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.rebatch(batch_size, drop_remainder=True).with_options(options)


def patch_keras_fit() -> None:
    """Make Keras 3's ``fit`` work under MultiWorkerMirroredStrategy (keras-team/keras#20585, open).

    Keras 3.15 fails twice there: before the first step it reduces a whole (x, y) batch across workers
    only to read its shapes, and it averages per-replica metrics with ``axis=0``, which scalar metrics
    do not have. The two replacements below read the shapes from this worker's first replica and average
    metrics across replicas (``axis=None``), which is what Keras does for one machine with several GPUs.
    The two-worker test (``tests/test_multiworker.py``) shows whether a new Keras still needs them.
    """
    import tensorflow as tf
    from keras import tree
    from keras.src.backend.tensorflow import trainer

    if getattr(trainer, "_wbc_multi_worker_patch", False):
        return
    build, reduce = trainer.TensorFlowTrainer._maybe_symbolic_build, trainer.reduce_per_replica

    def first_replica(value):
        if isinstance(value, tf.distribute.DistributedValues):
            return value.values[0]
        return value

    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, batches in iterator:
                data_batch = tree.map_structure(first_replica, next(batches))
                break
        return build(self, data_batch=data_batch)

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and trainer._collective_all_reduce_multi_worker(strategy):
            return tree.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return reduce(values, strategy, reduction)

    trainer.TensorFlowTrainer._maybe_symbolic_build = maybe_symbolic_build
    trainer.reduce_per_replica = reduce_per_replica
    trainer._wbc_multi_worker_patch = True
