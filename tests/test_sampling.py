"""Loss sampling: cell-wise masks, and an expected gradient equal to the full-image gradient."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from fcnseg.analysis.sampling import loss_sampling_mask, masked_loss, sampled_loss
from fcnseg.errors import UserError


def _problem(n=1, k=3, h=3, w=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, h, w, generator=g, dtype=torch.float64)
    target = torch.randint(0, k, (n, h, w), generator=g)
    target[0, 0, 0] = 255
    target[0, -1, 1] = 255
    return logits, target


def _full_loss(logits, target, weight, normalize):
    return F.cross_entropy(logits, target, weight=weight, ignore_index=255,
                           reduction="mean" if normalize else "sum")


def _grad(fn, logits):
    x = logits.clone().requires_grad_(True)
    fn(x).backward()
    return x.grad


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("use_weight", [False, True])
def test_expected_gradient_over_all_masks_equals_full_gradient(normalize, use_weight):
    """Exact: enumerate every mask of a 3x5 image with 2x2 cells (2 x 3 = 6 cells)."""
    logits, target = _problem()
    weight = torch.tensor([0.5, 2.0, 1.5], dtype=torch.float64) if use_weight else None
    p = 0.3
    cells = [(a, b) for a in range(2) for b in range(3)]
    expected_grad = torch.zeros_like(logits)
    expected_loss = 0.0
    for bits in itertools.product([0, 1], repeat=len(cells)):
        keep = torch.zeros(1, 3, 5, dtype=torch.bool)
        for (a, b), kept in zip(cells, bits):
            keep[0, a * 2:a * 2 + 2, b * 2:b * 2 + 2] = bool(kept)
        prob = (1 - p) ** sum(bits) * p ** (len(bits) - sum(bits))

        def loss(x, keep=keep):
            return masked_loss(x, target, keep, p, weight=weight, normalize=normalize)

        expected_grad += prob * _grad(loss, logits)
        expected_loss += prob * float(loss(logits))
    full_grad = _grad(lambda x: _full_loss(x, target, weight, normalize), logits)
    torch.testing.assert_close(expected_grad, full_grad, rtol=1e-12, atol=1e-14)
    assert expected_loss == pytest.approx(float(_full_loss(logits, target, weight, normalize)), rel=1e-12)
    assert full_grad.abs().sum() > 0


def test_dividing_by_the_kept_count_instead_would_be_biased():
    """Why the normalised loss divides by the full image's weight: the ratio estimator
    (mean over kept pixels, what relabelling dropped pixels as ignore gives) is biased."""
    logits, target = _problem()
    p = 0.3
    cells = [(a, b) for a in range(2) for b in range(3)]
    expected_grad = torch.zeros_like(logits)
    for bits in itertools.product([0, 1], repeat=len(cells)):
        keep = torch.zeros(1, 3, 5, dtype=torch.bool)
        for (a, b), kept in zip(cells, bits):
            keep[0, a * 2:a * 2 + 2, b * 2:b * 2 + 2] = bool(kept)
        prob = (1 - p) ** sum(bits) * p ** (len(bits) - sum(bits))
        relabelled = torch.where(keep, target, 255)
        if (relabelled != 255).any():  # all dropped: undefined, counted as 0
            expected_grad += prob * _grad(lambda x: _full_loss(x, relabelled, None, True), logits)
    full_grad = _grad(lambda x: _full_loss(x, target, None, True), logits)
    assert float((expected_grad - full_grad).abs().max()) > 1e-3


@pytest.mark.parametrize("normalize", [True, False])
def test_monte_carlo_mean_gradient_of_sampled_loss_matches_full_gradient(normalize):
    logits, target = _problem(n=2, h=7, w=9, seed=3)
    weight = torch.tensor([1.0, 3.0, 0.25], dtype=torch.float64)
    p, stride, draws = 0.5, 4, 3000
    g = torch.Generator().manual_seed(1234)
    x = logits.clone().requires_grad_(True)
    grads = []
    for _ in range(draws):
        x.grad = None
        sampled_loss(x, target, p, stride, weight=weight, normalize=normalize, generator=g).backward()
        grads.append(x.grad.clone())
    grads = torch.stack(grads)
    mean, stderr = grads.mean(0), grads.std(0) / draws ** 0.5
    full = _grad(lambda y: _full_loss(y, target, weight, normalize), logits)
    # every element within 4.5 standard errors (fixed seed: deterministic), and the bulk much closer
    varies = stderr > 0  # ignored pixels never get a gradient: exactly 0 in both
    torch.testing.assert_close(mean[~varies], full[~varies])
    z = (mean - full).abs()[varies] / stderr[varies]
    assert z.numel() > 300
    assert float(z.max()) < 4.5
    assert float(z.mean()) < 1.2  # half-normal mean is 0.8; a 10% scale error gives about 5


def test_dropped_cells_get_no_gradient_and_kept_ones_do():
    logits, target = _problem(h=8, w=8)
    target[:] = 1
    g = torch.Generator().manual_seed(7)
    mask = loss_sampling_mask((1, 8, 8), 4, 0.5, generator=torch.Generator().manual_seed(7))
    grad = _grad(lambda x: sampled_loss(x, target, 0.5, 4, generator=g), logits)
    pixel_has_grad = grad.abs().sum(1) > 0
    assert torch.equal(pixel_has_grad, mask)
    assert 0 < int(mask.sum()) < 64


def test_mask_is_constant_per_cell_and_keeps_one_minus_p():
    mask = loss_sampling_mask((8, 50, 61), 8, 0.25, generator=torch.Generator().manual_seed(0))
    assert mask.shape == (8, 50, 61) and mask.dtype == torch.bool
    cells = mask[:, ::8, ::8]
    rebuilt = cells.repeat_interleave(8, 1).repeat_interleave(8, 2)[:, :50, :61]
    assert torch.equal(mask, rebuilt)
    frac = float(cells.float().mean())  # 8 * 7 * 8 = 448 cells
    assert abs(frac - 0.75) < 0.07
    assert loss_sampling_mask((2, 5, 5), 3, 0.0).all()


def test_same_seed_same_mask_and_p_zero_is_the_full_loss():
    a = loss_sampling_mask((2, 20, 20), 4, 0.5, generator=torch.Generator().manual_seed(5))
    b = loss_sampling_mask((2, 20, 20), 4, 0.5, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    logits, target = _problem()
    for normalize in (True, False):
        torch.testing.assert_close(sampled_loss(logits, target, 0.0, 32, normalize=normalize),
                                   _full_loss(logits, target, None, normalize))


def test_all_ignored_batch_gives_zero_loss_with_gradient():
    logits, target = _problem()
    target[:] = 255
    x = logits.clone().requires_grad_(True)
    loss = sampled_loss(x, target, 0.5, 2, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.isfinite(x.grad).all()


def test_bad_arguments():
    logits, target = _problem()
    with pytest.raises(UserError, match=r"\[0, 1\)"):
        sampled_loss(logits, target, 1.0, 2)
    with pytest.raises(UserError, match="stride"):
        sampled_loss(logits, target, 0.5, 0)
    with pytest.raises(UserError, match="N x K x H x W"):
        sampled_loss(logits[0], target, 0.5, 2)
