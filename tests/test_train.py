"""Meta-training on real ml-100k: it learns, it resumes exactly, it never half-writes."""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from heads import CHEAP_HEAD, CHEAP_HEAD_FLAGS
from safetensors.torch import load_file

from melu.cli.app import run_app
from melu.config import Config, MetaConfig, TrainConfig
from melu.errors import BundleError, TrainingDiverged
from melu.prepare import Prepared
from melu.training.checkpoint import load_checkpoint, resign
from melu.training.meta_trainer import size_split
from melu.training.train import MetaTrainer, train


class Killed(Exception):
    """Stands in for a kill: raised from the progress callback mid-epoch."""


pytestmark = pytest.mark.usefixtures("one_thread")


def small(**train: Any) -> Config:
    return Config(train=TrainConfig(**{"max_tasks_per_epoch": 96, **CHEAP_HEAD, **train}))


def test_training_adapts_below_before_and_below_the_global_mean(
    ml100k: Prepared, tmp_path: Path
) -> None:
    result = train(
        Config(train=TrainConfig(epochs=3, patience=3, **CHEAP_HEAD)),
        ml100k,
        tmp_path,
    )
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3] == [r["epoch"] for r in result.history]
    best = result.metrics
    assert best["val_mae_after"] < best["val_mae_before"]
    assert best["val_mae_after"] < best["val_mae_global_mean"]
    assert rows[-1]["train_support_after"] < rows[-1]["train_support_before"]
    assert all(r["tasks_per_s"] > 0 and r["seconds"] > 0 for r in rows)
    assert result.bundle == tmp_path / "model" and (result.bundle / "weights.safetensors").is_file()
    assert (
        json.loads((result.bundle / "metrics.json").read_text())["best_epoch"] == result.best_epoch
    )


