"""Beyond one process: Lightning DDP on the CPU, and sweeps through submitit."""

import json

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from lenet5 import LeNet5Module
from lenet5.data import EpochOrder
from lenet5.checkpoints import load_checkpoint

from conftest import ROOT, run_train, tiny_run_overrides


def test_ddp_shards_are_disjoint_and_together_one_single_process_batch():
    single = EpochOrder(10, shuffle=True, seed=3).indices()
    shards = [EpochOrder(10, shuffle=True, seed=3, rank=r, world=2, pad=True).indices() for r in range(2)]
    assert [len(s) for s in shards] == [5, 5]
    for step in range(0, 5, 2):  # per-process batch 2 = single-process batch 4
        assert sorted(torch.cat([s[step:step + 2] for s in shards]).tolist()) == \
               sorted(single[2 * step:2 * step + 4].tolist())
    padded = [EpochOrder(9, shuffle=True, seed=3, rank=r, world=2, pad=True) for r in range(2)]
    assert [len(o) for o in padded] == [5, 5]  # training: equal steps on every process
    unpadded = [EpochOrder(9, shuffle=False, seed=0, rank=r, world=2) for r in range(2)]
    assert sorted(torch.cat([o.indices() for o in unpadded]).tolist()) == list(range(9))  # evaluation: each once


def test_two_process_ddp_on_the_cpu_matches_one_process(tiny_mnist, tmp_path):
    """2 processes x 16 images = the single process's batches of 32, in the same order; gradients
    and SDLM's curvature are averaged across the processes. Tolerance: the test errors may differ
    by at most one image in 128 (floating-point sums in another order), and the weights by 1e-4."""
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    common = ["trainer.max_epochs=2", "seed=4", "optimizer=sdlm_minibatch", "data.eval_batch_size=64"]
    first = run_train(*tiny_run_overrides(tiny_mnist, single, *common, "data.batch_size=32", "threads=1"))
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_train(*tiny_run_overrides(tiny_mnist, ddp, *common, "trainer=ddp_cpu", "data.batch_size=16"))
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Starting with 2 processes" in second.stdout + second.stderr
    a, b = (json.loads((run / "results.json").read_text()) for run in (single, ddp))
    assert abs(a["test_error"] - b["test_error"]) <= 100 / 128 + 1e-6
    weights_a, weights_b = (load_checkpoint(run / "checkpoints" / "last.ckpt")["state_dict"] for run in (single, ddp))
    for name in weights_a:
        torch.testing.assert_close(weights_b[name], weights_a[name], atol=1e-4, rtol=1e-3, msg=name)
    module = LeNet5Module.load_from_checkpoint(ddp / "checkpoints" / "last.ckpt", map_location="cpu")
    assert module.net.predict(torch.zeros(3, 1, 32, 32)).shape == (3,)
    assert sorted(p.name for p in ddp.iterdir() if p.name.startswith("results")) == ["results.json"]


@pytest.mark.parametrize("launcher", ["submitit_slurm", "slurm"])
def test_slurm_launcher_configs_compose(launcher):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"hydra/launcher={launcher}", "hydra.launcher.partition=gpu",
                                          "hydra.launcher.gpus_per_node=2", "hydra.launcher.timeout_min=30"],
                      return_hydra_config=True)
    settings = cfg.hydra.launcher
    assert settings._target_.endswith("SlurmLauncher")
    assert (settings.partition, settings.gpus_per_node, settings.timeout_min) == ("gpu", 2, 30)
    assert "cpus_per_task" in settings and "mem_gb" in settings


def test_a_sweep_runs_through_submitits_local_executor(tiny_mnist, tmp_path):
    result = run_train("-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10",
                       f"hydra.sweep.dir={tmp_path}", f"data.data_dir={tiny_mnist}", "data.verify=false",
                       "data.eval_batch_size=64", "trainer.max_epochs=1", "callbacks=minimal", "seed=1,2")
    assert result.returncode == 0, result.stderr[-3000:]
    results = sorted(tmp_path.glob("*/results.json"))
    assert len(results) == 2
    assert {json.loads(p.read_text())["seed"] for p in results} == {1, 2}
    assert list(tmp_path.glob(".submitit/*"))
