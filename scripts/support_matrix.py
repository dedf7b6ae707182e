"""Which method works on which backbone family: every (family, method) cell computed from the code, never typed.

Each family's tiny random configuration (`wegeft_vision.backbones.families`) is built in float64 and each named method
variant (`wegeft_vision.methods.VARIANTS`) injected into it. A cell is `works` when injection passes its participation
guard, every trainable tensor gets a non-zero gradient once all of them are perturbed, and (for weight updates) merge
reproduces the logits and unmerge restores the very weights; it is `refused` when injection refuses, with the message
the method gives on the family's real-size architecture (built on the meta device, no weights); anything else, a
tiny and a real-size model that disagree included, is `BROKEN` (the script then exits 1). The `heatmaps` row draws
WeGeFT's cluster maps.

    python scripts/support_matrix.py --json runs/support_matrix.json            # print the table, write JSON
    python scripts/support_matrix.py --readme README.md                         # rewrite the README's matrix
    python scripts/support_matrix.py --readme README.md --check                 # exit 1 if the README's is stale
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import sys
from pathlib import Path

import torch

from wegeft_vision.backbones import create_backbone
from wegeft_vision.backbones.families import BY_NAME, FAMILIES, Family, tiny_model
from wegeft_vision.methods import VARIANTS, Variant, WeGeFTConfig, inject, merge, method_config, unmerge
from wegeft_vision.methods.participation import input_shape
from wegeft_vision.viz import cluster_heatmaps

BEGIN, END = "<!-- support-matrix:begin -->", "<!-- support-matrix:end -->"
HEATMAPS = "heatmaps"


@functools.cache
def _tiny(name: str) -> torch.nn.Module:
    return tiny_model(name)


def tiny(family: Family) -> torch.nn.Module:
    """A copy of the family's tiny random model (`families.tiny_model`: float64, eval mode, a 3-way head)."""
    return copy.deepcopy(_tiny(family.name))


@functools.cache
def _real(name: str) -> torch.nn.Module:
    with torch.device("meta"):
        return create_backbone(BY_NAME[name].architecture, num_classes=100)


def real_size_refusal(family: Family, variant: Variant) -> str | None:
    """Why the method refuses the family's real-size architecture (built on the meta device), or None."""
    try:
        inject(copy.deepcopy(_real(family.name)), variant.config(), check=False)
    except (ValueError, TypeError) as error:
        return " ".join(str(error).split())
    return None


def _images(model: torch.nn.Module) -> torch.Tensor:
    return torch.randn(2, *input_shape(model), generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def _broken(why: str) -> dict[str, str]:
    return {"status": "BROKEN", "reason": why}


def method_cell(family: Family, variant: Variant) -> dict[str, str]:
    """One (family, method) cell: works, refused (with the reason) or BROKEN (with what failed)."""
    refusal = real_size_refusal(family, variant)
    try:
        model = inject(tiny(family), variant.config())
    except (ValueError, TypeError) as error:
        if refusal is None:
            return _broken(f"refused at the tiny size only: {' '.join(str(error).split())}")
        return {"status": "refused", "reason": refusal}
    if refusal is not None:
        return _broken(f"refused at the real size only: {refusal}")
    x = _images(model)
    generator = torch.Generator().manual_seed(2)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    with torch.no_grad():
        for p in trainable.values():
            p.add_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * 0.1)
    logits = model(x)
    grads = torch.autograd.grad(logits.square().sum(), list(trainable.values()), allow_unused=True)
    dead = [n for (n, _), g in zip(trainable.items(), grads, strict=True) if g is None or not g.abs().max() > 0]
    if dead:
        return _broken(f"no gradient reaches {dead[0]}")
    if method_config(model).mergeable:
        before = {n: t.clone() for n, t in model.state_dict().items()}
        with torch.no_grad():
            merged = merge(model)(x)
            if not torch.allclose(merged, logits, rtol=0, atol=1e-9):
                return _broken(f"merged logits differ by {(merged - logits).abs().max():.2e}")
            unmerge(model)
        if any(not torch.equal(t, model.state_dict()[n]) for n, t in before.items()):
            return _broken("unmerge did not restore the weights")
    return {"status": "works", "reason": ""}


