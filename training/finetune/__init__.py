"""Fine-tune the pretrained general model on the domain classes, as a SageMaker training job.

    python -m training.finetune                       # inside the training container (root /opt/ml)
    python -m training.finetune --sm-root DIR         # a local SageMaker-layout directory (or SM_ROOT=DIR)
    python -m training.finetune --sm-root DIR --init scratch --epochs-head 5   # hyperparameter overrides

Inputs follow the training-container contract (see ``training.sagemaker``): hyperparameters from
``<root>/input/config/hyperparameters.json`` and three channels, ``SM_CHANNEL_<NAME>`` or
``<root>/input/data/<name>``:

  pretrained   the pretrained model: model.keras + meta.json (an epoch directory, or a checkpoint directory
               whose best.json points to one), or a tar.gz of it
               (optional with ``init=scratch``)
  train        the domain training images, one folder per class (ImageFolder); the classes are its folders
  validation   the domain validation images, same layout: early stopping and the best epoch are chosen on it
  test         optional, same layout: images that no choice is made on; reported as test:* metrics

Transfer recipes, searched on validation (``training.finetune.recipes``): the pretrained network up to its
``features`` layer with a new softmax head for the domain classes. BatchNorm statistics are first
re-estimated on the domain training images (the pretrained moving averages can lag the weights, and the
domain's images differ). Phase 1, shared by every recipe, trains the head on frozen features for
``epochs_head`` epochs; phase 2 (``epochs_finetune`` epochs) differs:

  linear_probe   the head alone goes on training
  top_blocks     the top ``unfreeze_blocks`` blocks (``meta.json`` ``blocks``) train at
                 ``learning_rate_finetune``; BatchNorm stays frozen unless ``finetune_batchnorm``
  full           every layer trains, the backbone at ``learning_rate_head * backbone_lr_ratio`` and the head
                 at ``learning_rate_head`` (discriminative learning rates), BatchNorm adapting to the domain

Each phase stops early when the monitored validation metric stops improving, and ends on its best epoch. The
job keeps the recipe with the best validation accuracy (ties: lower validation loss); ``recipes`` bounds the
search (one name: no search). ``init=scratch`` trains the same architecture from random weights for the same
number of epochs; ``compare_scratch=true`` trains that baseline as well and judges the two on the same
validation images (``training.contracts.judge_baseline``): when the baseline wins by more than
``baseline_margin``, ``baseline_policy`` says which model the job writes (``best``: the baseline;
``prefer_transfer`` and ``fail``: the transfer model, the deploy DAG's gate refusing it under ``fail``).

Outputs
  SM_MODEL_DIR/<model_version>/saved_model.pb, variables/   the TensorFlow Serving model:
        serving_default(image_bytes: string[None]) -> probabilities: float32[None, K]   (JPEG/PNG/GIF/BMP bytes)
        predict_images(image: uint8[None, H, W, 3]) -> probabilities                (decoded images; edge export)
  SM_MODEL_DIR/code/inference.py, code/labels.json    the TFS container's handlers and the class names
  SM_MODEL_DIR/model.keras, meta.json                 the fine-tuned Keras model and its metadata
  SM_OUTPUT_DATA_DIR/metrics.json                     final metrics, per-epoch history of every run and of every
                                                      recipe candidate (``recipe_search``), the kept ``recipe``,
                                                      the ``baseline`` verdict, per-class accuracy, counts,
                                                      hyperparameters
  <root>/output/failure                               on failure: the reason (also logged); exit status 1

Hyperparameters (all optional; string values as SageMaker passes them):
  init                      pretrained | scratch                                   (pretrained)
  recipes                   the transfer recipes to search, comma-separated        (linear_probe,top_blocks,full)
  compare_scratch           also train the scratch baseline and judge the two      (false)
  baseline_policy           baseline wins by > margin: prefer_transfer | best | fail   (best)
  baseline_margin           validation accuracy the baseline may win by before the policy applies   (0.01)
  epochs_head               phase 1 epochs: head only, base frozen                 (10)
  epochs_finetune           phase 2 epochs of each recipe                          (40)
  unfreeze_blocks           top_blocks: blocks unfrozen, counted from the top      (1)
  learning_rate_head        head learning rate (AdamW; phase 1, linear_probe, full)   (0.003)
  learning_rate_finetune    top_blocks: phase 2 learning rate                      (0.0001)
  backbone_lr_ratio         full: backbone learning rate / head learning rate      (0.3)
  lr_schedule               each phase's learning rate: cosine (decayed to 1% over the phase) | constant   (cosine)
  learning_rate_scratch     learning rate of the scratch model                      (0.001)
  scratch_epochs            scratch epochs; 0 = epochs_head + epochs_finetune (same budget)   (0)
  batch_size                images per step                                         (32)
  dropout                   dropout before the new head                             (0.2)
  weight_decay              AdamW weight decay                                      (0.0001)
  label_smoothing           cross-entropy label smoothing                           (0.0)
  augment                   random flip/shift/brightness/contrast on training images   (true)
  early_stopping_patience   epochs without improvement before a phase stops; 0 = never   (12)
  early_stopping_monitor    val_accuracy (ties broken by val_loss) | val_loss      (val_accuracy)
  bn_recalibration_batches  batches of domain images to re-estimate BatchNorm statistics; 0 = off   (50)
  finetune_batchnorm        top_blocks: let phase 2 update the unfrozen blocks' BatchNorm layers   (false)
  bn_momentum               momentum of BatchNorm layers that train (scratch, full, finetune_batchnorm)   (0.9)
  images_per_class          use at most this many training images per class; 0 = all   (0)
  image_size                expected input size (e.g. 64 or 64,64); must match the pretrained model   (from meta.json)
  arch                      scratch architecture when there is no pretrained channel   (small_resnet)
  width                     small_resnet width when there is no pretrained channel     (32)
  model_version             TensorFlow Serving version directory name (digits)     (1)
  seed                      random seed (weights, shuffling, augmentation, subsampling)   (0)
  threads                   TensorFlow intra/inter-op threads; 0 = TensorFlow decides   (0)

Log lines (one per epoch, then a final line) carry ``key=value`` pairs; ``METRIC_DEFINITIONS`` holds the
SageMaker ``MetricDefinitions`` that read them, so the deploy DAG and the local SageMaker use the same list::

  [finetune] transfer head epoch 3/50: train_loss=0.412345 train_accuracy=0.881250 val_loss=0.398765 \
             val_accuracy=0.887500
  [finetune] scratch baseline epoch 3/50: scratch_train_loss=1.3 scratch_train_accuracy=0.4 \
             scratch_val_loss=1.2 scratch_val_accuracy=0.45
  [finetune] final: train_loss=0.2 train_accuracy=0.95 val_loss=0.301234 val_accuracy=0.912500 \
             scratch_val_loss=1.01 scratch_val_accuracy=0.55 transfer_gain=0.3625
  (each is one line in the log; wrapped here)

  train:loss                  " train_loss=([0-9.]+)"
  train:accuracy              " train_accuracy=([0-9.]+)"
  validation:loss             " val_loss=([0-9.]+)"
  validation:accuracy         " val_accuracy=([0-9.]+)"
  scratch:validation:loss     " scratch_val_loss=([0-9.]+)"
  scratch:validation:accuracy " scratch_val_accuracy=([0-9.]+)"
  transfer:gain               " transfer_gain=(-?[0-9.]+)"
  transfer:validation:accuracy " transfer_val_accuracy=([0-9.]+)"  (the transfer model's, whichever was written)
  selected:scratch            " selected_scratch=([01])"         (1: the job wrote its scratch baseline)
  test:loss                   " test_loss=([0-9.]+)"              (with a test channel; final line only)
  test:accuracy               " test_accuracy=([0-9.]+)"
  scratch:test:loss           " scratch_test_loss=([0-9.]+)"
  scratch:test:accuracy       " scratch_test_accuracy=([0-9.]+)"
  transfer:test_gain          " transfer_test_gain=(-?[0-9.]+)"

The final line comes last, so a metric's final value (``FinalMetricDataList``) is the kept model's: the best
epoch's weights evaluated again. ``validation:*`` and ``test:*`` always describe the model in SM_MODEL_DIR
(the kept transfer recipe, the baseline when the policy chose it, or scratch with ``init=scratch``);
``scratch:*`` the baseline of ``compare_scratch``; ``transfer:*`` the transfer model.
"""

