"""Model bundles: exact round trip; truncated, corrupted or mismatched ones refused."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from melu.bundle import Bundle, load_bundle, save_bundle
from melu.bundle_checks import DIGESTED, file_sha256
from melu.config import Config, ModelConfig
from melu.errors import BundleError
from melu.model.estimator import PreferenceEstimator
from melu.model.maml import Examples
from melu.model.predict import predict_examples
from melu.prepare import Prepared
from melu.tables import FeatureTables


@pytest.fixture(scope="module")
def saved(ml100k: Prepared, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    config = Config()
    model = PreferenceEstimator(config.model, ml100k.features)
    params = model.init_params()
    inner = {k: 0.05 * (1 + 0.1 * torch.rand_like(params[k])) for k in model.fast_names()}
    return save_bundle(
        tmp_path_factory.mktemp("bundle") / "model",
        config=config,
        features=ml100k.features,
        params=params,
        catalog=ml100k.catalog,
        tables=ml100k.tables,
        metrics={"val_mae_after": 0.8},
        inner_lr=inner,
        fingerprint=ml100k.fingerprint,
    )


def copy(saved: Path, tmp_path: Path, *, digests: bool = False) -> Path:
    """A copy to damage (``digests=True``: the digest check is what damage meets; else
    call ``load`` after the damage, which records the damaged files' digests first, so
    the checks behind the digest check are what a damaged file meets)."""
    return Path(shutil.copytree(saved, tmp_path / "model"))


def redigest(path: Path) -> None:
    """Record the present files' digests in config.json (as a forger would)."""
    try:
        info = json.loads((path / "config.json").read_text())
    except ValueError:
        return
    if isinstance(info, dict):
        present = [n for n in DIGESTED if os.access(path / n, os.R_OK)]
        info["digests"] = {n: file_sha256(path / n) for n in present}
        (path / "config.json").write_text(json.dumps(info))


def load(path: Path) -> Bundle:
    redigest(path)
    return load_bundle(path)


def item_features(tables: FeatureTables, user: int, item_rows: torch.Tensor) -> dict:
    return {
        **{k: v[user].expand(item_rows.shape) for k, v in tables.users.items()},
        **{k: v[item_rows] for k, v in tables.items.items()},
    }


def test_round_trip_gives_identical_predictions(saved: Path, ml100k: Prepared) -> None:
    bundle = load_bundle(saved)
    torch.manual_seed(0)
    reference = PreferenceEstimator(Config().model, ml100k.features)
    params = reference.init_params()
    assert bundle.config == Config() and bundle.features == ml100k.features
    assert bundle.metrics == {"val_mae_after": 0.8}
    assert bundle.info["data_fingerprint"] == ml100k.fingerprint
    assert bundle.inner_lr is not None and set(bundle.inner_lr) == set(reference.fast_names())
    # item features read back from the catalog equal the prepared tables, row by row
    rows = torch.searchsorted(bundle.item_features.item_ids, ml100k.tables.item_ids)
    order = bundle.item_features.item_ids.argsort()
    for k, v in ml100k.tables.items.items():
        assert torch.equal(bundle.item_features.items[k][order][rows], v)
    items = torch.arange(20)
    features = item_features(ml100k.tables, 3, items)
    support = Examples(
        {k: v[None] for k, v in features.items()},
        torch.arange(20.0)[None] % 5 + 1,
        torch.ones(1, 20, dtype=torch.bool),
    )
    for steps in (0, 5):
        with torch.no_grad():
            a = predict_examples(
                bundle.model, bundle.params, support, support.inputs, steps=[steps],
                lr=bundle.inner_lr,
            )  # fmt: skip
            b = predict_examples(
                reference, params, support, support.inputs, steps=[steps], lr=bundle.inner_lr
            )
        # the same floats in differently aligned buffers may round differently in SIMD code
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-6), steps
    assert torch.equal(
        bundle.model.predict(bundle.params, features), reference.predict(params, features)
    )


def test_truncated_weights_are_refused(saved: Path, tmp_path: Path) -> None:
    path = copy(saved, tmp_path)
    weights = path / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(BundleError, match=r"weights\.safetensors: unreadable or truncated"):
        load(path)


