"""Training: config, checkpoints, losses, schedules, the loop, and distributed helpers."""
from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig, load_config

__all__ = ["TrainConfig", "load_config", "load_checkpoint", "save_checkpoint", "train"]


def train(config: "TrainConfig") -> dict:
    """Run training with ``config``; returns the final summary (best mean IU, paths)."""
    from .engine import Trainer

    return Trainer(config).fit()
