"""``fcnseg train``: train an FCN from a YAML config plus command-line overrides."""
from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from ..training.config import add_config_arguments

    p = sub.add_parser(
        "train", help="train a model",
        description="Train an FCN. Options come from the dataclass defaults, then --config FILE (YAML), "
                    "then the command line (values are YAML: 0.01, true, [288, 384], null). "
                    "Launch with torchrun for several processes (DDP).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("config_file", nargs="?", default=None, metavar="CONFIG",
                   help="YAML config (e.g. configs/camvid-fcn8s-lite0.yaml)")
    p.add_argument("--config", dest="config_opt", default=None, help="same as the positional CONFIG")
    p.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its last checkpoint (config from the checkpoint)")
    p.add_argument("--overwrite", action="store_true",
                   help="start a new run in a --run-dir that already holds one, removing that run's "
                        "checkpoints, config, log and TensorBoard files (without it such a folder is refused)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    add_config_arguments(p)
    return p


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from ..training import load_config, train
    from ..training.config import TrainConfig

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    overrides = {k: v for k, v in vars(args).items() if k in names}
    if args.resume:
        if args.overwrite:
            from ..errors import UserError

            raise UserError("--overwrite and --resume are alternatives: --resume continues the run, "
                            "--overwrite starts a new one in its place")
        from ..training.config import _parse_value
        from ..training.engine import resume

        summary = resume(args.resume, {k: _parse_value(v) if isinstance(v, str) else v
                                       for k, v in overrides.items()})
    else:
        cfg = load_config(args.config_file or args.config_opt, overrides)
        if args.print_config:
            print(json.dumps(cfg.to_dict(), indent=2))
            return 0
        summary = train(cfg, overwrite=args.overwrite)
    print(json.dumps(summary))
    if summary["status"] == "interrupted":
        return 128 + int(summary["signal"] or 2)
    return 0
