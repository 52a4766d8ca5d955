"""Net surgery: the weight manipulations the FCN paper trains with.

* :func:`convolutionalize` turns an ImageNet classifier's fully connected layers
  into the fc6/fc7 convolutions of an FCN trunk (the paper's starting point).
* :func:`transplant` copies a coarser FCN into a finer one (32s -> 16s -> 8s, the
  staged training), leaving the new, zero-initialised skip score layers alone; it
  also puts an RGB net into an RGB-D one (conv1 widened) or into one stream of a
  late-fusion net (``prefix``).
* :func:`change_num_classes` keeps a trunk and re-makes the class-dependent layers.
* :func:`expand_input_channels_weight` / :func:`add_input_channels` give a first
  convolution more input channels (RGB -> RGB-D); the new channels' filters are the
  mean of the old ones, as the reference NYUD early-fusion net.
* :func:`bilinear_kernel` / :func:`bilinear_init_` (re-exported from
  :mod:`fcnseg.models.layers`) make upsampling layers bilinear.
* :func:`rarefy` (re-exported from :mod:`fcnseg.analysis.rarefy`) trades a layer's stride for
  dilation downstream (section 3.2's filter rarefaction).

What transplanting guarantees (and what it does not)
-----------------------------------------------------
The paper says the finer net "starts with unmodified predictions" because its new
score layers are zero. Exactly true after :func:`transplant`:

* the trunk and every copied score layer compute the same maps, and the finer net's
  first fused map equals the coarser net's last score map upsampled 2x
  (``fuse_pool4 == upscore2(score_fr)`` for 32s -> 16s, ``fuse_pool3 ==
  upscore_pool4(fuse_pool4)`` for 16s -> 8s), bit for bit, since the new skip adds zeros;
* both nets place every coarse score sample at the same output pixel (the derived
  crops agree), so the outputs are equal wherever the coarse scores are locally
  affine (e.g. constant), away from the borders.

Not true: equal outputs in general. The finer net upsamples with bilinear 2x then
16x (or 2x then 8x) instead of one 32x (16x) bilinear kernel; the composed kernel is
smoother (80 instead of 64 taps, piecewise quadratic), so outputs differ where the
coarse scores curve, and at the borders. The test suite checks all three statements.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Mapping

import torch
from torch import Tensor, nn

from .analysis.rarefy import rarefy
from .errors import UserError
from .models.layers import Upscore, bilinear_init_, bilinear_kernel, zero_init_

__all__ = [
    "TransplantReport", "add_input_channels", "bilinear_init_", "bilinear_kernel", "change_num_classes",
    "convolutionalize", "expand_input_channels_weight", "find_first_conv", "rarefy", "transplant",
]

Arch = Literal["vgg16", "alexnet"]

# The FCN layers whose shape depends on the number of classes (any head, any suffix).
_SCORE_LAYERS = ("score_fr", "score_pool4", "score_pool3", "score_pool2")
_UPSAMPLERS = ("upscore", "upscore2", "upscore16", "upscore_pool4", "upscore8", "upscore_pool3", "upscore4")


# --------------------------------------------------------------------------- convolutionalize
def _trunk_layout(arch: str) -> tuple[list[int], dict[str, str]]:
    """Feature conv indices and Caffe name -> trunk path of an fcnseg trunk.

    Read off the real trunk classes (built on the meta device: no memory, no time),
    so this stays true to :mod:`fcnseg.models.vgg` and :mod:`fcnseg.models.alexnet`.
    """
    from .models.alexnet import AlexNetTrunk
    from .models.vgg import VGG16Trunk

    trunks = {"vgg16": VGG16Trunk, "alexnet": AlexNetTrunk}
    if arch not in trunks:
        raise UserError(f"convolutionalize: unknown arch {arch!r}; expected one of: {', '.join(trunks)}")
    with torch.device("meta"):
        trunk = trunks[arch]()
    convs = [i for i, m in enumerate(trunk.features) if isinstance(m, nn.Conv2d)]
    return convs, dict(trunk.caffe_names)


def _fc_to_conv(weight: Tensor, in_channels: int, name: str) -> Tensor:
    """``out x (C*k*k)`` fully connected weight -> ``out x C x k x k`` convolution weight.

    A Linear layer after ``flatten`` sees a ``C x k x k`` block in C-major, row-major
    order, which is exactly the memory layout of a convolution filter: a reshape.
    """
    if weight.dim() == 4:  # already a convolution (e.g. Caffe fc7 stored as conv)
        return weight
    if weight.dim() != 2 or weight.shape[1] % in_channels:
        raise UserError(f"convolutionalize: {name} has shape {tuple(weight.shape)}; expected "
                        f"out x (C*k*k) with C = {in_channels}")
    k = math.isqrt(weight.shape[1] // in_channels)
    if in_channels * k * k != weight.shape[1]:
        raise UserError(f"convolutionalize: {name} has {weight.shape[1]} inputs, not {in_channels} x k x k")
    return weight.reshape(weight.shape[0], in_channels, k, k)


def convolutionalize(state_dict: Mapping[str, Tensor], arch: Arch = "vgg16", *,
                     prefix: str = "backbone.") -> dict[str, Tensor]:
    """An ImageNet classifier's weights as an fcnseg FCN trunk's (``fc6``/``fc7`` as convolutions).

    Accepts two layouts:

    * torchvision style: ``features.N.*`` plus ``classifier.N.*`` Linear layers. The
      first two Linear layers (by index: VGG16 ``classifier.0``/``.3``, AlexNet style
      ``.1``/``.4``) become fc6/fc7; the last (fc8, the 1000 ImageNet classes) is
      dropped. ``features.N`` must use the fcnseg trunk's indices (VGG16: torchvision's;
      AlexNet: the CaffeNet layout of :class:`~fcnseg.models.alexnet.AlexNetTrunk`,
      convolutions at 0, 4, 8, 10, 12).
    * Caffe names: ``conv1_1.weight`` ... / ``conv1.weight`` ..., ``fc6.*``, ``fc7.*``
      (``fc8.*`` dropped), as converted from a caffemodel.

    fc6's kernel (7 for VGG16, 6 for AlexNet) is inferred from its input width and the
    last convolution's channels, so narrower look-alike nets (tests) work too.
    Returns new keys prefixed with ``prefix`` (``"backbone."`` for an FCN model, ``""``
    for a bare trunk); tensors are shared with the input where no reshape copies.
    """
    convs, caffe_names = _trunk_layout(arch)
    if any(k.startswith("classifier.") for k in state_dict):
        feats = {k: v for k, v in state_dict.items() if k.startswith("features.")}
        indices = sorted({int(k.split(".")[1]) for k in feats if k.endswith(".weight")})
        if indices != convs:
            raise UserError(f"convolutionalize: the features' convolutions are at indices {indices}; "
                            f"the fcnseg {arch} trunk expects {convs}")
        linear = sorted({int(k.split(".")[1]) for k in state_dict
                         if k.startswith("classifier.") and k.endswith(".weight")})
        if len(linear) < 2:
            raise UserError(f"convolutionalize: found {len(linear)} classifier Linear layers; expected fc6 and fc7")
        fc = {"fc6": f"classifier.{linear[0]}", "fc7": f"classifier.{linear[1]}"}
        out = dict(feats)
    else:
        missing = [n for n in caffe_names if f"{n}.weight" not in state_dict]
        if missing:
            raise UserError(f"convolutionalize: not a torchvision (features/classifier) or Caffe-named {arch} "
                            f"state dict; missing {', '.join(m + '.weight' for m in missing)}")
        out = {}
        for caffe, path in caffe_names.items():
            if caffe not in ("fc6", "fc7"):
                for kind in ("weight", "bias"):
                    if f"{caffe}.{kind}" in state_dict:
                        out[f"{path}.{kind}"] = state_dict[f"{caffe}.{kind}"]
        fc = {"fc6": "fc6", "fc7": "fc7"}
    last_conv = out[f"features.{convs[-1]}.weight"]
    fc6 = _fc_to_conv(state_dict[f"{fc['fc6']}.weight"], last_conv.shape[0], f"{fc['fc6']}.weight")
    fc7 = _fc_to_conv(state_dict[f"{fc['fc7']}.weight"], fc6.shape[0], f"{fc['fc7']}.weight")
    if fc7.shape[2:] != (1, 1):
        raise UserError(f"convolutionalize: {fc['fc7']}.weight must map fc6's {fc6.shape[0]} outputs, "
                        f"got shape {tuple(state_dict[fc['fc7'] + '.weight'].shape)}")
    out.update({"fc6.weight": fc6, "fc6.bias": state_dict[f"{fc['fc6']}.bias"],
                "fc7.weight": fc7, "fc7.bias": state_dict[f"{fc['fc7']}.bias"]})
    return {prefix + k: v for k, v in out.items()}


# --------------------------------------------------------------------------- transplant
@dataclass
class TransplantReport:
    """What :func:`transplant` did, by target parameter/buffer name."""

    copied: list[str] = field(default_factory=list)
    expanded: list[str] = field(default_factory=list)  # first conv widened (RGB net -> RGB-D net)
    shape_mismatch: list[str] = field(default_factory=list)  # same name, other shape: left as is
    untouched: list[str] = field(default_factory=list)  # not in the source: left as is


def transplant(source: nn.Module | Mapping[str, Tensor], target: nn.Module, *,
               prefix: str = "", expand_inputs: bool = True) -> TransplantReport:
    """Copy every tensor of ``source`` whose name and shape match into ``target`` (in place).

    The staged training of the paper: FCN-32s -> FCN-16s -> FCN-8s. The finer net's
    new skip score layers keep their zero initialisation, its fixed bilinear
    upsamplers their bilinear weights. ``prefix`` is prepended to the source names,
    e.g. ``"streams.hha."`` to put a single-modality net into one stream of a
    late-fusion net. With ``expand_inputs`` the target's first convolution may have
    more input channels than the source's (an RGB net into an RGB-D net): the extra
    channels get the mean of the source filters (:func:`expand_input_channels_weight`),
    as the reference early-fusion surgery. See the module docstring for what the
    outputs then share.
    """
    src = source.state_dict() if isinstance(source, nn.Module) else dict(source)
    src = {prefix + k: v for k, v in src.items()}
    first = ""
    if expand_inputs:
        try:
            parent, name, _ = find_first_conv(target)
        except UserError:  # no convolution at all: nothing to widen
            pass
        else:
            paths = {id(m): p for p, m in target.named_modules()}
            first = f"{paths[id(parent)]}.{name}.weight".lstrip(".")
    report = TransplantReport()
    with torch.no_grad():
        for name, tensor in target.state_dict(keep_vars=True).items():
            if name not in src:
                report.untouched.append(name)
            elif src[name].shape == tensor.shape:
                tensor.copy_(src[name])
                report.copied.append(name)
            elif (name == first and src[name].dim() == 4 and src[name].shape[1] < tensor.shape[1]
                  and src[name].shape[0] == tensor.shape[0] and src[name].shape[2:] == tensor.shape[2:]):
                tensor.copy_(expand_input_channels_weight(src[name], tensor.shape[1]))
                report.expanded.append(name)
            else:
                report.shape_mismatch.append(name)
    return report


# --------------------------------------------------------------------------- classes
def _fcn_heads(model: nn.Module, head: str | None) -> list[nn.Module]:
    """The FCN modules of ``model`` whose class-dependent layers ``change_num_classes`` re-makes."""
    from .models.fcn import FCN

    heads = getattr(model, "heads", None)
    if isinstance(heads, nn.ModuleDict):  # multi-task: one head, the main one by default
        name = head or getattr(model, "main_head", next(iter(heads)))
        if name not in heads:
            raise UserError(f"model has no head {name!r}; heads: {', '.join(heads)}")
        return [heads[name]]
    if head is not None:
        raise UserError(f"head={head!r} given but the model has a single output")
    streams = getattr(model, "streams", None)
    if isinstance(streams, nn.ModuleDict):  # late fusion: every stream scores the same classes
        return list(streams.values())
    if isinstance(model, FCN):
        return [model]
    raise UserError(f"change_num_classes: {type(model).__name__} is not an fcnseg FCN model")


def _reset_fcn_classes(fcn: nn.Module, num_classes: int) -> None:
    for name in _SCORE_LAYERS:
        old = getattr(fcn, name, None)
        if isinstance(old, nn.Conv2d):
            new = zero_init_(nn.Conv2d(old.in_channels, num_classes, 1, bias=old.bias is not None))
            setattr(fcn, name, new.to(old.weight.device, old.weight.dtype))
    for name in _UPSAMPLERS:
        old = getattr(fcn, name, None)
        if isinstance(old, Upscore):
            new = Upscore(num_classes, old.kernel_size[0], old.stride[0], edge_pad=old.edge_pad,
                          learnable=old.weight.requires_grad)
            setattr(fcn, name, new.to(old.weight.device, old.weight.dtype))
    fcn.num_classes = num_classes


def _change_state_classes(state: Mapping[str, Tensor], num_classes: int, head: str | None) -> dict[str, Tensor]:
    out = dict(state)
    for key, value in state.items():
        module, _, kind = key.rpartition(".")
        if head is not None and f"heads.{head}." not in key:
            continue
        layer = module.rpartition(".")[2]
        if layer in _SCORE_LAYERS:
            shape = (num_classes, *value.shape[1:]) if kind == "weight" else (num_classes,)
            out[key] = torch.zeros(shape, dtype=value.dtype, device=value.device)
        elif layer in _UPSAMPLERS and kind == "weight":
            deconv = nn.ConvTranspose2d(num_classes, num_classes, value.shape[2], bias=False)
            out[key] = bilinear_init_(deconv).weight.detach().to(value.device, value.dtype)
    return out


def change_num_classes(model_or_state: nn.Module | Mapping[str, Tensor], num_classes: int, *,
                       head: str | None = None) -> nn.Module | dict[str, Tensor]:
    """Keep the trunk, re-make the class-dependent layers for ``num_classes`` classes.

    Score layers (``score_fr``, ``score_pool4``, ``score_pool3``) restart at zero and
    upsampling layers are re-made bilinear, as a fresh model of that class count,
    so fine-tuning on a new label set starts from the trained trunk. A module is
    changed in place and returned; a state dict gives a new dict (score layers
    found by name). ``head`` picks one head of a multi-task model (default: its main
    head); a late-fusion model changes every stream.
    """
    if num_classes < 1:
        raise UserError(f"num_classes must be >= 1, got {num_classes}")
    if not isinstance(model_or_state, nn.Module):
        return _change_state_classes(model_or_state, num_classes, head)
    model = model_or_state
    for fcn in _fcn_heads(model, head):
        _reset_fcn_classes(fcn, num_classes)
    if hasattr(model, "head_classes"):  # multi-task bookkeeping
        name = head or model.main_head
        model.head_classes = {**model.head_classes, name: num_classes}
        if name == model.main_head:
            model.num_classes = num_classes
    elif hasattr(model, "num_classes"):
        model.num_classes = num_classes
    return model


# --------------------------------------------------------------------------- input channels
def expand_input_channels_weight(weight: Tensor, in_channels: int) -> Tensor:
    """A first-layer conv weight (``out x C x k x k``) widened to ``in_channels`` inputs.

    The existing channels keep their filters; each new channel gets the mean of
    them, so a new modality starts as "another look at the image's intensity"
    (the reference's RGB-D conv1 surgery). Fewer channels than the weight has is an error.
    """
    old = weight.shape[1]
    if in_channels < old:
        raise UserError(f"in_channels must be >= {old} (the pretrained first layer's inputs), got {in_channels}")
    if in_channels == old:
        return weight.clone()
    mean = weight.mean(dim=1, keepdim=True)
    return torch.cat([weight, mean.expand(-1, in_channels - old, -1, -1)], dim=1).contiguous()


def find_first_conv(model: nn.Module) -> tuple[nn.Module, str, nn.Conv2d]:
    """(parent, attribute name, conv) of the first convolution of the model's trunk (or of
    its first stream, for a late-fusion model).

    Follows the first registered child from the trunk down (the input side of every
    fcnseg trunk: ``features.0``, ``features.conv1.0``, ``_conv_stem``).
    """
    parent = getattr(model, "backbone", model)
    while True:
        children = list(parent.named_children())
        if not children:
            raise UserError(f"{type(model).__name__}: no first convolution found")
        name, child = children[0]
        if isinstance(child, nn.Conv2d):
            return parent, name, child
        parent = child


def add_input_channels(model: nn.Module, in_channels: int) -> nn.Module:
    """Give the first convolution of ``model``'s trunk ``in_channels`` inputs (in place).

    New channels' filters are the mean of the existing ones
    (:func:`expand_input_channels_weight`). Works for every fcnseg trunk and for a
    bare trunk; for a late-fusion model pass the stream (``model.streams["hha"]``).
    """
    parent, name, conv = find_first_conv(model)
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                    padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                    bias=conv.bias is not None, padding_mode=conv.padding_mode)
    new = new.to(conv.weight.device, conv.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(expand_input_channels_weight(conv.weight, in_channels))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    setattr(parent, name, new)
    return model
