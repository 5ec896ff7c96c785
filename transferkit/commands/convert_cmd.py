"""``transferkit convert CKPT --model M --out FILE.safetensors``: weights from another implementation,
rewritten once in the model's own layout so that later loads match by name.

The checkpoint goes through a registered converter when it is in one's source layout (``--converter``
picks one by name), else through :func:`~transferkit.partial.load_partial` with ``--align`` (by name, or
by structure when no name matches). The tensors that loaded are written under the network's own names;
the safetensors metadata records the source file's name and SHA-256, the pairing method and the model.
``--verify REFERENCE`` builds the source implementation with the original weights (loaded by name) and
compares outputs on a probe batch; a difference above ``--tolerance`` is an error and nothing is written.

Usage::

    transferkit convert lite0.pth --model timm:efficientnet_lite0 --out lite0.safetensors
    transferkit convert vit.pth --model timm:vit_base_patch16_224 --out vit.safetensors --verify vit_b_16
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from transferkit.commands.console import setup_logging
from transferkit.commands.flags import render_text
from transferkit.errors import ConfigError

__all__ = ["run_convert"]


def run_convert(ns: argparse.Namespace) -> int:
    """Check the arguments, convert, verify if asked, write ``--out``; print the report."""
    source, out = Path(ns.checkpoint), Path(ns.out)
    _check_arguments(ns, source, out)
    handler, undo_logging = setup_logging(quiet=True, rank=0)
    handler.show_pending()
    try:
        lines = _convert(ns, source, out)
    finally:
        undo_logging()
    print(render_text("\n".join(lines)))
    return 0


def _check_arguments(ns: argparse.Namespace, source: Path, out: Path) -> None:
    if not source.is_file():
        what = "is a folder, not a checkpoint file" if source.is_dir() else "no such file"
        raise ConfigError(f"convert: {source}: {what}; give the checkpoint file to convert")
    if ns.classes is not None and ns.classes < 1:
        raise ConfigError(f"--classes must be an integer >= 1, got {ns.classes}")
    if out.suffix != ".safetensors":
        raise ConfigError(f"--out {out} must end in .safetensors (convert writes safetensors files)")
    if out.resolve() == source.resolve():
        raise ConfigError(f"--out {out} is the checkpoint being converted; write to another file")
    if out.exists() and not ns.overwrite:
        raise ConfigError(f"--out {out} exists; pass --overwrite to replace it, or choose another --out")
    if not ns.tolerance >= 0:
        raise ConfigError(f"--tolerance must be >= 0, got {ns.tolerance}")


def _convert(ns: argparse.Namespace, source: Path, out: Path) -> list[str]:
    from transferkit.backbones import create_model
    from transferkit.checkpoint import extract_state_dict, load_checkpoint, save_weights
    from transferkit.converters import find_converter, get_converter
    from transferkit.partial import load_partial

    state = dict(extract_state_dict(load_checkpoint(source, map_location="cpu"), ns.key))
    converter = get_converter(ns.converter) if ns.converter else find_converter(state, ns.model)
    align = ns.align
    if converter is not None:
        state, align = converter(state), "names"  # a converter writes the target's names
    classes = ns.classes or _checkpoint_classes(ns.model, state, ns.rule, align)
    adapter = create_model(ns.model, classes, weights=None)
    report = load_partial(adapter.backbone, state, rules=ns.rule, align=align)
    report.source = source.name
    method = f"converter {converter.name}" if converter is not None else f"{report.method}"
    lines = [str(report)]
    verified = None
    if ns.verify:
        reference = create_model(ns.verify, classes, weights=source, key=ns.key, align="names", head="keep")
        verified = _verify(adapter, reference, ns.tolerance)
        lines.append(
            f"verified against {ns.verify} (the checkpoint loaded by name): largest output difference "
            f"{verified:.3g} (tolerance {ns.tolerance:g})"
        )
    loaded = set(report.loaded)
    tensors = {k: v for k, v in adapter.backbone.state_dict().items() if k in loaded}
    metadata: dict[str, Any] = {
        "transferkit.source": source.name,
        "transferkit.source_sha256": _sha256(source),
        "transferkit.method": method,
        "transferkit.model": ns.model,
        "transferkit.classes": str(classes),
    }
    if verified is not None:
        metadata["transferkit.verified_max_diff"] = f"{verified:.6g} vs {ns.verify}"
    save_weights(out, tensors, metadata=metadata)
    lines.append(f"wrote {len(tensors)} tensors in {ns.model}'s layout to {out} (paired by {method})")
    return lines


def _checkpoint_classes(model: str, state: dict[str, Any], rules: list[str], align: str) -> int:
    """The class count of the checkpoint's head, read from a dry run into a meta-device build."""
    from transferkit.backbones import create_model
    from transferkit.errors import LoadError
    from transferkit.partial import load_partial

    with torch.device("meta"):
        probe = create_model(model, 1, weights=None)
    head = probe.head_names[0].removeprefix("backbone.") + ".weight"
    try:
        report = load_partial(probe.backbone, state, rules=rules, align=align, dry_run=True)
    except LoadError:
        return 1000  # the real load below fails with the reason
    shapes = report.mismatched.get(head)
    return int(shapes[0][0]) if shapes else 1


def _verify(adapter: nn.Module, reference: nn.Module, tolerance: float) -> float:
    from transferkit.converters import verify_outputs

    size = tuple(adapter.data_config["input_size"])  # type: ignore[union-attr]
    return verify_outputs(adapter, reference, input_size=size, tolerance=tolerance)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
