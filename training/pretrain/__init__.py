"""Distributed pretraining of the general model with Horovod + TensorFlow (Keras 3).

    horovodrun -np 2 python -m training.pretrain --manifest OUT/manifest.json --checkpoint-dir C --epochs 10

Every rank trains on its shard of the curated training list; gradients are averaged with Horovod, variables
start equal (broadcast from rank 0) and validation metrics are averaged across ranks. Rank 0 alone writes,
into ``C`` (a local path or ``s3://…``):

  C/epochs/NNNN/   one immutable directory per epoch: model.keras (with optimizer state), meta.json,
                   metrics.json, and COMMITTED written last
  C/best.json      the pointer to the most accurate epoch (the transfer-learning input): epoch, val_accuracy,
                   val_loss, path (C/epochs/NNNN), its files' sha256, manifest_sha256, timestamps; one object
  C/logs/          TensorBoard event files
  C/COMPLETE       when all epochs are done, or C/FAILED with the reason when training fails

(The names are ``training.contracts.CheckpointDir``'s, which the Airflow side reads with.) Rerunning the
same command after a kill resumes after the last committed epoch.

Modules: ``cli`` (flags, the FAILED record), ``inputs`` (manifest and datasets), ``loop`` (Horovod setup, the
model, the epochs), ``checkpoints`` (resume and the epoch commit).

Keras 3 note: ``horovod.tensorflow.keras`` targets Keras 2, so this uses ``horovod.tensorflow`` directly and
hands Horovod each Keras variable's backing ``tf.Variable`` (``v.value``).
"""

from training.pretrain.cli import main, parse_args
from training.pretrain.loop import bind_to_cores, train

__all__ = ["bind_to_cores", "main", "parse_args", "train"]