def test_missing_file_is_named(saved: Path, tmp_path: Path) -> None:
    path = copy(saved, tmp_path)
    (path / "features.json").unlink()
    with pytest.raises(BundleError, match=r"incomplete bundle, missing features\.json"):
        load(path)
    with pytest.raises(BundleError, match="no model bundle here"):
        load_bundle(tmp_path / "nothing")


def test_mismatched_shapes_are_named(saved: Path, tmp_path: Path) -> None:
    path = copy(saved, tmp_path)
    info = json.loads((path / "config.json").read_text())
    info["config"]["model"]["hidden"] = [64, 32]
    (path / "config.json").write_text(json.dumps(info))
    with pytest.raises(
        BundleError, match=r"mlp\.2\.weight has shape \(64, 64\), expected \(32, 64\)"
    ):
        load(path)


def test_wrong_schema_and_corrupt_json_are_refused(saved: Path, tmp_path: Path) -> None:
    path = copy(saved, tmp_path)
    info = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**info, "schema_version": 99}))
    with pytest.raises(BundleError, match="schema version 99"):
        load(path)
    (path / "config.json").write_text('{"schema_version": 1, "config": {')
    with pytest.raises(BundleError, match=r"config\.json: unreadable"):
        load(path)
    (path / "config.json").write_text(json.dumps({**info, "config": {"model": {"size": 3}}}))
    with pytest.raises(BundleError, match="unknown field"):
        load(path)


def test_corrupt_catalog_is_refused(saved: Path, tmp_path: Path) -> None:
    path = copy(saved, tmp_path)
    (path / "catalog.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(BundleError, match=r"catalog\.parquet: unreadable"):
        load(path)


def test_a_failed_save_leaves_the_old_bundle_and_no_debris(
    saved: Path, tmp_path: Path, ml100k: Prepared
) -> None:
    path = copy(saved, tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    bad_catalog = ml100k.catalog.assign(title=[object()] * len(ml100k.catalog))  # unwritable
    with pytest.raises(Exception):  # noqa: B017 - whatever pyarrow raises
        save_bundle(
            path,
            config=Config(model=ModelConfig(embedding_dim=4)),
            features=ml100k.features,
            params={"x": torch.zeros(1)},
            catalog=bad_catalog,
            tables=ml100k.tables,
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert load(path).config == Config()


def _rewrite_weights(bundle: Path, change: Callable[[dict[str, torch.Tensor]], None]) -> None:
    tensors = load_file(str(bundle / "weights.safetensors"))
    change(tensors)
    save_file(tensors, str(bundle / "weights.safetensors"))


def _rewrite_catalog(bundle: Path, change: Callable[[pd.DataFrame], pd.DataFrame]) -> None:
    path = bundle / "catalog.parquet"
    change(pd.read_parquet(path)).to_parquet(path, index=False)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            lambda t: t.update({"inner_lr.user.factor": torch.ones(2)}),
            "inner_lr.user.factor has shape",
        ),
        (lambda t: t.pop("inner_lr.user.factor"), "inner learning rates"),
        (lambda t: t.update({"mlp.0.bias": t["mlp.0.bias"].half()}), "finite float32"),
        (lambda t: t["mlp.0.bias"].fill_(float("nan")), "finite float32"),
    ],
)
def test_weights_that_do_not_fit_the_model_are_named(
    saved: Path, tmp_path: Path, damage: Callable[[dict], object], message: str
) -> None:
    bundle = copy(saved, tmp_path)
    _rewrite_weights(bundle, damage)  # type: ignore[arg-type]
    with pytest.raises(BundleError, match=re.escape(message)):
        load(bundle)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda c: c.drop(columns=["title"]), "lacks column(s) ['title']"),
        (lambda c: c.assign(**{"feat.decade": 99999}), "indices outside"),
        (lambda c: pd.concat([c, c.iloc[:1]]), "not unique"),
        (lambda c: c.assign(**{"feat.genres": [[1]] * len(c)}), "indices per item"),
    ],
)
def test_catalogs_that_do_not_fit_the_features_are_named(
    saved: Path, tmp_path: Path, damage: Callable[[pd.DataFrame], pd.DataFrame], message: str
) -> None:
    bundle = copy(saved, tmp_path)
    _rewrite_catalog(bundle, damage)
    with pytest.raises(BundleError, match=re.escape(message)):
        load(bundle)


