"""The common shape of every fcnseg data set, plus the image/label readers they share.

A data set is a list of samples, each a dict of modality name -> file path
(``files``). ``load_raw(i)`` reads one sample into numpy arrays and checks it
(readable, same size, label values in range) so that a broken file is reported
as one line naming it; ``__getitem__`` then applies the joint transform. Labels
are always remapped so that ``ignore_index`` is 255 and classes are ``0..K-1``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from torch.utils.data import Dataset

from ..errors import UserError
from ..imageio import read_image as _read_image

log = logging.getLogger(__name__)

IGNORE_INDEX = 255

Sample = dict[str, Any]
Transform = Callable[[Sample], Sample]


def read_image(path: str | Path) -> np.ndarray:
    """A data-set image as RGB uint8 ``H x W x 3``: :func:`fcnseg.imageio.read_image` (the one
    robust reader: grey, palette, 16-bit, alpha, CMYK; one-line UserError naming the file),
    without EXIF rotation, since label maps are drawn on the stored pixel grid."""
    return _read_image(path, exif=False)


def load_mat(path: str | Path, key: str) -> np.ndarray:
    """Array ``key`` of a MATLAB ``.mat`` file (scipy is imported only here: it is an extra)."""
    try:
        import scipy.io
    except ImportError:  # pragma: no cover - depends on the install
        raise UserError("reading .mat labels needs scipy: pip install 'fcnseg[mat]'") from None
    try:
        mat = scipy.io.loadmat(str(path))
    except FileNotFoundError:
        raise UserError(f"{path}: label file not found") from None
    except Exception as exc:  # scipy raises assorted errors for corrupt files
        raise UserError(f"{path}: unreadable .mat file ({exc.__class__.__name__}: {exc})") from None
    if key not in mat:
        keys = [k for k in mat if not k.startswith("__")]
        raise UserError(f"{path}: no variable {key!r} in .mat file (has: {', '.join(keys) or 'none'})")
    return mat[key]


def read_list(path: Path, what: str = "split list") -> list[str]:
    """Non-empty, non-comment lines of a text list; a missing or empty list is a UserError."""
    if not path.is_file():
        raise UserError(f"{path}: {what} not found")
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: unreadable {what} ({exc})") from None
    items = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not items:
        raise UserError(f"{path}: {what} is empty")
    return items


def check_root(root: str | Path, name: str) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"{root}: {name} root folder not found")
    return root


def shift_labels(label: np.ndarray) -> np.ndarray:
    """The NYUD / SIFT Flow convention: class k -> k-1, 0 (unlabelled) and negatives -> 255."""
    lab = label.astype(np.int64)
    out = lab - 1
    out[lab <= 0] = IGNORE_INDEX
    return out.astype(np.uint8) if out.max(initial=0) <= 255 else out


class SegmentationDataset(Dataset):
    """Base class: subclasses fill ``files``, ``class_names``, ``palette`` and implement ``_read``.

    ``skip_bad=True`` makes ``__getitem__`` return ``None`` for a sample that fails to
    load (logged as a warning) instead of raising; use :func:`fcnseg.data.collate` or
    the evaluation loop, which drop such samples and count them.
    """

    name: str = "dataset"
    #: per-modality: which keys are labels (nearest resize, padded with ignore)
    label_keys: tuple[str, ...] = ("label",)
    #: the Caffe BGR mean the reference nets of this data set were trained with (None: VOC's)
    mean_bgr: tuple[float, float, float] | None = None
    #: the value this data set's label files use for "not labelled" (read as ``ignore_index``);
    #: error messages name it, since that is the value a user sees in the files
    void_value: int = IGNORE_INDEX

    def __init__(self, root: str | Path, split: str, transform: Transform | None = None,
                 skip_bad: bool = False) -> None:
        self.root = Path(root)
        self.split = split
        self.transform = transform
        self.skip_bad = skip_bad
        self.ignore_index = IGNORE_INDEX
        self.files: list[dict[str, Path]] = []
        self.class_names: list[str] = []
        self.palette: np.ndarray = np.zeros((0, 3), np.uint8)
        self.bad: list[str] = []  # messages of the samples skipped (in this process)
        self.seed: int | None = None  # see set_epoch
        self.epoch = 0

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.files)

    def _read(self, i: int) -> Sample:
        """Read sample ``i`` into numpy arrays: at least ``image`` and ``label``."""
        raise NotImplementedError

    def load_raw(self, i: int) -> Sample:
        """Sample ``i`` without the transform, checked: RGB uint8 image, H x W label, ``path``."""
        sample = self._read(i)
        sample["_index"] = i
        sample["path"] = str(self.files[i]["image"])
        try:
            self.check(sample)
        finally:
            del sample["_index"]
        return sample

    def check(self, sample: Sample) -> None:
        """Same size for every modality, label values in ``0..K-1`` or the ignore index."""
        img = sample["image"]
        h, w = img.shape[:2]
        for key, arr in sample.items():
            if key in ("image", "path") or not isinstance(arr, np.ndarray):
                continue
            if arr.shape[:2] != (h, w):
                where = self._key_path(sample, key)
                raise UserError(f"{where}: {key} is {arr.shape[1]}x{arr.shape[0]} but the image "
                                f"{sample['path']} is {w}x{h} (W x H)")
        for key in self.label_keys:
            if key not in sample:
                continue
            lab = sample[key]
            k = self.num_classes_of(key)
            bad = (lab >= k) & (lab != self.ignore_index)
            if lab.dtype.kind == "i":
                bad |= lab < 0
            if bad.any():
                v = int(lab[bad].flat[0])
                raise UserError(f"{self._key_path(sample, key)}: label value {v} out of range; expected "
                                f"0..{k - 1} or {self.void_value} ({self.name}'s void/ignore value)")

    def num_classes_of(self, key: str) -> int:
        """Class count of label modality ``key`` (SIFT Flow's geometric labels have their own)."""
        return self.num_classes

    def _key_path(self, sample: Sample, key: str) -> str:
        i = sample.get("_index")
        if i is not None and key in self.files[i]:
            return str(self.files[i][key])
        return sample.get("path", "?")

    def set_epoch(self, epoch: int, seed: int | None = None) -> None:
        """Make augmentation a function of ``(seed, epoch, index)``: sample ``i`` then carries
        ``rng = numpy.random.default_rng([seed, epoch, i])`` for the transforms.

        Set it before iterating (with ``persistent_workers=False`` so workers see it), or
        index with ``(i, seed)`` tuples from a sampler instead.
        """
        self.epoch = int(epoch)
        if seed is not None:
            self.seed = int(seed)

    def __getitem__(self, index: int | tuple[int, Any]) -> Sample | None:
        """Sample ``index`` after the transform; ``index`` may be ``(i, seed)`` to fix its randomness."""
        seed: Any = None
        if isinstance(index, tuple):
            index, seed = index
        elif self.seed is not None:
            seed = [self.seed, self.epoch, int(index)]
        try:
            sample = self.load_raw(index)
        except UserError as exc:
            if not self.skip_bad:
                raise
            log.warning("skipping bad sample: %s", exc)
            self.bad.append(str(exc))
            return None
        if self.transform is not None:
            if seed is not None:
                sample["rng"] = np.random.default_rng(seed)
            sample = self.transform(sample)
            sample.pop("rng", None)
        return sample

    def reference_normalization(self, preset: str = "caffe") -> Any:
        """The preset with this data set's own Caffe BGR mean where the reference nets used one
        (NYUD, SIFT Flow), else ``preset`` unchanged."""
        from ..preprocess import Normalization, get_normalization

        norm = get_normalization(preset)
        if self.mean_bgr is None or norm.name != "caffe":
            return norm
        return Normalization(f"caffe-{self.name}", True, 1.0, tuple(self.mean_bgr), (1.0, 1.0, 1.0))

    def describe(self) -> str:
        return f"{self.name} {self.split}: {len(self)} samples, {self.num_classes} classes"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()} root={str(self.root)!r}>"


def as_palette(colors: Sequence[Sequence[int]]) -> np.ndarray:
    pal = np.asarray(colors, dtype=np.int64)
    if pal.ndim != 2 or pal.shape[1] != 3 or pal.min() < 0 or pal.max() > 255:
        raise ValueError(f"a palette is K x 3 values in 0..255, got shape {pal.shape}")
    return pal.astype(np.uint8)
