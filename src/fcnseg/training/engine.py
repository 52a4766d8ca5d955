"""The training loop: resumable to the exact step, validated with the reference metrics.

One process, or many under ``torchrun`` (DDP, gloo on CPU / NCCL on GPU). The
loop state (model, optimiser, schedule, scaler, RNG states, data position,
config) is checkpointed atomically every ``checkpoint_every`` steps and at every
epoch end, so a crash or a kill loses at most that much work, and ``--resume``
continues as if nothing had happened (bit-exact in deterministic CPU mode).
"""
from __future__ import annotations

import json
import math
import os
import random
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from ..card import ModelCard, model_inputs
from ..errors import UserError
from ..outpaths import os_error_line
from .checkpoint import load_checkpoint, load_weights_only, save_checkpoint, served_weights
from .config import TrainConfig
from .distributed import ResumableSampler, barrier, init_distributed, is_main
from .ema import WeightAverage
from .losses import lovasz_softmax, segmentation_loss
from .rundir import check_run_dir, clear_run_dir
from .schedule import lr_lambda

RESUMABLE_OVERRIDES = {"epochs", "max_iters", "workers", "progress", "device", "threads", "log_every",
                       "checkpoint_every", "val_every", "val_every_iters", "tensorboard", "run_dir"}
RESPLIT_OVERRIDES = {"batch_size", "grad_accum"}
"""May change together on ``--resume`` while ``batch_size x grad_accum`` stays the same: the
recovery from running out of memory (same images per step, same schedule, smaller passes)."""


