"""One training run from a composed Hydra config: fit, test the best checkpoint, report.

`train.py` at the project root is the Hydra entry point; it calls `train(cfg)`.
"""

from __future__ import annotations

import json
import logging
import os
import random
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from lenet5.callbacks import EpochTimer, skip_unused_hooks
from lenet5.checkpoints import CheckpointError, load_checkpoint
from lenet5.mnist import DataError
from lenet5.module import LeNet5Module, NonFiniteLoss

# Lightning prints through a console handler of its own and also propagates to the root logger,
# which Hydra configures (console and the run's train.log): keep only Hydra's, so each line shows once.
logging.getLogger("lightning").handlers.clear()

IMAGES_PER_STEP = 256  # speed.batches_per_step=auto: training images per Lightning step (see batches_per_step)
# The metrics that TensorBoard's HParams tab shows against each run's hyperparameters.
HPARAM_METRICS = ("val/error_best", "test/error")


class ConfigError(Exception):
    """A configuration that composes but cannot be built; the message names the fix."""


# Output layers, and the losses that make sense on them.
HEAD_LOSSES = {"lenet5.layers.RBFOutput": ("lenet5.MAPLoss", "lenet5.MLELoss", "lenet5.losses.MAPLoss",
                                           "lenet5.losses.MLELoss"),
               "lenet5.layers.SoftmaxOutput": ("torch.nn.CrossEntropyLoss",)}
NON_NEGATIVE_ACTIVATIONS = ("torch.nn.ReLU",)


