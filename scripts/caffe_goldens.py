"""Write the real-Caffe goldens of tests/goldens/caffe/ (run by scripts/caffe_goldens.sh).

Runs under Debian's /usr/bin/python3 with the pycaffe built by caffe_goldens.sh on its
PYTHONPATH; needs numpy and pycaffe only (not torch, not fcnseg's package). The seeded
recipe for parameters and inputs is fcnseg's own src/fcnseg/caffe/seeded.py, loaded by
file path, so the tests regenerate exactly what Caffe was given.

For every reference net: the val/test prototxt with its Python data layer replaced by
Input layers (label tops dropped, loss and accuracy layers dropped), parameters from
the recipe, run by Caffe in TEST phase at each size of SIZES; stored: the output
blobs (the score layers) and every Crop layer's input and output, as
``seeded.stored_view`` subsamples them, plus checksums of the inputs and parameters.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("fcnseg_seeded", HERE.parent / "src/fcnseg/caffe/seeded.py")
seeded = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(seeded)


def import_caffe():
    """pycaffe's package __init__ imports caffe.io, which imports scikit-image and scipy
    for image helpers the goldens never use; stand-in modules avoid installing them."""
    for name in ("skimage", "skimage.io", "skimage.transform", "scipy", "scipy.ndimage"):
        try:
            __import__(name)
        except ImportError:
            mod = types.ModuleType(name)
            mod.zoom = mod.resize = None
            sys.modules[name] = mod
    import caffe
    from caffe.proto import caffe_pb2
    from google.protobuf import text_format
    caffe.set_mode_cpu()
    return caffe, caffe_pb2, text_format


REFERENCE_NETS = [
    ("voc-fcn32s", "val"), ("voc-fcn16s", "val"), ("voc-fcn8s", "val"), ("voc-fcn8s-atonce", "val"),
    ("voc-fcn-alexnet", "val"), ("pascalcontext-fcn32s", "val"), ("pascalcontext-fcn16s", "val"),
    ("pascalcontext-fcn8s", "val"), ("nyud-fcn32s-color", "test"), ("nyud-fcn32s-hha", "test"),
    ("nyud-fcn32s-color-d", "test"), ("nyud-fcn32s-color-hha", "test"), ("siftflow-fcn32s", "test"),
    ("siftflow-fcn16s", "test"), ("siftflow-fcn8s", "test")]
SIZES = [(1, 1), (37, 53), (64, 80), (503, 517)]
LABEL_TOPS = {"label", "sem", "geo"}
DROPPED_TYPES = {"SoftmaxWithLoss", "Accuracy"}
OUTPUT_PIXELS = 2048      # stored pixels per channel of a score blob (37x53 full, 64x80 every 2nd)
INTERMEDIATE_PIXELS = 512  # ... of a crop's input or output


def input_channels(top: str) -> int:
    return 1 if top == "depth" else 3


def deploy_prototxt(caffe_pb2, text_format, path: Path) -> tuple[str, dict[str, int]]:
    """The reference net with Input layers in place of its Python data layer."""
    src = caffe_pb2.NetParameter()
    text_format.Merge(path.read_text(), src)
    out = caffe_pb2.NetParameter()
    out.name = src.name or path.parent.name
    inputs: dict[str, int] = {}
    for layer in src.layer:
        if layer.type == "Python":
            new = out.layer.add()
            new.name, new.type = layer.name, "Input"
            for top in layer.top:
                if top in LABEL_TOPS:
                    continue
                new.top.append(top)
                inputs[top] = input_channels(top)
                shape = new.input_param.shape.add()
                shape.dim.extend([1, inputs[top], 8, 8])
            continue
        if layer.type in DROPPED_TYPES or any(b in LABEL_TOPS for b in layer.bottom):
            continue
        out.layer.add().CopyFrom(layer)
    return text_format.MessageToString(out), inputs


def checksum(a: np.ndarray) -> list[float]:
    a = np.asarray(a, dtype=np.float64)
    return [float(a.sum()), float((a * a).sum()), float(a.flat[0]), float(a.flat[-1])]


def run_net(caffe, caffe_pb2, text_format, ref: Path, name: str, split: str, out_dir: Path, sizes,
            save: Path | None = None) -> dict:
    text, inputs = deploy_prototxt(caffe_pb2, text_format, ref / name / f"{split}.prototxt")
    with tempfile.NamedTemporaryFile("w", suffix=".prototxt", delete=False) as f:
        f.write(text)
    net = caffe.Net(f.name, caffe.TEST)
    os.unlink(f.name)
    params = {}
    for layer, blobs in net.params.items():
        kind = net.layer_dict[layer].type
        params[layer] = {"type": kind, "blobs": []}
        for i, blob in enumerate(blobs):
            blob.data[...] = seeded.seeded_blob(layer, i, kind, blob.data.shape)
            params[layer]["blobs"].append({"shape": list(blob.data.shape), "checksum": checksum(blob.data)})
    if save is not None:
        net.save(str(save))
    crops = [(lname, list(net.bottom_names[lname]), list(net.top_names[lname]))
             for lname, layer in zip(net._layer_names, net.layers) if layer.type == "Crop"]
    arrays: dict[str, np.ndarray] = {}
    meta = {"prototxt": f"{name}/{split}.prototxt", "inputs": inputs, "outputs": list(net.outputs),
            "crops": [{"layer": c[0], "bottom": c[1][0], "top": c[2][0]} for c in crops],
            "params": params, "sizes": {}}
    for h, w in sizes:
        feed = {}
        for blob, ch in inputs.items():
            feed[blob] = seeded.seeded_input(blob, (1, ch, h, w))
            net.blobs[blob].reshape(1, ch, h, w)
        net.reshape()
        t0 = time.time()
        net.forward(**feed)
        seconds = time.time() - t0
        key = f"{h}x{w}"
        entry = {"forward_seconds": round(seconds, 3),
                 "input_checksums": {b: checksum(v) for b, v in feed.items()}, "blobs": {}}
        wanted = [(b, OUTPUT_PIXELS, h * w == 1) for b in net.outputs]
        for c in crops:
            wanted += [(c[1][0], INTERMEDIATE_PIXELS, False), (c[2][0], INTERMEDIATE_PIXELS, False)]
        for blob, pixels, all_channels in wanted:
            if blob in entry["blobs"]:
                continue
            data = net.blobs[blob].data
            values, channels, stride = seeded.stored_view(data, pixels, all_channels)
            arrays[f"{key}/{blob}"] = values.astype(np.float32)
            entry["blobs"][blob] = {"shape": list(data.shape), "channels": channels, "stride": stride,
                                    "max_abs": float(np.abs(data).max())}
        meta["sizes"][key] = entry
        print(f"{name} {key}: {seconds:.2f} s, outputs "
              + ", ".join(f"{b} {tuple(net.blobs[b].data.shape)}" for b in net.outputs), flush=True)
    np.savez_compressed(out_dir / f"{name}.npz", **arrays)
    return meta


# ---------------------------------------------------------------------------- small real caffemodels
SMALL_LAYER = """name: "small_layer"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 4 dim: 11 dim: 13 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 6 kernel_size: 3 stride: 2 pad: 1 group: 2 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "norm1" type: "LRN" bottom: "conv1" top: "norm1" lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 k: 1.5 } }
layer { name: "pool1" type: "Pooling" bottom: "norm1" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
        convolution_param { num_output: 4 kernel_h: 3 kernel_w: 1 pad_h: 2 pad_w: 0 dilation: 2 } }
