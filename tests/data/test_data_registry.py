"""The registry holds the 19 VTAB-1k tasks and 5 FGVC datasets with the paper's counts, and resolves aliases."""

from __future__ import annotations

import pytest

from wegeft_vision.data import FGVC_DATASETS, VTAB_TASKS, fgvc_dataset, parse_target, protocol_splits, vtab_task

VTAB_TEST_SIZES = {
    "cifar": 10_000,
    "caltech101": 6_084,
    "dtd": 1_880,
    "oxford_flowers102": 6_149,
    "oxford_iiit_pet": 3_669,
    "svhn": 26_032,
    "sun397": 21_750,
    "patch_camelyon": 32_768,
    "eurosat": 5_400,
    "resisc45": 6_300,
    "diabetic_retinopathy": 42_670,
    "clevr_count": 15_000,
    "clevr_dist": 15_000,
    "dmlab": 22_735,
    "kitti": 711,
    "dsprites_loc": 73_728,
    "dsprites_ori": 73_728,
    "smallnorb_azi": 12_150,
    "smallnorb_ele": 12_150,
}


def test_vtab_tasks_counts_and_groups():
    assert {name: t.test_size for name, t in VTAB_TASKS.items()} == VTAB_TEST_SIZES
    groups = [t.group for t in VTAB_TASKS.values()]
    assert (groups.count("natural"), groups.count("specialized"), groups.count("structured")) == (7, 4, 8)
    for task in VTAB_TASKS.values():
        assert task.split_sizes == {"train800": 800, "val200": 200, "train800val200": 1000, "test": task.test_size}
    assert VTAB_TASKS["cifar"].num_classes == 100 and VTAB_TASKS["smallnorb_ele"].num_classes == 9


@pytest.mark.parametrize(
    "alias, name",
    [
        ("cifar100", "cifar"),
        ("CIFAR", "cifar"),
        ("oxford_pet", "oxford_iiit_pet"),
        ("pcam", "patch_camelyon"),
        ("clevr_closest_object_distance", "clevr_dist"),
        ("dsprites_location", "dsprites_loc"),
        ("smallnorb_azimuth", "smallnorb_azi"),
        ("diabetic_retinopathy_detection", "diabetic_retinopathy"),
    ],
)
def test_vtab_aliases(alias, name):
    assert vtab_task(alias).name == name


def test_fgvc_datasets():
    assert list(FGVC_DATASETS) == ["cub", "nabirds", "oxfordflowers", "stanforddogs", "stanfordcars"]
    assert FGVC_DATASETS["nabirds"].split_sizes == {"train": 21_536, "val": 2_393, "test": 24_633}
    folders = {name: d.image_folder for name, d in FGVC_DATASETS.items()}
    assert folders == {"cub": "images", "nabirds": "images", "oxfordflowers": "", "stanforddogs": "Images",
                       "stanfordcars": ""}  # fmt: skip
    assert fgvc_dataset("stanford_cars").name == "stanfordcars"


def test_unknown_names_list_the_choices():
    with pytest.raises(ValueError, match="unknown VTAB-1k task 'cifar10'.*cifar, caltech101"):
        vtab_task("cifar10")
    with pytest.raises(ValueError, match="unknown FGVC dataset 'birds'"):
        fgvc_dataset("birds")


def test_parse_target():
    assert parse_target("vtab-1k/cifar100") == ("vtab-1k", "cifar")
    assert parse_target("VTAB/pcam") == ("vtab-1k", "patch_camelyon")
    assert parse_target("fgvc/cub_200_2011") == ("fgvc", "cub")
    assert parse_target("vtab-1k/synthetic_shape", strict=False) == ("vtab-1k", "synthetic_shape")
    with pytest.raises(ValueError, match="should read BENCHMARK/NAME"):
        parse_target("cifar")
    with pytest.raises(ValueError, match="unknown benchmark 'imagenet'"):
        parse_target("imagenet/x")


def test_protocol_splits():
    assert protocol_splits("vtab-1k", "search") == (("train800",), "val200")
    assert protocol_splits("vtab-1k", "final") == (("train800val200",), "test")
    assert protocol_splits("fgvc", "search") == (("train",), "val")
    assert protocol_splits("fgvc", "final") == (("train",), "test")
    assert protocol_splits("fgvc", "final", final_includes_val=True) == (("train", "val"), "test")
    with pytest.raises(ValueError, match="unknown stage 'tune'"):
        protocol_splits("fgvc", "tune")
