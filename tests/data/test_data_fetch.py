"""`wegeft-vision data fetch-splits`: downloads (here from a stand-in for urlopen), verifies sha256, fails clearly."""

from __future__ import annotations

import io
import urllib.error
import urllib.request

import pytest

from wegeft_vision.cli import main
from wegeft_vision.data import sha256_of

from .conftest import FGVC_LABELS, fgvc_manifest


@pytest.fixture
def served(fgvc_root, tmp_path, monkeypatch):
    """A manifest whose URLs are answered from the tiny dataset's files; returns (manifest, requested URLs)."""
    sums = {s: sha256_of(fgvc_root / f"{s}.json") for s in FGVC_LABELS}
    manifest = fgvc_manifest(tmp_path / "m.yaml", sha256=sums)
    text = manifest.read_text()
    for split in FGVC_LABELS:
        text = text.replace(
            f"sha256: {sums[split]}", f"sha256: {sums[split]}\n    url: https://example.org/{split}.json"
        )
    manifest.write_text(text)
    requested = []

    def fake_urlopen(url, timeout):
        requested.append(url)
        return io.BytesIO((fgvc_root / url.rsplit("/", 1)[1]).read_bytes())

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    return manifest, requested


def test_fetch_writes_verified_files_and_skips_present_ones(served, fgvc_root, tmp_path, capsys):
    manifest, requested = served
    dest = tmp_path / "splits"
    assert main(["data", "fetch-splits", "fgvc/cub", "--dest", str(dest), "--manifest", str(manifest)]) == 0
    assert f"ok {dest / 'cub' / 'val.json'}" in capsys.readouterr().out
    assert (dest / "cub" / "test.json").read_bytes() == (fgvc_root / "test.json").read_bytes()
    assert len(requested) == 3
    assert main(["data", "fetch-splits", "fgvc/cub", "--dest", str(dest), "--manifest", str(manifest)]) == 0
    assert len(requested) == 3  # already present and verified: nothing downloaded


def test_checksum_mismatch_saves_nothing(served, fgvc_root, tmp_path, capsys):
    manifest, _ = served
    (fgvc_root / "val.json").write_text("{}")
    code = main(["data", "fetch-splits", "fgvc/cub", "--dest", str(tmp_path / "d"), "--manifest", str(manifest)])
    err = capsys.readouterr().err
    assert code == 2 and "https://example.org/val.json: sha256 " in err and "the file was not saved" in err
    assert not (tmp_path / "d" / "cub" / "val.json").exists()


def test_offline_gives_a_clear_error(monkeypatch, tmp_path, capsys):
    def offline(url, timeout):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    code = main(["data", "fetch-splits", "fgvc/nabirds", "--dest", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert "cannot download https://raw.githubusercontent.com/savadikarc/gift/" in err
    assert "name resolution" in err and "copy train.json of nabirds" in err


def test_vtab_has_no_split_files_to_fetch(tmp_path, capsys):
    assert main(["data", "fetch-splits", "vtab-1k/dtd", "--dest", str(tmp_path)]) == 2
    assert "fetch-splits handles fgvc/<dataset>" in capsys.readouterr().err
