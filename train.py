"""Train LeNet-5 on MNIST: `python train.py model=paper` (see README.md and conf/train.yaml)."""

import os
from pathlib import Path

import hydra
from omegaconf import OmegaConf

# conf/paths/default.yaml places data/ and outputs/ beside this file, wherever it is run from.
os.environ.setdefault("LENET5_ROOT", str(Path(__file__).resolve().parent))
# A sweep job's directory is named after its overrides: make them one flat, short file name.
OmegaConf.register_new_resolver(
    "path_safe", lambda text: (text.replace("/", ".").replace(",", "_") or "defaults")[:120], replace=True)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg):
    from lenet5.run import main as run  # imported here so that --help and --cfg stay fast

    return run(cfg)


if __name__ == "__main__":
    main()
