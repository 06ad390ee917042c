"""Lightning callbacks that measure and show a run; each is switched on or off in conf/callbacks/."""

from __future__ import annotations

import time

import lightning as L

# Hooks that Lightning calls for every callback on every batch or every update.
PER_STEP_HOOKS = ("on_train_batch_start", "on_train_batch_end", "on_before_backward", "on_after_backward",
                  "on_before_optimizer_step", "on_before_zero_grad")


def implements(callback: L.Callback, hook: str) -> bool:
    """Whether `callback` has a hook of its own, not Callback's inherited no-op (or None in its place)."""
    return callable(getattr(callback, hook, None)) and getattr(type(callback), hook) is not getattr(L.Callback, hook)


def skip_unused_hooks(callbacks: list[L.Callback]) -> list[L.Callback]:
    """Let Lightning skip the per-step hooks a callback does not implement.

    Lightning calls each of these hooks on every callback, inherited no-op or not, each call
    wrapped in a profiler context: with a dozen callbacks that is over a hundred calls per update,
    a tenth of an update's time at batch size 1. Lightning skips a hook that is not callable, so an
    instance attribute of None in place of an inherited no-op removes the call and nothing else.
    """
    for callback in callbacks:
        for hook in PER_STEP_HOOKS:
            if not implements(callback, hook):
                setattr(callback, hook, None)
    return callbacks


class EpochTimer(L.Callback):
    """Logs time/epoch_seconds (the training part of each epoch, without validation) and
    time/images_per_second; keeps the list in `seconds` for the run's results.json."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start: float | None = None
        self._images = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._images = 0
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._images += len(batch[1])

    def _stop(self) -> None:
        if self._start is not None:
            self.seconds.append(time.perf_counter() - self._start)
            self._start = None

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop()  # Lightning validates inside the training epoch: stop the clock before it

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop()
        seconds = self.seconds[-1]
        # under DDP: the slowest process's time, and the images of all processes per second
        pl_module.log("time/epoch_seconds", seconds, on_epoch=True, sync_dist=True, reduce_fx="max")
        pl_module.log("time/images_per_second", self._images / seconds, on_epoch=True, sync_dist=True,
                      reduce_fx="sum")

    def state_dict(self) -> dict:
        return {"seconds": list(self.seconds)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.seconds = list(state_dict.get("seconds", []))
