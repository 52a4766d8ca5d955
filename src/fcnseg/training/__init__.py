"""Training: config, checkpoints, losses, schedules, the loop, and distributed helpers."""
from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig, load_config

__all__ = ["TrainConfig", "load_config", "load_checkpoint", "save_checkpoint", "train"]


def train(config: "TrainConfig", overwrite: bool = False) -> dict:
    """Run training with ``config``; returns the final summary (best mean IU, paths).

    A ``run_dir`` that already holds a run is refused unless ``overwrite`` (which replaces
    that run's files); continue a run with :func:`fcnseg.training.engine.resume` instead."""
    from .engine import Trainer

    return Trainer(config, overwrite=overwrite).fit()
