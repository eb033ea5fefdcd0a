"""Every `RunConfig` field as a CLI flag, generated from the config itself.

`count_embed` becomes `--count-embed`, with the field's help and choices, so the CLI, run YAML,
search spaces and config.json share one vocabulary and a new field needs no CLI code.
A flag left out is None, so only the flags a user typed override a base config.
"""

from __future__ import annotations

import functools
import inspect
from typing import Annotated, Any, Callable, Optional

import typer

from aam.config import RunConfig, field_type

_CLI_TYPES = {bool: bool, int: int, float: float, str: str, list: str, dict: str}
_PANELS = {
    "data": "Data",
    "model": "Model",
    "loss": "Loss",
    "optim": "Optimisation",
    "quality": "Quality levers",
    "transfer": "Pretrain / fine-tune",
    "speed": "Speed",
    "resources": "Resources",
}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _option(name: str, f) -> inspect.Parameter:
    kind = field_type(name)
    meta = f.metadata
    help_text = meta["help"]
    if meta["choices"]:
        help_text += f" One of: {', '.join(meta['choices'])}."
    if kind is list:
        help_text += " (comma-separated)"
    if kind is dict:
        help_text += " (name=value pairs, comma-separated)"
        default = ",".join(f"{k}={v}" for k, v in f.default_factory().items()) or "none"
    elif kind is list:
        default = ",".join(str(v) for v in f.default_factory()) or "none"
    else:
        default = str(f.default).lower() if kind is bool else f.default
    # parentheses, not brackets: rich would read "[default: 256]" as markup and drop it
    help_text += f" (default: {default if default != '' else 'none'})"
    names = [f"{flag(name)}/--no-{name.replace('_', '-')}"] if kind is bool else [flag(name)]
    option = typer.Option(*names, help=help_text, rich_help_panel=_PANELS.get(meta["section"]), show_default=False)
    annotation = Annotated[Optional[_CLI_TYPES[kind]], option]
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)


def with_config_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add a flag per config field; the command receives them as `overrides: dict`."""
    own = inspect.signature(command, eval_str=True)
    own_params = [p for p in own.parameters.values() if p.name != "overrides"]
    config_params = [_option(name, f) for name, f in RunConfig.fields().items() if name not in own.parameters]

    @functools.wraps(command)
    def wrapper(**kwargs):
        config_names = {p.name for p in config_params}
        overrides = {k: v for k, v in kwargs.items() if k in config_names and v is not None}
        rest = {k: v for k, v in kwargs.items() if k not in config_names}
        return command(overrides=overrides, **rest)

    params = own_params + config_params
    wrapper.__signature__ = inspect.Signature(params)
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    del wrapper.__wrapped__  # typer must read the new signature, not the original one
    return wrapper
