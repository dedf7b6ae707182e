"""WeGeFT token-clustering heatmaps (C = W·φ), their rendering, part-localization scores, PaCa cluster pictures."""

from .clusters import PaCaClusters, paca_clusters, save_cluster_figure, save_paca_clusters
from .cub_parts import CubParts, PartLocation, read_cub_parts
from .heatmaps import (
    cluster_head,
    cluster_heatmaps,
    cluster_scores,
    heatmap_layers,
    normalize_maps,
    upsample_maps,
)
from .render import (
    overlay,
    overlay_maps,
    save_cluster_mosaic,
    save_heatmap_grid,
    save_image,
    tile,
    to_uint8_images,
)
from .scores import (
    ClusterScore,
    KeypointTarget,
    LocalizationTarget,
    MaskTarget,
    PartScore,
    best_clusters,
    localization_scores,
    permute_maps,
    rescale_points,
    write_csv,
)

__all__ = [
    "ClusterScore",
    "CubParts",
    "KeypointTarget",
    "LocalizationTarget",
    "MaskTarget",
    "PaCaClusters",
    "PartLocation",
    "PartScore",
    "best_clusters",
    "cluster_head",
    "cluster_heatmaps",
    "cluster_scores",
    "heatmap_layers",
    "localization_scores",
    "normalize_maps",
    "overlay",
    "overlay_maps",
    "paca_clusters",
    "permute_maps",
    "read_cub_parts",
    "rescale_points",
    "save_cluster_figure",
    "save_cluster_mosaic",
    "save_heatmap_grid",
    "save_image",
    "save_paca_clusters",
    "tile",
    "to_uint8_images",
    "upsample_maps",
    "write_csv",
]
