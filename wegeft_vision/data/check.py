"""The checks behind `wegeft-vision data check`: layout, counts, checksums, split files, images, labels, per split.

Errors fail the check: what is missing or unreadable, wrong counts or checksums, unknown labels, a path listed twice in
a split file, a sample in two splits that must be disjoint, a path outside the dataset's folder, an image refused by
the decoder (too many pixels, no known 8-bit range). Warnings are reported and let it pass: what loading changes about
an image (16 bits, transparency, CMYK, EXIF orientation; see `data.images`), a byte-order mark, identical image files
under different paths in splits that must be disjoint, and (once per task) a registered VTAB-1k task whose images are
JPEG: the widely shared VTAB-1k folders are lossy re-encodings, a known source of lower accuracy, while
`scripts/export_vtab1k.py` writes lossless PNG from tensorflow-datasets at the authors' versions.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from . import fgvc, images, vtab1k
from .folders import imagefolder_split, is_folder_ref, listing_sha256, open_folder
from .manifests import Manifest, SplitListing, load_manifest, outside_root, read_manifest, sample_id, sha256_of
from .registry import FGVC, FGVC_SPLITS, IMAGEFOLDER, IMAGEFOLDER_SPLITS, VTAB1K, VTAB_SPLITS, VTAB_TASKS, parse_target

ERROR, WARNING = "error", "warning"
MISSING_FOLDER = "missing folder"
MISSING_FILE = "missing file"
UNREADABLE_FILE = "unreadable file"
COUNT_MISMATCH = "count mismatch"
CHECKSUM_MISMATCH = "checksum mismatch"
UNKNOWN_LABEL = "unknown label"
DUPLICATE_ENTRY = "duplicate entry"
SPLIT_OVERLAP = "split overlap"
OUTSIDE_ROOT = "path outside root"
IMAGE_TOO_LARGE = "image too large"
UNSUPPORTED_IMAGE = "unsupported image"
BYTE_ORDER_MARK = "byte-order mark"  # warnings from here on, and the image warnings of `data.images`
IDENTICAL_FILES = "identical files"
JPEG_IMAGES = "jpeg images"
PROBLEM_KINDS = (
    *(MISSING_FOLDER, MISSING_FILE, UNREADABLE_FILE, COUNT_MISMATCH, CHECKSUM_MISMATCH, UNKNOWN_LABEL),
    *(DUPLICATE_ENTRY, SPLIT_OVERLAP, OUTSIDE_ROOT, IMAGE_TOO_LARGE, UNSUPPORTED_IMAGE),
    *(BYTE_ORDER_MARK, IDENTICAL_FILES, images.SIXTEEN_BIT, images.TRANSPARENCY, images.CMYK, images.EXIF_ORIENTATION),
    JPEG_IMAGES,
)
JPEG_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif")
JPEG_MAGIC = b"\xff\xd8\xff"  # start-of-image marker and the first marker after it
EXPORTER = "scripts/export_vtab1k.py"
_IMAGE_ERRORS = {
    images.MISSING: MISSING_FILE,
    images.UNREADABLE: UNREADABLE_FILE,
    images.TOO_LARGE: IMAGE_TOO_LARGE,
    images.UNSUPPORTED: UNSUPPORTED_IMAGE,
}
Pairs = tuple[tuple[str, str], ...]
# splits that must share no image (VTAB-1k's train800 and val200 are parts of train800val200 by design)
DISJOINT: dict[str, Pairs] = {
    VTAB1K: (("train800", "val200"), ("train800", "test"), ("val200", "test"), ("train800val200", "test")),
    FGVC: (("train", "val"), ("train", "test"), ("val", "test")),
    IMAGEFOLDER: (("train", "val"), ("train", "test"), ("val", "test")),
}
Use = tuple["SplitReport", int | None]  # a split that lists an image, and the line that does (None: no list file)


@dataclass(frozen=True)
class Problem:
    """One thing wrong, with a message that names the file (and line) or value at fault and what was expected.

    `severity` is `error` (the check fails) or `warning` (reported; the check passes).
    """

    kind: str
    message: str
    severity: str = ERROR

    def __str__(self) -> str:
        return f"[{self.kind}] {self.message}" if self.severity == ERROR else f"warning [{self.kind}] {self.message}"


@dataclass
class SplitReport:
    """What was found for one split: entries, expected entries, classes, images verified, problems and notes."""

    split: str
    file: Path
    count: int | None = None
    expected: int | None = None
    num_classes: int | None = None
    images_checked: int = 0
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == ERROR]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity != ERROR]

    @property
    def status(self) -> str:
        return _tally("ok", self.errors, self.warnings)


@dataclass
class CheckReport:
    """The result of checking one dataset or task: dataset-level problems and one `SplitReport` per split."""

    target: str
    root: Path
    splits: list[SplitReport] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def all_problems(self) -> list[Problem]:
        """Errors and warnings, dataset-level first."""
        return self.problems + [p for s in self.splits for p in s.problems]

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.all_problems if p.severity == ERROR]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.all_problems if p.severity != ERROR]

    def format(self, max_per_split: int = 20) -> str:
        """A per-split text report, errors before warnings; at most `max_per_split` are listed per split (0: all)."""
        lines = [f"{self.target} at {self.root}"]
        lines += [f"  {p}" for p in self.problems]
        for s in self.splits:
            count = "?" if s.count is None else f"{s.count:,}"
            expected = "" if s.expected is None else f" / {s.expected:,} expected"
            classes = "" if s.num_classes is None else f", {s.num_classes} classes"
            lines.append(f"  {s.split:<15} {count} entries{expected}{classes}, {s.images_checked:,} images: {s.status}")
            lines += [f"      note: {n}" for n in s.notes]
            found = s.errors + s.warnings
            shown = found if max_per_split <= 0 else found[:max_per_split]
            lines += [f"      {p}" for p in shown]
            if len(shown) < len(found):
                lines.append(f"      ... and {len(found) - len(shown)} more (--max-problems 0 lists all)")
        lines.append(_tally("OK", self.errors, self.warnings, failed="FAILED: "))
        return "\n".join(lines)


def _tally(ok: str, errors: list[Problem], warnings: list[Problem], failed: str = "") -> str:
    """`ok`, `ok, 2 warning(s)`, or `<failed>1 problem(s)[, 2 warning(s)]`."""
    warned = [f"{len(warnings)} warning(s)"] if warnings else []
    return ", ".join([f"{failed}{len(errors)} problem(s)" if errors else ok, *warned])


def _manifest_for(benchmark: str, name: str, manifest: Manifest | str | Path | None) -> Manifest:
    if isinstance(manifest, Manifest):
        found = manifest
    elif manifest is not None:
        found = read_manifest(manifest)
    else:
        try:
            benchmark, name = parse_target(f"{benchmark}/{name}")
        except ValueError as err:
            raise ValueError(f"{err}; for a custom dataset pass its manifest file (--manifest)") from None
        found = load_manifest(f"{benchmark}/{name}")
    if found.format != benchmark:
        raise ValueError(f"manifest {found.path or found.name} describes a {found.format} dataset, not {benchmark}")
    return found


def _check_count(report: SplitReport, found: int, expected: int, what: str, allow_mismatch: bool) -> None:
    if found == expected:
        return
    message = f"{report.file}: {found:,} {what}, expected {expected:,}"
    if allow_mismatch:
        report.notes.append(message + " (accepted by --allow-count-mismatch)")
    else:
        report.problems.append(Problem(COUNT_MISMATCH, message + " (pass --allow-count-mismatch to accept)"))


def _check_checksum(report: SplitReport, expected: str | None) -> None:
    if expected is None:
        return
    actual = sha256_of(report.file)
    if actual != expected.lower():
        report.problems.append(Problem(CHECKSUM_MISMATCH, f"{report.file}: sha256 {actual}, expected {expected}"))


def _where(split: SplitReport, line: int | None) -> str:
    return split.file.name if line is None else f"{split.file.name}:{line}"


def _check_listing(split: SplitReport, listing: SplitListing) -> list[tuple[int, str]]:
    """File a split file's byte-order mark, repeated paths and paths outside the root; `(line, path)` of the others."""
    if listing.bom:
        message = f"{listing.file}: starts with a UTF-8 byte-order mark (ignored when loading)"
        split.problems.append(Problem(BYTE_ORDER_MARK, message, WARNING))
    for (line, rel, _), first in listing.duplicates():
        split.problems.append(Problem(DUPLICATE_ENTRY, f"{listing.file}:{line}: {rel} is listed again (line {first})"))
    for (line, _, _), reason in listing.outside_root():
        split.problems.append(Problem(OUTSIDE_ROOT, f"{listing.file}:{line}: {reason} (not read)"))
    return [(line, rel) for line, rel, _ in listing.entries if outside_root(rel) is None]


