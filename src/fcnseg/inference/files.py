"""Segment image files into label PNGs (+ overlays, probabilities): the pipeline behind
``fcnseg predict``, callable from Python as :meth:`fcnseg.inference.Segmenter.predict_files`.

Inputs are files, folders (searched recursively; outputs keep the sub-folder structure)
or globs, expanded by :func:`fcnseg.imageio.collect_image_jobs`. Reading, inference and
writing overlap (two reader and two writer threads); images of equal size are batched;
images big enough to be tiled go one by one, their probabilities written band by band.
A bad image is reported (``on_error``) and skipped; the others are still written.

Under ``torchrun`` (a :class:`~fcnseg.inference.shard.Shard` with several processes) each
process takes every N-th sorted input file (:func:`plan_jobs`), runs on its own device
(:meth:`Shard.device <fcnseg.inference.shard.Shard.device>`, for loading the model) and
writes into the one output tree; :func:`run_jobs` then adds up every process's counts, so
each process sees the totals (and returns the same exit status from ``fcnseg predict``).
"""
from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any, Callable, Iterable, Sequence

from ..errors import UserError
from ..outpaths import check_output_dir, os_error_line
from .shard import Shard

log = logging.getLogger(__name__)

__all__ = ["FilesResult", "plan_jobs", "run_jobs", "check_out_dir"]

Job = tuple[Path, PurePath]


@dataclass
class FilesResult:
    """What :func:`run_jobs` wrote: the label maps, and each failed image with its one-line reason.

    ``written`` and ``failed`` are this process's; ``total_written`` / ``total_failed`` count
    every process of a sharded (``torchrun``) run, ``processes`` of them (1 otherwise).
    """

    out: Path
    written: list[Path] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    total_written: int = 0
    total_failed: int = 0
    processes: int = 1
    seconds: float = 0.0  # wall time of this process's run_jobs (reading, segmenting, writing)

    @property
    def images_per_second(self) -> float:
        """Label maps written per second of wall time, all processes together."""
        return self.total_written / self.seconds if self.seconds > 0 else 0.0


def check_out_dir(out: str | Path, option: str = "--out") -> Path:
    """Create ``out`` and prove it is writable, so a bad folder fails before any work.

    The same checks and wording as every other output folder (:func:`fcnseg.outpaths.check_output_dir`),
    then a real write test: creating the folder and a probe file inside it."""
    out = check_output_dir(out, option)
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".fcnseg-write-test-", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise os_error_line(exc, out, option) from None
    return out


