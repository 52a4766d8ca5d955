"""ConfusionMatrix: reference score.py semantics (hand-computed cases and a numpy oracle)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fcnseg.errors import UserError
from fcnseg.metrics import ConfusionMatrix, scores_from_confusion


def reference_scores(hist: np.ndarray) -> dict:
    """A literal transcription of the reference fcn score.py formulas."""
    hist = hist.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        acc = np.diag(hist).sum() / hist.sum()
        acc_cls = np.nanmean(np.diag(hist) / hist.sum(1))
        iu = np.diag(hist) / (hist.sum(1) + hist.sum(0) - np.diag(hist))
        freq = hist.sum(1) / hist.sum()
    return {"pixel_acc": acc, "mean_acc": acc_cls, "mean_iou": np.nanmean(iu),
            "fw_iou": (freq[freq > 0] * iu[freq > 0]).sum(), "iou": iu}


def fast_hist(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    k = (a >= 0) & (a < n)
    return np.bincount(n * a[k].astype(int) + b[k], minlength=n ** 2).reshape(n, n)


def test_hand_computed_matrix():
    # gt:   0 0 1 1 / 2 2 255 1     pred: 0 1 1 1 / 2 0 2 1
    gt = np.array([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 2, 1]])
    cm = ConfusionMatrix(3)
    cm.update(pred, gt)
    expected = np.array([[1, 1, 0], [0, 3, 0], [1, 0, 1]])
    np.testing.assert_array_equal(cm.numpy(), expected)
    s = cm.compute()
    assert s["pixel_acc"] == pytest.approx(5 / 7)
    assert s["acc"] == pytest.approx([1 / 2, 1.0, 1 / 2])
    assert s["mean_acc"] == pytest.approx((0.5 + 1 + 0.5) / 3)
    # IoU: class 0: 1 / (2 + 2 - 1) = 1/3; class 1: 3 / (3 + 4 - 3) = 3/4; class 2: 1 / (2 + 1 - 1) = 1/2
    assert s["iou"] == pytest.approx([1 / 3, 3 / 4, 1 / 2])
    assert s["mean_iou"] == pytest.approx((1 / 3 + 3 / 4 + 1 / 2) / 3)
    assert s["fw_iou"] == pytest.approx(2 / 7 * 1 / 3 + 3 / 7 * 3 / 4 + 2 / 7 * 1 / 2)
    assert cm.total == 7


def test_absent_class_is_nan_and_predicted_absent_is_zero():
    cm = ConfusionMatrix(4)
    gt = torch.tensor([0, 0, 1, 1])
    pred = torch.tensor([0, 2, 1, 1])  # class 2 predicted but absent; class 3 absent from both
    cm.update(pred, gt)
    s = cm.compute()
    assert math.isnan(s["iou"][3]) and math.isnan(s["acc"][3])
    assert s["iou"][2] == 0.0
    assert math.isnan(s["acc"][2])  # no ground-truth pixels: accuracy undefined
    assert s["mean_iou"] == pytest.approx((1 / 2 + 1 + 0) / 3)  # NaN left out, the 0 counted
    assert s["mean_acc"] == pytest.approx((1 / 2 + 1) / 2)


def test_empty_matrix_gives_nan_not_crash():
    s = ConfusionMatrix(2).compute()
    assert math.isnan(s["pixel_acc"]) and math.isnan(s["mean_iou"])


def test_ignore_index_dropped_and_custom_ignore():
    cm = ConfusionMatrix(2, ignore_index=255)
    cm.update(np.array([1, 1, 0]), np.array([255, 255, 0]))
    assert cm.total == 1
    cm2 = ConfusionMatrix(2, ignore_index=7)
    cm2.update(np.array([1, 1, 0]), np.array([7, 1, 0]))
    assert cm2.total == 2


def test_out_of_range_label_raises_clear_error():
    cm = ConfusionMatrix(3)
    with pytest.raises(UserError, match=r"label value 5 .*0\.\.2"):
        cm.update(np.array([0, 1]), np.array([0, 5]))
    with pytest.raises(UserError, match="-1"):
        cm.update(np.array([0, 1]), np.array([0, -1]))
    with pytest.raises(ValueError, match="predicted class 3"):
        cm.update(np.array([0, 3]), np.array([0, 1]))
    assert cm.total == 0  # nothing counted from the rejected updates


def test_shape_and_dtype_errors():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="pixels"):
        cm.update(np.zeros((2, 2), np.int64), np.zeros((2, 3), np.int64))
    with pytest.raises(TypeError, match="integer"):
        cm.update(np.zeros(3, np.float32), np.zeros(3, np.int64))


def test_random_against_reference_batches_merge_reset():
    rng = np.random.default_rng(0)
    n = 6
    gt = rng.integers(0, n, size=(3, 2, 17, 23))
    gt[rng.random(gt.shape) < 0.1] = 255
    pred = np.where(rng.random(gt.shape) < 0.6, gt, rng.integers(0, n, size=gt.shape))
    pred[pred == 255] = 0
    hist = fast_hist(gt.ravel(), pred.ravel(), n)

    # any batch shape, tensors or arrays, uint8 labels
    cm = ConfusionMatrix(n)
    cm.update(torch.from_numpy(pred[0]), torch.from_numpy(gt[0].astype(np.uint8)))
    other = ConfusionMatrix(n)
    for i in range(1, 3):
        for j in range(2):
            other.update(pred[i, j], gt[i, j])
    cm.merge(other)
    np.testing.assert_array_equal(cm.numpy(), hist)

    ref = reference_scores(hist)
    s = cm.compute()
    for key in ("pixel_acc", "mean_acc", "mean_iou", "fw_iou"):
        assert s[key] == pytest.approx(ref[key], rel=1e-12)
        assert 0.0 <= s[key] <= 1.0
    np.testing.assert_allclose(s["iou"], ref["iou"])
    assert scores_from_confusion(hist)["mean_iou"] == pytest.approx(ref["mean_iou"])

    cm.reset()
    assert cm.total == 0
    with pytest.raises(ValueError, match="merge"):
        cm.merge(ConfusionMatrix(n + 1))


def test_all_reduce_without_distributed_is_noop():
    cm = ConfusionMatrix(2)
    cm.update(np.array([0, 1]), np.array([0, 0]))
    assert cm.all_reduce() is cm
    assert cm.total == 2


def test_all_reduce_single_process_gloo(tmp_path):
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed not available")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        cm = ConfusionMatrix(2)
        cm.update(np.array([0, 1, 1]), np.array([0, 0, 1]))
        before = cm.numpy()
        cm.all_reduce()
        np.testing.assert_array_equal(cm.numpy(), before)
    finally:
        dist.destroy_process_group()
