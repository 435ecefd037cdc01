"""Bundles that load but would answer NaN, or crash (issue 16, class 5): refused at load
by name (a probe request at warm-up must give finite scores), never served."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from cli_process import melu, one_line
from safetensors.torch import load_file, save_file

from melu.bundle import load_bundle
from melu.bundle_checks import digests_of
from melu.cli.app import run_app
from melu.errors import BundleError
from melu.serving import Recommender


@pytest.fixture(scope="module")
def saved(untrained_bundle: Path) -> Path:
    return untrained_bundle


def forged(saved: Path, tmp_path: Path) -> Path:
    """A copy whose damage will carry freshly recorded digests (see ``sign``)."""
    return Path(shutil.copytree(saved, tmp_path / "model"))


def sign(path: Path) -> None:
    info = json.loads((path / "config.json").read_text())
    info["digests"] = digests_of(path)
    (path / "config.json").write_text(json.dumps(info))


def edit_config(path: Path, section: str, field: str, value: object) -> None:
    info = json.loads((path / "config.json").read_text())
    info["config"][section][field] = value
    (path / "config.json").write_text(json.dumps(info))


def test_the_probe_passes_a_sound_bundle(saved: Path) -> None:
    recommender = Recommender.from_bundle(saved, onboarding=False)
    assert len(recommender.recommend({}, [(50, 5.0)], k=3).items) == 3


def test_huge_finite_weights_are_refused_by_melu_recommend(saved: Path, tmp_path: Path) -> None:
    path = forged(saved, tmp_path)
    tensors = load_file(str(path / "weights.safetensors"))
    save_file(
        {k: torch.full_like(v, 1e37) for k, v in tensors.items()}, str(path / "weights.safetensors")
    )
    sign(path)
    load_bundle(path)  # every check of the files passes: only the probe can tell
    done = melu("recommend", "--model", str(path), "--rate", "50=5")
    assert "gives non-finite scores" in one_line(done, 1) and done.stdout == ""


def test_an_in_bounds_inner_lr_of_1e30_is_refused_by_melu_recommend(
    saved: Path, tmp_path: Path
) -> None:
    path = forged(saved, tmp_path)
    edit_config(path, "meta", "inner_lr", 1e30)
    done = melu("recommend", "--model", str(path), "--rate", "50=5")
    error = one_line(done, 1)
    assert "non-finite scores (after one rating" in error and "inner_lr 1e+30" in error, error
    with pytest.raises(BundleError, match="non-finite scores"):
        Recommender.from_bundle(path)


@pytest.mark.parametrize("year", [float("inf"), -float("inf"), 1e12, 1995.5])
def test_a_catalog_year_that_is_not_a_year_is_refused(
    saved: Path, tmp_path: Path, year: float, capsys: pytest.CaptureFixture[str]
) -> None:
    path = forged(saved, tmp_path)
    catalog = pd.read_parquet(path / "catalog.parquet")
    catalog["year"] = catalog["year"].astype("float64")
    catalog.loc[7, "year"] = year
    catalog.to_parquet(path / "catalog.parquet", index=False)
    sign(path)
    with pytest.raises(BundleError, match=r"catalog\.parquet: row 7 has an invalid year"):
        load_bundle(path)
    assert run_app(["recommend", "--model", str(path)]) == 1
    assert "invalid year" in capsys.readouterr().err


def test_missing_years_as_nan_still_load(saved: Path, tmp_path: Path) -> None:
    path = forged(saved, tmp_path)
    catalog = pd.read_parquet(path / "catalog.parquet")
    catalog["year"] = catalog["year"].astype("float64")
    catalog.loc[7, "year"] = float("nan")
    catalog.to_parquet(path / "catalog.parquet", index=False)
    sign(path)
    assert Recommender.from_bundle(path, onboarding=False).catalog.item(7).year is None


@pytest.mark.parametrize("flip", [False, True])
def test_a_bundle_without_digests_is_refused(
    saved: Path, tmp_path: Path, flip: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    path = forged(saved, tmp_path)
    info = json.loads((path / "config.json").read_text())
    del info["digests"]
    (path / "config.json").write_text(json.dumps(info))
    if flip:
        data = bytearray((path / "weights.safetensors").read_bytes())
        data[-5] ^= 0x10  # a bit of a weight: the file still parses
        (path / "weights.safetensors").write_bytes(bytes(data))
    assert run_app(["recommend", "--model", str(path), "--rate", "50=5"]) == 1
    assert "no 'digests' record" in capsys.readouterr().err


def test_the_neighbour_part_loads_for_any_number_of_training_users_but_one(
    saved: Path, tmp_path: Path
) -> None:
    """The user-kNN part's matrices are as wide as the training users were many (data, not
    the model, sets it): any width loads and serves; widths that disagree are refused."""
    path = forged(saved, tmp_path)
    tensors = load_file(str(path / "weights.safetensors"))
    n_ids = tensors["rank.neighbour_rated"].shape[0]
    gen = torch.Generator().manual_seed(0)
    rated = (torch.rand(n_ids, 7, generator=gen) < 0.3).float()
    tensors |= {
        "rank.neighbour_rated": rated, "rank.neighbour_liked": rated.clone(),
        "rank.neighbour_norm": rated.sum(0).clamp(min=1.0).sqrt(),
        "rank.neighbour_weight": torch.ones_like(tensors["rank.neighbour_weight"]),
    }  # fmt: skip
    save_file(tensors, str(path / "weights.safetensors"))
    sign(path)
    assert load_bundle(path).params["rank.neighbour_rated"].shape == (n_ids, 7)
    assert len(Recommender.from_bundle(path, onboarding=False).recommend({}, [(50, 5.0)]).items)
    tensors["rank.neighbour_norm"] = tensors["rank.neighbour_norm"][:5]
    save_file(tensors, str(path / "weights.safetensors"))
    sign(path)
    with pytest.raises(BundleError, match="disagree on the number of training users"):
        load_bundle(path)
