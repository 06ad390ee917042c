"""Classify your own digit images: `python predict.py --ckpt <run>/checkpoints/last.ckpt image.png [dir/] [--json]`."""

import sys

from lenet5.predict import main

if __name__ == "__main__":
    sys.exit(main())
