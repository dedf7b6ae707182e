"""Faults planted in `results.csv` and its report: torn rows, short writes, full disks, old headers, bad rows."""

from __future__ import annotations

import csv
import errno
import fcntl
import os
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest

import wegeft_vision
from wegeft_vision.cli import main
from wegeft_vision.files import WriteError, write_atomic
from wegeft_vision.protocol.report import build_tables, read_results
from wegeft_vision.protocol.report_files import render_markdown
from wegeft_vision.protocol.results import COLUMNS, TornRowWarning, append_rows, read_rows

PACKAGE = str(Path(wegeft_vision.__file__).parent)
REAL_WRITE = os.write


def result(task="cifar", top1=70.0, **extra):
    values = dict(benchmark="vtab-1k", task=task, method="wegeft", stage="final", lr=1e-3, weight_decay=1e-4, seed=0)
    values.update(epochs=10, top1=top1, params=24_576, backbone="vit_b16", preset="paper", fingerprint="f1")
    return {**values, **extra}


def quiet_rows(path):
    """`read_rows`, failing on any warning: the file holds no torn row."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return read_rows(path)


def write_results(path, rows, columns=COLUMNS):
    """A results file as the protocol writes it, but verbatim: conflicting or out-of-range rows included."""
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows({"state": "finished", **row} for row in rows)
    return path


# --- torn rows ------------------------------------------------------------------------------------------------------


def test_a_torn_last_row_is_skipped_then_moved_aside_and_never_glued(tmp_path):
    path = tmp_path / "results.csv"
    assert append_rows(path, [result("cifar"), result("dtd")]) == 2
    with path.open("ab") as handle:  # a crash half-way through the next row
        handle.write(b"vtab-1k,svhn,,wegeft,final,0.001,0.0")
    with pytest.warns(TornRowWarning, match=r"line 4: torn row.*skipped.*re-derives"):
        assert [r["task"] for r in read_rows(path)] == ["cifar", "dtd"]  # the fragment is no result
    with pytest.warns(TornRowWarning, match=r"line 4: torn row.*moved to .*results\.csv\.torn"):
        assert append_rows(path, [result("eurosat")]) == 1
    rows = quiet_rows(path)
    assert [r["task"] for r in rows] == ["cifar", "dtd", "eurosat"] and rows[-1]["top1"] == "70.0"
    assert path.read_bytes().endswith(b"\n")
    assert (tmp_path / "results.csv.torn").read_text() == "vtab-1k,svhn,,wegeft,final,0.001,0.0\n"


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda line: line[:-1] + ",extra\n", id="too-many-fields"),  # an old version's glued row
        pytest.param(lambda line: line.replace("dtd", '"dtd"x', 1), id="broken-quoting"),
    ],
)
def test_a_row_with_the_wrong_shape_anywhere_is_torn(tmp_path, damage):
    path = tmp_path / "results.csv"
    append_rows(path, [result("cifar"), result("dtd"), result("eurosat")])
    header, first, second, third = path.read_text().splitlines(keepends=True)
    path.write_text(header + first + damage(second) + third)
    with pytest.warns(TornRowWarning, match="line 3"):
        assert append_rows(path, [result("svhn")]) == 1
    assert [r["task"] for r in quiet_rows(path)] == ["cifar", "eurosat", "svhn"]
    assert (tmp_path / "results.csv.torn").read_text() == damage(second)


def test_a_torn_header_is_moved_aside_and_the_file_starts_again(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text("benchmark,task,gr")  # the crash hit the very first write
    with pytest.warns(TornRowWarning, match="line 1"):
        assert append_rows(path, [result()]) == 1
    assert [r["task"] for r in quiet_rows(path)] == ["cifar"]
    assert (tmp_path / "results.csv.torn").read_text() == "benchmark,task,gr\n"


def test_an_append_waiting_while_another_worker_replaces_the_file_lands_in_the_new_file(tmp_path):
    path = tmp_path / "results.csv"
    append_rows(path, [result("cifar")])
    fd = os.open(path, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another worker holds the lock ...
    counts = []
    worker = threading.Thread(target=lambda: counts.append(append_rows(path, [result("dtd")])))
    worker.start()
    time.sleep(0.2)
    write_atomic(path, path.read_bytes())  # ... and repairs the file (a new inode) before letting go
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
    worker.join(10)
    assert counts == [1] and [r["task"] for r in quiet_rows(path)] == ["cifar", "dtd"]


# --- short writes and full disks ------------------------------------------------------------------------------------


def test_short_writes_are_continued(tmp_path, monkeypatch):
    calls = []

    def short_write(fd, data):
        calls.append(len(data))
        return REAL_WRITE(fd, bytes(data[:7]))

    monkeypatch.setattr(os, "write", short_write)
    path = tmp_path / "results.csv"
    assert append_rows(path, [result("cifar"), result("dtd")]) == 2
    write_atomic(tmp_path / "result.json", '{"top1": 70.0}')
    monkeypatch.undo()
    assert len(calls) > 20 and [r["task"] for r in quiet_rows(path)] == ["cifar", "dtd"]
    assert (tmp_path / "result.json").read_text() == '{"top1": 70.0}'


def full_disk_after(monkeypatch, n_bytes):
    """`os.write` writes `n_bytes` more in all, then fails with ENOSPC."""
    left = [n_bytes]

    def write(fd, data):
        if left[0] <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written = REAL_WRITE(fd, bytes(data[: left[0]]))
        left[0] -= written
        return written

    monkeypatch.setattr(os, "write", write)


def test_a_full_disk_leaves_results_exactly_as_before_and_says_so(tmp_path, monkeypatch):
    path = tmp_path / "results.csv"
    append_rows(path, [result("cifar")])
    before = path.read_bytes()
    full_disk_after(monkeypatch, 40)  # part of the row lands, then the disk is full
    with pytest.raises(WriteError, match=r"results\.csv: disk full \(No space left on device\).*left as it was") as err:
        append_rows(path, [result("dtd"), result("eurosat")])
    monkeypatch.undo()
    assert err.value.errno == errno.ENOSPC and isinstance(err.value, OSError)
    assert path.read_bytes() == before
    assert append_rows(path, [result("dtd")]) == 1  # once there is room, the next append works


def test_a_full_disk_on_a_new_file_leaves_it_empty_and_valid(tmp_path, monkeypatch):
    path = tmp_path / "results.csv"
    full_disk_after(monkeypatch, 100)  # the header, but not the row
    with pytest.raises(WriteError, match="disk full"):
        append_rows(path, [result()])
    monkeypatch.undo()
    assert path.read_bytes() == b"" and append_rows(path, [result()]) == 1


def test_a_full_disk_during_a_repair_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "results.csv"
    append_rows(path, [result("cifar")])
    with path.open("ab") as handle:
        handle.write(b"vtab-1k,dtd")
    before = path.read_bytes()
    full_disk_after(monkeypatch, 200)  # the torn fragment is saved, the rewrite fails
    with pytest.raises(WriteError, match=r"results\.csv: disk full.*unchanged"):
        append_rows(path, [result("eurosat")])
    monkeypatch.undo()
    assert path.read_bytes() == before and not list(tmp_path.glob(".*.tmp"))


def test_write_atomic_replaces_whole_or_not_at_all(tmp_path, monkeypatch):
    path = tmp_path / "protocol.json"
    write_atomic(path, "old")
    full_disk_after(monkeypatch, 3)
    with pytest.raises(WriteError, match=r"protocol\.json: disk full.*previous file is unchanged"):
        write_atomic(path, "a much longer new text")
    monkeypatch.undo()
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["protocol.json"]
    write_atomic(path, b"new")
    umask = os.umask(0)
    os.umask(umask)
    assert path.read_bytes() == b"new" and path.stat().st_mode & 0o777 == 0o666 & ~umask


FSIZE_CHILD = """
import json, resource, signal, sys, types
package = types.ModuleType("wegeft_vision")  # skip the package's __init__, which imports torch (seconds)
package.__path__ = [sys.argv[1]]
sys.modules["wegeft_vision"] = package
from wegeft_vision.files import WriteError, write_atomic
from wegeft_vision.protocol.results import append_rows
results, other, limit = sys.argv[2], sys.argv[3], int(sys.argv[4])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG instead of killing
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
errors = []
for write in (lambda: append_rows(results, [json.loads(sys.argv[5])]), lambda: write_atomic(other, "x" * 2 * limit)):
    try:
        write()
    except WriteError as err:
        errors.append([err.errno, str(err)])
