"""The ImageFolder layout read one way for everyone (`data check`, the datamodule, a folder's manifest): a split is
`SPLIT/<class>/**/<image>`, walked once, following links (images kept on another disk are the owner's choice) but
each folder once per path, so that a link back up (a loop) is refused instead of listing a class many times over.

What the walk finds besides the samples: errors (a link loop, a folder or image that cannot be read, a broken link,
the same image file in two classes, a training class folder without images) and warnings (an empty class folder in
val or test, files outside every class folder or that are not images, the same image twice in one class), each
naming the path at fault.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's
TRAIN_SPLIT = "train"


@dataclass
class ClassFolderScan:
    """One split of an ImageFolder task as found on disk.

    Attributes:
        samples: `(path relative to the task folder, class index)`, sorted by class then path.
        errors: what makes the split unusable, one message each, naming the path.
        warnings: what is left out or odd, one message each.
        kinds: the problem kind of each message (`data.check` files them under these).
    """

    samples: list[tuple[str, int]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    kinds: dict[str, str] = field(default_factory=dict)

    def error(self, kind: str, message: str) -> None:
        self.errors.append(message)
        self.kinds[message] = kind

    def warn(self, kind: str, message: str) -> None:
        self.warnings.append(message)
        self.kinds[message] = kind

    def raise_errors(self) -> None:
        """Raise the first error (the count of the others, and where to see them all).

        Raises:
            ValueError: the split has errors.
        """
        if self.errors:
            more = f" (and {len(self.errors) - 1} more: wegeft-vision data check lists them)" if self.errors[1:] else ""
            raise ValueError(self.errors[0] + more)


# problem kinds (`data.check.report` files them)
LINK_LOOP = "link loop"
UNREADABLE = "unreadable file"
BROKEN_LINK = "broken link"
SHARED_IMAGE = "image in two classes"
EMPTY_CLASS = "empty class"
STRAY_FILE = "stray file"
REPEATED_IMAGE = "duplicate entry"


def class_names(split_dir: Path) -> list[str]:
    """The class folders of a split folder, sorted (as torchvision orders them); hidden folders are not classes.

    Raises:
        PermissionError: the split folder cannot be read (its name in the message).
    """
    try:
        entries = list(os.scandir(split_dir))
    except OSError as err:
        raise PermissionError(f"{split_dir}: cannot be read ({err.strerror or err})") from err
    return sorted(e.name for e in entries if not e.name.startswith(".") and e.is_dir())


def scan_split(folder: str | Path, split: str, classes: tuple[str, ...]) -> ClassFolderScan:
    """Walk `folder/split/<class>/` for every class folder found (each must be one of `classes`).

    Raises:
        FileNotFoundError: the split folder is missing.
        ValueError: a class folder that is not one of `classes`.
        PermissionError: the split folder cannot be read.
    """
    folder = Path(folder)
    root = folder / split
    if not root.is_dir():
        raise FileNotFoundError(f"missing split folder {root}")
    found = class_names(root)
    unknown = [name for name in found if name not in classes]
    if unknown:
        raise ValueError(f"{root}: class folder(s) {', '.join(unknown)} are not among the classes of train/")
    scan = ClassFolderScan()
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if not entry.name.startswith(".") and not entry.is_dir():
            scan.warn(STRAY_FILE, f"{Path(entry.path)}: not in a class folder (not read)")
    owner: dict[str, tuple[str, str]] = {}  # real path of an image -> (class, the path it was listed under)
    for name in found:
        named = len(scan.errors)
        images = _walk(root / name, scan, (os.path.realpath(root),))
        if not images and len(scan.errors) == named:  # empty, not unreadable
            what = "a class without training images" if split == TRAIN_SPLIT else "no image of this class here"
            add = scan.error if split == TRAIN_SPLIT else scan.warn
            add(EMPTY_CLASS, f"{root / name}: holds no image ({what})")
        for path in sorted(images):
            real = os.path.realpath(path)
            if real in owner:
                other_class, other = owner[real]
                if other_class != name:
                    scan.error(SHARED_IMAGE, f"{path}: the same file as {other}, in classes {other_class} and {name}")
                else:
                    scan.warn(REPEATED_IMAGE, f"{path}: the same file as {other}, listed twice in class {name}")
                continue
            owner[real] = (name, str(path))
            scan.samples.append((str(path.relative_to(folder)), classes.index(name)))
    return scan


def _walk(directory: Path, scan: ClassFolderScan, ancestors: tuple[str, ...]) -> list[Path]:
    """The image files under `directory` (links followed, each folder once per path); what is wrong goes to `scan`."""
    real = os.path.realpath(directory)
    if real in ancestors:
        scan.error(LINK_LOOP, f"{directory}: a link back to {real}, which holds it (a loop: not followed)")
        return []
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError as err:
        scan.error(UNREADABLE, f"{directory}: cannot be read ({err.strerror or err})")
        return []
    images = []
    for entry in entries:
        path = Path(entry.path)
        if entry.name.startswith("."):
            continue
        if entry.is_symlink() and not path.exists():
            scan.error(BROKEN_LINK, f"{path}: a link to {os.readlink(path)}, which does not exist")
        elif entry.is_dir():
            images += _walk(path, scan, (*ancestors, real))
        elif not entry.name.lower().endswith(IMAGE_SUFFIXES):
            scan.warn(STRAY_FILE, f"{path}: not an image file ({', '.join(IMAGE_SUFFIXES)}; not read)")
        elif not os.access(path, os.R_OK):
            scan.error(UNREADABLE, f"{path}: cannot be read (permission denied)")
        else:
            images.append(path)
    return images