def heatmap_cell(family: Family) -> dict[str, str]:
    """WeGeFT's cluster maps on the family: one map per rank on each block's own token grid."""
    model = inject(tiny(family), WeGeFTConfig(rank=4))
    try:
        maps = cluster_heatmaps(model, _images(model))
    except (ValueError, TypeError) as error:
        return {"status": "refused", "reason": " ".join(str(error).split())}
    if not maps or any(m.shape[:2] != (2, 4) or not torch.isfinite(m).all() for m in maps.values()):
        return _broken(f"maps of shapes {[tuple(m.shape) for m in maps.values()]}")
    return {"status": "works", "reason": ""}


def matrix() -> dict[str, dict[str, dict[str, str]]]:
    """{row (method variant name or `heatmaps`): {family name: cell}}."""
    table = {v.name: {f.name: method_cell(f, v) for f in FAMILIES} for v in VARIANTS}
    table[HEATMAPS] = {f.name: heatmap_cell(f) for f in FAMILIES}
    return table


def markdown(table: dict[str, dict[str, dict[str, str]]]) -> str:
    """Rows: methods; columns: families; refusals numbered, their reasons listed below the table."""
    labels = {v.name: v.label for v in VARIANTS} | {HEATMAPS: "WeGeFT heatmaps"}
    reasons: list[str] = []
    lines = [
        "| method | " + " | ".join(f.label for f in FAMILIES) + " |",
        "|---|" + "---|" * len(FAMILIES),
    ]
    for row, cells in table.items():
        marks = []
        for family in FAMILIES:
            cell = cells[family.name]
            if cell["status"] == "works":
                marks.append("✓")
                continue
            if cell["reason"] not in reasons:
                reasons.append(cell["reason"])
            word = "refused" if cell["status"] == "refused" else "BROKEN"
            marks.append(f"{word} ({reasons.index(cell['reason']) + 1})")
        lines.append(f"| {labels[row]} | " + " | ".join(marks) + " |")
    lines.append("")
    lines += [f"({i}) {reason}" for i, reason in enumerate(reasons, 1)]
    lines.append("")
    lines.append("Families (the real-size architecture of the tag; the head every method trains):")
    lines.append("")
    lines += [f"- {f.label}: `{f.backbone}` — head: {f.head}." for f in FAMILIES]
    return "\n".join(lines)


def replace_section(text: str, body: str) -> str:
    """`text` with the part between the support-matrix markers replaced by `body`."""
    if BEGIN not in text or END not in text:
        raise ValueError(f"the README has no {BEGIN} ... {END} section")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{body}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the matrix as JSON to this file")
    parser.add_argument("--readme", type=Path, help="the README whose support-matrix section is written")
    parser.add_argument("--check", action="store_true", help="with --readme: exit 1 if the section is not current")
    args = parser.parse_args(argv)
    table = matrix()
    body = markdown(table)
    print(body)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        families = {f.name: {"backbone": f.backbone, "tiny": dict(f.tiny), "head": f.head} for f in FAMILIES}
        args.json.write_text(json.dumps({"families": families, "matrix": table}, indent=2) + "\n")
    broken = [(row, name) for row, cells in table.items() for name, c in cells.items() if c["status"] == "BROKEN"]
    if broken:
        print(f"BROKEN cells: {broken}", file=sys.stderr)
        return 1
    if args.readme:
        text = args.readme.read_text(encoding="utf-8")
        updated = replace_section(text, body)
        if args.check:
            if updated != text:
                print(f"{args.readme}: the support matrix is not current; run scripts/support_matrix.py --readme")
                return 1
        else:
            args.readme.write_text(updated, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