print(json.dumps(errors))
"""


def test_a_real_file_size_limit_gives_efbig_and_leaves_the_files_valid(tmp_path):
    import json

    path, other = tmp_path / "results.csv", tmp_path / "selection.json"
    append_rows(path, [result("cifar")])
    other.write_text("{}")
    before = path.read_bytes()
    limit = len(before) + 50  # room for part of a row only: a short write, then EFBIG
    command = [sys.executable, "-c", FSIZE_CHILD, PACKAGE, str(path), str(other), str(limit), json.dumps(result("dtd"))]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    (results_error, other_error) = json.loads(done.stdout)
    assert results_error[0] == errno.EFBIG and "results.csv: file too large" in results_error[1]
    assert other_error[0] == errno.EFBIG and "selection.json: file too large" in other_error[1]
    assert path.read_bytes() == before and other.read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv", "selection.json"]


# --- old headers and row checks on append ---------------------------------------------------------------------------


def test_a_file_of_an_earlier_version_is_upgraded_in_place_with_nothing_lost(tmp_path):
    path = tmp_path / "results.csv"
    old = [c for c in COLUMNS if c not in ("group", "state", "reason")]
    write_results(path, [result("cifar", 61.5), result("dtd", 55.25)], columns=old)
    before = {r["task"]: r for r in read_rows(path)}
    inode = path.stat().st_ino
    assert append_rows(path, [result("dtd", 55.25), result("eurosat", 90.0)]) == 1  # dtd: already there
    rows = quiet_rows(path)
    assert list(rows[0]) == list(COLUMNS) and [r["task"] for r in rows] == ["cifar", "dtd", "eurosat"]
    for row in rows[:2]:
        assert {k: row[k] for k in old} == before[row["task"]] and row["state"] == "finished" and row["group"] == ""
    assert path.stat().st_ino != inode  # replaced whole (atomically), not edited in place
    assert not list(tmp_path.glob(".*.tmp"))


def test_unknown_columns_are_refused_naming_them_and_the_file(tmp_path):
    path = write_results(tmp_path / "results.csv", [result()], columns=[*COLUMNS, "gpu_hours"])
    before = path.read_bytes()
    with pytest.raises(ValueError, match=r"results\.csv: unknown column\(s\) gpu_hours"):
        append_rows(path, [result("dtd")])
    assert path.read_bytes() == before


def test_diverged_rows_are_written_without_top1_and_bad_states_refused(tmp_path):
    path = tmp_path / "results.csv"
    diverged = result(top1=float("nan"), state="diverged", reason="non-finite loss at epoch 3")
    assert append_rows(path, [diverged]) == 1
    (row,) = quiet_rows(path)
    assert (row["state"], row["top1"], row["reason"]) == ("diverged", "", "non-finite loss at epoch 3")
    with pytest.raises(ValueError, match="unknown state 'exploded'"):
        append_rows(path, [result("dtd", state="exploded")])
    with pytest.raises(ValueError, match="finished run .* has top1 nan"):
        append_rows(path, [result("dtd", top1=float("nan"))])
    assert len(quiet_rows(path)) == 1


# --- the report -----------------------------------------------------------------------------------------------------


def run_clis(*argvs):
    """Run several `wegeft-vision` commands at once (each process takes seconds to import torch)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "wegeft_vision.cli", *map(str, argv)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for argv in argvs
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    return [(p.returncode, *output) for p, output in zip(procs, outputs, strict=True)]


