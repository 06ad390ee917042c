"""Every paper choice as a config group: each option composes, builds, trains, and counts right."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from lenet5.module import LeNet5Module
from lenet5.run import ConfigError, build, check_config
from lenet5.sdlm import diagonal_hessian

from conftest import ROOT, run_train, tiny_run_overrides

CONF = ROOT / "conf"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


MODEL_GROUPS = ["activation", "pooling", "c3", "head", "init", "input"]
MODEL_OPTIONS = [(group, option) for group in MODEL_GROUPS for option in options(f"model/{group}")]
TOP_GROUPS = ("model", "optimizer", "scheduler", "logger", "callbacks", "trainer", "data", "ablation", "experiment",
              "hparams_search")
TOP_OPTIONS = [(group, option) for group in TOP_GROUPS for option in options(group)]


def compose_config(tmp_path: Path, *overrides: str):
    """The composed config, as train.py would see it, with the run directory in tmp_path."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.root_dir={tmp_path}", *overrides], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path / "run")
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]  # a task function sees its config without the hydra node (HydraConfig has it)
    return cfg


def compatible_overrides(group: str, option: str) -> list[str]:
    extra = ["model/head=softmax_ce"] if (group, option) == ("activation", "relu") else []
    return [f"model/{group}={option}", *extra]


@pytest.mark.parametrize(("group", "option"), TOP_OPTIONS + [("model/" + g, o) for g, o in MODEL_OPTIONS])
def test_every_option_of_every_group_composes_and_instantiates(tmp_path, group, option):
    overrides = compatible_overrides(group[6:], option) if group.startswith("model/") else [f"{group}={option}"]
    cfg = compose_config(tmp_path, *overrides)
    if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="needs a CUDA GPU"):  # composes, and says plainly there is none
            check_config(cfg)
        return
    check_config(cfg)
    datamodule, module, trainer = build(cfg)
    assert module.net(torch.zeros(2, *module.net.input_shape)).shape == (2, 10)
    assert datamodule.input_size == cfg.model.input.size
    assert trainer.max_epochs == cfg.trainer.max_epochs
    optimizer = module.configure_optimizers()
    assert optimizer is not None


EXPECTED_PARAMETERS = {  # layer -> trainable parameters, for the variants that change a count
    ("c3", "full"): {"C3": 2_416},
    ("head", "softmax_ce"): {"output": 850},
    ("pooling", "avg"): {"S2": 0, "S4": 0},
    ("pooling", "max"): {"S2": 0, "S4": 0},
}


@pytest.mark.parametrize(("group", "option"), MODEL_OPTIONS)
def test_every_variant_trains_a_step_and_reports_its_counts(tmp_path, group, option):
    cfg = compose_config(tmp_path, *compatible_overrides(group, option))
    torch.manual_seed(0)
    module = LeNet5Module(net=OmegaConf.to_container(cfg.model.net, resolve=True),
                          loss=OmegaConf.to_container(cfg.model.loss, resolve=True))
    net = module.net
    images, labels = torch.randn(4, *net.input_shape), torch.tensor([1, 2, 3, 4])
    outputs = net(images)
    assert outputs.shape == (4, 10)
    module.loss(outputs, labels).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    summary = net.summary()
    expected = {"C1": 156, "S2": 12, "C3": 1_516, "S4": 32, "C5": 48_120, "F6": 10_164, "output": 0}
    expected.update(EXPECTED_PARAMETERS.get((group, option), {}))
    if (group, option) == ("activation", "relu"):
        expected["output"] = 850  # relu needs the softmax head
    assert {row.name: row.parameters for row in summary.rows} == expected
    assert summary.parameters == sum(expected.values())
    # and SDLM can train every variant: each stage has a second-derivative rule
    hessian = diagonal_hessian(net, module.loss, images, labels)
    assert set(hessian) == set(net.parameters())


def test_modern_preset_switches_every_choice(tmp_path):
    compose_config(tmp_path, "model=modern")
    choices = HydraConfig.get().runtime.choices
    assert {g: choices[f"model/{g}"] for g in MODEL_GROUPS} == {
        "activation": "relu", "pooling": "max", "c3": "full", "head": "softmax_ce", "init": "default",
        "input": "standardize"}


def test_paper_preset_is_every_paper_choice(tmp_path):
    compose_config(tmp_path, "model=paper")
    choices = HydraConfig.get().runtime.choices
    assert {g: choices[f"model/{g}"] for g in MODEL_GROUPS} == {
        "activation": "scaled_tanh", "pooling": "subsample", "c3": "table1", "head": "rbf_map", "init": "paper",
        "input": "paper"}


