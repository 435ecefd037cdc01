"""Data-parallel meta-training under real ``torchrun`` (gloo, CPU) on real ml-100k.

Two ranks must reach the single-process weights (same seed, same global meta-batch), resume
from a checkpoint, and a failing rank must bring the job down with its error, not hang.
Also: large meta-batches in bounded passes, bf16 autocast, data without demographics.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from heads import CHEAP_HEAD, CHEAP_HEAD_FLAGS
from safetensors.torch import load_file

from melu.config import Config, DataConfig, MetaConfig, TrainConfig
from melu.prepare import Prepared, load_prepared, prepare
from melu.training.distributed import FAIL_RANK_ENV, DistContext, contiguous_range, shard
from melu.training.train import MetaTrainer, train

# 65 tasks at B = 32: batches of 32, 32 and 1 — rank 1's shard of the last one is empty
SMALL: dict[str, Any] = {
    "meta_batch": 32,
    "max_tasks_per_epoch": 65,
    "patience": 5,
    "seed": 3,
    **CHEAP_HEAD,
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def float64() -> Iterator[None]:
    """Exact-equivalence checks run in float64: in float32, Adam's g / (√v + ε) turns the
    rounding noise of gradient entries that cancel to ~1e-9 (a nearly dead ReLU unit) into
    steps of ~lr / 10, so the weights of two correct runs differ by ~1e-4 there."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def torchrun(
    args: list[str], data_dir: Path, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``torchrun --nproc_per_node=2 -m melu train ARGS`` on 127.0.0.1, captured."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    launcher += ["--master_addr=127.0.0.1", f"--master_port={free_port()}"]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "MELU_DATA_DIR": str(data_dir), **(env or {})}
    return subprocess.run(
        [*launcher, "-m", "melu", "train", "--device", "cpu", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


def cli_args(prepared: Prepared, out: Path, epochs: int) -> list[str]:
    assert prepared.path is not None
    return [
        *("--cache-dir", str(prepared.path.parent), "--out", str(out)),
        *("--epochs", str(epochs), "--meta-batch", str(SMALL["meta_batch"])),
        *("--max-tasks-per-epoch", str(SMALL["max_tasks_per_epoch"]), "--seed", str(SMALL["seed"])),
        *CHEAP_HEAD_FLAGS,
        "--learn-inner-lr",  # Meta-SGD: the inner rates are reduced across ranks too
        "--float64",
    ]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder))


def assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], tol: float) -> None:
    assert a.keys() == b.keys() and a
    worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].numel())
    assert worst <= tol, worst


@pytest.mark.slow
def test_two_ranks_resumed_match_one_process(
    ml100k: Prepared, data_dir: Path, tmp_path: Path, float64: None
) -> None:
    config = Config(meta=MetaConfig(learn_inner_lr=True), train=TrainConfig(epochs=2, **SMALL))
    one = train(config, ml100k, tmp_path / "one", device="cpu")
    two = tmp_path / "two"
    first = torchrun(cli_args(ml100k, two, epochs=1), data_dir)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "data-parallel: 2 ranks on cpu" in first.stdout
    resumed = torchrun([*cli_args(ml100k, two, epochs=2), "--resume"], data_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed after epoch 1" in resumed.stdout
    # rank 0 alone wrote; nothing half-written was left behind
    assert sorted(p.name for p in two.iterdir()) == [
        "checkpoint",
        "metrics.jsonl",
        "model",
        "rank_metrics.jsonl",
    ]
    assert_close(
        weights(one.bundle / "weights.safetensors"),
        weights(two / "model/weights.safetensors"),
        1e-5,
    )
    final = {k: v for k, v in weights(tmp_path / "one/checkpoint/tensors.safetensors").items()}
    other = weights(two / "checkpoint/tensors.safetensors")
    assert_close(final, {k: other[k] for k in final}, 1e-5)  # last params, rates, Adam moments
    rows = [pd.read_json(p / "metrics.jsonl", lines=True) for p in (tmp_path / "one", two)]
    assert list(rows[1]["epoch"]) == [1, 2]
    np.testing.assert_allclose(rows[0]["train_loss"], rows[1]["train_loss"], rtol=1e-5)
    np.testing.assert_allclose(rows[0]["val_mae_after"], rows[1]["val_mae_after"], rtol=1e-5)


@pytest.mark.slow
def test_a_failing_rank_brings_the_job_down_with_its_error(
    ml100k: Prepared, data_dir: Path, tmp_path: Path
) -> None:
    start = time.monotonic()
    args = [*cli_args(ml100k, tmp_path / "run", epochs=1), "--dist-timeout", "30"]
    done = torchrun(args, data_dir, timeout=120, env={FAIL_RANK_ENV: "1"})
    assert done.returncode != 0
    assert "rank 1 fails on purpose after step 1" in done.stdout + done.stderr
    assert time.monotonic() - start < 60  # torchrun stopped rank 0; no collective timeout
    assert not (tmp_path / "run" / "model").exists()


def test_shards_are_disjoint_and_cover_the_batch() -> None:
    batch = torch.arange(7)
    parts = [shard(batch, DistContext(rank=r, world_size=3)) for r in range(3)]
    assert sorted(torch.cat(parts).tolist()) == list(range(7))
    ranges = [contiguous_range(10, DistContext(rank=r, world_size=4)) for r in range(4)]
    assert [i for r in ranges for i in range(10)[r]] == list(range(10))


def test_a_big_meta_batch_in_bounded_passes_gives_the_same_step(
    ml100k: Prepared, float64: None
) -> None:
    config = Config(train=TrainConfig(meta_batch=64, seed=1))
    whole = MetaTrainer(config, ml100k, torch.device("cpu"))
    passes = MetaTrainer(config, ml100k, torch.device("cpu"), max_tasks_per_pass=20)
    batch = whole.meta_batches(1)[0]
    a, b = whole.step(batch), passes.step(batch)
    assert a["tasks"] == b["tasks"] == 64
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-12)
    for k in whole.params:
        torch.testing.assert_close(whole.params[k], passes.params[k], atol=1e-12, rtol=1e-10)