def test_cli_refuses_conflicting_rows_and_lists_diverged_runs(tmp_path):
    first = write_results(tmp_path / "a.csv", [result("cifar", 70.0), result("dtd", 60.0)])
    second = write_results(tmp_path / "b.csv", [result("cifar", 70.0), result("dtd", 61.0)])  # dtd disagrees
    good = tmp_path / "good.csv"
    diverged = result(seed=1, lr=0.1, top1=None, state="diverged", reason="non-finite loss at epoch 3")
    append_rows(good, [result(seed=0, top1=70.0), diverged, result(seed=2, top1=74.0)])
    with good.open("ab") as handle:
        handle.write(b"vtab-1k,cifar,,wegeft,final,0.001,0.0001,3,10,9")  # torn inside top1: never counted
    conflict, listed = run_clis(["report", first, second, "--out", tmp_path / "r1"], ["report", good])
    assert conflict[0] == 2 and len(conflict[2].splitlines()) == 1 and "Traceback" not in conflict[2]
    assert "conflicting rows" in conflict[2] and "a.csv, line 3" in conflict[2] and "b.csv, line 3" in conflict[2]
    assert "task=dtd" in conflict[2] and "top1=60.0" in conflict[2] and "top1=61.0" in conflict[2]
    code, out, err = listed
    assert code == 0 and "Traceback" not in err
    (line,) = err.splitlines()  # the torn row: skipped, one warning naming file and line
    assert line.startswith(f"wegeft-vision report: warning: {good}, line 5: torn row")
    assert "| wegeft | 0.025 | 72.0 ± 2.8 |" in out  # the mean of seeds 0 and 2: seed 1 diverged
    assert "- diverged: cifar wegeft seed=1 lr=0.1 wd=0.0001: non-finite loss at epoch 3" in out


