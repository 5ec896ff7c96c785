"""What a run really used and what it says about itself: ``args.yaml``'s ``resolved`` section, the lines
that open a run, the export's facts and the last line.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transferkit.run.job import Job

__all__ = ["resolved_facts", "summary_lines", "best_weights_fact", "best_line", "export_info", "count"]


def count(n: int, noun: str) -> str:
    """``1 epoch``, ``3 epochs``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def resolved_facts(job: Job, bundle: Any, steps_per_epoch: int, mixup: Any = None) -> dict[str, Any]:
    """What the run really used, for ``args.yaml``'s ``resolved`` section."""
    import torch

    import transferkit
    from transferkit.recipes import describe_aug

    model, options = job.model, job.options
    return {
        "command": job.command,
        "backbone": options["backbone"],
        **_weights_facts(job),
        "num_classes": len(bundle.class_names),
        "class_names": list(bundle.class_names),
        "data": bundle.source,
        # absolute, so that evaluate/export find the images again from any working folder
        "data_path": None if bundle.source == "digits" else str(Path(bundle.source).resolve()),
        "train_images": len(bundle.train),
        "val_images": len(bundle.val),
        "unreadable_images_skipped": len(bundle.skipped),
        "img_size": bundle.img_size,
        "mean": list(model.data_config["mean"]),
        "std": list(model.data_config["std"]),
        "aug": describe_aug(job.data.aug if not job.data.use_cache else "none"),
        "mixup": mixup.describe() if mixup is not None else "off",
        "model_ema": (
            f"decay {options['model_ema']:g} with timm's warmup (ModelEmaV3); validated every epoch; "
            "best.pt and model.safetensors take whichever of the model and its EMA validates better"
            if options["model_ema"] is not None
            else "off"
        ),
        "drop_path": job.weights.drop_path_fact,
        "layer_decay": _layer_decay_fact(model, options["layer_decay"]),
        "freeze": job.freeze.description,
        "trainable_parameters_at_start": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "parameters": sum(p.numel() for p in model.parameters()),
        "feature_cache": job.data.use_cache,
        "device": str(job.device),
        "world_size": job.dist.world_size,
        "steps_per_epoch": steps_per_epoch,
        "transferkit_version": transferkit.__version__,
        "torch_version": torch.__version__,
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def _weights_facts(job: Job) -> dict[str, Any]:
    """Where the weights came from, and what became of the checkpoint's classifier."""
    model, weights, init = job.model, job.weights, job.weights.init_report
    built_with = str(getattr(model, "weights", "random"))
    return {
        "pretrained_weights_used": weights.pretrained,
        # with `init_checkpoint` the weights come from that file, whatever the backbone was built with
        "weights_source": f"init checkpoint {job.options['init_checkpoint']}"
        if init is not None
        else built_with,
        "backbone_built_with": built_with,
        "init_checkpoint_tensors": len(init.loaded) if init is not None else None,
        # kept only for matching class names, and why
        "head": next(
            (n.removeprefix("head: ") for n in getattr(model, "notes", []) if n.startswith("head: ")),
            "fresh: no checkpoint head (random weights)" if not weights.pretrained else None,
        ),
    }


def _layer_decay_fact(model: Any, factor: float | None) -> str:
    if factor is None:
        return "off"
    from transferkit.optim import layer_decay_scales

    scales = layer_decay_scales(model, factor)
    kind = (
        "timm's fine layers (group_matcher)" if hasattr(model.backbone, "group_matcher") else "layer groups"
    )
    if factor == 1:
        return f"x1 per layer ({kind}): every layer at the head's rate"
    layers = len(set(scales.values()))
    return f"x{factor:g} per layer over {layers} layers ({kind}); the lowest at x{min(scales.values()):.3g}"


def summary_lines(options: Mapping[str, Any], facts: Mapping[str, Any]) -> list[str]:
    """The lines that open a run: model and data; plan, optimizer and steps; the recipe (when not default)."""
    weights = "pretrained" if facts["pretrained_weights_used"] else "random init"
    return [
        f"{facts['backbone']} ({weights}), {facts['num_classes']} classes, data {facts['data']}: "
        f"{facts['train_images']} train / {facts['val_images']} val images at {facts['img_size']} px",
        f"{facts['freeze']}; {options['optimizer']} lr {options['lr']:g}, {options['scheduler']} schedule, "
        f"{count(options['epochs'], 'epoch')} x {facts['steps_per_epoch']} steps on {facts['device']}"
        + (f" x {facts['world_size']} processes" if facts["world_size"] > 1 else "")
        + (", cached features" if facts["feature_cache"] else ""),
        *_recipe_line(options, facts),
    ]


def _recipe_line(options: Mapping[str, Any], facts: Mapping[str, Any]) -> list[str]:
    """The recipe options in use, in one line (none when every option is at its default)."""
    parts = [facts["aug"].split(" (")[0]] if facts["aug"] not in ("light", "none") else []
    mixes = [f"{k} {options[k]:g}" for k in ("mixup", "cutmix") if options[k]]
    if mixes:
        prob = options["mixup_prob"]
        parts.append(" + ".join(mixes) + (f" (p={prob:g})" if prob != 1 else ""))
    if options["model_ema"] is not None:
        parts.append(f"model EMA {options['model_ema']:g}")
    if options["drop_path"]:
        parts.append(f"drop-path {options['drop_path']:g}")
    if options["layer_decay"] is not None:
        parts.append(f"layer decay x{options['layer_decay']:g}")
    return [f"recipe: {', '.join(parts)}"] if parts else []


def best_weights_fact(best_weights: str, best_epoch: int) -> str:
    """``args.yaml``'s account of where ``best.pt``'s export came from, in a run with a model EMA."""
    if best_weights == "ema":
        return (
            f"ema: the model EMA of epoch {best_epoch + 1} validated best; model.safetensors holds it "
            "(best.pt: models.ema)"
        )
    return f"model: the trained weights of epoch {best_epoch + 1} validated best (best.pt: models.model)"


def best_line(
    acc: float, weights: str, epoch: int, epochs: int, run_dir: Any, minutes: float | None = None
) -> str:
    """``best val accuracy 97.50% (epoch 3/5, 0.4 min); run folder: runs/...`` (epochs from 1)."""
    source = " of the model EMA" if weights == "ema" else ""
    took = f", {minutes:.1f} min" if minutes is not None else ""
    return f"best val accuracy {acc:.2%}{source} (epoch {epoch + 1}/{epochs}{took}); run folder: {run_dir}"


def export_info(job: Job, bundle: Any, best_epoch: int, val_acc: float, best_weights: str) -> dict[str, Any]:
    """``labels.json``'s facts beside the class names: the backbone, the exact evaluation pipeline, the epoch."""
    from transferkit.data import eval_transform_spec

    model, in_chans = job.model, getattr(job.model, "in_chans", 3)
    return {
        "backbone": job.options["backbone"],
        "img_size": bundle.img_size,
        "mean": list(model.data_config["mean"]),
        "std": list(model.data_config["std"]),
        "in_chans": in_chans,
        # the exact evaluation pipeline: resize, crop, interpolation, normalisation, channels
        "eval_transform": eval_transform_spec(
            model.data_config,
            bundle.img_size,
            in_chans=in_chans,
            source="digits" if bundle.source == "digits" else "folder",
        ),
        "epoch": best_epoch + 1,
        "val_acc": val_acc,
        "best_weights": best_weights,
        "data": bundle.source,
        # the network's own key layout (no "backbone." prefix): the file loads into the plain torchvision/timm
        # network and into create_model(..., weights="model.safetensors")
        "layout": "native: load into the plain network, or create_model(backbone, num_classes, weights=file)",
    }
