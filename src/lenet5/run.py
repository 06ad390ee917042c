"""One training run from a composed Hydra config: fit, test the best checkpoint, report.

`train.py` at the project root is the Hydra entry point; it calls `train(cfg)`.
"""

from __future__ import annotations

import logging
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
from omegaconf import DictConfig, OmegaConf

from lenet5.mnist import DataError
from lenet5.module import LeNet5Module

# Lightning prints through a console handler of its own and also propagates to the root logger,
# which Hydra configures (console and the run's train.log): keep only Hydra's, so each line shows once.
logging.getLogger("lightning").handlers.clear()

# The metrics that TensorBoard's HParams tab shows against each run's hyperparameters.
HPARAM_METRICS = ("val/error_best", "test/error")


class ConfigError(Exception):
    """A configuration that composes but cannot be built; the message names the fix."""


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

    resolved = OmegaConf.to_container(cfg, resolve=True)
    for section in ("model", "optimizer", "scheduler", "data"):
        walk(resolved.get(section), section)
    flat["trainer.max_epochs"] = cfg.trainer.get("max_epochs")
    flat["seed"] = cfg.seed
    flat.pop("data.data_dir", None)
    return flat


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


def build(cfg: DictConfig) -> tuple[L.LightningDataModule, LeNet5Module, L.Trainer]:
    try:
        datamodule = instantiate(cfg.data)
        module = LeNet5Module(net=_container(cfg.model.net), loss=_container(cfg.model.loss),
                              optimizer=_container(cfg.optimizer), scheduler=_container(cfg.get("scheduler")))
        callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
        loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
        trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    except InstantiationException as error:
        cause = error.__cause__ or error
        raise ConfigError(f"{' '.join(str(cause).split())}") from None
    log_hparams(loggers, flat_hparams(cfg))
    return datamodule, module, trainer


def train(cfg: DictConfig) -> float | None:
    """Fit, then test the best checkpoint on the official test set; returns val/error_best."""
    seed = choose_seed(cfg)
    torch.set_num_threads(cfg.threads)
    L.seed_everything(seed, workers=True, verbose=False)
    datamodule, module, trainer = build(cfg)
    if trainer.is_global_zero:
        print(f"LeNet-5 ({HydraConfig.get().runtime.choices.get('model', 'custom')} model), seed {seed}, "
              f"{cfg.threads} torch threads")
        print(module.net.summary(), flush=True)

    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    val_best = trainer.callback_metrics.get("val/error_best")
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    results = trainer.test(module, datamodule=datamodule, ckpt_path=best or None, verbose=False)
    test_error = results[0]["test/error"]
    if trainer.is_global_zero:
        source = f"best checkpoint {Path(best).name}" if best else "final weights"
        print(f"test error: {test_error:.2f}% on the 10,000 MNIST test images ({source})")
        print(f"run directory: {HydraConfig.get().runtime.output_dir}", flush=True)
    return None if val_best is None else float(val_best)


def main(cfg: DictConfig) -> float | None:
    """train(cfg), with a user's mistake reported as one line instead of a traceback."""
    try:
        return train(cfg)
    except (DataError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
