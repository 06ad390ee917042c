"""`python -m lenet5.bench` runs its three pipelines in turns and reports each one's best epoch.

(Its figures are speeds: the test checks what the table says about its own runs, never a speed.)
"""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import ROOT


def test_the_bench_table_keeps_each_pipelines_best_epoch_and_their_ratios(tiny_mnist):
    command = [sys.executable, "-m", "lenet5.bench", "--batch-sizes", "32", "--repeats", "2", "--warmup-batches", "2",
               "--threads", "1", f"data.data_dir={tiny_mnist}", "data.verify=false"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    runs = re.findall(r"batch\s+32 ([abc]): ([\d,]+) images/s", done.stderr)
    assert [pipeline for pipeline, _ in runs] == list("abcabc")  # in turns, twice
    best = {p: max(int(v.replace(",", "")) for q, v in runs if q == p) for p in "abc"}

    assert "best of 2 taken in turns" in done.stdout
    (row,) = [line for line in done.stdout.splitlines() if line.startswith("| 32 |")]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    shown = [int(cell.split(" (")[0].replace(",", "")) for cell in cells[1:4]]
    assert shown == [best["a"], best["b"], best["c"]]
    a_b, a_c = float(cells[4]), float(cells[5])
    assert abs(a_b - best["a"] / best["b"]) <= 0.01 + best["a"] / best["b"] * 0.002
    assert abs(a_c - best["a"] / best["c"]) <= 0.01 + best["a"] / best["c"] * 0.002
