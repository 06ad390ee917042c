"""Resume, determinism, evaluation, prediction, and clear failures on bad input."""

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lenet5.checkpoints import load_checkpoint

from conftest import ROOT, run_train, tiny_run_overrides, write_mnist_like


@pytest.fixture(scope="module")
def slow_mnist(tmp_path_factory) -> Path:
    """3,000 training images: at batch size 1, an epoch lasts seconds, long enough to be killed in."""
    return write_mnist_like(tmp_path_factory.mktemp("slow-mnist"), train=3000, test=200)


def resumable_overrides(data_dir: Path, run_dir: Path) -> list[str]:
    return tiny_run_overrides(data_dir, run_dir, "trainer.max_epochs=3", "data.batch_size=1", "seed=5", "threads=1",
                              "optimizer=sdlm_minibatch", "scheduler=paper", "data.distort=true",
                              "callbacks.histograms=null")


def final_weights(run_dir: Path) -> dict:
    return load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["state_dict"]


def test_a_killed_run_resumes_and_ends_exactly_like_an_uninterrupted_one(slow_mnist, tmp_path):
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    result = run_train(*resumable_overrides(slow_mnist, clean))
    assert result.returncode == 0, result.stderr[-3000:]

    process = subprocess.Popen([sys.executable, "train.py", *resumable_overrides(slow_mnist, killed)], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = killed / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not last.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    time.sleep(1.5)  # into the second epoch, which takes several seconds
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert load_checkpoint(last)["epoch"] == 0 and not (killed / "results.json").exists()

    resumed = run_train(f"resume={killed}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected, got = json.loads((clean / "results.json").read_text()), json.loads((killed / "results.json").read_text())
    for key in ("test_error", "val_error_best", "best_epoch", "epochs"):
        assert got[key] == expected[key], key
    for name, tensor in final_weights(clean).items():
        assert torch.equal(final_weights(killed)[name], tensor), name
    assert (killed / ".hydra" / "overrides.yaml").read_text() == (clean / ".hydra" / "overrides.yaml").read_text()


def test_the_same_seed_and_config_give_identical_metrics(tiny_mnist, tmp_path):
    runs = [tmp_path / "a", tmp_path / "b"]
    for run_dir in runs:
        result = run_train(*tiny_run_overrides(tiny_mnist, run_dir, "seed=11", "threads=1", "trainer.max_epochs=2",
                                               "data.distort=true", "optimizer=adam"))
        assert result.returncode == 0, result.stderr[-3000:]
    a, b = (json.loads((run / "results.json").read_text()) for run in runs)
    assert (a["test_error"], a["val_error_best"]) == (b["test_error"], b["val_error_best"])
    for name, tensor in final_weights(runs[0]).items():
        assert torch.equal(final_weights(runs[1])[name], tensor), name


def test_resume_without_a_run_directory_is_a_clear_error(tmp_path):
    result = run_train(f"resume={tmp_path}")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "is not a run directory" in result.stderr


@pytest.fixture(scope="module")
def modern_run(tiny_mnist, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("modern-run")
    result = run_train(*tiny_run_overrides(tiny_mnist, run_dir, "model=modern", "optimizer=adam",
                                           "trainer.max_epochs=3", "test_ckpt=last", "callbacks=minimal"))
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_eval_uses_the_runs_saved_config_and_writes_a_confusion_matrix(modern_run):
    """The run standardized its inputs (model=modern): only its saved config reproduces its test error."""
    result = run_script("eval.py", f"ckpt_path={modern_run / 'checkpoints' / 'last.ckpt'}")
    assert result.returncode == 0, result.stderr
    trained = json.loads((modern_run / "results.json").read_text())["test_error"]
    evaluated = json.loads((modern_run / "eval" / "last" / "results.json").read_text())["test_error"]
    assert evaluated == pytest.approx(trained, abs=1e-4)
    assert f"test error: {evaluated:.2f}%" in result.stdout
    rows = (modern_run / "eval" / "last" / "confusion_matrix.csv").read_text().splitlines()
    counts = np.array([[int(c) for c in row.split(",")[1:]] for row in rows[1:]])
    assert counts.shape == (10, 10) and counts.sum() == 128
    assert 100 * (1 - np.trace(counts) / 128) == pytest.approx(evaluated, abs=1e-4)
    assert (modern_run / "eval" / "last" / "confusion_matrix.png").stat().st_size > 0


@pytest.mark.parametrize("damage", ["truncated", "not_ours", "missing"])
def test_eval_refuses_a_bad_checkpoint_in_one_line(modern_run, tmp_path, damage):
    path = tmp_path / "bad.ckpt"
    if damage == "truncated":
        path.write_bytes((modern_run / "checkpoints" / "last.ckpt").read_bytes()[:5000])
    elif damage == "not_ours":
        torch.save({"weights": torch.zeros(3)}, path)
    result = run_script("eval.py", f"ckpt_path={path}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    message = result.stderr.strip()
    assert message.startswith("error: ") and len(message.splitlines()) == 1
    assert {"truncated": "not a readable checkpoint", "not_ours": "not a LeNet-5 checkpoint",
            "missing": "no checkpoint at"}[damage] in message


def test_checkpoints_load_with_weights_only(modern_run):
    checkpoint = torch.load(modern_run / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["hyper_parameters"]["net"]["_target_"] == "lenet5.LeNet5"
    assert checkpoint["input"]["scaling"] == "standardize"


def save_digit(image: np.ndarray, path: Path, invert: bool, size: tuple[int, int]) -> None:
    picture = Image.fromarray(255 - image if invert else image).resize(size, Image.BILINEAR)
    picture.convert("RGB").save(path)


def test_predict_classifies_images_of_any_size_and_polarity_like_the_network(modern_run, tiny_mnist, tmp_path):
    from lenet5.evaluate import module_from_checkpoint
    from lenet5.mnist import load_split

    images, _ = load_split(tiny_mnist, "test")
    folder = tmp_path / "digits"
    folder.mkdir()
    for n in range(6):  # dark on light and light on dark, enlarged, as PNG and JPG
        save_digit(images[n].numpy(), folder / f"{n}.{'png' if n % 2 else 'jpg'}", invert=n < 3, size=(112, 112))
    (folder / "notes.txt").write_text("not a digit")  # not a PNG or JPG: ignored in a directory
    result = run_script("predict.py", "--ckpt", str(modern_run / "checkpoints" / "last.ckpt"), str(folder), "--json")
    assert result.returncode == 0, result.stderr
    predictions = json.loads(result.stdout)
    assert [Path(p["file"]).stem for p in predictions] == [str(n) for n in range(6)]
    assert all(len(p["probabilities"]) == 10 and abs(sum(p["probabilities"]) - 1) < 1e-3 for p in predictions)
    module, _ = module_from_checkpoint(modern_run / "checkpoints" / "last.ckpt")
    from lenet5.predict import load_grayscale, mnist_field
    for p in predictions:  # the printed digit is the argmax of the printed probabilities
        assert p["digit"] == int(np.argmax(p["probabilities"]))
    field = mnist_field(load_grayscale(folder / "1.png"))
    assert field.shape == (28, 28) and field.dtype == torch.uint8
    rows, cols = torch.nonzero(field > 50, as_tuple=True)
    assert max(rows.max() - rows.min(), cols.max() - cols.min()) <= 20  # fits the 20x20 box


def test_predict_reports_bad_images_and_keeps_the_good_results(modern_run, tmp_path):
    good, not_image, bomb = tmp_path / "good.png", tmp_path / "fake.png", tmp_path / "bomb.png"
    digit = np.zeros((28, 28), dtype=np.uint8)
    digit[6:22, 12:16] = 255
    save_digit(digit, good, invert=True, size=(60, 60))
    not_image.write_text("<html>404</html>")
    Image.new("1", (10_000, 5_000)).save(bomb)  # 50 million pixels in a few kilobytes
    result = run_script("predict.py", "--ckpt", str(modern_run / "checkpoints" / "last.ckpt"), str(good),
                        str(not_image), str(bomb))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stdout.startswith(f"{good}: ")
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 2
    assert "fake.png is not an image" in errors[0] and "bomb.png is too large to decode safely" in errors[1]


@pytest.mark.parametrize(("override", "message"), [
    ("data.batch_size=0", "data.batch_size must be a whole number of at least 1, got 0"),
    ("data.batch_size=-4", "data.batch_size must be a whole number of at least 1, got -4"),
    ("trainer.max_epochs=0", "trainer.max_epochs must be a whole number of at least 1, got 0"),
    ("trainer.max_epoch=3", "there is no key 'max_epoch' in 'trainer'; valid keys there: "),
    ("optimizer=sgdd", "Available options in 'optimizer'"),
    ("ckpt_path=sweep/0_seed=1/checkpoints/last.ckpt",
     """quote it: 'ckpt_path="sweep/0_seed=1/checkpoints/last.ckpt"'"""),
])
def test_a_bad_override_is_one_clear_message(tmp_path, override, message):
    result = run_train(override, f"hydra.run.dir={tmp_path}")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert message in result.stderr
    if "max_epoch=" in override:
        assert "max_epochs" in result.stderr.split("valid keys there:")[1]


def test_an_unwritable_data_directory_is_one_clear_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = run_train(f"data.data_dir={blocker / 'mnist'}", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: cannot write to the data directory")


def test_a_corrupt_idx_file_is_named(tiny_mnist, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for f in tiny_mnist.iterdir():
        (data / f.name).write_bytes(f.read_bytes())
    (data / "t10k-images-idx3-ubyte").write_bytes((tiny_mnist / "t10k-images-idx3-ubyte").read_bytes()[:-50])
    result = run_train(*tiny_run_overrides(data, tmp_path / "run"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "t10k-images-idx3-ubyte is truncated" in result.stderr.strip().splitlines()[-1]


def test_a_non_finite_loss_stops_at_its_step_and_keeps_the_last_good_checkpoint(tiny_mnist, tmp_path):
    # epoch 0 trains normally; from epoch 1 the rate is multiplied by 1e30 and the loss blows up
    result = run_train(*tiny_run_overrides(tiny_mnist, tmp_path, "trainer.max_epochs=3", "model=modern",
                                           "optimizer=sgd", "scheduler=step", "scheduler.step_size=1",
                                           "scheduler.gamma=1e30", "callbacks=minimal"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: the training loss became") and "(epoch 1, batch " in line
    last = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert last["epoch"] == 0
    assert all(torch.isfinite(t).all() for t in last["state_dict"].values())


def test_a_checkpoint_that_cannot_be_written_never_replaces_the_last_good_one(tiny_mnist, tmp_path):
    """A real write failure: the resumed process may not write files over 100 kB (RLIMIT_FSIZE),
    so its next checkpoint (about 250 kB) fails half-way, as it would on a full disk."""
    first = run_train(*tiny_run_overrides(tiny_mnist, tmp_path, "trainer.max_epochs=1", "callbacks=minimal",
                                          "logger=csv"))
    assert first.returncode == 0, first.stderr[-3000:]
    before = (tmp_path / "checkpoints" / "last.ckpt").read_bytes()

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-large write then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    result = subprocess.run([sys.executable, "train.py", f"resume={tmp_path}", "trainer.max_epochs=2"], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=300, preexec_fn=limit_file_size)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: could not write the checkpoint")
    assert (tmp_path / "checkpoints" / "last.ckpt").read_bytes() == before
    assert not list((tmp_path / "checkpoints").glob(".*.tmp"))