from training.contracts import CHANNELS, METRIC_DEFINITIONS, PRIMARY_METRIC
from training.finetune.artifact import check_servable, export_servable, write_artifact
from training.finetune.fit import evaluate, recalibrate_batchnorm, train_scratch
from training.finetune.hyperparameters import (
    IMAGES_SIGNATURE,
    SERVING_SIGNATURE,
    FinetuneError,
    Hyperparameters,
    parse_hyperparameters,
)
from training.finetune.inputs import load_domain, load_pretrained, locate_pretrained, per_class_subset
from training.finetune.job import final_metrics, main, parse_args, run
from training.finetune.recipes import RECIPES, search_recipes

__all__ = [
    "CHANNELS",
    "IMAGES_SIGNATURE",
    "METRIC_DEFINITIONS",
    "PRIMARY_METRIC",
    "RECIPES",
    "SERVING_SIGNATURE",
    "FinetuneError",
    "Hyperparameters",
    "check_servable",
    "evaluate",
    "export_servable",
    "final_metrics",
    "load_domain",
    "load_pretrained",
    "locate_pretrained",
    "main",
    "parse_args",
    "parse_hyperparameters",
    "per_class_subset",
    "recalibrate_batchnorm",
    "run",
    "train_scratch",
    "search_recipes",
    "write_artifact",
]
