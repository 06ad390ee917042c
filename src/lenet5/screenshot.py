"""A screenshot of TensorBoard's page for a run, taken with headless Chromium.

    python -m lenet5.screenshot outputs/runs/<date>/<time> docs/tensorboard.png [--tab images]

Starts `tensorboard --logdir <run>` on a free localhost port, points Debian's chromium
(`apt-get install chromium`) at it headless, saves the PNG, and stops both.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

# Flags that keep Chromium from reaching for the network, which this machine does not allow.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, seconds: float = 60) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"TensorBoard did not answer at {url} within {seconds:.0f} s")


def screenshot(logdir: Path, out: Path, tab: str = "scalars", width: int = 1600, height: int = 1100,
               tags: str = "") -> Path:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise RuntimeError("chromium is not installed: apt-get install chromium")
    port = free_port()
    tensorboard = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host",
                                    "127.0.0.1", "--port", str(port), "--reload_interval", "0"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_up(base + "/data/runs")
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as profile:
            subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
                            "--virtual-time-budget=20000", f"--screenshot={out.resolve()}", f"{base}/?{urllib.parse.urlencode({'tagFilter': tags})}#{tab}"],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=180)
    finally:
        tensorboard.terminate()
        tensorboard.wait(timeout=30)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lenet5.screenshot", description=__doc__.split("\n\n")[0])
    parser.add_argument("logdir", type=Path, help="a run directory (or a sweep's) with TensorBoard logs")
    parser.add_argument("out", type=Path, help="the PNG to write")
    parser.add_argument("--tab", default="scalars", help="TensorBoard's tab: scalars, images, hparams, ...")
    parser.add_argument("--tags", default="", help="a regular expression: show only the tags it matches "
                        "(TensorBoard's tag filter)")
    parser.add_argument("--size", default="1600x1100", help="window size, WIDTHxHEIGHT")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.split("x"))
    try:
        print(screenshot(args.logdir, args.out, args.tab, width, height, args.tags))
    except (RuntimeError, subprocess.SubprocessError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
