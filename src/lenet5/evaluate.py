"""Evaluate a checkpoint on the official test set, with the config saved beside its run.

    python eval.py ckpt_path=outputs/runs/<date>/<time>/checkpoints/last.ckpt [data_dir=...]

The network is rebuilt from the checkpoint's own hyperparameters and the data (its directory,
input size and scaling) from the run's .hydra/config.yaml, not from today's defaults. The error is
printed; the confusion matrix (CSV and PNG) and results.json go to <run>/eval/<checkpoint name>/.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lenet5.checkpoints import CheckpointError, load_checkpoint
from lenet5.dashboards import confusion_figure, confusion_matrix, plt
from lenet5.module import LeNet5Module


def module_from_checkpoint(path: Path) -> tuple[LeNet5Module, dict]:
    """The trained module, rebuilt from the checkpoint's hyperparameters (read with weights_only=True)."""
    checkpoint = load_checkpoint(path)
    module = LeNet5Module(**checkpoint["hyper_parameters"])
    module.load_state_dict(checkpoint["state_dict"])
    return module.eval(), checkpoint


def saved_run_config(path: Path) -> DictConfig:
    saved = path.parent.parent / ".hydra" / "config.yaml"
    if not saved.is_file():
        raise CheckpointError(f"no saved run config at {saved}: eval.py evaluates a checkpoint inside the run "
                              f"directory train.py made (<run>/checkpoints/*.ckpt)")
    return OmegaConf.load(saved)


def evaluate(cfg: DictConfig) -> float:
    path = Path(cfg.ckpt_path).expanduser().resolve()
    module, _ = module_from_checkpoint(path)
    run_cfg = saved_run_config(path)
    if cfg.get("data_dir"):
        run_cfg.data.data_dir = cfg.data_dir
    data = instantiate(run_cfg.data, distort=False)
    data.prepare_data()
    data.setup("test")
    images, labels = data.splits["test"]
    with torch.no_grad():
        predictions = torch.cat([module.net.predict(batch) for batch in images.split(cfg.batch_size)])
    error = 100.0 * (predictions != labels).float().mean().item()
    counts = confusion_matrix(labels, predictions)

    out = path.parent.parent / "eval" / path.stem
    out.mkdir(parents=True, exist_ok=True)
    rows = ["true\\predicted," + ",".join(map(str, range(10)))]
    rows += [f"{true}," + ",".join(str(int(c)) for c in row) for true, row in enumerate(counts)]
    (out / "confusion_matrix.csv").write_text("\n".join(rows) + "\n")
    plt.imsave(out / "confusion_matrix.png", confusion_figure(counts))
    (out / "results.json").write_text(json.dumps({"checkpoint": str(path), "test_error": error,
                                                  "misclassified": int((predictions != labels).sum()),
                                                  "images": len(labels)}, indent=2) + "\n")
    print(f"test error: {error:.2f}% ({int((predictions != labels).sum())} of {len(labels):,} test images) "
          f"for {path}")
    print(f"confusion matrix: {out / 'confusion_matrix.csv'} and .png")
    return error
