"""The LightningModule: LeNet-5, its loss, its optimizer, and error rates in percent.

Its constructor takes plain configuration dictionaries (Hydra nodes with `_target_`), so a
checkpoint's hyperparameters are primitive (it loads with `torch.load(weights_only=True)`) and
`LeNet5Module.load_from_checkpoint(path)` rebuilds the exact variant that was trained.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from torchmetrics.classification import MulticlassAccuracy

from lenet5.network import LeNet5

# Lightning 2.6 calls an API that torch 2.14 deprecates, once per batch transfer: not ours to fix.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")

PAPER_NET = {"_target_": "lenet5.LeNet5"}
PAPER_LOSS = {"_target_": "lenet5.MAPLoss"}
DEFAULT_OPTIMIZER = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.01}


class ErrorRate(MulticlassAccuracy):
    """Test error as the paper reports it: the percentage of misclassified images (micro average)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(num_classes=10, average="micro", validate_args=False, **kwargs)

    def compute(self) -> torch.Tensor:
        return 100.0 * (1.0 - super().compute())


class LeNet5Module(L.LightningModule):
    """Trains a `LeNet5` with a loss on its outputs; logs train/loss, train/error, val/error,
    val/error_best and test/error (percent)."""

    def __init__(self, net: dict | None = None, loss: dict | None = None, optimizer: dict | None = None,
                 scheduler: dict | None = None) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)  # the run's whole config goes to the logger instead
        self.net: LeNet5 = instantiate(net or PAPER_NET)
        self.loss = instantiate(loss or PAPER_LOSS)
        self.train_error, self.val_error, self.test_error = ErrorRate(), ErrorRate(), ErrorRate()
        self.best_error, self.best_epoch = math.inf, -1  # val/error_best and the epoch that reached it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _shared_step(self, batch: tuple[torch.Tensor, torch.Tensor], error: ErrorRate) -> torch.Tensor:
        images, labels = batch
        outputs = self.net(images)
        error.update(self.net.output.predict(outputs.detach()), labels)
        return self.loss(outputs, labels)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._shared_step(batch, self.train_error)
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("train/error", self.train_error, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        loss = self._shared_step(batch, self.val_error)
        self.log("val/loss", loss, on_step=False, on_epoch=True)
        self.log("val/error", self.val_error, on_step=False, on_epoch=True, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:  # an untrained network's error is nobody's best
            return
        error = float(self.val_error.compute())
        if error < self.best_error:
            self.best_error, self.best_epoch = error, self.current_epoch
        self.log("val/error_best", self.best_error, prog_bar=True)
        self.log("val/error_best_epoch", float(self.best_epoch))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["val_error_best"] = {"error": self.best_error, "epoch": self.best_epoch}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        best = checkpoint.get("val_error_best", {})
        self.best_error, self.best_epoch = best.get("error", math.inf), best.get("epoch", -1)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        loss = self._shared_step(batch, self.test_error)
        self.log("test/loss", loss, on_step=False, on_epoch=True)
        self.log("test/error", self.test_error, on_step=False, on_epoch=True)

    def configure_optimizers(self) -> Any:
        optimizer = instantiate(self.hparams.optimizer or DEFAULT_OPTIMIZER)(self.parameters())
        if not self.hparams.scheduler:
            return optimizer
        scheduler = dict(self.hparams.scheduler)
        interval = scheduler.pop("interval", "epoch")
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": instantiate(scheduler)(optimizer), "interval": interval}}
