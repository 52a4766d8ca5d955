"""Input normalisation presets, shared by data loading, training and inference.

``caffe``: BGR channel order, pixel range 0..255, minus the reference VGG/CaffeNet
means (what the reference FCN weights expect). ``imagenet``: RGB in 0..1, minus
the ImageNet mean, divided by its std (what the Lite0 trunk expects).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .errors import UserError


@dataclass(frozen=True)
class Normalization:
    name: str
    bgr: bool
    scale: float  # multiply uint8 pixel values by this first
    mean: tuple[float, ...]  # in the channel order fed to the net, after scaling
    std: tuple[float, ...]


PRESETS: dict[str, Normalization] = {
    "caffe": Normalization("caffe", True, 1.0, (104.00699, 116.66877, 122.67892), (1.0, 1.0, 1.0)),
    "imagenet": Normalization("imagenet", False, 1 / 255.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    # the reference NYUDv2 and SIFT Flow nets subtract their own data sets' BGR means
    "caffe-nyud": Normalization("caffe-nyud", True, 1.0, (116.190, 97.203, 92.318), (1.0, 1.0, 1.0)),
    "caffe-siftflow": Normalization("caffe-siftflow", True, 1.0, (114.578, 115.294, 108.353), (1.0, 1.0, 1.0)),
}


def get_normalization(name: str | Normalization) -> Normalization:
    if isinstance(name, Normalization):
        return name
    try:
        return PRESETS[name]
    except KeyError:
        raise UserError(f"unknown normalization {name!r}; expected one of: {', '.join(PRESETS)}") from None


def normalize(image: np.ndarray | Tensor, preset: str | Normalization = "imagenet", *,
              channels_last: bool = False) -> Tensor:
    """RGB uint8 ``H x W x 3`` (array or tensor) -> float32 ``3 x H x W`` tensor for the net.

    The result is on the input's device (a CUDA tensor stays on its GPU). One pass: channel flip,
    scale, mean and std are folded into a single multiply-add. ``channels_last``: keep the
    image's pixel-interleaved memory order (``unsqueeze(0)`` of it is a channels-last batch), for
    a net that runs channels-last: no layout copy here and none before the first layer.
    """
    norm = get_normalization(preset)
    if isinstance(image, np.ndarray):
        # torch warns on read-only arrays (np.asarray of a PIL image); a uint8 copy is cheap
        t = torch.as_tensor(np.ascontiguousarray(image) if image.flags.writeable else image.copy())
    else:
        t = image
    if t.ndim != 3 or t.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 RGB image, got shape {tuple(t.shape)}")
    t = t.permute(2, 0, 1)
    if norm.bgr:
        t = t.flip(0)
    # on the input's device: a CUDA image is normalised on the GPU, without a host round trip
    mul = torch.tensor([norm.scale / s for s in norm.std], dtype=torch.float32, device=t.device).view(3, 1, 1)
    add = torch.tensor([-m / s for m, s in zip(norm.mean, norm.std)], dtype=torch.float32,
                       device=t.device).view(3, 1, 1)
    out = torch.addcmul(add, t.to(torch.float32), mul)  # in the image's H x W x 3 memory order
    return out if channels_last else out.contiguous()


def denormalize(tensor: Tensor, preset: str | Normalization = "imagenet") -> np.ndarray:
    """Inverse of :func:`normalize`: ``3 x H x W`` float -> RGB uint8 ``H x W x 3`` (for pictures)."""
    norm = get_normalization(preset)
    std = torch.tensor(norm.std).view(3, 1, 1)
    mean = torch.tensor(norm.mean).view(3, 1, 1)
    t = (tensor.detach().float().cpu() * std + mean) / norm.scale
    if norm.bgr:
        t = t.flip(0)
    return t.clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def normalize_hha(hha: np.ndarray | Tensor, mean: tuple[float, ...] | None = None) -> Tensor:
    """HHA ``H x W x 3`` uint8 (file channel order) -> float32 ``3 x H x W`` minus ``mean``
    (the reference NYUD nets subtract (132.431, 94.076, 118.477); None: nothing)."""
    t = torch.as_tensor(np.ascontiguousarray(hha)) if isinstance(hha, np.ndarray) else hha
    t = t.permute(2, 0, 1).to(torch.float32)
    if mean is not None:
        t = t - torch.tensor(mean, dtype=torch.float32, device=t.device).view(3, 1, 1)
    return t.contiguous()


def normalize_depth(depth: np.ndarray | Tensor, log_mean: float | None = None) -> Tensor:
    """Depth ``H x W`` in metres -> float32 ``1 x H x W``: with ``log_mean``, the reference
    RGB-D input ``log(depth in mm) - log_mean`` (missing depth, 0, stays 0: log 0 is -inf);
    without, metres as read."""
    d = torch.as_tensor(np.ascontiguousarray(depth, dtype=np.float32)) if isinstance(depth, np.ndarray) \
        else depth.to(torch.float32)
    d = d[None]
    if log_mean is not None:
        valid = d > 0
        d = torch.where(valid, torch.log(d.clamp_min(1e-6) * 1000.0) - log_mean, torch.zeros_like(d))
    return d
