"""``fcnseg predict``: segment image files, folders or globs into label PNGs (+ overlays, probabilities).

Exit codes: 0 every image done; 1 some images failed (each named on stderr, the
others written); 2 a user error before anything was processed (bad model, no
images, unwritable output folder, bad option).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path, PurePath
from typing import Any

from ..errors import UserError

DEFAULT_MODEL = "camvid-fcn8s-lite0"


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "predict", help="segment images (files, folders, globs) into label maps",
        description="Segment images with a trained model. For each input image writes OUT/<name>.png, a "
                    "palette PNG whose pixel values are the class indices (folder inputs keep their "
                    "sub-folder structure), optionally OUT/<name>_overlay.png (colours blended on the image) "
                    "and OUT/<name>_probs.npy (C x H x W float32 class probabilities). Two-head models (SIFT Flow "
                    "sem + geo) also write OUT/<name>_<head>.png for each head besides the main one; "
                    "multi-input models (RGB-D, RGB + HHA) cannot run on image files alone and are refused. "
                    "Any image size works: "
                    "images above ~4 megapixels are tiled with enough overlap that the result equals "
                    "whole-image inference. Exit status: 0 all done, 1 some images failed (named on stderr), "
                    "2 nothing done (user error).")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files, folders (searched recursively) or quoted globs such as 'shots/**/*.jpg'")
    p.add_argument("--model", "-m", default=DEFAULT_MODEL,
                   help=f"shipped model name, architecture name (untrained), or a .safetensors / .pt / .onnx "
                        f"file (default: {DEFAULT_MODEL})")
    p.add_argument("--out", "-o", type=Path, required=True, help="output folder (created if missing)")
    p.add_argument("--overlay", action="store_true", help="also write <name>_overlay.png")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the class colours (default 0.5)")
    p.add_argument("--probs", action="store_true",
                   help="also write <name>_probs.npy, class probabilities C x H x W float32 (large!)")
    p.add_argument("--batch-size", type=int, default=4,
                   help="images per forward pass; only images of equal size are batched (default 4)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto, CUDA when present)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16", "int8"), default=None,
                   help="auto (default, or $FCNSEG_PRECISION): the fastest precision this machine runs well "
                        "whose labels agree with fp32 on >= 99.5%% of the shipped sample pixels (measured once, "
                        "printed); fp32: exact; bf16; fp16 (CUDA); int8 (CPU, calibrated on the shipped CamVid "
                        "samples)")
    p.add_argument("--tile", default="auto",
                   help="tile core size in pixels for tiled inference, 0 = never tile, 'auto' (default) = "
                        "tile images above ~4 megapixels with 1024-pixel cores")
    p.add_argument("--overlap", type=int, default=None,
                   help="overlap of neighbouring tile windows in pixels (default: enough for the model's "
                        "receptive field, which makes tiling exact; smaller is faster but may differ at seams)")
    p.add_argument("--tta", default=None,
                   help="test-time augmentation averaging probabilities, e.g. flip or flip,scales=0.75,1,1.25")
    p.add_argument("--backend", choices=("torch", "onnxruntime"), default=None,
                   help="execution backend (default: onnxruntime for .onnx models, else torch)")
    p.add_argument("--num-classes", type=int, default=None,
                   help="expected class count (checked against the weights; sets it for untrained architectures)")
    p.add_argument("--eager", action="store_true",
                   help="torch backend: run the plain eager module instead of the optimised copy (BatchNorm "
                        "folded, depthwise upsampling, channels-last; same logits within float rounding)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar or summary")
    p.add_argument("--max-pixels", type=int, default=None, metavar="N",
                   help="pixel limit for input images (default Pillow's 89478485): above it a note, above "
                        "twice it the image is refused as a possible decompression bomb")
    return p


def _check_out_dir(out: Path) -> Path:
    """Create ``out`` and prove it is writable, so a bad folder fails before any work."""
    out = out.expanduser()
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: output path exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".fcnseg-write-test-", dir=out)
        os.close(fd)
        os.unlink(probe)
    except PermissionError:
        raise UserError(f"{out}: output folder is not writable (permission denied)") from None
    except OSError as exc:
        raise UserError(f"{out}: cannot write to output folder ({exc.strerror or exc})") from None
    return out


def _parse_tile(value: str) -> int | str:
    if str(value).lower() == "auto":
        return "auto"
    try:
        t = int(value)
    except ValueError:
        raise UserError(f"--tile {value!r}: expected a size in pixels, 0 (off) or 'auto'") from None
    if t < 0:
        raise UserError(f"--tile must be >= 0, got {t}")
    return t


def _within(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def _save_probs(path: Path, probs) -> None:
    import numpy as np

    from ..imageio import atomic_write

    atomic_write(path, lambda fh: np.save(fh, np.asarray(probs, dtype=np.float32)))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, UserError):
        return str(exc)
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = f"{exc.__class__.__name__}: {msg}" if msg else exc.__class__.__name__
    if isinstance(exc, MemoryError) or "out of memory" in msg.lower():
        text += " (try a smaller --tile, e.g. --tile 512, or --batch-size 1)"
    return text


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

    def write(self, stem: PurePath, image, labels, probs, extra: dict[str, Any] | None = None) -> None:
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


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from ..imageio import collect_image_jobs, read_image
    from ..inference import load_model, parse_tta

    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    if not 0.0 <= args.alpha <= 1.0:
        raise UserError(f"--alpha must be in 0..1, got {args.alpha}")
    if args.overlap is not None and args.overlap < 0:
        raise UserError(f"--overlap must be >= 0, got {args.overlap}")
    tile = _parse_tile(args.tile)
    tta = parse_tta(args.tta)
    if args.max_pixels is not None:
        from ..imageio import set_max_pixels

        set_max_pixels(args.max_pixels)
    jobs = collect_image_jobs(args.inputs)
    existed = args.out.expanduser().exists()
    out = _check_out_dir(args.out)
    explicit = {str(Path(s).expanduser()) for s in args.inputs}
    jobs = [(p, s) for p, s in jobs if str(p) in explicit or not _within(p, out)]  # never re-read our outputs
    if not jobs:
        raise UserError(f"no input images outside the output folder {out}")
    from ..inference.shard import shard_from_env

    shard = shard_from_env()  # under torchrun: this rank's files, on this rank's device
    jobs = shard.take(jobs) if shard.active else jobs
    device = shard.device(args.device)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model = load_model(args.model, device=device, num_classes=args.num_classes,
                               backend=args.backend, tile=tile, overlap=args.overlap, tta=tta,
                               optimize=not args.eager, precision=args.precision)
            model.check_rgb_input()  # a multi-input net cannot run on image files: say so before any work
        except UserError:
            if not existed:  # leave no empty output folder behind
                try:
                    out.rmdir()
                except OSError:
                    pass
            raise
    for w in caught:
        print(f"fcnseg predict: warning: {w.message}", file=sys.stderr)

    writer = _Writer(model, out, args.overlay, args.alpha, args.probs)
    failed: list[str] = []
    done = 0
    bar = tqdm(total=len(jobs), unit="img", desc="predict", file=sys.stderr,
               disable=True if args.quiet or shard.rank else None, dynamic_ncols=True)

    def fail(path: Path, exc: BaseException) -> None:
        failed.append(str(path))
        bar.write(f"fcnseg predict: {path}: {_describe(exc)}" if not isinstance(exc, UserError)
                  else f"fcnseg predict: {_describe(exc)}", file=sys.stderr)

    def finish(path: Path, fut: Future) -> int:
        """Wait for one image's writes: 1 if written, 0 if it failed (reported)."""
        try:
            fut.result()
            return 1
        except Exception as exc:  # noqa: BLE001
            fail(path, OSError(f"cannot write output: {_describe(exc)}"))
            return 0
        finally:
            bar.update(1)

    def read(path: Path):
        try:
            return read_image(path), None
        except UserError as exc:
            return None, exc

    chunks = [jobs[i:i + args.batch_size] for i in range(0, len(jobs), args.batch_size)]
    pending: list[tuple[Path, Future]] = []
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="fcnseg-read") as readers, \
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
            # one tiling per image, planned once: with tile "auto" it follows the memory available
            # now, so the tile bar's total and the prediction must use the same plan
            grids = [model.tile_grid(*im.shape[:2]) for _, _, im in images]
            small = [(p, s, im) for (p, s, im), g in zip(images, grids) if g is None]
            large = [(p, s, im, g) for (p, s, im), g in zip(images, grids) if g is not None]
            results: list[tuple[Path, PurePath, Any, Any, Any, dict]] = []
            if small and model.heads:  # two-head nets: every head from one forward pass per image
                for p, s, im in small:
                    try:
                        r = model.predict_heads(im, return_probs=args.probs)
                        main = r.pop(model.main_head)
                        lab, pr = main if args.probs else (main, None)
                        results.append((p, s, im, lab, pr, {h: v[0] if args.probs else v for h, v in r.items()}))
                    except Exception as exc:  # noqa: BLE001 - reported per file, the run goes on
                        fail(p, exc)
                        bar.update(1)
            elif small:
                try:
                    preds = model.predict_batch([im for _, _, im in small], batch_size=args.batch_size,
                                                return_probs=args.probs)
                    for (p, s, im), r in zip(small, preds):
                        lab, pr = r if args.probs else (r, None)
                        results.append((p, s, im, lab, pr, {}))
                except Exception:  # a batch failed: retry one by one to name the culprit
                    for p, s, im in small:
                        try:
                            r = model.predict(im, return_probs=args.probs)
                            lab, pr = r if args.probs else (r, None)
                            results.append((p, s, im, lab, pr, {}))
                        except Exception as exc:  # noqa: BLE001 - reported per file, the run goes on
                            fail(p, exc)
                            bar.update(1)
            for p, s, im, grid in large:  # tiled: probabilities go to the .npy band by band
                tmp = None
                try:
                    probs = None
                    if args.probs:
                        from ..inference.npywriter import NpyBandWriter

                        target = writer.paths(s)["probs"]
                        target.parent.mkdir(parents=True, exist_ok=True)
                        tmp = target.with_name(f".{target.name}.tmp")
                        probs = NpyBandWriter(tmp, (model.num_classes, *im.shape[:2]))
                    tiles = tqdm(total=len(grid), unit="tile", desc=f"  {p.name}",
                                 file=sys.stderr, disable=bar.disable, leave=False, dynamic_ncols=True)
                    try:
                        lab = model.predict(im, probs_out=probs, progress=tiles.update, tile=grid.tile)
                    finally:
                        tiles.close()
                    extra = {h: model.head(h).predict(im, tile=grid.tile)
                             for h in model.heads if h != model.main_head}
                    if probs is not None:
                        probs.close()
                        os.replace(tmp, target)
                    results.append((p, s, im, lab, None, extra))
                except Exception as exc:  # noqa: BLE001
                    if tmp is not None:
                        Path(tmp).unlink(missing_ok=True)
                    fail(p, exc)
                    bar.update(1)
            for p, s, im, lab, pr, extra in results:
                pending.append((p, writers.submit(writer.write, s, im, lab, pr, extra)))
            still = []
            for p, fut in pending:
                if fut.done() or len(pending) > 4 * args.batch_size:
                    done += finish(p, fut)
                else:
                    still.append((p, fut))
            pending = still
        for p, fut in pending:
            done += finish(p, fut)
    bar.close()
    n_failed = len(failed)
    if shard.active:  # every rank's counts: one summary, the same exit status everywhere
        done, n_failed = shard.sum(done, n_failed)
        shard.close()
    if not args.quiet and shard.rank == 0:
        msg = f"fcnseg predict: wrote {done} label map(s) to {out}"
        if shard.active:
            msg += f" ({shard.world} processes)"
        if n_failed:
            msg += f"; {n_failed} image(s) failed"
        print(msg, file=sys.stderr)
    return 1 if n_failed else 0
