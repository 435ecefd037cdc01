"""Config flags, declared once: one typer option per field of the ``melu.config`` dataclasses.

A field's type, default, help text and checks live in ``melu/config.py``; this module only
turns them into options. The flag is the field name with dashes (``inner_lr`` →
``--inner-lr``), except where :data:`FLAG_NAMES` keeps an older or clearer name. A Literal
field takes any string here (its choices are listed in ``--help``) and is checked, like
every range, when the Config is built: a bad value is a usage error naming the flag
(exit 2). ``--config FILE`` (a ``Config.to_dict()`` JSON or a bundle's ``config.json``)
sets the starting values; flags given on the command line override it.

Use it on any command that needs settings (``train``, ``prepare``, ``cv``)::

    @app.command()
    @config_options()                      # every field of every section
    def train(config: Config, out: Path = Path("runs/train")) -> None: ...

    @config_options("data", aliases={"data.seed": ("--seed",)})   # one section, an extra name
    @config_options("data.dataset", "train.device", config_file=False)   # some fields
    @config_options(exclude=("train.seed",))   # all but the fields the command sets itself
    @config_overrides("meta.inner_lr")   # unset by default; changes a bundle's config later
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import typer

from melu.config import SECTIONS, Config, field_types, help_of
from melu.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])

# where today's flag differs from the field name (section.field → flag)
FLAG_NAMES: dict[str, str] = {
    "data.seed": "--data-seed",  # --seed is the training seed
    "data.item_id_feature": "--item-id",
    "data.use_extra_item_info": "--extra-item-info",
}
METAVARS = {"data.ratings": "FILE", "data.items": "FILE", "data.users": "FILE"}
PANELS = {
    "data": "Data protocol",
    "model": "Model",
    "meta": "Inner loop",
    "train": "Outer loop",
}
CONFIG_FILE_PARAM = "config_file"
CONTEXT_PARAM = "settings_context"


@dataclass(frozen=True)
class Flag:
    """One config field as a command-line option."""

    key: str  # "meta.inner_lr"
    flag: str  # "--inner-lr"
    param: inspect.Parameter  # the keyword parameter typer reads (its annotation holds the Option)

    @property
    def section(self) -> str:
        return self.key.split(".")[0]

    @property
    def field(self) -> str:
        return self.key.split(".")[1]


def _keyword(name: str, annotation: Any, default: Any) -> inspect.Parameter:
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
    )


def _int_list(value: str | None) -> tuple[int, ...] | None:
    """'64,64' → (64, 64); a usage error otherwise."""
    if value is None:
        return None
    try:
        return tuple(int(part) for part in value.split(","))
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a comma-separated list of integers") from None


def _option(
    key: str, f: dataclasses.Field[Any], tp: Any, names: Sequence[str], override: str | None
) -> Flag:
    """The typer option of field ``f`` (type ``tp``) answering to ``names``; with
    ``override`` it defaults to unset (None), shown as ``[default: <override>]``."""
    base: Any = tp
    extra: dict[str, Any] = {"show_default": override} if override else {}
    if key in METAVARS:
        extra["metavar"] = METAVARS[key]
    default: Any = None if override else f.default
    if typing.get_origin(tp) is Literal:
        base, extra["metavar"] = str, "[" + "|".join(typing.get_args(tp)) + "]"
    elif typing.get_origin(tp) is tuple:
        base, extra["callback"], extra["metavar"] = str, _int_list, "N,N,..."
        default = None if override else ",".join(map(str, default))
    if tp is bool:
        names = [f"{n}/--no-{n.removeprefix('--')}" for n in names]
    option = typer.Option(
        *names, help=help_of(f), rich_help_panel=PANELS[key.split(".")[0]], **extra
    )
    if override:
        base = base | None
    param = _keyword(key.replace(".", "__"), Annotated[base, option], default)
    return Flag(key, names[0].split("/")[0], param)


def config_flags(
    selectors: Sequence[str] = (),
    aliases: Mapping[str, Sequence[str]] | None = None,
    override: str | None = None,
    exclude: Sequence[str] = (),
) -> list[Flag]:
    """The flags of the selected fields: ``"data"`` (a section), ``"meta.inner_lr"`` (a
    field); none selects every field; ``exclude`` drops fields (``"train.seed"``) that the
    command sets itself. ``aliases`` adds flag names (``{"data.seed": ("--seed",)}``);
    ``override``: see :func:`_option`."""
    chosen = list(selectors) or list(SECTIONS)
    flags: list[Flag] = []
    every: list[str] = []
    for section, cls in SECTIONS.items():
        hints = field_types(cls)
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            key = f"{section}.{f.name}"
            if (section in chosen or key in chosen) and key not in exclude:
                names: list[str] = [FLAG_NAMES.get(key, "--" + f.name.replace("_", "-"))]
                names += (aliases or {}).get(key, ())
                flags.append(_option(key, f, hints[f.name], names, override))
                every += names
    if len(set(every)) < len(every):
        raise ValueError(f"config_options: a flag name is used twice in {every}")
    fields = {f"{s}.{f.name}" for s, c in SECTIONS.items() for f in dataclasses.fields(c)}  # type: ignore[arg-type]
    unknown = (set(chosen) - set(SECTIONS) - {f.key for f in flags}) | (set(exclude) - fields)
    if unknown:
        raise ValueError(f"config_options: no such section or field {sorted(unknown)}")
    return flags


def load_config_file(path: Path) -> Config:
    """A Config from a JSON file: ``Config.to_dict()`` or a bundle's ``config.json``."""
    try:
        data = json.loads(path.read_text())
        if isinstance(data, dict) and "schema_version" in data and "config" in data:
            return Config.from_saved(data["config"])  # a model bundle's config.json
        return Config.from_dict(data)
    except (OSError, ValueError) as exc:  # ConfigError and JSONDecodeError are ValueErrors
        raise typer.BadParameter(f"{path}: {str(exc)[:300]}", param_hint="'--config'") from None
    except RecursionError:  # json.loads of thousands of nested brackets
        raise typer.BadParameter(
            f"{path}: nested too deeply to be a settings file", param_hint="'--config'"
        ) from None


