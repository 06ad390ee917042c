"""Evaluate a checkpoint on the MNIST test set with the config saved beside its run.

    python eval.py ckpt_path=outputs/runs/<date>/<time>/checkpoints/last.ckpt [data_dir=...] [batch_size=1000]
"""

import sys

from omegaconf import OmegaConf

DEFAULTS = {"ckpt_path": None, "data_dir": None, "batch_size": 1000, "threads": 2}


def main(argv: list[str]) -> int:
    wrong = [arg for arg in argv if "=" not in arg or arg.split("=", 1)[0] not in DEFAULTS]
    if wrong:
        print(f"error: cannot read {' '.join(wrong)}; give key=value with the keys {', '.join(DEFAULTS)}",
              file=sys.stderr)
        return 2
    cfg = OmegaConf.merge(DEFAULTS, OmegaConf.from_dotlist(argv))
    if not cfg.ckpt_path:
        print("error: give the checkpoint to evaluate: python eval.py ckpt_path=<run>/checkpoints/last.ckpt",
              file=sys.stderr)
        return 2
    import torch

    from lenet5.checkpoints import CheckpointError
    from lenet5.evaluate import evaluate
    from lenet5.mnist import DataError

    torch.set_num_threads(int(cfg.threads))
    try:
        evaluate(cfg)
    except (CheckpointError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