def check_config(cfg: DictConfig) -> None:
    """Reject values and combinations that cannot work, saying why and what to choose instead."""
    for key in ("data.batch_size", "data.eval_batch_size", "trainer.max_epochs"):
        value = OmegaConf.select(cfg, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{key} must be a whole number of at least 1, got {value!r}")
    if cfg.trainer.get("accelerator") == "gpu" and not torch.cuda.is_available():
        raise ConfigError(f"trainer={cfg.trainer.get('strategy') or 'gpu'} needs a CUDA GPU and this machine shows none "
                          f"(torch.cuda.is_available() is False); use trainer=cpu, or trainer=ddp_cpu for DDP")
    net = cfg.model.net
    output, loss = net.output.get("_target_"), cfg.model.loss.get("_target_")
    if output in HEAD_LOSSES and loss not in HEAD_LOSSES[output]:
        raise ConfigError(f"the loss {loss} does not fit the output layer {output}; choose the pair with "
                          f"model/head=rbf_map, rbf_mle or softmax_ce")
    if output == "lenet5.layers.RBFOutput" and net.activation.get("_target_") in NON_NEGATIVE_ACTIVATIONS:
        raise ConfigError("model/activation=relu cannot feed the RBF output: F6's states would never be negative, "
                          "but the digit bitmaps it must match are -1 where the digit has no ink. "
                          "Choose model/head=softmax_ce, or model/activation=scaled_tanh or tanh")


def _container(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def choose_seed(cfg: DictConfig) -> int:
    """Use cfg.seed, or draw one and write it back into the run's saved config."""
    if cfg.seed is None:
        cfg.seed = random.SystemRandom().randrange(2**31)
        if HydraConfig.initialized():
            saved = Path(HydraConfig.get().runtime.output_dir) / HydraConfig.get().output_subdir / "config.yaml"
            if saved.parent.is_dir():
                OmegaConf.save(cfg, saved)
    return int(cfg.seed)


def torch_threads(cfg: DictConfig) -> int:
    """cfg.threads, or with 'auto' the cores divided among the processes that share them: the jobs
    a parallel launcher (hydra/launcher=joblib) runs at once, times the DDP processes of a job on
    the CPU (trainer=ddp_cpu), so that they do not oversubscribe the cores."""
    if cfg.threads != "auto":
        return int(cfg.threads)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    jobs = 1
    if HydraConfig.initialized() and "n_jobs" in (launcher := HydraConfig.get().launcher):
        jobs = cores if launcher.n_jobs in (None, -1) else max(1, int(launcher.n_jobs))
    devices = cfg.trainer.get("devices", 1)
    if cfg.trainer.get("accelerator") == "cpu" and isinstance(devices, int) and devices > 1:
        jobs *= devices
    return max(1, cores // jobs)


def configure_speed(cfg: DictConfig, module: LeNet5Module) -> str:
    """The fastest CPU path for the batch size (measured by `python -m lenet5.bench`):
    oneDNN's convolutions cost more per call than PyTorch's own at tiny batches, and at batches of
    32 and more they run faster on channels-last tensors. `speed.*: auto` picks by data.batch_size."""
    speed, batch = cfg.get("speed") or {}, cfg.data.batch_size
    mkldnn = speed.get("mkldnn", "auto")
    mkldnn = batch >= 8 if mkldnn == "auto" else bool(mkldnn)
    channels_last = speed.get("channels_last", "auto")
    channels_last = mkldnn and batch >= 32 if channels_last == "auto" else bool(channels_last)
    torch.backends.mkldnn.enabled = mkldnn
    if channels_last:
        module.net.to(memory_format=torch.channels_last)
    return f"oneDNN {'on' if mkldnn else 'off'}, channels-last {'on' if channels_last else 'off'}"


def flat_hparams(cfg: DictConfig) -> dict[str, Any]:
    """The run's choices and numbers, flat, for TensorBoard's HParams tab and hparams.yaml."""
    flat: dict[str, Any] = {}
    if HydraConfig.initialized():
        flat.update({k: v for k, v in HydraConfig.get().runtime.choices.items() if not k.startswith("hydra/")})

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if not str(key).startswith("_"):
                    walk(value, f"{prefix}.{key}" if prefix else str(key))
        elif isinstance(node, (bool, int, float, str)):
            flat[prefix] = node
        elif node is not None:
            flat[prefix] = str(node)

    for section in ("model", "optimizer", "scheduler", "data"):
        walk(_container(cfg.get(section)), section)
    flat["trainer.max_epochs"] = cfg.trainer.get("max_epochs")
    flat["seed"] = cfg.seed
    flat.pop("data.data_dir", None)
    return flat


@rank_zero_only
def log_hparams(loggers: list[Any], hparams: dict[str, Any]) -> None:
    for logger in loggers:
        logger.log_hyperparams(hparams)
        if isinstance(logger, TensorBoardLogger):
            # Declare the metrics without writing placeholder values: TensorBoard reads their
            # values from the scalars the run logs under the same tags.
            from torch.utils.tensorboard.summary import hparams as hparams_summary

            writer = logger.experiment._get_file_writer()
            for summary in hparams_summary(logger._sanitize_params(hparams), dict.fromkeys(HPARAM_METRICS, 0.0)):
                writer.add_summary(summary)


def batches_per_step(cfg: DictConfig) -> int:
    """How many training batches each Lightning step makes updates on (speed.batches_per_step).
    Lightning's own work per step is fixed (about 0.7 ms here): at batch size 1 it would cost half
    as much as the update itself, and at batch 32 with two batches per step still 6-8% of the
    epoch (`python -m lenet5.bench`), so auto gives a step 256 images' worth of batches. Under DDP
    a step is one batch (one forward and backward per step is what DDP synchronizes)."""
    value = (cfg.get("speed") or {}).get("batches_per_step", "auto")
    if cfg.trainer.get("strategy") not in (None, "auto", "single_device"):
        return 1
    return max(1, IMAGES_PER_STEP // cfg.data.batch_size) if value == "auto" else int(value)


def build(cfg: DictConfig) -> tuple[L.LightningDataModule, LeNet5Module, L.Trainer]:
    try:
        datamodule = instantiate(cfg.data, batches_per_step=batches_per_step(cfg))
        module = LeNet5Module(net=_container(cfg.model.net), loss=_container(cfg.model.loss),
                              optimizer=_container(cfg.optimizer), scheduler=_container(cfg.get("scheduler")),
                              batch_size=cfg.data.batch_size)
        callbacks = skip_unused_hooks([instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None])
        loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
        trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    except InstantiationException as error:
        cause = error.__cause__ or error
        raise ConfigError(f"{' '.join(str(cause).split())}") from None
    log_hparams(loggers, flat_hparams(cfg))
    return datamodule, module, trainer


def resume_from(cfg: DictConfig, run_dir: Path) -> str | None:
    """cfg.ckpt_path checked before Lightning reads it: 'last' means this run directory's last.ckpt."""
    if not cfg.get("ckpt_path"):
        return None
    path = run_dir / "checkpoints" / "last.ckpt" if cfg.ckpt_path == "last" else Path(cfg.ckpt_path)
    load_checkpoint(path)  # a missing, truncated or foreign file is refused here, in one line
    return str(path)


def test_checkpoint(cfg: DictConfig, trainer: L.Trainer) -> str | None:
    """The checkpoint that test/error is measured on: cfg.test_ckpt 'best' (by val/error) or 'last'."""
    callback = trainer.checkpoint_callback
    if cfg.test_ckpt == "best" and callback is not None and callback.best_model_path:
        return callback.best_model_path
    if cfg.test_ckpt not in ("best", "last"):
        raise ConfigError(f"test_ckpt must be 'best' or 'last', got '{cfg.test_ckpt}'")
    return None  # the weights as training left them


def train(cfg: DictConfig) -> float | None:
    """Fit, then test on the official test set; returns val/error_best (what sweeps minimize)."""
    seed = choose_seed(cfg)
    threads = torch_threads(cfg)
    torch.set_num_threads(threads)
    L.seed_everything(seed, workers=True, verbose=False)
    datamodule, module, trainer = build(cfg)
    speed = configure_speed(cfg, module)
    summary = module.net.summary()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if trainer.is_global_zero:
        print(f"LeNet-5 ({HydraConfig.get().runtime.choices.get('model', 'custom')} model), seed {seed}, "
              f"{threads} torch threads, {speed}")
        print(summary, flush=True)

    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from(cfg, run_dir))
    val_best = trainer.callback_metrics.get("val/error_best")
    val_last = trainer.callback_metrics.get("val/error")  # the last epoch's: with data.val=test, its test error
    best_epoch = int(trainer.callback_metrics.get("val/error_best_epoch", -1))
    # Read before testing: trainer.test(ckpt_path=...) restores the callbacks' state from that
    # checkpoint too, and the best one holds only the epochs up to it.
    timer = next((c for c in trainer.callbacks if isinstance(c, EpochTimer)), None)
    seconds = list(timer.seconds) if timer else []
    tested = test_checkpoint(cfg, trainer)
    test_error = trainer.test(module, datamodule=datamodule, ckpt_path=tested, verbose=False)[0]["test/error"]
    if trainer.is_global_zero:
        results = {"test_error": test_error, "val_error_best": None if val_best is None else float(val_best),
                   "val_error_last": None if val_last is None else float(val_last),
                   "best_epoch": best_epoch, "epochs": trainer.current_epoch, "parameters": summary.parameters,
                   "connections": summary.connections, "seed": seed, "threads": threads, "tested": Path(tested).name if tested else "last",
                   "seconds_per_epoch": sum(seconds) / len(seconds) if seconds else None}
        (run_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        source = f"best checkpoint {Path(tested).name}" if tested else "weights after the last epoch"
        images = len(datamodule.splits["test"][1])
        print(f"test error: {test_error:.2f}% on the {images:,} MNIST test images ({source})")
        print(f"run directory: {run_dir}", flush=True)
    return None if val_best is None else float(val_best)


def main(cfg: DictConfig) -> float | None:
    """train(cfg), with a user's mistake reported as one line instead of a traceback."""
    try:
        check_config(cfg)
        return train(cfg)
    except (DataError, ConfigError, CheckpointError, NonFiniteLoss) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
