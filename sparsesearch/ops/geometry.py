"""Window geometry of one block: effective window and shift, padding, and the index tensors derived from it.

This module owns the window <-> token index arithmetic (the formulas are in `WindowGeometry`'s docstring): the torch
bodies of the window ops (`reference`) and the custom ops' gradients index through the tensors built here. The
Triton kernels (`triton_impl`) evaluate the same formulas on the device, since a kernel cannot call Python; the
kernel tests compare them bit for bit with the torch bodies, and tests/test_ops_geometry.py checks the tensors
here against a plain roll / pad / partition of the map.

All index tensors here depend only on (H, W, window, shift), never on data; most are cached per device.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar, cast

import torch

T = TypeVar("T")

__all__ = [
    "WindowGeometry",
    "WindowTables",
    "keep_count",
    "token_index",
    "token_window_index",
    "flat_token_index",
    "window_tables",
    "image_offsets",
    "shift_mask",
    "relative_position_index",
]


@dataclass(frozen=True)
class WindowGeometry:
    """How a (H, W) feature map is cut into windows for one block.

    Follows timm: a window larger than the feature map along a dimension is clamped to that dimension and the
    shift along it becomes 0. The map is cyclically shifted by (-sh, -sw), then padded bottom/right with zeros
    to (Hp, Wp), then cut into nWh x nWw windows of wh x ww tokens, numbered row-major. So position t of window
    w is the shifted, padded position

        hp = (w // nWw) * wh + t // ww,   wp = (w % nWw) * ww + t % ww

    which is padding unless hp < H and wp < W, and else holds the original token ((hp + sh) mod H, (wp + sw) mod W)
    (`token_index`). Conversely original token (h, w) sits at shifted position ((h - sh) mod H, (w - sw) mod W)
    (`token_window_index`).
    """

    H: int
    W: int
    wh: int
    ww: int
    sh: int
    sw: int

    @classmethod
    def create(cls, H: int, W: int, window: int, shifted: bool) -> WindowGeometry:
        """Geometry for nominal square `window`; `shifted` blocks use shift window // 2 (as Swin)."""
        wh, ww = min(window, H), min(window, W)
        sh = window // 2 if shifted and H > window else 0
        sw = window // 2 if shifted and W > window else 0
        return cls(H, W, wh, ww, sh, sw)

    # derived once (a block asks for them in every forward): not compared, hashed or shown
    Hp: int = field(init=False, compare=False, repr=False)
    Wp: int = field(init=False, compare=False, repr=False)
    nWh: int = field(init=False, compare=False, repr=False)
    nWw: int = field(init=False, compare=False, repr=False)
    num_windows: int = field(init=False, compare=False, repr=False)
    window_area: int = field(init=False, compare=False, repr=False)
    padded: bool = field(init=False, compare=False, repr=False)
    shifted: bool = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        Hp, Wp = math.ceil(self.H / self.wh) * self.wh, math.ceil(self.W / self.ww) * self.ww
        nWh, nWw = Hp // self.wh, Wp // self.ww
        derived = {
            "Hp": Hp,
            "Wp": Wp,
            "nWh": nWh,
            "nWw": nWw,
            "num_windows": nWh * nWw,
            "window_area": self.wh * self.ww,
            "padded": Hp != self.H or Wp != self.W,
            "shifted": self.sh > 0 or self.sw > 0,
        }
        for name, value in derived.items():
            object.__setattr__(self, name, value)  # a frozen dataclass: set once, here


def keep_count(sparsity: float, num_windows: int) -> int:
    """Windows kept per image: max(1, floor((1 - p) * nW + 0.5)), i.e. round half up.

    The product is rounded to 9 decimals first so that binary floating point (0.7 * 10 = 6.999...) never
    flips the rounding of an exact half.
    """
    return max(1, math.floor(round((1.0 - sparsity) * num_windows, 9) + 0.5))


def _device_key(device: torch.device | str) -> str:
    return str(torch.device(device))


_MISS = object()


def _device_cached(build: Callable[..., T]) -> Callable[..., T]:
    """`build(*args, device)` cached per argument tuple, the device (last) as the caller gives it. A hit costs one dict
    lookup: the window ops and blocks ask several times in every pruned block of every forward. A miss builds
    outside inference mode (a table built inside it would be an inference tensor, unusable by autograd afterwards).
    Under torch.compile the builder is traced every time (dynamo reads no Python dict of tensors)."""
    hits: dict[tuple[Any, ...], Any] = {}

    def get(*args: Any) -> T:
        hit = _MISS if torch.compiler.is_compiling() else hits.get(args, _MISS)
        if hit is _MISS:
            with torch.inference_mode(False):
                hit = build(*args[:-1], _device_key(args[-1]))
            if not torch.compiler.is_compiling():
                if len(hits) >= 1024:
                    hits.clear()
                hits[args] = hit
        return cast("T", hit)

    return get


@_device_cached
def _token_index(geom: WindowGeometry, device: str) -> torch.Tensor:
    hp = torch.arange(geom.Hp)
    wp = torch.arange(geom.Wp)
    rows = (hp + geom.sh) % geom.H  # shifted row i holds original row (i + sh) mod H
    cols = (wp + geom.sw) % geom.W
    flat = rows[:, None] * geom.W + cols[None, :]
    valid = (hp < geom.H)[:, None] & (wp < geom.W)[None, :]
    flat = torch.where(valid, flat, torch.full_like(flat, geom.H * geom.W))
    flat = flat.view(geom.nWh, geom.wh, geom.nWw, geom.ww).permute(0, 2, 1, 3)
    return flat.reshape(geom.num_windows, geom.window_area).to(device)


def token_index(geom: WindowGeometry, device: torch.device | str = "cpu") -> torch.Tensor:
    """(nW, wh*ww) int64: flat index h*W + w of the original token at each window position.

    Padded positions hold H*W (one past the last token), so a buffer with one extra row can absorb them.
    """
    return _token_index(geom, device)


def token_window_index(geom: WindowGeometry, device: torch.device | str = "cpu") -> torch.Tensor:
    """(H*W,) int64: the window (of the shifted, padded partition) that holds each original token h*W + w.

    Built from fresh tensors on every call (not a cached constant), so that it can be traced inside a compiled
    backward.
    """
    hs = (torch.arange(geom.H, device=device) - geom.sh) % geom.H  # row of each original row in the shifted map
    ws = (torch.arange(geom.W, device=device) - geom.sw) % geom.W
    return ((hs // geom.wh)[:, None] * geom.nWw + (ws // geom.ww)[None, :]).reshape(-1)


def flat_token_index(geom: WindowGeometry, idx: torch.Tensor) -> torch.Tensor:
    """(B, k) kept windows -> (B*k*N,) int64 row of each window position in a (B*H*W + 1, C) buffer: image b's
    token t at row b*H*W + t, every padded position at the spare last row B*H*W."""
    B = idx.shape[0]
    HW = geom.H * geom.W
    tok = token_index(geom, idx.device)[idx]  # (B, k, N)
    base = (torch.arange(B, device=idx.device) * HW).view(B, 1, 1)
    spare = base[-1:] + HW  # (1, 1, 1) = B*HW, the spare last row; a graph value when traced (dynamic batch)
    flat = torch.where(tok == HW, spare, tok + base)
    return flat.reshape(-1)


class WindowTables(NamedTuple):
    """Per-geometry index tables, each (nW, wh*ww), that let the window ops index kept windows in one step.

    token: int64 original token h*W + w of each window position, H*W at padded positions (`token_index`).
    safe: int64 like `token`, but padded positions point at the window's first position (always a real token:
        the top-left corner of every window lies inside the map), so it can index the map itself.
    src: int64 position within the window whose value a write-back takes: its own position, 0 at padded ones
        (so a padded slot rewrites the first token with that token's own value); None when unpadded.
    pad: bool, True at padded positions; None when unpadded.
    valid: float32, 1 at real tokens and 0 at padded positions.
    flat: (nW*wh*ww,) `token` flattened, window-major.
    """

    token: torch.Tensor
    safe: torch.Tensor
    src: torch.Tensor | None
    pad: torch.Tensor | None
    valid: torch.Tensor
    flat: torch.Tensor


@_device_cached
def _window_tables(geom: WindowGeometry, device: str) -> WindowTables:
    token = _token_index(geom, device)
    pad = token == geom.H * geom.W
    safe = torch.where(pad, token[:, :1].expand_as(token), token)
    if not geom.padded:
        return WindowTables(token, safe, None, None, torch.ones(token.shape, device=device), token.view(-1))
    src = torch.arange(geom.window_area, device=device).expand_as(token).masked_fill(pad, 0)
    return WindowTables(token, safe, src.contiguous(), pad, (~pad).float(), token.view(-1))


def window_tables(geom: WindowGeometry, device: torch.device | str = "cpu") -> WindowTables:
    """The cached :class:`WindowTables` of `geom` on `device`."""
    return _window_tables(geom, device)


@_device_cached
def _image_offsets(count: int, step: int, device: str) -> torch.Tensor:
    return (torch.arange(count) * step).view(count, 1, 1).to(device)


def image_offsets(count: int, step: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(count, 1, 1) int64 tensor [0, step, 2*step, ...]: the row offset of each image (or window) in a flat buffer."""
    return _image_offsets(count, step, device)


@_device_cached
def _shift_mask(geom: WindowGeometry, device: str) -> torch.Tensor | None:
    if not geom.shifted:
        return None
    img = torch.zeros(geom.Hp, geom.Wp)
    cnt = 0
    h_slices = ((0, -geom.wh), (-geom.wh, -geom.sh), (-geom.sh, None)) if geom.sh else ((0, None),)
    w_slices = ((0, -geom.ww), (-geom.ww, -geom.sw), (-geom.sw, None)) if geom.sw else ((0, None),)
    for h0, h1 in h_slices:
        for w0, w1 in w_slices:
            img[h0:h1, w0:w1] = cnt
            cnt += 1
    win = img.view(geom.nWh, geom.wh, geom.nWw, geom.ww).permute(0, 2, 1, 3).reshape(geom.num_windows, -1)
    diff = win[:, None, :] - win[:, :, None]
    return torch.zeros_like(diff).masked_fill(diff != 0, -100.0).to(device)


def shift_mask(geom: WindowGeometry, device: torch.device | str = "cpu") -> torch.Tensor | None:
    """(nW, N, N) float32 additive attention mask of shifted windows (0 or -100, as Swin), or None if unshifted.

    Regions are computed on the padded grid, exactly as timm does.
    """
    return _shift_mask(geom, device)


@_device_cached
def _shift_mask_kinds(geom: WindowGeometry, device: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    mask = _shift_mask(geom, device)
    if mask is None:
        return None
    masks, kinds = torch.unique(mask.reshape(geom.num_windows, -1), dim=0, return_inverse=True)
    return masks.view(-1, geom.window_area, geom.window_area), kinds


def shift_mask_kinds(
    geom: WindowGeometry, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """`shift_mask(geom)` as its distinct masks: ((u, N, N) float32, (nW,) int64 which of them each window has), so
    `masks[kinds]` is the shift mask; u is at most 4 (interior, last window row, last window column, corner). None if
    unshifted. Gathering kept windows' masks (or biases) from the u distinct ones reads a few kB instead of nW masks.
    """
    return _shift_mask_kinds(geom, device)


@_device_cached
def _relative_position_index(wh: int, ww: int, max_window: int, device: str) -> torch.Tensor:
    coords = torch.stack(torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")).flatten(1)
    rel = coords[:, :, None] - coords[:, None, :]  # (2, N, N)
    span = 2 * max_window - 1
    return ((rel[0] + max_window - 1) * span + (rel[1] + max_window - 1)).to(device)


def relative_position_index(wh: int, ww: int, max_window: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(N, N) int64 index into a relative position bias table of shape ((2M-1)^2, heads), M = max_window.

    A window smaller than M reads the centre crop of the table, so every window size shares the same weights.
    """
    return _relative_position_index(wh, ww, max_window, device)
