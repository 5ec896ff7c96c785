"""Tests for transferkit.load_report: LoadReport's table (numbered-range grouping, coverage) and JSON."""

from __future__ import annotations

import json

from torch import nn

from transferkit.load_report import LoadReport, build_report, compact_keys, compact_pairs


def test_report_table_groups_numbered_ranges() -> None:
    keys = [f"layer1.{i}.conv1.weight" for i in range(3)] + [
        "layer1.0.bn1.weight",
        "layer1.0.bn1.bias",
        "fc.weight",
    ]
    assert compact_keys(keys) == ["layer1.{0..2}.conv1.weight", "layer1.0.bn1.{weight,bias}", "fc.weight"]
    assert compact_keys(["b.0.w", "b.2.w", "b.3.w", "b.4.w"]) == ["b.{0,2..4}.w"]


def test_report_table_shows_coverage_and_serialises() -> None:
    model = nn.Module()
    model.add_module("backbone", nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))
    model.add_module("head", nn.Linear(4, 3))
    report = build_report(model.state_dict(keep_vars=True), model.state_dict())
    text = str(report)
    assert "coverage" in text and "backbone 100%" in text
    assert json.loads(json.dumps(report.to_dict()))["total_coverage"] == 1.0


def test_load_report_is_exported_from_the_package_root() -> None:
    import transferkit
    import transferkit.load_report as load_report

    assert transferkit.LoadReport is load_report.LoadReport


def test_tied_parameters_count_once_and_load_through_an_alias() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(5, 4)
            self.out = nn.Linear(4, 5, bias=False)
            self.out.weight = self.emb.weight

    model = Tied()
    report = build_report(model.state_dict(keep_vars=True), {"emb.weight": model.emb.weight})
    assert report.missing == [] and (report.loaded_params, report.total_params) == (20, 20)


def test_structural_pairs_print_compactly_first_to_last_on_each_side() -> None:
    pairs = {
        f"_blocks.{i}._bn1.{leaf}": f"blocks.{i // 4}.{i % 4}.bn2.{leaf}" for i in range(8) for leaf in "wb"
    }
    pairs = {**{"_stem.weight": "conv_stem.weight"}, **pairs}
    assert compact_pairs(pairs) == [
        "_stem.weight -> conv_stem.weight",
        "_blocks.{0..7}._bn1.{w,b} -> blocks.{0.0..1.3}.bn2.*  (16)",
    ]


def test_a_structural_load_says_so_and_serialises_its_pairs() -> None:
    report = LoadReport(
        loaded=["fc.weight"], method="structure", aligned={"_fc.weight": "fc.weight"}, verified=0.0
    )
    assert "aligned by structure" in report.summary()
    assert "aligned by structure (1 pair): checkpoint -> model\n  _fc.weight -> fc.weight" in str(report)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["method"] == "structure" and data["aligned"] == {"_fc.weight": "fc.weight"}
    assert data["verified"] == 0.0 and data["unwritten"] == []


def test_tensors_offered_but_not_written_count_and_show() -> None:
    report = LoadReport(loaded=["a.weight"], missing=["b.weight"], unwritten=["b.weight"])
    assert report.summary().startswith("loaded 1/2 checkpoint tensors")
    assert "offered but not written by the model's own loading code (1)\n  b.weight" in str(report)
