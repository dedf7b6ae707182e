"""Checks of split listings: counts and checksums against the manifest, repeated paths and paths outside the
dataset's folder, and samples shared by splits that must be disjoint."""

from __future__ import annotations

from ...files import sha256_of
from ..manifests import SplitListing, outside_root, sample_id
from ..registry import FGVC, IMAGEFOLDER, VTAB1K
from .report import (
    BYTE_ORDER_MARK,
    CHECKSUM_MISMATCH,
    COUNT_MISMATCH,
    DUPLICATE_ENTRY,
    OUTSIDE_ROOT,
    SPLIT_OVERLAP,
    WARNING,
    Problem,
    SplitReport,
)

Pairs = tuple[tuple[str, str], ...]
# splits that must share no image (VTAB-1k's train800 and val200 are parts of train800val200 by design)
DISJOINT: dict[str, Pairs] = {
    VTAB1K: (("train800", "val200"), ("train800", "test"), ("val200", "test"), ("train800val200", "test")),
    FGVC: (("train", "val"), ("train", "test"), ("val", "test")),
    IMAGEFOLDER: (("train", "val"), ("train", "test"), ("val", "test")),
}


def check_count(report: SplitReport, found: int, expected: int, what: str, allow_mismatch: bool) -> None:
    if found == expected:
        return
    message = f"{report.file}: {found:,} {what}, expected {expected:,}"
    if allow_mismatch:
        report.notes.append(message + " (accepted by --allow-count-mismatch)")
    else:
        report.problems.append(Problem(COUNT_MISMATCH, message + " (pass --allow-count-mismatch to accept)"))


def check_checksum(report: SplitReport, expected: str | None) -> None:
    if expected is None:
        return
    actual = sha256_of(report.file)
    if actual != expected.lower():
        report.problems.append(Problem(CHECKSUM_MISMATCH, f"{report.file}: sha256 {actual}, expected {expected}"))


def where(split: SplitReport, line: int | None) -> str:
    return split.file.name if line is None else f"{split.file.name}:{line}"


def check_listing(split: SplitReport, listing: SplitListing) -> list[tuple[int, str]]:
    """File a split file's byte-order mark, repeated paths and paths outside the root; `(line, path)` of the others."""
    if listing.bom:
        message = f"{listing.file}: starts with a UTF-8 byte-order mark (ignored when loading)"
        split.problems.append(Problem(BYTE_ORDER_MARK, message, WARNING))
    for (line, rel, _), first in listing.duplicates():
        split.problems.append(Problem(DUPLICATE_ENTRY, f"{listing.file}:{line}: {rel} is listed again (line {first})"))
    for (line, _, _), reason in listing.outside_root():
        split.problems.append(Problem(OUTSIDE_ROOT, f"{listing.file}:{line}: {reason} (not read)"))
    return [(line, rel) for line, rel, _ in listing.entries if outside_root(rel) is None]


def check_disjoint(listings: dict[str, tuple[SplitReport, SplitListing]], pairs: Pairs) -> None:
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
