"""Data faults planted in tiny datasets: `data check` names each (file, line), loading refuses or decodes them right,
and no file is changed."""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import sys
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wegeft_vision.cli.main import main
from wegeft_vision.data import (
    Manifest,
    SplitEntry,
    check_fgvc,
    check_vtab1k,
    load_fgvc_splits,
    load_vtab1k_split,
    read_image,
    read_split_file,
    write_manifest,
)
from wegeft_vision.data import cache as cache_module
from wegeft_vision.data.check import check_task
from wegeft_vision.data.images import MAX_PIXELS_ENV, inspect_image, verify_image
from wegeft_vision.data.tasks import open_task

# -- tiny datasets ---------------------------------------------------------------------------------------------------


def write_png(path: Path, seed: int | str, size: tuple[int, int] = (6, 8)) -> Path:
    """Random pixels (the format by suffix), deterministic for a seed or a name."""
    if isinstance(seed, str):
        seed = int(hashlib.sha256(seed.encode()).hexdigest()[:8], 16)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return path


def png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def png_16_bit(path: Path, array: np.ndarray) -> Path:
    """A 16-bit PNG written byte by byte (PIL writes no 16-bit colour PNG): grey `(H, W)` or RGB `(H, W, 3)`."""
    height, width = array.shape[:2]
    color_type = 2 if array.ndim == 3 else 0
    rows = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(height))  # filter 0 per row
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + header + png_chunk(b"IDAT", zlib.compress(rows)) + png_chunk(b"IEND", b""))
    return path


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that declares `width x height` pixels in a few bytes: a decompression bomb's header."""
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + header + png_chunk(b"IDAT", zlib.compress(b"")) + png_chunk(b"IEND", b""))
    return path


def make_vtab(root: Path, lines: dict[str, list[str]] | None = None, task: str = "mine") -> Path:
    """`<root>/<task>/` with one image per listed path (class 0/1 alternating), and `<root>/manifest.yaml`.

    `lines` gives the split files' lines (`path label`); default: 3 train, 2 val, 2 test images, disjoint.
    """
    folder = root / task
    if lines is None:
        sizes = {"train800": 3, "val200": 2, "test": 2}
        lines = {split: [f"images/{split}/{i}.png {i % 2}" for i in range(n)] for split, n in sizes.items()}
    lines = {**lines, "train800val200": lines["train800"] + lines["val200"]}
    for split, rows in lines.items():
        for row in rows:
            rel = row.rpartition(" ")[0]
            if not rel.startswith(("/", "..")) and not (folder / rel).exists():
                write_png(folder / rel, seed=rel)
        (folder / f"{split}.txt").write_text("".join(f"{row}\n" for row in rows))
    splits = {s: SplitEntry(s, f"{s}.txt", len(rows)) for s, rows in lines.items()}
    write_manifest(Manifest("vtab-1k", task, 2, splits), root / "manifest.yaml")
    return folder


def make_fgvc(root: Path, entries: dict[str, dict[str, str]] | None = None) -> Path:
    """`<root>/images/<class>/<n>.png` and `<root>/{train,val,test}.json`, disjoint by default, with a manifest."""
    entries = entries or {
        "train": {"a/0.png": "a", "b/1.png": "b", "a/2.png": "a"},
        "val": {"b/3.png": "b"},
        "test": {"a/4.png": "a", "b/5.png": "b"},
    }
    for split, labels in entries.items():
        for rel in labels:
            if not rel.startswith(("/", "..")) and not (root / "images" / rel).exists():
                write_png(root / "images" / rel, seed=rel)
        (root / f"{split}.json").write_text(json.dumps(labels, indent=0))
    splits = {s: SplitEntry(s, f"{s}.json", len(labels), len(set(labels.values()))) for s, labels in entries.items()}
    write_manifest(Manifest("fgvc", "birds", 2, splits, image_folder="images"), root / "manifest.yaml")
    return root