def _check_disjoint(listings: dict[str, tuple[SplitReport, SplitListing]], pairs: Pairs) -> None:
    """File every sample of a split that an earlier split, which it must not overlap, lists too."""
    first_line = {
        name: {sample_id(rel): line for line, rel, _ in reversed(listing.entries)}
        for name, (_, listing) in listings.items()
    }
    for name, (split, listing) in listings.items():
        earlier = [a for a, b in pairs if b == name and a in listings]
        for line, rel, _ in listing.entries:
            key = sample_id(rel)
            found = [a for a in earlier if key in first_line[a]]
            if found:
                where = ", ".join(f"{listings[a][1].file.name}:{first_line[a][key]}" for a in found)
                message = f"{listing.file}:{line}: {rel} is also in {where} ({name} must share no image with them)"
                split.problems.append(Problem(SPLIT_OVERLAP, message))


def _verify_images(uses: dict[Path, list[Use]], workers: int, pairs: Pairs) -> None:
    """Decode every distinct image once; file its error or warnings under each split that lists it, and identical
    files under different paths in splits that must be disjoint."""
    images.pixel_limit()  # a bad $WEGEFT_MAX_IMAGE_PIXELS is a user error, raised once here
    paths = list(uses)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(images.inspect_image, paths))
    holders: dict[str, list[tuple[Path, SplitReport, int | None]]] = defaultdict(list)
    for path, found in zip(paths, results, strict=True):
        for split, line in uses[path]:
            split.images_checked += 1
            where = _where(split, line)
            if found.error == images.MISSING:
                split.problems.append(Problem(MISSING_FILE, f"{where}: missing image {path}"))
            elif found.error is not None:
                message = f"{where}: image {path} is {found.error}: {found.reason}"
                split.problems.append(Problem(_IMAGE_ERRORS[found.error], message))
            for kind, detail in found.warnings:
                split.problems.append(Problem(kind, f"{where}: image {path}: {detail}", WARNING))
            if found.digest is not None:
                holders[found.digest].append((path, split, line))
    disjoint = set(pairs)
    for group in holders.values():
        for path, split, line in group:
            twin = next(((p, s, n) for p, s, n in group if p != path and (s.split, split.split) in disjoint), None)
            if twin is not None:
                other, other_split, other_line = twin
                message = (
                    f"{_where(split, line)}: image {path} has the same bytes as {other} "
                    f"({_where(other_split, other_line)}); {split.split} and {other_split.split} should share no image"
                )
                split.problems.append(Problem(IDENTICAL_FILES, message, WARNING))


