"""TensorBoard panels that explain a run, one callback each (switched in conf/callbacks/).

Each panel writes only to a TensorBoard logger, only on the main process, and only at epoch
boundaries or every `every_n_steps` steps: never inside the per-step hot path. Validation and
test predictions come from what validation_step and test_step return, so no panel runs the test
set through the network a second time.

    val/misclassified, test/misclassified     the misclassified digits, "true -> predicted" (Fig. 8)
    val/confusion_matrix, test/confusion_matrix   a figure, and the counts as a text table
    model/rbf_bitmaps                         the ten fixed RBF bitmaps (Fig. 3)
    data/distorted_samples                    distorted training images (when data.distort=true)
    features/c1, features/c3                  C1 and C3 feature maps of one fixed test digit
    features/f6_state                         that digit's F6 state as a 7x12 picture, beside the bitmap nearest to it
    weights/<layer>, gradients/<layer>        histograms per layer
    the graph (Graphs tab)                    the network traced on one input
"""

from __future__ import annotations

import io
from typing import Any

import lightning as L
import matplotlib
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image, ImageDraw

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the non-interactive backend)

from lenet5.layers import RBFOutput  # noqa: E402


def writer_of(trainer: L.Trainer) -> Any | None:
    """The SummaryWriter of the run's TensorBoard logger, on the main process only."""
    if not trainer.is_global_zero:
        return None
    return next((logger.experiment for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)), None)


