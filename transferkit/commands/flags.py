"""API parameter -> CLI flag: the one place the command line renders the library's errors in its words.

Library errors name API parameters, marked `` `img_size` `` (:mod:`transferkit.errors`); the CLI prints
each mark as the flag that sets it. A parameter is its flag with dashes (``img_size`` -> ``--img-size``)
unless :data:`API_FLAGS` says otherwise.
"""

from __future__ import annotations

from transferkit.errors import render_marked

__all__ = ["API_FLAGS", "flag_for", "render_error", "render_text"]

# library parameters whose flag is not their name with dashes
API_FLAGS = {
    "num_classes": "--classes",
    "rules": "--rule",
    "ema_decay": "--model-ema",
    "drop_path_rate": "--drop-path",
    "init_checkpoint": "--init-checkpoint",
    "at": "--unfreeze-at",  # GradualUnfreeze(at=...): the thaw plan --unfreeze-at builds
}


def flag_for(param: str) -> str:
    """The flag that sets the API parameter ``param``."""
    return API_FLAGS.get(param, "--" + param.replace("_", "-"))


def render_text(text: str) -> str:
    """Library text (an error, a report's notes, a log line) with each marked parameter shown as its flag."""
    return render_marked(text, flag_for)


def render_error(exc: BaseException) -> str:
    """The error's text with each marked parameter shown as its flag."""
    return render_text(str(exc))
