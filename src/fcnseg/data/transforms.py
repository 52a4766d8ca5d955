"""Joint transforms: image, labels and extra modalities move together.

A transform takes and returns the sample dict of a data set (``image`` RGB uint8
``H x W x 3``; ``label`` and any ``label_*`` ``H x W``; optional ``depth`` ``H x W``
float and ``hha`` ``H x W x 3`` uint8). Geometry is applied to every array of the
sample: images resize bilinearly, labels and depth by nearest neighbour (so no
class or depth is invented at edges), and padding uses the preset mean for the
image (zero after normalisation), 255 (ignore) for labels and 0 for depth/HHA.
:class:`Normalize` comes last and turns arrays into tensors.

Randomness, chosen for resumable training: every random transform draws from
``sample["rng"]`` (a ``numpy.random.Generator``) when the sample carries one; the
data sets put it there when indexed with ``(i, seed)`` or after
:meth:`~fcnseg.data.base.SegmentationDataset.set_epoch`, so a sample's augmentation
is a pure function of (seed, epoch, index), independent of worker count and order.
Without one, a transform uses the generator given to its constructor (``seed`` /
``generator``), else a generator drawn from numpy's global RNG (which the PyTorch
DataLoader seeds per worker). :class:`Compose` removes ``rng`` at the end so the
default collate never sees it.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..preprocess import Normalization, get_normalization, normalize, normalize_depth, normalize_hha
from .base import IGNORE_INDEX

Sample = dict[str, Any]

__all__ = [
    "Compose", "RandomScale", "RandomCrop", "RandomHorizontalFlip", "ColorJitter", "Photometric", "Normalize",
    "Resize",
    "train_transforms", "eval_transforms", "pad_fill", "is_label_key",
]

#: keys that carry per-pixel arrays but are not labels
IMAGE_KEYS = ("image", "hha")
DEPTH_KEYS = ("depth",)


def is_label_key(key: str) -> bool:
    """``label``, ``label_geo``, ... are class maps: nearest resize, padded with the ignore index."""
    return key == "label" or key.startswith("label_")


def _spatial_keys(sample: Sample) -> list[str]:
    return [k for k, v in sample.items() if isinstance(v, np.ndarray) and v.ndim >= 2 and k != "rng"]


def _rng(sample: Sample, own: np.random.Generator | None) -> np.random.Generator:
    rng = sample.get("rng")
    if isinstance(rng, np.random.Generator):
        return rng
    if own is not None:
        return own
    return np.random.default_rng(np.random.randint(0, 2**31 - 1))


def _make_rng(seed: int | None, generator: np.random.Generator | None) -> np.random.Generator | None:
    if generator is not None:
        return generator
    return np.random.default_rng(seed) if seed is not None else None


def pad_fill(preset: str | Normalization) -> tuple[int, int, int]:
    """The RGB uint8 colour that ``preset`` normalises to (almost exactly) zero: the mean."""
    norm = get_normalization(preset)
    mean = list(norm.mean)[::-1] if norm.bgr else list(norm.mean)
    return tuple(int(round(m / norm.scale)) for m in mean)  # type: ignore[return-value]


def _resize(arr: np.ndarray, size: tuple[int, int], nearest: bool) -> np.ndarray:
    """Resize ``H x W [x C]`` to ``size`` = (h, w) with pixel-centre alignment.

    Nearest: two index takes (exact, any dtype). Bilinear: PyTorch's antialiased kernel,
    which on uint8 gives Pillow's results 3-5x faster.
    """
    h, w = size
    H, W = arr.shape[:2]
    if (H, W) == (h, w):
        return arr
    if nearest:
        rows = np.minimum(((np.arange(h) + 0.5) * (H / h)).astype(np.int64), H - 1)
        cols = np.minimum(((np.arange(w) + 0.5) * (W / w)).astype(np.int64), W - 1)
        return arr.take(rows, axis=0).take(cols, axis=1)
    t = torch.from_numpy(np.ascontiguousarray(arr))
    t = (t[None, None] if arr.ndim == 2 else t.permute(2, 0, 1)[None])
    if t.dtype not in (torch.uint8, torch.float32, torch.float64):
        t = t.float()
    out = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False, antialias=True)[0]
    out = out[0] if arr.ndim == 2 else out.permute(1, 2, 0)
    res = out.numpy()
    if res.dtype != arr.dtype:
        res = np.clip(np.rint(res), 0, None).astype(arr.dtype)
    return np.ascontiguousarray(res)


class Compose:
    """Apply transforms in order; drops ``sample["rng"]`` at the end."""

    def __init__(self, transforms: Sequence[Callable[[Sample], Sample]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, sample: Sample) -> Sample:
        for t in self.transforms:
            sample = t(sample)
        sample.pop("rng", None)
        return sample

    def __repr__(self) -> str:
        return "Compose(" + ", ".join(repr(t) for t in self.transforms) + ")"


class Resize:
    """Deterministic resize to ``(h, w)`` (image bilinear, labels/depth nearest)."""

    def __init__(self, size: int | tuple[int, int]) -> None:
        self.size = (size, size) if isinstance(size, int) else tuple(size)

    def __call__(self, sample: Sample) -> Sample:
        for k in _spatial_keys(sample):
            sample[k] = _resize(sample[k], self.size, nearest=k not in IMAGE_KEYS)
        return sample

    def __repr__(self) -> str:
        return f"Resize({self.size})"


class RandomScale:
    """Rescale by a factor drawn uniformly from ``[min_scale, max_scale]``."""

    def __init__(self, min_scale: float = 0.5, max_scale: float = 2.0, seed: int | None = None,
                 generator: np.random.Generator | None = None) -> None:
        if not 0 < min_scale <= max_scale:
            raise ValueError(f"need 0 < min_scale <= max_scale, got {min_scale}, {max_scale}")
        self.min_scale, self.max_scale = float(min_scale), float(max_scale)
        self.rng = _make_rng(seed, generator)

    def __call__(self, sample: Sample) -> Sample:
        s = float(_rng(sample, self.rng).uniform(self.min_scale, self.max_scale))
        h, w = sample["image"].shape[:2]
        size = (max(1, int(round(h * s))), max(1, int(round(w * s))))
        for k in _spatial_keys(sample):
            sample[k] = _resize(sample[k], size, nearest=k not in IMAGE_KEYS)
        return sample

    def __repr__(self) -> str:
        return f"RandomScale({self.min_scale}, {self.max_scale})"


class RandomCrop:
    """Crop ``size`` = (h, w) at a random place, padding bottom/right first where the sample is smaller.

    The image is padded with ``fill`` (an RGB colour, or a preset name whose mean is used so
    that the padding is zero after normalisation), labels with ``label_fill`` (ignore) and
    other modalities (depth, HHA) with 0.
    """

    def __init__(self, size: int | tuple[int, int], fill: str | Normalization | Sequence[int] = "caffe",
                 label_fill: int = IGNORE_INDEX, seed: int | None = None,
                 generator: np.random.Generator | None = None) -> None:
        self.size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if min(self.size) < 1:
            raise ValueError(f"crop size must be positive, got {self.size}")
        self.fill = pad_fill(fill) if isinstance(fill, (str, Normalization)) else tuple(int(v) for v in fill)
        self.label_fill = label_fill
        self.rng = _make_rng(seed, generator)

    def _pad_value(self, key: str) -> Any:
        if key == "image":
            return np.array(self.fill, dtype=np.uint8)
        if is_label_key(key):
            return self.label_fill
        return 0

    def __call__(self, sample: Sample) -> Sample:
        ch, cw = self.size
        h, w = sample["image"].shape[:2]
        ph, pw = max(ch - h, 0), max(cw - w, 0)
        keys = _spatial_keys(sample)
        if ph or pw:
            for k in keys:
                a = sample[k]
                out = np.empty((h + ph, w + pw) + a.shape[2:], dtype=a.dtype)
                out[...] = self._pad_value(k)
                out[:h, :w] = a
                sample[k] = out
            h, w = h + ph, w + pw
        rng = _rng(sample, self.rng)
        top = int(rng.integers(0, h - ch + 1))
        left = int(rng.integers(0, w - cw + 1))
        for k in keys:
            sample[k] = np.ascontiguousarray(sample[k][top:top + ch, left:left + cw])
        return sample

    def __repr__(self) -> str:
        return f"RandomCrop({self.size}, fill={self.fill})"


class RandomHorizontalFlip:
    """Mirror left-right with probability ``p``."""

    def __init__(self, p: float = 0.5, seed: int | None = None,
                 generator: np.random.Generator | None = None) -> None:
        self.p = float(p)
        self.rng = _make_rng(seed, generator)

    def __call__(self, sample: Sample) -> Sample:
        if _rng(sample, self.rng).random() < self.p:
            for k in _spatial_keys(sample):
                sample[k] = np.ascontiguousarray(sample[k][:, ::-1])
        return sample

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip({self.p})"


class ColorJitter:
    """Random brightness, contrast and saturation (image only), each factor in ``[1-x, 1+x]``."""

    def __init__(self, brightness: float = 0.2, contrast: float = 0.2, saturation: float = 0.2,
                 seed: int | None = None, generator: np.random.Generator | None = None) -> None:
        self.brightness, self.contrast, self.saturation = float(brightness), float(contrast), float(saturation)
        self.rng = _make_rng(seed, generator)

    def __call__(self, sample: Sample) -> Sample:
        rng = _rng(sample, self.rng)
        b, c, s = (float(rng.uniform(max(0.0, 1 - x), 1 + x)) for x in
                   (self.brightness, self.contrast, self.saturation))
        img = sample["image"].astype(np.float32)
        img *= b
        grey = img @ np.array([0.299, 0.587, 0.114], np.float32)
        img = (img - grey.mean()) * c + grey.mean()
        grey = (img @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
        img = (img - grey) * s + grey
        sample["image"] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
        return sample

    def __repr__(self) -> str:
        return f"ColorJitter({self.brightness}, {self.contrast}, {self.saturation})"


_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], np.float64)
_YIQ_INV = np.linalg.inv(_YIQ)


class Photometric:
    """Appearance shift: brightness, contrast, saturation, hue, gamma and blur (image only).

    Why: a drive the model never saw differs from the training drives mostly in
    light, camera response and sharpness, not in geometry; these are the knobs that
    change those and leave every label where it is. Each factor is drawn per sample
    (from ``sample["rng"]``, so it is a pure function of (seed, epoch, index)):
    brightness, contrast and saturation multiply by ``U(1-x, 1+x)``; ``hue`` rotates
    the chroma plane (YIQ) by ``U(-hue, hue)`` of a full turn; ``gamma`` maps
    ``v -> 255 (v/255)^g`` with ``g`` log-uniform in ``[1/(1+gamma), 1+gamma]``; with
    probability ``blur_p`` a Gaussian blur of sigma ``U(*blur_sigma)`` pixels follows.
    A value of 0 turns that knob off. All random numbers are drawn every time, in a
    fixed order, so turning one knob on does not change the draws of the others.
    """

    def __init__(self, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0, hue: float = 0.0,
                 gamma: float = 0.0, blur_p: float = 0.0, blur_sigma: Sequence[float] = (0.5, 1.5),
                 seed: int | None = None, generator: np.random.Generator | None = None) -> None:
        for name, v, hi in (("brightness", brightness, 1.0), ("contrast", contrast, 1.0),
                            ("saturation", saturation, 1.0), ("hue", hue, 0.5), ("blur_p", blur_p, 1.0)):
            if not 0.0 <= float(v) <= hi:
                raise ValueError(f"photometric {name} must be in [0, {hi}], got {v}")
        if float(gamma) < 0:
            raise ValueError(f"photometric gamma must be >= 0, got {gamma}")
        if len(blur_sigma) != 2 or not 0 < float(blur_sigma[0]) <= float(blur_sigma[1]):
            raise ValueError(f"photometric blur_sigma must be [min, max] with 0 < min <= max, got {list(blur_sigma)}")
        self.brightness, self.contrast, self.saturation = float(brightness), float(contrast), float(saturation)
        self.hue, self.gamma, self.blur_p = float(hue), float(gamma), float(blur_p)
        self.blur_sigma = (float(blur_sigma[0]), float(blur_sigma[1]))
        self.rng = _make_rng(seed, generator)

    def draw(self, rng: np.random.Generator) -> dict[str, float]:
        """The factors for one sample (always six uniforms and one coin, in this order)."""
        u = rng.uniform(-1.0, 1.0, size=5)
        blur = rng.random() < self.blur_p
        sigma = float(rng.uniform(*self.blur_sigma))
        return {"brightness": 1 + self.brightness * u[0], "contrast": 1 + self.contrast * u[1],
                "saturation": 1 + self.saturation * u[2], "hue": self.hue * u[3],
                "gamma": float(np.exp(np.log1p(self.gamma) * u[4])), "sigma": sigma if blur else 0.0}

    @staticmethod
    def apply(image: np.ndarray, f: dict[str, float]) -> np.ndarray:
        """``image`` (RGB uint8) with the factors ``f`` of :meth:`draw`."""
        img = image.astype(np.float32)
        img *= f["brightness"]
        luma = np.array([0.299, 0.587, 0.114], np.float32)
        mean = float((img @ luma).mean())
        img = (img - mean) * f["contrast"] + mean
        if f["saturation"] != 1.0 or f["hue"] != 0.0:
            theta = 2 * np.pi * f["hue"]
            rot = np.array([[1, 0, 0], [0, np.cos(theta), -np.sin(theta)], [0, np.sin(theta), np.cos(theta)]])
            chroma = np.diag([1.0, f["saturation"], f["saturation"]])
            img = img @ (_YIQ_INV @ rot @ chroma @ _YIQ).T.astype(np.float32)
        img = np.clip(img, 0, 255)
        if f["gamma"] != 1.0:
            img = 255.0 * (img / 255.0) ** f["gamma"]
        if f["sigma"] > 0:
            img = _gaussian_blur(img, f["sigma"])
        return np.clip(np.rint(img), 0, 255).astype(np.uint8)

    def __call__(self, sample: Sample) -> Sample:
        sample["image"] = self.apply(sample["image"], self.draw(_rng(sample, self.rng)))
        return sample

    def __repr__(self) -> str:
        return (f"Photometric(brightness={self.brightness}, contrast={self.contrast}, saturation={self.saturation}, "
                f"hue={self.hue}, gamma={self.gamma}, blur_p={self.blur_p}, blur_sigma={list(self.blur_sigma)})")


def _gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of an ``H x W x C`` float image, edges replicated."""
    r = max(1, int(np.ceil(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k = torch.from_numpy((k / k.sum()).astype(np.float32))
    c = img.shape[2]
    t = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)).permute(2, 0, 1)[None]
    t = F.conv2d(F.pad(t, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    t = F.conv2d(F.pad(t, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
    return t[0].permute(1, 2, 0).numpy()


class Normalize:
    """Arrays -> tensors: image normalised by ``preset`` (float ``3 x H x W``), labels int64 ``H x W``.

    ``hha`` becomes float ``3 x H x W`` minus ``hha_mean`` (the reference NYUD nets subtract
    :data:`fcnseg.data.nyud.MEAN_HHA` = (132.431, 94.076, 118.477); default: nothing) and
    ``depth`` float ``1 x H x W``: metres as read, or, with ``depth_log_mean`` (reference:
    :data:`~fcnseg.data.nyud.MEAN_LOGD` = 7.844), ``log(depth in mm) - depth_log_mean`` as the
    reference RGB-D net, with missing depth (0) set to 0.
    """

    def __init__(self, preset: str | Normalization = "imagenet", hha_mean: Sequence[float] | None = None,
                 depth_log_mean: float | None = None) -> None:
        self.preset = get_normalization(preset)
        self.hha_mean = None if hha_mean is None else tuple(float(m) for m in hha_mean)
        self.depth_log_mean = depth_log_mean

    def __call__(self, sample: Sample) -> Sample:
        sample.pop("rng", None)
        for k in list(sample):
            v = sample[k]
            if not isinstance(v, np.ndarray):
                continue
            if k == "image":
                sample[k] = normalize(v, self.preset)
            elif is_label_key(k):
                sample[k] = torch.from_numpy(np.ascontiguousarray(v).astype(np.int64))
            elif k == "hha":
                sample[k] = normalize_hha(v, self.hha_mean)
            elif k == "depth":
                sample[k] = normalize_depth(v, self.depth_log_mean)
        return sample

    def __repr__(self) -> str:
        return f"Normalize({self.preset.name!r}, hha_mean={self.hha_mean}, depth_log_mean={self.depth_log_mean})"


def train_transforms(preset: str | Normalization = "imagenet", crop_size: int | tuple[int, int] | None = None,
                     scale_range: tuple[float, float] | None = (0.5, 2.0), flip: bool = True,
                     jitter: bool = False, seed: int | None = None,
                     photometric: dict[str, Any] | None = None, *, hha_mean: Sequence[float] | None = None,
                     depth_log_mean: float | None = None) -> Compose:
    """The usual training pipeline: scale, crop (padded), flip, optional jitter, normalise.

    ``photometric``: keyword options of :class:`Photometric` (appearance augmentation;
    applied after ``jitter`` if both are given).

    ``crop_size`` is needed for batches larger than one (equal sizes); ``None`` keeps the
    whole (scaled) image, as the reference recipe did with batch 1. ``seed`` seeds the
    fallback generator (used only when samples carry no ``rng``). ``hha_mean`` and
    ``depth_log_mean`` go to :class:`Normalize` (a model card's inputs say which).
    """
    rng = np.random.default_rng(seed) if seed is not None else None
    ts: list[Callable[[Sample], Sample]] = []
    if scale_range is not None:
        ts.append(RandomScale(*scale_range, generator=rng))
    if crop_size is not None:
        ts.append(RandomCrop(crop_size, fill=preset, generator=rng))
    if flip:
        ts.append(RandomHorizontalFlip(0.5, generator=rng))
    if jitter:
        ts.append(ColorJitter(generator=rng))
    if photometric:
        ts.append(Photometric(**photometric, generator=rng))
    ts.append(Normalize(preset, hha_mean=hha_mean, depth_log_mean=depth_log_mean))
    return Compose(ts)


def eval_transforms(preset: str | Normalization = "imagenet", *, hha_mean: Sequence[float] | None = None,
                    depth_log_mean: float | None = None) -> Compose:
    """Evaluation: the whole image, only normalised (FCNs take any size)."""
    return Compose([Normalize(preset, hha_mean=hha_mean, depth_log_mean=depth_log_mean)])