def _given(ctx: typer.Context | None) -> Callable[[str], bool]:
    """Whether an option was set on the command line (or from the environment), not defaulted."""

    def given(param: str) -> bool:
        source = ctx.get_parameter_source(param) if ctx is not None else None
        return source is None or source.name not in ("DEFAULT", "DEFAULT_MAP")

    return given


def build_config(
    flags: Sequence[Flag],
    values: Mapping[str, Any],
    file: Path | None,
    given: Callable[[str], bool] = lambda param: True,
) -> Config:
    """The file's Config (else the defaults) with the flags' values, validated once.

    Without a file every flag's value applies (unset flags hold the defaults); with one,
    only the flags given on the command line. A ConfigError becomes a usage error naming
    the flag (or ``--config`` when the file's value is at fault).
    """
    base = load_config_file(file) if file is not None else Config()
    changes: dict[str, dict[str, Any]] = {}
    for flag in flags:
        if file is None or given(flag.param.name):
            changes.setdefault(flag.section, {})[flag.field] = values[flag.param.name]
    try:
        return base.replace(**{s: getattr(base, s).replace(**kw) for s, kw in changes.items()})
    except ConfigError as exc:
        bad = next((f for f in flags if f.key == exc.field), None)
        from_flag = bad is not None and bad.field in changes.get(bad.section, {})
        hint = bad.flag if bad is not None and from_flag else ("--config" if file else None)
        raise typer.BadParameter(str(exc), param_hint=f"'{hint}'" if hint else None) from None


def _extend(func: F, target: str, added: list[inspect.Parameter], make: Callable[..., Any]) -> F:
    """``func`` with the ``added`` options in place of its ``target`` parameter, which
    receives ``make(ctx, **values of the added options)`` (``ctx``: the typer.Context,
    the command's own if it takes one)."""
    signature = inspect.signature(func, eval_str=True)
    if target not in signature.parameters:
        raise TypeError(f"{func.__name__}: a command with config flags takes `{target}`")
    own = [p for p in signature.parameters.values() if p.name != target]
    names = {p.name for p in added}
    contexts = [p.name for p in own if p.annotation is typer.Context]
    if not contexts:
        added = [*added, _keyword(CONTEXT_PARAM, typer.Context, None)]
    context = contexts[0] if contexts else CONTEXT_PARAM

    @functools.wraps(func)
    def command(**kwargs: Any) -> Any:
        values = {name: kwargs.pop(name) for name in names}
        ctx = kwargs[context] if contexts else kwargs.pop(context)
        return func(**{target: make(ctx, **values)}, **kwargs)

    params = [*own, *added]
    command.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    return command  # type: ignore[return-value]


def config_options(
    *selectors: str,
    exclude: Sequence[str] = (),
    aliases: Mapping[str, Sequence[str]] | None = None,
    config_file: bool = True,
) -> Callable[[F], F]:
    """Decorator: give a typer command one option per selected config field (see
    :func:`config_flags`) and, with ``config_file``, ``--config FILE``. The command declares
    a ``config: Config`` parameter and receives the validated Config; apply it *below*
    ``@app.command()``. Bad values exit 2 with a message naming the flag. Fields in
    ``exclude`` keep the file's (or default) value; the command may ``replace`` them.
    """
    flags = config_flags(selectors, aliases, exclude=exclude)
    added = [f.param for f in flags]
    if config_file:
        option = typer.Option(
            "--config",
            exists=True,
            dir_okay=False,
            help="JSON settings (Config.to_dict() or a bundle's config.json); "
            "flags given here override it.",
        )
        added.insert(0, _keyword(CONFIG_FILE_PARAM, Annotated[Path | None, option], None))

    def make(ctx: typer.Context, config_file: Path | None = None, **values: Any) -> Config:
        return build_config(flags, values, config_file, _given(ctx))

    return lambda func: _extend(func, "config", added, make)


def config_overrides(*selectors: str, default_text: str = "the model's") -> Callable[[F], F]:
    """Decorator for settings that change a Config known only later (a bundle's): options of
    the selected fields that default to unset; the command's ``overrides`` parameter
    receives ``{"section.field": value}`` of those given. Each given value is checked on
    its own (against the defaults, so a bad one exits 2 naming the flag); apply them with
    ``section.replace(...)``, which checks them again with the other fields.
    """
    flags = config_flags(selectors, override=default_text)

    def make(ctx: typer.Context, **values: Any) -> dict[str, Any]:
        given = {f.key: values[f.param.name] for f in flags if values[f.param.name] is not None}
        build_config([f for f in flags if f.key in given], values, None)
        return given

    return lambda func: _extend(func, "overrides", [f.param for f in flags], make)
