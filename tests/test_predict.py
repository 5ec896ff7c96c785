"""``transferkit predict RUN INPUT...`` on real images: the run's own top-1, outputs, refusals."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from tests.use_runs import fashion_run, listing, own_validation_top1, sample_jpegs, three_class_run
from transferkit.cli import main


@pytest.fixture
def run(tmp_path_factory, monkeypatch) -> Path:
    path = fashion_run(tmp_path_factory)
    monkeypatch.chdir(path.parent)
    return path


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_predict_gives_the_runs_own_validation_top1(run, tmp_path, capsys):
    out = tmp_path / "p.csv"
    assert main(["predict", str(run), "data/val", "--topk", "3", "--out", str(out), "--batch-size", "16",
                 "--workers", "0"]) == 0  # fmt: skip
    rows = _rows(out)
    paths, _, top1 = own_validation_top1(run)
    names = json.loads((run / "labels.json").read_text())["class_names"]
    assert {r["path"]: r["class_1"] for r in rows} == {p: names[t] for p, t in zip(paths, top1)}
    assert list(rows[0]) == ["path", "class_1", "prob_1", "class_2", "prob_2", "class_3", "prob_3"]
    assert all(float(r["prob_1"]) >= float(r["prob_2"]) >= float(r["prob_3"]) for r in rows)
    printed = capsys.readouterr()
    assert (
        printed.out.strip().splitlines()[-1].startswith("predicted 80 image(s)") and str(out) in printed.out
    )
    assert "predict: 16/80 images" in printed.err  # plain progress lines, not a terminal


def test_inputs_from_lists_globs_and_mixed_formats_with_logits_as_json(run, tmp_path, capsys):
    photos = sample_jpegs(tmp_path / "photos")
    grey = sorted(Path("data/val/bag").glob("*-grey.png"))
    rgba = sorted(Path("data/val/coat").glob("*-rgba.png"))
    wide = sorted(Path("data/val/boot").glob("*-wide16.png"))
    listed = tmp_path / "list.txt"
    listed.write_text(f"# a comment\n{grey[0].resolve()}\n\nphotos/china.jpg\n")
    out = tmp_path / "p.json"
    argv = ["predict", str(run), str(listed), "data/val/coat/*-rgba.png", str(wide[0]), str(photos[1]),
            str(grey[0].resolve()), "--topk", "2", "--logits", "--out", str(out), "--tta", "flip"]  # fmt: skip
    assert main(argv) == 0
    rows = json.loads(out.read_text())
    assert [r["path"] for r in rows] == [
        str(grey[0].resolve()),
        str(photos[0]),
        *map(str, rgba),
        str(wide[0]),
        str(photos[1]),
    ]  # listed paths resolve from the list's folder, once each
    assert all(len(r["top"]) == 2 and len(r["logits"]) == 10 for r in rows)
    plain = tmp_path / "plain.json"
    assert main([*argv[: argv.index("--out")], "--out", str(plain)]) == 0  # the same, without --tta flip
    assert [r["top"][0]["prob"] for r in json.loads(plain.read_text())] != [r["top"][0]["prob"] for r in rows]


def test_an_unreadable_image_is_skipped_and_the_others_written(run, tmp_path, capsys):
    folder = tmp_path / "in"
    shutil.copytree("data/val/bag", folder)
    (folder / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "p.csv"
    assert main(["predict", str(run), str(folder), "--out", str(out)]) == 0
    assert len(_rows(out)) == 8 and "broken.png" not in out.read_text()
    captured = capsys.readouterr()
    assert "skipping unreadable image" in captured.err and "broken.png" in captured.err
    assert "skipped 1 unreadable" in captured.out
    strict_out = tmp_path / "strict.csv"
    assert main(["predict", str(run), str(folder), "--out", str(strict_out), "--strict"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "broken.png" in err[0] and "--strict" in err[0] and not strict_out.exists()


def _bad(tmp: Path, run: Path, case: str) -> tuple[list[str], str]:
    if case == "incomplete run":
        shutil.copytree(run, tmp / "half")
        (tmp / "half" / "labels.json").unlink()
        return ["predict", str(tmp / "half"), "data/val"], "not a complete transferkit run folder"
    if case == "foreign run":
        (tmp / "notes").mkdir()
        (tmp / "notes" / "a.txt").write_text("x")
        return ["predict", str(tmp / "notes"), "data/val"], "not a complete transferkit run folder"
    if case == "missing input":
        return ["predict", str(run), "data/nope.png"], "does not exist"
    if case == "empty folder":
        (tmp / "empty").mkdir()
        return ["predict", str(run), str(tmp / "empty")], "holds no image files"
    if case == "not an image":
        return ["predict", str(run), str(run / "args.yaml")], "is not an image file"
    if case == "glob matching nothing":
        return ["predict", str(run), "data/*.webp"], "matches no image file"
    if case == "topk too large":
        return [
            "predict",
            str(run),
            "data/val",
            "--topk",
            "11",
        ], "--topk 11 is larger than the run's 10 classes"
    if case == "bad out suffix":
        return ["predict", str(run), "data/val", "--out", str(tmp / "p.txt")], "must end in .csv or .json"
    if case == "the run's own file as out":
        return ["predict", str(run), "data/val", "--out", str(run / "labels.json"), "--overwrite"], (
            f"--out {run / 'labels.json'} is the run's own labels.json, which would break the run"
        )
    (tmp / "p.csv").write_text("mine\n")
    return ["predict", str(run), "data/val", "--out", str(tmp / "p.csv")], "exists; pass --overwrite"


@pytest.mark.parametrize("case", ["incomplete run", "foreign run", "missing input", "empty folder", "not an image",
                                  "glob matching nothing", "topk too large", "bad out suffix", "existing out",
                                  "the run's own file as out"])  # fmt: skip
def test_bad_input_exits_2_with_one_line_and_writes_nothing(run, tmp_path, capsys, case):
    argv, message = _bad(tmp_path, run, case)
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "out.csv")]
    before, run_before = listing(tmp_path), listing(run)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert listing(tmp_path) == before and listing(run) == run_before
    if case == "existing out":
        assert (tmp_path / "p.csv").read_text() == "mine\n"


def test_overwrite_replaces_an_existing_output(run, tmp_path):
    out = tmp_path / "p.csv"
    out.write_text("old\n")
    assert main(["predict", str(run), "data/val/bag", "--out", str(out), "--overwrite", "--quiet"]) == 0
    assert len(_rows(out)) == 8


def test_a_progress_bar_on_a_terminal_instead_of_plain_lines(run, tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    out = tmp_path / "p.csv"
    assert main(["predict", str(run), "data/val", "--batch-size", "16", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "predict:" in err and "img" in err and "predict: 16/80 images\n" not in err  # tqdm's bar


def test_the_default_topk_is_capped_at_a_small_runs_class_count(
    tmp_path_factory, tmp_path, capsys, monkeypatch
):
    """`--topk` left out means 5, or every class of a run with fewer: a 3-class run must not be refused."""
    small = three_class_run(tmp_path_factory)
    monkeypatch.chdir(small.parent)
    out = tmp_path / "p.csv"
    assert main(["predict", str(small), "data/val/cat", "--out", str(out), "--quiet"]) == 0, (
        capsys.readouterr().err
    )
    rows = _rows(out)
    assert len(rows) == 4 and {"class_3", "prob_3"} <= set(rows[0]) and "class_4" not in rows[0]
    assert main(["predict", str(small), "data/val/cat/0.png", "--topk", "4"]) == 2
    assert "--topk 4 is larger than the run's 3 classes" in capsys.readouterr().err


def test_a_list_file_naming_a_missing_path_is_named_in_the_error(run, tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello world\n")
    assert main(["predict", str(run), str(notes)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"listed in {notes})" in err, err
