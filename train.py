"""Train LeNet-5 on MNIST: `python train.py model=paper` (see README.md and conf/train.yaml).

    python train.py [group=option ...] [key=value ...]    one run
    python train.py -m optimizer=sgd,adam seed=1,2,3      a sweep
    python train.py resume=outputs/runs/<date>/<time>     continue a run from its last checkpoint
"""

import os
import sys
from pathlib import Path

import hydra
from omegaconf import OmegaConf

from lenet5.cli import explain_unknown_keys, resume_arguments

ROOT = Path(__file__).resolve().parent
# conf/paths/default.yaml places data/ and outputs/ beside this file, wherever it is run from.
os.environ.setdefault("LENET5_ROOT", str(ROOT))
# A sweep job's directory is named after its overrides: make them one flat, short file name.
OmegaConf.register_new_resolver(
    "path_safe", lambda text: (text.replace("/", ".").replace(",", "_") or "defaults")[:120], replace=True)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg):
    from lenet5.run import main as run  # imported here so that --help and --cfg stay fast

    return run(cfg)


if __name__ == "__main__":
    sys.argv[1:] = resume_arguments(sys.argv[1:])
    try:
        main()
    except SystemExit as exit:
        if exit.code == 1:  # Hydra refused the command line and said why; add the valid keys if a key was wrong
            explain_unknown_keys(sys.argv[1:], ROOT / "conf", "train")
        raise
