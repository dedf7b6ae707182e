"""The datamodule serves the protocol's stages: search (train -> val) and final (train+val -> test)."""

from __future__ import annotations

import pytest
import torch

from wegeft_vision.data import BenchmarkDataModule

from .conftest import TINY_CONFIG


def vtab(root, manifest, stage, **kw):
    return BenchmarkDataModule(
        "vtab-1k/cifar", root, stage=stage, manifest=manifest, data_config=TINY_CONFIG, batch_size=4,
        num_workers=0, **kw
    )  # fmt: skip


def fgvc(root, manifest, stage, **kw):
    return BenchmarkDataModule(
        "fgvc/cub", root, stage=stage, manifest=manifest, data_config=TINY_CONFIG, batch_size=4, num_workers=0, **kw
    )


def names(samples):
    return [path.name for path, _ in samples]


def test_vtab_stages(vtab_root, vtab_tiny_manifest):
    search = vtab(vtab_root, vtab_tiny_manifest, "search")
    search.setup()
    assert (search.train_splits, search.eval_split) == (("train800",), "val200")
    assert names(search.samples["train"]) == [f"{i:04d}.png" for i in range(6)]
    assert names(search.samples["eval"]) == [f"{i:04d}.png" for i in range(6, 9)]
    final = vtab(vtab_root, vtab_tiny_manifest, "final")
    final.setup()
    assert len(final.samples["train"]) == 9 and names(final.samples["eval"]) == [f"{i:04d}.png" for i in range(9, 13)]
    assert final.describe()["num_classes"] == 100


def test_fgvc_stages_and_label_map(fgvc_root, fgvc_tiny_manifest):
    search = fgvc(fgvc_root, fgvc_tiny_manifest, "search")
    search.setup()
    assert search.class_ids == ["001", "002", "003"] and search.num_classes == 3
    assert [label for _, label in search.samples["eval"]] == [1, 0]  # val lacks "003": train's indices kept
    final = fgvc(fgvc_root, fgvc_tiny_manifest, "final")
    final.setup()
    assert len(final.samples["train"]) == 6 and len(final.samples["eval"]) == 3  # train only, as the authors' code
    with_val = fgvc(fgvc_root, fgvc_tiny_manifest, "final", final_includes_val=True)
    with_val.setup()
    assert len(with_val.samples["train"]) == 8 and with_val.describe()["train_splits"] == ["train", "val"]


def test_batches_and_deterministic_order(vtab_root, vtab_tiny_manifest):
    first = vtab(vtab_root, vtab_tiny_manifest, "search", seed=3)
    images, labels = next(iter(first.train_dataloader()))
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32 and labels.dtype == torch.int64
    again = vtab(vtab_root, vtab_tiny_manifest, "search", seed=3)
    assert [b[1].tolist() for b in again.train_dataloader()] == [b[1].tolist() for b in first.train_dataloader()]
    assert sum(len(b[1]) for b in first.val_dataloader()) == 3
    workers = vtab(vtab_root, vtab_tiny_manifest, "search", seed=3)
    workers.num_workers = 1  # decoding in a worker process visits the same order
    assert [b[1].tolist() for b in workers.train_dataloader()] == [b[1].tolist() for b in first.train_dataloader()]


def test_cached_loader_matches_the_decoding_loader(vtab_root, vtab_tiny_manifest, tmp_path):
    plain = vtab(vtab_root, vtab_tiny_manifest, "final", seed=1)
    cached = vtab(vtab_root, vtab_tiny_manifest, "final", seed=1, cache_dir=tmp_path / "cache", cache_device="cpu")
    for a, b in zip(plain.test_dataloader(), cached.test_dataloader(), strict=True):
        assert b[0].dtype == torch.uint8  # normalized after the transfer to the device
        b = cached.on_after_batch_transfer(b, 0)
        assert torch.allclose(a[0], b[0], atol=1e-5) and torch.equal(a[1], b[1])
        assert plain.on_after_batch_transfer(a, 0)[0] is a[0]
    assert [b[1].tolist() for b in plain.train_dataloader()] == [b[1].tolist() for b in cached.train_dataloader()]


def test_counts_are_enforced_unless_allowed(vtab_root):
    accept = r"train800.txt: 6 entries, expected 800; to accept it: --set data.allow_count_mismatch=true"
    with pytest.raises(ValueError, match=accept):
        vtab(vtab_root, None, "search").setup()
    module = vtab(vtab_root, None, "search", allow_count_mismatch=True)
    module.setup()
    assert len(module.samples["train"]) == 6


def test_bad_arguments(vtab_root, vtab_tiny_manifest, fgvc_tiny_manifest):
    with pytest.raises(ValueError, match="unknown stage 'tune'"):
        vtab(vtab_root, vtab_tiny_manifest, "tune")
    with pytest.raises(ValueError, match="describes a fgvc dataset, not vtab-1k/cifar"):
        vtab(vtab_root, fgvc_tiny_manifest, "search")
    with pytest.raises(ValueError, match="batch_size should be at least 1"):
        BenchmarkDataModule("vtab-1k/cifar", vtab_root, data_config=TINY_CONFIG, batch_size=0)