def test_resume_reaches_the_same_weights_as_an_uninterrupted_run(
    ml100k: Prepared, tmp_path: Path
) -> None:
    config = small(epochs=3, patience=3)
    straight = train(config, ml100k, tmp_path / "a")

    def kill(event: dict[str, Any]) -> None:
        if event["event"] == "batch" and event["epoch"] == 2 and event["batch"] == 2:
            raise Killed

    with pytest.raises(Killed):
        train(config, ml100k, tmp_path / "b", progress=kill)
    # the kill left a complete checkpoint of epoch 1, no bundle and no temp folders
    assert not (tmp_path / "b" / "model").exists()
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["checkpoint", "metrics.jsonl"]
    _, state = load_checkpoint(tmp_path / "b" / "checkpoint")
    assert state["train_state"]["epoch"] == 1
    resumed = train(config, ml100k, tmp_path / "b", resume=True)
    a = load_file(str(straight.bundle / "weights.safetensors"))
    b = load_file(str(resumed.bundle / "weights.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["train_loss"] for r in straight.history] == [r["train_loss"] for r in resumed.history]


def test_meta_batches_are_seeded_disjoint_and_cover_the_epoch(ml100k: Prepared) -> None:
    trainer = MetaTrainer(small(meta_batch=32), ml100k, torch.device("cpu"))
    one, again, other = trainer.meta_batches(1), trainer.meta_batches(1), trainer.meta_batches(2)
    assert all(torch.equal(x, y) for x, y in zip(one, again, strict=True))
    assert not torch.equal(torch.cat(one), torch.cat(other))
    flat = torch.cat(one)
    assert len(flat) == 96 == len(set(flat.tolist())) and max(len(b) for b in one) == 32


def test_meta_sgd_saves_learned_inner_rates(ml100k: Prepared, tmp_path: Path) -> None:
    config = small(epochs=1).replace(meta=MetaConfig(learn_inner_lr=True))
    result = train(config, ml100k, tmp_path)
    tensors = load_file(str(result.bundle / "weights.safetensors"))
    rates = {k: v for k, v in tensors.items() if k.startswith("inner_lr.")}
    assert rates and {k.removeprefix("inner_lr.") for k in rates} == {"user.bias", "user.factor"}
    assert any(not torch.all(v == config.meta.inner_lr) for v in rates.values())  # learned


def test_cli_trains_and_rejects_bad_flags(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = ["--cache-dir", str(tmp_path / "cache")]
    out = ["--out", str(tmp_path / "run")]
    argv = ["train", "--data-dir", str(data_dir), *out, *cache, "--epochs", "1", *CHEAP_HEAD_FLAGS]
    assert run_app(argv) == 0
    assert f"model bundle: {tmp_path / 'run' / 'model'}" in capsys.readouterr().out
    assert run_app(["train", *out, "--fast-params", "everything"]) == 2
    assert run_app(["train", *out, "--inner-lr", "-1"]) == 2
    assert run_app(["train", *out, "--amp", "fp8"]) == 2
    assert "amp" in capsys.readouterr().err
    assert run_app(["train", *out, "--data-dir", str(tmp_path / "nowhere")]) == 1
    assert "nowhere" in capsys.readouterr().err


def test_resume_refuses_a_changed_protocol_setting_or_data(
    ml100k: Prepared, tmp_path: Path
) -> None:
    """A resumed run must continue the same experiment: other data, protocol or outer-loop
    settings are refused with a message naming them; epochs/patience/device may change."""
    first = small(epochs=1, patience=3)
    train(first, ml100k, tmp_path)
    changed_data = first.replace(data=first.data.replace(query_order="time"))
    with pytest.raises(BundleError, match=r"data setting.*query_order"):
        train(changed_data, ml100k, tmp_path, resume=True)
    changed_train = first.replace(train=first.train.replace(meta_batch=64))
    with pytest.raises(BundleError, match=r"train setting.*meta_batch"):
        train(changed_train, ml100k, tmp_path, resume=True)
    other_files = dataclasses.replace(ml100k, fingerprint="0" * 64)
    with pytest.raises(BundleError, match="data files changed"):
        train(first, other_files, tmp_path, resume=True)
    longer = first.replace(train=first.train.replace(epochs=2, patience=5))
    assert [h["epoch"] for h in train(longer, ml100k, tmp_path, resume=True).history] == [1, 2]


def test_resume_after_a_kill_between_renames_and_without_a_checkpoint(
    ml100k: Prepared, tmp_path: Path
) -> None:
    """The checkpoint replaced by a run killed between its two renames is found again; a
    --resume with no checkpoint at all is refused, never a silent restart at epoch 1."""
    config = small(epochs=1, patience=3)
    with pytest.raises(BundleError, match="nothing to resume"):
        train(config, ml100k, tmp_path, resume=True)
    train(config, ml100k, tmp_path)
    (tmp_path / "checkpoint").rename(tmp_path / ".checkpoint.old")  # the on-disk state of the kill
    longer = config.replace(train=config.train.replace(epochs=2))
    assert [h["epoch"] for h in train(longer, ml100k, tmp_path, resume=True).history] == [1, 2]
    assert (tmp_path / "checkpoint").is_dir() and not (tmp_path / ".checkpoint.old").exists()


@pytest.mark.parametrize("changes", [{"train": {"outer_lr": 1e30}}, {"meta": {"inner_lr": 1e308}}])
def test_a_diverged_run_stops_with_a_clear_error_and_writes_no_model(
    ml100k: Prepared, tmp_path: Path, changes: dict[str, dict[str, float]]
) -> None:
    config = small(epochs=2, patience=3)
    config = config.replace(
        **{section: getattr(config, section).replace(**v) for section, v in changes.items()}
    )
    with pytest.raises(TrainingDiverged, match=r"epoch 1: training diverged.*learning rates"):
        train(config, ml100k, tmp_path)
    assert not (tmp_path / "model").exists() and not (tmp_path / "checkpoint").exists()
    jsonl = tmp_path / "metrics.jsonl"
    assert not jsonl.exists() or all(json.loads(x) for x in jsonl.read_text().splitlines())


def test_a_real_melu_train_killed_mid_run_resumes_to_the_uninterrupted_result(
    data_dir: Path, tmp_path: Path
) -> None:
    """SIGKILL a real ``melu train`` process once its first checkpoint exists (mid-epoch 2
    or later), resume it, and reach the weights of a run that was never killed."""
    import signal
    import subprocess
    import sys
    import time

    def command(out: Path, *extra: str) -> list[str]:
        return [
            sys.executable, "-m", "melu", "train", "--data-dir", str(data_dir),
            "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--epochs", "4",
            "--patience", "4", "--max-tasks-per-epoch", "160", *CHEAP_HEAD_FLAGS, *extra,
        ]  # fmt: skip

    straight = subprocess.run(command(tmp_path / "a"), capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr[-2000:]
    proc = subprocess.Popen(
        command(tmp_path / "b"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 300
    while not (tmp_path / "b" / "checkpoint" / "state.json").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (tmp_path / "b" / "model").exists()
    resumed = subprocess.run(command(tmp_path / "b", "--resume"), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = load_file(str(tmp_path / "a" / "model" / "weights.safetensors"))
    b = load_file(str(tmp_path / "b" / "model" / "weights.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("damage", ["field", "tensor"])
def test_a_checkpoint_missing_a_field_or_tensor_is_refused_by_name(
    ml100k: Prepared, tmp_path: Path, damage: str
) -> None:
    from safetensors.torch import save_file

    config = small(epochs=1, patience=3)
    train(config, ml100k, tmp_path)
    ckpt = tmp_path / "checkpoint"
    if damage == "field":
        state = json.loads((ckpt / "state.json").read_text())
        del state["train_state"]
        (ckpt / "state.json").write_text(json.dumps(state))
        match = "train_state must be a JSON dict"
    else:
        tensors = load_file(str(ckpt / "tensors.safetensors"))
        del tensors[next(k for k in tensors if k.startswith("param."))]
        save_file(tensors, str(ckpt / "tensors.safetensors"))
        match = "is missing or misshapen"
    resign(ckpt)  # the record matches the damage: the field checks are what it meets
    longer = config.replace(train=config.train.replace(epochs=2))
    with pytest.raises(BundleError, match=match):
        train(longer, ml100k, tmp_path, resume=True)


@pytest.mark.parametrize("buckets", [1, 2, 3])
def test_size_split_pads_fewest_rows_of_every_cut(buckets: int) -> None:
    """The trainer's size buckets: no way to cut the sorted sizes into at most ``buckets``
    runs pads fewer rows than ``size_split``'s cuts (checked against every cut)."""

    def padded(cuts: list[int]) -> int:
        edges = [0, *cuts, len(sizes)]
        return sum((b - a) * sizes[b - 1] for a, b in itertools.pairwise(edges))

    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        sizes = sorted(torch.randint(3, 91, (12,), generator=gen).tolist())
        cuts = size_split(torch.tensor(sizes), buckets)
        assert len(cuts) < buckets and cuts == sorted(set(cuts)) and 0 not in cuts
        every = (list(c) for k in range(buckets) for c in itertools.combinations(range(1, 12), k))
        assert padded(cuts) == min(padded(c) for c in every)
    assert size_split(torch.zeros(0, dtype=torch.long), 2) == []
    assert size_split(torch.tensor([7]), 2) == [] and size_split(torch.tensor([4, 4]), 2) == []
