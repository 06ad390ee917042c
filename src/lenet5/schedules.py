"""Learning-rate schedules by pass (epoch), usable with any optimizer."""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

# Sec. III.B: the global rate eta for each of the 20 passes (SDLM).
PAPER_ETA = (5e-4, 5e-4,            # passes 1-2
             2e-4, 2e-4, 2e-4,      # passes 3-5
             1e-4, 1e-4, 1e-4,      # passes 6-8
             5e-5, 5e-5, 5e-5, 5e-5,  # passes 9-12
             1e-5, 1e-5, 1e-5, 1e-5, 1e-5, 1e-5, 1e-5, 1e-5)  # passes 13-20  # fmt: skip


def paper_factor(epoch: int) -> float:
    """The paper's eta for pass `epoch + 1`, relative to the first pass's (the last rate continues)."""
    return PAPER_ETA[min(epoch, len(PAPER_ETA) - 1)] / PAPER_ETA[0]


class PaperSchedule(LambdaLR):
    """The paper's per-pass schedule (Sec. III.B), scaled to the optimizer's own lr: with SDLM at
    lr=5e-4 it gives exactly 5e-4, 5e-4, 2e-4, ... 1e-5; with any other optimizer, the same ratios."""

    def __init__(self, optimizer: Optimizer, last_epoch: int = -1) -> None:
        super().__init__(optimizer, lr_lambda=paper_factor, last_epoch=last_epoch)
