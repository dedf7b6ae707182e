"""K grid points of one run in one forward and backward: a method's trainable tensors held K times, stacked per step.

`PackedNetwork` keeps the injected network (frozen backbone, its own trainable tensors as the starting point) and K
copies of every trainable tensor, one set per grid point. A forward stacks the copies of the points still in the
pack and maps the network over them with `torch.func.vmap` (`functional_call` swaps the tensors in), so:

- work that reads no trainable tensor (the backbone before the first adapted layer; for a linear probe, the whole
  backbone) is done once, and everything after it K times, on the same images;
- random draws (stochastic depth, dropout) are made once and shared by the K points (`randomness="same"`), with the
  same calls in the same order as a run of one point: each point sees the masks its own run would;
- each point's gradient reaches only its own copies, so the sum of the per-point losses trains each point as its own
  run (per-point optimizer groups, clipping and divergence are the module's).

A method whose forward cannot be mapped (an autograd node without a batching rule, such as peft's LoHa) is found by
`packable`, which maps one tiny forward over two copies; the protocol then trains its runs one point at a time.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, vmap

from ..methods import trainable_parameters
from ..methods.participation import input_shape


def packable(network: nn.Module) -> str | None:
    """None when the injected `network` packs, else why not: one forward of one input (the model's size, eval mode,
    no gradient, random state untouched) mapped over two copies of its trainable tensors."""
    shape = input_shape(network)
    if shape is None:
        return None  # no input size known: the first step will tell
    tensors = trainable_parameters(network)
    stacked = [torch.stack([t.detach(), t.detach()]) for t in tensors.values()]
    weight = next(iter(tensors.values())) if tensors else next(network.parameters())
    images = torch.zeros(1, *shape, dtype=weight.dtype, device=weight.device)
    training = network.training
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            network.eval()
            _mapped(network, _slots(network, tensors), stacked, images)
    except RuntimeError as error:
        return " ".join(str(error).split())[:300]
    finally:
        network.train(training)
    return None


class PackedNetwork(nn.Module):
    """`network` trained as `count` grid points at once.

    Args:
        network: an injected network (`methods.inject`); its trainable tensors are every point's starting values and
            are frozen here (the copies train).
        count: the number of points.

    Attributes:
        names: the trainable tensors' names (`methods.trainable_parameters`, shared tensors once).
        points: per point, its tensors in `names` order.
        active: the points still in the pack, in order (a diverged point leaves it).
    """

    def __init__(self, network: nn.Module, count: int) -> None:
        super().__init__()
        if count < 1:
            raise ValueError(f"a pack holds at least one point, got {count}")
        if (reason := packable(network)) is not None:
            method = getattr(getattr(network, "peft_config", None), "method", "?")
            raise ValueError(f"method {method} cannot be packed: {reason}")
        self.network = network
        start = trainable_parameters(network)
        self.names = list(start)
        self.points = nn.ModuleList(
            nn.ParameterList(nn.Parameter(t.detach().clone()) for t in start.values()) for _ in range(count)
        )
        for tensor in start.values():
            tensor.requires_grad_(False)
        self.active = list(range(count))
        self._slots = _slots(network, start)

    def __len__(self) -> int:
        return len(self.points)

    def point_tensors(self, point: int) -> dict[str, torch.Tensor]:
        """The point's trainable tensors by name (the names of `methods.trainable_parameters`)."""
        return dict(zip(self.names, self.points[point], strict=True))

    def leave(self, point: int) -> None:
        """Take a point out of the pack (it diverged): later steps neither compute nor update it."""
        self.active.remove(point)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of every active point, (len(active), batch, classes)."""
        if not self.active:
            raise RuntimeError("every point of the pack has left it")
        stacked = [torch.stack([self.points[k][i] for k in self.active]) for i in range(len(self.names))]
        return _mapped(self.network, self._slots, stacked, images)

    def write_point(self, point: int) -> nn.Module:
        """`network` as the point's own run would leave it (its tensors copied in, trainable again), e.g. to save its
        adapter; the pack's forward does not read these tensors."""
        with torch.no_grad():
            for name, tensor in self.point_tensors(point).items():
                self.network.get_parameter(name).copy_(tensor).requires_grad_(True)
        return self.network


