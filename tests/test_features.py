"""FeatureSpace: vocabularies from training rows, unknown → 0, lists, JSON round-trip."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from melu.data.ages import AGE_CODES, age_bucket, age_buckets
from melu.data.movielens import load_movielens
from melu.features import FeatureSpace, item_values
from melu.tables import FeatureTables


@pytest.fixture(scope="module")
def ml100k_data(data_dir: Path):
    return load_movielens("ml-100k", data_dir)


@pytest.mark.filterwarnings("error")
def test_vocab_from_training_rows_only_and_unknown_is_zero(ml100k_data) -> None:
    users, items = ml100k_data.users, ml100k_data.items
    train_users = users[users["user_id"] <= 500]
    space = FeatureSpace.build(train_users, items[items["item_id"] <= 800], (1.0, 5.0), 1.0, 2)
    zip_field = next(f for f in space.fields if f.name == "zip")
    assert set(zip_field.vocab) == set(train_users["zip"].str[:2])
    encoded = space.encode_users(users)
    unseen = ~users["zip"].str[:2].isin(zip_field.vocab).to_numpy()
    assert unseen.any()
    assert (encoded["zip"][torch.from_numpy(unseen)] == 0).all()
    assert (encoded["zip"][torch.from_numpy(~unseen)] > 0).all()
    one = space.encode_user({"gender": "F", "age": 25, "zip": "ZZ999", "occupation": None})
    assert one["zip"].item() == 0 and one["occupation"].item() == 0
    gender = next(f for f in space.fields if f.name == "gender")
    assert one["gender"].item() == gender.vocab.index("F") + 1


def test_unknown_user_values_map_to_unknown(ml100k_data) -> None:
    space = FeatureSpace.build(ml100k_data.users, ml100k_data.items, (1.0, 5.0), 1.0, 2)
    nothing = space.encode_user({})
    strange = space.encode_user({"gender": "X", "occupation": "astronaut", "zip": "zz"})
    assert all(int(v) == 0 for v in nothing.values())
    assert {k: int(v) for k, v in strange.items()} == {k: int(v) for k, v in nothing.items()}
    assert space.encode_user(None).keys() == nothing.keys()


def test_raw_ages_are_bucketed_as_the_reader_does(ml100k_data) -> None:
    """One set of age buckets: the ml-100k reader's and a request's raw ages agree."""
    assert [age_bucket(a) for a in (7, 18, 24, 25, 49, 50, 90)] == [
        "1",
        "18",
        "18",
        "25",
        "45",
        "50",
        "56",
    ]
    ages = age_buckets(ml100k_data.users["age"].astype(int).to_numpy())
    assert set(ml100k_data.users["age"]) <= {str(c) for c in AGE_CODES}
    assert (ages.astype(str) == ml100k_data.users["age"].to_numpy()).all()  # codes are fixed points
    space = FeatureSpace.build(ml100k_data.users, ml100k_data.items, (1.0, 5.0), 1.0, 2)
    user = {"gender": "M", "age": 30, "occupation": "engineer", "zip": "55105"}
    ours = space.encode_user(user)
    theirs = space.encode_user({**user, "age": "25"})
    assert {k: int(v) for k, v in ours.items()} == {k: int(v) for k, v in theirs.items()}
    assert all(int(v) > 0 for v in ours.values())
    frame = space.encode_users(pd.DataFrame([{**user, "age": "25"}]))  # the frame path
    assert {k: int(v[0]) for k, v in frame.items()} == {k: int(v) for k, v in ours.items()}


def test_json_round_trip_is_exact(ml100k_data, tmp_path: Path) -> None:
    space = FeatureSpace.build(ml100k_data.users, ml100k_data.items, (1.0, 5.0), 1.0, 3)
    space.save(tmp_path / "features.json")
    again = FeatureSpace.load(tmp_path / "features.json")
    assert again == space
    assert again.to_dict() == space.to_dict()
    a, b = space.encode_items(ml100k_data.items), again.encode_items(ml100k_data.items)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.filterwarnings("error")
def test_multi_valued_lists_match_a_per_row_reference(data_dir: Path, tmp_path: Path) -> None:
    items = _ml1m_items(data_dir, tmp_path)
    train = items[items["item_id"] < 2000]
    space = FeatureSpace.build(pd.DataFrame({"user_id": [1]}), train, (1.0, 5.0), 1.0, 2)
    encoded = space.encode_items(items)
    values = item_values(items)
    for field in space.item_fields:
        if not field.multi:
            continue
        lookup = field.index()
        table = encoded[field.name]
        assert table.shape == (len(items), field.max_len)
        for row in range(0, len(items), 37):  # reference: the obvious loop
            want = [lookup.get(v, 0) for v in values[field.name][row][: field.max_len]]
            want += [0] * (field.max_len - len(want))
            assert table[row].tolist() == want
    directors = next(f for f in space.fields if f.name == "directors")
    newer = items["item_id"].to_numpy() >= 2000
    only_new = ~items["directors"].map(lambda d: any(x in directors.vocab for x in d)).to_numpy()
    assert (encoded["directors"][torch.from_numpy(newer & only_new)] == 0).all()


def _ml1m_items(data_dir: Path, tmp_path: Path) -> pd.DataFrame:
    """Real ml-1m items with MeLU's extra info (a one-line ratings.dat makes it loadable)."""
    root = tmp_path / "ml-1m"
    root.mkdir()
    for name in ("users.dat", "movies.dat", "movies_extrainfos.dat"):
        (root / name).symlink_to(data_dir / "ml-1m" / name)
    (root / "ratings.dat").write_text("1::1::5::978300760\n")
    return load_movielens("ml-1m", tmp_path).items


def test_feature_tables_gather_shapes(ml100k_data) -> None:
    space = FeatureSpace.build(ml100k_data.users, ml100k_data.items, (1.0, 5.0), 1.0, 2)
    tables = FeatureTables.build(space, ml100k_data.users, ml100k_data.items)
    user_rows = torch.tensor([0, 5])  # (T,)
    item_rows = torch.tensor([[0, 1, 2], [3, 4, 5]])  # (T, N)
    batch = tables.gather(user_rows, item_rows)
    assert batch["gender"].shape == (2, 3)
    assert batch["genres"].shape == (2, 3, space.fields[-1].max_len)
    assert batch["gender"][1, 2] == tables.users["gender"][5]
    assert torch.equal(batch["genres"][1, 0], tables.items["genres"][3])


def test_item_id_field_only_for_frequent_training_items() -> None:
    """Items with enough training ratings get their own id embedding; others map to 0."""
    items = pd.DataFrame(
        {
            "item_id": [10, 20, 30],
            "title": ["a", "b", "c"],
            "year": [1990, 1991, 1992],
            "genres": [["x"], ["y"], ["x"]],
        }
    )
    users = pd.DataFrame({"user_id": [1]})
    space = FeatureSpace.build(users, items, (1.0, 5.0), 1.0, id_items=[20])
    (field,) = [f for f in space.item_fields if f.name == "item"]
    assert field.vocab == ("20",)
    encoded = space.encode_items(items)["item"].tolist()
    assert encoded == [0, 1, 0]
    no_ids = FeatureSpace.build(users, items, (1.0, 5.0), 1.0, item_id=False)
    assert "item" not in {f.name for f in no_ids.item_fields}
