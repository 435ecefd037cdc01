"""Settings declared once: every config field is a flag with help; config files, overrides,
validation in melu.config only (a bad value is a usage error naming its flag)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from melu.cli import app
from melu.cli.settings import config_flags, config_options, config_overrides
from melu.config import SECTIONS, Config, DataConfig, MetaConfig, ModelConfig, TrainConfig
from melu.errors import ConfigError

# every flag these commands had before the flags were generated (README, tests, scripts)
TRAIN_FLAGS = [
    "--dataset",
    "--data-dir",
    "--out",
    "--epochs",
    "--meta-batch",
    "--inner-steps",
    "--inner-lr",
    "--outer-lr",
    "--first-order",
    "--no-first-order",
    "--learn-inner-lr",
    "--fast-params",
    "--device",
    "--amp",
    "--weight-decay",
    "--seed",
    "--user-split",
    "--query-order",
    "--item-id",
    "--no-item-id",
    "--data-seed",
    "--patience",
    "--resume",
    "--cache-dir",
    "--threads",
    "--max-tasks-per-epoch",
    "--dist-timeout",
    "--float64",
]
PREPARE_FLAGS = [
    "--dataset",
    "--data-dir",
    "--out",
    "--cache-dir",
    "--user-split",
    "--query-order",
    "--seed",
    "--new-item-fraction",
    "--train-fraction",
    "--validation-fraction",
    "--min-ratings",
    "--max-ratings",
    "--query-size",
    "--min-support",
    "--max-support",
    "--zip-prefix",
    "--extra-item-info",
    "--no-extra-item-info",
    "--item-id",
    "--no-item-id",
    "--item-id-min-ratings",
    "--rebuild",
]


def command_flags(name: str) -> set[str]:
    group = typer.main.get_command(app)
    command = group.commands[name]  # type: ignore[attr-defined]
    return {opt for p in command.params for opt in [*p.opts, *p.secondary_opts]}


def probe(*selectors: str, **options: Any) -> tuple[typer.Typer, list[Config]]:
    """A one-command app whose command records the Config it is given."""
    seen: list[Config] = []
    cli = typer.Typer()

    @cli.command()
    @config_options(*selectors, **options)
    def show(config: Config, out: str = "x") -> None:
        seen.append(config)

    return cli, seen


def test_every_field_is_one_flag_with_help_and_old_flags_still_work() -> None:
    flags = config_flags()
    fields = [f"{s}.{f.name}" for s, c in SECTIONS.items() for f in dataclasses.fields(c)]
    assert [f.key for f in flags] == fields
    assert len({f.flag for f in flags}) == len(flags)
    assert all(f.param.annotation.__metadata__[0].help for f in flags)
    assert set(TRAIN_FLAGS) <= command_flags("train")
    assert set(PREPARE_FLAGS) <= command_flags("prepare")
    assert {"--inner-steps", "--inner-lr"} <= command_flags("evaluate")
    assert {"--dataset", "--device"} <= command_flags("quickstart")


def test_help_explains_each_option_with_its_default() -> None:
    result = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    lines = {line.split()[1]: line for line in result.output.splitlines() if "│ --" in line}
    assert "Inner-loop learning rate." in lines["--inner-lr"]
    assert "[default: 0.5]" in lines["--inner-lr"]
    assert "[mlp|head|all|user|user_mlp]" in lines["--fast-params"]
    assert "[default: user]" in lines["--fast-params"] and "[default: 16]" in lines["--factors"]
    assert "[default: 64,64]" in lines["--hidden"]


def test_flags_build_the_config_and_a_file_is_overridden_by_given_flags(tmp_path: Path) -> None:
    cli, seen = probe()
    args = ["--epochs", "3", "--hidden", "8,4", "--no-item-id", "--data-seed", "7", "--seed", "2"]
    assert CliRunner().invoke(cli, args).exit_code == 0
    expected = Config(
        data=DataConfig(item_id_feature=False, seed=7),
        model=ModelConfig(hidden=(8, 4)),
        train=TrainConfig(epochs=3, seed=2),
    )
    assert seen.pop() == expected
    file = tmp_path / "config.json"
    file.write_text(json.dumps(expected.to_dict()))
    assert CliRunner().invoke(cli, ["--config", str(file), "--epochs", "4"]).exit_code == 0
    assert seen.pop() == expected.replace(train=expected.train.replace(epochs=4))
    bundle_style = {"schema_version": 1, "config": expected.to_dict()}
    file.write_text(json.dumps(bundle_style))
    assert CliRunner().invoke(cli, ["--config", str(file)]).exit_code == 0
    assert seen.pop() == expected


@pytest.mark.parametrize(
    ("args", "flag", "message"),
    [
        (["--fast-params", "everything"], "--fast-params", "model.fast_params must be one of"),
        (["--inner-lr", "-1"], "--inner-lr", "meta.inner_lr must be > 0"),
        (["--hidden", "64,x"], "--hidden", "comma-separated list of integers"),
        (["--max-tasks-per-epoch", "0"], "--max-tasks-per-epoch", "must be >= 1"),
        (["--device", "gpu"], "--device", "train.device must be one of auto, cpu, cuda"),
    ],
)
def test_a_bad_value_is_a_usage_error_naming_its_flag(
    args: list[str], flag: str, message: str
) -> None:
    cli, seen = probe()
    result = CliRunner().invoke(cli, args, env={"COLUMNS": "300"})
    assert result.exit_code == 2 and not seen
    assert f"Invalid value for '{flag}'" in result.output and message in result.output


def test_a_bad_file_names_config(tmp_path: Path) -> None:
    cli, seen = probe()
    file = tmp_path / "c.json"
    for body in ('{"meta": {"inner_lr": 0}}', '{"meta": {"speed": 1}}', "{"):
        file.write_text(body)
        result = CliRunner().invoke(cli, ["--config", str(file)], env={"COLUMNS": "300"})
        assert result.exit_code == 2 and "Invalid value for '--config'" in result.output
    assert not seen


def test_selected_fields_aliases_and_overrides() -> None:
    cli, seen = probe("data", aliases={"data.seed": ("--seed",)}, config_file=False)
    assert CliRunner().invoke(cli, ["--seed", "5"]).exit_code == 0
    assert seen.pop().data.seed == 5
    some = typer.Typer()
    given: list[dict[str, Any]] = []

    @some.command()
    @config_overrides("meta.inner_steps", "meta.inner_lr")
    def tune(overrides: dict[str, Any]) -> None:
        given.append(overrides)

    assert CliRunner().invoke(some, ["--inner-lr", "0.1"]).exit_code == 0
    assert given.pop() == {"meta.inner_lr": 0.1}
    assert CliRunner().invoke(some, ["--inner-steps", "-1"]).exit_code == 2 and not given
    with pytest.raises(ValueError, match="no such section or field"):
        config_options("meta.speed")
    cli, seen = probe(exclude=("train.seed", "data.user_split"), config_file=False)
    assert CliRunner().invoke(cli, ["--seed", "5"]).exit_code == 2  # no such option now
    assert CliRunner().invoke(cli, ["--data-seed", "5"]).exit_code == 0
    assert seen.pop().data.seed == 5
    with pytest.raises(ValueError, match="no such section or field"):
        config_options(exclude=("train.speed",))
    with pytest.raises(ValueError, match="used twice"):
        config_options(aliases={"data.seed": ("--seed",)})  # --seed is train.seed


def test_construction_validates_types_choices_and_ranges() -> None:
    with pytest.raises(ConfigError, match=r"data.user_split must be one of time, random") as info:
        DataConfig(user_split="weekly")  # type: ignore[arg-type]
    assert info.value.field == "data.user_split"
    with pytest.raises(ConfigError, match=r"meta\.inner_steps must be an integer") as info:
        MetaConfig(inner_steps=1.5)  # type: ignore[arg-type]
    assert info.value.field == "meta.inner_steps"
    with pytest.raises(ConfigError, match=r"train\.weight_decay must be >= 0"):
        TrainConfig(weight_decay=-1.0)
    numpy = MetaConfig(inner_steps=np.int64(3), inner_lr=np.float32(0.5))  # type: ignore[arg-type]
    assert type(numpy.inner_steps) is int and type(numpy.inner_lr) is float
    assert ModelConfig(hidden=[8]).hidden == (8,)  # type: ignore[arg-type]
    config = Config(train=TrainConfig(device="cuda:1", max_tasks_per_epoch=5))
    assert Config.from_dict(json.loads(json.dumps(config.to_dict()))) == config