def _mapped(
    network: nn.Module, slots: dict[str, int], stacked: list[torch.Tensor], images: torch.Tensor
) -> torch.Tensor:
    """`network(images)` mapped over the first dimension of `stacked` (the trainable tensors of each point, put in
    every slot that registers them), the random draws shared."""

    def one(tensors: list[torch.Tensor]) -> torch.Tensor:
        swapped = {slot: tensors[index] for slot, index in slots.items()}
        return functional_call(network, swapped, (images,), strict=False, tie_weights=False)

    with warnings.catch_warnings():  # ops without a batching rule (CPU attention) run once per point: exact
        warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet")
        return vmap(one, randomness="same")(stacked)


def _slots(network: nn.Module, start: dict[str, nn.Parameter]) -> dict[str, int]:
    """Every place a trainable tensor is registered (a shared tensor lives in several modules), once per (module,
    attribute), with the index of its tensor in `start`. `functional_call`'s own `tie_weights` would swap a shared
    module's attribute once per name that reaches it, and restore the swapped-in tensor."""
    index = {id(t): i for i, t in enumerate(start.values())}
    slots, seen = {}, set()
    for name, tensor in network.named_parameters(remove_duplicate=False):
        owner_name, _, attribute = name.rpartition(".")
        owner = network.get_submodule(owner_name)
        if id(tensor) in index and (id(owner), attribute) not in seen:
            seen.add((id(owner), attribute))
            slots[name] = index[id(tensor)]
    return slots


def split_by_point(rows: Sequence[dict[str, str]], point: int) -> list[dict[str, str]]:
    """The rows of one point from a packed run's metrics log: columns `NAME@k` of point k as `NAME`, the shared
    columns (epoch, step) kept, other points' columns dropped; rows without a value of the point dropped."""
    suffix = f"@{point}"
    out = []
    for row in rows:
        mine = {k.removesuffix(suffix): v for k, v in row.items() if k.endswith(suffix) and v not in ("", None)}
        if mine:
            shared = {k: v for k, v in row.items() if "@" not in k}
            out.append({**shared, **mine})
    return out


def points_that_fit(config: Any, limit: int, headroom: float = 0.8) -> int:
    """`--pack auto`: how many points of a run configuration (`RunConfig`) train together within `headroom` of the
    free memory, at most `limit` (the unit's grid).

    Measured: the run's network (random weights, its size and method) takes one training step of the run's batch
    with one point and with two, on the device the run trains on (the run's precision under autocast); the
    difference is the memory of one more point, plus its tensors' copy, gradient and AdamW moments. On a GPU the
    memory is the CUDA allocator's peak, against the free device memory; on a CPU the bytes autograd saves for
    backward, against `MemAvailable`.
    """
    from ..backbones import create_backbone
    from ..methods import inject
    from .cost import SavedBytes

    resolved = config.resolved
    device = torch.device("cuda" if torch.cuda.is_available() and resolved.trainer.accelerator != "cpu" else "cpu")
    network = create_backbone(
        config.backbone,
        num_classes=2,
        pretrained=False,
        drop_path_rate=resolved.model.drop_path,
        **(resolved.model.backbone_overrides or {}),
    ).to(device)
    packed = PackedNetwork(inject(network, config.method_config), 2).train()
    shape = input_shape(network) or (3, 224, 224)
    images = torch.zeros(config.batch_size, *shape, device=device)
    labels = torch.zeros(config.batch_size, dtype=torch.long, device=device)
    dtype = {"bf16": torch.bfloat16, "16": torch.float16}.get(str(resolved.trainer.precision).split("-")[0])
    used = []
    for active in ([0], [0, 1]):
        packed.active = active
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None), SavedBytes() as saved:
            loss = sum(torch.nn.functional.cross_entropy(logits, labels) for logits in packed(images))
        loss.backward()
        used.append(torch.cuda.max_memory_allocated(device) if device.type == "cuda" else saved.total)
    tensors = sum(t.numel() * t.element_size() for t in packed.points[0])
    per_point = max(used[1] - used[0], 0) + 4 * tensors  # the point's activations; tensors, gradient, two moments
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0] + torch.cuda.memory_allocated(device)
        base = max(used[0] - per_point, 0)
    else:
        free = _mem_available()
        base = sum(p.numel() * p.element_size() for p in network.parameters())
    return int(max(1, min(limit, (headroom * free - base) // per_point)))


def _mem_available() -> float:
    """Linux's estimate of the memory available to a new process, in bytes."""
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    raise OSError("/proc/meminfo has no MemAvailable line")
