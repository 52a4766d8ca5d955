"""The :class:`Segmenter`: images in, label maps (and probabilities) out.

A Segmenter wraps an execution backend (a PyTorch net or an ONNX session) with
what is needed to use it on real images: the normalisation it was trained with,
its class names and palette, and the tiling geometry that keeps memory bounded
on huge images without changing the result.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import UserError
from ..imageio import as_rgb_array
from ..preprocess import get_normalization, normalize
from .info import ModelInfo
from .tiling import (
    TileGrid,
    auto_tile_size,
    bytes_per_pixel,
    dependency_radius,
    memory_budget,
    model_stride,
    plan_tiles,
    predict_tiled,
    scaled_geometry,
)
from .tta import TTA, at_input_scale, parse_tta, tta_scores

__all__ = ["Segmenter", "AUTO_TILE", "AUTO_TILE_PIXELS"]

#: with ``tile="auto"`` and a model whose memory per pixel is not known (an ONNX file),
#: images of more pixels than this are tiled ...
AUTO_TILE_PIXELS = 2048 * 2048
#: ... with cores of this size (windows of ~2000 px with the Lite0 margin; see tiling.py).
#: A PyTorch model instead runs whole images that fit half the available memory, and
#: bigger ones in the largest tiles that fit (tiling.auto_tile_size).
AUTO_TILE = 1024

Image = Any  # a path, a PIL image or an H x W x 3 uint8 array
#: ``tile=``: "auto", a core side in pixels, ``(rows, cols)`` of oblong cores, or 0 / None (whole image)
TileSpec = int | str | tuple[int, int] | None


class Segmenter:
    """A loaded model that segments images. Make one with :func:`fcnseg.load_model`.

    Attributes: ``card`` (the :class:`~fcnseg.card.ModelCard`), ``name``, ``model`` (architecture),
    ``num_classes``, ``class_names``,
    ``palette`` (``K x 3`` uint8), ``normalization``, ``device``, ``backend``
    (``"torch"`` / ``"onnxruntime"``), ``trained``, ``net`` (the ``nn.Module``, torch
    backend only), ``receptive_field`` and ``tile_margin`` (pixels of context each
    tile gets) where the architecture is known.

    Multi-task nets (SIFT Flow's ``sem`` + ``geo``): ``heads`` maps each head to its
    class count and ``main_head`` names the one ``predict`` answers for (its classes
    are ``num_classes`` / ``class_names``); :meth:`head` gives a Segmenter for another
    head and :meth:`predict_heads` all heads' label maps. One-head nets: ``heads``
    is empty and ``main_head`` None.

    Multi-input nets (NYUD RGB-D, RGB + HHA): ``modalities`` maps each input to its
    channel count (None for RGB-only nets). They cannot segment an RGB image alone,
    so ``predict`` refuses with a :class:`UserError` saying what they need.
    """

    def __init__(self, runner: Callable[[Tensor], Tensor], info: ModelInfo, geometry_net: nn.Module | None = None,
                 tile: TileSpec = "auto", overlap: int | None = None, tta: Any = None) -> None:
        self._run = runner
        self.info = info
        self.card = info.card
        self.name = info.name
        self.model = info.model
        self.num_classes = info.num_classes
        self.class_names = list(info.class_names)
        self.palette = np.asarray(info.palette, dtype=np.uint8)
        self.normalization = info.normalization
        self._norm = get_normalization(info.normalization)
        self.trained = info.trained
        self.backend = getattr(runner, "name", "torch")
        self.device = getattr(runner, "device", torch.device("cpu"))
        self.net: nn.Module | None = getattr(runner, "net", None)
        self.receptive_field: int | None = (getattr(geometry_net, "receptive_field", None)
                                            if geometry_net is not None else None)
        self._radius = dependency_radius(geometry_net) if geometry_net is not None else None
        self._stride = model_stride(geometry_net) if geometry_net is not None else 32
        self.tile = self._check_tile(tile)
        self.overlap = overlap
        #: bytes a forward may use for auto tiling and batching (None: half the memory available now)
        self.memory_budget: int | None = None
        self._bpp: float | None = None
        self.tta = parse_tta(tta)
        #: the scale the net sees images at (model card): every view is run resized by it
        self.input_scale = float(getattr(self.card, "input_scale", 1.0) or 1.0)
        if self.input_scale != 1.0 and self._radius is not None:  # tiles aligned in the resized image
            self._radius, self._stride, self.receptive_field = scaled_geometry(
                self._radius, self._stride, self.receptive_field, self.input_scale)
        self.label_dtype = np.uint8 if self.num_classes <= 256 else np.int32
        arch = self.net if self.net is not None else geometry_net
        modalities = getattr(arch, "modalities", None)
        self.modalities: dict[str, int] | None = dict(modalities) if isinstance(modalities, Mapping) else None
        heads_of = self.net if self.net is not None else runner  # the torch net, or the ONNX session's outputs
        head_classes = getattr(heads_of, "head_classes", None)
        self.heads: dict[str, int] = dict(head_classes) if isinstance(head_classes, Mapping) else {}
        self.main_head: str | None = getattr(heads_of, "main_head", None) if self.heads else None
        self._head = self.main_head  # the head whose scores this Segmenter returns

    def __repr__(self) -> str:
        return (f"Segmenter(name={self.name!r}, model={self.model!r}, num_classes={self.num_classes}, "
                f"backend={self.backend!r}, device={str(self.device)!r}, trained={self.trained})")

    # ------------------------------------------------------------------ options
    @staticmethod
    def _check_tile(tile: int | str | tuple[int, int] | None) -> int | str | tuple[int, int]:
        if tile is None or tile is False:
            return 0
        if tile == "auto":
            return "auto"
        if isinstance(tile, tuple) and len(tile) == 2:  # oblong cores (rows, cols), as tile_grid plans
            sides = tuple(Segmenter._check_tile(t) for t in tile)
            if not all(isinstance(t, int) and t > 0 for t in sides):
                raise UserError(f"tile (rows, cols) must be two sizes > 0, got {tile!r}")
            return sides  # type: ignore[return-value]
        try:
            t = int(tile)
        except (TypeError, ValueError):
            raise UserError(f"tile must be a size in pixels, 0 (off) or 'auto', got {tile!r}") from None
        if t < 0:
            raise UserError(f"tile must be >= 0, got {t}")
        return t

    @property
    def tile_margin(self) -> int | None:
        """Context (pixels per side) each tile gets by default (None: unknown geometry, tile/4 is used)."""
        if self._radius is None:
            return None
        return plan_tiles(1, 1, self._stride, None, self._radius, self._stride, self.receptive_field).margin

    def tile_grid(self, height: int, width: int, tile: TileSpec = None,
                  overlap: int | None = None) -> TileGrid | None:
        """The tiling used for an ``height x width`` image (None: the whole image in one pass)."""
        t = self.tile if tile is None else self._check_tile(tile)
        if t == "auto":
            bpp = self.bytes_per_pixel
            if bpp is None or self._radius is None:
                if height * width <= AUTO_TILE_PIXELS:
                    return None
                t = AUTO_TILE
            else:
                budget = self.memory_budget if self.memory_budget is not None else memory_budget(self.device)
                cores = auto_tile_size(height, width, bpp, budget, self.tile_margin or 0, self._stride)
                if cores is None:
                    return None
                t = cores
        if not t:
            return None
        ov = self.overlap if overlap is None else overlap
        grid = plan_tiles(height, width, t if isinstance(t, tuple) else int(t), ov, self._radius, self._stride,
                          self.receptive_field)
        return None if len(grid) <= 1 or grid.trivial else grid

    @property
    def bytes_per_pixel(self) -> float | None:
        """Estimated working memory of a whole-image forward per pixel (torch backend; None for ONNX)."""
        if self._bpp is None and self.net is not None and not self.modalities:
            try:
                self._bpp = bytes_per_pixel(self.net, max(self.num_classes, *self.heads.values(), 1),
                                            folded_bn=bool(getattr(self._run, "optimize", False)))
                self._bpp *= self.input_scale ** 2  # the net runs on the resized image
            except Exception:  # an estimate for choosing tiles; never fail over it
                self._bpp = None
        return self._bpp

    def batch_fits(self, height: int, width: int, batch_size: int) -> int:
        """How many ``height x width`` images one forward may stack within the memory budget (>= 1)."""
        bpp = self.bytes_per_pixel
        if bpp is None:
            return batch_size
        budget = self.memory_budget if self.memory_budget is not None else memory_budget(self.device)
        return max(1, min(batch_size, int(budget // (height * width * bpp))))

    # ------------------------------------------------------------------ heads and inputs
    def head(self, name: str) -> "Segmenter":
        """This model answering for head ``name`` (same net, no copy of the weights).

        Its class names come from the metadata's ``head_class_names[name]`` when the
        weights carry them, else ``<name>_0, <name>_1, ...``; colours from the default palette.
        """
        from ..viz import default_palette

        if name not in self.heads:
            raise UserError(f"model {self.name} has no head {name!r} "
                            f"(heads: {', '.join(self.heads) or 'one, unnamed'})")
        if name == self._head:
            return self
        view = copy.copy(self)
        view._head = name
        view.num_classes = self.heads[name]
        if name == self.main_head:
            view.class_names, view.palette = list(self.info.class_names), np.asarray(self.info.palette, np.uint8)
        else:
            spec = self.info.card.heads.get(name)
            names = spec.class_names if spec is not None else None
            if not names or len(names) != view.num_classes:
                names = [f"{name}_{i}" for i in range(view.num_classes)]
            view.class_names = [str(c) for c in names]
            view.palette = default_palette(view.num_classes, view.class_names)
        view.label_dtype = np.uint8 if view.num_classes <= 256 else np.int32
        return view

    def check_rgb_input(self) -> None:
        """Raise :class:`UserError` if the net needs more than an RGB image (depth, HHA)."""
        if self.modalities and set(self.modalities) - {"rgb"}:
            extra = [m for m in self.modalities if m != "rgb"]
            need = " + ".join(f"{m} ({c} channel{'s' if c > 1 else ''})" for m, c in self.modalities.items())
            raise UserError(f"model {self.name} needs {need} inputs, not an RGB image alone: evaluate it on "
                            f"data with {' and '.join(extra)} (fcnseg eval --dataset nyud), or call "
                            f"segmenter.net({{{', '.join(repr(m) + ': ...' for m in self.modalities)}}}) in Python")

    def predict_heads(self, image: Image, return_probs: bool = False, *, tile: TileSpec = None,
                      overlap: int | None = None, tta: Any = None) -> dict[str, Any]:
        """Every head's result for one image, main head first: ``{head: labels}`` (or
        ``{head: (labels, probs)}``). A one-head model gives ``{"main": ...}``.

        Whole-image inference without TTA runs the net once for all heads; tiled or TTA
        inference runs once per head.
        """
        img = as_rgb_array(image)
        self.check_rgb_input()
        if not self.heads:
            return {"main": self.predict(img, return_probs, tile=tile, overlap=overlap, tta=tta)}
        order = [self.main_head] + [h for h in self.heads if h != self.main_head]
        tta_cfg = self.tta if tta is None else parse_tta(tta)
        if self.tile_grid(*img.shape[:2], tile, overlap) is not None or self._views(tta_cfg).active:
            return {h: self.head(h).predict(img, return_probs, tile=tile, overlap=overlap, tta=tta_cfg)
                    for h in order}
        out = self._run(self._batch_tensor([img]))
        result: dict[str, Any] = {}
        for h in order:
            view = self.head(h)
            s = view._check_scores(out[h], img.shape[:2], 1)
            labels = view._labels(s)[0]
            result[h] = (labels, torch.softmax(s[0].float(), dim=0).cpu().numpy()) if return_probs else labels
        return result

    # ------------------------------------------------------------------ core
    def _prepare(self, image: np.ndarray) -> Tensor:
        """One picture -> the net's ``C x H x W`` input, as the model card's input spec says (the
        HHA net takes an HHA picture minus the HHA mean; other nets an RGB image by their preset)."""
        spec = self.info.card.inputs[0]
        if spec.key == "image":
            return normalize(image, self._norm, channels_last=self._channels_last)
        return spec.prepare(image)

    @property
    def _channels_last(self) -> bool:
        """Whether the net that runs takes channels-last input (the CPU and CUDA fast paths do)."""
        runner = getattr(self._run, "runner", None) if self.backend == "torch" else None
        return bool(getattr(runner, "channels_last", False))

    def _batch_tensor(self, images: Sequence[np.ndarray]) -> Tensor:
        if len(images) == 1:
            return self._prepare(images[0]).unsqueeze(0)
        first = self._prepare(images[0])
        layout = torch.channels_last if self._channels_last else torch.contiguous_format
        out = torch.empty((len(images), *first.shape), dtype=torch.float32, memory_format=layout)
        out[0] = first
        for i, im in enumerate(images[1:], 1):
            out[i] = self._prepare(im)
        return out

    def _logits(self, x: Tensor) -> Tensor:
        out = self._run(x)
        if isinstance(out, Mapping):  # a multi-task net: this Segmenter's head
            out = out[self._head]
        return self._check_scores(out, tuple(x.shape[2:]), x.shape[0])

    def _check_scores(self, out: Tensor, size: tuple[int, ...], n: int) -> Tensor:
        if out.ndim != 4 or out.shape[0] != n or out.shape[1] != self.num_classes \
                or tuple(out.shape[2:]) != tuple(size):
            raise RuntimeError(f"model {self.name} returned scores of shape {tuple(out.shape)} for input "
                               f"{n} x {tuple(size)}; expected N x {self.num_classes} x H x W")
        return out

    def scores(self, x: Tensor, tta: TTA | None = None) -> tuple[Tensor, bool]:
        """Scores of a normalised batch: ``(N x C x H x W, is_probability)``.

        One view (no TTA, at any input scale) gives logits (no softmax is spent when only
        labels are wanted); several, averaged probabilities. ``tta`` is run as given (the views,
        input scale included); None: this Segmenter's default TTA at the net's input scale.
        """
        return tta_scores(self._logits, x, self._views(self.tta) if tta is None else tta)

    def _views(self, tta: TTA) -> TTA:
        """The views run for test-time augmentation ``tta``: its scales times the net's input scale."""
        return at_input_scale(tta, self.input_scale)

    def _labels(self, scores: Tensor) -> np.ndarray:
        # max(dim=1).indices == argmax(1) (first maximum on ties), several times faster on CPU
        labels = scores.max(dim=1).indices
        return labels.to(torch.uint8 if self.label_dtype == np.uint8 else torch.int32).cpu().numpy()

    # ------------------------------------------------------------------ public API
    def predict(self, image: Image, return_probs: bool = False, *, tile: TileSpec = None,
                overlap: int | None = None, tta: Any = None,
                probs_out: np.ndarray | None = None,
                progress: Callable[[int], None] | None = None) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Segment one image.

        Args:
            image: a path, a PIL image, or an ``H x W x 3`` uint8 RGB array (greyscale,
                RGBA and 16-bit inputs are converted as in :mod:`fcnseg.imageio`).
            return_probs: also return the class probabilities, ``C x H x W`` float32.
            tile: core size for tiled inference, ``0`` for none, ``"auto"`` (tile images
                above ~4 megapixels) or None for this Segmenter's default.
            overlap: overlap of neighbouring tile windows in pixels (default: exact).
            tta: test-time augmentation, e.g. ``"flip,scales=0.75,1,1.25"`` or a :class:`TTA`.
            probs_out: a ``C x H x W`` float32 array (e.g. a ``numpy.memmap``) to write the
                probabilities into instead of allocating one (huge images).
            progress: called with 1 after each tile of a tiled prediction (a progress bar's
                ``update``), so that a huge image shows it is moving.

        Returns the ``H x W`` label map (uint8 for up to 256 classes, else int32), or
        ``(labels, probs)`` with ``return_probs``.
        """
        img = as_rgb_array(image)
        self.check_rgb_input()
        tta_cfg = self.tta if tta is None else parse_tta(tta)
        views = self._views(tta_cfg)
        want_probs = return_probs or probs_out is not None
        h, w = img.shape[:2]
        if probs_out is not None and tuple(probs_out.shape) != (self.num_classes, h, w):
            raise ValueError(f"probs_out has shape {tuple(probs_out.shape)}; expected "
                             f"{(self.num_classes, h, w)}")
        grid = self.tile_grid(h, w, tile, overlap)
        if grid is not None:
            labels = np.empty((h, w), dtype=self.label_dtype)
            probs = None
            if want_probs:
                probs = probs_out if probs_out is not None else np.empty((self.num_classes, h, w), np.float32)

            def window_scores(win: np.ndarray) -> Tensor:
                return self.scores(self._batch_tensor([win]), views)[0][0]

            to_probs = None if views.num_views > 1 else (lambda s: torch.softmax(s.float(), dim=0))
            predict_tiled(img, window_scores, grid, self.num_classes, labels, probs, to_probs=to_probs,
                          progress=progress)
            self._release_big_image_memory(h * w)
            return (labels, probs) if return_probs else labels
        s, is_prob = self.scores(self._batch_tensor([img]), views)
        labels = self._labels(s)[0]
        self._release_big_image_memory(h * w)
        if not want_probs:
            return labels
        p = s[0] if is_prob else torch.softmax(s[0].float(), dim=0)
        if probs_out is not None:
            probs_out[...] = p.cpu().numpy()
            probs = probs_out
        else:
            probs = p.float().cpu().numpy()
        return (labels, probs) if return_probs else labels

    __call__ = predict

    def _release_big_image_memory(self, pixels: int) -> None:
        """After a big image on the CPU, return the excess of the memory kept for reuse (runtime.allocator)."""
        if pixels >= 4_000_000 and self.device.type == "cpu":
            from ..runtime.allocator import release_excess

            release_excess()

    def predict_batch(self, images: Sequence[Image], batch_size: int = 4, return_probs: bool = False, *,
                      tile: TileSpec = None, overlap: int | None = None,
                      tta: Any = None) -> list[np.ndarray] | list[tuple[np.ndarray, np.ndarray]]:
        """Segment many images of any sizes; results in input order.

        Images of the same size are stacked into batches of up to ``batch_size``
        (no padding, so each result equals the one-by-one result); images big enough
        to be tiled go one by one.
        """
        if batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {batch_size}")
        self.check_rgb_input()
        tta_cfg = self.tta if tta is None else parse_tta(tta)
        arrays = [as_rgb_array(im, name=str(im) if isinstance(im, str) else f"image {i}")
                  for i, im in enumerate(images)]
        results: list[Any] = [None] * len(arrays)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, a in enumerate(arrays):
            if self.tile_grid(a.shape[0], a.shape[1], tile, overlap) is not None:
                results[i] = self.predict(a, return_probs, tile=tile, overlap=overlap, tta=tta_cfg)
            else:
                groups.setdefault(a.shape[:2], []).append(i)
        for (gh, gw), idx in groups.items():
            step = self.batch_fits(gh, gw, batch_size)  # big images: fewer per forward
            for start in range(0, len(idx), step):
                chunk = idx[start:start + step]
                s, is_prob = self.scores(self._batch_tensor([arrays[i] for i in chunk]), self._views(tta_cfg))
                labels = self._labels(s)
                if return_probs:
                    probs = (s if is_prob else torch.softmax(s.float(), dim=1)).float().cpu().numpy()
                for k, i in enumerate(chunk):
                    results[i] = (labels[k], probs[k]) if return_probs else labels[k]
                del s
        return results

    def predict_files(self, inputs: Sequence[str | Path] | str | Path, out: str | Path, *, overlay: bool = False,
                      alpha: float = 0.5, probs: bool = False, batch_size: int = 4, progress: bool = False,
                      on_error: Callable[[Path, str], None] | None = None, shard: Any = "env",
                      max_pixels: int | None = None):
        """Segment image files, folders (recursively) or globs into label PNGs under ``out``.

        What ``fcnseg predict`` does, from Python: ``out/<name>.png`` per image (folder inputs
        keep their sub-folders), optionally ``<name>_overlay.png`` and ``<name>_probs.npy``,
        and ``<name>_<head>.png`` for a two-head net's other heads. An image that fails is
        reported to ``on_error(path, message)`` (default: a logged warning) and skipped.
        Returns a :class:`~fcnseg.inference.files.FilesResult` (written files, failures).

        ``shard``: under ``torchrun`` (the default ``"env"`` reads ``RANK`` / ``WORLD_SIZE`` /
        ``LOCAL_RANK``; or a :class:`~fcnseg.inference.shard.Shard`; ``None``: all inputs here)
        this process segments every N-th sorted file into the shared output tree and the
        result's ``total_*`` counts add up all processes (every process must call this). Load
        each process's model on ``shard_from_env().device(device)`` (``cuda:LOCAL_RANK``).

        ``max_pixels``: the pixel limit of the images read (default Pillow's 89,478,485; above
        twice it an image fails as a possible decompression bomb), for this call only. With
        ``progress``, a tiled image also shows a bar of its tiles.
        """
        from .files import plan_jobs, run_jobs
        from .shard import shard_from_env

        if isinstance(inputs, (str, Path)):
            inputs = [inputs]
        if batch_size < 1:  # checked before the output folder is made
            raise UserError(f"batch_size must be >= 1, got {batch_size}")
        if not 0.0 <= alpha <= 1.0:
            raise UserError(f"alpha must be in 0..1, got {alpha}")
        if max_pixels is not None and max_pixels < 1:
            raise UserError(f"max_pixels must be >= 1, got {max_pixels}")
        self.check_rgb_input()
        if isinstance(shard, str):
            if shard != "env":
                raise UserError(f"shard must be 'env', a Shard or None, got {shard!r}")
            shard = shard_from_env()
        jobs, folder = plan_jobs(inputs, out, shard=shard)
        return run_jobs(self, jobs, folder, overlay=overlay, alpha=alpha, probs=probs, batch_size=batch_size,
                        progress=progress, on_error=on_error, shard=shard, max_pixels=max_pixels)
