"""The CaffeNet (AlexNet) trunk of ``voc-fcn-alexnet``: conv1 11x11/4 with pad 100,
max pooling then LRN, grouped conv2/4/5, fc6 as a 6x6 conv, fc7 1x1."""
from __future__ import annotations

from typing import Iterator

from torch import Tensor, nn

from .geometry import LayerSpec, layer_specs


class AlexNetTrunk(nn.Module):
    out_channels = {"out": 4096}
    normalization = "caffe"

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 96, 11, stride=4, padding=100),  # 0 conv1
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, ceil_mode=True),  # 2 pool1
            nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0),  # 3 norm1
            nn.Conv2d(96, 256, 5, padding=2, groups=2),  # 4 conv2
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, ceil_mode=True),  # 6 pool2
            nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0),  # 7 norm2
            nn.Conv2d(256, 384, 3, padding=1),  # 8 conv3
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 384, 3, padding=1, groups=2),  # 10 conv4
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1, groups=2),  # 12 conv5
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, ceil_mode=True),  # 14 pool5
        )
        self.fc6 = nn.Conv2d(256, 4096, 6)
        self.relu6 = nn.ReLU(inplace=True)
        self.drop6 = nn.Dropout(0.5)
        self.fc7 = nn.Conv2d(4096, 4096, 1)
        self.relu7 = nn.ReLU(inplace=True)
        self.drop7 = nn.Dropout(0.5)
        self.caffe_names = {"conv1": "features.0", "conv2": "features.4", "conv3": "features.8",
                            "conv4": "features.10", "conv5": "features.12", "fc6": "fc6", "fc7": "fc7"}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        x = self.fc6(self.features(x))
        x = self.drop7(self.relu7(self.fc7(self.drop6(self.relu6(x)))))
        return {"out": x}

    def tap_specs(self, tap: str) -> list[LayerSpec]:
        if tap != "out":
            raise KeyError(f"AlexNet trunk has no tap {tap!r} (FCN-AlexNet is 32s only)")
        return list(layer_specs(self.features)) + list(layer_specs(self.fc6)) + list(layer_specs(self.fc7))

    def layer_specs(self) -> Iterator[LayerSpec]:
        yield from self.tap_specs("out")
