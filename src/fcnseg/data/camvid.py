"""CamVid, 11 classes, in the SegNet tutorial layout, plus held-out-sequence splits.

``ROOT/{train,val,test}.txt`` list ``image label`` pairs. The SegNet distribution
writes absolute paths such as ``/SegNet/CamVid/train/0001TP_006690.png``; when a
listed path does not exist under the root it is resolved by its last two path
components (``train/0001TP_006690.png``), so both forms work unchanged. Label 11
(void) becomes the ignore index 255.

CamVid frames come from five drives, and the file-name prefix is the drive
(sequence): ``0001TP``, ``0006R0``, ``0016E5``, ``Seq05VD`` (and ``0005VD``, not in
the SegNet split). The SegNet val split is all ``0016E5``, of which train holds 204
more frames, and test's ``Seq05VD`` is in neither; so val rewards fitting one drive.
To judge a recipe on a drive the model never saw, split names can be derived from
the lists without new files (a list file ``ROOT/NAME.txt`` always wins over a
derived name):

* ``trainval``: ``train`` then ``val`` (468 frames in the SegNet split);
* ``BASE-minus-SEQ[+SEQ...]``: the frames of split ``BASE`` not from those sequences,
  e.g. ``train-minus-0006R0`` (the training side of the 0006R0 fold);
* ``BASE-only-SEQ[+SEQ...]``: the frames of ``BASE`` from those sequences only,
  e.g. ``train-only-0006R0`` (its held-out side), ``trainval-only-0016E5``.
* ``SEQ.lastN`` / ``SEQ.firstN`` in place of a sequence: only its last / first ``N`` frames
  of ``BASE`` (by file name, i.e. by time), e.g. ``train-minus-0001TP.last31`` and
  ``train-only-0001TP.last31``: a drive whose earlier part is trained on, scored on its next
  segment (how CamVid test's ``0001TP`` frames relate to train's).

An unknown sequence or an empty result is a one-line error naming the sequences
that ``BASE`` has. :func:`heldout_splits` gives the (train, val) names of a fold.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..imageio import read_label_png
from .base import IGNORE_INDEX, SegmentationDataset, Transform, check_root, read_image, read_list

CLASS_NAMES = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
               "Pedestrian", "Bicyclist"]
PALETTE = np.array([
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
    (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
], dtype=np.uint8)
VOID = 11
#: SegNet's median-frequency class weights over the 367 training images (from the data README)
MEDIAN_FREQUENCY_WEIGHTS = [0.2595, 0.1826, 4.5640, 0.1417, 0.9051, 0.3826, 9.6446, 1.8418, 0.6823,
                            6.2478, 7.3614]
#: the sequences (drives) of the SegNet train split, each a held-out fold of the protocol
TRAIN_SEQUENCES = ("0001TP", "0006R0", "0016E5")
_SEQ = r"[A-Za-z0-9]+(?:\.(?:first|last)[0-9]+)?"
_DERIVED = re.compile(rf"^(?P<base>[A-Za-z0-9_]+)-(?P<op>minus|only)-(?P<seqs>{_SEQ}(?:\+{_SEQ})*)$")
_PART = re.compile(r"^(?P<seq>[A-Za-z0-9]+)(?:\.(?P<end>first|last)(?P<n>[0-9]+))?$")


def sequence_of(path: str | Path) -> str:
    """The CamVid sequence (drive) of a frame: its file-name prefix, ``0016E5_07959.png`` -> ``0016E5``."""
    return Path(path).name.split("_", 1)[0]


def heldout_splits(sequence: str, base: str = "train") -> tuple[str, str]:
    """The (train, validation) split names of the fold that holds out ``sequence`` of ``base``."""
    return f"{base}-minus-{sequence}", f"{base}-only-{sequence}"


def resolve_listed(root: Path, listed: str) -> Path:
    """A path from a list file: as given (absolute or relative to root), else by its last two parts."""
    p = Path(listed)
    candidate = p if p.is_absolute() else root / p
    if candidate.exists():
        return candidate
    tail = root.joinpath(*p.parts[-2:]) if len(p.parts) >= 2 else root / p.name
    return tail if tail.exists() else candidate


class CamVid(SegmentationDataset):
    """CamVid (SegNet split): 367 train / 101 val / 233 test images at 360 x 480; also ``trainval``
    and the held-out-sequence splits ``BASE-minus-SEQ`` / ``BASE-only-SEQ`` (module docstring)."""

    name = "camvid"
    void_value = VOID

    def __init__(self, root: str | Path, split: str = "train", transform: Transform | None = None,
                 skip_bad: bool = False) -> None:
        root = check_root(root, "CamVid")
        super().__init__(root, split, transform, skip_bad)
        self.class_names = list(CLASS_NAMES)
        self.palette = PALETTE.copy()
        self.files.extend(self._split_files(root, split))

    @staticmethod
    def _list_files(root: Path, split: str) -> list[dict[str, Path]]:
        """The pairs of ``ROOT/split.txt``, or of train then val for ``trainval`` without such a file."""
        list_file = root / f"{split}.txt"
        if split == "trainval" and not list_file.is_file():
            return CamVid._list_files(root, "train") + CamVid._list_files(root, "val")
        if not list_file.is_file():
            have = sorted(p.stem for p in root.glob("*.txt"))
            raise UserError(f"{list_file}: CamVid split list not found (splits here: "
                            f"{', '.join(have) or 'none'}; expected ROOT/train.txt, val.txt, test.txt, "
                            "or a derived name such as trainval, train-minus-0006R0, train-only-0006R0)")
        files = []
        for n, line in enumerate(read_list(list_file), 1):
            parts = line.split()
            if len(parts) != 2:
                raise UserError(f"{list_file}:{n}: expected 'image label', got {line!r}")
            files.append({"image": resolve_listed(root, parts[0]), "label": resolve_listed(root, parts[1])})
        return files

    @staticmethod
    def _split_files(root: Path, split: str) -> list[dict[str, Path]]:
        """A listed split, or one derived from a listed split by sequence (see the module docstring)."""
        m = _DERIVED.match(split)
        if m is None or (root / f"{split}.txt").is_file():
            return CamVid._list_files(root, split)
        base, only = m["base"], m["op"] == "only"
        files = CamVid._list_files(root, base)
        have = sorted({sequence_of(f["image"]) for f in files})
        chosen: set[Path] = set()  # the images the named sequences (or their first/last frames) select
        for part in m["seqs"].split("+"):
            q = _PART.match(part)
            assert q is not None  # _DERIVED admits only such parts
            if q["seq"] not in have:
                raise UserError(f"CamVid split {split!r}: sequence {q['seq']!r} is not in the {base!r} split "
                                f"(its sequences: {', '.join(have)})")
            frames = sorted((f["image"] for f in files if sequence_of(f["image"]) == q["seq"]), key=lambda p: p.name)
            if q["end"]:
                n = int(q["n"])
                if not 1 <= n <= len(frames):
                    raise UserError(f"CamVid split {split!r}: {part!r} asks for {n} frames but {base!r} has "
                                    f"{len(frames)} of {q['seq']} (expected 1..{len(frames)})")
                frames = frames[:n] if q["end"] == "first" else frames[-n:]
            chosen.update(frames)
        picked = [f for f in files if (f["image"] in chosen) == only]
        if not picked:
            raise UserError(f"CamVid split {split!r} is empty: every frame of {base!r} is in {m['seqs']}")
        return picked

    def sequence_of(self, i: int) -> str:
        """The sequence (drive) of sample ``i``: used by ``evaluate(per_sequence=True)``."""
        return sequence_of(self.files[i]["image"])

    @property
    def sequences(self) -> dict[str, int]:
        """Frames per sequence in this split, in order of first appearance."""
        out: dict[str, int] = {}
        for i in range(len(self.files)):
            q = self.sequence_of(i)
            out[q] = out.get(q, 0) + 1
        return out

    def _read(self, i: int) -> dict:
        f = self.files[i]
        image = read_image(f["image"])
        label = read_label_png(f["label"])
        if label.dtype != np.uint8:
            label = np.clip(label, 0, 256).astype(np.int64)
        label = label.copy()
        label[label == VOID] = IGNORE_INDEX
        return {"image": image, "label": label}
