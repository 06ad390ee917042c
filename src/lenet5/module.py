"""The LightningModule: LeNet-5, its loss, its optimizer, and error rates in percent.

Its constructor takes plain configuration dictionaries (Hydra nodes with `_target_`), so a
checkpoint's hyperparameters are primitive (it loads with `torch.load(weights_only=True)`) and
`LeNet5Module.load_from_checkpoint(path)` rebuilds the exact variant that was trained.
"""

from __future__ import annotations

import math
import random
import warnings
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.plugins import Precision
from lightning.pytorch.strategies import SingleDeviceStrategy
from torchmetrics import Metric

from lenet5.callbacks import implements
from lenet5.network import LeNet5

# Lightning 2.6 calls an API that torch 2.14 deprecates, once per batch transfer: not ours to fix.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")

PAPER_NET = {"_target_": "lenet5.LeNet5"}
PAPER_LOSS = {"_target_": "lenet5.MAPLoss"}
DEFAULT_OPTIMIZER = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.01}
# Lightning's hooks around each backward pass and optimizer step (see LeNet5Module._may_update_directly)
PER_UPDATE_HOOKS = ("on_before_backward", "on_after_backward", "on_before_optimizer_step")


class ErrorRate(Metric):
    """Error as the paper reports it: the percentage of misclassified images, micro-averaged over
    all images (and over processes, under DDP)."""

    full_state_update = False
    higher_is_better = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("wrong", torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, wrong: torch.Tensor, total: int | torch.Tensor) -> None:
        self.wrong += wrong
        self.total += total

    def compute(self) -> torch.Tensor:
        return 100.0 * self.wrong.float() / self.total


