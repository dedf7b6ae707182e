"""What a data check found: problems (errors fail the check, warnings let it pass) per split and per task, and the
text report `wegeft-vision data check` prints."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .. import class_folders, images

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
    *(class_folders.LINK_LOOP, class_folders.BROKEN_LINK, class_folders.SHARED_IMAGE, class_folders.EMPTY_CLASS),
    *(BYTE_ORDER_MARK, IDENTICAL_FILES, images.SIXTEEN_BIT, images.TRANSPARENCY, images.CMYK, images.EXIF_ORIENTATION),
    *(JPEG_IMAGES, class_folders.STRAY_FILE),
)


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