def test_relu_with_the_rbf_output_is_refused_with_the_reason_and_the_fix(tmp_path):
    cfg = compose_config(tmp_path, "model/activation=relu")
    with pytest.raises(ConfigError, match="never be negative.*model/head=softmax_ce"):
        check_config(cfg)
    result = run_train("model/activation=relu", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: model/activation=relu cannot feed the RBF")


def test_mismatched_loss_and_output_is_refused(tmp_path):
    cfg = compose_config(tmp_path, "model/head=softmax_ce", "model.loss._target_=lenet5.MAPLoss")
    with pytest.raises(ConfigError, match="does not fit the output layer"):
        check_config(cfg)


def sweep_overrides(tiny_mnist: Path, sweep_dir: Path, *extra: str) -> list[str]:
    return ["-m", f"hydra.sweep.dir={sweep_dir}", f"data.data_dir={tiny_mnist}", "data.verify=false",
            "data.eval_batch_size=64", "trainer.max_epochs=1", *extra]


def test_a_sweep_job_resumes_from_its_directory_named_after_its_overrides(tiny_mnist, tmp_path):
    """A job's directory is named after its overrides (`0_..._seed=4_...`): resume must pass it to Hydra quoted."""
    result = run_train(*sweep_overrides(tiny_mnist, tmp_path, "seed=4", "callbacks=minimal"))
    assert result.returncode == 0, result.stderr[-3000:]
    [job] = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert "seed=4" in job.name
    resumed = run_train(f"resume={job}", "trainer.max_epochs=2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    results = json.loads((job / "results.json").read_text())
    assert results["epochs"] == 2 and results["seed"] == 4


def test_multirun_makes_one_directory_per_job_and_the_report_reads_them(tiny_mnist, tmp_path):
    sweep = tmp_path / "sweep"
    result = run_train(*sweep_overrides(tiny_mnist, sweep, "model/pooling=subsample,max", "seed=1"))
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name.split("_")[0] for p in jobs] == ["0", "1"]
    for job in jobs:
        assert (job / ".hydra/config.yaml").exists() and (job / "results.json").exists()
        assert {"test_error", "val_error_best", "val_error_last"} <= set(json.loads((job / "results.json").read_text()))
        assert list((job / "checkpoints").glob("*.ckpt")) and list((job / "tensorboard").glob("events.out.*"))
    (sweep / "2_broken" / ".hydra").mkdir(parents=True)  # a job that died before it wrote results
    (sweep / "2_broken" / ".hydra/config.yaml").write_text("{}")
    (sweep / "2_broken" / ".hydra/overrides.yaml").write_text("- seed=9\n")
    (sweep / "2_broken" / "train.log").write_text("Traceback (most recent call last): ...\n")

    from lenet5.report import main as report
    assert report([str(sweep)]) == 0
    table = (sweep / "report.csv").read_text().splitlines()
    assert table[0].startswith("configuration,test_error_mean")
    assert len(table) == 3 and "model/pooling=max" in table[2] and ",59956," in table[2]
    printed = run_report(sweep)
    assert "| model/pooling=subsample" in printed.replace("data.eval_batch_size=64 data.verify=False ", "")
    assert "failed:" in printed and "2_broken" in printed


def run_report(*arguments: Path | str) -> str:
    import subprocess
    import sys
    result = subprocess.run([sys.executable, "-m", "lenet5.report", *map(str, arguments)], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_report_merges_seeds_into_mean_and_std(tmp_path):
    for number, (seed, error) in enumerate([(1, 1.0), (2, 2.0), (3, 3.0)]):
        run = tmp_path / f"{number}_run"
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra/config.yaml").write_text("{}")
        (run / ".hydra/overrides.yaml").write_text(yaml.safe_dump([f"seed={seed}", "optimizer=adam"]))
        (run / "results.json").write_text(
            f'{{"test_error": {error}, "val_error_last": {error + 0.5}, "best_epoch": {number}, "epochs": 5, '
            f'"parameters": 60000, "seconds_per_epoch": 10.0}}')
    printed = run_report(tmp_path)
    assert "| optimizer=adam | 2.00 ± 1.00 | 2.50 | 3 | 2.0 | 5 | 60,000 | 10.0 |" in printed


def test_joblib_launcher_runs_jobs_in_parallel_with_threads_shared(tiny_mnist, tmp_path):
    sweep = tmp_path / "joblib"
    result = run_train(*sweep_overrides(tiny_mnist, sweep, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                                        "seed=1,2"))
    assert result.returncode == 0, result.stderr[-3000:]
    import json
    import os
    results = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/results.json"))]
    assert len(results) == 2
    assert {r["threads"] for r in results} == {max(1, len(os.sched_getaffinity(0)) // 2)}
    launcher = yaml.safe_load((sweep / "multirun.yaml").read_text())["hydra"]["launcher"]
    assert "joblib" in launcher["_target_"].lower()


def test_optuna_sweeper_minimizes_val_error_best(tiny_mnist, tmp_path):
    sweep = tmp_path / "optuna"
    result = run_train(*sweep_overrides(tiny_mnist, sweep, "hparams_search=optuna", "hydra.sweeper.n_trials=2",
                                        "data.holdout_size=64"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list(sweep.glob("*/results.json"))) == 2
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["name"] == "optuna" and 0.0 <= best["best_value"] <= 100.0
    assert set(best["best_params"]) == {"optimizer.lr", "optimizer.mu", "model.loss.j"}


def test_report_shows_how_far_an_unfinished_run_got_and_each_epochs_error(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    run = tmp_path / "0_seed=1"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra/config.yaml").write_text("{}")
    (run / ".hydra/overrides.yaml").write_text(yaml.safe_dump(["seed=1", "experiment=paper_online"]))
    with SummaryWriter(str(run / "tensorboard")) as writer:  # a run stopped after three epochs
        for step, error, seconds in [(235, 2.5, 130.2), (470, 1.5, 135.6), (705, 1.75, 300.0)]:
            writer.add_scalar("val/error", error, step)
            writer.add_scalar("time/epoch_seconds", seconds, step)
    printed = run_report(tmp_path, "--per-epoch")
    assert "unfinished" in printed
    assert "3 epochs logged, val/error best 1.50 (epoch 2), last 1.75" in printed
    errors, seconds = printed.split("val/error (%) after each epoch:")[1].split("training seconds of each epoch")
    assert "| 0_seed=1 | 2.50 | 1.50 | 1.75 |" in errors and "| 0_seed=1 | 130 | 136 | 300 |" in seconds