layer { name: "norm2" type: "LRN" bottom: "conv2" top: "norm2"
        lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 norm_region: WITHIN_CHANNEL } }
layer { name: "pool2" type: "Pooling" bottom: "norm2" top: "pool2" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "upscore" type: "Deconvolution" bottom: "pool2" top: "upscore" param { lr_mult: 0 }
        convolution_param { num_output: 4 kernel_size: 10 stride: 6 group: 2 bias_term: false } }
layer { name: "up2" type: "Deconvolution" bottom: "pool2" top: "up2"
        convolution_param { num_output: 3 kernel_size: 5 stride: 3 pad: 1 } }
layer { name: "crop" type: "Crop" bottom: "upscore" bottom: "data" top: "crop" crop_param { axis: 2 offset: 1 offset: 2 } }
layer { name: "score_data" type: "Convolution" bottom: "data" top: "score_data" convolution_param { num_output: 4 kernel_size: 1 } }
layer { name: "fuse" type: "Eltwise" bottom: "crop" bottom: "score_data" top: "fuse"
        eltwise_param { operation: SUM coeff: 1 coeff: -0.5 } }
layer { name: "prod" type: "Eltwise" bottom: "crop" bottom: "score_data" top: "prod" eltwise_param { operation: PROD } }
layer { name: "max" type: "Eltwise" bottom: "fuse" bottom: "prod" top: "max" eltwise_param { operation: MAX } }
layer { name: "scale" type: "Scale" bottom: "max" top: "scale" scale_param { bias_term: true } }
layer { name: "fc" type: "InnerProduct" bottom: "pool2" top: "fc" inner_product_param { num_output: 5 } }
"""

SMALL_V1 = """name: "small_v1"
input: "data"
input_dim: 1 input_dim: 4 input_dim: 9 input_dim: 10
layers { name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1" blobs_lr: 1 blobs_lr: 2
         convolution_param { num_output: 6 kernel_size: 3 pad: 1 group: 2 } }
