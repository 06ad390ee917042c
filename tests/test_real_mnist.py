"""The paper model on the real MNIST files (fetched and verified by the fixture)."""

import re

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import run_train


def test_paper_model_is_under_3_percent_test_error_after_one_epoch(mnist_dir, tmp_path):
    # SGD with momentum: the default SDLM spends its first pass at 2.5-3.1% (its steps are held back
    # by mu where the paper's init leaves no curvature yet), too close to 3% for a one-epoch check.
    result = run_train("model=paper", "optimizer=momentum", "scheduler=none", "trainer.max_epochs=1", "seed=0",
                       f"data.data_dir={mnist_dir}", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    printed = float(re.search(r"test error: ([0-9.]+)%", result.stdout).group(1))
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    logged = events.Scalars("test/error")[-1].value
    assert abs(printed - logged) < 0.01
    assert logged < 3.0, f"test error after one epoch: {logged:.2f}%"
