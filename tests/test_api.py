"""The public Python API (README, "Python API"): train, load, recommend, evaluate."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

import melu
from melu.errors import ConfigError
from melu.evaluation.baselines import BaselineConfig
from melu.prepare import Prepared


def test_train_load_recommend_evaluate_on_ml100k(
    ml100k: Prepared, data_dir: Path, tmp_path: Path, one_thread: None
) -> None:
    assert ml100k.path is not None
    cache = ml100k.path.parent  # the session's prepared ml-100k: not built twice
    bundle = melu.train("ml-100k", out=tmp_path / "run", data_dir=data_dir, cache_dir=cache,
                        epochs=1, max_tasks_per_epoch=32, device="cpu")  # fmt: skip
    assert bundle == tmp_path / "run" / "model" and (bundle / "weights.safetensors").is_file()

    model = melu.load(bundle)
    assert isinstance(model, melu.Recommender)
    top = model.recommend({"gender": "F", "age": 25}, [(50, 5.0), (181, 4.0)], k=5)
    ids = [item.item_id for item in top.items]
    assert len(ids) == 5 and not {50, 181} & set(ids)  # rated movies are left out
    assert all(1.0 <= item.score <= 5.0 for item in top.items)  # predicted ratings, on the scale
    assert top.adaptation.steps > 0

    small = BaselineConfig(pooled_epochs=1, finetune_lr_scales=(1.0,))  # a tiny budget
    report = melu.evaluate(bundle, data_dir=data_dir, cache_dir=cache, scenarios=("user_cold",),
                           support_sizes=(1,), baselines=small, out=tmp_path / "eval")  # fmt: skip
    methods = report.scenarios["user_cold"]["methods"]
    assert 0.5 < methods["maml_after"]["mae"] < 1.5 and math.isfinite(methods["mf"]["mae"])
    assert (tmp_path / "eval" / "report.md").is_file()


def test_settings_are_the_cli_flags_by_name() -> None:
    config = melu.configure(epochs=3, seed=7, data_seed=2, inner_lr=0.25)
    assert (config.train.epochs, config.train.seed, config.data.seed) == (3, 7, 2)
    assert config.meta.inner_lr == 0.25
    with pytest.raises(ConfigError, match="epoch: no such setting"):
        melu.configure(epoch=3)
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        melu.configure(epochs=0)


def test_import_melu_stays_light() -> None:
    """``import melu`` does not pull in torch (``melu --version`` is instant)."""
    code = "import sys, melu; print('torch' in sys.modules, melu.__version__)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.split() == ["False", melu.__version__], done.stderr
