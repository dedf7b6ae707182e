"""The identity of a task's data: a digest of its split files, so that changed splits never reuse stale results.

What is hashed is what decides which images a run sees with which labels: the VTAB-1k list files, the FGVC JSON split
files, a folder of one's own's list files or (ImageFolder layout) its file listing. Image bytes are not read (a
protocol over 19 tasks would read every image at each start); `wegeft-vision data check` compares them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from .fgvc import split_file
from .folders import detect_layout, folder_split, listing_sha256
from .manifests import sha256_of
from .registry import CUSTOM, FGVC, FGVC_SPLITS, IMAGEFOLDER, IMAGEFOLDER_SPLITS, VTAB_SPLITS
from .vtab1k import task_dir


def split_digests(
    benchmark: str,
    task: str,
    root: str | Path,
    splits_dir: str | Path | None = None,
    manifest: str | Path | None = None,
) -> dict[str, str]:
    """Per split file (or listing) of the task, its sha256; the keys say which file or listing it was.

    Args:
        benchmark, task: the target; `custom` with `root` the task folder itself.
        root: the folder of task folders (VTAB-1k), the dataset's folder (FGVC), or the task folder (custom).
        splits_dir: FGVC split files, if not inside the dataset folder.
        manifest: the manifest of a task outside the registry (its list files lie beside it).

    Raises:
        FileNotFoundError: a split file of the task is missing.
    """
    root = Path(root)
    if benchmark == CUSTOM:
        if detect_layout(root) == IMAGEFOLDER:
            return {f"{split}/": listing_sha256(folder_split(root, split)) for split in IMAGEFOLDER_SPLITS}
        files = [root / f"{split}.txt" for split in VTAB_SPLITS]
    elif benchmark == FGVC:
        files = [split_file(splits_dir or root, task, split) for split in FGVC_SPLITS]
    else:
        folder = Path(manifest).parent if manifest else task_dir(root, task)
        files = [folder / f"{split}.txt" for split in VTAB_SPLITS]
    missing = [str(path) for path in files if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"{benchmark}/{task}: missing split file(s) {', '.join(missing)}")
    return {path.name: sha256_of(path) for path in files}


def data_identity(
    benchmark: str,
    task: str,
    root: str | Path,
    splits_dir: str | Path | None = None,
    manifest: str | Path | None = None,
) -> str:
    """One sha256 over `split_digests`: equal for the same splits wherever the data lies."""
    digests = split_digests(benchmark, task, root, splits_dir, manifest)
    return hashlib.sha256(
        "".join(f"{name} {digest}\n" for name, digest in sorted(digests.items())).encode()
    ).hexdigest()
