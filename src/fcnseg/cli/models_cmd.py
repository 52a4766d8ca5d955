"""``fcnseg models``: list every architecture with its parameter count, output stride and
receptive field, and the trained models shipped in the package."""
from __future__ import annotations

import argparse

import torch

from .common import add_json, emit_json


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("models", help="list the available models",
                       description="List every model name with parameter count, output stride and "
                                   "receptive field (built on the meta device: no memory, no weights).")
    p.add_argument("--num-classes", type=int, default=None,
                   help="count parameters for this many classes (default: each model's default)")
    add_json(p, "the list")
    return p


def describe_models(num_classes: int | None = None) -> list[dict]:
    """One row per registered model: name, trunk, classes, params, stride, receptive field."""
    from ..models import get_model, list_models, model_spec

    rows = []
    for name in list_models():
        spec = model_spec(name)
        with torch.device("meta"):
            model = get_model(name, num_classes)
        rows.append({
            "name": name,
            "trunk": spec.trunk,
            "num_classes": getattr(model, "num_classes", num_classes or spec.default_num_classes),
            "params": sum(p.numel() for p in model.parameters()),
            "output_stride": spec.output_stride,
            "receptive_field": getattr(model, "receptive_field", None),
            "description": spec.description,
        })
    return rows


def describe_shipped() -> list[dict]:
    """One row per trained model shipped in the package: name, architecture, classes, data set."""
    from ..shipped import DEFAULT_MODEL, list_shipped_models, shipped_weights_path
    from ..weights import read_meta

    rows = []
    for name in list_shipped_models():
        meta = read_meta(shipped_weights_path(name))
        rows.append({"name": name, "model": meta.get("model"), "num_classes": meta.get("num_classes"),
                     "dataset": meta.get("dataset"), "class_names": meta.get("class_names"),
                     "default": name == DEFAULT_MODEL})
    return rows


def run(args: argparse.Namespace) -> int:
    rows = describe_models(args.num_classes)
    shipped = describe_shipped()
    if emit_json(args.json, {"architectures": rows, "shipped": shipped}):
        return 0
    print(f"{'model':<26} {'trunk':<20} {'classes':>7} {'params':>10} {'stride':>6} {'RF':>5}")
    for r in rows:
        rf = r["receptive_field"] if r["receptive_field"] is not None else "-"
        print(f"{r['name']:<26} {r['trunk']:<20} {r['num_classes']:>7} {r['params'] / 1e6:>9.2f}M "
              f"{r['output_stride']:>6} {rf:>5}")
    print("(architectures: untrained unless weights are given; RF = receptive field in pixels)")
    print()
    print(f"{'trained model (shipped)':<26} {'architecture':<20} {'classes':>7}  data set")
    for r in shipped:
        print(f"{r['name']:<26} {str(r['model']):<20} {str(r['num_classes']):>7}  {r['dataset'] or '-'}"
              + ("  (default of predict, eval, demo)" if r["default"] else ""))
    return 0