@pytest.mark.parametrize("name", ["weights.safetensors", "features.json", "catalog.parquet"])
def test_a_flipped_byte_is_caught_by_the_recorded_digest(
    saved: Path, tmp_path: Path, name: str
) -> None:
    path = copy(saved, tmp_path, digests=True)
    data = bytearray((path / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (path / name).write_bytes(bytes(data))
    with pytest.raises(BundleError, match=rf"{name}: content does not match the sha256"):
        load_bundle(path)


def test_a_file_from_another_bundle_is_refused(saved: Path, tmp_path: Path) -> None:
    path = copy(saved, tmp_path, digests=True)
    metrics = json.loads((path / "metrics.json").read_text())
    (path / "metrics.json").write_text(json.dumps({**metrics, "best_epoch": -1}))
    with pytest.raises(BundleError, match=r"metrics.json: content does not match"):
        load_bundle(path)


def test_catalog_and_metrics_the_service_uses_are_validated_at_load(
    saved: Path, tmp_path: Path
) -> None:
    path = copy(saved, tmp_path)
    catalog = pd.read_parquet(path / "catalog.parquet")
    catalog.loc[3, "title"] = None
    catalog.to_parquet(path / "catalog.parquet", index=False)
    with pytest.raises(BundleError, match=r"row 3 has an invalid title (None|nan)"):
        load(path)
    path = copy(saved, tmp_path / "b")
    (path / "metrics.json").write_text('[1, 2, {"a": 3}]')
    with pytest.raises(BundleError, match=r"metrics.json: must be a JSON object"):
        load(path)


def test_an_unreadable_file_says_permission_denied(
    saved: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    import melu.bundle

    path = copy(saved, tmp_path)
    (path / "weights.safetensors").chmod(0)
    if os.geteuid() == 0:  # root reads any mode: make the read fail as it would for others

        def denied(name: str) -> None:
            raise PermissionError(13, "Permission denied", name)

        monkeypatch.setattr(melu.bundle, "load_file", denied)
    with pytest.raises(BundleError, match=r"weights\.safetensors: permission denied"):
        load(path)


@pytest.mark.parametrize(
    ("section", "field", "value"),
    [
        ("meta", "inner_steps", 1_000_000_000),
        ("model", "hidden", [1_000_000, 64]),
        ("model", "embedding_dim", 10**7),
        ("meta", "inner_lr", 1e400),
    ],
)
def test_config_values_that_would_hang_or_exhaust_are_refused_at_load(
    saved: Path, tmp_path: Path, section: str, field: str, value: object
) -> None:
    path = copy(saved, tmp_path)
    info = json.loads((path / "config.json").read_text())
    info["config"][section][field] = value
    (path / "config.json").write_text(json.dumps(info))
    with pytest.raises(BundleError, match=rf"config\.json: .*{section}\.{field}"):
        load(path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda f: f.update(rating_scale=[5, 1]), "rating_scale"),
        (lambda f: f.update(rating_scale=[float("nan"), 5]), "rating_scale"),
        (lambda f: f["fields"][0].update(vocab="abc"), "vocabulary"),
        (lambda f: f["fields"][0].update(vocab=[1, 2, 3]), "vocabulary"),
    ],
    ids=["reversed scale", "nan scale", "vocab as a string", "vocab of numbers"],
)
def test_a_malformed_feature_space_is_refused(
    saved: Path, tmp_path: Path, edit: Callable[[dict], None], message: str
) -> None:
    path = copy(saved, tmp_path)
    features = json.loads((path / "features.json").read_text())
    edit(features)
    (path / "features.json").write_text(json.dumps(features))
    with pytest.raises(BundleError, match=message):
        load(path)
