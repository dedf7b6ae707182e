"""CUB-200-2011 part annotations: `images.txt`, `parts/parts.txt` and `parts/part_locs.txt`, as keypoint targets."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from pathlib import Path

import torch

from .scores import KeypointTarget, rescale_points


@dataclasses.dataclass(frozen=True)
class PartLocation:
    """One line of `part_locs.txt`: `<image_id> <part_id> <x> <y> <visible>` (pixels of the original image)."""

    image_id: int
    part_id: int
    x: float
    y: float
    visible: bool


@dataclasses.dataclass(frozen=True)
class CubParts:
    """The part names, image paths and part locations of a CUB-200-2011 folder (see `read_cub_parts`)."""

    root: Path
    part_names: dict[int, str]
    image_paths: dict[int, str]
    locations: dict[int, dict[int, PartLocation]]

    @property
    def names(self) -> list[str]:
        """Part names in part-id order, the order of `keypoints`."""
        return [self.part_names[p] for p in sorted(self.part_names)]

    def image_id(self, path: str | Path) -> int:
        """The id of an image given as in `images.txt` (`<class folder>/<file>`) or by any path ending with that."""
        key = "/".join(Path(path).parts[-2:])
        if key not in self._ids_by_path:
            raise KeyError(f"{path} is not listed in {self.root / 'images.txt'} (expected '<class folder>/<file>')")
        return self._ids_by_path[key]

    @functools.cached_property
    def _ids_by_path(self) -> dict[str, int]:
        return {listed: image_id for image_id, listed in self.image_paths.items()}

    def keypoints(self, image_ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, P, 2) (x, y) locations in original-image pixels and (B, P) visibility, parts in part-id order."""
        part_ids = sorted(self.part_names)
        points = torch.zeros(len(image_ids), len(part_ids), 2, dtype=torch.float64)
        visible = torch.zeros(len(image_ids), len(part_ids), dtype=torch.bool)
        for b, image_id in enumerate(image_ids):
            if image_id not in self.locations:
                raise KeyError(f"image id {image_id} has no part locations in {self.root / 'parts' / 'part_locs.txt'}")
            for p, part_id in enumerate(part_ids):
                location = self.locations[image_id].get(part_id)
                if location is not None:
                    points[b, p] = torch.tensor([location.x, location.y], dtype=torch.float64)
                    visible[b, p] = location.visible
        return points, visible

    def target(
        self,
        image_ids: Sequence[int],
        original_sizes: Sequence[Sequence[int]],
        image_size: Sequence[int],
        radius: float,
    ) -> KeypointTarget:
        """A `KeypointTarget` for images resized (no crop) from their `original_sizes` (H, W) to `image_size`."""
        points, visible = self.keypoints(image_ids)
        height, width = (int(s) for s in image_size)
        return KeypointTarget(
            rescale_points(points, original_sizes, (height, width)), visible, (height, width), radius, self.names
        )


def _rows(path: Path, fields: int, split_last: bool = False) -> list[tuple[int, list[str]]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: expected a CUB-200-2011 folder with images.txt and parts/")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        values = line.split(maxsplit=fields - 1) if split_last else line.split()
        if len(values) != fields:
            raise ValueError(f"{path}:{number}: expected {fields} space-separated fields, got {line!r}")
        rows.append((number, values))
    return rows


def _id(value: str, where: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{where}: expected an integer id, got {value!r}") from None


def read_cub_parts(root: str | Path) -> CubParts:
    """Parse the part annotations of CUB-200-2011.

    Args:
        root: the `CUB_200_2011` folder (holding `images.txt` and `parts/`), or a folder that contains it.

    Raises:
        FileNotFoundError: one of the three files is missing.
        ValueError: a line does not have the expected fields, or names an unknown image or part.
    """
    root = Path(root)
    if not (root / "images.txt").is_file() and (root / "CUB_200_2011" / "images.txt").is_file():
        root = root / "CUB_200_2011"
    names_file, images_file, locs_file = (
        root / "parts" / "parts.txt",
        root / "images.txt",
        root / "parts" / "part_locs.txt",
    )
    part_names = {_id(v[0], f"{names_file}:{n}"): v[1].strip() for n, v in _rows(names_file, 2, split_last=True)}
    image_paths = {_id(v[0], f"{images_file}:{n}"): v[1].strip() for n, v in _rows(images_file, 2, split_last=True)}
    locations: dict[int, dict[int, PartLocation]] = {}
    for number, values in _rows(locs_file, 5):
        where = f"{locs_file}:{number}"
        try:
            image_id, part_id, visible = int(values[0]), int(values[1]), int(values[4])
            x, y = float(values[2]), float(values[3])
        except ValueError as err:
            raise ValueError(f"{where}: expected '<image_id> <part_id> <x> <y> <visible>', got {values}") from err
        if image_id not in image_paths:
            raise ValueError(f"{where}: image id {image_id} is not listed in {images_file}")
        if part_id not in part_names:
            raise ValueError(f"{where}: part id {part_id} is not listed in {names_file}")
        if visible not in (0, 1):
            raise ValueError(f"{where}: visible must be 0 or 1, got {visible}")
        locations.setdefault(image_id, {})[part_id] = PartLocation(image_id, part_id, x, y, bool(visible))
    return CubParts(root, part_names, image_paths, locations)