def snapshot(root: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def data_check(capsys, *args) -> tuple[int, str, str]:
    code = main(["data", "check", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def vtab_cli(capsys, root: Path, *extra) -> tuple[int, str, str]:
    return data_check(capsys, "vtab-1k/mine", "--root", root, "--manifest", root / "manifest.yaml", *extra)


def fgvc_cli(capsys, root: Path, *extra) -> tuple[int, str, str]:
    return data_check(capsys, "fgvc/birds", "--root", root, "--manifest", root / "manifest.yaml", *extra)


def one_error_line(err: str) -> None:
    assert err.count("\n") == 1 and "Traceback" not in err, err


@pytest.fixture(autouse=True)
def _pil_guard(monkeypatch):
    """PIL's pixel guard restored after each test (the environment's limit is applied to it)."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    monkeypatch.delenv(MAX_PIXELS_ENV, raising=False)


# -- split files: overlaps, duplicates, paths outside the root, encoding ------------------------------------------


def test_vtab_overlaps_between_disjoint_splits_are_named_by_file_and_line(tmp_path, capsys):
    lines = {
        "train800": ["images/a.png 0", "images/b.png 1", "images/c.png 0"],
        "val200": ["images/d.png 1", "./images/b.png 1"],  # train800 vs val200, spelled differently
        "test": ["images/e.png 0", "images/a.png 0", "images/d.png 1"],  # vs train800 (and train800val200), vs val200
    }
    folder = make_vtab(tmp_path, lines)
    before = snapshot(tmp_path)
    report = check_vtab1k(tmp_path, "mine", manifest=tmp_path / "manifest.yaml")
    overlaps = [p.message for p in report.errors if p.kind == "split overlap"]
    assert len(overlaps) == 3, overlaps  # train800val200 holds train800 and val200 by design: not an overlap
    assert f"{folder / 'val200.txt'}:2: ./images/b.png is also in train800.txt:2 (val200 must share no" in overlaps[0]
    assert f"{folder / 'test.txt'}:2: images/a.png is also in train800.txt:1, train800val200.txt:1" in overlaps[1]
    assert f"{folder / 'test.txt'}:3: images/d.png is also in val200.txt:1, train800val200.txt:4" in overlaps[2]
    code, out, err = vtab_cli(capsys, tmp_path)
    assert code == 1 and "[split overlap]" in out
    one_error_line(err)
    assert "4 problem(s): duplicate entry, split overlap; first:" in err and "val200.txt:2" in err  # b.png twice in
    assert "train800val200.txt:5: ./images/b.png is listed again (line 2)" in out  # train800val200, made by joining
    assert snapshot(tmp_path) == before


def test_duplicate_lines_name_both_lines(tmp_path, capsys):
    lines = {"train800": ["images/a.png 0", "images/b.png 1", "images/a.png 0"], "val200": ["images/c.png 0"]}
    folder = make_vtab(tmp_path, {**lines, "test": ["images/d.png 1", "images/d.png 0"]})
    code, out, err = vtab_cli(capsys, tmp_path)
    assert code == 1
    assert f"[duplicate entry] {folder / 'train800.txt'}:3: images/a.png is listed again (line 1)" in out
    assert f"[duplicate entry] {folder / 'test.txt'}:2: images/d.png is listed again (line 1)" in out
    one_error_line(err)
    assert read_split_file(folder / "train800.txt")[2] == ("images/a.png", 0)  # loading keeps the list as written


def test_paths_outside_the_root_are_flagged_and_never_read(tmp_path, capsys):
    secret = write_png(tmp_path / "outside.png", seed=1)
    lines = {
        "train800": ["images/a.png 0", "../outside.png 1", "images/../images/b.png 1"],  # the last stays inside
        "val200": ["images/c.png 0"],
        "test": [f"{secret} 0", "images/d.png 1"],
    }
    folder = make_vtab(tmp_path / "vtab", lines)
    before = snapshot(tmp_path)
    report = check_vtab1k(tmp_path / "vtab", "mine", manifest=tmp_path / "vtab" / "manifest.yaml")
    outside = [p.message for p in report.errors if p.kind == "path outside root"]
    assert f"{folder / 'train800.txt'}:2: path '../outside.png' leaves the dataset's folder ('..')" in outside[0]
    assert f"{folder / 'test.txt'}:1: path '{secret}' is absolute" in outside[-1]
    assert len(outside) == 3 and report.splits[0].images_checked == 2  # train800val200 lists the escape too
    code, _, err = vtab_cli(capsys, tmp_path / "vtab")
    assert code == 1 and "path outside root" in err
    with pytest.raises(ValueError, match=r"train800.txt:2: path '../outside.png' leaves the dataset's folder"):
        load_vtab1k_split(tmp_path / "vtab", "mine", "train800")
    with pytest.raises(ValueError, match=r"test.txt:1: path '/.*outside.png' is absolute"):
        load_vtab1k_split(tmp_path / "vtab", "mine", "test")
    assert snapshot(tmp_path) == before


def test_list_file_that_is_not_utf8_is_named_with_line_and_offset(tmp_path, capsys):
    folder = make_vtab(tmp_path)
    (folder / "val200.txt").write_bytes(b"images/val200/0.png 0\nimages/val\xff200/1.png 1\n")
    code, out, err = vtab_cli(capsys, tmp_path)
    assert code == 1
    assert f"[unreadable file] {folder / 'val200.txt'}:2: not valid UTF-8 (byte 0xff at offset 32)" in out
    one_error_line(err)
    with pytest.raises(ValueError, match=r"val200.txt:2: not valid UTF-8"):
        load_vtab1k_split(tmp_path, "mine", "val200")


def test_byte_order_mark_is_a_warning_and_never_part_of_the_first_path(tmp_path, capsys):
    folder = make_vtab(tmp_path)
    text = (folder / "test.txt").read_bytes()
    (folder / "test.txt").write_bytes(b"\xef\xbb\xbf" + text)
    code, out, err = vtab_cli(capsys, tmp_path)
    assert code == 0, out
    assert f"warning [byte-order mark] {folder / 'test.txt'}: starts with a UTF-8 byte-order mark" in out
    assert out.rstrip().endswith("OK, 1 warning(s)") and err == ""
    samples, _ = load_vtab1k_split(tmp_path, "mine", "test")
    assert samples[0] == ("images/test/0.png", 0)


def test_fgvc_split_faults(tmp_path, capsys):
    root = make_fgvc(tmp_path / "birds")
    write_png(tmp_path / "leak.png", seed=3)
    (root / "val.json").write_text('{\n"b/3.png": "b",\n"a/0.png": "a",\n"../../leak.png": "b"\n}')  # train, escape
    (root / "test.json").write_bytes(b'\xef\xbb\xbf{\n"a/4.png": "a",\n"b/5.png": "b",\n"a/4.png": "a"\n}')  # key twice
    before = snapshot(tmp_path)
    report = check_fgvc(root, "birds", manifest=root / "manifest.yaml")
    messages = [str(p) for p in report.all_problems]
    overlap = f"[split overlap] {root / 'val.json'}:3: a/0.png is also in train.json:2 (val must share no image"
    assert f"{overlap} with them)" in messages
    expected = f"[path outside root] {root / 'val.json'}:4: path '../../leak.png' leaves the dataset's folder"
    assert any(m.startswith(expected) for m in messages)
    assert f"[duplicate entry] {root / 'test.json'}:4: a/4.png is listed again (line 2)" in messages
    assert f"warning [byte-order mark] {root / 'test.json'}: starts with a UTF-8 byte-order mark" in "\n".join(messages)
    assert report.splits[1].images_checked == 2  # the escape is not read
    code, _, err = fgvc_cli(capsys, root)
    assert code == 1
    one_error_line(err)
    with pytest.raises(ValueError, match=r"test.json:4: 'a/4.png' repeats the image of line 2"):
        load_fgvc_splits("birds", root, splits=("test",))
    with pytest.raises(ValueError, match=r"val.json:4: path '../../leak.png' leaves"):
        load_fgvc_splits("birds", root, splits=("val",))
    assert snapshot(tmp_path) == before
    (root / "val.json").write_bytes(b'{"b/3.png": "b",\n"\xc3(": "a"}')
    with pytest.raises(ValueError, match=r"val.json:2: not valid UTF-8 \(byte 0xc3 at offset 18\)"):
        load_fgvc_splits("birds", root, splits=("val",))
    assert fgvc_cli(capsys, root)[0] == 1


def test_identical_files_in_disjoint_splits_are_a_warning(tmp_path, capsys):
    folder = make_vtab(tmp_path)
    (folder / "images" / "test" / "1.png").write_bytes((folder / "images" / "train800" / "2.png").read_bytes())
    code, out, _ = vtab_cli(capsys, tmp_path)
    assert code == 0, out
    assert "warning [identical files] test.txt:2: image" in out and "has the same bytes as" in out
    assert "(train800.txt:3); test and train800 should share no image" in out


# -- images: 16 bits, transparency, CMYK, EXIF orientation, decompression bombs -----------------------------------


def ramp_16_bit(height: int = 12, width: int = 10) -> np.ndarray:
    return (np.arange(height * width).reshape(height, width) * 65535 // (height * width - 1)).astype(np.uint16)


@pytest.mark.parametrize("kind", ["png I;16", "tiff I;16B", "pgm I"])
def test_16_bit_grey_decodes_to_its_high_byte(tmp_path, kind):
    array = ramp_16_bit()
    path = tmp_path / "x.png"
    if kind == "png I;16":
        Image.fromarray(array).save(path)
    elif kind == "tiff I;16B":
        path = tmp_path / "x.tif"
        Image.frombytes("I;16B", array.shape[::-1], array.astype(">u2").tobytes()).save(path)
    else:
        path = tmp_path / "x.pgm"
        path.write_bytes(b"P5\n10 12\n65535\n" + array.astype(">u2").tobytes())
    assert Image.open(path).mode == kind.split()[1]
    decoded = read_image(path)
    expected = (array >> 8).astype(np.uint8)
    assert torch.equal(decoded, torch.from_numpy(np.stack([expected] * 3)))
    assert decoded.float().mean() < 160  # a clipped decode is near-white (mean ~ 253)
    assert [kind for kind, _ in inspect_image(path).warnings] == ["16-bit image"]


def test_16_bit_colour_png_decodes_to_its_high_byte(tmp_path):
    ramp = ramp_16_bit()
    array = np.stack([ramp, ramp[::-1], 65535 - ramp], axis=-1)
    decoded = read_image(png_16_bit(tmp_path / "rgb16.png", array))
    assert torch.equal(decoded, torch.from_numpy((array >> 8).astype(np.uint8)).permute(2, 0, 1))
    grey = read_image(png_16_bit(tmp_path / "grey16.png", ramp))
    assert torch.equal(grey[0], torch.from_numpy((ramp >> 8).astype(np.uint8)))


def test_pixels_without_an_8_bit_range_are_refused_by_name(tmp_path):
    Image.fromarray(ramp_16_bit().astype(np.int32) * 1000).save(tmp_path / "i32.tif")
    Image.fromarray(ramp_16_bit().astype(np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(ValueError, match=r"image .*i32.tif is unsupported: 32-bit integer pixels \(PIL mode I\)"):
        read_image(tmp_path / "i32.tif")
    assert verify_image(tmp_path / "f.tif").startswith("unsupported: floating-point pixels (PIL mode F)")


def test_transparency_cmyk_and_exif_orientation_are_warnings(tmp_path, capsys):
    lines = {
        "train800": ["images/rgba.png 0", "images/palette.png 1", "images/plain.png 0"],
        "val200": ["images/cmyk.jpg 1"],
        "test": ["images/turned.jpg 0", "images/other.png 1"],
    }
    images = make_vtab(tmp_path, lines) / "images"
    rgba = np.random.default_rng(0).integers(0, 256, (6, 8, 4), dtype=np.uint8)
    rgba[0, 0, 3] = 0
    Image.fromarray(rgba).save(images / "rgba.png")
    palette = Image.fromarray(np.random.default_rng(1).integers(0, 256, (6, 8, 3), dtype=np.uint8)).quantize(8)
    palette.save(images / "palette.png", transparency=int(np.asarray(palette)[0, 0]))
    Image.fromarray(np.full((6, 8, 3), 90, np.uint8)).convert("CMYK").save(images / "cmyk.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # viewers rotate it 90 degrees clockwise
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(images / "turned.jpg", exif=exif)
    before = snapshot(tmp_path)
    code, out, err = vtab_cli(capsys, tmp_path)
    assert code == 0 and err == "", out
    assert f"warning [transparency] train800.txt:1: image {images / 'rgba.png'}: transparent pixels" in out
    assert "alpha dropped, they keep their stored colour" in out
    assert f"warning [transparency] train800.txt:2: image {images / 'palette.png'}" in out and "palette transp" in out
    assert f"warning [cmyk image] val200.txt:1: image {images / 'cmyk.jpg'}: CMYK: converted to RGB" in out
    assert f"warning [exif orientation] test.txt:1: image {images / 'turned.jpg'}: EXIF orientation 6" in out
    assert out.rstrip().endswith("OK, 7 warning(s)")  # train800val200 lists three of them again
    assert torch.equal(read_image(images / "rgba.png"), torch.from_numpy(rgba[:, :, :3]).permute(2, 0, 1))
    palette_rgb = np.array(Image.open(images / "palette.png").convert("RGB"))  # as the reference pipelines load it
    assert torch.equal(read_image(images / "palette.png"), torch.from_numpy(palette_rgb).permute(2, 0, 1))
    assert read_image(images / "turned.jpg").shape == (3, 6, 8)  # as stored, not rotated
    assert read_image(images / "cmyk.jpg").float().mean() > 0
    assert snapshot(tmp_path) == before


def test_decompression_bomb_is_refused_with_its_size(tmp_path, capsys):
    folder = make_vtab(tmp_path)
    bomb = png_header_only(folder / "images" / "test" / "1.png", 30000, 30000)
    before = snapshot(tmp_path)
    code, out, err = vtab_cli(capsys, tmp_path)
    assert code == 1
    assert (
        "[image too large] test.txt:2: image "
        f"{bomb} is too large: 30,000x30,000 = 900,000,000 pixels, over the limit of 89,478,485" in out
    )
    assert f"if you trust the data, set {MAX_PIXELS_ENV}=900000000 or more" in out
    one_error_line(err)
    with pytest.raises(ValueError, match=r"image .*1.png is too large: 30,000x30,000 = 900,000,000 pixels"):
        read_image(bomb)
    assert snapshot(tmp_path) == before


def test_pixel_limit_from_pil_and_from_the_environment(tmp_path, monkeypatch, capsys):
    big, mid = write_png(tmp_path / "big.png", 0, (20, 20)), write_png(tmp_path / "mid.png", 0, (12, 12))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # PIL raises above 200 and warns above 100
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning either
        assert verify_image(big).startswith("too large: 20x20 = 400 pixels, over the limit of 100")
        assert verify_image(mid).startswith("too large: 12x12 = 144 pixels")
        small = [write_png(tmp_path / f"s{i}.png", i, (8, 8)) for i in range(24)]
        with ThreadPoolExecutor(8) as pool:  # the guard is lifted for one header at a time, never for another
            found = list(pool.map(verify_image, [*small, big] * 4))
        assert found == ([None] * 24 + [verify_image(big)]) * 4
        monkeypatch.setenv(MAX_PIXELS_ENV, "400")
        assert read_image(big).shape == (3, 20, 20)
        monkeypatch.setenv(MAX_PIXELS_ENV, "0")
        assert verify_image(big) is None
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    make_vtab(tmp_path / "vtab")
    code, _, err = vtab_cli(capsys, tmp_path / "vtab")
    assert code == 2 and f"{MAX_PIXELS_ENV}='lots' should be a number of pixels" in err
    one_error_line(err)
    args = ["data", "check", "vtab-1k/mine", "--root", str(tmp_path / "vtab"), "--manifest", "vtab/manifest.yaml"]
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=MAX_PIXELS_ENV):  # --debug shows the traceback instead
        main(["--debug", *args])


def test_folder_of_ones_own_and_the_cache_key(tmp_path, capsys, monkeypatch):
    folder = make_vtab(tmp_path)
    Image.fromarray(ramp_16_bit(6, 8)).save(folder / "images" / "val200" / "1.png")
    report = check_task(open_task(folder))
    assert report.ok and [p.kind for p in report.warnings] == ["16-bit image"] * 2  # val200, train800val200
    samples = [(folder / "images" / "val200" / "1.png", 0)]
    key = cache_module.cache_key("d", "s", 8, "g", samples)
    monkeypatch.setattr(cache_module, "DECODER_VERSION", cache_module.DECODER_VERSION + 1)
    assert cache_module.cache_key("d", "s", 8, "g", samples) != key  # a decoder change never serves stale pixels


def test_cli_in_a_process_gives_one_line_and_exit_codes(tmp_path):
    folder = make_vtab(tmp_path)
    png_header_only(folder / "images" / "test" / "0.png", 30000, 30000)
    (folder / "test.txt").write_text((folder / "test.txt").read_text() + "images/train800/0.png 0\n")
    before = snapshot(tmp_path)
    command = [sys.executable, "-m", "wegeft_vision.cli", "data", "check", "vtab-1k/mine", "--root", str(tmp_path)]
    command += ["--manifest", str(tmp_path / "manifest.yaml")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert "image too large" in result.stderr and "split overlap" in result.stderr and "count mismatch" in result.stderr
    assert f"{folder / 'test.txt'}:3: images/train800/0.png is also in train800.txt:1" in result.stdout
    assert snapshot(tmp_path) == before