def _collect(uses: dict[Path, list[Use]], split: SplitReport, folder: Path, entries: Iterable[tuple[int | None, str]]):
    for line, rel in entries:
        uses[folder / sample_id(rel)].append((split, line))


def _is_jpeg(path: Path, sniff: bool) -> bool:
    """Whether `path` is a JPEG: by its suffix, or (`sniff`) by its first bytes; unreadable files are not (the image
    checks report them)."""
    if path.suffix.lower() in JPEG_SUFFIXES:
        return True
    if not sniff:
        return False
    try:
        with open(path, "rb") as handle:
            return handle.read(len(JPEG_MAGIC)) == JPEG_MAGIC
    except OSError:
        return False


def _check_jpeg(report: CheckReport, name: str, paths: set[Path], sniff: bool, workers: int) -> None:
    """One warning for the task when some of its listed images are JPEG (suffix, or first bytes when `sniff`)."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        found = sum(pool.map(lambda path: _is_jpeg(path, sniff), paths))
    if found:
        message = (
            f"{report.root}: {found:,} of {len(paths):,} listed images are JPEG; the widely shared VTAB-1k folders are "
            f"lossy JPEG re-encodings, a known source of lower accuracy. For lossless PNG from tensorflow-datasets at "
            f"the authors' versions: python {EXPORTER} --task {name} --out NEW_ROOT"
        )
        report.problems.append(Problem(JPEG_IMAGES, message, WARNING))


def default_workers() -> int:
    return min(8, os.cpu_count() or 1)


def check_vtab1k(
    root: str | Path,
    task: str,
    manifest: Manifest | str | Path | None = None,
    allow_count_mismatch: bool = False,
    verify_images: bool = True,
    workers: int | None = None,
) -> CheckReport:
    """Check a VTAB-1k task folder against its manifest; a registered task (not a folder of one's own) whose listed
    images are JPEG gets one warning that points to the exporter.

    Args:
        root: the folder holding one sub-folder per task.
        task: canonical name or alias; a custom task needs `manifest`.
        manifest: a `Manifest` or manifest file; default: the bundled one of `task`.
        allow_count_mismatch: report differing counts as notes instead of problems.
        verify_images: decode every image listed (otherwise only existence of split files is checked; JPEG images
            are then told by their suffix alone, not by their first bytes).
        workers: decoding threads.
    """
    manifest = _manifest_for(VTAB1K, task, manifest)
    report = CheckReport(target=f"{manifest.benchmark}/{manifest.name}", root=Path(root))
    try:
        folder = vtab1k.task_dir(root, manifest.name)
    except FileNotFoundError as err:
        report.problems.append(Problem(MISSING_FOLDER, str(err)))
        return report
    report.root = folder
    uses: dict[Path, list[Use]] = defaultdict(list)
    listings: dict[str, tuple[SplitReport, SplitListing]] = {}
    for entry in sorted(manifest.splits.values(), key=lambda e: VTAB_SPLITS.index(e.name)):
        split = SplitReport(entry.name, folder / entry.file, expected=entry.count)
        report.splits.append(split)
        if not split.file.is_file():
            split.problems.append(Problem(MISSING_FILE, f"missing split file {split.file}"))
            continue
        _check_checksum(split, entry.sha256)
        try:
            listing = vtab1k.parse_split_file(split.file)
        except ValueError as err:
            split.problems.append(Problem(UNREADABLE_FILE, str(err)))
            continue
        samples = listing.samples
        split.count, split.num_classes = len(samples), len({label for _, label in samples})
        _check_count(split, split.count, entry.count, "entries", allow_count_mismatch)
        for rel, label in samples:
            if label >= manifest.num_classes:
                split.problems.append(
                    Problem(
                        UNKNOWN_LABEL,
                        f"{split.file.name}: label {label} of {rel} is outside 0..{manifest.num_classes - 1}",
                    )
                )
        inside = _check_listing(split, listing)
        listings[entry.name] = (split, listing)
        if verify_images:
            _collect(uses, split, folder, inside)
    _check_disjoint(listings, DISJOINT[VTAB1K])
    if manifest.benchmark == VTAB1K and manifest.name in VTAB_TASKS:
        listed = {rel for _, listing in listings.values() for _, rel, _ in listing.entries if outside_root(rel) is None}
        paths = {folder / sample_id(rel) for rel in listed}
        _check_jpeg(report, manifest.name, paths, verify_images, workers or default_workers())
    _verify_images(uses, workers or default_workers(), DISJOINT[VTAB1K])
    return report


def check_fgvc(
    root: str | Path,
    dataset: str,
    splits_dir: str | Path | None = None,
    manifest: Manifest | str | Path | None = None,
    allow_count_mismatch: bool = False,
    verify_images: bool = True,
    workers: int | None = None,
) -> CheckReport:
    """Check an FGVC dataset folder and its split files against the manifest.

    Args:
        root: the dataset's root folder (its image folder, e.g. `images/`, lies inside).
        dataset: canonical name or alias; a custom dataset needs `manifest`.
        splits_dir: folder of the JSON split files (`<dataset>/<split>.json` or `<split>.json`); default: `root`.
        manifest: a `Manifest` or manifest file; default: the bundled one of `dataset`.
        allow_count_mismatch: report differing counts as notes instead of problems.
        verify_images: decode every image listed.
        workers: decoding threads.
    """
    manifest = _manifest_for(FGVC, dataset, manifest)
    root = Path(root)
    report = CheckReport(target=f"{FGVC}/{manifest.name}", root=root)
    folder = fgvc.image_dir(root, manifest.name, manifest.image_folder)
    if not folder.is_dir():
        what = "dataset folder" if folder == root else f"image folder {manifest.image_folder!r} of {manifest.name}"
        report.problems.append(Problem(MISSING_FOLDER, f"missing {what}: {folder}"))
        return report
    splits_dir = Path(splits_dir) if splits_dir is not None else root
    uses: dict[Path, list[Use]] = defaultdict(list)
    listings: dict[str, tuple[SplitReport, SplitListing]] = {}
    known: set | None = None
    train_name = None
    for entry in sorted(manifest.splits.values(), key=lambda e: FGVC_SPLITS.index(e.name)):
        path = fgvc.split_file(splits_dir, manifest.name, entry.name)
        split = SplitReport(entry.name, path, expected=entry.count)
        report.splits.append(split)
        if not path.is_file():
            split.problems.append(Problem(MISSING_FILE, f"missing split file {path}"))
            continue
        _check_checksum(split, entry.sha256)
        try:
            listing = fgvc.parse_split_file(path)
            labels = dict(listing.samples)  # a repeated path keeps its last label, as JSON readers do
            if entry.name == "train":
                known, train_name = set(fgvc.class_ids_of(labels, str(path))), path.name
        except ValueError as err:
            split.problems.append(Problem(UNREADABLE_FILE, str(err)))
            continue
        split.count, split.num_classes = len(listing.entries), len(set(labels.values()))
        _check_count(split, split.count, entry.count, "entries", allow_count_mismatch)
        if entry.name == "train":
            _check_count(split, split.num_classes, manifest.num_classes, "classes", allow_count_mismatch)
        elif entry.num_classes is not None:
            _check_count(split, split.num_classes, entry.num_classes, "classes", allow_count_mismatch)
        if known is not None and entry.name != "train":
            unknown: dict = defaultdict(list)
            for rel, label in labels.items():
                if label not in known:
                    unknown[label].append(rel)
            for label, rels in unknown.items():
                message = (
                    f"{path.name}: label {label!r} ({len(rels)} image(s), e.g. {rels[0]}) is absent from {train_name}"
                )
                split.problems.append(Problem(UNKNOWN_LABEL, message))
        inside = _check_listing(split, listing)
        listings[entry.name] = (split, listing)
        if verify_images:
            _collect(uses, split, folder, inside)
    _check_disjoint(listings, DISJOINT[FGVC])
    _verify_images(uses, workers or default_workers(), DISJOINT[FGVC])
    return report


def check_imagefolder(
    folder: str | Path,
    manifest: Manifest,
    allow_count_mismatch: bool = False,
    verify_images: bool = True,
    workers: int | None = None,
) -> CheckReport:
    """Check a folder in the ImageFolder layout against its manifest: class folders, counts, listings, images."""
    folder = Path(folder)
    report = CheckReport(target=f"{manifest.benchmark}/{manifest.name}", root=folder)
    uses: dict[Path, list[Use]] = defaultdict(list)
    for split in IMAGEFOLDER_SPLITS:
        entry = manifest.splits[split]
        split_report = SplitReport(split, folder / entry.file, expected=entry.count)
        report.splits.append(split_report)
        try:
            samples = imagefolder_split(folder, entry.file, manifest.classes)
        except FileNotFoundError as err:
            split_report.problems.append(Problem(MISSING_FOLDER, str(err)))
            continue
        except ValueError as err:
            split_report.problems.append(Problem(UNKNOWN_LABEL, str(err)))
            continue
        split_report.count, split_report.num_classes = len(samples), len({label for _, label in samples})
        _check_count(split_report, split_report.count, entry.count, "images", allow_count_mismatch)
        if entry.sha256 and listing_sha256(samples) != entry.sha256 and split_report.count == entry.count:
            split_report.problems.append(
                Problem(CHECKSUM_MISMATCH, f"{split_report.file}: images were renamed or moved since {manifest.path}")
            )
        if verify_images:  # paths found by walking the folder: inside it, one listing per split
            _collect(uses, split_report, folder, ((None, rel) for rel, _ in samples))
    _verify_images(uses, workers or default_workers(), DISJOINT[IMAGEFOLDER])
    return report


def check_folder(
    folder: str | Path, allow_count_mismatch: bool = False, verify_images: bool = True, workers: int | None = None
) -> CheckReport:
    """Check a task folder of one's own (VTAB-1k or ImageFolder layout) against `<folder>/manifest.yaml`, which is
    written on first use (see `data.folders`)."""
    folder = Path(folder).expanduser()
    manifest = open_folder(folder)
    options = dict(allow_count_mismatch=allow_count_mismatch, verify_images=verify_images, workers=workers)
    if manifest.format == IMAGEFOLDER:
        return check_imagefolder(folder, manifest, **options)
    return check_vtab1k(folder.parent, folder.name, manifest=manifest, **options)


def check(
    ref: str,
    root: str | Path | None = None,
    splits_dir: str | Path | None = None,
    manifest: Manifest | str | Path | None = None,
    allow_count_mismatch: bool = False,
    verify_images: bool = True,
    workers: int | None = None,
) -> CheckReport:
    """`check_vtab1k` or `check_fgvc` for a `benchmark/name` reference (`splits_dir` applies to FGVC only), or
    `check_folder` for a folder path.

    Raises:
        ValueError: `splits_dir` given for a VTAB-1k task, an unknown reference without a manifest, or no `root` for
            a reference that is not a folder.
    """
    if is_folder_ref(ref):
        if manifest is not None or splits_dir is not None:
            raise ValueError(f"{ref} is a task folder: it holds its own manifest and splits (drop --manifest/--splits)")
        return check_folder(ref, allow_count_mismatch, verify_images, workers)
    if root is None:
        raise ValueError(f"--root is required for {ref} (the folder that holds the data)")
    benchmark, name = parse_target(ref, strict=False)
    options = dict(manifest=manifest, allow_count_mismatch=allow_count_mismatch, verify_images=verify_images)
    if benchmark == VTAB1K:
        if splits_dir is not None:
            raise ValueError(f"splits_dir (--splits) applies to FGVC datasets, not {ref}")
        return check_vtab1k(root, name, workers=workers, **options)
    return check_fgvc(root, name, splits_dir=splits_dir, workers=workers, **options)