# ---------------------------------------------------------------------------- RNG state
def _rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "python": _py_state_to_plain(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _py_state_to_plain(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _worker_ignore_signals(worker_id: int) -> None:
    """Ctrl-C reaches the whole process group: workers leave it to the main process,
    which saves a checkpoint and shuts them down."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class _StopRequested:
    """SIGINT/SIGTERM set a flag; the loop saves a checkpoint at the next step and exits."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "_StopRequested":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: give up at once
        self.signum = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


MIN_BN_VALUES = 16
"""Fewer values per channel than this in a training-mode BatchNorm layer gets a warning."""


class Trainer:
    def __init__(self, config: TrainConfig, resume_state: dict[str, Any] | None = None,
                 overwrite: bool = False) -> None:
        self.cfg = config
        self.resume_state = resume_state
        self.overwrite = overwrite
        self.run_dir = Path(config.run_dir)
        self._in_validation = False
        self._memory_checked = False

    # ------------------------------------------------------------------ set-up
    def _setup_device(self) -> None:
        cfg = self.cfg
        if cfg.device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        else:
            device = cfg.device
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError("device cuda requested but CUDA is not available")
        self.rank, self.world, local = init_distributed(device)
        self.device = torch.device(f"cuda:{local}" if device.startswith("cuda") else "cpu")
        if self.device.type == "cpu":
            from ..runtime.allocator import keep_freed_memory

            keep_freed_memory()  # a CPU training step spends a quarter of its time in page faults otherwise
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=False)
            # oneDNN's CPU kernels may round differently from process to process (their
            # blocking depends on buffer alignment); the native kernels are repeatable.
            torch.backends.mkldnn.enabled = False
            torch.backends.cudnn.benchmark = False
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.main = is_main()

    def _build_data(self) -> None:
        from ..data import collate, get_dataset
        from ..data.transforms import eval_transforms, train_transforms

        cfg = self.cfg
        norm = self.normalization
        prep = self.input_card.preprocessing()  # HHA mean, log-depth mean: from the model's inputs
        options = {**self.input_card.dataset_options(cfg.dataset), **cfg.dataset_options}
        self.train_set = get_dataset(cfg.dataset, cfg.data_root, cfg.train_split, transform=train_transforms(
            norm, crop_size=tuple(cfg.crop_size) if cfg.crop_size else None,
            scale_range=tuple(cfg.scale_range) if cfg.scale_range else None,
            flip=cfg.flip, jitter=cfg.color_jitter, photometric=cfg.photometric, **prep), **options)
        if len(self.train_set) == 0:
            raise UserError(f"{cfg.data_root}: the {cfg.train_split!r} split is empty")
        self.val_set = None
        if cfg.val_split:
            self.val_set = get_dataset(cfg.val_dataset or cfg.dataset, cfg.val_data_root or cfg.data_root,
                                       cfg.val_split, transform=eval_transforms(norm, **prep), **options)
            if self.val_set.num_classes != self.train_set.num_classes:
                raise UserError(f"validation data set has {self.val_set.num_classes} classes but the training "
                                f"set has {self.train_set.num_classes}")
        self.sampler = ResumableSampler(len(self.train_set), cfg.batch_size * self.world, seed=cfg.seed,
                                        rank=self.rank, world=self.world)
        micro = self.sampler.steps_per_epoch()
        self.steps_per_epoch = micro // cfg.grad_accum
        if self.steps_per_epoch == 0:
            raise UserError(f"{len(self.train_set)} training images are fewer than one step "
                            f"(batch {cfg.batch_size} x {self.world} processes x accumulation {cfg.grad_accum})")
        self.total_steps = self.steps_per_epoch * cfg.epochs
        if cfg.max_iters:
            self.total_steps = min(self.total_steps, cfg.max_iters)
        self.collate = collate

    def _loader(self, epoch: int, start_micro: int) -> DataLoader:
        self.train_set.set_epoch(epoch, self.cfg.seed)
        self.sampler.set_epoch(epoch, start_micro)
        return DataLoader(self.train_set, batch_size=self.cfg.batch_size, sampler=self.sampler,
                          num_workers=self.cfg.workers, collate_fn=self.collate, drop_last=True,
                          pin_memory=self.device.type == "cuda", persistent_workers=False,
                          worker_init_fn=_worker_ignore_signals,
                          generator=torch.Generator().manual_seed(self.cfg.seed))

    def _recipe_warnings(self) -> list[str]:
        """Options that are valid alone but odd for this run's length (said once, at start-up)."""
        cfg, out = self.cfg, []
        if cfg.warmup_iters > self.total_steps:
            out.append(f"warning: warmup_iters {cfg.warmup_iters} is larger than the run's {self.total_steps} "
                       f"steps; the learning rate never reaches lr {cfg.lr:g}")
        if self.main:
            for msg in out:
                tqdm_write(msg)
        return out

    def _backbone_state(self) -> tuple[Path, dict[str, torch.Tensor]]:
        """``--backbone-weights`` as fcnseg trunk tensors (``backbone.*``)."""
        from .. import surgery

        cfg = self.cfg
        path = Path(cfg.backbone_weights)
        if path.suffix == ".safetensors":  # already converted by `fcnseg convert` (fcnseg names)
            state = _read_state(str(path))
            return path, {k: v for k, v in state.items() if k.startswith("backbone.")}
        # a torchvision-format ImageNet classifier: convolutionalize fc6/fc7
        if not path.is_file():
            raise UserError(f"{path}: backbone weights file not found")
        raw = load_weights_only(path, "backbone weights file")
        if not isinstance(raw, dict) or not all(torch.is_tensor(v) for v in raw.values()):
            raise UserError(f"{path}: not a state dict of tensors (expected an ImageNet classifier's "
                            "state_dict saved with torch.save)")
        arch = "alexnet" if "alexnet" in cfg.model else "vgg16"
        return path, surgery.convolutionalize(raw, arch)

    def _build_model(self) -> None:
        from ..models import get_model

        cfg = self.cfg
        options = dict(cfg.model_options)
        if cfg.pretrained_backbone:
            options["pretrained_backbone"] = True
        # The weights files are read (and refused if bad) before the net is built: a big trunk takes time.
        trunk = self._backbone_state() if cfg.backbone_weights and self.resume_state is None else None
        model = get_model(cfg.model, self.num_classes, **options)
        if trunk is not None:
            from .. import surgery

            path, state = trunk
            report = surgery.transplant(state, model)
            if self.main:
                tqdm_write(f"backbone weights from {path}: {len(report.copied)} tensors copied, "
                           f"{len(report.untouched)} left at their initialisation")
            if not report.copied:
                raise UserError(f"{path}: no tensor fits model {cfg.model}; wrong file or architecture")
        if cfg.init_from and self.resume_state is None:
            from .. import surgery

            coarse = _read_state(cfg.init_from)
            report = surgery.transplant(coarse, model)
            if not report.copied:
                raise UserError(f"{cfg.init_from}: no tensor fits model {cfg.model}; wrong file or architecture")
            if self.main:
                tqdm_write(f"init from {cfg.init_from}: {len(report.copied)} tensors copied, "
                           f"{len(report.untouched)} new (skip score layers start at zero)")
        model.to(self.device)
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model
        self.ddp_model: nn.Module = model
        if self.world > 1:
            has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
            if cfg.sync_bn and has_bn and not cfg.freeze_bn:
                if self.device.type == "cuda":
                    self.model = model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
                elif self.main:
                    tqdm_write("warning: SyncBatchNorm needs CUDA; on CPU each process keeps its own "
                               "BatchNorm batch statistics (set freeze_bn: true to make them identical)")
            self.ddp_model = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.ema = WeightAverage(self.model, cfg.ema_decay) if cfg.ema_decay > 0 else None

    @property
    def served_model(self) -> nn.Module:
        """The weights the run validates and writes as best/final: the running average of
        the weights when ``ema_decay`` is set, else the trained net itself."""
        return self.ema.module if self.ema is not None else self.model

    def _build_optimizer(self) -> None:
        cfg = self.cfg
        groups: dict[tuple[float, float], list[nn.Parameter]] = {}
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            lr = cfg.lr * (cfg.backbone_lr_mult if name.startswith("backbone.") else 1.0)
            decay = cfg.weight_decay
            if p.ndim <= 1:  # biases and norm scales
                lr *= cfg.bias_lr_mult if name.endswith("bias") else 1.0
                decay = cfg.weight_decay if cfg.bias_decay else 0.0
            groups.setdefault((lr, decay), []).append(p)
        param_groups = [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]
        if cfg.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(param_groups, lr=cfg.lr, momentum=cfg.momentum)
        else:
            self.optimizer = torch.optim.AdamW(param_groups, lr=cfg.lr, betas=(cfg.momentum, 0.999))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(cfg.lr_schedule, self.total_steps, cfg.poly_power, cfg.warmup_iters))
        # Mixed precision is meant for GPUs, but autocast and the loss scaler are device-generic
        # in PyTorch, so the same code path runs (and is tested) on CPU, where bf16 uses the
        # AVX-512 BF16 / AMX instructions of recent CPUs.
        dev = self.device.type
        self.scaler = torch.amp.GradScaler(dev, enabled=cfg.amp == "fp16")
        if cfg.amp != "none":
            dtype = torch.float16 if cfg.amp == "fp16" else torch.bfloat16
            self.autocast = lambda: torch.autocast(dev, dtype=dtype)
        else:
            self.autocast = nullcontext

    def _class_weights(self) -> torch.Tensor | None:
        cw = self.cfg.class_weights
        if cw in (None, "none", False):
            return None
        if isinstance(cw, (list, tuple)):
            if len(cw) != self.num_classes:
                raise UserError(f"class_weights has {len(cw)} values but there are {self.num_classes} classes")
            w = torch.tensor(cw, dtype=torch.float32)
        elif cw in ("median_freq", "sqrt_median_freq"):
            from ..analysis.stats import median_frequency_weights

            raw = self.train_set.transform
            self.train_set.transform = None
            try:
                w = torch.as_tensor(np.asarray(median_frequency_weights(self.train_set)), dtype=torch.float32)
            finally:
                self.train_set.transform = raw
            if cw == "sqrt_median_freq":
                w = w.sqrt()
        else:
            raise UserError(f"class_weights must be none, median_freq, sqrt_median_freq or a list, got {cw!r}")
        return w.to(self.device)

    # ------------------------------------------------------------------ state
    def state(self, epoch: int, micro_in_epoch: int) -> dict[str, Any]:
        extra = {"ema": self.ema.state_dict()} if self.ema is not None else {}
        return {
            **extra,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": _rng_state(),
            "position": {"epoch": epoch, "micro_in_epoch": micro_in_epoch, "step": self.step},
            "best": {"mean_iou": self.best_miou, "step": self.best_step},
            "config": self.cfg.to_dict(),
            "meta": self.meta(),
        }

    def card(self, **provenance: Any) -> ModelCard:
        """The model card of the net being trained (written into every checkpoint and weights file)."""
        palette = getattr(self.train_set, "palette", None)
        return ModelCard.for_net(
            self.model, model=self.cfg.model, num_classes=self.num_classes, inputs=self.input_card.inputs,
            trained=True, class_names=list(getattr(self.train_set, "class_names", [])),
            palette=palette.tolist() if palette is not None else [],
            options=dict(self.cfg.model_options), dataset=self.cfg.dataset, input_scale=self.cfg.input_scale,
            # extra heads' class names (SIFT Flow: geo)
            head_class_names={h: list(getattr(self.train_set, f"{h}_class_names"))
                              for h in getattr(self.model, "head_classes", {})
                              if hasattr(self.train_set, f"{h}_class_names")},
            provenance={"run_dir": str(self.run_dir), "step": self.step, **provenance})

    def meta(self, **provenance: Any) -> dict[str, Any]:
        return self.card(**provenance).to_meta()

    def save(self, epoch: int, micro_in_epoch: int, name: str = "last.pt") -> None:
        """Write a checkpoint, unless the weights or optimiser state went non-finite: a good
        checkpoint is never replaced by a diverged one (every process checks, so all stop)."""
        from ..weights import nonfinite_tensors

        bad = nonfinite_tensors({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()})
        if bad:
            self.log({"type": "nan", "step": self.step, "tensor": bad[0]})
            raise UserError(f"{len(bad)} weight/optimiser tensor(s) became NaN or inf by step {self.step} "
                            f"(e.g. {bad[0]}); {name} was not written. {self._last_good()}")
        if self.main:
            try:
                save_checkpoint(self.state(epoch, micro_in_epoch), self.run_dir / name)
            except OSError as exc:  # disk full, folder made read-only: the previous file is intact
                raise UserError(f"{os_error_line(exc, self.run_dir / name)}; {self._last_good()}") from None
        if name == "last.pt":
            self.last_saved_step = self.step
        barrier()

    def _last_good(self) -> str:
        """Where a run that has to stop can continue from, for its error message."""
        if self.last_saved_step is None:
            return "No checkpoint was written by this run."
        return f"The last good checkpoint is {self.run_dir / 'last.pt'} (step {self.last_saved_step})."

    # ------------------------------------------------------------------ logging
    def log(self, row: dict[str, Any]) -> None:
        if not self.main:
            return
        row = {"time": round(time.time(), 3), **row}
        try:
            with open(self.run_dir / "log.jsonl", "a") as fh:
                fh.write(json.dumps(row) + "\n")
        except OSError as exc:
            raise os_error_line(exc, self.run_dir / "log.jsonl") from None
        if self.tb is not None:
            kind = row.get("type")
            for k, v in row.items():
                if isinstance(v, (int, float)) and k not in ("time", "step", "epoch"):
                    self.tb.add_scalar(f"{kind}/{k}", v, row.get("step", 0))

    # ------------------------------------------------------------------ validation
    def validate(self) -> dict[str, Any]:
        """The reference metrics on the validation split (sharded over processes, all-reduced)."""
        from ..evaluate import evaluate

        assert self.val_set is not None
        was_training = self.model.training
        self._in_validation = True
        try:
            result = evaluate(self.served_model, self.val_set, device=self.device,
                              progress=self.cfg.progress and self.main, flip=self.cfg.val_flip,
                              amp=self.cfg.amp != "none", card=self.input_card)
        finally:
            self._in_validation = False
        if was_training:
            self._train_mode()
        return result.scores

    def _train_mode(self) -> None:
        self.model.train()
        if self.cfg.freeze_bn:
            for m in self.model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()

    # ------------------------------------------------------------------ loop
    def fit(self) -> dict[str, Any]:
        """Train; process-wide switches (deterministic mode, oneDNN) are restored afterwards."""
        saved = (torch.are_deterministic_algorithms_enabled(), torch.backends.mkldnn.enabled,
                 torch.get_num_threads())
        try:
            return self._fit()
        finally:
            torch.use_deterministic_algorithms(saved[0])
            torch.backends.mkldnn.enabled = saved[1]
            torch.set_num_threads(saved[2])

    def _fit(self) -> dict[str, Any]:
        cfg = self.cfg
        self._setup_device()
        check_run_dir(self.run_dir, resume=self.resume_state is not None, overwrite=self.overwrite)
        barrier()  # every process has looked before the main one clears anything
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        random.seed(cfg.seed)
        # Data needs the preset, which comes from the model: build the model on meta first.
        from ..models import get_model

        with torch.device("meta"):
            probe = get_model(cfg.model, cfg.num_classes or 1, **{
                k: v for k, v in cfg.model_options.items()})
        self.normalization = cfg.normalization or getattr(probe, "normalization", "imagenet")
        # what the net is fed and how: one input spec per input, read by data, training and validation
        self.input_card = ModelCard.for_net(probe, model=cfg.model, num_classes=cfg.num_classes or 1,
                                            normalization=self.normalization, input_key=cfg.input_key,
                                            input_scale=cfg.input_scale)
        del probe
        self._build_data()
        self._warnings = self._recipe_warnings()
        self.num_classes = cfg.num_classes or self.train_set.num_classes
        torch.manual_seed(cfg.seed)
        self._build_model()
        self._build_optimizer()
        self.weight = self._class_weights()
        self.step, self.best_miou, self.best_step, self.last_val_step = 0, -1.0, -1, -1
        self.last_val_scores: dict[str, float] | None = None
        self.last_saved_step: int | None = None
        self._bn_checked = False
        start_epoch, start_micro = 0, 0
        if self.resume_state is not None:
            st = self.resume_state
            self.model.load_state_dict(st["model"])
            self.optimizer.load_state_dict(st["optimizer"])
            self.scheduler.load_state_dict(st["scheduler"])
            self.scaler.load_state_dict(st["scaler"])
            _set_rng_state(st["rng"])
            pos = st["position"]
            start_epoch, start_micro, self.step = pos["epoch"], pos["micro_in_epoch"], pos["step"]
            self.last_saved_step = self.step
            self.best_miou, self.best_step = st["best"]["mean_iou"], st["best"]["step"]
            if self.ema is not None:
                self.ema.load_state_dict(st["ema"])
        self.tb = None
        if self.main:
            try:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                if self.overwrite and self.resume_state is None:
                    removed = clear_run_dir(self.run_dir)
                    if removed:
                        tqdm_write(f"--overwrite: removed the earlier run's {', '.join(removed)} from {self.run_dir}")
            except OSError as exc:
                raise os_error_line(exc, self.run_dir, "--run-dir") from None
        barrier()
        if cfg.tensorboard and self.main:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise UserError("--tensorboard needs: pip install 'fcnseg[tensorboard]'") from None
            self.tb = SummaryWriter(str(self.run_dir / "tb"))
        if self.main:
            (self.run_dir / "config.yaml").write_text(_yaml_dump(cfg.to_dict()))
            self.log({"type": "start" if self.resume_state is None else "resume", "step": self.step,
                      "world": self.world, "device": str(self.device), "steps_total": self.total_steps})
            for msg in self._warnings:
                self.log({"type": "warning", "step": self.step, "message": msg})
        from tqdm import tqdm

        bar = tqdm(total=self.total_steps, initial=self.step, disable=not (cfg.progress and self.main),
                   unit="step", dynamic_ncols=True)
        status = "done"
        self._done_micro = 0
        with _StopRequested() as stop, self._out_of_memory_is_a_user_error():
            epoch = start_epoch
            while self.step < self.total_steps and epoch < cfg.epochs:
                status = self._run_epoch(epoch, start_micro, bar, stop)
                start_micro = 0
                if status != "epoch":
                    break
                epoch += 1
                if cfg.val_every and epoch % cfg.val_every == 0 and self.val_set is not None:
                    self._validate_and_track(epoch)
                self.save(epoch, 0)
            else:
                status = "done"
            bar.close()
            if status == "done":
                micro = self._done_micro
                if micro >= self.steps_per_epoch * cfg.grad_accum:  # stopped exactly at an epoch end
                    epoch, micro = epoch + 1, 0
                if self.val_set is not None and self.last_val_step != self.step:
                    self._validate_and_track(epoch)
                self.save(epoch, micro)
                if self.main:
                    # The finished run's weights in the served format: what a run without a held-out
                    # split (trainval) ships, and what a held-out fold is judged by (not best-of-fold).
                    from ..weights import save_weights

                    save_weights(self.served_model.state_dict(), self.run_dir / "final.safetensors",
                                 self.meta(recipe=self.cfg.to_dict(),
                                           **({"val": self.last_val_scores} if self.last_val_scores else {})))
                self.log({"type": "end", "step": self.step, "best_mean_iou": self.best_miou})
        if self.tb is not None:
            self.tb.close()
        summary = {"status": status, "step": self.step, "best_mean_iou": self.best_miou,
                   "best_step": self.best_step, "run_dir": str(self.run_dir),
                   "signal": stop.signum}
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        return summary

    @contextmanager
    def _out_of_memory_is_a_user_error(self) -> Iterator[None]:
        """Running out of memory (a CUDA OOM, a failed CPU allocation) is a one-line error with
        the way on: the last checkpoint and the same step in smaller passes, which --resume takes.

        A CPU process the kernel's OOM killer ends cannot say anything; that is left to the
        shell ("Killed", exit status 137), and the checkpoint rule still bounds what is lost.
        """
        try:
            yield
        except Exception as exc:
            from ..runtime.memory import is_out_of_memory

            if not is_out_of_memory(exc):
                raise
            raise UserError(self._out_of_memory_message()) from None

    def _check_memory(self, x: Any) -> None:
        """Before the first step: refuse a batch that cannot fit, warn about one that may not.

        On the CPU the kernel's OOM killer ends a process that asks for too much without a word
        (or the machine swaps for hours first), so the estimate (:func:`training_bytes`) speaks
        before that; processes of one CPU run share its RAM.
        """
        from ..runtime.memory import GiB, available_bytes, state_bytes, training_bytes

        self._memory_checked = True
        if not torch.is_tensor(x):
            return  # several inputs (RGB-D): no estimate
        dtype = torch.float32 if self.cfg.amp == "none" else torch.bfloat16
        estimate = training_bytes(self.model, tuple(x.shape), dtype)
        have = available_bytes(self.device)
        if estimate is None or have is None:
            return
        if self.device.type == "cpu":
            have //= self.world
        resident = state_bytes(self.model)  # the weights are allocated already
        low, high = (e - resident for e in estimate)
        if high <= have:
            return
        cfg = self.cfg
        what = (f"batch_size {cfg.batch_size} of {x.shape[-2]}x{x.shape[-1]} inputs: a training step needs about "
                f"{low / GiB:.1f}-{high / GiB:.1f} GiB more (estimate), and {have / GiB:.1f} GiB is "
                f"{'free on the GPU' if self.device.type == 'cuda' else 'available RAM'}")
        fix = ("lower batch_size (raising grad_accum keeps the images per step) or crop_size"
               if cfg.batch_size > 1 else "lower crop_size")
        if low > have:
            raise UserError(f"{what}; {fix}")
        msg = f"{what}: it may run out of memory; if it does, {fix}"
        if self.main:
            tqdm_write(f"warning: {msg}")
        self.log({"type": "warning", "step": self.step, "message": msg})

    def _out_of_memory_message(self) -> str:
        cfg = self.cfg
        where = "validation" if self._in_validation else f"training step {self.step + 1}"
        crop = f" of {cfg.crop_size[0]}x{cfg.crop_size[1]} crops" if cfg.crop_size else " of whole images"
        msg = f"out of memory on {self.device} in {where} (batch_size {cfg.batch_size}{crop}). "
        if self._in_validation:
            msg += "Validation runs whole images one at a time; use a smaller val split or a larger device. "
        elif cfg.batch_size > 1:
            smaller, accum = smaller_passes(cfg.batch_size, cfg.grad_accum)
            msg += (f"Same step in smaller passes: `fcnseg train --resume {self.run_dir} --batch-size "
                    f"{smaller} --grad-accum {accum}`. ")
        else:
            msg += "Lower crop_size" + (", or train with amp: bf16. " if cfg.amp == "none" else ". ")
        return msg + self._last_good()

    def _validate_and_track(self, epoch: int) -> None:
        scores = self.validate()
        self.last_val_step = self.step
        self.last_val_scores = {k: scores[k] for k in ("pixel_acc", "mean_acc", "mean_iou", "fw_iou")}
        row = {"type": "val", "step": self.step, "epoch": epoch, **self.last_val_scores, "iou": scores["iou"]}
        self.log(row)
        if self.main:
            tqdm_write(f"step {self.step} epoch {epoch}: val mean IU {scores['mean_iou']:.4f} "
                       f"pixel acc {scores['pixel_acc']:.4f}")
        if scores["mean_iou"] > self.best_miou:
            self.best_miou, self.best_step = float(scores["mean_iou"]), self.step
            self.save(epoch, 0, "best.pt")
            if self.main:
                from ..weights import save_weights

                save_weights(self.served_model.state_dict(), self.run_dir / "best.safetensors",
                             self.meta(val={k: row[k] for k in ("pixel_acc", "mean_acc", "mean_iou", "fw_iou")}))

    def _run_epoch(self, epoch: int, start_micro: int, bar: Any, stop: _StopRequested) -> str:
        cfg = self.cfg
        model = self.ddp_model
        self._train_mode()
        accum = cfg.grad_accum
        micro_total = self.steps_per_epoch * accum
        micro = start_micro
        t0, seen, loss_acc, n_acc = time.perf_counter(), 0, 0.0, 0
        self.optimizer.zero_grad(set_to_none=True)
        for batch in self._loader(epoch, start_micro):
            if micro >= micro_total:
                break
            micro += 1
            if batch is None:  # every sample of this batch was bad (skip_bad)
                continue
            x = self._inputs(batch)
            y = self._targets(batch)
            if not self._memory_checked:
                self._check_memory(x)
            bn_probe = None if self._bn_checked else self._probe_bn_statistics()
            sync = micro % accum == 0
            ctx = model.no_sync() if (self.world > 1 and not sync) else nullcontext()
            with ctx:
                with self.autocast():
                    out = model(x)
                if bn_probe is not None:
                    self._warn_small_bn_statistics(*bn_probe)
                loss = self._loss(out, y) / accum
                self.scaler.scale(loss).backward()
            loss_acc += float(loss.detach()) * accum
            n_acc += 1
            seen += batch["label"].shape[0] * self.world
            if not sync:
                continue
            if not self._finite_step(loss_acc / max(n_acc, 1)) or not self._finite_gradients():
                self.optimizer.zero_grad(set_to_none=True)
                loss_acc, n_acc = 0.0, 0
                continue
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update(self.model)
            self.step += 1
            bar.update(1)
            if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                dt = time.perf_counter() - t0
                row = {"type": "train", "step": self.step, "epoch": epoch, "loss": loss_acc / max(n_acc, 1),
                       "lr": self.optimizer.param_groups[0]["lr"], "img_per_s": seen / max(dt, 1e-9)}
                self.log(row)
                bar.set_postfix(loss=f"{row['loss']:.4g}", lr=f"{row['lr']:.2e}", ips=f"{row['img_per_s']:.2f}")
                t0, seen = time.perf_counter(), 0
            loss_acc, n_acc = 0.0, 0
            if cfg.val_every_iters and self.step % cfg.val_every_iters == 0 and self.val_set is not None:
                self._validate_and_track(epoch)
            if self.step % cfg.checkpoint_every == 0:
                self.save(epoch, micro)
            if self.step >= self.total_steps:
                self._done_micro = micro
                return "done"
            if stop.signum is not None:
                self.save(epoch, micro)
                name = signal.Signals(stop.signum).name
                self.log({"type": "interrupted", "step": self.step, "signal": name})
                tqdm_write(f"{name}: checkpoint saved at step {self.step}; continue with "
                           f"`fcnseg train --resume {self.run_dir}`")
                return "interrupted"
        return "epoch"

    def _inputs(self, batch: dict[str, Any]) -> Any:
        """The net's input(s), as the model card's input spec says (:func:`fcnseg.card.model_inputs`)."""
        return model_inputs(self.input_card, batch, self.device, channels_last=self.cfg.channels_last,
                            non_blocking=True)

    def _targets(self, batch: dict[str, Any]) -> Any:
        """Label map(s): heads other than the main one read ``label_<head>``."""
        heads = getattr(self.model, "head_classes", None)
        if heads:
            main = getattr(self.model, "main_head", next(iter(heads)))
            return {h: batch["label" if h == main else f"label_{h}"].to(self.device).long() for h in heads}
        return batch["label"].to(self.device, non_blocking=True).long()

    def _loss(self, out: Any, y: Any) -> torch.Tensor:
        cfg = self.cfg
        common = dict(ignore_index=255, weight=self.weight, normalize=cfg.loss_normalize,
                      label_smoothing=cfg.label_smoothing, ohem_keep=cfg.ohem_keep)
        if isinstance(out, dict):
            # Multi-task nets (SIFT Flow): the loss sums the heads; class weights are the main head's.
            main = getattr(self.model, "main_head", None)
            loss = sum(segmentation_loss(out[h], y[h], **{**common, "weight": common["weight"] if h == main else None})
                       for h in out)
            main_out, main_y = (out[main], y[main]) if main in out else (None, None)
        elif cfg.loss_sampling_p > 0:
            from ..analysis.sampling import sampled_loss

            # Unbiased patch sampling: kept cells rescaled by 1/(1-p) (see fcnseg.analysis.sampling).
            loss = sampled_loss(out, y, cfg.loss_sampling_p, getattr(self.model, "output_stride", 32),
                                ignore_index=255, weight=self.weight, normalize=cfg.loss_normalize)
            main_out, main_y = out, y
        else:
            loss = segmentation_loss(out, y, **common)
            main_out, main_y = out, y
        if cfg.lovasz_weight > 0 and main_out is not None:
            loss = loss + cfg.lovasz_weight * lovasz_softmax(main_out, main_y, ignore_index=255)
        return loss

    def _finite_step(self, loss_value: float) -> bool:
        if math.isfinite(loss_value):
            return True
        return self._non_finite(f"non-finite loss ({loss_value})", {"loss": str(loss_value)})

    def _finite_gradients(self) -> bool:
        """A finite loss can still have NaN/inf gradients (an overflow inside the backward
        pass); stepping on them would turn every weight into NaN. The fp16 loss scaler already
        skips such steps by design, so only unscaled runs are checked here."""
        if self.scaler.is_enabled():
            return True
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if not grads:
            return True
        norm = torch.nn.utils.get_total_norm(grads)
        if bool(torch.isfinite(norm)):
            return True
        return self._non_finite("non-finite gradients", {"grad_norm": str(norm.item())})

    def _non_finite(self, what: str, row: dict[str, Any]) -> bool:
        msg = f"{what} at step {self.step + 1}"
        if self.cfg.nan_policy == "skip":
            self.log({"type": "skipped", "step": self.step + 1, **row})
            tqdm_write(msg + ": batch skipped")
            return False
        self.log({"type": "nan", "step": self.step + 1, **row})
        raise UserError(msg + "; training stopped (lower the lr, or set nan_policy: skip). " + self._last_good())

    def _probe_bn_statistics(self) -> tuple[list[tuple[int, str]], list[Any]]:
        """Hooks that record, during the first training forward, how many values per channel
        each training-mode BatchNorm layer normalises over (no extra forward: that would move
        the RNG and the running statistics, and resumed runs must stay bit-exact)."""
        self._bn_checked = True
        counts: list[tuple[int, str]] = []
        hooks = []
        for name, module in self.model.named_modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training:
                hooks.append(module.register_forward_pre_hook(
                    lambda m, inp, name=name: counts.append((inp[0].numel() // max(inp[0].shape[1], 1), name))))
        return counts, hooks

    def _warn_small_bn_statistics(self, counts: list[tuple[int, str]], hooks: list[Any]) -> None:
        """Warn once when a BatchNorm layer in training mode normalises over very few values
        per channel (batch x height x width of its input). Its batch statistics are then noise,
        and where they nearly vanish its backward pass multiplies gradients by up to
        gamma/sqrt(eps) (~32 for eps 1e-3): over the ~40 BatchNorm layers of a Lite0 trunk at 1x1
        maps the gradient overflows, and where exactly depends on the CPU's rounding
        (measured: batch 2 of 24x32 crops, 2 values per channel at stride 32, grad norms
        1e3..1e16, NaN by step 7 on one CPU and not on another). Frozen statistics are stable."""
        for h in hooks:
            h.remove()
        if counts:
            n, name = min(counts)
            n *= self.world  # SyncBatchNorm or not, say what one step sees in all
            if n < MIN_BN_VALUES:
                msg = (f"warning: BatchNorm layer {name} normalises over only {n} value(s) per channel "
                       f"(batch x map size at its stride); its statistics are noise and training may "
                       f"diverge. Set freeze_bn: true, or use a larger batch_size or crop_size")
                self.log({"type": "warning", "step": self.step, "message": msg})
                tqdm_write(msg)


def tqdm_write(msg: str) -> None:
    from tqdm import tqdm

    tqdm.write(msg, file=sys.stderr)


def _yaml_dump(data: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)


def _read_state(path: str) -> dict[str, torch.Tensor]:
    """A model state dict from a training checkpoint or a weights file (for --init-from)."""
    p = Path(path)
    if p.suffix == ".safetensors":
        from ..weights import load_weights

        state = load_weights(p)[0]
    else:
        state = served_weights(load_checkpoint(p))
    from ..weights import check_finite

    check_finite(state, str(p))
    return state


def resume(run_dir: str | Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Continue the run in ``run_dir`` from its last checkpoint."""
    run_dir = Path(run_dir)
    ckpt = run_dir / "last.pt"
    if not ckpt.is_file():
        raise UserError(f"{run_dir}: no last.pt checkpoint to resume from")
    state = load_checkpoint(ckpt)
    from ..weights import check_finite

    check_finite({"model": state["model"], "optimizer": state["optimizer"]}, str(ckpt))
    data = dict(state["config"])
    before = dict(data)
    for key, value in (overrides or {}).items():
        if key not in RESUMABLE_OVERRIDES | RESPLIT_OVERRIDES and data.get(key) != value:
            raise UserError(f"option {key} cannot change on --resume (it would change the run); "
                            f"allowed: {', '.join(sorted(RESUMABLE_OVERRIDES))}, and batch_size with "
                            f"grad_accum when their product stays the same")
        data[key] = value
    _resplit_position(state, before, data)
    data["run_dir"] = str(run_dir)
    cfg = TrainConfig.from_dict(data, str(ckpt))
    return Trainer(cfg, resume_state=state).fit()


def smaller_passes(batch_size: int, grad_accum: int) -> tuple[int, int]:
    """The same images per step (``batch_size x grad_accum``) in the largest smaller passes: the
    largest divisor of the product below ``batch_size`` (half an even batch), and the passes."""
    total = batch_size * grad_accum
    smaller = next(b for b in range(batch_size - 1, 0, -1) if total % b == 0)
    return smaller, total // smaller


def _resplit_position(state: dict[str, Any], before: dict[str, Any], after: dict[str, Any]) -> None:
    """Convert the checkpoint's position when ``batch_size`` / ``grad_accum`` change on resume.

    The sampler's order depends on the epoch only, and a checkpoint lies on a step boundary, so
    a step of B images in A passes becomes the same B x A images in A' passes of B': the images
    per step, the steps per epoch and the schedule are unchanged. Not bit-identical to the
    uninterrupted run: BatchNorm sees batches of B' instead of B.
    """
    old_b, old_a = int(before.get("batch_size", 1)), int(before.get("grad_accum", 1))
    new_b, new_a = int(after.get("batch_size", 1)), int(after.get("grad_accum", 1))
    if (old_b, old_a) == (new_b, new_a):
        return
    if old_b * old_a != new_b * new_a:
        example = "" if old_b == 1 else " (e.g. --batch-size {} --grad-accum {})".format(*smaller_passes(old_b, old_a))
        raise UserError(f"--batch-size {new_b} --grad-accum {new_a} on --resume: the run takes "
                        f"{old_b} x {old_a} = {old_b * old_a} images per step, and batch_size x grad_accum "
                        f"must stay {old_b * old_a}{example}")
    pos = dict(state["position"])
    images = pos["micro_in_epoch"] * old_b
    if images % new_b:
        raise UserError(f"the checkpoint stopped {pos['micro_in_epoch']} batches of {old_b} into an epoch, "
                        f"which is not a whole number of batches of {new_b}")
    pos["micro_in_epoch"] = images // new_b
    state["position"] = pos