def test_an_empty_shard_still_steps_with_the_others(ml100k: Prepared) -> None:
    trainer = MetaTrainer(Config(), ml100k, torch.device("cpu"))
    reduced: list[int] = []
    out = trainer.step(
        torch.zeros(0, dtype=torch.long),
        denominator=32,
        reduce_grads=lambda ps: reduced.append(len(ps)),
    )
    assert out["tasks"] == 0 and reduced == [len(trainer.trainable)]


def test_bf16_autocast_trains_with_a_finite_loss(ml100k: Prepared, tmp_path: Path) -> None:
    config = Config(train=TrainConfig(epochs=1, amp="bf16", max_tasks_per_epoch=32, **CHEAP_HEAD))
    result = train(config, ml100k, tmp_path, device="cpu")
    row = result.history[0]
    assert np.isfinite([row["train_loss"], row["val_mae_after"], row["val_mae_before"]]).all()


def write_csv_layout(data_dir: Path, out: Path) -> None:
    """Real ml-100k rewritten in the ml-25m layout (ratings.csv, movies.csv): no users file."""
    src = data_dir / "ml-100k"
    ratings = pd.read_csv(
        src / "u.data", sep="\t", names=["userId", "movieId", "rating", "timestamp"]
    )
    names = pd.read_csv(src / "u.genre", sep="|", names=["name", "id"], encoding="latin-1")
    items = pd.read_csv(src / "u.item", sep="|", header=None, encoding="latin-1")
    flags = items.iloc[:, 5:].to_numpy(dtype=bool)
    genres = ["|".join(names["name"][row]) or "(no genres listed)" for row in flags]
    out.mkdir(parents=True)
    ratings.to_csv(out / "ratings.csv", index=False)
    pd.DataFrame({"movieId": items[0], "title": items[1], "genres": genres}).to_csv(
        out / "movies.csv", index=False
    )


def test_data_without_demographics_trains_on_item_features_from_mmap(
    data_dir: Path, tmp_path: Path
) -> None:
    write_csv_layout(data_dir, tmp_path / "data" / "ml-25m")
    built = prepare(DataConfig(dataset="ml-25m"), tmp_path / "data", tmp_path / "cache")
    assert built.path is not None and built.features.user_fields == ()
    mapped = load_prepared(built.path, mmap=True)
    config = Config(
        data=mapped.config, train=TrainConfig(epochs=1, max_tasks_per_epoch=64, **CHEAP_HEAD)
    )
    result = train(config, mapped, tmp_path / "run", device="cpu")
    assert (result.bundle / "weights.safetensors").is_file()
    assert np.isfinite(result.history[0]["val_mae_after"])
