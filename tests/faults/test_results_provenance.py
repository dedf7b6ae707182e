"""Results that never drift from what was trained: a `results.csv` value edited by hand (refused by the rerun and by
`report`, never kept or overwritten), and a backbone chosen on the command line that the recipe would not train."""

from __future__ import annotations

import csv
import io
import os
import shutil
from operator import itemgetter
from pathlib import Path

import pytest
import yaml

from wegeft_vision.cli import main
from wegeft_vision.protocol.launch import prepare
from wegeft_vision.protocol.preset import CONFIG_DIR
from wegeft_vision.protocol.request import Request

SMALL = [
    "--config",
    "smoke",
    "--no-progress",
    "--poll",
    "0.5",
    "--methods",
    "linear",
    "--tasks",
    "vtab-1k/synthetic_shape",
]
MINI = "vit_mini_patch8_32.procedural"


def rows_of(out: Path) -> list[dict[str, str]]:
    with (out / "results.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def records(out: Path) -> dict[Path, int]:
    return {path: path.stat().st_mtime_ns for path in (out / "runs").rglob("result.json")}


def errors(err: str, command: str) -> list[str]:
    """The error lines of a command's stderr (Lightning may log `Seed set to ...` while a configuration parses)."""
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith(f"wegeft-vision {command}: error:")]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("small") / "run"
    assert main(["protocol", *SMALL, "--out", str(out)]) == 0
    return out


def test_the_backbone_column_names_the_architecture_arguments_it_was_built_with(trained):
    rows = rows_of(trained)
    assert len(rows) == 5 and {r["weights"] for r in rows} == {"random:seed0"}
    assert {r["backbone"] for r in rows} == {
        "vit_base_patch16_224(img_size=32,patch_size=8,embed_dim=32,depth=2,num_heads=2)"
    }


def test_an_edited_value_stops_the_rerun_and_report_until_its_line_is_deleted(trained, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    original = rows_of(out)
    lines = (out / "results.csv").read_text().splitlines(keepends=True)
    edited = {3: ("top1", "99.0"), 6: ("backbone", MINI)}  # line 6: the final run
    for number, (column, value) in edited.items():
        row = dict(original[number - 2])
        before = row[column]
        row[column] = value
        buffer = io.StringIO()
        csv.DictWriter(buffer, fieldnames=list(row), lineterminator="\n").writerow(row)
        lines[number - 1] = buffer.getvalue()
        edited[number] = (column, value, before)
    (out / "results.csv").write_text("".join(lines))
    data, done = (out / "results.csv").read_bytes(), records(out)

    assert main(["protocol", *SMALL, "--out", str(out)]) == 2
    (line,) = errors(capsys.readouterr().err, "protocol")
    for number, (column, value, before) in edited.items():
        assert (
            f"results.csv, line {number}: column '{column}' holds '{value}' where the run recorded '{before}'" in line
        )
    assert "delete the line(s) and rerun the same command" in line
    assert (out / "results.csv").read_bytes() == data and records(out) == done  # nothing overwritten, nothing trained

    assert main(["report", str(out / "results.csv"), "--stage", "search"]) == 2
    (line,) = errors(capsys.readouterr().err, "report")
    assert "line 3: column 'top1' holds '99.0'" in line and "line 6: column 'backbone'" in line
    assert "report refuses such a file" in line and not (out / "report").exists()

    (out / "results.csv").write_text("".join(line for n, line in enumerate(lines, 1) if n not in edited))
    assert main(["protocol", *SMALL, "--out", str(out)]) == 0
    assert records(out) == done  # re-derived from the runs' records, not trained again
    key = itemgetter("stage", "lr", "weight_decay")
    assert sorted(rows_of(out), key=key) == sorted(original, key=key)
    assert main(["report", str(out / "results.csv"), "--out", str(tmp_path / "report")]) == 0


@pytest.mark.parametrize("choice", [["--backbone", MINI], ["--set", f"model.backbone={MINI}"]], ids=["option", "set"])
def test_a_chosen_backbone_the_recipe_would_not_train_is_refused_before_anything_is_pinned(tmp_path, capsys, choice):
    out = tmp_path / "run"
    assert main(["protocol", "--config", "smoke", *choice, "--out", str(out)]) == 2
    (line,) = errors(capsys.readouterr().err, "protocol")
    assert f"model.backbone={MINI}" in line and str(CONFIG_DIR / "fit" / "smoke.yaml") in line
    assert "model.pretrained=false and model.backbone_overrides={img_size: 32," in line
    assert "add --set model.pretrained=true --set model.backbone_overrides=null" in line
    assert not (out / "protocol.json").exists() and not (out / "results.csv").exists() and not (out / "runs").exists()


def test_only_the_settings_the_user_left_to_the_recipe_are_named(tmp_path, capsys):
    command = ["protocol", "--config", "smoke", "--backbone", MINI, "--set", "model.pretrained=true"]
    assert main([*command, "--out", str(tmp_path / "run")]) == 2
    (line,) = errors(capsys.readouterr().err, "protocol")
    assert "with model.backbone_overrides={" in line and "model.pretrained=false" not in line
    assert "add --set model.backbone_overrides=null to train it" in line


def test_the_way_out_trains_and_records_the_chosen_backbone(tmp_path):
    out = tmp_path / "run"
    way_out = ["--backbone", MINI, "--set", "model.pretrained=true", "--set", "model.backbone_overrides=null"]
    assert main(["protocol", *SMALL, *way_out, "--out", str(out)]) == 0
    rows = rows_of(out)
    assert {r["backbone"] for r in rows} == {MINI} and all(r["weights"].startswith("shipped@") for r in rows)


def test_a_methods_own_random_init_control_is_no_error(tmp_path):
    preset = tmp_path / "control.yaml"
    linear = str(CONFIG_DIR / "method" / "linear.yaml")
    control = {"config": linear, "lr": [0.03], "weight_decay": [0.0], "overrides": {"model.pretrained": False}}
    preset.write_text(
        yaml.safe_dump(
            {
                "name": "control",
                "base": str(CONFIG_DIR / "protocol" / "smoke.yaml"),
                "fit_config": str(CONFIG_DIR / "fit" / "demo.yaml"),  # pretrained, no architecture arguments
                "methods": {"linear": {**control, "overrides": {}}, "linear_random": control},
            }
        )
    )
    out = tmp_path / "run"
    protocol = prepare(Request(preset=preset, out=out, overrides={"model.backbone": MINI}))
    assert {unit.method for unit in protocol.units} == {"linear", "linear_random"}
    assert not (out / "protocol.json").exists() and os.listdir(out) == ["data"]  # the synthetic tasks only
