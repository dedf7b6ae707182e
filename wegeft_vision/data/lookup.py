"""Which tasks a command names (`--tasks`: registry names, `all`, `BENCHMARK/NAME`, folders of one's own) and where a
data root (`--data-root`, one folder per task or dataset) holds them; synthetic tasks are written there when missing."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from .folders import MANIFEST_FILE, is_folder_ref
from .registry import CUSTOM, FGVC, FGVC_DATASETS, VTAB1K, VTAB_TASKS, parse_target
from .synthetic import synthetic_kind, synthetic_manifest, write_synthetic
from .tasks import Task, open_task


def task_refs(names: list[str], benchmark: str | None = None) -> list[tuple[str, str]]:
    """`(benchmark, name)` of the tasks a command names: `all` (every task of `benchmark`), registry names (with
    `benchmark`), `benchmark/name`, or folders of one's own (`("custom", absolute folder path)`); duplicates dropped.

    Raises:
        ValueError: `all` or a bare name without `benchmark`, or an unknown benchmark.
    """
    if names == ["all"]:
        if benchmark is None:
            raise ValueError("--tasks all needs --benchmark vtab-1k or fgvc")
        registry = VTAB_TASKS if parse_target(f"{benchmark}/x", strict=False)[0] == VTAB1K else FGVC_DATASETS
        return [parse_target(f"{benchmark}/{name}") for name in registry]
    refs = []
    for name in names:
        if is_folder_ref(name):
            refs.append((CUSTOM, str(Path(name).expanduser().resolve())))
            continue
        ref = name if "/" in name else f"{benchmark}/{name}" if benchmark else None
        if ref is None:
            raise ValueError(f"task {name!r} needs --benchmark (or write it as BENCHMARK/NAME)")
        refs.append(parse_target(ref, strict=False))
    return list(dict.fromkeys(refs))


def locate_task(
    benchmark: str,
    name: str,
    data_root: str | Path,
    splits_dir: str | Path | None = None,
    synthetic: Mapping[str, Any] | None = None,
) -> Task:
    """A task under a data root, the folder holding one folder per task or dataset (`protocol --data-root`): a
    registered VTAB-1k task or FGVC dataset, or a task that brings `DATA_ROOT/<name>/manifest.yaml`, or (with the
    preset's `synthetic` options) a synthetic task not written yet, described as it will be; a folder of one's own
    (`custom`, `name` its path) needs no data root. Only manifests are read, so a plan can describe the task before
    its data exists.

    Raises:
        FileNotFoundError: a task outside the registry whose manifest is missing.
        ValueError: an unknown benchmark.
    """
    if benchmark == CUSTOM:
        return open_task(Path(name))
    if benchmark not in (VTAB1K, FGVC):
        raise ValueError(f"{benchmark}/{name}: a data root holds vtab-1k tasks and fgvc datasets")
    data_root = Path(data_root)
    root = data_root / name if benchmark == FGVC else data_root  # an FGVC dataset's folder is DATA_ROOT/<name>
    if name in (VTAB_TASKS if benchmark == VTAB1K else FGVC_DATASETS):
        return open_task(f"{benchmark}/{name}", root, splits_dir)
    manifest = data_root / name / MANIFEST_FILE
    kind = synthetic_kind(name)
    if not manifest.is_file() and synthetic is not None and kind is not None:
        described = synthetic_manifest(kind, synthetic.get("counts"), synthetic.get("size", 64), layout=benchmark)
        return replace(open_task(f"{benchmark}/{name}", root, splits_dir, described), manifest_file=manifest)
    if not manifest.is_file():
        raise FileNotFoundError(f"task {benchmark}/{name} is not in the registry and {manifest} does not exist")
    return open_task(f"{benchmark}/{name}", root, splits_dir, manifest)


def find_task(
    benchmark: str,
    name: str,
    data_root: str | Path | None,
    splits_dir: str | Path | None = None,
    synthetic: Mapping[str, Any] | None = None,
) -> Task:
    """`locate_task`, with the task's folder required to exist (and a folder of one's own to match its manifest:
    `Task.verify`); a synthetic task (`synthetic_<kind>`, see `data.synthetic.TASKS`) missing under the data root is
    written there first when `synthetic` options (`size`, `counts`) are given.

    Raises:
        FileNotFoundError: the task's folder, or (outside the registry) its manifest, is missing.
        ValueError: no data root for a task that is not a folder of one's own; an unknown benchmark; a folder of one's
            own that changed since its manifest was written.
    """
    if benchmark != CUSTOM:
        if data_root is None:
            raise ValueError(f"--data-root is required for {benchmark}/{name} (the folder holding its folder)")
        kind = synthetic_kind(name)
        registered = name in VTAB_TASKS or name in FGVC_DATASETS
        written = (Path(data_root) / name / MANIFEST_FILE).is_file()
        if synthetic is not None and kind is not None and not registered and not written:
            write_synthetic(data_root, kind, synthetic.get("counts"), synthetic.get("size", 64), 0, layout=benchmark)
    task = locate_task(benchmark, name, data_root or ".", splits_dir)
    task.folder  # noqa: B018 - a missing folder fails here, before any training
    task.verify()  # a folder of one's own changed since its manifest: named here, before any training
    return task
