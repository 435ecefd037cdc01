"""Hostile flags and environment (issue 16, class 9): every one is a single ``error:``
line from a real ``melu`` process (exit 2 for a bad value, 1 for a port or host that
cannot be listened on), refused in the layer that converts settings, never a traceback."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_process import melu, one_line

from melu.config import DataConfig, TrainConfig
from melu.config_fields import max_threads
from melu.errors import ConfigError


@pytest.fixture(scope="module")
def bundle(untrained_bundle: Path) -> Path:
    return untrained_bundle


@pytest.fixture
def deep_json(tmp_path: Path) -> Path:
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    return path


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (
            ["train", "--seed", "18446744073709551616"],
            "--seed': train.seed must be in 0..4294967295",
        ),
        (["train", "--data-seed", "-1"], "data.seed must be in 0..4294967295"),
        (["train", "--embedding-dim", str(2**70)], "model.embedding_dim must be in"),
        (["train", "--config", "{deep}"], "nested too deeply to be a settings file"),
        (["train", "--threads", "10000"], f"torch threads must be 1..{max_threads()}"),
        (["recommend", "--model", "{bundle}", "--rate", "9223372036854775808=5"], "--rate"),
        (["recommend", "--model", "{bundle}", "--rate", "1e3=5"], "--rate"),
        (["recommend", "--model", "{bundle}", "--rate", "50=nan"], "--rate"),
        (["serve", "--model", "{bundle}", "--log-level", "bogus"], "--log-level: 'bogus'"),
    ],
)
def test_hostile_flags_are_one_line_and_exit_2(
    args: list[str], needle: str, bundle: Path, deep_json: Path, tmp_path: Path
) -> None:
    argv = [a.replace("{bundle}", str(bundle)).replace("{deep}", str(deep_json)) for a in args]
    extra = ["--out", str(tmp_path / "run")] if argv[0] == "train" else []
    assert needle in one_line(melu(*argv, *extra), 2)
    assert not (tmp_path / "run" / "checkpoint").exists()


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_serve_on_a_port_in_use_is_one_line_and_exit_1(bundle: Path, taken_port: int) -> None:
    done = melu("serve", "--model", str(bundle), "--port", str(taken_port), timeout=60)
    assert f"cannot listen on 127.0.0.1:{taken_port} (Address already in use)" in one_line(done, 1)
    assert done.stdout == ""


def test_serve_on_a_host_that_is_not_an_address_is_one_line_and_exit_1(bundle: Path) -> None:
    done = melu("serve", "--model", str(bundle), "--host", "999.1.1.1", timeout=60)
    assert "cannot listen on 999.1.1.1:8000" in one_line(done, 1)


def test_too_many_torch_threads_for_the_service_are_refused_with_the_bound(
    bundle: Path,
) -> None:
    done = melu("serve", "--model", str(bundle), env={"MELU_TORCH_THREADS": "10000"}, timeout=60)
    error = one_line(done, 2)
    assert "MELU_TORCH_THREADS" in error and f"1..{max_threads()}" in error, error


def test_every_int_setting_fits_int64_and_seeds_32_bits() -> None:
    with pytest.raises(ConfigError, match=r"train\.seed must be in 0\.\.4294967295"):
        TrainConfig(seed=2**64)
    with pytest.raises(ConfigError, match=r"data\.min_ratings must be in"):
        DataConfig(min_ratings=2**63)
    assert TrainConfig(seed=2**32 - 1).seed == 2**32 - 1
