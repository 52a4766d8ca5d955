"""Loss options for thin classes: online hard-example mining and the Lovász-softmax term."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fcnseg.errors import UserError
from fcnseg.training.config import TrainConfig
from fcnseg.training.losses import lovasz_softmax, segmentation_loss


def _batch(seed: int = 0, classes: int = 4):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, classes, 6, 7, generator=g)
    target = torch.randint(0, classes, (2, 6, 7), generator=g)
    target[0, 0, :3] = 255
    return logits, target


def test_ohem_keep_one_is_plain_cross_entropy():
    logits, target = _batch()
    plain = F.cross_entropy(logits, target, ignore_index=255)
    assert torch.allclose(segmentation_loss(logits, target, ohem_keep=1.0), plain)


@pytest.mark.parametrize("keep", [0.1, 0.25, 0.5])
def test_ohem_averages_the_hardest_fraction(keep):
    logits, target = _batch(1)
    per_pixel = F.cross_entropy(logits, target, ignore_index=255, reduction="none")
    valid = per_pixel[target != 255]
    k = int(torch.tensor(keep * valid.numel()).ceil())
    expected = valid.sort(descending=True).values[:k].mean()
    assert torch.allclose(segmentation_loss(logits, target, ohem_keep=keep), expected)
    # the hardest pixels cost more than the average pixel
    assert expected > valid.mean()


def test_ohem_gradient_only_reaches_kept_pixels():
    logits, target = _batch(2)
    logits.requires_grad_(True)
    segmentation_loss(logits, target, ohem_keep=0.2).backward()
    touched = logits.grad.abs().sum(1) > 0
    n_valid = int((target != 255).sum())
    assert 0 < int(touched.sum()) <= -(-n_valid // 5)
    assert not touched[target == 255].any()


def _one_hot_logits(pred: torch.Tensor, classes: int) -> torch.Tensor:
    return F.one_hot(pred, classes).permute(0, 3, 1, 2).float() * 50.0


def test_lovasz_equals_one_minus_iou_on_hard_predictions():
    g = torch.Generator().manual_seed(3)
    target = torch.randint(0, 3, (2, 5, 6), generator=g)
    pred = torch.where(torch.rand(2, 5, 6, generator=g) < 0.7, target, torch.randint(0, 3, (2, 5, 6), generator=g))
    target[1, 0] = 255
    valid = target != 255
    ious = []
    for c in target[valid].unique().tolist():
        inter = ((pred == c) & (target == c) & valid).sum().item()
        union = (((pred == c) | (target == c)) & valid).sum().item()
        ious.append(inter / union)
    expected = 1.0 - sum(ious) / len(ious)
    got = lovasz_softmax(_one_hot_logits(pred, 3), target).item()
    assert got == pytest.approx(expected, abs=1e-5)
    assert expected > 0.05  # the check is not trivially zero


def test_lovasz_is_zero_on_perfect_prediction_and_has_gradient():
    _, target = _batch(4)
    perfect = _one_hot_logits(target.clamp(max=3), 4)
    assert lovasz_softmax(perfect, target).item() == pytest.approx(0.0, abs=1e-6)
    logits, target = _batch(5)
    logits.requires_grad_(True)
    loss = lovasz_softmax(logits, target)
    loss.backward()
    assert loss.item() > 0 and logits.grad.abs().sum() > 0


def test_lovasz_with_every_pixel_ignored_is_zero():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = lovasz_softmax(logits, torch.full((1, 2, 2), 255))
    loss.backward()
    assert loss.item() == 0.0


def test_config_checks_loss_options():
    with pytest.raises(UserError, match="ohem_keep"):
        TrainConfig.from_dict({"ohem_keep": 0})
    with pytest.raises(UserError, match="lovasz_weight"):
        TrainConfig.from_dict({"lovasz_weight": -1})
    with pytest.raises(UserError, match="cannot be combined"):
        TrainConfig.from_dict({"ohem_keep": 0.5, "loss_sampling_p": 0.5})
    cfg = TrainConfig.from_dict({"ohem_keep": 0.25, "lovasz_weight": 0.5})
    assert (cfg.ohem_keep, cfg.lovasz_weight) == (0.25, 0.5)


def test_scale_augmentation_without_crops_cannot_batch():
    with pytest.raises(UserError, match="scale_range without crop_size"):
        TrainConfig.from_dict({"scale_range": [0.5, 2.0], "batch_size": 2})
    TrainConfig.from_dict({"scale_range": [0.5, 2.0], "batch_size": 1})
    TrainConfig.from_dict({"scale_range": [0.5, 2.0], "crop_size": [8, 8], "batch_size": 2})