def _within(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def plan_jobs(inputs: Iterable[str | Path], out: str | Path, shard: Shard | None = None) -> tuple[list[Job], Path]:
    """Expand ``inputs`` into ``(image, output stem)`` jobs and create the output folder.

    Images found inside ``out`` (earlier outputs) are left out unless named explicitly.
    With an active ``shard`` (``torchrun``), only this process's share: every N-th job by
    sorted path (possibly none; the check for no images at all is made before the split).
    """
    from ..imageio import collect_image_jobs

    inputs = list(inputs)
    jobs = collect_image_jobs(inputs)
    folder = check_out_dir(out)
    explicit = {str(Path(s).expanduser()) for s in inputs}
    jobs = [(p, s) for p, s in jobs if str(p) in explicit or not _within(p, folder)]  # never re-read our outputs
    if not jobs:
        raise UserError(f"no input images outside the output folder {folder}")
    if shard is not None and shard.active:
        jobs = shard.take(jobs)
    return jobs, folder


def describe(exc: BaseException) -> str:
    """One line for a failed image."""
    if isinstance(exc, UserError):
        return str(exc)
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = f"{exc.__class__.__name__}: {msg}" if msg else exc.__class__.__name__
    if isinstance(exc, MemoryError) or "out of memory" in msg.lower():
        text += " (try a smaller tile size, e.g. 512, or a batch size of 1)"
    return text


def _save_probs(path: Path, probs) -> None:
    import numpy as np

    from ..imageio import atomic_write

    atomic_write(path, lambda fh: np.save(fh, np.asarray(probs, dtype=np.float32)))


class _Writer:
    """Writes one image's outputs; runs in a worker thread so encoding overlaps inference."""

    def __init__(self, model, out: Path, overlay: bool, alpha: float, probs: bool) -> None:
        self.model, self.out, self.overlay, self.alpha, self.probs = model, out, overlay, alpha, probs

    def paths(self, stem: PurePath) -> dict[str, Path]:
        base = self.out / stem
        return {"label": base.with_name(base.name + ".png"),
                "overlay": base.with_name(base.name + "_overlay.png"),
                "probs": base.with_name(base.name + "_probs.npy"),
                **{f"head:{h}": base.with_name(f"{base.name}_{h}.png") for h in self.model.heads
                   if h != self.model.main_head}}

    def write(self, stem: PurePath, image, labels, probs, extra: dict[str, Any] | None = None) -> Path:
        """Main label map (+ overlay, probabilities); ``extra``: other heads' label maps."""
        from ..imageio import write_label_png, write_rgb_png
        from ..viz import overlay

        paths = self.paths(stem)
        paths["label"].parent.mkdir(parents=True, exist_ok=True)
        write_label_png(paths["label"], labels, self.model.palette)
        for head, lab in (extra or {}).items():
            write_label_png(paths[f"head:{head}"], lab, self.model.head(head).palette)
        if self.overlay:
            write_rgb_png(paths["overlay"], overlay(image, labels, self.model.palette, self.alpha), compress_level=3)
        if self.probs and probs is not None:
            _save_probs(paths["probs"], probs)
        return paths["label"]


def _default_on_error(path: Path, message: str) -> None:
    log.warning("%s", message)


def run_jobs(model, jobs: Sequence[Job], out: Path, *, overlay: bool = False, alpha: float = 0.5,
             probs: bool = False, batch_size: int = 4, progress: bool = False,
             on_error: Callable[[Path, str], None] | None = None, shard: Shard | None = None,
             max_pixels: int | None = None) -> FilesResult:
    """Segment every ``(image, stem)`` job with ``model`` (a :class:`Segmenter`) into ``out``.

    Writes ``out/<stem>.png`` (palette PNG of class indices), with ``overlay``
    ``<stem>_overlay.png`` (colours blended with opacity ``alpha``), with ``probs``
    ``<stem>_probs.npy`` (``C x H x W`` float32), and ``<stem>_<head>.png`` for each extra
    head of a two-head net. ``on_error(path, message)`` hears of every image that failed
    (default: a logged warning); the others are still written. With an active ``shard``
    (``jobs`` being this process's share, see :func:`plan_jobs`) the progress bar shows on
    rank 0 only, and the result's totals are added up over all processes (collective: every
    process must call this). ``max_pixels``: the pixel limit of the images read here (default
    Pillow's 89,478,485: above it a note, above twice it the image fails as a possible
    decompression bomb), for this call only. With ``progress``, an image cut into tiles shows
    a bar of its tiles under the images' bar (a huge one takes minutes).
    """
    from tqdm import tqdm

    from ..imageio import pixel_limit, read_image

    if batch_size < 1:
        raise UserError(f"batch_size must be >= 1, got {batch_size}")
    if max_pixels is not None and max_pixels < 1:
        raise UserError(f"max_pixels must be >= 1, got {max_pixels}")
    if not 0.0 <= alpha <= 1.0:
        raise UserError(f"alpha must be in 0..1, got {alpha}")
    model.check_rgb_input()  # a multi-input net cannot run on image files: say so before any work
    report = on_error or _default_on_error
    result = FilesResult(out=out)
    writer = _Writer(model, out, overlay, alpha, probs)
    sharded = shard is not None and shard.active
    show = progress and not (sharded and shard.rank)  # one bar: rank 0's
    bar = tqdm(total=len(jobs), unit="img", desc="predict", file=sys.stderr, disable=None if show else True,
               dynamic_ncols=True)

    def fail(path: Path, exc: BaseException) -> None:
        msg = f"{path}: {describe(exc)}" if not isinstance(exc, UserError) else describe(exc)
        result.failed[str(path)] = msg
        report(path, msg)

    def finish(path: Path, fut: Future) -> None:
        """Wait for one image's writes (a failure is reported)."""
        try:
            result.written.append(fut.result())
        except Exception as exc:  # noqa: BLE001
            fail(path, OSError(f"cannot write output: {describe(exc)}"))
        finally:
            bar.update(1)

    def read(path: Path):
        try:
            return read_image(path), None
        except UserError as exc:
            return None, exc

    start = time.perf_counter()
    chunks = [jobs[i:i + batch_size] for i in range(0, len(jobs), batch_size)]
    pending: list[tuple[Path, Future]] = []
    try:
        with pixel_limit(max_pixels), ThreadPoolExecutor(max_workers=2, thread_name_prefix="fcnseg-read") as readers, \
                ThreadPoolExecutor(max_workers=2, thread_name_prefix="fcnseg-write") as writers:
            next_reads = [readers.submit(read, p) for p, _ in chunks[0]] if chunks else []
            for ci, chunk in enumerate(chunks):
                reads = next_reads
                if ci + 1 < len(chunks):  # read ahead while this chunk computes
                    next_reads = [readers.submit(read, p) for p, _ in chunks[ci + 1]]
                images: list[tuple[Path, PurePath, Any]] = []
                for (path, stem), fut in zip(chunk, reads):
                    img, err = fut.result()
                    if err is not None:
                        fail(path, err)
                        bar.update(1)
                    else:
                        images.append((path, stem, img))
                for p, s, im, lab, pr, extra in _segment(model, images, writer, probs, batch_size, fail, bar):
                    pending.append((p, writers.submit(writer.write, s, im, lab, pr, extra)))
                still = []
                for p, fut in pending:
                    if fut.done() or len(pending) > 4 * batch_size:
                        finish(p, fut)
                    else:
                        still.append((p, fut))
                pending = still
            for p, fut in pending:
                finish(p, fut)
    finally:
        bar.close()
    result.seconds = time.perf_counter() - start
    result.total_written, result.total_failed = len(result.written), len(result.failed)
    if sharded:  # every process's counts: one summary, the same exit status everywhere
        result.total_written, result.total_failed = shard.sum(result.total_written, result.total_failed)
        result.processes = shard.world
        shard.close()
    return result


def _segment(model, images, writer: _Writer, want_probs: bool, batch_size: int, fail, bar) -> list[tuple]:
    """One chunk's results ``(path, stem, image, labels, probs, extra heads)``; failures reported."""
    from tqdm import tqdm

    # one tiling per image, planned once: with tile "auto" it follows the memory available now,
    # so the tile bar's total and the prediction must use the same plan
    grids = [model.tile_grid(*im.shape[:2]) for _, _, im in images]
    small = [(p, s, im) for (p, s, im), g in zip(images, grids) if g is None]
    large = [(p, s, im, g) for (p, s, im), g in zip(images, grids) if g is not None]
    results: list[tuple] = []
    if small and model.heads:  # two-head nets: every head from one forward pass per image
        for p, s, im in small:
            try:
                r = model.predict_heads(im, return_probs=want_probs)
                main = r.pop(model.main_head)
                lab, pr = main if want_probs else (main, None)
                results.append((p, s, im, lab, pr, {h: v[0] if want_probs else v for h, v in r.items()}))
            except Exception as exc:  # noqa: BLE001 - reported per file, the run goes on
                fail(p, exc)
                bar.update(1)
    elif small:
        try:
            preds = model.predict_batch([im for _, _, im in small], batch_size=batch_size, return_probs=want_probs)
            for (p, s, im), r in zip(small, preds):
                lab, pr = r if want_probs else (r, None)
                results.append((p, s, im, lab, pr, {}))
        except Exception:  # a batch failed: retry one by one to name the culprit
            for p, s, im in small:
                try:
                    r = model.predict(im, return_probs=want_probs)
                    lab, pr = r if want_probs else (r, None)
                    results.append((p, s, im, lab, pr, {}))
                except Exception as exc:  # noqa: BLE001 - reported per file, the run goes on
                    fail(p, exc)
                    bar.update(1)
    for p, s, im, grid in large:  # tiled: probabilities go to the .npy band by band
        tmp = None
        try:
            probs = None
            if want_probs:
                from .npywriter import NpyBandWriter

                target = writer.paths(s)["probs"]
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(f".{target.name}.tmp")
                probs = NpyBandWriter(tmp, (model.num_classes, *im.shape[:2]))
            tiles = tqdm(total=len(grid), unit="tile", desc=f"  {p.name}", file=sys.stderr, disable=bar.disable,
                         leave=False, dynamic_ncols=True)
            try:
                lab = model.predict(im, probs_out=probs, progress=tiles.update, tile=grid.cores)
            finally:
                tiles.close()
            extra = {h: model.head(h).predict(im, tile=grid.cores) for h in model.heads if h != model.main_head}
            if probs is not None:
                probs.close()
                os.replace(tmp, target)
            results.append((p, s, im, lab, None, extra))
        except Exception as exc:  # noqa: BLE001
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
            fail(p, exc)
            bar.update(1)
    return results
