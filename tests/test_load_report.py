"""Tests for transferkit.load_report: LoadReport's table (numbered-range grouping, coverage) and JSON."""

from __future__ import annotations

import json

from torch import nn

from transferkit.load_report import build_report, compact_keys


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


def test_old_import_paths_give_the_same_objects() -> None:
    """LoadReport and its helpers moved out of transferkit.partial; the old names must keep working."""
    import transferkit
    import transferkit.load_report as load_report
    import transferkit.partial as partial

    assert transferkit.LoadReport is partial.LoadReport is load_report.LoadReport
    assert partial.build_report is load_report.build_report
    assert partial.compact_keys is load_report.compact_keys


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
