"""Help output that reads like a command line's: :class:`App` instead of ``typer.Typer``.

Newer typer releases (0.2x, with click vendored in) print every option's type in the
rich help, flags included (``--once <bool>``, as if the flag took a value; typer's
plain-text help skips flags, its rich help does not), and mark a required argument
with braces in the usage line (``logs [OPTIONS] {TASK}``). The command classes here
give flags no type and print a required argument bare (``TASK``), an optional one in
brackets (``[SECONDS]``), as click and older typer did. With an older typer both are
already so and nothing changes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import typer
from typer.core import TyperCommand, TyperGroup

__all__ = ["App", "HelpCommand", "HelpGroup"]

F = TypeVar("F", bound=Callable[..., Any])


def _without_flag_types(params: list[Any]) -> list[Any]:
    """``params`` with each flag given an empty placeholder: no type is printed for it."""
    for param in params:
        flag = param.param_type_name == "option" and getattr(param, "is_flag", False)
        if flag and param.metavar is None:
            param.metavar = ""
    return params


def _unbraced(piece: str) -> str:
    """``{NAME}`` (newer typer's mark of a required argument) as ``NAME``."""
    stem, dots = (piece[:-3], "...") if piece.endswith("...") else (piece, "")
    if len(stem) > 2 and stem.startswith("{") and stem.endswith("}"):
        return stem[1:-1] + dots
    return piece


def _usage(pieces: list[str], params: list[Any], ctx: Any) -> list[str]:
    """The usage line's pieces with the arguments' braces taken off."""
    arguments = {
        piece
        for param in params
        if param.param_type_name == "argument"
        for piece in param.get_usage_pieces(ctx)
    }
    return [_unbraced(piece) if piece in arguments else piece for piece in pieces]


class HelpCommand(TyperCommand):
    """A command whose help shows flags without a type and arguments without braces."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _without_flag_types(list(super().get_params(ctx)))

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return _usage(list(super().collect_usage_pieces(ctx)), self.get_params(ctx), ctx)


class HelpGroup(TyperGroup):
    """A group whose help shows flags without a type and arguments without braces."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _without_flag_types(list(super().get_params(ctx)))

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return _usage(list(super().collect_usage_pieces(ctx)), self.get_params(ctx), ctx)


class App(typer.Typer):
    """``typer.Typer`` whose groups and commands are :class:`HelpGroup` and
    :class:`HelpCommand` unless told otherwise."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("cls", HelpGroup)
        super().__init__(**kwargs)

    def command(
        self, name: str | None = None, *, cls: type[TyperCommand] | None = None, **kwargs: Any
    ) -> Callable[[F], F]:
        return super().command(name, cls=cls or HelpCommand, **kwargs)
