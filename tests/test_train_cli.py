"""`python train.py` run as a subprocess, exactly as a user runs it, on a small IDX set."""

from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lenet5 import LeNet5Module

from conftest import run_train, tiny_run_overrides

LOGGED_TAGS = {"train/loss", "train/error", "val/error", "val/error_best", "test/error"}


@pytest.fixture(scope="module")
def paper_run(tiny_mnist, tmp_path_factory) -> tuple[Path, str]:
    run_dir = tmp_path_factory.mktemp("paper-run")
    result = run_train(*tiny_run_overrides(tiny_mnist, run_dir, "trainer.max_epochs=2"))
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir, result.stdout


def test_training_prints_the_layer_table_and_the_final_test_error(paper_run):
    _, stdout = paper_run
    assert "60,000" in stdout and "340,908" in stdout
    assert "test error:" in stdout and "best checkpoint" in stdout


def test_best_and_last_checkpoints_reload(paper_run):
    run_dir, _ = paper_run
    checkpoints = sorted((run_dir / "checkpoints").glob("*.ckpt"))
    names = [p.name for p in checkpoints]
    assert "last.ckpt" in names
    best = [p for p in checkpoints if p.name.startswith("epoch")]
    assert len(best) == 1 and "val_error" in best[0].name
    raw = torch.load(best[0], map_location="cpu", weights_only=True)  # primitive hyperparameters only
    assert raw["hyper_parameters"]["net"]["_target_"] == "lenet5.LeNet5"
    module = LeNet5Module.load_from_checkpoint(best[0], map_location="cpu")
    assert module.net.summary().parameters == 60_000
    module.eval()
    assert module.net.predict(torch.zeros(2, 1, 32, 32)).shape == (2,)


def test_tensorboard_event_files_hold_the_logged_tags_and_hparams(paper_run):
    run_dir, _ = paper_run
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert LOGGED_TAGS <= scalars
    test_error = events.Scalars("test/error")[-1].value
    assert 0.0 <= test_error <= 100.0
    assert len(events.Scalars("val/error")) == 2  # one per epoch
    hparams = events.PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(hparams)
    assert b"val/error_best" in hparams["_hparams_/experiment"]


def test_saved_config_records_the_seed_drawn_for_the_run(paper_run):
    run_dir, stdout = paper_run
    config = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    assert isinstance(config["seed"], int)
    assert f"seed {config['seed']}" in stdout
    assert config["model"]["net"]["_target_"] == "lenet5.LeNet5"
    overrides = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())
    assert "trainer.max_epochs=2" in overrides


def test_csv_logger_and_holdout_validation(tiny_mnist, tmp_path):
    result = run_train(*tiny_run_overrides(tiny_mnist, tmp_path, "logger=csv", "data.val=holdout",
                                           "data.holdout_size=64", "seed=3", "optimizer=adam"))
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = (tmp_path / "csv" / "metrics.csv").read_text()
    assert "val/error" in metrics and "test/error" in metrics
    config = yaml.safe_load((tmp_path / ".hydra" / "config.yaml").read_text())
    assert config["seed"] == 3


def test_missing_data_is_one_clear_line(tmp_path):
    result = run_train(*tiny_run_overrides(tmp_path / "nowhere", tmp_path / "run"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and "train-images-idx3-ubyte does not exist" in line


def test_unknown_option_lists_the_valid_ones(tmp_path):
    result = run_train("model=nonsense", f"hydra.run.dir={tmp_path}")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "Available options in 'model'" in result.stderr and "paper" in result.stderr


def test_updates_skip_lightnings_wrappers_only_when_no_hook_needs_them(tiny_mnist):
    """An update is a bare backward and optimizer step unless a hook wants Lightning's wrappers
    (LeNet5Module._may_update_directly); both paths train the same weights and count the same steps."""
    import lightning as L

    from lenet5 import MNISTDataModule

    class CountUpdates(L.Callback):
        def __init__(self) -> None:
            self.calls = 0

        def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
            self.calls += 1

    def train(*callbacks: L.Callback) -> tuple[LeNet5Module, L.Trainer]:
        torch.manual_seed(0)
        module = LeNet5Module(batch_size=32)
        data = MNISTDataModule(tiny_mnist, verify=False, batch_size=32, eval_batch_size=128, batches_per_step=3)
        trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks))
        trainer.fit(module, datamodule=data)
        return module, trainer

    direct, direct_trainer = train()
    counter = CountUpdates()
    wrapped, wrapped_trainer = train(counter)
    assert direct._direct_updates and not wrapped._direct_updates
    assert direct_trainer.global_step == wrapped_trainer.global_step == counter.calls == 2 * 384 // 32
    for (name, a), b in zip(direct.state_dict().items(), wrapped.state_dict().values()):
        assert torch.equal(a, b), name