class MeanLoss(Metric):
    """The mean loss per image over an epoch (and over processes, under DDP)."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("sum", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, loss_sum: torch.Tensor, count: int | torch.Tensor) -> None:
        self.sum += loss_sum
        self.count += count

    def compute(self) -> torch.Tensor:
        return self.sum / self.count


class NonFiniteLoss(Exception):
    """The training loss became NaN or infinite: training stops before the bad weights are saved."""


class LeNet5Module(L.LightningModule):
    """Trains a `LeNet5` with a loss on its outputs; logs train/loss, train/error, val/error,
    val/error_best and test/error (percent).

    `batch_size` is the size of one update. A training batch from the loader may hold several
    updates' worth (the data module's `batches_per_step`): training_step then makes one update per
    consecutive slice of `batch_size` images, exactly as if each slice were a step of its own. At
    batch size 1 (the paper's online learning) Lightning's per-step work costs about a third of
    an update; spread over 256 updates it disappears.
    """

    def __init__(self, net: dict | None = None, loss: dict | None = None, optimizer: dict | None = None,
                 scheduler: dict | None = None, batch_size: int | None = None) -> None:
        super().__init__()
        net, loss, optimizer = net or PAPER_NET, loss or PAPER_LOSS, optimizer or DEFAULT_OPTIMIZER
        self.save_hyperparameters(logger=False)  # the run's whole config goes to the logger instead
        self.automatic_optimization = False  # training_step makes its own update(s), see above
        self.net: LeNet5 = instantiate(net)
        self.loss = instantiate(loss)
        self.train_error, self.val_error, self.test_error = ErrorRate(), ErrorRate(), ErrorRate()
        self.train_loss, self.val_loss, self.test_loss = MeanLoss(), MeanLoss(), MeanLoss()
        self.best_error, self.best_epoch = math.inf, -1  # val/error_best and the epoch that reached it
        # training sums over the epoch, kept as tensors on the device: no host sync per update
        self._train_wrong, self._train_loss, self._train_count = torch.tensor(0), torch.tensor(0.0), 0
        self._direct_updates = False  # decided when training starts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], error: ErrorRate, mean: MeanLoss) -> torch.Tensor:
        images, labels = batch
        outputs = self.net(images)
        predictions = self.net.output.predict(outputs)
        error.update((predictions != labels).sum(), len(labels))
        mean.update(self.loss(outputs, labels) * len(labels), len(labels))
        return predictions

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        optimizer = self.optimizers()
        images, labels = batch
        size = self.hparams.batch_size or len(labels)
        step_loss = torch.zeros((), device=self.device)
        for x, y in zip(images.split(size), labels.split(size)):
            outputs = self.net(x)
            loss = self.loss(outputs, y)
            if self._direct_updates:
                optimizer.optimizer.zero_grad()
                loss.backward()
                optimizer._on_before_step()  # Lightning's own step counting: global_step counts updates
                optimizer.optimizer.step()
                optimizer._on_after_step()
            else:
                optimizer.zero_grad()
                self.manual_backward(loss)
                optimizer.step()
            with torch.no_grad():
                self._train_wrong = self._train_wrong + (self.net.output.predict(outputs) != y).sum()
                step_loss = step_loss + loss * len(y)
                self._train_count += len(y)
        # One check per step, not per update (on a GPU each check waits for the device): a
        # non-finite loss stops the run before any checkpoint can hold the weights it spoiled.
        if not torch.isfinite(step_loss):
            raise NonFiniteLoss(
                f"the training loss became {step_loss.item()} at step {self.global_step} (epoch {self.current_epoch}, "
                f"batch {batch_idx}); training stopped before saving it. Lower optimizer.lr (for SDLM, or raise "
                f"optimizer.mu), and resume from the last good checkpoint with `python train.py resume=<run "
                f"directory>`")
        self._train_loss = self._train_loss + step_loss

    def on_train_start(self) -> None:
        self._direct_updates = self._may_update_directly()

    def _may_update_directly(self) -> bool:
        """Whether an update may skip the wrappers of `manual_backward` and `LightningOptimizer.step`.

        On one device in 32-bit precision those wrappers do nothing but call the per-update hooks
        (on_before_backward, on_after_backward, on_before_optimizer_step) of the module and of every
        callback: a few tenths of a millisecond per update, a quarter of an update at batch size 1.
        When neither this module nor any callback implements one of those hooks, an update is
        `loss.backward()` and the optimizer's own step, counted by Lightning as usual (global_step
        still counts updates). Under DDP, mixed precision or a hook that wants the calls, the
        wrappers stay.
        """
        trainer = self.trainer
        if type(trainer.strategy) is not SingleDeviceStrategy or type(trainer.precision_plugin) is not Precision:
            return False
        if any(getattr(type(self), hook) is not getattr(L.LightningModule, hook) for hook in PER_UPDATE_HOOKS):
            return False
        return not any(implements(callback, hook) for callback in trainer.callbacks for hook in PER_UPDATE_HOOKS)

    def on_train_epoch_start(self) -> None:
        self._train_wrong, self._train_loss, self._train_count = (
            torch.tensor(0, device=self.device), torch.tensor(0.0, device=self.device), 0)
        self._schedule_to(self.current_epoch)  # a resumed run's restored schedule catches up here

    def _schedule_to(self, epoch: int) -> None:
        """Schedules are per pass and, with manual optimization, ours to step: bring each to `epoch`."""
        schedulers = self.lr_schedulers()
        for scheduler in schedulers if isinstance(schedulers, list) else [schedulers] if schedulers else []:
            while scheduler.last_epoch < epoch:
                scheduler.step()

    def on_train_epoch_end(self) -> None:
        self.train_error.update(self._train_wrong, self._train_count)
        self.train_loss.update(self._train_loss, self._train_count)
        self.log("train/loss", self.train_loss, prog_bar=True)
        self.log("train/error", self.train_error, prog_bar=True)
        self._schedule_to(self.current_epoch + 1)  # before the next epoch's callbacks read the rate

    # Validation and test steps return their predictions for the dashboards (lenet5.dashboards).
    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        return {"predictions": self._evaluate(batch, self.val_error, self.val_loss)}

    def on_validation_epoch_end(self) -> None:
        error = float(self.val_error.compute())
        self.log("val/loss", self.val_loss)
        self.log("val/error", self.val_error, prog_bar=True)
        if self.trainer.sanity_checking:  # an untrained network's error is nobody's best
            return
        if error < self.best_error:
            self.best_error, self.best_epoch = error, self.current_epoch
        # the same on every process (val/error is already summed across them): sync_dist is a formality
        self.log("val/error_best", self.best_error, prog_bar=True, sync_dist=True)
        self.log("val/error_best_epoch", float(self.best_epoch), sync_dist=True)

    # A resumed run continues exactly where it stopped: the best error so far and the random
    # generators (the distortions draw from torch's) travel with the checkpoint, as primitives and
    # tensors only, so that torch.load(weights_only=True) reads it.
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["val_error_best"] = {"error": self.best_error, "epoch": self.best_epoch}
        checkpoint["rng"] = {"torch": torch.get_rng_state(), "python": random.getstate()}
        spec = getattr(self._trainer and self._trainer.datamodule, "input_spec", None)
        if spec is not None:  # how images were scaled, so that predict.py scales new ones alike
            checkpoint["input"] = dict(spec)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        best = checkpoint.get("val_error_best", {})
        self.best_error, self.best_epoch = best.get("error", math.inf), best.get("epoch", -1)
        if "rng" in checkpoint and self._trainer is not None and self._trainer.state.fn == "fit":
            torch.set_rng_state(checkpoint["rng"]["torch"])
            version, state, gauss = checkpoint["rng"]["python"]
            random.setstate((version, tuple(state), gauss))

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        return {"predictions": self._evaluate(batch, self.test_error, self.test_loss)}

    def on_test_epoch_end(self) -> None:
        self.log("test/loss", self.test_loss)
        self.log("test/error", self.test_error)

    def configure_optimizers(self) -> Any:
        optimizer = instantiate(self.hparams.optimizer)(self.parameters())
        if not self.hparams.scheduler:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": instantiate(self.hparams.scheduler)(optimizer)}
