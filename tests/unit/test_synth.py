"""recops.data.synth and `recops synth`: a seeded synthetic log that is deterministic, fits the default column
mapping and validation, and has the structure a recommender can learn (heavy tails, genre taste, time).

One small world (30k rows in 3 Parquet parts) is generated once per module; each test checks one property of it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from recops_cli.app import app
from recops.columns import Columns
from recops.config import Settings, load_settings
from recops.data import load_attributes, load_interactions, read_table
from recops.data.synth import GENRE_NAMES, generate
from recops.errors import RecopsError

PROJECT = Path(__file__).resolve().parents[2]
ROWS, USERS, ITEMS, MIN_PER_USER = 30_000, 400, 2_000, 5
WORLD = {"n_users": USERS, "n_items": ITEMS, "min_user_interactions": MIN_PER_USER, "rows_per_file": 12_000,
         "row_group_size": 5_000}


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "world"
    generate(out, ROWS, seed=11, **WORLD)
    return out


@pytest.fixture(scope="module")
def settings(out_dir: Path) -> Settings:
    """params.yaml as shipped, with only data.source and the three paths changed (what the CLI tells users)."""
    shipped = load_settings(PROJECT / "params.yaml")
    data = shipped.data.model_copy(update={
        "source": "file", "interactions_path": str(out_dir / "interactions"),
        "users_path": str(out_dir / "users.parquet"), "items_path": str(out_dir / "items.parquet"),
    })
    return shipped.model_copy(update={"data": data})


@pytest.fixture(scope="module")
def interactions(out_dir: Path, settings: Settings) -> pd.DataFrame:
    return load_interactions(out_dir / "interactions", settings.data)


@pytest.fixture(scope="module")
def items(out_dir: Path, settings: Settings) -> pd.DataFrame:
    return load_attributes(out_dir / "items.parquet", settings.data.item_attributes, Columns.ITEM_ID, settings.data)


@pytest.fixture(scope="module")
def users(out_dir: Path, settings: Settings) -> pd.DataFrame:
    return load_attributes(out_dir / "users.parquet", settings.data.user_attributes, Columns.USER_ID, settings.data)


def first_genre(interactions: pd.DataFrame, items: pd.DataFrame) -> np.ndarray:
    labels = items.set_index(Columns.ITEM_ID)["genres"].str.split(" ").str[0]
    return labels.reindex(interactions[Columns.ITEM_ID]).to_numpy()


def mean_top_genre_share(user: np.ndarray, item: np.ndarray, items: pd.DataFrame) -> float:
    """Mean over users of the share of their interactions whose item has the user's most frequent genre."""
    labels = items.assign(genre=items["genres"].str.split(" ")).explode("genre")[[Columns.ITEM_ID, "genre"]]
    pairs = pd.DataFrame({"user": user, Columns.ITEM_ID: item}).merge(labels, on=Columns.ITEM_ID)
    per_genre = pairs.value_counts(["user", "genre"]).groupby(level="user").max()
    return float((per_genre / pd.Series(user).value_counts()).mean())


