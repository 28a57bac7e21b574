"""Tests of vlmad.data.predictions: JSONL round trips, relative map paths, error messages and resuming."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from vlmad.data.maps import load_map, save_map
from vlmad.data.predictions import PredictionWriter, read_predictions, write_predictions
from vlmad.errors import DatasetError
from vlmad.records import Prediction

TRICKY = (
    '<script>alert("x")</script> &amp; <b>bold</b> — Ünïcödé 日本語 🚀 '
    "tab\there, CRLF\r\nline, NEL\x85 LS\u2028 PS\u2029 \\backslash 'quote' \"dq\" \x00nul"
)


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


# --- write / read -----------------------------------------------------------------------------------------


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    amap = np.arange(12, dtype=np.float32).reshape(3, 4)
    map_path = save_map(tmp_path / "run" / "maps" / "a.npy", amap)
    preds = [
        Prediction(
            sample_id="cat/test/good/000",
            run_id="r",
            score=0.5,
            verdict="normal",
            map_path=map_path,
            explanation="fine",
            question_id="q1",
            metadata={"latency_s": 1.5, "raw": ["yes", None]},
        ),
        Prediction(sample_id="cat/test/good/000", run_id="r", question_id="q2", verdict="unparsed"),
        Prediction(sample_id="cat/test/logical_anomalies/000", run_id="r", score=-1e-30),
    ]
    path = write_predictions(tmp_path / "run" / "predictions.jsonl", preds)
    assert path == tmp_path / "run" / "predictions.jsonl"
    assert not (tmp_path / "run" / "predictions.jsonl.tmp").exists()
    back = read_predictions(path)
    assert back == preds
    np.testing.assert_array_equal(load_map(back[0].map_path), amap)


def test_map_paths_are_stored_relative_and_resolve_after_moving(tmp_path: Path) -> None:
    run = tmp_path / "a" / "run"
    amap = np.linspace(0, 1, 20, dtype=np.float32).reshape(4, 5)
    m1 = save_map(run / "maps" / "cat" / "x.npy", amap)
    m2 = save_map(run / "maps" / "cat" / "y.tiff", amap * 2)
    path = write_predictions(
        run / "predictions.jsonl",
        [
            Prediction(sample_id="x", run_id="r", map_path=m1),
            Prediction(sample_id="y", run_id="r", map_path=m2),
            Prediction(sample_id="z", run_id="r", score=1.0),
        ],
    )
    rows = [json.loads(line) for line in _lines(path)]
    assert [r.get("map_path") for r in rows] == ["maps/cat/x.npy", "maps/cat/y.tiff", None]
    assert "map_path" not in rows[2]

    moved = tmp_path / "elsewhere" / "deeper"
    moved.parent.mkdir()
    shutil.move(str(tmp_path / "a"), str(moved))
    assert not run.exists()
    back = read_predictions(moved / "run" / "predictions.jsonl")
    assert back[0].map_path == (moved / "run" / "maps" / "cat" / "x.npy").resolve()
    assert back[1].map_path == (moved / "run" / "maps" / "cat" / "y.tiff").resolve()
    assert back[2].map_path is None
    assert all(p.map_path.is_absolute() for p in back[:2])  # type: ignore[union-attr]
    np.testing.assert_array_equal(load_map(back[0].map_path), amap)
    np.testing.assert_array_equal(load_map(back[1].map_path), amap * 2)


def test_map_outside_the_run_folder_is_stored_relative_with_dotdot(tmp_path: Path) -> None:
    m = save_map(tmp_path / "shared_maps" / "x.npy", np.zeros((2, 2), np.float32))
    path = write_predictions(
        tmp_path / "run" / "p.jsonl", [Prediction(sample_id="x", run_id="r", map_path=m)]
    )
    assert json.loads(_lines(path)[0])["map_path"] == "../shared_maps/x.npy"
    assert read_predictions(path)[0].map_path == m.resolve()


def test_explanation_with_unicode_and_html_survives_unchanged(tmp_path: Path) -> None:
    preds = [
        Prediction(sample_id="a", run_id="r", verdict="anomalous", explanation=TRICKY),
        Prediction(sample_id="b", run_id="r", verdict="normal", explanation="plain"),
    ]
    path = write_predictions(tmp_path / "p.jsonl", preds)
    # one prediction per physical line, whatever line separators the text holds
    assert path.read_bytes().count(b"\n") == 2
    back = read_predictions(path)
    assert back[0].explanation == TRICKY and back[1].explanation == "plain"
    # the same through the incremental writer
    with PredictionWriter(tmp_path / "w.jsonl", "r") as w:
        w.write(preds[0])
    with PredictionWriter(tmp_path / "w.jsonl", "r") as w:
        assert w.done == {("a", None)} and not w.dropped_partial_line
        w.write(preds[1])
    assert read_predictions(tmp_path / "w.jsonl") == preds


def test_write_predictions_replaces_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    write_predictions(path, [Prediction(sample_id="a", run_id="r", score=1.0)])
    write_predictions(path, [Prediction(sample_id="b", run_id="r", score=2.0)])
    assert [p.sample_id for p in read_predictions(path)] == ["b"]


def test_blank_lines_are_ignored(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('\n{"sample_id": "a", "run_id": "r"}\n\n   \n{"sample_id": "b", "run_id": "r"}\n')
    assert [p.sample_id for p in read_predictions(path)] == ["a", "b"]


# --- errors -----------------------------------------------------------------------------------------------


def test_missing_file_named(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found") as e:
        read_predictions(tmp_path / "nope.jsonl")
    assert "nope.jsonl" in str(e.value)


def test_bad_json_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "preds.jsonl"
    path.write_text('{"sample_id": "a", "run_id": "r"}\n\n{"sample_id": "b", "run_id": \n')
    with pytest.raises(DatasetError) as e:
        read_predictions(path)
    msg = str(e.value)
    assert str(path) in msg and "line 3" in msg and "not JSON" in msg
    assert e.value.path == path


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ('{"sample_id": "b", "run_id": "r", "score": NaN}', "score"),
        ('{"sample_id": "b", "run_id": "r", "verdict": "yes"}', "verdict"),
        ('{"sample_id": "b", "run_id": "r", "label": "good"}', "label"),
        ('{"sample_id": "b"}', "run_id"),
        ("[1, 2]", ""),
    ],
)
def test_invalid_prediction_names_file_line_and_field(tmp_path: Path, line: str, field: str) -> None:
    path = tmp_path / "preds.jsonl"
    path.write_text('{"sample_id": "a", "run_id": "r"}\n' + line + "\n")
    with pytest.raises(DatasetError) as e:
        read_predictions(path)
    msg = str(e.value)
    assert str(path) in msg and "line 2" in msg and field in msg


def test_duplicate_prediction_names_both_lines(tmp_path: Path) -> None:
    path = tmp_path / "preds.jsonl"
    path.write_text(
        '{"sample_id": "a", "run_id": "r", "score": 1}\n'
        '{"sample_id": "b", "run_id": "r", "score": 1}\n'
        '{"sample_id": "a", "run_id": "r2", "score": 1}\n'  # other run: fine
        '{"sample_id": "a", "run_id": "r", "question_id": "q", "score": 1}\n'  # other question: fine
        '{"sample_id": "a", "run_id": "r", "score": 2}\n'
    )
    with pytest.raises(DatasetError) as e:
        read_predictions(path)
    msg = str(e.value)
    assert str(path) in msg and "line 5" in msg and "line 1" in msg


def test_duplicate_with_same_question_id_rejected(tmp_path: Path) -> None:
    path = tmp_path / "preds.jsonl"
    path.write_text(
        '{"sample_id": "a", "run_id": "r", "question_id": "q"}\n'
        '{"sample_id": "a", "run_id": "r", "question_id": "q"}\n'
    )
    with pytest.raises(DatasetError, match=r"line 2.*line 1"):
        read_predictions(path)


# --- PredictionWriter -------------------------------------------------------------------------------------


def _p(sample: str, run: str = "r", question: str | None = None, score: float = 1.0) -> Prediction:
    return Prediction(sample_id=sample, run_id=run, score=score, question_id=question)


def test_writer_creates_file_and_flushes_each_line(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "dir" / "p.jsonl"
    w = PredictionWriter(path, "r")
    try:
        assert w.done == set() and not w.dropped_partial_line
        w.write(_p("a"))
        # flushed: another reader sees it before close
        assert [p.sample_id for p in read_predictions(path)] == ["a"]
        w.write(_p("b", question="q"))
        assert w.done == {("a", None), ("b", "q")}
    finally:
        w.close()
    assert read_predictions(path) == [_p("a"), _p("b", question="q")]


def test_writer_resumes_with_done_set(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    with PredictionWriter(path, "r") as w:
        w.write(_p("a"))
        w.write(_p("a", question="q2"))
        w.write(_p("b"))
    with PredictionWriter(path, "r") as w:
        assert w.done == {("a", None), ("a", "q2"), ("b", None)}
        assert not w.dropped_partial_line
        w.write(_p("c"))
    assert [p.key for p in read_predictions(path)] == [("a", None), ("a", "q2"), ("b", None), ("c", None)]


def test_done_set_only_counts_the_writers_run(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    write_predictions(path, [_p("a", run="other"), _p("b", run="r")])
    with PredictionWriter(path, "r") as w:
        assert w.done == {("b", None)}
        w.write(_p("a", run="r"))  # same key as the other run's prediction: allowed
    assert len(read_predictions(path)) == 3


def test_torn_last_line_is_cut_off(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    with PredictionWriter(path, "r") as w:
        w.write(_p("a"))
        w.write(_p("b"))
    intact = path.read_bytes()
    with path.open("ab") as f:
        f.write(b'{"sample_id": "c", "run_id": "r", "sco')
    with pytest.raises(DatasetError, match="line 3"):  # a plain read refuses the torn file
        read_predictions(path)
    with PredictionWriter(path, "r") as w:
        assert w.dropped_partial_line
        assert w.done == {("a", None), ("b", None)}
        assert path.read_bytes() == intact
        w.write(_p("c"))
    assert [p.sample_id for p in read_predictions(path)] == ["a", "b", "c"]


def test_torn_line_with_multibyte_text_is_cut_off(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    with PredictionWriter(path, "r") as w:
        w.write(_p("a"))
    intact = path.read_bytes()
    torn = ('{"sample_id": "b", "run_id": "r", "explanation": "日本' + "\n").encode()
    with path.open("ab") as f:
        f.write(torn[:-3])  # cut in the middle of a UTF-8 character: not even decodable
    with PredictionWriter(path, "r") as w:
        assert w.dropped_partial_line and w.done == {("a", None)}
    assert path.read_bytes() == intact


def test_torn_only_line_leaves_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"sample_id": "a", "ru')
    with PredictionWriter(path, "r") as w:
        assert w.dropped_partial_line and w.done == set()
        w.write(_p("a"))
    assert read_predictions(path) == [_p("a")]


def test_clean_file_is_not_touched(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    write_predictions(path, [_p("a"), _p("b")])
    before = path.read_bytes()
    with PredictionWriter(path, "r") as w:
        assert not w.dropped_partial_line
    assert path.read_bytes() == before


def test_writing_a_duplicate_key_raises(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    with PredictionWriter(path, "r") as w:
        w.write(_p("a"))
        with pytest.raises(ValueError, match="already written"):
            w.write(_p("a", score=2.0))
    with PredictionWriter(path, "r") as w:  # also across sessions
        with pytest.raises(ValueError, match="already written"):
            w.write(_p("a", score=3.0))
        w.write(_p("a", question="q"))
    back = read_predictions(path)
    assert [(p.key, p.score) for p in back] == [(("a", None), 1.0), (("a", "q"), 1.0)]


def test_run_id_mismatch_raises(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    with PredictionWriter(path, "r") as w:
        with pytest.raises(ValueError, match="other"):
            w.write(_p("a", run="other"))
        assert w.done == set()
    assert path.read_text() == ""


def test_writer_stores_map_paths_relative(tmp_path: Path) -> None:
    run = tmp_path / "run"
    m = save_map(run / "maps" / "a.tiff", np.ones((3, 3), np.float32))
    with PredictionWriter(run / "predictions.jsonl", "r") as w:
        w.write(Prediction(sample_id="a", run_id="r", map_path=m))
    assert json.loads(_lines(run / "predictions.jsonl")[0])["map_path"] == "maps/a.tiff"
    shutil.move(str(run), str(tmp_path / "moved"))
    back = read_predictions(tmp_path / "moved" / "predictions.jsonl")
    assert back[0].map_path == (tmp_path / "moved" / "maps" / "a.tiff").resolve()
    assert back[0].map_path.is_file()  # type: ignore[union-attr]


def test_writer_refuses_a_corrupt_middle_line(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"sample_id": "a", "run_id": "r"}\nnot json\n{"sample_id": "b", "run_id": "r"}\n')
    with pytest.raises(DatasetError, match="line 2"):
        PredictionWriter(path, "r")
