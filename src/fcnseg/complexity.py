"""Counted model complexity: FLOPs from the layers that ran, and parameter counts.

FLOPs are counted, not guessed: a forward pass at the requested input size runs
with hooks on every convolution, transposed convolution and linear layer, and each
layer adds ``2 * MACs`` (one multiply and one add per multiply-accumulate), the
convention of the papers and of ``torch.utils.flop_counter``. Grouped and
depthwise convolutions count ``C_in / groups`` inputs per output. Element-wise
layers (bias, BatchNorm, ReLU, pooling, the skip sums and crops) are left out:
they are memory-bound and together well under 1 % of an FCN's arithmetic.

The forward runs on the ``meta`` device when the model allows it, so counting the
134M-parameter VGG16 FCNs at 500x500 costs no arithmetic and no memory.
"""
from __future__ import annotations

import copy
from collections import defaultdict
from typing import Sequence

import torch
from torch import Tensor, nn

__all__ = ["count_flops", "count_params", "flops_by_layer", "layer_flops", "input_channels"]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_DECONV = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _prod(values: Sequence[int]) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out


def layer_flops(module: nn.Module, output: Tensor) -> int:
    """FLOPs (``2 * MACs``) of one call of ``module`` that produced ``output``; 0 if not counted.

    Counted from the output shape so that layers which transform their input first
    (the edge-padded upsampling of the Lite0 heads) are counted on what the
    arithmetic really saw.
    """
    if isinstance(module, _CONV):
        kernel = _prod(module.kernel_size)
        macs = output.numel() * (module.in_channels // module.groups) * kernel
        return 2 * macs
    if isinstance(module, _DECONV):
        # Every input sample scatters C_out/groups x kernel products; recover the
        # number of input samples from the output size (stride, pad, dilation, ...).
        spatial_in = 1
        dims = len(module.kernel_size)
        for d in range(dims):
            out = int(output.shape[-dims + d])
            k, s = module.kernel_size[d], module.stride[d]
            p, dil, op = module.padding[d], module.dilation[d], module.output_padding[d]
            spatial_in *= (out + 2 * p - dil * (k - 1) - op - 1) // s + 1
        batch = int(output.shape[0]) if output.dim() == dims + 2 else 1
        macs = (batch * spatial_in * module.in_channels * (module.out_channels // module.groups)
                * _prod(module.kernel_size))
        return 2 * macs
    if isinstance(module, nn.Linear):
        rows = output.numel() // module.out_features
        return 2 * rows * module.in_features * module.out_features
    return 0


def input_channels(model: nn.Module) -> int:
    """Channels the model takes: the sum over its ``modalities`` (multi-modal nets, e.g. RGB + HHA)
    or else the first convolution's input channels (3 if it has none)."""
    modalities = getattr(model, "modalities", None)
    if isinstance(modalities, dict) and modalities:
        return int(sum(modalities.values()))
    for m in model.modules():
        if isinstance(m, (*_CONV, *_DECONV)):
            return int(m.in_channels)
    return 3


def flops_by_layer(model: nn.Module, input_shape: Sequence[int], *, use_meta: bool = True) -> dict[str, int]:
    """FLOPs per counted layer (module path -> FLOPs) for one forward at ``input_shape``.

    ``input_shape`` is ``(N, C, H, W)``, ``(C, H, W)`` (batch 1) or ``(H, W)`` (batch 1,
    the model's own input channels, :func:`input_channels`). A layer called several
    times accumulates.
    """
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 2:
        shape = (input_channels(model), *shape)
    if len(shape) == 3:
        shape = (1, *shape)
    counted = (*_CONV, *_DECONV, nn.Linear)
    totals: dict[str, int] = defaultdict(int)
    net = model
    device = torch.device("cpu")
    if use_meta:
        try:
            net = copy.deepcopy(model).to("meta")
            device = torch.device("meta")
        except Exception:  # a model with state that cannot live on meta: run for real
            net, device = model, next((p.device for p in model.parameters()), torch.device("cpu"))
    else:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    handles = []
    for name, module in net.named_modules():
        if isinstance(module, counted):
            def hook(mod: nn.Module, _inp: tuple, out: Tensor, name: str = name) -> None:
                totals[name] += layer_flops(mod, out)
            handles.append(module.register_forward_hook(hook))
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            dtype = next((p.dtype for p in net.parameters() if p.is_floating_point()), torch.float32)
            net(torch.zeros(shape, device=device, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
        net.train(was_training)
    return dict(totals)


def count_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Total FLOPs (``2 * MACs`` of convolutions, transposed convolutions and linear layers)
    of one forward pass at ``input_shape`` (``(N, C, H, W)``, the count covers the whole batch;
    or ``(H, W)`` for one image), e.g. ``count_flops(model, (500, 500)) / 1e9`` GFLOPs."""
    return sum(flops_by_layer(model, input_shape).values())


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters, each shared tensor counted once (fixed upsampling weights included
    unless ``trainable_only``)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total
