"""The benchmarks as data: the 19 VTAB-1k tasks and 5 FGVC datasets, their names, classes and split sizes.

Counts follow the VPT paper's dataset statistics (Jia et al., 2022, Table 7) and the authors' FGVC split files.
"""

from __future__ import annotations

from dataclasses import dataclass, field

VTAB1K = "vtab-1k"
FGVC = "fgvc"
CUSTOM = "custom"  # a user's own folder (`data.folders`), in the VTAB-1k or the ImageFolder layout
BENCHMARKS = (VTAB1K, FGVC, CUSTOM)
IMAGEFOLDER = "imagefolder"  # torchvision's layout: <folder>/{train,val,test}/<class>/<image>
LAYOUTS = (VTAB1K, FGVC, IMAGEFOLDER)  # on-disk formats

VTAB_SPLITS = ("train800", "val200", "train800val200", "test")
FGVC_SPLITS = ("train", "val", "test")
IMAGEFOLDER_SPLITS = ("train", "val", "test")
VTAB_TRAIN_SIZES = {"train800": 800, "val200": 200, "train800val200": 1000}
STAGES = ("search", "final")


@dataclass(frozen=True)
class VTABTask:
    """One VTAB-1k task: canonical folder name, aliases used by other repositories, classes, group, test size."""

    name: str
    group: str
    num_classes: int
    test_size: int
    aliases: tuple[str, ...] = ()

    @property
    def split_sizes(self) -> dict[str, int]:
        """Expected number of lines in each split file."""
        return {**VTAB_TRAIN_SIZES, "test": self.test_size}


@dataclass(frozen=True)
class FGVCDataset:
    """One FGVC dataset: canonical name, classes, split sizes and the image folder the split paths are relative to."""

    name: str
    num_classes: int
    split_sizes: dict[str, int] = field(hash=False)
    image_folder: str
    aliases: tuple[str, ...] = ()


_VTAB_ROWS = [
    # name, group, classes, test size, aliases
    ("cifar", "natural", 100, 10_000, ("cifar100", "cifar_100")),
    ("caltech101", "natural", 102, 6_084, ("caltech", "caltech_101")),
    ("dtd", "natural", 47, 1_880, ("textures",)),
    ("oxford_flowers102", "natural", 102, 6_149, ("flowers102", "oxford_flowers", "vtab_flowers")),
    ("oxford_iiit_pet", "natural", 37, 3_669, ("oxford_pet", "pets", "pet")),
    ("svhn", "natural", 10, 26_032, ("svhn_cropped",)),
    ("sun397", "natural", 397, 21_750, ("sun",)),
    ("patch_camelyon", "specialized", 2, 32_768, ("pcam", "camelyon")),
    ("eurosat", "specialized", 10, 5_400, ("eurosat_rgb",)),
    ("resisc45", "specialized", 45, 6_300, ("resisc",)),
    ("diabetic_retinopathy", "specialized", 5, 42_670, ("retinopathy", "diabetic_retinopathy_detection")),
    ("clevr_count", "structured", 8, 15_000, ("clevr_count_all", "clevr-count")),
    ("clevr_dist", "structured", 6, 15_000, ("clevr_closest_object_distance", "clevr_distance", "clevr-dist")),
    ("dmlab", "structured", 6, 22_735, ()),
    ("kitti", "structured", 4, 711, ("kitti_dist", "kitti_closest_vehicle_distance", "kitti_distance")),
    ("dsprites_loc", "structured", 16, 73_728, ("dsprites_location", "dsprites_label_x_position", "dsprites-loc")),
    ("dsprites_ori", "structured", 16, 73_728, ("dsprites_orientation", "dsprites_label_orientation", "dsprites-ori")),
    ("smallnorb_azi", "structured", 18, 12_150, ("smallnorb_azimuth", "smallnorb_label_azimuth", "smallnorb-azi")),
    ("smallnorb_ele", "structured", 9, 12_150, ("smallnorb_elevation", "smallnorb_label_elevation", "smallnorb-ele")),
]

_FGVC_ROWS = [
    # name, classes, (train, val, test), image folder ("" = the dataset root), aliases
    ("cub", 200, (5_394, 600, 5_794), "images", ("cub200", "cub_200_2011", "cub-200-2011")),
    ("nabirds", 555, (21_536, 2_393, 24_633), "images", ("na_birds",)),
    ("oxfordflowers", 102, (1_020, 1_020, 6_149), "", ("flowers", "oxford_flowers102", "flowers102")),
    ("stanforddogs", 120, (10_800, 1_200, 8_580), "Images", ("dogs", "stanford_dogs")),
    ("stanfordcars", 196, (7_329, 815, 8_041), "", ("cars", "stanford_cars")),
]

