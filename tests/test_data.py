"""Tests of osml.agent.data: CSV parsing and validation, Dataset, windows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from osml.agent.data import (
    AgentData,
    Dataset,
    check_min_rows,
    load_dataset,
    read_agent_csv,
    read_labels_csv,
    read_paper_csv,
    read_paper_dir,
    window_steps,
    windows,
)
from osml.errors import DataError, OsmlError

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference-data" / "osml-paper"
needs_reference = pytest.mark.skipif(
    not (REFERENCE / "simple-context" / "train_data.csv").is_file(),
    reason=f"paper reference data not found at {REFERENCE}",
)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def paper_dir(root: Path, train: str, test: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    write(root / "train_data.csv", train)
    write(root / "test_data.csv", test)
    return root


GOOD = "\n".join(
    [
        "AgentM0[1],Agent0[0],AgentM0[0],Agent1[0]",
        "1.5,0.25,-2,10",
        "2.5,0.5,-3,11",
        "3.5,0.75,-4e0,12",
        "",
    ]
)


# ----------------------------------------------------------------------------- good paper files


def test_read_paper_csv_good_file(tmp_path: Path) -> None:
    # Prepare
    path = write(tmp_path / "train_data.csv", GOOD)
    # Execute
    data = read_paper_csv(path)
    # Assert: agents in header order, features sorted by index whatever the column order
    assert list(data) == ["M0", "0", "1"]
    np.testing.assert_array_equal(data["M0"], [[-2, 1.5], [-3, 2.5], [-4, 3.5]])
    np.testing.assert_array_equal(data["0"], [[0.25], [0.5], [0.75]])
    np.testing.assert_array_equal(data["1"], [[10], [11], [12]])
    for array in data.values():
        assert array.dtype == np.float32
        assert array.ndim == 2


def test_read_paper_csv_tolerates_bom_crlf_and_trailing_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes(b"\xef\xbb\xbfAgent0[0],Agent0[1]\r\n1,2\r\n3,4\r\n\r\n")
    data = read_paper_csv(path)
    np.testing.assert_array_equal(data["0"], [[1, 2], [3, 4]])


def test_read_paper_dir_good(tmp_path: Path) -> None:
    test = "Agent1[0],AgentM0[0],Agent0[0],AgentM0[1]\n9,8,7,6\n"
    directory = paper_dir(tmp_path / "ctx", GOOD, test)
    ds = read_paper_dir(directory)
    assert ds.name == "ctx"
    assert ds.ids == ("M0", "0", "1")  # order of the training file
    assert (ds.n_train, ds.n_test) == (3, 1)
    np.testing.assert_array_equal(ds["M0"].test, [[8, 6]])
    assert ds["M0"].n_features == 2
    assert read_paper_dir(directory, name="custom").name == "custom"


# ---------------------------------------------------------------------------- bad paper files


def error_of(func: object, *args: object) -> str:
    assert callable(func)
    with pytest.raises(DataError) as info:
        func(*args)
    return str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    message = error_of(read_paper_csv, tmp_path / "absent.csv")
    assert "absent.csv" in message
    assert "cannot read" in message


def test_directory_is_unreadable_as_file(tmp_path: Path) -> None:
    message = error_of(read_paper_csv, tmp_path)
    assert str(tmp_path) in message


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "binary.csv"
    path.write_bytes(b"Agent0[0]\n\xff\xfe\x00\n")
    assert "binary.csv" in error_of(read_paper_csv, path)


def test_empty_file(tmp_path: Path) -> None:
    message = error_of(read_paper_csv, write(tmp_path / "empty.csv", ""))
    assert "empty.csv" in message
    assert "empty" in message


def test_header_only(tmp_path: Path) -> None:
    message = error_of(read_paper_csv, write(tmp_path / "h.csv", "Agent0[0]\n"))
    assert "h.csv" in message
    assert "no data rows" in message


@pytest.mark.parametrize("column", ["Agent0", "agent0[0]", "Agent0[x]", "Agent_0[0]", "time", ""])
def test_header_column_not_matching(tmp_path: Path, column: str) -> None:
    path = write(tmp_path / "bad_header.csv", f"Agent1[0],{column}\n1,2\n")
    message = error_of(read_paper_csv, path)
    assert "bad_header.csv" in message
    assert "line 1" in message
    assert f"column 2 {column!r}" in message


def test_duplicate_column(tmp_path: Path) -> None:
    path = write(tmp_path / "dup.csv", "Agent0[0],Agent1[0],Agent0[0]\n1,2,3\n")
    message = error_of(read_paper_csv, path)
    assert "dup.csv" in message
    assert "line 1" in message
    assert "duplicate column 'Agent0[0]'" in message


@pytest.mark.parametrize(
    ("header", "missing"),
    [("Agent0[0],Agent0[2]", "Agent0[1]"), ("AgentM1[1],AgentM1[2]", "AgentM1[0]")],
)
def test_feature_index_gap(tmp_path: Path, header: str, missing: str) -> None:
    path = write(tmp_path / "gap.csv", f"{header}\n1,2\n")
    message = error_of(read_paper_csv, path)
    assert "gap.csv" in message
    assert "line 1" in message
    assert missing in message


def test_row_with_wrong_cell_count(tmp_path: Path) -> None:
    path = write(tmp_path / "ragged.csv", "Agent0[0],Agent1[0]\n1,2\n3,4,5\n")
    message = error_of(read_paper_csv, path)
    assert "ragged.csv" in message
    assert "line 3" in message
    assert "3 cells" in message


def test_blank_line_between_rows(tmp_path: Path) -> None:
    path = write(tmp_path / "blank.csv", "Agent0[0]\n1\n\n2\n")
    message = error_of(read_paper_csv, path)
    assert "blank.csv" in message
    assert "line 3" in message


def test_empty_cell(tmp_path: Path) -> None:
    path = write(tmp_path / "hole.csv", "Agent0[0],Agent1[0]\n1,2\n3,4\n5, \n")
    message = error_of(read_paper_csv, path)
    assert "hole.csv" in message
    assert "line 4" in message
    assert "'Agent1[0]'" in message
    assert "empty cell" in message


@pytest.mark.parametrize("cell", ["abc", "1,5", "1_000", "0x10", "1.2.3"])
def test_non_numeric_cell(tmp_path: Path, cell: str) -> None:
    quoted = f'"{cell}"'
    path = write(tmp_path / "text.csv", f"Agent0[0],Agent1[0]\n1,2\n{quoted},4\n")
    message = error_of(read_paper_csv, path)
    assert "text.csv" in message
    assert "line 3" in message
    assert "'Agent0[0]'" in message
    assert "not a number" in message


@pytest.mark.parametrize("cell", ["nan", "NaN", "inf", "-Infinity", "1e400", "1e39"])
def test_non_finite_cell(tmp_path: Path, cell: str) -> None:
    # 1e39 is a finite float64 but overflows float32
    path = write(tmp_path / "inf.csv", f"Agent0[0],Agent1[0]\n1,2\n3,{cell}\n")
    message = error_of(read_paper_csv, path)
    assert "inf.csv" in message
    assert "line 3" in message
    assert "'Agent1[0]'" in message


def test_quoted_newline_line_numbers_are_physical(tmp_path: Path) -> None:
    # csv allows a newline inside quotes; the error must point at the physical line of the row
    path = write(tmp_path / "q.csv", 'Agent0[0],Agent1[0]\n"1\n",2\n3,x\n')
    message = error_of(read_paper_csv, path)
    assert "line 4" in message


def test_data_error_is_an_osml_error(tmp_path: Path) -> None:
    with pytest.raises(OsmlError):
        read_paper_csv(tmp_path / "nope.csv")


# -------------------------------------------------------------------------- paper directories


def test_read_paper_dir_missing_test_file(tmp_path: Path) -> None:
    directory = tmp_path / "ctx"
    directory.mkdir()
    write(directory / "train_data.csv", GOOD)
    message = error_of(read_paper_dir, directory)
    assert "test_data.csv" in message


def test_read_paper_dir_not_a_directory(tmp_path: Path) -> None:
    message = error_of(read_paper_dir, tmp_path / "nowhere")
    assert "nowhere" in message
    assert "train_data.csv" in message


def test_read_paper_dir_different_agents(tmp_path: Path) -> None:
    directory = paper_dir(
        tmp_path / "ctx", "Agent0[0],Agent1[0]\n1,2\n", "Agent0[0],Agent2[0]\n1,2\n"
    )
    message = error_of(read_paper_dir, directory)
    assert "train_data.csv" in message
    assert "test_data.csv" in message
    assert "'1'" in message and "'2'" in message


def test_read_paper_dir_different_feature_counts(tmp_path: Path) -> None:
    directory = paper_dir(tmp_path / "ctx", "Agent0[0],Agent0[1]\n1,2\n", "Agent0[0]\n1\n")
    message = error_of(read_paper_dir, directory)
    assert "train_data.csv" in message
    assert "test_data.csv" in message
    assert "2 features" in message


# ------------------------------------------------------------------------------------- labels


def test_read_paper_dir_reads_labels_beside_the_data(tmp_path: Path) -> None:
    directory = paper_dir(
        tmp_path / "ctx", GOOD, "Agent1[0],AgentM0[0],Agent0[0],AgentM0[1]\n9,8,7,6\n"
    )
    write(directory / "train_labels.csv", "label\n2\n0\n-1\n")
    write(directory / "test_labels.csv", "label\n 5 \n")

    ds = read_paper_dir(directory)

    assert ds.labelled
    assert ds.train_labels is not None and ds.test_labels is not None
    assert ds.train_labels.tolist() == [2, 0, -1]
    assert ds.test_labels.tolist() == [5]
    assert ds.test_labels.dtype == np.int64
    selected = ds.select(["1"])
    assert selected.test_labels is not None and selected.test_labels.tolist() == [5]


def test_a_paper_dir_without_label_files_has_no_labels(tmp_path: Path) -> None:
    ds = read_paper_dir(paper_dir(tmp_path / "ctx", GOOD, GOOD))

    assert not ds.labelled
    assert ds.train_labels is None and ds.test_labels is None


def test_one_label_file_alone_is_refused(tmp_path: Path) -> None:
    directory = paper_dir(tmp_path / "ctx", GOOD, GOOD)
    write(directory / "test_labels.csv", "label\n1\n2\n3\n")

    message = error_of(read_paper_dir, directory)

    assert "test_labels.csv" in message and "train_labels.csv" in message


def test_labels_must_match_the_rows(tmp_path: Path) -> None:
    directory = paper_dir(tmp_path / "ctx", GOOD, GOOD)
    write(directory / "train_labels.csv", "label\n1\n2\n3\n")
    write(directory / "test_labels.csv", "label\n1\n2\n")

    message = error_of(read_paper_dir, directory)

    assert "test_labels.csv" in message and "2 labels" in message and "3 rows" in message


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("labels\n1\n", ["line 1", "'label'"]),
        ("label,x\n1,2\n", ["line 1", "'label'"]),
        ("label\n1\n1.5\n", ["line 3", "'1.5'", "not an integer"]),
        ("label\n1\n\n2\n", ["line 3", "blank line"]),
        ("label\n1_000\n", ["line 2", "not an integer"]),
        ("label\n1,2\n", ["line 2", "2 cells"]),
        ("label\n99999999999999999999\n", ["line 2", "not an integer"]),
        ("label\n", ["no data rows"]),
    ],
)
def test_read_labels_csv_bad(tmp_path: Path, text: str, fragments: list[str]) -> None:
    path = write(tmp_path / "test_labels.csv", text)

    message = error_of(read_labels_csv, path)

    assert "test_labels.csv" in message
    for fragment in fragments:
        assert fragment in message


def test_dataset_checks_its_labels() -> None:
    agents = (AgentData("a", np.zeros((5, 1)), np.zeros((3, 1))),)

    ds = Dataset("ok", agents, test_labels=np.array([1.0, 2.0, 0.0]))

    assert ds.test_labels is not None and ds.test_labels.dtype == np.int64
    assert not ds.test_labels.flags.writeable
    with pytest.raises(DataError, match="expected 5 labels"):
        Dataset("bad", agents, train_labels=np.zeros(4, dtype=int))
    with pytest.raises(DataError, match="integers"):
        Dataset("bad", agents, test_labels=np.array([0.5, 1.0, 2.0]))


# ---------------------------------------------------------------------------- per-agent files


def test_read_agent_csv_good(tmp_path: Path) -> None:
    path = write(tmp_path / "a.csv", "temperature,humidity\n20.5,0.3\n21,0.4\n")
    array = read_agent_csv(path)
    assert array.dtype == np.float32
    np.testing.assert_allclose(array, [[20.5, 0.3], [21, 0.4]], rtol=1e-6)


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("", ["empty"]),
        ("a,b\n", ["no data rows"]),
        ("a,a\n1,2\n", ["line 1", "duplicate column 'a'"]),
        ("a,\n1,2\n", ["line 1", "column 2", "empty column name"]),
        ("a,b\n1,2\n3\n", ["line 3", "1 cells"]),
        ("a,b\n1,2\n3,\n", ["line 3", "'b'", "empty cell"]),
        ("a,b\n1,2\nfoo,4\n", ["line 3", "'a'", "not a number"]),
        ("a,b\n1,2\n3,nan\n", ["line 3", "'b'", "not finite"]),
    ],
)
def test_read_agent_csv_bad(tmp_path: Path, text: str, fragments: list[str]) -> None:
    path = write(tmp_path / "agent_x.csv", text)
    message = error_of(read_agent_csv, path)
    assert "agent_x.csv" in message
    for fragment in fragments:
        assert fragment in message


def test_read_agent_csv_missing(tmp_path: Path) -> None:
    assert "gone.csv" in error_of(read_agent_csv, tmp_path / "gone.csv")


# ------------------------------------------------------------------------------ value objects


def make_dataset() -> Dataset:
    return Dataset(
        "toy",
        (
            AgentData("a", np.zeros((5, 2)), np.ones((3, 2))),
            AgentData("b", np.zeros((5, 1)), np.ones((3, 1))),
            AgentData("c", np.zeros((5, 1)), np.ones((3, 1))),
        ),
    )


def test_agent_data_normalises_and_freezes() -> None:
    source = np.arange(6, dtype=np.float64).reshape(3, 2)
    agent = AgentData("x", source, source[:1])
    assert agent.train.dtype == np.float32
    assert agent.n_features == 2
    assert not agent.train.flags.writeable
    source[0, 0] = 99.0  # the agent holds a copy
    assert agent.train[0, 0] == 0.0


@pytest.mark.parametrize(
    ("train", "test", "fragment"),
    [
        (np.zeros((3, 2)), np.zeros((3, 1)), "2 features"),
        (np.zeros(3), np.zeros((3, 1)), "2-D"),
        (np.full((3, 1), np.nan), np.zeros((3, 1)), "NaN"),
        (np.zeros((3, 0)), np.zeros((3, 0)), "no features"),
    ],
)
def test_agent_data_rejects(train: np.ndarray, test: np.ndarray, fragment: str) -> None:
    with pytest.raises(DataError, match=fragment):
        AgentData("x", train, test)


def test_dataset_accessors() -> None:
    ds = make_dataset()
    assert ds.ids == ("a", "b", "c")
    assert (ds.n_train, ds.n_test) == (5, 3)
    assert ds["b"].agent_id == "b"
    assert "c" in ds and "z" not in ds
    assert len(ds) == 3
    assert [agent.agent_id for agent in ds] == ["a", "b", "c"]


def test_dataset_select() -> None:
    ds = make_dataset().select(["c", "a"])
    assert ds.ids == ("c", "a")
    assert ds.name == "toy"


def test_dataset_select_unknown_ids() -> None:
    with pytest.raises(DataError) as info:
        make_dataset().select(["a", "zz", "yy"])
    message = str(info.value)
    assert "'zz'" in message and "'yy'" in message
    assert "a, b, c" in message


def test_dataset_getitem_unknown() -> None:
    with pytest.raises(DataError, match=r"no agent 'q'.*a, b, c"):
        make_dataset()["q"]


def test_dataset_rejects_misaligned_and_duplicate_agents() -> None:
    with pytest.raises(DataError, match="'b' has 4 train rows"):
        Dataset(
            "bad",
            (
                AgentData("a", np.zeros((5, 1)), np.zeros((2, 1))),
                AgentData("b", np.zeros((4, 1)), np.zeros((2, 1))),
            ),
        )
    with pytest.raises(DataError, match="duplicate agent id 'a'"):
        Dataset(
            "bad",
            (
                AgentData("a", np.zeros((5, 1)), np.zeros((2, 1))),
                AgentData("a", np.zeros((5, 1)), np.zeros((2, 1))),
            ),
        )
    with pytest.raises(DataError, match="no agents"):
        Dataset("bad", ())


# ----------------------------------------------------------------------------------- windows


def test_windows_shapes_and_labelling() -> None:
    series = np.arange(14, dtype=np.float32).reshape(7, 2)  # row t = [2t, 2t + 1]
    out = windows(series, 3)
    assert out.shape == (5, 3, 2)
    assert out.dtype == np.float32
    for k in range(5):
        np.testing.assert_array_equal(out[k], series[k : k + 3])
    # window k is labelled by its last step k + w - 1
    labels = window_steps(len(series), 3)
    np.testing.assert_array_equal(labels, [2, 3, 4, 5, 6])
    for k, step in enumerate(labels):
        np.testing.assert_array_equal(out[k, -1], series[step])


def test_windows_is_a_read_only_view() -> None:
    series = np.zeros((6, 1), dtype=np.float32)
    out = windows(series, 2)
    assert not out.flags.writeable
    assert np.shares_memory(out, series)
    with pytest.raises(ValueError):
        out[0, 0, 0] = 1.0


def test_windows_edge_cases() -> None:
    series = np.ones((4, 3), dtype=np.float64)
    assert windows(series, 4).shape == (1, 4, 3)
    assert windows(series, 1).shape == (4, 1, 3)
    assert windows(series, 1).dtype == np.float32
    with pytest.raises(DataError, match=r"need at least 5 rows.*has 4"):
        windows(series, 5)
    with pytest.raises(ValueError):
        windows(series, 0)
    with pytest.raises(ValueError):
        windows(np.ones(4), 2)


def test_check_min_rows_names_file_and_agents(tmp_path: Path) -> None:
    test = "Agent1[0],AgentM0[0],Agent0[0],AgentM0[1]\n9,8,7,6\n"
    directory = paper_dir(tmp_path / "short", GOOD, test)
    ds = read_paper_dir(directory)
    check_min_rows(ds, 1)
    with pytest.raises(DataError) as info:
        check_min_rows(ds, 2)
    message = str(info.value)
    assert "test_data.csv" in message
    assert "M0" in message
    assert "at least 2 rows" in message
    with pytest.raises(DataError, match=r"train_data.csv.*at least 4 rows"):
        check_min_rows(ds, 4)


def test_check_min_rows_without_file_names_the_dataset() -> None:
    with pytest.raises(DataError, match=r"'toy'.*at least 9 rows"):
        check_min_rows(make_dataset(), 9)


# ------------------------------------------------------------------------------- load_dataset


def test_load_dataset_generated() -> None:
    ds = load_dataset("generated:complex", seed=3)
    assert ds.name == "generated:complex"
    assert ds.ids == ("0", "1", "2", "3", "4")
    again = load_dataset("generated:complex", seed=3)
    np.testing.assert_array_equal(ds["2"].train, again["2"].train)
    assert load_dataset("generated:simple").ids == ("0", "1", "M0", "M1")


def test_load_dataset_directory(tmp_path: Path) -> None:
    directory = paper_dir(tmp_path / "ctx", GOOD, GOOD)
    assert load_dataset(str(directory)).ids == ("M0", "0", "1")


@pytest.mark.parametrize("spec", ["generated:medium", "no/such/dir", ""])
def test_load_dataset_unknown(spec: str) -> None:
    with pytest.raises(DataError) as info:
        load_dataset(spec)
    message = str(info.value)
    assert "generated:simple" in message and "generated:complex" in message


def test_load_dataset_file_is_not_a_directory(tmp_path: Path) -> None:
    path = write(tmp_path / "x.csv", GOOD)
    with pytest.raises(DataError, match="not a directory"):
        load_dataset(str(path))


# --------------------------------------------------------------------------- reference files


@needs_reference
@pytest.mark.parametrize(
    ("context", "ids", "n_train", "n_test"),
    [
        ("simple-context", ("0", "1", "M0", "M1"), 925, 200),
        ("complex-context", ("0", "1", "2", "3", "4"), 900, 191),
    ],
)
def test_reference_files_load(
    context: str, ids: tuple[str, ...], n_train: int, n_test: int
) -> None:
    ds = load_dataset(str(REFERENCE / context))
    assert ds.ids == ids
    assert (ds.n_train, ds.n_test) == (n_train, n_test)
    for agent in ds:
        assert agent.train.shape == (n_train, agent.n_features)
        assert agent.test.shape == (n_test, agent.n_features)
    expected_features = {"4": 2}
    assert {a.agent_id: a.n_features for a in ds} == {i: expected_features.get(i, 1) for i in ids}
    check_min_rows(ds, 10)
