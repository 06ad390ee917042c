"""Training throughput of the train.py path against plain PyTorch and the usual torchvision pipeline.

    python -m lenet5.bench [--batch-sizes 1 32 256] [--repeats 3] [--threads N] [--warmup-batches 200] [overrides]

For each batch size, three pipelines train model=paper with the default optimizer (SDLM with its
per-epoch curvature estimate), the same batch size, torch threads and CPU fast paths:
  a  train.py's path: Lightning, MNISTDataModule, the default callbacks (checkpoints, TensorBoard
     panels, histograms) and TensorBoard logging, built from the composed config as train.py does;
  b  a hand-written loop over the same tensors: the floor for framework overhead;
  c  torchvision.datasets.MNIST with Pad(2), ToTensor and Normalize through a DataLoader.
Each runs in its own process (so each has its own peak memory), warms up on a few hundred
batches, then trains one full epoch of 60,000 images and reports images per second. The three
run in turn, `--repeats` times (a, b, c, a, b, c, ...), and the table keeps each pipeline's best
epoch: noise from anything else on the machine only ever slows an epoch down, and taking turns
exposes the three to the same drift. The table gives a/b and a/c per batch size, measured in this
one invocation on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"


def compose_run(batch_size: int, threads: int, run_dir: Path, extra: list[str]):
    """The composed train.py config, with HydraConfig set up as in a real run."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    os.environ.setdefault("LENET5_ROOT", str(ROOT))
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"data.batch_size={batch_size}", f"threads={threads}", "seed=0", *extra],
                      return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def pipeline_a(cfg, warmup: int) -> tuple[float, int]:
    """train.py's own objects: run.build(cfg), then Trainer.fit for one epoch (after a warm-up fit)."""
    from lenet5.callbacks import EpochTimer
    from lenet5.run import batches_per_step, build, configure_speed

    cfg.trainer.max_epochs = 1
    warm = cfg.copy()
    warm.trainer.limit_train_batches = -(-warmup // batches_per_step(cfg))  # steps holding `warmup` batches
    warm.trainer.limit_val_batches = 1
    datamodule, module, trainer = build(warm)
    configure_speed(warm, module)
    trainer.fit(module, datamodule=datamodule)

    datamodule, module, trainer = build(cfg)
    configure_speed(cfg, module)
    trainer.fit(module, datamodule=datamodule)
    timer = next(c for c in trainer.callbacks if isinstance(c, EpochTimer))
    return timer.seconds[-1], len(datamodule.splits["train"][1])


def _loop(cfg, batches, module, warmup: int) -> tuple[float, int]:
    """Plain PyTorch training over `batches()` (an iterable factory), with the same optimizer."""
    from hydra.utils import instantiate

    from lenet5.sdlm import SDLM, diagonal_hessian

    optimizer = instantiate(cfg.optimizer)(module.parameters())

    def epoch(limit: int | None) -> tuple[float, int]:
        images_seen = 0
        start = time.perf_counter()
        if isinstance(optimizer, SDLM):  # the curvature estimate belongs to each epoch's cost
            sample = next(iter(batches(500)))
            optimizer.set_curvature(diagonal_hessian(module.net, module.loss, *sample))
        for n, (images, labels) in enumerate(batches(cfg.data.batch_size)):
            if limit is not None and n == limit:
                break
            loss = module.loss(module.net(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            images_seen += len(labels)
        return time.perf_counter() - start, images_seen

    epoch(warmup)
    return epoch(None)


def pipeline_b(cfg, warmup: int) -> tuple[float, int]:
    """A hand-written loop over the data module's own tensors, in a seeded shuffled order."""
    from hydra.utils import instantiate

    from lenet5.module import LeNet5Module
    from lenet5.run import configure_speed

    data = instantiate(cfg.data)
    data.prepare_data()
    data.setup("fit")
    images, labels = data.splits["train"]
    module = LeNet5Module(net=_plain(cfg.model.net), loss=_plain(cfg.model.loss), optimizer=_plain(cfg.optimizer))
    configure_speed(cfg, module)

    def batches(size: int):
        order = torch.randperm(len(labels))
        for start in range(0, len(order), size):
            index = order[start:start + size]
            yield images[index], labels[index]

    return _loop(cfg, batches, module, warmup)


def pipeline_c(cfg, warmup: int) -> tuple[float, int]:
    """torchvision's MNIST dataset, per-image Pad/ToTensor/Normalize transforms, a DataLoader."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    from lenet5.data import BACKGROUND, INK
    from lenet5.module import LeNet5Module
    from lenet5.run import configure_speed

    root = Path(tempfile.mkdtemp(prefix="lenet5-bench-"))
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (raw / name).symlink_to(Path(cfg.data.data_dir).resolve() / name)
    # Normalize(mean, std) maps [0, 1] to the paper's [-0.1, 1.175]: x * 1.275 - 0.1
    scale = INK - BACKGROUND
    transform = transforms.Compose([transforms.Pad(2), transforms.ToTensor(),
                                    transforms.Normalize((-BACKGROUND / scale,), (1 / scale,))])
    dataset = datasets.MNIST(str(root), train=True, transform=transform, download=False)
    module = LeNet5Module(net=_plain(cfg.model.net), loss=_plain(cfg.model.loss), optimizer=_plain(cfg.optimizer))
    configure_speed(cfg, module)

    def batches(size: int):
        return DataLoader(dataset, batch_size=size, shuffle=True, num_workers=0)

    return _loop(cfg, batches, module, warmup)


def _plain(node):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(node, resolve=True)


PIPELINES = {"a": pipeline_a, "b": pipeline_b, "c": pipeline_c}


def measure(pipeline: str, batch_size: int, threads: int, warmup: int, extra: list[str]) -> dict:
    """Run one pipeline in this process; returns images/s and peak resident memory."""
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="lenet5-bench-run-") as run_dir:
        cfg = compose_run(batch_size, threads, Path(run_dir), extra)
        seconds, images = PIPELINES[pipeline](cfg, warmup)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"pipeline": pipeline, "batch_size": batch_size, "images_per_second": images / seconds,
            "seconds": seconds, "peak_mib": peak_mib}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lenet5.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32, 256])
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--warmup-batches", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3, help="epochs per pipeline, taken in turns; the best counts")
    parser.add_argument("--pipeline", choices=sorted(PIPELINES), help=argparse.SUPPRESS)  # one measurement
    parser.add_argument("overrides", nargs="*", help="extra train.py overrides for all pipelines")
    args = parser.parse_args(argv)
    if args.pipeline:
        print(json.dumps(measure(args.pipeline, args.batch_sizes[0], args.threads, args.warmup_batches,
                                 args.overrides)))
        return 0

    rows = []
    for batch_size in args.batch_sizes:
        result: dict[str, dict] = {}
        for _ in range(args.repeats):
            for pipeline in PIPELINES:
                command = [sys.executable, "-m", "lenet5.bench", "--pipeline", pipeline, "--batch-sizes",
                           str(batch_size), "--threads", str(args.threads), "--warmup-batches",
                           str(args.warmup_batches), *args.overrides]
                done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
                if done.returncode != 0:
                    print(done.stderr[-3000:], file=sys.stderr)
                    return 1
                run = json.loads(done.stdout.strip().splitlines()[-1])
                print(f"batch {batch_size:>3} {pipeline}: {run['images_per_second']:,.0f} images/s, "
                      f"peak {run['peak_mib']:,.0f} MiB", file=sys.stderr, flush=True)
                best = result.get(pipeline)
                if best is None or run["images_per_second"] > best["images_per_second"]:
                    result[pipeline] = run
        rows.append(result)

    print(f"\nmodel=paper, default optimizer, {args.threads} torch threads, one epoch of 60,000 images after "
          f"{args.warmup_batches} warm-up batches, best of {args.repeats} taken in turns; images per second "
          f"(peak memory)\n")
    print("| batch | a: train.py (Lightning) | b: plain PyTorch loop | c: torchvision pipeline | a/b | a/c |")
    print("|---|---|---|---|---|---|")
    for result in rows:
        a, b, c = (result[p] for p in "abc")
        cells = [f"{r['images_per_second']:,.0f} ({r['peak_mib']:,.0f} MiB)" for r in (a, b, c)]
        print(f"| {a['batch_size']} | {' | '.join(cells)} | {a['images_per_second'] / b['images_per_second']:.2f} "
              f"| {a['images_per_second'] / c['images_per_second']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
