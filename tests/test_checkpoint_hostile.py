"""Checkpoints get digests and field checks like bundles (issue 16, class 6): a damaged
or edited one is refused by name, never a traceback, and ``--resume`` never continues
from a state it cannot trust."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from cli_process import melu, one_line
from heads import CHEAP_HEAD, CHEAP_HEAD_FLAGS
from safetensors.torch import load_file, save_file

from melu.config import Config, TrainConfig
from melu.errors import BundleError
from melu.prepare import Prepared
from melu.training.checkpoint import load_checkpoint, resign
from melu.training.train import train

pytestmark = pytest.mark.usefixtures("one_thread")
FLAGS = ["--max-tasks-per-epoch", "96", *CHEAP_HEAD_FLAGS]


def config(epochs: int) -> Config:
    return Config(train=TrainConfig(max_tasks_per_epoch=96, epochs=epochs, **CHEAP_HEAD))


@pytest.fixture(scope="module")
def trained(ml100k: Prepared, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("run")
    train(config(1), ml100k, out)
    return out


def run_copy(trained: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(trained, tmp_path / "run"))


def edit_state(run: Path, change: Callable[[dict[str, Any]], None]) -> None:
    path = run / "checkpoint" / "state.json"
    state = json.loads(path.read_text())
    change(state)
    path.write_text(json.dumps(state))


def edit_tensors(run: Path, change: Callable[[dict[str, torch.Tensor]], None]) -> None:
    path = run / "checkpoint" / "tensors.safetensors"
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path))


def first(tensors: dict[str, torch.Tensor], prefix: str, suffix: str = "") -> str:
    return next(k for k in tensors if k.startswith(prefix) and k.endswith(suffix))


def test_a_flipped_bit_in_the_tensors_is_refused_by_melu_train_resume(
    trained: Path, tmp_path: Path, ml100k: Prepared, data_dir: Path
) -> None:
    run = run_copy(trained, tmp_path)
    path = run / "checkpoint" / "tensors.safetensors"
    data = bytearray(path.read_bytes())
    data[-7] ^= 0x04  # inside a weight: the file still parses, to different numbers
    path.write_bytes(bytes(data))
    assert ml100k.path is not None
    done = melu(
        "train", "--resume", "--out", str(run), "--epochs", "2", *FLAGS,
        "--data-dir", str(data_dir), "--cache-dir", str(ml100k.path.parent),
    )  # fmt: skip
    assert "tensors.safetensors: content does not match the sha256" in one_line(done, 1)
    assert (
        not (run / "model").exists()
        or (run / "model").stat().st_mtime == (trained / "model").stat().st_mtime
    )


def test_an_edited_epoch_is_refused(trained: Path, tmp_path: Path, ml100k: Prepared) -> None:
    run = run_copy(trained, tmp_path)
    edit_state(run, lambda s: s["train_state"].update(epoch=10**9))
    with pytest.raises(BundleError, match=r"state\.json: edited since it was written"):
        train(config(2), ml100k, run, resume=True)
    resign(run / "checkpoint")  # even with a matching record the epoch must fit the history
    with pytest.raises(BundleError, match=r"epoch 1000000000 does not match the history"):
        train(config(2), ml100k, run, resume=True)


def test_a_checkpoint_without_digests_is_refused(trained: Path, tmp_path: Path) -> None:
    run = run_copy(trained, tmp_path)
    edit_state(run, lambda s: s.pop("digests"))
    with pytest.raises(BundleError, match=r"no digest record.*without --resume"):
        load_checkpoint(run / "checkpoint")


STATE_PROBES: list[tuple[Callable[[dict[str, Any]], Any], str]] = [
    (lambda s: s["train_state"].update(epoch="x"), r"train_state\.epoch must be a whole number"),
    (lambda s: s["train_state"].pop("bad_epochs"), r"train_state\.bad_epochs must be a whole"),
    (lambda s: s.update(history={"epoch": 1}), r"history must be a JSON list"),
    (lambda s: s["train_state"].update(best_mae="nan"), r"best_mae must be a finite number"),
    (lambda s: s["train_state"].update(best_epoch=5), r"best_epoch / bad_epochs exceed"),
    (lambda s: s.update(rng=[]), r"rng must be a JSON dict"),
]


@pytest.mark.parametrize(("change", "message"), STATE_PROBES)
def test_malformed_state_fields_are_refused_by_name(
    trained: Path, tmp_path: Path, ml100k: Prepared, change: Callable[..., Any], message: str
) -> None:
    run = run_copy(trained, tmp_path)
    edit_state(run, change)
    resign(run / "checkpoint")
    with pytest.raises(BundleError, match=message):
        train(config(2), ml100k, run, resume=True)


def _rename_adam(t: dict[str, torch.Tensor]) -> None:
    name = first(t, "adam.", ".exp_avg")
    t[name.replace(".exp_avg", ".exp_avgx")] = t.pop(name)


TENSOR_PROBES: list[tuple[Callable[[dict[str, torch.Tensor]], Any], str]] = [
    (_rename_adam, r"'adam\.\d+\.exp_avgx' is not an optimiser state"),
    (lambda t: t.update({"adam.x.step": torch.tensor(1.0)}), r"'adam\.x\.step' is not"),
    (lambda t: t.update({"adam.99999.step": torch.tensor(1.0)}), r"'adam\.99999\.step' is not"),
    (
        lambda t: t.update({(n := first(t, "adam.", ".exp_avg_sq")): t[n].reshape(-1)[:1]}),
        r"adam\.\d+\.exp_avg_sq has shape \(1,\), expected",
    ),
    (lambda t: t.pop(first(t, "adam.", ".step")), r"adam\.\d+ lacks step"),
    (lambda t: t[first(t, "param.")].fill_(float("inf")), r"must be finite floats"),
    (lambda t: t.pop(first(t, "best.")), r"best\.\* do not match the model"),
]


@pytest.mark.parametrize(("change", "message"), TENSOR_PROBES)
def test_malformed_optimiser_and_weight_tensors_are_refused_by_name(
    trained: Path, tmp_path: Path, ml100k: Prepared, change: Callable[..., Any], message: str
) -> None:
    run = run_copy(trained, tmp_path)
    edit_tensors(run, change)
    resign(run / "checkpoint")
    with pytest.raises(BundleError, match=r"tensors\.safetensors: .*" + message):
        train(config(2), ml100k, run, resume=True)


def test_a_sound_checkpoint_still_resumes(trained: Path, tmp_path: Path, ml100k: Prepared) -> None:
    run = run_copy(trained, tmp_path)
    assert train(config(2), ml100k, run, resume=True).history[-1]["epoch"] == 2


def test_resuming_may_change_how_the_head_is_trained_but_not_the_rating_part(
    trained: Path, tmp_path: Path, ml100k: Prepared
) -> None:
    """The ranking head is trained after the rating part and is never checkpointed, so its
    ``rank_*`` settings may change on resume; an outer-loop setting may not."""
    run = run_copy(trained, tmp_path)
    head = config(1).replace(train=config(1).train.replace(rank_epochs=1, rank_patience=1))
    train(head, ml100k, run, resume=True)
    history = (run / "rank_metrics.jsonl").read_text().splitlines()
    assert [json.loads(row)["epoch"] for row in history] == [0, 1]  # the new head setting
    outer = config(1).replace(train=config(1).train.replace(outer_lr=2e-3))
    with pytest.raises(BundleError, match=r"cannot resume: train setting\(s\) outer_lr differ"):
        train(outer, ml100k, run, resume=True)
