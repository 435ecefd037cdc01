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

    @config_options("data", aliases={"data.seed": ("--seed",)})   # one section
    @config_options("data.dataset", "train.device", config_file=False)   # some fields
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

import click
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
PANELS = {
    "data": "Data protocol",
    "model": "Model",
    "meta": "Inner loop",
    "train": "Outer loop",
}
CONFIG_FILE_PARAM = "config_file"


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


def _int_list(value: str | None) -> tuple[int, ...] | None:
    """'64,64' → (64, 64); a usage error otherwise."""
    if value is None:
        return None
    try:
        return tuple(int(part) for part in value.split(","))
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a comma-separated list of integers") from None


def _option(key: str, f: dataclasses.Field[Any], tp: Any, names: Sequence[str]) -> Flag:
    """The typer option of field ``f`` (type ``tp``) answering to ``names``."""
    base: Any = tp
    extra: dict[str, Any] = {}
    default: Any = f.default
    if typing.get_origin(tp) is Literal:
        base, extra = str, {"metavar": "[" + "|".join(typing.get_args(tp)) + "]"}
    elif typing.get_origin(tp) is tuple:
        base, extra = str, {"callback": _int_list, "metavar": "N,N,..."}
        default = ",".join(map(str, default))
    if tp is bool:
        names = [f"{n}/--no-{n.removeprefix('--')}" for n in names]
    option = typer.Option(
        *names, help=help_of(f), rich_help_panel=PANELS[key.split(".")[0]], **extra
    )
    param = inspect.Parameter(
        key.replace(".", "__"),
        inspect.Parameter.KEYWORD_ONLY,
        default=default,
        annotation=Annotated[base, option],
    )
    return Flag(key, names[0].split("/")[0], param)


def config_flags(
    selectors: Sequence[str] = (), aliases: Mapping[str, Sequence[str]] | None = None
) -> list[Flag]:
    """The flags of the selected fields: ``"data"`` (a section), ``"meta.inner_lr"`` (a
    field); none selects every field. ``aliases`` adds flag names (``{"data.seed": ("--seed",)}``)."""
    chosen = [s for s in selectors] or list(SECTIONS)
    flags = []
    for section, cls in SECTIONS.items():
        hints = field_types(cls)
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            key = f"{section}.{f.name}"
            if section in chosen or key in chosen:
                names = [FLAG_NAMES.get(key, "--" + f.name.replace("_", "-"))]
                flags.append(
                    _option(key, f, hints[f.name], [*names, *(aliases or {}).get(key, ())])
                )
    unknown = set(chosen) - set(SECTIONS) - {f.key for f in flags}
    if unknown:
        raise ValueError(f"config_options: no such section or field {sorted(unknown)}")
    return flags


def load_config_file(path: Path) -> Config:
    """A Config from a JSON file: ``Config.to_dict()`` or a bundle's ``config.json``."""
    try:
        data = json.loads(path.read_text())
        if isinstance(data, dict) and "schema_version" in data and "config" in data:
            data = data["config"]  # a model bundle's config.json
        return Config.from_dict(data)
    except (OSError, ValueError) as exc:  # ConfigError and JSONDecodeError are ValueErrors
        raise typer.BadParameter(f"{path}: {exc}", param_hint="'--config'") from None


def _given(param: str) -> bool:
    """Whether the option was set on the command line (or from the environment)."""
    ctx = click.get_current_context(silent=True)
    source = ctx.get_parameter_source(param) if ctx is not None else None
    return source not in (
        click.core.ParameterSource.DEFAULT,
        click.core.ParameterSource.DEFAULT_MAP,
    )


def build_config(flags: Sequence[Flag], values: Mapping[str, Any], file: Path | None) -> Config:
    """The file's Config (else the defaults) with the flags' values, validated once.

    Without a file every flag's value applies (unset flags hold the defaults); with one,
    only the flags given on the command line. A ConfigError becomes a usage error naming
    the flag (or ``--config`` when the file's value is at fault).
    """
    base = load_config_file(file) if file is not None else Config()
    changes: dict[str, dict[str, Any]] = {}
    for flag in flags:
        if file is None or _given(flag.param.name):
            changes.setdefault(flag.section, {})[flag.field] = values[flag.param.name]
    try:
        return base.replace(**{s: getattr(base, s).replace(**kw) for s, kw in changes.items()})
    except ConfigError as exc:
        bad = next((f for f in flags if f.key == exc.field), None)
        from_flag = bad is not None and bad.field in changes.get(bad.section, {})
        hint = bad.flag if bad is not None and from_flag else ("--config" if file else None)
        raise typer.BadParameter(str(exc), param_hint=f"'{hint}'" if hint else None) from None


def config_options(
    *selectors: str,
    aliases: Mapping[str, Sequence[str]] | None = None,
    config_file: bool = True,
) -> Callable[[F], F]:
    """Decorator: give a typer command one option per selected config field (see
    :func:`config_flags`) and, with ``config_file``, ``--config FILE``. The command declares
    a ``config: Config`` parameter and receives the validated Config; apply it *below*
    ``@app.command()``. Bad values exit 2 with a message naming the flag.
    """
    flags = config_flags(selectors, aliases)

    def decorate(func: F) -> F:
        signature = inspect.signature(func, eval_str=True)
        if "config" not in signature.parameters:
            raise TypeError(f"{func.__name__}: a config_options command takes `config: Config`")
        own = [p for p in signature.parameters.values() if p.name != "config"]
        added = [f.param for f in flags]
        if config_file:
            option = typer.Option(
                "--config",
                exists=True,
                dir_okay=False,
                help="JSON settings (Config.to_dict() or a bundle's config.json); "
                "flags given here override it.",
            )
            added.insert(
                0,
                inspect.Parameter(
                    CONFIG_FILE_PARAM,
                    inspect.Parameter.KEYWORD_ONLY,
                    default=None,
                    annotation=Annotated[Path | None, option],
                ),
            )

        @functools.wraps(func)
        def command(**kwargs: Any) -> Any:
            values = {f.param.name: kwargs.pop(f.param.name) for f in flags}
            file = kwargs.pop(CONFIG_FILE_PARAM, None)
            return func(config=build_config(flags, values, file), **kwargs)

        params = [*own, *added]
        command.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command  # type: ignore[return-value]

    return decorate
