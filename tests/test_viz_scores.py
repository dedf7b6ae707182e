"""Localization scores on hand-made masks and keypoints, the permutation baseline, CSV rows and CUB part files."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from wegeft_vision.viz import (
    ClusterScore,
    KeypointTarget,
    MaskTarget,
    PartScore,
    best_clusters,
    localization_scores,
    permute_maps,
    read_cub_parts,
    rescale_points,
    write_csv,
)


def block(rows: slice, cols: slice, size: int = 4) -> torch.Tensor:
    out = torch.zeros(size, size)
    out[rows, cols] = 1.0
    return out


def test_mask_iou_on_hand_made_maps():
    # part 1: top-left 2x2; part 2: bottom-right 2x2 (label mask), maps on the mask's own 4x4 grid
    masks = torch.zeros(1, 4, 4, dtype=torch.long)
    masks[0, :2, :2], masks[0, 2:, 2:] = 1, 2
    maps = {5: torch.stack([block(slice(0, 2), slice(0, 2)), block(slice(0, 1), slice(None))])[None]}
    maps[7] = block(slice(2, 4), slice(None))[None, None]
    rows = localization_scores(maps, MaskTarget(masks, {1: "head", 2: "tail"}))
    got = {(r.layer, r.cluster, r.part): r.score for r in rows}
    assert got == {
        (5, 0, "head"): 1.0,
        (5, 1, "head"): 2 / 6,
        (7, 0, "head"): 0.0,
        (5, 0, "tail"): 0.0,
        (5, 1, "tail"): 0.0,
        (7, 0, "tail"): 4 / 8,
    }
    assert all(r.metric == "iou" and r.count == 1 for r in rows)


def test_mask_iou_upsamples_the_map_bilinearly():
    # a 2x2 map [[1, 1], [0, 0]] upsampled to 4x4 has rows 1, .75, .25, 0: the top half passes 0.5
    maps = {0: torch.tensor([[1.0, 1.0], [0.0, 0.0]])[None, None]}
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, :2] = True
    (row,) = localization_scores(maps, MaskTarget(mask))
    assert row.part == "foreground" and row.score == 1.0
    (row,) = localization_scores(maps, MaskTarget(mask, threshold=0.2))  # three rows now: 8 / 12
    assert row.score == pytest.approx(8 / 12)


def test_mask_parts_absent_from_an_image_are_not_counted():
    masks = torch.zeros(2, 4, 4, dtype=torch.long)
    masks[0, :2, :2] = 1
    masks[1, :2, :2], masks[1, 2:, 2:] = 1, 2
    maps = {0: torch.stack([block(slice(0, 2), slice(0, 2)), block(slice(2, 4), slice(2, 4))])[:, None]}
    rows = {r.part: r for r in localization_scores(maps, MaskTarget(masks))}
    assert (rows["part 1"].count, rows["part 1"].score) == (2, 0.5)  # image 0 hits, image 1 misses
    assert (rows["part 2"].count, rows["part 2"].score) == (1, 1.0)  # only image 1 has part 2


def keypoint_maps() -> dict[int, torch.Tensor]:
    # image 0: cluster 0 peaks at cell (row 1, col 2), center (x, y) = (20, 12) on a 32x32 input; cluster 1 at (0, 0)
    # image 1: cluster 0 peaks at (3, 3) -> (28, 28); cluster 1 at (1, 2)
    maps = torch.zeros(2, 2, 4, 4)
    maps[0, 0, 1, 2] = maps[0, 1, 0, 0] = maps[1, 0, 3, 3] = maps[1, 1, 1, 2] = 1.0
    return {3: maps}


def test_keypoint_hit_rate_on_hand_made_points():
    points = torch.tensor([[[21.0, 13.0], [8.0, 8.0]], [[21.0, 13.0], [0.0, 0.0]]])  # (B, P, 2) as (x, y)
    visible = torch.tensor([[True, True], [True, False]])
    target = KeypointTarget(points, visible, (32, 32), radius=2.0, part_names=["beak", "tail"])
    got = {(r.cluster, r.part): (r.score, r.count) for r in localization_scores(keypoint_maps(), target)}
    # beak: image 0 cluster 0 hits (distance √2), image 1 cluster 1 hits; tail: only image 0, cluster 1 (√32 > 2)
    assert got == {(0, "beak"): (0.5, 2), (1, "beak"): (0.5, 2), (0, "tail"): (0.0, 1), (1, "tail"): (0.0, 1)}
    wide = KeypointTarget(points, visible, (32, 32), radius=math.sqrt(32), part_names=["beak", "tail"])
    assert {(r.cluster, r.part): r.score for r in localization_scores(keypoint_maps(), wide)}[(1, "tail")] == 1.0


def test_keypoint_target_validates_its_inputs():
    with pytest.raises(ValueError, match="points must have shape"):
        KeypointTarget(torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool), (32, 32), 2.0)
    with pytest.raises(ValueError, match="radius must be a positive number"):
        KeypointTarget(torch.zeros(1, 1, 2), torch.ones(1, 1, dtype=torch.bool), (32, 32), 0)
    with pytest.raises(ValueError, match="maps must have shape \\(3, K, gh, gw\\)"):
        localization_scores(keypoint_maps(), KeypointTarget(torch.zeros(3, 1, 2), torch.ones(3, 1).bool(), (32, 32), 1))


def test_best_cluster_per_part_beats_the_permutation_baseline():
    # 8 images; block 2 cluster 1 always peaks on the part, every other map peaks elsewhere
    gen = torch.Generator().manual_seed(0)
    maps = {0: torch.rand(8, 3, 4, 4, generator=gen) * 0.5, 2: torch.rand(8, 3, 4, 4, generator=gen) * 0.5}
    cells = torch.randint(0, 16, (8,), generator=gen)
    maps[2][:, 1].view(8, 16)[torch.arange(8), cells] = 1.0
    points = torch.stack([(cells % 4 + 0.5) * 8, (cells // 4 + 0.5) * 8], -1)[:, None].float()  # (8, 1, 2)
    target = KeypointTarget(points, torch.ones(8, 1, dtype=torch.bool), (32, 32), radius=3.0, part_names=["head"])
    (best,) = best_clusters(maps, target, permutations=20, seed=1)
    assert isinstance(best, PartScore)
    assert (best.part, best.layer, best.cluster, best.score, best.count) == ("head", 2, 1, 1.0, 8)
    assert 0.0 < best.baseline < 0.6  # best of 6 shuffled maps: about 1 - (15/16)^6 ≈ 0.32
    assert best_clusters(maps, target, permutations=20, seed=1) == [best]  # seeded
    (by_image,) = best_clusters(maps, target, baseline="images", permutations=5)
    assert by_image.baseline < 1.0


def test_permute_maps_keeps_values_and_checks_options():
    maps = torch.rand(3, 2, 4, 4, generator=torch.Generator().manual_seed(4))
    shuffled = permute_maps(maps, "pixels", torch.Generator().manual_seed(0))
    assert torch.equal(shuffled.flatten(2).sort(-1).values, maps.flatten(2).sort(-1).values)
    assert not torch.equal(shuffled, maps)
    exchanged = permute_maps(maps, "images", torch.Generator().manual_seed(0))
    assert all(not torch.equal(exchanged[b], maps[b]) for b in range(3))  # every image gets another's maps
    assert sorted(exchanged[:, 0, 0, 0].tolist()) == sorted(maps[:, 0, 0, 0].tolist())
    with pytest.raises(ValueError, match="needs at least 2 images"):
        permute_maps(maps[:1], "images", torch.Generator())
    with pytest.raises(ValueError, match="baseline must be 'pixels' or 'images', got 'rows'"):
        permute_maps(maps, "rows", torch.Generator())


def test_rows_write_as_csv(tmp_path):
    rows = [ClusterScore("iou", 3, 1, "left eye", 0.25, 4), ClusterScore("iou", 3, 2, "left eye", 0.5, 4)]
    path = write_csv(rows, tmp_path / "out" / "scores.csv")
    with path.open() as handle:
        read = list(csv.DictReader(handle))
    assert read[1] == {"metric": "iou", "layer": "3", "cluster": "2", "part": "left eye", "score": "0.5", "count": "4"}
    with pytest.raises(ValueError, match="no score rows"):
        write_csv([], tmp_path / "empty.csv")


def write_cub(root, locs: str) -> None:
    (root / "parts").mkdir(parents=True)
    (root / "parts" / "parts.txt").write_text("1 back\n2 beak\n7 left eye\n")
    (root / "images.txt").write_text("1 001.Albatross/a_1.jpg\n2 002.Auklet/b_2.jpg\n")
    (root / "parts" / "part_locs.txt").write_text(locs)


CUB_LOCS = "1 1 10.0 20.0 1\n1 2 0.0 0.0 0\n1 7 150.5 50.0 1\n2 1 5.0 6.0 1\n2 2 30.0 40.0 1\n2 7 0.0 0.0 0\n"


def test_cub_part_files_parse_into_keypoints(tmp_path):
    write_cub(tmp_path / "CUB_200_2011", CUB_LOCS)
    parts = read_cub_parts(tmp_path)  # the folder holding CUB_200_2011 works too
    assert parts.names == ["back", "beak", "left eye"]
    assert parts.image_id("/data/CUB_200_2011/images/002.Auklet/b_2.jpg") == 2
    points, visible = parts.keypoints([2, 1])
    assert points[1, 2].tolist() == [150.5, 50.0] and points[0, 1].tolist() == [30.0, 40.0]
    assert visible.tolist() == [[True, True, False], [True, False, True]]
    target = parts.target([1], original_sizes=[(100, 200)], image_size=(32, 32), radius=4.0)
    assert target.points[0, 2].tolist() == pytest.approx([150.5 * 32 / 200, 50.0 * 32 / 100])
    assert target.part_names == ["back", "beak", "left eye"] and target.image_size == (32, 32)
    with pytest.raises(KeyError, match="not listed in"):
        parts.image_id("003.Other/c.jpg")


@pytest.mark.parametrize(
    "locs, error, message",
    [
        ("1 1 10.0 20.0\n", ValueError, r"part_locs.txt:1: expected 5 space-separated fields"),
        ("1 1 10.0 20.0 1\n1 9 1.0 1.0 1\n", ValueError, r"part_locs.txt:2: part id 9 is not listed in"),
        ("3 1 1.0 1.0 1\n", ValueError, r"part_locs.txt:1: image id 3 is not listed in"),
        ("1 1 x 1.0 1\n", ValueError, r"part_locs.txt:1: expected '<image_id> <part_id> <x> <y> <visible>'"),
    ],
)
def test_cub_parser_names_the_bad_line(tmp_path, locs, error, message):
    write_cub(tmp_path, locs)
    with pytest.raises(error, match=message):
        read_cub_parts(tmp_path)


def test_cub_parser_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="parts.txt not found"):
        read_cub_parts(tmp_path)


def test_rescale_points():
    points = torch.tensor([[[100.0, 50.0]]])
    out = rescale_points(points, [(100, 400)], (224, 224))
    assert out[0, 0].tolist() == pytest.approx([56.0, 112.0])
