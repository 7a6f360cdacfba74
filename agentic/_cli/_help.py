"""Help output that reads like a command line's: :class:`App` instead of ``typer.Typer``.

Newer typer releases (0.2x, with click vendored in) print every option's type in the
rich help, flags included (``--once <bool>``, as if the flag took a value; typer's
plain-text help skips flags, its rich help does not), print a repeatable option's
type as a list (``--label <list[str]>``, as if it took one), and mark a required argument
with braces in the usage line (``logs [OPTIONS] {TASK}``). The command classes here
give flags no type and print a required argument bare (``TASK``), an optional one in
brackets (``[SECONDS]``), as click and older typer did. With an older typer both are
already so and nothing changes.

A negative number is a value, not an option: click reads any word starting with a
dash as an option name, so ``agentic submit -5`` or ``agentic status --watch -0.5``
failed with "No such option: -5". The commands' parsers take such a word (when no
option has that name) as an argument, as argparse does; an option's value
(``--estimated-tokens -5``) was already read as one, and is then checked as any.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from difflib import get_close_matches
from typing import Any, TypeVar

import typer
from typer.core import TyperCommand, TyperGroup

__all__ = ["App", "HelpCommand", "HelpGroup"]

F = TypeVar("F", bound=Callable[..., Any])


def _without_flag_types(params: list[Any], ctx: Any) -> list[Any]:
    """``params`` with each flag given an empty placeholder (no type is printed for
    it) and each repeatable option its element's type (``<str>``, one per use)."""
    for param in params:
        if param.param_type_name != "option" or param.metavar is not None:
            continue
        if getattr(param, "is_flag", False):
            param.metavar = ""
        elif getattr(param, "multiple", False) and hasattr(param, "display_type"):
            shown = param.display_type(ctx)
            if shown.startswith("<list[") and shown.endswith("]>"):
                param.metavar = "<" + shown[len("<list[") : -len("]>")] + ">"
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


def _close_options(typo: str, params: list[Any]) -> list[str]:
    """The long options ``typo`` may have meant, compared without their dashes.

    click compares them with the dashes, which make any two long options look alike
    (``--store`` was offered ``--json``, a command's only long option).
    """
    options = {opt.lstrip("-"): opt for p in params for opt in p.opts if opt.startswith("--")}
    return [options[name] for name in get_close_matches(typo.lstrip("-"), list(options))]


_NUMBER = re.compile(r"-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


_PARSERS: dict[type, type] = {}


def _numbers_as_values(parser_type: type) -> type:
    """A subclass of click's option parser ``parser_type`` (made once) that reads a
    negative number as an argument, unless an option is named so (none of ours is)."""
    if parser_type in _PARSERS:
        return _PARSERS[parser_type]

    class Parser(parser_type):  # type: ignore[misc]
        def _process_opts(self, arg: str, state: Any) -> None:
            if (
                self.allow_interspersed_args
                and _NUMBER.fullmatch(arg)
                and arg not in self._short_opt
                and arg not in self._long_opt
            ):
                state.largs.append(arg)
                return
            super()._process_opts(arg, state)

    _PARSERS[parser_type] = Parser
    return Parser


class _Usage:
    """Help with flags without a type and arguments without braces; better guesses
    for an unknown option."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _without_flag_types(list(super().get_params(ctx)), ctx)  # type: ignore[misc]

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = list(super().collect_usage_pieces(ctx))  # type: ignore[misc]
        return _usage(pieces, self.get_params(ctx), ctx)

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)  # type: ignore[misc, no-any-return]
        except Exception as exc:  # click's NoSuchOption (vendored by newer typer)
            if type(exc).__name__ == "NoSuchOption":
                typo = exc.option_name  # type: ignore[attr-defined]
                exc.possibilities = _close_options(typo, self.get_params(ctx))  # type: ignore[attr-defined]
            raise


class HelpCommand(_Usage, TyperCommand):
    """A command whose help shows flags without a type and arguments without braces,
    and whose arguments may be negative numbers."""

    def make_parser(self, ctx: Any) -> Any:
        parser = super().make_parser(ctx)
        parser.__class__ = _numbers_as_values(type(parser))
        return parser


class HelpGroup(_Usage, TyperGroup):
    """A group whose help shows flags without a type and arguments without braces."""


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
