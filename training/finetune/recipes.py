"""The recipe search: a bounded set of standard transfer recipes, each trained on an equal budget, best kept.

Every recipe starts from the same pretrained weights (BatchNorm statistics re-estimated on the domain
training images) with a new head, and shares phase 1: the head alone on frozen features for ``epochs_head``
epochs. Phase 2 (``epochs_finetune`` epochs) is where they differ:

  linear_probe   the head goes on training; the backbone never changes
  top_blocks     the top ``unfreeze_blocks`` blocks train at ``learning_rate_finetune``; BatchNorm stays frozen
                 unless ``finetune_batchnorm``
  full           every layer trains; the backbone at ``learning_rate_head * backbone_lr_ratio`` and the head at
                 ``learning_rate_head`` (discriminative learning rates); BatchNorm adapts to the domain

The kept recipe is the one with the best validation accuracy (ties: lower validation loss), at its best
epoch. No choice is made on the test channel.
"""

from __future__ import annotations

import copy
import time

from training.finetune.fit import EpochTracker, fit_phase, recalibrate_batchnorm, transfer_model
from training.finetune.hyperparameters import RECIPES, Hyperparameters, log
from training.finetune.inputs import DomainData, Pretrained

__all__ = ["RECIPES", "discriminative_adamw", "search_recipes"]


def discriminative_adamw(learning_rate, weight_decay: float, slow_paths: set[str], ratio: float):
    """AdamW whose steps on the variables in ``slow_paths`` are ``ratio`` times smaller.

    Adam normalises the gradient, so scaling gradients would not slow a layer down: the step itself is scaled,
    per variable, inside the optimizer's update.
    """
    import keras

    class DiscriminativeAdamW(keras.optimizers.AdamW):
        def build(self, var_list):
            super().build(var_list)
            # The backend hands update_step its own variable objects: match them by the optimizer's own key.
            self._slow_keys = {self._var_key(v) for v in var_list if v.path in slow_paths}

        def update_step(self, gradient, variable, learning_rate):
            if self._var_key(variable) in self._slow_keys:
                learning_rate = learning_rate * ratio
            return super().update_step(gradient, variable, learning_rate)

    return DiscriminativeAdamW(learning_rate, weight_decay=weight_decay)


def _copy_model(model):
    import keras

    twin = keras.models.clone_model(model)
    twin.set_weights(model.get_weights())
    for a, b in zip(model.layers, twin.layers):
        b.trainable = a.trainable
    return twin


def _fork_tracker(tracker: EpochTracker, run: str) -> EpochTracker:
    twin = copy.copy(tracker)
    twin.run = run
    twin.history = [dict(m) for m in tracker.history]
    return twin


def _phase2(recipe: str, model, head: set[str], blocks: list[str], hp: Hyperparameters):
    """Set the trainable layers of ``recipe``'s phase 2; returns (learning rate, slow variables or None, layers
    unfrozen): the slow variables are ``(paths, ratio)``, the backbone's, for discriminative learning rates."""
    import keras

    if recipe == "linear_probe":
        return hp.learning_rate_head, None, 0
    if recipe == "top_blocks":
        prefixes = tuple(blocks[-min(hp.unfreeze_blocks, len(blocks)) :]) if hp.unfreeze_blocks and blocks else ()
        unfrozen = 0
        for layer in model.layers:
            if prefixes and layer.name.startswith(prefixes):
                bn = isinstance(layer, keras.layers.BatchNormalization)
                layer.trainable = hp.finetune_batchnorm or not bn
                if bn and hp.finetune_batchnorm:
                    layer.momentum = hp.bn_momentum
                unfrozen += 1
        if not unfrozen:
            log("transfer[top_blocks]: no block to unfreeze (meta.json lists none, or unfreeze_blocks=0)")
        return hp.learning_rate_finetune, None, unfrozen
    slow = set()
    for layer in model.layers:
        layer.trainable = True
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = hp.bn_momentum
        if layer.name not in head:
            slow.update(v.path for v in layer.trainable_weights)
    return hp.learning_rate_head, (slow, hp.backbone_lr_ratio), len(model.layers) - len(head)


def search_recipes(pre: Pretrained, data: DomainData, hp: Hyperparameters, ds) -> tuple[dict, dict[str, dict]]:
    """Train every recipe of ``hp.recipes``; returns (the kept recipe's run, every candidate's run by recipe)."""
    image_size = tuple(pre.meta["image_size"])
    t0 = time.perf_counter()
    model = transfer_model(pre, len(data.class_names), hp)
    base_layers = {id(l) for l in pre.model.layers}
    head = {l.name for l in model.layers if id(l) not in base_layers}
    bn_batches = recalibrate_batchnorm(model, ds.plain, hp.bn_recalibration_batches)
    if bn_batches:
        log(f"transfer: BatchNorm statistics re-estimated on {bn_batches} batch(es) of domain training images")
    for layer in model.layers:
        layer.trainable = layer.name in head
    blocks = list(pre.meta.get("blocks") or [])
    total = hp.epochs_head + hp.epochs_finetune
    shared = EpochTracker("transfer", "primary", hp.early_stopping_monitor, hp.early_stopping_patience, total)
    fit_phase(model, shared, "head", hp.epochs_head, hp.learning_rate_head, hp, ds)
    head_seconds = time.perf_counter() - t0
    candidates: dict[str, dict] = {}
    for recipe in hp.recipes:
        t1 = time.perf_counter()
        twin = _copy_model(model) if len(hp.recipes) > 1 else model
        tracker = _fork_tracker(shared, f"transfer[{recipe}]")
        lr, slow, unfrozen = _phase2(recipe, twin, head, blocks, hp)
        if unfrozen:
            log(f"transfer[{recipe}]: phase 2 trains {unfrozen} backbone layer(s)")
        fit_phase(twin, tracker, recipe, hp.epochs_finetune, lr, hp, ds, slow)
        candidates[recipe] = {
            "model": twin,
            "tracker": tracker,
            "image_size": image_size,
            "seconds": head_seconds + time.perf_counter() - t1,
            "bn_recalibration_batches": bn_batches,
            "unfrozen_layers": unfrozen,
            "recipe": recipe,
        }
        best = tracker.best or {}
        log(
            f"transfer[{recipe}]: best epoch {best.get('epoch')} val_accuracy={best.get('val_accuracy', float('nan')):.4f}"
        )
    kept = max(candidates, key=lambda r: _rank(candidates[r]["tracker"].best))
    if len(candidates) > 1:
        log(f"recipe search: kept {kept} (best validation accuracy of {', '.join(candidates)})")
    return candidates[kept], candidates


def _rank(best: dict | None) -> tuple[float, float]:
    if not best:
        return (float("-inf"), float("-inf"))
    return (best["val_accuracy"], -best["val_loss"])