layers { name: "relu1" type: RELU bottom: "conv1" top: "conv1" }
layers { name: "pool1" type: POOLING bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layers { name: "norm1" type: LRN bottom: "pool1" top: "norm1" lrn_param { local_size: 5 alpha: 0.3 beta: 0.75 } }
layers { name: "conv2" type: CONVOLUTION bottom: "norm1" top: "conv2"
         convolution_param { num_output: 4 kernel_size: 3 pad: 1 group: 2 } }
layers { name: "upsample" type: DECONVOLUTION bottom: "conv2" top: "upsample"
         convolution_param { num_output: 2 kernel_size: 4 stride: 2 } }
layers { name: "fc" type: INNER_PRODUCT bottom: "conv2" top: "fc" inner_product_param { num_output: 3 } }
layers { name: "prob" type: SOFTMAX bottom: "fc" top: "prob" }
"""


def _fill_and_run(caffe, net, name: str) -> dict[str, np.ndarray]:
    arrays = {}
    for layer, blobs in net.params.items():
        kind = net.layer_dict[layer].type
        for i, blob in enumerate(blobs):
            blob.data[...] = seeded.seeded_blob(f"{name}:{layer}", i, kind, blob.data.shape)
            arrays[f"param/{layer}/{i}"] = blob.data.copy()
    x = seeded.seeded_input(f"{name}:data", net.blobs["data"].data.shape)
    net.forward(data=x)
    for blob, value in net.blobs.items():
        arrays[f"blob/{blob}"] = value.data.copy()
    return arrays


def write_fixtures(caffe, caffe_pb2, text_format, out: Path) -> dict:
    """Small nets, their caffemodels as real Caffe writes them, their blobs and outputs.

    small_layer: current ``layer`` format; caffemodel written by Caffe's ``Net::ToProto``
    (``net.save``). small_v1: old V1 ``layers`` format with 4-D legacy blob dimensions,
    serialised by protobuf from Caffe's own caffe.proto (Caffe itself no longer writes
    V1); Caffe's reading (upgrading) of that file is checked here to give the very same
    parameters and outputs. Parameters: the seeded recipe keyed ``"<net>:<layer>"``.
    """
    out.mkdir(parents=True, exist_ok=True)
    meta = {}
    for name, text in (("small_layer", SMALL_LAYER), ("small_v1", SMALL_V1)):
        proto = out / f"{name}.prototxt"
        proto.write_text(text)
        net = caffe.Net(str(proto), caffe.TEST)
        arrays = _fill_and_run(caffe, net, name)
        model = out / f"{name}.caffemodel"
        if name == "small_layer":
            net.save(str(model))
        else:
            msg = caffe_pb2.NetParameter()
            msg.name = name
            for layer in text_format.Merge(text, caffe_pb2.NetParameter()).layers:
                v1 = msg.layers.add()
                v1.CopyFrom(layer)  # the whole V1 definition, as old caffemodels hold it
                for i in range(len(net.params[layer.name]) if layer.name in net.params else 0):
                    data = arrays[f"param/{layer.name}/{i}"]
                    dims = (1,) * (4 - data.ndim) + data.shape
                    b = v1.blobs.add()
                    b.num, b.channels, b.height, b.width = dims
                    b.data.extend(data.ravel().tolist())
            model.write_bytes(msg.SerializeToString())
            again = caffe.Net(str(proto), str(model), caffe.TEST)  # Caffe reads (upgrades) it
            for layer, blobs in again.params.items():
                for i, blob in enumerate(blobs):
                    assert np.array_equal(blob.data, arrays[f"param/{layer}/{i}"]), (layer, i)
            again.forward(data=arrays["blob/data"])
            for blob, value in again.blobs.items():
                assert np.array_equal(value.data, arrays[f"blob/{blob}"]), blob
        np.savez_compressed(out / f"{name}.npz", **arrays)
        meta[name] = {"types": {layer: net.layer_dict[layer].type for layer in net.params},
                      "bytes": model.stat().st_size}
        print(f"fixture {name}: {model.stat().st_size} bytes, {len(net.params)} layers with blobs", flush=True)
    return meta


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--reference", type=Path, required=True)
    ap.add_argument("--caffe-commit", default="unknown")
    ap.add_argument("--nets", nargs="*", help="only these reference nets (default: all)")
    ap.add_argument("--save-alexnet", type=Path,
                    help="also save the seeded voc-fcn-alexnet as a caffemodel here (230 MB; not committed)")
    args = ap.parse_args()
    caffe, caffe_pb2, text_format = import_caffe()
    args.out.mkdir(parents=True, exist_ok=True)
    manifest_path = args.out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"nets": {}}
    manifest.update({
        "caffe": f"BVLC/caffe {args.caffe_commit}, CPU_ONLY, OpenBLAS, built by scripts/caffe_goldens.sh",
        "seed": seeded.SEED,
        "recipe": "src/fcnseg/caffe/seeded.py (seeded_blob, seeded_input, stored_view)",
        "sizes": [f"{h}x{w}" for h, w in SIZES],
        "stored": {"outputs_max_pixels": OUTPUT_PIXELS, "crops_max_pixels": INTERMEDIATE_PIXELS},
        "numpy": np.__version__, "python": sys.version.split()[0]})
    manifest["fixtures"] = write_fixtures(caffe, caffe_pb2, text_format, args.out / "fixtures")
    manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    for name, split in REFERENCE_NETS:
        if args.nets and name not in args.nets:
            continue
        manifest["nets"][name] = run_net(caffe, caffe_pb2, text_format, args.reference, name, split,
                                         args.out, SIZES,
                                         args.save_alexnet if name == "voc-fcn-alexnet" else None)
        manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
