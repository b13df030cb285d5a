"""Windowed Parquet datasets: write/list/read, ready markers, bounded streaming, validation."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from exfm_trainer.data.windows import (
    DataError,
    iter_record_batches,
    list_ready_windows,
    rank_row_range,
    window_info,
    write_window,
)
from exfm_trainer.storage import open_storage
from exfm_trainer.storage.commit import commit_artifact


def _table(n: int, start: int = 0) -> pa.Table:
    return pa.table({"label": [i % 2 for i in range(start, start + n)], "x": list(range(start, start + n))})


def test_round_trip_parts_and_success_written(tmp_path: Path) -> None:
    rows = write_window(tmp_path, 3, _table(1000), rows_per_file=300)
    assert rows == 1000
    wdir = tmp_path / "window=00003"
    assert sorted(p.name for p in wdir.iterdir()) == [
        "_SUCCESS",
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
        "part-00003.parquet",
    ]
    assert list_ready_windows(tmp_path) == [3]
    xs = [x for b in iter_record_batches(tmp_path, 3, ["x"], batch_size=128) for x in b["x"].to_pylist()]
    assert xs == list(range(1000))
    assert [p.rows for p in window_info(tmp_path, 3).parts] == [300, 300, 300, 100]


def test_batches_input_and_bounded_streaming(tmp_path: Path) -> None:
    batches = (_table(500, s).to_batches()[0] for s in range(0, 5000, 500))
    write_window(tmp_path, 0, batches, rows_per_file=2000)
    sizes = [b.num_rows for b in iter_record_batches(tmp_path, 0, ["label", "x"], batch_size=100)]
    assert len(sizes) == 50 and max(sizes) <= 100 and sum(sizes) == 5000


def test_half_written_window_is_invisible_and_replaced(tmp_path: Path) -> None:
    stale = tmp_path / "window=00001"
    stale.mkdir(parents=True)
    (stale / "part-00007.parquet").write_bytes(b"leftover from a crashed writer")
    assert list_ready_windows(tmp_path) == []
    with pytest.raises(DataError, match="not ready"):
        list(iter_record_batches(tmp_path, 1))
    write_window(tmp_path, 1, _table(10))
    assert sorted(p.name for p in stale.iterdir()) == ["_SUCCESS", "part-00000.parquet"]
    assert list_ready_windows(tmp_path) == [1]


def test_ready_window_is_immutable_unless_overwrite(tmp_path: Path) -> None:
    write_window(tmp_path, 0, _table(10))
    with pytest.raises(DataError, match="already exists"):
        write_window(tmp_path, 0, _table(5))
    write_window(tmp_path, 0, _table(5), overwrite=True)
    assert window_info(tmp_path, 0).rows == 5


def test_committed_windows_are_readable_by_the_same_reader(tmp_path: Path) -> None:
    write_window(tmp_path, 0, _table(10))
    part = tmp_path / "src.parquet"
    import pyarrow.parquet as pq

    pq.write_table(_table(7, 100), part)
    commit_artifact(
        open_storage(tmp_path), "window=00001", {"part-00000.parquet": part}, {"kind": "das-window"}
    )
    (tmp_path / "window=00002").mkdir()  # neither marker
    assert list_ready_windows(tmp_path) == [0, 1]
    assert list_ready_windows(open_storage(tmp_path)) == [0, 1]
    xs = [x for b in iter_record_batches(tmp_path, 1, ["x"]) for x in b["x"].to_pylist()]
    assert xs == list(range(100, 107))
    assert window_info(tmp_path, 1).rows == 7  # from the Parquet footer: no _SUCCESS summary


@pytest.mark.parametrize("world_size", [2, 3, 7])
def test_rank_split_is_disjoint_and_complete(tmp_path: Path, world_size: int) -> None:
    write_window(tmp_path, 0, _table(1001), rows_per_file=97)
    seen: list[int] = []
    shares = []
    for rank in range(world_size):
        xs = [
            x
            for b in iter_record_batches(tmp_path, 0, ["x"], 64, rank=rank, world_size=world_size)
            for x in b["x"].to_pylist()
        ]
        shares.append(len(xs))
        seen.extend(xs)
    assert sorted(seen) == list(range(1001))
    assert max(shares) - min(shares) <= 1
    assert rank_row_range(1001, 1, world_size)[0] == 1001 // world_size


def test_missing_column_names_column_file_and_fix(tmp_path: Path) -> None:
    write_window(tmp_path, 0, _table(10))
    with pytest.raises(DataError) as err:
        list(iter_record_batches(tmp_path, 0, ["label", "clicks"]))
    msg = str(err.value)
    assert "clicks" in msg and "part-00000.parquet" in msg and "fix the dataset schema" in msg


def test_corrupt_parquet_names_the_file(tmp_path: Path) -> None:
    write_window(tmp_path, 0, _table(10))
    bad = tmp_path / "window=00000" / "part-00000.parquet"
    bad.write_bytes(b"PAR1 this is not parquet PAR1")
    with pytest.raises(DataError, match=r"part-00000\.parquet.*(corrupt|damaged)"):
        list(iter_record_batches(tmp_path, 0, ["x"]))


def test_a_flipped_bit_is_caught_by_the_window_checksum(tmp_path: Path) -> None:
    """_SUCCESS records size + sha256 per part; a readable part with one flipped bit is an error."""
    write_window(tmp_path, 0, pa.table({"x": list(range(1000))}), rows_per_file=400)
    summary = json.loads((tmp_path / "window=00000" / "_SUCCESS").read_text())
    assert sorted(summary["files"]) == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    part = tmp_path / "window=00000" / "part-00001.parquet"
    assert summary["files"][part.name]["size"] == part.stat().st_size
    data = bytearray(part.read_bytes())
    data[len(data) // 3] ^= 0x01
    part.write_bytes(bytes(data))
    with pytest.raises(
        DataError, match=r"part-00001\.parquet does not match the checksum.*rewrite the window"
    ):
        list(iter_record_batches(tmp_path, 0, ["x"]))
    # Each rank's share is checked too.
    with pytest.raises(DataError, match=r"part-00001\.parquet does not match the checksum"):
        list(iter_record_batches(tmp_path, 0, ["x"], rank=1, world_size=2))


def test_truncated_parquet_page_names_the_file(tmp_path: Path) -> None:
    write_window(tmp_path, 0, pa.table({"x": [f"value-{i}" for i in range(5000)]}))
    bad = tmp_path / "window=00000" / "part-00000.parquet"
    data = bytearray(bad.read_bytes())
    for i in range(200, 800):  # scribble over the column data, keep the footer intact
        data[i] = 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"part-00000\.parquet"):
        list(iter_record_batches(tmp_path, 0, ["x"]))


def test_empty_window_keeps_columns_and_yields_nothing(tmp_path: Path) -> None:
    write_window(tmp_path, 4, _table(0))
    assert list_ready_windows(tmp_path) == [4]
    assert list(iter_record_batches(tmp_path, 4, ["label", "x"])) == []
    assert window_info(tmp_path, 4).rows == 0
