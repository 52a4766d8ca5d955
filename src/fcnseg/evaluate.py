"""Score a model over a whole split with the reference metrics (used by ``fcnseg eval`` and training).

Whole images go through the net at their own size (FCNs take any size), predictions
are the arg-max of the scores, and one confusion matrix accumulates over the split.
Images of equal size are batched; ``skip_bad`` logs unreadable or inconsistent
samples and goes on, reporting how many were skipped. Under ``torch.distributed``
each rank scores every ``world``-th image and the matrices are summed.

``per_sequence=True`` also keeps one matrix per sequence (data sets with a
``sequence_of(i)`` method: CamVid's drives, the file-name prefix), because a
split-wide score hides how a model does on a scene it never saw; see the
held-out-sequence protocol in ``docs/results.md``.
"""
from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from .card import ModelCard, model_inputs
from .errors import UserError
from .metrics import ConfusionMatrix

log = logging.getLogger(__name__)

__all__ = ["EvalResult", "evaluate", "format_table", "save_confusion_figure", "nan_to_none"]


@dataclass
class EvalResult:
    """The split's confusion matrix and scores, plus what was skipped and how long it took."""

    confusion: ConfusionMatrix
    class_names: list[str]
    num_images: int
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0
    #: extra heads (SIFT Flow's geometric labels): head name -> (matrix, class names)
    heads: dict[str, tuple[ConfusionMatrix, list[str]]] = field(default_factory=dict)
    #: with ``per_sequence=True``: sequence -> (its matrix, its scored image count), in split order
    sequences: dict[str, tuple[ConfusionMatrix, int]] = field(default_factory=dict)

    @property
    def scores(self) -> dict[str, Any]:
        return self.confusion.compute()

    def format(self, title: str = "") -> str:
        """The four metrics and the per-class table (and one per extra head, and the per-sequence
        table when sequences were scored), as ``fcnseg eval`` prints them."""
        parts = [format_table(self.scores, self.class_names, title)]
        for head, (cm, names) in self.heads.items():
            parts.append(format_table(cm.compute(), names, f"head {head!r}"))
        if self.sequences:
            parts.append(self.sequence_table())
        return "\n\n".join(parts)

    def save_confusion_figure(self, path: str | Path, title: str = "") -> None:
        """The main head's row-normalised confusion matrix as a heatmap (.png/.pdf/.svg; needs matplotlib)."""
        save_confusion_figure(self.confusion.numpy(), self.class_names, path, title=title)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the four metrics, per-class IoU/accuracy by name, counts, the matrix."""
        def one(cm: ConfusionMatrix, names: list[str]) -> dict[str, Any]:
            s = cm.compute()
            return {
                "pixel_acc": s["pixel_acc"], "mean_acc": s["mean_acc"], "mean_iou": s["mean_iou"],
                "fw_iou": s["fw_iou"],
                "per_class": [{"class": n, "iou": iou, "acc": acc} for n, iou, acc in zip(names, s["iou"], s["acc"])],
                "pixels": cm.total,
                "confusion": cm.numpy().tolist(),
            }

        out = one(self.confusion, self.class_names)
        out.update({"images": self.num_images, "skipped": len(self.skipped), "skipped_files": list(self.skipped),
                    "seconds": self.seconds})
        if self.heads:
            out["heads"] = {name: one(cm, names) for name, (cm, names) in self.heads.items()}
        if self.sequences:
            out["per_sequence"] = {seq: {"images": n, **one(cm, self.class_names)}
                                   for seq, (cm, n) in self.sequences.items()}
        return out

    def sequence_table(self) -> str:
        """One row per sequence (and the whole split): images and the four metrics, in percent."""
        def pct(v: float) -> str:
            return "    -" if v != v else f"{100 * v:5.1f}"

        width = max([len(q) for q in self.sequences] + [8])
        lines = [f"{'sequence':<{width}} {'images':>6} {'pixel acc':>9} {'mean acc':>8} {'mean IoU':>8} {'fw IoU':>6}"]
        rows = [(q, cm, n) for q, (cm, n) in self.sequences.items()] + [("all", self.confusion, self.num_images)]
        for q, cm, n in rows:
            sc = cm.compute()
            lines.append(f"{q:<{width}} {n:>6} {pct(sc['pixel_acc']):>9} {pct(sc['mean_acc']):>8} "
                         f"{pct(sc['mean_iou']):>8} {pct(sc['fw_iou']):>6}")
        return "\n".join(lines)


class _Guarded(Dataset):
    """Wraps a data set so a bad sample comes back as ``{"_error": message}`` (also from workers,
    where an exception would lose its one-line message)."""

    def __init__(self, dataset: Dataset, indices: list[int], sequence_of: Any = None) -> None:
        self.dataset, self.indices, self.sequence_of = dataset, indices, sequence_of

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> dict[str, Any]:
        tag = {} if self.sequence_of is None else {"_sequence": self.sequence_of(self.indices[k])}
        try:
            sample = self.dataset[self.indices[k]]
        except UserError as exc:
            return {"_error": str(exc), **tag}
        if sample is None:  # a skip_bad data set already logged it
            return {"_error": f"sample {self.indices[k]} skipped by the data set", **tag}
        return {**sample, **tag}


def _as_list(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return batch


def _groups(samples: list[dict[str, Any]], batch_size: int, key: str = "image") -> Iterator[list[dict[str, Any]]]:
    """Consecutive runs of samples with the same input size, at most ``batch_size`` long."""
    run: list[dict[str, Any]] = []
    for s in samples:
        if run and (len(run) == batch_size or s[key].shape[-2:] != run[0][key].shape[-2:]):
            yield run
            run = []
        run.append(s)
    if run:
        yield run


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Any, device: str | torch.device = "cpu",
             normalization: str | None = None, progress: bool = True, batch_size: int = 1,
             num_workers: int = 0, skip_bad: bool = False, flip: bool = False,
             amp: bool = False, limit: int | None = None, tta: Any = None,
             per_sequence: bool = False, card: ModelCard | None = None) -> EvalResult:
    """Run ``model`` over every sample of ``dataset`` and score it.

    Args:
        model: returns ``N x K x H x W`` scores (or a dict of heads; the ``main_head`` is
            scored against ``label`` and any other head ``h`` against ``label_h`` if present).
        dataset: an fcnseg data set. Without a transform it is preprocessed as ``card``
            says (``normalization`` overrides its image preset); with one, its transform
            must produce tensors.
        batch_size: images per forward pass (equal-size neighbours only).
        num_workers: DataLoader worker processes for reading images.
        skip_bad: log and skip unreadable/inconsistent samples instead of stopping.
        flip: also score the mirrored image and average the probabilities (``tta="flip"``).
        tta: test-time augmentation, e.g. ``"flip,scales=0.75,1,1.25"`` or a
            :class:`fcnseg.inference.TTA`: probabilities of all views averaged, exactly as
            ``Segmenter.predict(tta=...)`` and ``fcnseg predict --tta`` do.
        amp: autocast (bfloat16 on CPU, float16 on CUDA).
        limit: score only the first ``limit`` images (quick checks).
        per_sequence: also score each sequence on its own (``EvalResult.sequences``); the
            data set must say which sequence each sample is from (``sequence_of(i)``, CamVid).
        card: the model card: which sample keys feed the net and how they are preprocessed
            (default: the net's own inputs with the reference preprocessing,
            :meth:`fcnseg.card.ModelCard.for_net`).
    """
    from .data.transforms import eval_transforms
    from .inference.tta import at_input_scale, parse_tta, tta_scores

    views = parse_tta(tta, flip=flip)
    dev = torch.device(device)
    num_classes = int(dataset.num_classes)
    if getattr(model, "num_classes", num_classes) != num_classes:
        raise UserError(f"the model predicts {model.num_classes} classes but the {dataset.name} data set has "
                        f"{num_classes}; use a model trained on this data set")
    if card is None:
        card = ModelCard.for_net(model, num_classes=num_classes, normalization=normalization)
    views = at_input_scale(views, card.input_scale)  # a net trained on enlarged images runs at its scale
    if dataset.transform is None:
        dataset = copy.copy(dataset)
        dataset.transform = eval_transforms(normalization or card.normalization, **card.preprocessing())
    if getattr(dataset, "skip_bad", False):
        dataset = copy.copy(dataset)
        dataset.skip_bad = False  # errors come back to us with their message; we decide
        skip_bad = True
    n = len(dataset) if limit is None else min(limit, len(dataset))
    if n == 0:
        raise UserError(f"{getattr(dataset, 'root', '?')}: the {getattr(dataset, 'split', '?')!r} split is empty")

    import torch.distributed as dist

    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)
    indices = list(range(rank, n, world))
    sequence_of = None
    seq_cms: dict[str, ConfusionMatrix] = {}
    seq_images: dict[str, int] = {}
    if per_sequence:
        sequence_of = getattr(dataset, "sequence_of", None)
        if not callable(sequence_of):
            raise UserError(f"per-sequence scores need a data set that knows its sequences (camvid); "
                            f"the {getattr(dataset, 'name', type(dataset).__name__)} data set does not")
        for i in range(n):  # every rank makes the same matrices, in split order, for all_reduce
            q = sequence_of(i)
            seq_images[q] = seq_images.get(q, 0) + 1

    was_training = model.training
    model.eval()
    model.to(dev)
    cm = ConfusionMatrix(num_classes, ignore_index=dataset.ignore_index).to(dev)
    seq_cms = {q: ConfusionMatrix(num_classes, ignore_index=dataset.ignore_index).to(dev) for q in seq_images}
    heads: dict[str, tuple[ConfusionMatrix, list[str]]] = {}
    skipped: list[str] = []
    main_head = getattr(model, "main_head", None)
    loader = DataLoader(_Guarded(dataset, indices, sequence_of), batch_size=max(1, batch_size), shuffle=False,
                        num_workers=num_workers, collate_fn=_as_list)
    autocast_dtype = torch.float16 if dev.type == "cuda" else torch.bfloat16
    start = time.perf_counter()
    done = 0
    from tqdm import tqdm

    bar = tqdm(total=len(indices), unit="img", desc=f"eval {getattr(dataset, 'split', '')}",
               disable=not progress or rank != 0, dynamic_ncols=True)
    try:
        for batch in loader:
            good = []
            for s in batch:
                if "_error" in s:
                    if not skip_bad:
                        raise UserError(s["_error"])
                    log.warning("skipped: %s", s["_error"])
                    bar.write(f"skipped: {s['_error']}")
                    skipped.append(s["_error"])
                    if "_sequence" in s:
                        seq_images[s["_sequence"]] -= 1
                else:
                    good.append(s)
            for group in _groups(good, max(1, batch_size), card.inputs[0].key):
                x = model_inputs(card, group, dev)
                with torch.autocast(dev.type, dtype=autocast_dtype, enabled=amp):
                    out = tta_scores(model, x, views)[0]  # logits, or averaged probabilities
                outs = out if isinstance(out, Mapping) else {None: out}
                for head, logits in outs.items():
                    pred = logits.float().argmax(1)
                    is_main = head is None or head == main_head or (main_head is None and head == next(iter(outs)))
                    if is_main:
                        target = torch.stack([s["label"] for s in group]).to(dev)
                        _update(cm, pred, target, group)
                        for j, s in enumerate(group):
                            if "_sequence" in s:
                                _update(seq_cms[s["_sequence"]], pred[j:j + 1], target[j:j + 1], [s])
                    else:
                        key = f"label_{head}"
                        if key not in group[0]:
                            continue
                        if head not in heads:
                            generic = [str(i) for i in range(logits.shape[1])]
                            names = list(getattr(dataset, f"{head}_class_names", generic))
                            heads[head] = (ConfusionMatrix(logits.shape[1], dataset.ignore_index).to(dev), names)
                        _update(heads[head][0], pred, torch.stack([s[key] for s in group]).to(dev), group)
            done += len(batch)
            bar.update(len(batch))
    finally:
        bar.close()
        if was_training:
            model.train()
    cm.all_reduce()
    for h_cm, _ in heads.values():
        h_cm.all_reduce()
    for q_cm in seq_cms.values():
        q_cm.all_reduce()
    cm.to("cpu")
    for h_cm, _ in heads.values():
        h_cm.to("cpu")
    for q_cm in seq_cms.values():
        q_cm.to("cpu")
    if skipped:
        log.warning("%d of %d images skipped", len(skipped), len(indices))
    return EvalResult(cm, list(dataset.class_names), num_images=len(indices) - len(skipped), skipped=skipped,
                      seconds=time.perf_counter() - start, heads=heads,
                      sequences={q: (seq_cms[q], seq_images[q]) for q in seq_cms})


def _update(cm: ConfusionMatrix, pred: Tensor, target: Tensor, group: list[dict[str, Any]]) -> None:
    try:
        cm.update(pred, target)
    except UserError as exc:  # name the file (the data sets check labels, so only a custom transform gets here)
        raise UserError(f"{', '.join(s.get('path', '?') for s in group)}: {exc}") from None


def _pct(v: float) -> str:
    return "    -" if v is None or math.isnan(v) else f"{100 * v:5.1f}"


def format_table(scores: dict[str, Any], class_names: list[str], title: str) -> str:
    """The four metrics and a per-class IoU / accuracy table, in percent ('-': class absent)."""
    width = max([len(n) for n in class_names] + [5])
    lines = [title, "",
             f"{'pixel acc':>10} {'mean acc':>9} {'mean IoU':>9} {'fw IoU':>7}",
             f"{_pct(scores['pixel_acc']):>10} {_pct(scores['mean_acc']):>9} {_pct(scores['mean_iou']):>9} "
             f"{_pct(scores['fw_iou']):>7}", "",
             f"{'class':<{width}}  {'IoU':>5}  {'acc':>5}"]
    for name, iou, acc in zip(class_names, scores["iou"], scores["acc"]):
        lines.append(f"{name:<{width}}  {_pct(iou)}  {_pct(acc)}")
    lines.append("(percent; '-': undefined, the class is absent from the ground truth"
                 " (IoU: and from the predictions); left out of the means)")
    return "\n".join(lines)


def nan_to_none(obj: Any) -> Any:
    """NaN (undefined metrics) as None, so that JSON files stay standard JSON."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [nan_to_none(v) for v in obj]
    return obj


def save_confusion_figure(mat: Any, class_names: list[str], path: str | Path, title: str = "") -> None:
    """Row-normalised confusion matrix (each ground-truth row sums to 1) as a heatmap (needs matplotlib)."""
    path = Path(path)
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    m = np.asarray(mat, dtype=np.float64)
    rows = m.sum(axis=1, keepdims=True)
    norm = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    k = len(class_names)
    size = max(4.0, 0.45 * k + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), class_names, rotation=90, fontsize=8)
    ax.set_yticks(range(k), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    if k <= 25:
        for i in range(k):
            for j in range(k):
                if norm[i, j] >= 0.01:
                    ax.text(j, i, f"{100 * norm[i, j]:.0f}", ha="center", va="center", fontsize=6,
                            color="white" if norm[i, j] > 0.5 else "black")
    if title:
        ax.set_title(title, fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the ground-truth row")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    from .viz import save_figure

    save_figure(fig, path, dpi=150)
