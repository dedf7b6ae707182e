"""PaCa cluster pictures: which weight rows (output channels) each of the M learned clusters gathers, per layer.

The assignment C = sigmoid(Z A^T + a)^T / N (M, N) and the attention P (heads, N, M) of a PaCa g_theta depend on the
layer's weights only (Z = W·φ), not on any image, so they are read by running the g_theta once per layer.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from ..methods.paca import PaCaAttention
from ..methods.wegeft import WeGeFTLinear


@dataclasses.dataclass(frozen=True)
class PaCaClusters:
    """One layer's clusters.

    Attributes:
        assignment: (M, N) sigmoid cluster scores in (0, 1) (the 1/N scale removed), N = weight rows.
        attention: (heads, N, M) each row's attention over the clusters.
        order: (N,) the rows sorted by their dominant cluster (then by its score), for drawing.
    """

    assignment: np.ndarray
    attention: np.ndarray
    order: np.ndarray


def _paca(layer: WeGeFTLinear) -> PaCaAttention | None:
    found = [m for m in layer.g_theta.modules() if isinstance(m, PaCaAttention)]
    return found[0] if found else None


def paca_clusters(model: nn.Module) -> dict[str, PaCaClusters]:
    """{layer name: its clusters} for every WeGeFT layer whose g_theta is a PaCa block (d_in form: rows = d_out)."""
    result = {}
    for name, layer in model.named_modules():
        if not isinstance(layer, WeGeFTLinear) or (attn := _paca(layer)) is None:
            continue
        if layer.projections.variant != "d_in":
            raise ValueError(f"{name}: cluster pictures need the 'd_in' form (tokens = weight rows)")
        attn.record = True
        try:
            with torch.no_grad():
                layer.projections.compressed_weight(layer.weight, layer.g_theta, dropout=False)
        finally:
            attn.record = False
        assignment = (attn.last_assignment * attn.last_assignment.shape[-1]).float().cpu().numpy()  # (M, N)
        dominant = assignment.argmax(0)
        order = np.lexsort((-assignment.max(0), dominant))
        result[name] = PaCaClusters(assignment, attn.last_attention.float().cpu().numpy(), order)
    return result


def save_cluster_figure(name: str, clusters: PaCaClusters, path: str | Path, dpi: int = 100) -> Path:
    """Two M × N panels, columns (weight rows) in `clusters.order`: the assignment, and the attention (head mean)."""
    m, n = clusters.assignment.shape
    attention = clusters.attention.mean(0).T  # (M, N)
    figure = Figure(figsize=(max(4.0, min(16.0, n / 24)), 2 * max(1.5, min(6.0, m / 12)) + 0.8), dpi=dpi)
    panels = (
        (clusters.assignment[:, clusters.order], "cluster assignment sigmoid(ZA^T + a)"),
        (attention[:, clusters.order], "attention of each row over the clusters"),
    )
    for i, (image, title) in enumerate(panels):
        axes = figure.add_subplot(2, 1, i + 1)
        shown = axes.imshow(image, aspect="auto", interpolation="nearest", cmap="viridis")
        axes.set_title(f"{name}: {title}", fontsize=8)
        axes.set_ylabel("cluster", fontsize=7)
        axes.set_xlabel("weight rows (output channels), sorted by dominant cluster", fontsize=7)
        axes.tick_params(labelsize=6)
        figure.colorbar(shown, ax=axes)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi, format="png")
    return path


def save_paca_clusters(model: nn.Module, folder: str | Path) -> list[Path]:
    """For each PaCa layer, `<folder>/<layer>.png` (the figure) and `<layer>.npz` (assignment, attention, order)."""
    found = paca_clusters(model)
    if not found:
        raise ValueError("no PaCa layer in this model: --clusters needs an adapter with g_theta 'paca' or 'paca_attn'")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, clusters in found.items():
        written.append(save_cluster_figure(name, clusters, folder / f"{name}.png"))
        np.savez(folder / f"{name}.npz", **dataclasses.asdict(clusters))
        written.append(folder / f"{name}.npz")
    return written