def test_same_arguments_write_byte_identical_files(out_dir: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    generate(again, ROWS, seed=11, **WORLD)
    written = sorted(p.relative_to(out_dir) for p in out_dir.rglob("*") if p.is_file())
    assert written == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert len([p for p in written if p.parts[0] == "interactions"]) == 3
    for rel in written:
        assert (out_dir / rel).read_bytes() == (again / rel).read_bytes(), rel


def test_another_seed_gives_another_log(out_dir: Path, tmp_path: Path) -> None:
    manifest = generate(tmp_path / "other", ROWS, seed=12, **WORLD)
    original = json.loads((out_dir / "synth.json").read_text())
    assert manifest["files"]["interactions/part-00000.parquet"]["sha256"] != \
        original["files"]["interactions/part-00000.parquet"]["sha256"]


def test_manifest_records_arguments_counts_and_hashes(out_dir: Path) -> None:
    import hashlib

    manifest = json.loads((out_dir / "synth.json").read_text())
    assert manifest["arguments"]["seed"] == 11 and manifest["arguments"]["n_interactions"] == ROWS
    assert manifest["rows"] == {"interactions": ROWS, "users": USERS, "items": ITEMS}
    for name, entry in manifest["files"].items():
        assert hashlib.sha256((out_dir / name).read_bytes()).hexdigest() == entry["sha256"]
        assert pq.ParquetFile(out_dir / name).metadata.num_rows == entry["rows"]


def test_parts_keep_row_groups_within_the_limit(out_dir: Path) -> None:
    for part in sorted((out_dir / "interactions").glob("part-*.parquet")):
        metadata = pq.ParquetFile(part).metadata
        assert all(metadata.row_group(i).num_rows <= 5_000 for i in range(metadata.num_row_groups))


def test_tables_have_the_default_mapping_columns_and_dtypes(out_dir: Path) -> None:
    log = read_table(out_dir / "interactions")
    assert {c: str(t) for c, t in log.dtypes.items()} == {
        "user_id": "int64", "item_id": "int64", "timestamp": "int64", "rating": "int64"}
    assert log["rating"].between(1, 5).all() and set(log["rating"].unique()) == {1, 2, 3, 4, 5}
    assert log["timestamp"].min() > pd.Timestamp("1990-01-01", tz="UTC").timestamp()
    assert log["timestamp"].max() < pd.Timestamp.now(tz="UTC").timestamp()
    users = pd.read_parquet(out_dir / "users.parquet")
    assert list(users.columns) == ["user_id", "age", "gender", "occupation"]
    assert str(users["age"].dtype) == "int64" and set(users["gender"]) == {"M", "F"}
    items = pd.read_parquet(out_dir / "items.parquet")
    assert list(items.columns) == ["item_id", "title", "release_year", "genres"]
    labels = items["genres"].str.split(" ")
    assert labels.str.len().between(1, 3).all()
    assert set(labels.explode()) <= set(GENRE_NAMES)


def test_no_user_item_pair_appears_twice(interactions: pd.DataFrame) -> None:
    assert not interactions.duplicated([Columns.USER_ID, Columns.ITEM_ID]).any()


def test_every_user_has_the_minimum_history_and_exists_in_the_tables(
    interactions: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame
) -> None:
    assert len(interactions) == ROWS
    per_user = interactions[Columns.USER_ID].value_counts()
    assert len(per_user) == USERS and per_user.min() >= MIN_PER_USER
    assert per_user.max() > 5 * per_user.median()  # heavy-tailed activity
    assert interactions[Columns.USER_ID].isin(users[Columns.USER_ID]).all()
    assert interactions[Columns.ITEM_ID].isin(items[Columns.ITEM_ID]).all()


def test_a_few_items_take_a_large_share(interactions: pd.DataFrame) -> None:
    counts = interactions[Columns.ITEM_ID].value_counts().to_numpy()
    top_percent = counts[: ITEMS // 100].sum() / len(interactions)
    assert top_percent > 0.05  # 1% of the items; uniform popularity would give 0.01


def test_users_concentrate_on_their_genres(interactions: pd.DataFrame, items: pd.DataFrame) -> None:
    user, item = interactions[Columns.USER_ID].to_numpy(), interactions[Columns.ITEM_ID].to_numpy()
    shuffled = np.random.default_rng(0).permutation(user)  # same activity and popularity, no taste
    assert mean_top_genre_share(user, item, items) > mean_top_genre_share(shuffled, item, items) + 0.1


def test_ratings_are_higher_in_the_users_favourite_genre(interactions: pd.DataFrame, items: pd.DataFrame) -> None:
    frame = interactions.assign(genre=first_genre(interactions, items))
    favourite = frame.groupby(Columns.USER_ID)["genre"].agg(lambda g: g.value_counts().index[0])
    in_favourite = frame["genre"].to_numpy() == favourite.reindex(frame[Columns.USER_ID]).to_numpy()
    ratings = frame[Columns.RATING].to_numpy()
    assert ratings[in_favourite].mean() > ratings[~in_favourite].mean() + 0.2


def test_no_item_is_used_before_its_release_year(interactions: pd.DataFrame, items: pd.DataFrame) -> None:
    year = items.set_index(Columns.ITEM_ID)["release_year"].reindex(interactions[Columns.ITEM_ID]).to_numpy()
    used = pd.to_datetime(interactions[Columns.TIMESTAMP], unit="s").dt.year.to_numpy()
    assert (used >= year).all()
    assert (year >= used.min()).mean() > 0.3  # new releases during the log, not only a back catalogue


def test_loader_reads_the_folder_of_parts_in_order(out_dir: Path, interactions: pd.DataFrame) -> None:
    parts = sorted((out_dir / "interactions").glob("part-*.parquet"))
    joined = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    pd.testing.assert_frame_equal(interactions, joined[list(interactions.columns)])
    assert list(read_table(out_dir / "interactions", columns=["item_id"]).columns) == ["item_id"]


def test_loader_names_a_missing_mapped_column_in_a_folder(out_dir: Path, settings: Settings) -> None:
    mapping = settings.data.columns.model_copy(update={"timestamp": "ts"})
    with pytest.raises(RecopsError, match=r"missing column 'ts' \(for timestamp\).*'timestamp'"):
        load_interactions(out_dir / "interactions", settings.data.model_copy(update={"columns": mapping}))


def test_loader_refuses_a_folder_without_parquet_or_with_mismatched_parts(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(RecopsError, match="no Parquet files"):
        read_table(tmp_path / "empty")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    pd.DataFrame({"user_id": [1], "item_id": [2]}).to_parquet(mixed / "part-0.parquet")
    pd.DataFrame({"user_id": [1], "sku": [2]}).to_parquet(mixed / "part-1.parquet")
    with pytest.raises(RecopsError, match="different columns"):
        read_table(mixed)


def test_default_validation_passes(interactions: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame,
                                   settings: Settings, tmp_path: Path) -> None:
    from recops.validation import validate_tables

    metrics = validate_tables(interactions, users, items, settings, {"interactions": "synth"}, tmp_path)
    assert metrics["validation.success"] == 1.0


def test_generate_refuses_a_folder_that_is_not_its_own(tmp_path: Path) -> None:
    (tmp_path / "precious.csv").write_text("a,b\n")
    with pytest.raises(RecopsError, match="not empty"):
        generate(tmp_path, 1_000, n_users=10, n_items=1_000)
    assert [p.name for p in tmp_path.iterdir()] == ["precious.csv"]


def test_cli_writes_the_files_and_prints_the_params_snippet(tmp_path: Path) -> None:
    out = tmp_path / "synth"
    result = CliRunner().invoke(app, ["synth", str(out), "--rows", "5000", "--users", "50", "--seed", "3", "-q"])
    assert result.exit_code == 0, result.output
    assert (out / "interactions" / "part-00000.parquet").is_file() and (out / "synth.json").is_file()
    assert "source: file" in result.output
    assert f"interactions_path: {out.as_posix()}/interactions" in result.output
    assert f"items_path: {out.as_posix()}/items.parquet" in result.output


def test_cli_reports_impossible_sizes_without_traceback(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["synth", str(tmp_path / "x"), "--rows", "100", "--users", "50", "-q"])
    assert result.exit_code == 1
    assert "use fewer users" in result.output and "Traceback" not in result.output