VTAB_TASKS: dict[str, VTABTask] = {row[0]: VTABTask(*row) for row in _VTAB_ROWS}
FGVC_DATASETS: dict[str, FGVCDataset] = {
    name: FGVCDataset(name, classes, dict(zip(FGVC_SPLITS, sizes, strict=True)), folder, aliases)
    for name, classes, sizes, folder, aliases in _FGVC_ROWS
}


def _alias_table(entries: dict) -> dict[str, str]:
    table = {}
    for name, entry in entries.items():
        for key in (name, *entry.aliases):
            table[key.lower()] = name
    return table


_VTAB_ALIASES = _alias_table(VTAB_TASKS)
_FGVC_ALIASES = _alias_table(FGVC_DATASETS)


def _lookup(entries: dict, aliases: dict[str, str], kind: str, name: str):
    canonical = aliases.get(name.lower())
    if canonical is None:
        raise ValueError(f"unknown {kind} {name!r}; expected one of {', '.join(entries)} (or an alias)")
    return entries[canonical]


def vtab_task(name: str) -> VTABTask:
    """The VTAB-1k task called `name` (canonical name or alias, case-insensitive).

    Raises:
        ValueError: an unknown name; the message lists the canonical names.
    """
    return _lookup(VTAB_TASKS, _VTAB_ALIASES, "VTAB-1k task", name)


def fgvc_dataset(name: str) -> FGVCDataset:
    """The FGVC dataset called `name` (canonical name or alias, case-insensitive).

    Raises:
        ValueError: an unknown name; the message lists the canonical names.
    """
    return _lookup(FGVC_DATASETS, _FGVC_ALIASES, "FGVC dataset", name)


def parse_target(ref: str, strict: bool = True) -> tuple[str, str]:
    """Split a `benchmark/name` reference such as `vtab-1k/cifar100` or `fgvc/cub` into canonical parts.

    Args:
        ref: the reference, benchmark first (`vtab-1k`, `vtab1k`, `vtab`, `fgvc`, or `custom` for a user's folder).
        strict: resolve the name against the registry; with False an unknown name is kept as given
            (a custom task described by its own manifest, such as the synthetic data).

    Raises:
        ValueError: no `/`, an unknown benchmark, or (strict) an unknown name.
    """
    benchmark, sep, name = ref.partition("/")
    benchmark = benchmark.lower()
    if not sep or not name:
        raise ValueError(f"dataset reference {ref!r} should read BENCHMARK/NAME, e.g. vtab-1k/cifar or fgvc/cub")
    if benchmark in ("vtab-1k", "vtab1k", "vtab"):
        benchmark = VTAB1K
    elif benchmark == CUSTOM:
        if strict:
            raise ValueError(f"{ref!r} is a user's folder task: give its folder (or its manifest), not a name")
        return benchmark, name
    elif benchmark != FGVC:
        raise ValueError(f"unknown benchmark {benchmark!r} in {ref!r}; expected one of {', '.join(BENCHMARKS)}")
    lookup = vtab_task if benchmark == VTAB1K else fgvc_dataset
    try:
        return benchmark, lookup(name).name
    except ValueError:
        if strict:
            raise
        return benchmark, name


def splits_of(layout: str) -> tuple[str, ...]:
    """The split names of an on-disk layout (`vtab-1k`, `fgvc` or `imagefolder`)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    return {VTAB1K: VTAB_SPLITS, FGVC: FGVC_SPLITS, IMAGEFOLDER: IMAGEFOLDER_SPLITS}[layout]


def protocol_splits(layout: str, stage: str, final_includes_val: bool = False) -> tuple[tuple[str, ...], str]:
    """Which splits train and which evaluates in a protocol stage.

    search: VTAB-1k train800 -> val200, FGVC and ImageFolder train -> val (hyper-parameter selection).
    final: VTAB-1k train800val200 -> test, FGVC train -> test, ImageFolder train+val -> test (as VTAB-1k: the final
    model learns from every labelled image). The paper's text says the final FGVC run trains on train+val, while the
    authors' code trains it on train only; the default follows the code and `final_includes_val=True` the text.

    Args:
        layout: `vtab-1k`, `fgvc` or `imagefolder`.
        stage: `search` or `final`.
        final_includes_val: (FGVC final only) train on train+val.

    Returns:
        The training splits (concatenated in this order) and the evaluation split.
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
    splits_of(layout)
    if layout == VTAB1K:
        return (("train800",), "val200") if stage == "search" else (("train800val200",), "test")
    if stage == "search":
        return ("train",), "val"
    return (("train", "val") if final_includes_val or layout == IMAGEFOLDER else ("train",)), "test"