def figure_to_image(figure: plt.Figure) -> np.ndarray:
    """A rendered matplotlib figure as an HWC uint8 array (for add_image)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    buffer.seek(0)
    return plt.imread(buffer, format="png")[..., :3]


def stage_of(trainer: L.Trainer) -> str:
    return "test" if trainer.testing else "val"


class PredictionPanel(L.Callback):
    """Collects (images, labels, predictions) over a validation or test epoch."""

    def __init__(self) -> None:
        self._batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def _start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._batches = []

    def _collect(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if trainer.sanity_checking or writer_of(trainer) is None:
            return
        images, labels = batch
        self._batches.append((images.detach().cpu(), labels.cpu(), outputs["predictions"].cpu()))

    def _end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        writer = writer_of(trainer)
        if writer is None or not self._batches or trainer.sanity_checking:
            return
        images, labels, predictions = (torch.cat(parts) for parts in zip(*self._batches))
        self._batches = []
        self.draw(writer, stage_of(trainer), images, labels, predictions, trainer.current_epoch)

    on_validation_epoch_start = on_test_epoch_start = _start
    on_validation_batch_end = on_test_batch_end = _collect
    on_validation_epoch_end = on_test_epoch_end = _end

    def draw(self, writer, stage: str, images, labels, predictions, step: int) -> None:
        raise NotImplementedError


class MisclassifiedDigits(PredictionPanel):
    """The misclassified digits with "true -> predicted", as the paper's Fig. 8 shows its 82."""

    def __init__(self, max_images: int = 100, columns: int = 10) -> None:
        super().__init__()
        self.max_images, self.columns = max_images, columns

    def draw(self, writer, stage, images, labels, predictions, step) -> None:
        wrong = (predictions != labels).nonzero().flatten()[: self.max_images]
        if len(wrong) == 0:
            return
        # Drawn with PIL, not matplotlib: a hundred subplots would cost seconds every epoch.
        scale, label_height = 2, 14
        size = images.shape[-1] * scale
        cell_w, cell_h = size + 4, size + label_height
        rows = -(-len(wrong) // self.columns)
        sheet = Image.new("L", (self.columns * cell_w, rows * cell_h), 255)
        draw = ImageDraw.Draw(sheet)
        digits = images[wrong, 0].float()
        low, high = digits.amin(dim=(1, 2), keepdim=True), digits.amax(dim=(1, 2), keepdim=True)
        ink = (255 * (1 - (digits - low) / (high - low + 1e-8))).to(torch.uint8).numpy()  # dark ink on white
        for n, index in enumerate(wrong.tolist()):
            x, y = (n % self.columns) * cell_w, (n // self.columns) * cell_h
            sheet.paste(Image.fromarray(ink[n]).resize((size, size), Image.NEAREST), (x + 2, y))
            draw.text((x + 4, y + size), f"{labels[index]}->{predictions[index]}", fill=0)
        writer.add_image(f"{stage}/misclassified", np.asarray(sheet)[None], step, dataformats="CHW")
        writer.add_text(f"{stage}/misclassified_count",
                        f"{int((predictions != labels).sum())} misclassified of {len(labels):,} "
                        f"(first {len(wrong)} shown, true->predicted)", step)


def confusion_matrix(labels: torch.Tensor, predictions: torch.Tensor, classes: int = 10) -> torch.Tensor:
    """counts[true, predicted]."""
    return torch.bincount(labels * classes + predictions, minlength=classes * classes).view(classes, classes)


def confusion_figure(counts: torch.Tensor) -> np.ndarray:
    """The confusion matrix drawn with its counts, as an HWC image."""
    figure, ax = plt.subplots(figsize=(5.5, 5))
    ax.imshow(counts.float().log1p().numpy(), cmap="Blues")
    for (true, predicted), count in np.ndenumerate(counts.numpy()):
        if count:
            ax.text(predicted, true, str(count), ha="center", va="center", fontsize=7,
                    color="white" if true == predicted else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_xticks(range(10))
    ax.set_yticks(range(10))
    return figure_to_image(figure)


class ConfusionMatrix(PredictionPanel):
    """The confusion matrix as a figure, and its counts as a text table (true class per row)."""

    def draw(self, writer, stage, images, labels, predictions, step) -> None:
        counts = confusion_matrix(labels, predictions)
        writer.add_image(f"{stage}/confusion_matrix", confusion_figure(counts), step, dataformats="HWC")
        header = "| true \\ predicted | " + " | ".join(map(str, range(10))) + " |\n|---" * 11 + "|\n"
        rows = "".join(f"| {true} | " + " | ".join(str(int(c)) for c in row) + " |\n"
                       for true, row in enumerate(counts))
        writer.add_text(f"{stage}/confusion_matrix_counts", header + rows, step)


def bitmap_figure(panels: list[tuple[str, torch.Tensor]]) -> plt.Figure:
    figure, axes = plt.subplots(1, len(panels), figsize=(len(panels) * 1.0, 1.8), squeeze=False)
    for ax, (title, cells) in zip(axes.flat, panels):
        ax.imshow(cells.view(12, 7).numpy(), cmap="gray_r", vmin=-1.7159, vmax=1.7159)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    return figure


class RBFBitmaps(L.Callback):
    """The ten fixed 7x12 bitmaps of the RBF output layer (Fig. 3), once per run."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        writer, output = writer_of(trainer), pl_module.net.output
        if writer is not None and isinstance(output, RBFOutput):
            figure = bitmap_figure([(str(d), output.centers[d].cpu()) for d in range(10)])
            writer.add_image("model/rbf_bitmaps", figure_to_image(figure), 0, dataformats="HWC")


class DistortedSamples(L.Callback):
    """A grid of training images as distorted for training (only with data.distort=true)."""

    def __init__(self, count: int = 32) -> None:
        self.count = count

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        writer, datamodule = writer_of(trainer), trainer.datamodule
        if writer is None or getattr(datamodule, "distortion", None) is None:
            return
        originals = datamodule.splits["train"][0][: self.count // 2]
        distorted = datamodule.distortion(originals)
        grid = torch.cat([originals, distorted])  # originals on top, their distortions below
        low, high = grid.min(), grid.max()
        writer.add_images("data/distorted_samples", ((grid - low) / (high - low)).clamp(0, 1),
                          trainer.current_epoch)


class FeatureMaps(L.Callback):
    """C1 and C3 feature maps, and the F6 state beside its nearest bitmap, for one fixed test digit."""

    def __init__(self, index: int = 0) -> None:
        self.index = index

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        writer = writer_of(trainer)
        if writer is None or trainer.sanity_checking:
            return
        net = pl_module.net
        digit = trainer.datamodule.splits["test"][0][self.index: self.index + 1].to(pl_module.device)
        captured: dict[str, torch.Tensor] = {}
        hooks = [getattr(net, name).register_forward_hook(
            lambda module, args, output, name=name: captured.__setitem__(name, net.act(output)))
            for name in ("c1", "c3")]
        hooks.append(net.output.register_forward_hook(
            lambda module, args, output: captured.__setitem__("f6", args[0])))
        try:
            net(digit)
        finally:
            for hook in hooks:
                hook.remove()
        step = trainer.current_epoch
        for name in ("c1", "c3"):
            maps = captured[name][0].unsqueeze(1).float().cpu()
            low, high = maps.min(), maps.max()
            writer.add_images(f"features/{name}", (maps - low) / (high - low + 1e-8), step)
        if isinstance(net.output, RBFOutput):
            state = captured["f6"][0].float().cpu()
            penalties = ((state - net.output.centers.cpu()) ** 2).sum(1)
            nearest = int(penalties.argmin())
            figure = bitmap_figure([("F6 state", state), (f"nearest: {nearest}", net.output.centers[nearest].cpu())])
            writer.add_image("features/f6_state", figure_to_image(figure), step, dataformats="HWC")


class Histograms(L.Callback):
    """Histograms of each layer's weights and gradients every `every_n_steps` optimizer updates
    (and nothing in between), written at the end of the training step that reaches the multiple:
    the weights after its last update and the gradients that made that update. (A batch-end hook,
    not a per-update one, so that updates stay free of hook calls: LeNet5Module._may_update_directly.)"""

    def __init__(self, every_n_steps: int = 1000) -> None:
        self.every_n_steps = every_n_steps
        self._next = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._next = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if trainer.global_step < self._next:
            return
        self._next = (trainer.global_step // self.every_n_steps + 1) * self.every_n_steps
        writer = writer_of(trainer)
        if writer is None:
            return
        for name, param in pl_module.net.named_parameters():
            writer.add_histogram(f"weights/{name}", param.detach().float().cpu(), trainer.global_step)
            if param.grad is not None:
                writer.add_histogram(f"gradients/{name}", param.grad.detach().float().cpu(), trainer.global_step)


class ModelGraph(L.Callback):
    """The network's graph, traced on one input, in TensorBoard's Graphs tab."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        writer = writer_of(trainer)
        if writer is not None:
            example = torch.zeros(1, *pl_module.net.input_shape, device=pl_module.device)
            writer.add_graph(pl_module.net, example)
