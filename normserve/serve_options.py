"""The ``serve`` command's options: one per serving setting, generated from the Settings
fields, so a new setting is an option (with its variable and default in ``--help``) by itself.

The options are built only when ``serve`` runs or shows its help (the settings module imports
the serving stack, which ``train`` and ``export`` should not pay for); the values given reach
the command through ``settings_given(ctx)``.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args, get_origin

import click
import typer
from typer.core import TyperCommand

if TYPE_CHECKING:
    from pydantic.fields import FieldInfo
    from pydantic_settings import BaseSettings

__all__ = ["ServeCommand", "setting_options", "settings_given"]

_SETTINGS = "normserve.settings"  # where ServeCommand leaves the options given, in ctx.meta


def _setting_annotation(name: str, field: FieldInfo, variable: str) -> Any:
    """``--name VALUE`` with its help, variable and default. The value is what the variable
    would hold, left as text for the settings class to validate: a bad one is the same one-line
    error from the option as from the variable."""
    default = field.default
    shown = "unset" if default is None else str(default)
    if isinstance(default, bool):
        shown = shown.lower()
    doc = " ".join((field.description or "").split()).replace("``", "'")
    kind = field.annotation
    choices = [a for a in get_args(kind) if a is not type(None)]
    base = choices[0] if len(choices) == 1 else kind
    if get_origin(kind) is Literal:
        metavar = "[" + "|".join(map(str, choices)) + "]"
    else:
        metavar = {bool: "[true|false]", int: "INTEGER", float: "NUMBER", Path: "PATH"}.get(
            base, "TEXT"
        )
    text = f"{doc} Variable {variable}, default {shown}."
    return Annotated[
        str | None, typer.Option("--" + name.replace("_", "-"), help=text, metavar=metavar)
    ]


def setting_options(settings: type[BaseSettings]) -> list[click.Parameter]:
    """One ``serve`` option per field of ``settings``, made by typer from a generated
    signature (so they look and parse like every other option)."""
    prefix = settings.model_config.get("env_prefix", "")
    annotations = {
        name: _setting_annotation(name, field, f"{prefix}{name.upper()}")
        for name, field in settings.model_fields.items()
    }

    def options(**_: Any) -> None:
        """The serving settings."""

    options.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=a)
            for name, a in annotations.items()
        ]
    )
    options.__annotations__ = dict(annotations)
    builder = typer.Typer()
    builder.command()(options)
    return [p for p in typer.main.get_command(builder).params if p.name in annotations]


class ServeCommand(TyperCommand):
    """``serve``, whose options are the serving settings (:func:`setting_options`). They are
    built when ``serve`` runs or shows its help: the settings module imports the serving stack,
    which the other commands should not pay for. Its help is click's plain layout: rich's table
    cuts twenty-odd long variable names short on an 80-column terminal."""

    setting_names: frozenset[str] = frozenset()

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self.rich_markup_mode = None
        super().format_help(ctx, formatter)

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        if not self.setting_names:
            from normserve.service.settings import Settings

            options = setting_options(Settings)
            self.params[:0] = options
            self.setting_names = frozenset(p.name for p in options if p.name)
        return super().get_params(ctx)

    def invoke(self, ctx: click.Context) -> Any:
        given = {name: ctx.params.pop(name, None) for name in self.setting_names}
        ctx.meta[_SETTINGS] = {name: value for name, value in given.items() if value is not None}
        return super().invoke(ctx)


def settings_given(ctx: click.Context) -> dict[str, str]:
    """The settings given as options to a ``ServeCommand``: name -> text, for ``Settings``."""
    return dict(ctx.meta.get(_SETTINGS, {}))