@pytest.mark.parametrize(
    ("column", "value", "expected"),
    [
        ("lr", "0", "a number > 0"),
        ("weight_decay", "-1e-4", "a number >= 0"),
        ("top1", "101", "a number in [0, 100]"),
        ("top1", "inf", "a number in [0, 100]"),
        ("top1", "", "empty only for a diverged run"),
        ("seed", "1.5", "an integer >= 0"),
        ("epochs", "0", "an integer >= 1"),
        ("params", "-3", "an integer >= 0"),
        ("state", "exploded", "unknown state 'exploded'; expected finished or diverged"),
    ],
)
def test_report_names_file_line_and_column_of_a_value_out_of_range(tmp_path, capsys, column, value, expected):
    path = write_results(tmp_path / "results.csv", [result("cifar"), {**result("dtd"), column: value}])
    assert main(["report", str(path), "--out", str(tmp_path / "out")]) == 2
    (line,) = capsys.readouterr().err.splitlines()  # the same entry point as the command (see the test above)
    assert f"results.csv, line 3, column '{column}'" in line and expected in line


def test_diverged_runs_count_in_no_cell_and_a_method_with_only_diverged_runs_is_listed(tmp_path):
    rows = [result("cifar", 70.0), result("dtd", 60.0)]
    for task, epoch in (("cifar", 2), ("dtd", 5)):
        rows.append(result(task, "", method="lora", state="diverged", reason=f"non-finite loss at epoch {epoch}"))
    rows += [result("cifar", 50.0, stage="search", lr=1e-3), result("cifar", "", stage="search", lr=1.0)]
    rows[-1].update(state="diverged", reason="non-finite parameters")
    rows = read_results(write_results(tmp_path / "results.csv", rows))
    (table,) = build_tables(rows)
    lora = next(r for r in table.rows if r.method == "lora")
    assert lora.cells == {} and lora.n_seeds == 0 and "lora has no result for cifar, dtd." in table.notes
    assert table.diverged == [
        "cifar lora seed=0 lr=0.001 wd=0.0001: non-finite loss at epoch 2",
        "dtd lora seed=0 lr=0.001 wd=0.0001: non-finite loss at epoch 5",
    ]
    assert "- diverged: dtd lora seed=0" in render_markdown(table)
    (search,) = build_tables(rows, "search")
    assert search.rows[0].cells["cifar"].mean == 50.0 and search.diverged == [
        "cifar wegeft seed=0 lr=1 wd=0.0001: non-finite parameters"
    ]


def test_report_of_two_backbones_or_weight_sources_keeps_them_apart(tmp_path):
    base = dict(backbone="vit_base_patch16_224.augreg_in21k", weights="hub", preprocessing="paper:resize224")
    rows = {
        "in21k.csv": [result("cifar", 70.0, **base), result("dtd", 60.0, **base)],
        "local.csv": [result("cifar", 40.0, **{**base, "weights": "file:/w/vit.pth@0123456789ab"})],
        "mini.csv": [result("cifar", 50.0, **{**base, "backbone": "vit_mini_patch8_32.procedural"})],
    }
    control = result("cifar", 20.0, method="linear_random", backbone="vit_base_patch16_224", weights="random:seed0")
    rows["in21k.csv"].append({**control, "preprocessing": "paper:resize224"})
    files = [write_results(tmp_path / name, group) for name, group in rows.items()]  # one run key in all three
    ((code, out, err),) = run_clis(["report", *files, "--out", tmp_path / "report"])
    assert code == 0 and "Traceback" not in err
    titles = [line for line in out.splitlines() if line.startswith("## ")]
    assert titles == [
        "## VTAB-1k: test top-1 (final) — vit_base_patch16_224.augreg_in21k, weights hub",
        "## VTAB-1k: test top-1 (final) — vit_base_patch16_224.augreg_in21k, weights file:/w/vit.pth@0123456789ab",
        "## VTAB-1k: test top-1 (final) — vit_mini_patch8_32.procedural, weights hub",
    ]
    tables = out.split("\n## ")
    assert "| wegeft | 0.025 | 70.0 | 60.0 |" in tables[1] and "| linear_random | 0.025 | 20.0 | – |" in tables[1]
    assert "| wegeft | 0.025 | 40.0 |" in tables[2] and "| wegeft | 0.025 | 50.0 |" in tables[3]  # none taken over
    assert "| linear_random | 0.025 | 20.0 |" in tables[2]  # the control of both vit_base_patch16_224 setups ...
    assert "linear_random" not in tables[3]  # ... and of no other architecture
    written = sorted(p.name for p in (tmp_path / "report").glob("*.md"))
    assert len(written) == 3 and all(name.startswith("vtab-1k_final_vit_") for name in written)
