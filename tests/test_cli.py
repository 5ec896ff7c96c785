"""End-to-end tests of ``transferkit finetune`` / ``inspect`` through the real CLI.

Runs use the tiny ``tests.tiny_models:tinynet`` backbone on 16 px digits subsets, so each takes seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from transferkit.cli import main

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "finetune.py"
TINY = "tests.tiny_models:tinynet"
FAST = ["--backbone", TINY, "--img-size", "16", "--batch-size", "16", "--workers", "0", "--quiet"]
SUBSET = ["--limit-train", "160", "--limit-val", "80"]


def cli_env() -> dict[str, str]:
    """The environment of a CLI subprocess: the repository importable (for tests.tiny_models)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def run_cli(args: list[str], cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(SCRIPT), *args]
    return subprocess.run(cmd, cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=timeout)


def evaluate_export(run: Path, limit_val: int, seed: int = 0) -> float:
    """Rebuild the model from model.safetensors + labels.json and measure its validation accuracy."""
    from safetensors.torch import load_file

    from transferkit.backbones import create_model
    from transferkit.data import limit_dataset, load_digits_data

    labels = json.loads((run / "labels.json").read_text())
    model = create_model(labels["backbone"], labels["num_classes"], weights=run / "model.safetensors")
    assert model.pretrained and len(model.load_report.loaded) == len(load_file(run / "model.safetensors"))
    model.eval()
    bundle = load_digits_data(labels["img_size"], labels["mean"], labels["std"], augment=False)
    val = limit_dataset(bundle.val, limit_val, seed)
    x = torch.stack([val[i][0] for i in range(len(val))])
    y = torch.tensor([val[i][1] for i in range(len(val))])
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One real run in a subprocess; flags partly from --config (the command line wins on epochs)."""
    cwd = tmp_path_factory.mktemp("cli")
    (cwd / "cfg.yaml").write_text("epochs: 5\nlr: 0.02\nweight-decay: 0.0\nlimit_val: 80\n")
    proc = run_cli(
        [*FAST, "--config", "cfg.yaml", "--epochs", "3", "--limit-train", "160", "--classes", "10"], cwd
    )
    assert proc.returncode == 0, proc.stderr
    runs = list((cwd / "runs").iterdir())
    assert len(runs) == 1
    return runs[0], proc


def test_run_folder_is_complete_and_valid(digits_run):
    from transferkit.checkpoint import load_checkpoint
    from transferkit.report import read_metrics_csv

    run, proc = digits_run
    assert run.name.endswith("-tests.tiny_models-tinynet")
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("best val accuracy") and str(Path("runs") / run.name) in last
    assert "Traceback" not in proc.stderr
    assert "RANDOM initialisation" in proc.stderr  # weights=auto without weights: a prominent warning

    args = yaml.safe_load((run / "args.yaml").read_text())
    assert args["args"]["epochs"] == 3  # the command line wins over --config
    assert (
        args["args"]["lr"] == 0.02
        and args["args"]["weight_decay"] == 0.0
        and args["args"]["batch_size"] == 16
    )
    assert args["resolved"]["pretrained_weights_used"] is False
    assert args["resolved"]["train_images"] == 160 and args["resolved"]["val_images"] == 80

    rows = read_metrics_csv(run / "metrics.csv")
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert all(r["lr"] > 0 and r["seconds"] > 0 and 0 <= r["val_acc"] <= 1 for r in rows)
    for name in ("loss.png", "accuracy.png", "confusion_matrix.png"):
        with Image.open(run / name) as img:
            img.verify()

    best_acc = max(r["val_acc"] for r in rows)
    assert f"{best_acc:.2%}" in last
    best = load_checkpoint(run / "best.pt")
    assert best["epoch"] + 1 == max(rows, key=lambda r: r["val_acc"])["epoch"]  # checkpoints count from 0
    assert load_checkpoint(run / "last.pt")["epoch"] == 2
    labels = json.loads((run / "labels.json").read_text())
    assert labels["class_names"] == [str(i) for i in range(10)]
    assert evaluate_export(run, 80) == pytest.approx(best_acc, abs=1e-6)


def test_eval_only_reproduces_best_and_writes_nothing(digits_run, capsys):
    run, _ = digits_run
    before = sorted((p.name, p.stat().st_mtime_ns) for p in run.iterdir())
    rc = main(["finetune", *FAST, *SUBSET, "--resume", str(run / "best.pt"), "--eval-only"])
    assert rc == 0
    out = capsys.readouterr().out.strip().splitlines()[-1]
    labels = json.loads((run / "labels.json").read_text())
    assert f"val accuracy {labels['val_acc']:.2%}" in out
    assert sorted((p.name, p.stat().st_mtime_ns) for p in run.iterdir()) == before


def test_inspect_subcommand(digits_run, capsys):
    run, _ = digits_run
    assert main(["inspect", str(run / "model.safetensors"), "--model", TINY, "--classes", "10"]) == 0
    out = capsys.readouterr().out
    assert "model.safetensors" in out


def test_image_folder_run_and_linear_probe(tmp_path):
    """--data DIR (class names from folders), --linear-probe with the feature cache."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for c, name in enumerate(["zero", "one", "two"]):
        folder = tmp_path / "data" / name
        folder.mkdir(parents=True)
        for i, img in enumerate(digits.images[digits.target == c][:12]):
            Image.fromarray((img * 15).astype("uint8")).resize((16, 16)).save(folder / f"{i}.png")
    (tmp_path / "data" / "one" / "broken.png").write_bytes(b"garbage")
    out = tmp_path / "out"
    proc = run_cli(
        [
            *FAST,
            "--data",
            "data",
            "--epochs",
            "2",
            "--linear-probe",
            "--output",
            "out",
            "--lr",
            "0.05",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1].startswith("best val accuracy")
    assert "skipping 1 unreadable image file" in proc.stderr
    args = yaml.safe_load((out / "args.yaml").read_text())["resolved"]
    assert args["class_names"] == ["one", "two", "zero"] and args["unreadable_images_skipped"] == 1
    assert args["feature_cache"] is True and args["train_images"] + args["val_images"] == 36
    assert json.loads((out / "labels.json").read_text())["class_names"] == ["one", "two", "zero"]
    assert (out / "metrics.csv").read_text().startswith("epoch,")


def test_image_folder_train_val_layout_with_workers(tmp_path):
    """DIR/train + DIR/val, --classes agreeing, DataLoader workers, an unreadable file skipped up front."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for c, name in enumerate(["cat", "dog", "fox"]):
        for i, img in enumerate(digits.images[digits.target == c][:12]):
            folder = tmp_path / "data" / ("val" if i % 3 == 0 else "train") / name
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray((img * 15).astype("uint8")).resize((16, 16)).save(folder / f"{i}.png")
    (tmp_path / "data" / "train" / "dog" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    args = [*FAST, "--data", "data", "--classes", "3", "--epochs", "2", "--workers", "2", "--output", "out"]
    proc = run_cli(args, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "skipping 1 unreadable image file" in proc.stderr and "Traceback" not in proc.stderr
    resolved = yaml.safe_load((tmp_path / "out" / "args.yaml").read_text())["resolved"]
    assert (resolved["train_images"], resolved["val_images"]) == (24, 12)
    assert resolved["class_names"] == ["cat", "dog", "fox"] and resolved["unreadable_images_skipped"] == 1
    assert json.loads((tmp_path / "out" / "labels.json").read_text())["class_names"] == ["cat", "dog", "fox"]


@pytest.mark.parametrize("strict", [False, True], ids=["skip", "strict"])
def test_file_unreadable_during_the_run_never_crashes_a_worker(tmp_path, monkeypatch, capfd, strict):
    """A file that passes the up-front check but cannot be read in a DataLoader worker: skipped (the next
    image stands in, with a warning), or with --strict-data one error line, exit 2, no traceback."""
    import transferkit.data.scan

    for c in ("a", "b"):
        (tmp_path / "data" / c).mkdir(parents=True)
        for i in range(8):
            Image.new("RGB", (16, 16), (40 * i, 20 * i, 0) if c == "a" else (0, 9 * i, 30 * i)).save(
                tmp_path / "data" / c / f"{i}.png"
            )
    (tmp_path / "data" / "b" / "broken.png").write_bytes(b"garbage")
    # as if it broke after the check
    monkeypatch.setattr(transferkit.data.scan, "_image_ok", lambda path: True)
    monkeypatch.chdir(tmp_path)
    argv = ["finetune", *FAST, "--data", "data", "--epochs", "1", "--batch-size", "4", "--workers", "2"]
    rc = main([*argv, "--output", "out", *(["--strict-data"] if strict else [])])
    err = capfd.readouterr().err
    assert "Traceback" not in err
    if strict:
        assert rc == 2
        line = err.strip().splitlines()[-1]
        assert (
            line.startswith("error: cannot read image") and "broken.png" in line and "--strict-data" in line
        )
    else:
        assert rc == 0, err
        assert "skipping image" in err and "broken.png" in err
        assert (tmp_path / "out" / "model.safetensors").is_file()


_FLAGS = (
    "--weights --init-checkpoint --rule --epochs --batch-size --lr --optimizer --weight-decay --lr-decay "
    "--scheduler --warmup-epochs --freeze --unfreeze-at --unfreeze-every --linear-probe --amp --channels-last "
    "--compile --device --workers --seed --output --resume --eval-only --config --data --val-split --classes "
    "--img-size --strict-data --overwrite --quiet"
)
ISSUE_FLAGS = _FLAGS.split()


def test_every_flag_of_the_issue_is_offered(capsys):
    assert main(["finetune", "--help"]) == 0
    text = capsys.readouterr().out
    missing = [f for f in ISSUE_FLAGS if f not in text]
    assert not missing
    assert "cosine,step,onecycle,none" in text.replace(" ", "").replace("{", "").replace("}", "")


def _weights_file(tmp: Path) -> str:
    torch.manual_seed(5)
    from tests.tiny_models import tinynet

    torch.save(tinynet(num_classes=10).state_dict(), tmp / "tiny.pth")
    return "tiny.pth"


def _prefixed_checkpoint(tmp: Path) -> str:
    """A training checkpoint whose keys sit under 'net.encoder.' with the head under 'net.classifier.'."""
    from tests.tiny_models import tinynet

    sd = tinynet(num_classes=10).state_dict()
    renamed = {
        ("net.classifier." + k[3:] if k.startswith("fc.") else "net.encoder." + k): v for k, v in sd.items()
    }
    torch.save({"state_dict": renamed, "epoch": 3}, tmp / "foreign.pt")
    return "foreign.pt"


def _lr(rows: list, group: str) -> list:
    """A group's learning rate per epoch (the single ``lr`` column while all groups share one rate)."""
    return [r.get("lr") if "lr" in r else r.get(f"lr_{group}") for r in rows]


FLAG_RUNS = {
    "weights-path": (
        ["--weights", "{x}"],
        _weights_file,
        lambda a, rows: (
            a["pretrained_weights_used"]
            and a["weights_source"].endswith("tiny.pth")
            # the default recipe on pretrained weights: everything trains from the start, the new head at
            # 3 x --lr (1e-2 on pretrained weights), the groups below spread from --lr down to 0.1 x --lr
            # (stem, block, head: x0.316 a level)
            and a["freeze"].startswith("nothing frozen: every layer trains (head at 3 x lr")
            and _lr(rows, "head")[0] == pytest.approx(3e-2)
            and _lr(rows, "block")[0] == pytest.approx(1e-2 * 0.1**0.5)
            and _lr(rows, "stem")[0] == pytest.approx(1e-3)
        ),
    ),
    "weights-none": (
        ["--weights", "none"],
        None,
        lambda a, rows: not a["pretrained_weights_used"] and a["freeze"].startswith("nothing frozen"),
    ),
    "init-checkpoint-rules": (
        [
            "--init-checkpoint",
            "{x}",
            "--rule",
            "net.encoder.=>",
            "--rule",
            r"re:^net\.classifier\.=>fc.",
            "--key",
            "state_dict",
        ],
        _prefixed_checkpoint,
        # issue 16 item 13: the weights came from the init checkpoint, not "random"
        lambda a, rows: (
            a["init_checkpoint_tensors"] == 14
            and a["pretrained_weights_used"]
            and a["weights_source"] == "init checkpoint foreign.pt"
        ),
    ),  # fmt: skip
    "sgd-step-warmup-lr-decay": (
        [
            "--optimizer",
            "sgd",
            "--lr",
            "0.1",
            "--weight-decay",
            "0.001",
            "--lr-decay",
            "0.5",
            "--scheduler",
            "step",
            "--warmup-epochs",
            "1",
            "--epochs",
            "3",
        ],
        None,
        lambda a, rows: (
            _lr(rows, "head")[0] < 0.01  # warming up
            and _lr(rows, "stem")[1]
            == pytest.approx(_lr(rows, "head")[1] * 0.25)  # two levels below the head
            and _lr(rows, "head")[2] < _lr(rows, "head")[1]
        ),  # stepped down
    ),  # fmt: skip
    "onecycle": (["--scheduler", "onecycle"], None, lambda a, rows: _lr(rows, "head")[0] < 1e-3),
    "scheduler-none": (["--scheduler", "none"], None, lambda a, rows: _lr(rows, "head") == [1e-3, 1e-3]),
    "freeze-groups": (
        ["--freeze", "stem"],
        None,
        lambda a, rows: (
            a["freeze"] == "frozen for the whole run: stem"
            and a["trainable_parameters_at_start"] < a["parameters"]
        ),
    ),
    "unfreeze-at": (
        ["--freeze", "backbone", "--unfreeze-at", "1:block"],
        None,
        lambda a, rows: _lr(rows, "block")[0] is None and _lr(rows, "block")[1] is not None,
    ),
    "unfreeze-every": (
        ["--freeze", "backbone", "--unfreeze-every", "1", "--epochs", "3"],
        None,
        lambda a, rows: [r.get("lr_stem") is not None for r in rows] == [False, False, True],
    ),
    "linear-probe": (
        ["--linear-probe"],
        None,
        lambda a, rows: (
            a["feature_cache"] and a["aug"] == "none" and a["trainable_parameters_at_start"] < a["parameters"]
        ),
    ),
    # recipe options
    "aug-randaugment": (
        ["--aug", "randaugment"],
        None,
        lambda a, rows: a["aug"].startswith("randaugment (timm"),
    ),
    "aug-trivialaugment-linear-probe": (
        ["--linear-probe", "--aug", "trivialaugment"],
        None,
        lambda a, rows: not a["feature_cache"] and a["aug"].startswith("trivialaugment (torchvision"),
    ),
    "mixup-cutmix": (
        ["--mixup", "0.2", "--cutmix", "1.0", "--mixup-prob", "0.5", "--label-smoothing", "0.1"],
        None,
        lambda a, rows: a["mixup"].startswith("mixup 0.2 + cutmix 1 (p=0.5"),
    ),
    "model-ema": (
        ["--model-ema"],
        None,
        lambda a, rows: (
            a["model_ema"].startswith("decay 0.999 with timm's warmup")
            and all(r["ema_val_acc"] is not None for r in rows)
            and a["best_weights"].split(":")[0] in ("model", "ema")
        ),
    ),
    "drop-path-timm": (
        ["--backbone", "timm:test_efficientnet", "--img-size", "32", "--drop-path", "0.1"],
        None,
        lambda a, rows: a["drop_path"].startswith("rate 0.1: ") and "DropPath layers" in a["drop_path"],
    ),
    "layer-decay-thaw": (
        ["--layer-decay", "0.5", "--freeze", "backbone", "--unfreeze-at", "1"],
        None,
        lambda a, rows: (
            a["layer_decay"].startswith("x0.5 per layer over 3 layers")
            and _lr(rows, "block")[0] is None
            and _lr(rows, "stem")[1] == pytest.approx(_lr(rows, "head")[1] * 0.25)  # joined at its rate
            and _lr(rows, "block")[1] == pytest.approx(_lr(rows, "head")[1] * 0.5)
        ),
    ),
    "amp-channels-last-cpu-seed": (
        ["--amp", "--channels-last", "--device", "cpu", "--seed", "3"],
        None,
        lambda a, rows: a["device"] == "cpu" and len(rows) == 2,
    ),
}


@pytest.mark.parametrize("name", list(FLAG_RUNS))
def test_training_flags_take_effect(tmp_path, monkeypatch, capsys, name):
    """Each training flag of the issue, through the CLI, visibly changes what the run did."""
    extra, setup, check = FLAG_RUNS[name]
    monkeypatch.chdir(tmp_path)
    made = setup(tmp_path) if setup else None
    extra = [a.replace("{x}", made) if made else a for a in extra]
    argv = ["finetune", *FAST, "--limit-train", "64", "--limit-val", "32", "--epochs", "2", *extra]
    assert main([*argv, "--output", "out"]) == 0, capsys.readouterr().err
    from transferkit.report import read_metrics_csv

    resolved = yaml.safe_load((tmp_path / "out" / "args.yaml").read_text())["resolved"]
    assert check(resolved, read_metrics_csv(tmp_path / "out" / "metrics.csv"))


def test_resume_refuses_a_changed_schedule_and_writes_nothing(digits_run, capsys):
    """--resume with a longer --epochs would train the extra epochs at the cosine schedule's final LR (0)."""
    run, _ = digits_run
    before = sorted((p.name, p.stat().st_mtime_ns) for p in run.iterdir())
    assert main(["finetune", "--resume", str(run), "--epochs", "5"]) == 2
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1
        and "--epochs 5" in err
        and "the run has --epochs 3" in err
        and "--init-checkpoint" in err
    )
    assert sorted((p.name, p.stat().st_mtime_ns) for p in run.iterdir()) == before
    # issue 16 item 12: no raw None for a value the run did not set
    assert main(["finetune", "--resume", str(run), "--data", "photos"]) == 2
    err = capsys.readouterr().err
    assert "--data photos (the run has no --data (the embedded digits))" in err and "None" not in err, err


def test_resume_refuses_changed_recipe_options_and_writes_nothing(digits_run, capsys):
    run, _ = digits_run
    before = sorted((p.name, p.stat().st_mtime_ns) for p in run.iterdir())
    assert main(["finetune", "--resume", str(run), "--model-ema", "--aug", "trivialaugment"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--aug trivialaugment (the run has no --aug)" in err, err
    assert "--model-ema 0.999 (the run has no --model-ema)" in err and "None" not in err
    assert sorted((p.name, p.stat().st_mtime_ns) for p in run.iterdir()) == before


def test_recipe_flags_are_offered(capsys):
    assert main(["finetune", "--help"]) == 0
    text = capsys.readouterr().out
    for flag in (
        "--aug",
        "--mixup",
        "--cutmix",
        "--mixup-prob",
        "--model-ema",
        "--drop-path",
        "--layer-decay",
    ):
        assert flag in text
    assert "--augment" not in text  # replaced by --aug (a 0.x package keeps no aliases)


def test_ema_that_validates_better_is_exported_and_recorded(tmp_path, monkeypatch, capsys):
    """When the EMA validates better, model.safetensors holds the EMA and labels.json/args.yaml say so."""
    from safetensors.torch import load_file

    from transferkit.checkpoint import load_checkpoint
    from transferkit.train import Trainer

    plain = Trainer.evaluate

    def ema_wins(self, loader=None, *, model=None):
        result = plain(self, loader, model=model)
        if model is not None:
            result.acc = min(1.0, result.acc + 0.5)
        return result

    monkeypatch.setattr(Trainer, "evaluate", ema_wins)
    monkeypatch.chdir(tmp_path)
    argv = [
        "finetune",
        *FAST,
        "--limit-train",
        "64",
        "--limit-val",
        "32",
        "--epochs",
        "2",
        "--model-ema",
        "0.9",
    ]
    assert main([*argv, "--output", "out"]) == 0
    assert "of the model EMA" in capsys.readouterr().out.strip().splitlines()[-1]
    out = tmp_path / "out"
    labels = json.loads((out / "labels.json").read_text())
    resolved = yaml.safe_load((out / "args.yaml").read_text())["resolved"]
    best = load_checkpoint(out / "best.pt")
    assert labels["best_weights"] == "ema" and resolved["best_weights"].startswith(
        "ema: the model EMA of epoch"
    )
    assert best["extra"]["best_weights"] == "ema" and set(best["models"]) == {"model", "ema"}
    exported = load_file(out / "model.safetensors")
    ema = {k.removeprefix("backbone."): v for k, v in best["models"]["ema"].items()}
    assert exported.keys() == ema.keys() and all(torch.equal(exported[k], ema[k]) for k in ema)


def test_progress_bars_only_on_a_terminal(tmp_path, digits_run):
    """tqdm bars on rank 0 when stderr is a terminal; plain lines otherwise (the digits run had a pipe)."""
    pty = pytest.importorskip("pty")
    import fcntl
    import struct
    import termios
    import threading

    _, piped = digits_run
    assert "it/s" not in piped.stderr and "s/it" not in piped.stderr and "%|" not in piped.stderr
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a fresh pty has 0 columns
    seen = bytearray()

    def read() -> None:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                return
            if not chunk:
                return
            seen.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    args = [*FAST, *SUBSET, "--epochs", "1", "--output", "tty"]
    args.remove("--quiet")
    cmd = [sys.executable, str(SCRIPT), *args]
    proc = subprocess.run(cmd, cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=slave, text=True,
                          timeout=180)  # fmt: skip
    os.close(slave)
    reader.join(10)
    os.close(master)
    assert proc.returncode == 0
    bars = seen.decode(errors="replace")
    assert "epoch 1/1:" in bars and "it/s" in bars
    assert proc.stdout.strip().splitlines()[-1].startswith("best val accuracy")  # bars never on stdout
    assert "%|" not in proc.stdout


def _ckpt_epoch(path: Path) -> int:
    from transferkit.checkpoint import load_checkpoint

    return load_checkpoint(path)["epoch"]


def _kill_resume_and_compare(tmp_path: Path, args: list[str], epochs: int) -> dict:
    """Run ``args`` once uninterrupted ("ref") and once SIGKILLed as soon as its first last.pt exists, then
    resumed with ``--resume`` alone; assert the two runs' checkpoints (every model in them, EMA included),
    exports and metrics are identical. Returns the resumed run's last.pt."""
    from safetensors.torch import load_file

    from transferkit.checkpoint import load_checkpoint

    ref = run_cli([*args, "--output", "ref"], tmp_path)
    assert ref.returncode == 0, ref.stderr

    proc = subprocess.Popen([sys.executable, str(SCRIPT), *args, "--output", "killed"], cwd=tmp_path, env=cli_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    last = tmp_path / "killed" / "last.pt"
    deadline = time.monotonic() + 300
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    assert _ckpt_epoch(last) < epochs - 1

    # the run's args.yaml supplies every flag: --resume FOLDER is enough
    resumed = run_cli(["--resume", "killed"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed" in resumed.stdout

    a = load_checkpoint(tmp_path / "ref" / "last.pt")
    b = load_checkpoint(last)
    assert a["models"].keys() == b["models"].keys()
    for name in a["models"]:
        ma, mb = a["models"][name], b["models"][name]
        assert ma.keys() == mb.keys() and all(torch.equal(ma[k], mb[k]) for k in ma), name
    assert a["extra"].get("ema") == b["extra"].get("ema")
    wa, wb = (
        load_file(tmp_path / "ref" / "model.safetensors"),
        load_file(tmp_path / "killed" / "model.safetensors"),
    )
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    strip = [line.rsplit(",", 1)[0] for line in (tmp_path / "ref" / "metrics.csv").read_text().splitlines()]
    again = [
        line.rsplit(",", 1)[0] for line in (tmp_path / "killed" / "metrics.csv").read_text().splitlines()
    ]
    assert strip == again  # same metrics, epoch for epoch (seconds aside)
    labels = [json.loads((tmp_path / run / "labels.json").read_text()) for run in ("ref", "killed")]
    assert labels[0]["best_weights"] == labels[1]["best_weights"]
    return b


def test_killed_between_last_pt_and_best_pt_exports_the_best_epoch(tmp_path, monkeypatch, capsys):
    """A kill after last.pt is written but before best.pt is linked: the resumed run's export and best.pt
    are the best epoch's weights (here epoch 1, the one in that last.pt), not a stale or later file."""
    from safetensors.torch import load_file

    import transferkit.checkpoint.atomic as atomic_module
    from transferkit.checkpoint import load_checkpoint
    from transferkit.train import Trainer

    plain = Trainer.evaluate

    def first_epoch_best(self, loader=None, *, model=None):  # every later epoch validates worse
        result = plain(self, loader, model=model)
        result.acc = 1.0 - 0.1 * len(self.history)
        return result

    monkeypatch.setattr(Trainer, "evaluate", first_epoch_best)
    monkeypatch.chdir(tmp_path)
    argv = ["finetune", *FAST, "--limit-train", "64", "--limit-val", "32", "--epochs", "3"]
    assert main([*argv, "--output", "ref"]) == 0
    link = atomic_module.atomic_copy  # RunFolder makes best.pt from last.pt with it

    def killed(src, dst):
        raise KeyboardInterrupt  # the process dies between the two writes

    monkeypatch.setattr(atomic_module, "atomic_copy", killed)
    assert main([*argv, "--output", "out"]) != 0
    assert not (tmp_path / "out" / "best.pt").exists() and _ckpt_epoch(tmp_path / "out" / "last.pt") == 0
    monkeypatch.setattr(atomic_module, "atomic_copy", link)
    assert main(["finetune", "--resume", "out"]) == 0
    capsys.readouterr()
    ref, out = (
        load_file(tmp_path / "ref" / "model.safetensors"),
        load_file(tmp_path / "out" / "model.safetensors"),
    )
    assert ref.keys() == out.keys() and all(torch.equal(ref[k], out[k]) for k in ref)
    best = load_checkpoint(tmp_path / "out" / "best.pt")
    assert best["epoch"] == 0 and all(
        torch.equal(v, ref[k.removeprefix("backbone.")]) for k, v in best["models"]["model"].items()
    )


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    # a freeze schedule (block thaws at epoch 1, stem at 2), per-step cosine LR, random augmentation in a
    # DataLoader worker: everything resume must restore
    args = [*FAST, *SUBSET, "--epochs", "4", "--lr", "0.01", "--freeze", "backbone", "--unfreeze-every", "1"]
    args += ["--workers", "1"]
    _kill_resume_and_compare(tmp_path, args, epochs=4)


# every recipe option, through the CLI, killed and resumed: the randomness of RandAugment and mixup/cutmix
# in the main process (Python's and NumPy's generators), TrivialAugment in a DataLoader worker, drop-path
# (torch's generator), the EMA's weights and update count, layer-wise rates for groups that thaw later
RECIPE_KILLS = {
    "timm-randaugment-mixup-cutmix-ema-droppath-layerdecay": [
        "--backbone", "timm:test_efficientnet", "--img-size", "32", "--batch-size", "16", "--workers", "0",
        "--quiet", "--limit-train", "64", "--limit-val", "32", "--epochs", "3", "--lr", "0.01",
        "--freeze", "backbone", "--unfreeze-every", "1", "--aug", "randaugment", "--mixup", "0.4",
        "--cutmix", "1.0", "--mixup-prob", "0.8", "--label-smoothing", "0.1", "--model-ema", "0.9",
        "--drop-path", "0.2", "--layer-decay", "0.7",
    ],
    "tiny-trivialaugment-in-a-worker-cutmix-ema": [
        *FAST, *SUBSET, "--epochs", "3", "--lr", "0.01", "--workers", "1", "--aug", "trivialaugment",
        "--cutmix", "1.0", "--model-ema", "--layer-decay", "0.5",
    ],
}  # fmt: skip


@pytest.mark.parametrize(
    "name",
    [
        next(iter(RECIPE_KILLS)),
        pytest.param(list(RECIPE_KILLS)[1], marks=pytest.mark.slow),  # the same machinery, another mix
    ],
)
def test_every_recipe_option_resumes_bit_identically_after_sigkill(tmp_path, name):
    args = RECIPE_KILLS[name]
    last = _kill_resume_and_compare(tmp_path, args, epochs=int(args[args.index("--epochs") + 1]))
    assert set(last["models"]) == {"model", "ema"} and last["extra"]["ema"]["updates"] > 0
    resolved = yaml.safe_load((tmp_path / "killed" / "args.yaml").read_text())["resolved"]
    assert all(resolved[k] != "off" for k in ("mixup", "model_ema", "layer_decay"))


# ----------------------------------------------------------------------------------------------------------
# bad input: one line on stderr, exit 2, nothing written


def _zero_tensor_checkpoint(tmp: Path) -> str:
    torch.save({"unrelated.weight": torch.zeros(3, 3)}, tmp / "zero.pt")
    return "zero.pt"


def _unsafe_checkpoint(tmp: Path) -> str:
    """The tiny model's weights beside an ``argparse.Namespace``: weights_only refuses the file."""
    import argparse

    from transferkit import create_model

    state = create_model(TINY, 10, weights=None).backbone.state_dict()
    torch.save({"state_dict": state, "hparams": argparse.Namespace(lr=0.1)}, tmp / "unsafe.pt")
    return "unsafe.pt"


def _text(tmp: Path, name: str, text: str) -> str:
    (tmp / name).write_text(text)
    return name


def _damaged_run(tmp: Path) -> str:
    """A run folder whose args.yaml agrees with the BAD rows' flags, a truncated last.pt, a best.pt."""
    run = tmp / "run"
    run.mkdir()
    (run / "args.yaml").write_text(
        yaml.safe_dump({"args": {"backbone": TINY, "img_size": 16}, "resolved": {}})
    )
    torch.save({"models": {"model": {}}, "epoch": 0}, run / "best.pt")
    (run / "last.pt").write_bytes((run / "best.pt").read_bytes()[:200])
    return "run"


def _train_test_layout(tmp: Path) -> str:
    for split in ("train", "test"):
        for c in ("a", "b"):
            (tmp / "tt" / split / c).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(tmp / "tt" / split / c / "0.png")
    return "tt"


def _one_class(tmp: Path) -> str:
    (tmp / "one" / "cat").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp / "one" / "cat" / "a.png")
    Image.new("RGB", (8, 8)).save(tmp / "one" / "cat" / "b.png")
    return "one"


BAD = [
    (["--backbone", "resnet5O"], "unknown backbone", None),
    (["--classes", "0"], ">= 1", None),
    (["--classes", "3"], "10 classes", None),
    (["--data", "nowhere"], "--data nowhere does not exist; give a folder", None),
    (["--data", "empty"], "no class sub-folders", lambda t: (t / "empty").mkdir() or None),
    (["--data", "{x}"], "only one class", _one_class),
    (["--config", "missing.yaml"], "cannot read config", None),
    (
        ["--config", "bad.yaml"],
        "not valid YAML",
        lambda t: (t / "bad.yaml").write_text("epochs: [1\n") and None,
    ),
    (
        ["--config", "typo.yaml"],
        "did you mean epochs",
        lambda t: (t / "typo.yaml").write_text("epoch: 2\n") and None,
    ),
    (["--init-checkpoint", "{x}", "--rule", "no-arrow"], "=>", _zero_tensor_checkpoint),
    (["--init-checkpoint", "{x}"], "no tensor loaded", _zero_tensor_checkpoint),
    (["--init-checkpoint", "{x}"], "--salvage with --init-checkpoint", _unsafe_checkpoint),
    (["--salvage"], "--salvage applies to --init-checkpoint", None),
    (["--epochs", "many"], "invalid int value", None),
    (["--bogus-flag"], "unrecognized arguments", None),
    (["--resume", "no_run_here"], "no checkpoint", None),
    (["--freeze", "layerX"], "unknown layer group", None),
    (["--unfreeze-at", "x:block"], "not an integer", None),
    (["--optimizer", "adamx"], "unknown optimizer", None),
    (["--lr", "-1"], "--lr must be a positive finite number", None),
    (["--lr", "inf"], "--lr must be a positive finite number", None),
    (["--lr", "nan"], "--lr must be a positive finite number", None),
    # issue 16 item 16: a negative number is a value (argparse before 3.13 took it for an option)
    (["--lr", "-1e-3"], "--lr must be a positive finite number, e.g. 1e-3, got -0.001", None),
    (["--weights", ""], "--weights '' is empty", None),
    (["--weights", "nope.pt"], "--weights 'nope.pt': no such file", None),
    (
        ["--init-checkpoint", "nope.pt"],
        "--init-checkpoint nope.pt does not exist; give a checkpoint file",
        None,
    ),
    (["--init-checkpoint", "."], "--init-checkpoint . is a folder; give a checkpoint file", None),
    (["--weight-decay", "inf"], "--weight-decay must be a finite number >= 0", None),
    # recipe options
    (["--aug", "heavy"], "invalid choice: 'heavy'", None),
    (["--config", "{x}"], "--aug must be one of none, light", lambda t: _text(t, "a.yaml", "aug: heavy\n")),
    (["--drop-path", "0.1"], "takes no drop_path_rate argument", None),
    (["--backbone", "resnet18", "--drop-path", "0.1"], "torchvision backbone", None),
    (["--drop-path", "1.0"], "--drop-path must be a number in [0, 1)", None),
    (["--layer-decay", "0.7", "--lr-decay", "0.5"], "--layer-decay replaces --lr-decay", None),
    (["--layer-decay", "0", "--freeze", "none"], "--layer-decay must be a number in (0, 1]", None),
    (["--layer-decay", "0.7", "--linear-probe"], "--linear-probe trains the head only", None),
    (["--mixup-prob", "0.5"], "--mixup-prob applies to --mixup/--cutmix", None),
    (["--mixup", "-1"], "--mixup must be a number in [0, 100]", None),
    (["--cutmix", "1", "--linear-probe", "--feature-cache"], "not cached features", None),
    (["--aug", "randaugment", "--feature-cache"], "--feature-cache needs --aug none", None),
    (["--model-ema", "1.5"], "--model-ema must be a number in (0, 1)", None),
    (
        ["--config", "bin.yaml"],
        "is not UTF-8 text",
        lambda t: (t / "bin.yaml").write_bytes(b"\xff\xfe\x00x") and None,
    ),
    (
        ["--config", "{x}"],
        "must hold a mapping of flag: value, found a list",
        lambda t: _text(t, "l.yaml", "- epochs: 1\n"),
    ),
    (
        ["--config", "{x}"],
        "optimizer must be a single value",
        lambda t: _text(t, "d.yaml", "optimizer: {x: 1}\n"),
    ),
    (
        ["--config", "{x}"],
        "rule must be a string or a list of strings",
        lambda t: _text(t, "r.yaml", "rule: {a: b}\n"),
    ),
    (["--config", "."], "cannot read config file .", None),
    (["--data", "{x}"], "is a file, not a folder", lambda t: _text(t, "notes.txt", "hi\n")),
    (["--output", "{x}/run"], "is a file; give a folder path", lambda t: _text(t, "file", "hi\n")),
    # a resumed run's last.pt that is damaged: the error points at its intact best.pt
    (["--resume", "{x}"], "may still be intact: --resume", lambda t: _damaged_run(t)),
    (["--epochs", "0"], "--epochs must be an integer >= 1, got 0", None),
    (["--data", "{x}"], "a train/val layout needs exactly", lambda t: _train_test_layout(t)),
    (["--img-size", "7"], "--img-size must be an integer >= 8", None),
    # issue 16 item 10: a ValueError traceback in epoch 1, and a folder neither a rerun nor --resume took
    (
        ["--backbone", "resnet18", "--weights", "none", "--img-size", "32", "--batch-size", "1"],
        "--batch-size 1: BatchNorm layer backbone.layer4.0.bn1 of resnet18 would see one value per channel",
        None,
    ),
    # issue 16 item 11: a typo must not try to allocate terabytes
    (["--img-size", "100000"], "--img-size 100000 is above the limit of 4096 px", None),
    (["--workers", "-1"], "--workers must be an integer >= 0", None),
    (["--device", "tpu"], "expected auto, cpu, cuda or cuda:N", None),
    # the CLI's own spelling, not the Python API's (weights=PATH, at={...}, rules=[...], list_backbones)
    (["--weights", "imagenet"], "pass --weights PATH", None),
    (["--unfreeze-at", "1:blok"], "--unfreeze-at 1:blok: 'blok' is not a layer group", None),
    (["--unfreeze-at", "1:block,2:block"], "--unfreeze-at: layer group 'block' is given twice", None),
    (["--backbone", "resnet5O"], "print(transferkit.list_backbones('res*'))", None),
    (["--init-checkpoint", "{x}"], "--rule 're:PATTERN=>REPL'", _zero_tensor_checkpoint),
    # zero tensors: the checkpoint's keys as the file has them (not with the adapter's "backbone.")
    (["--init-checkpoint", "{x}"], "e.g. 'unrelated.weight'; model keys", _zero_tensor_checkpoint),
    # --resume with --output: a missing folder is not "a run that never finished an epoch"
    (["--resume"], "--resume: no run folder out (from --output)", None),
    (
        ["--resume"],
        "out has no last.pt (the run there never finished an epoch)",
        lambda t: (t / "out").mkdir(),
    ),
]
if not torch.cuda.is_available():
    BAD.append((["--device", "cuda"], "CUDA is not available", None))


@pytest.mark.parametrize("extra, match, setup", BAD, ids=[" ".join(b[0]) for b in BAD])
def test_bad_input_exits_2_with_one_line(tmp_path, monkeypatch, capsys, extra, match, setup):
    monkeypatch.chdir(tmp_path)
    made = setup(tmp_path) if setup else None
    extra = [a.replace("{x}", made) if made else a for a in extra]
    base = ["--backbone", TINY, "--img-size", "16", "--output", "out"]
    before = sorted(p.name for p in tmp_path.iterdir())
    rc = main(["finetune", *base, *extra])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("error:") and match in err, err
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no run folder, nothing else


def test_existing_run_folder_is_refused_untouched(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "metrics.csv").write_text("precious\n")
    assert main(["finetune", *FAST, "--output", "out"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "out" / "metrics.csv").read_text() == "precious\n"
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["metrics.csv"]


@pytest.mark.parametrize(
    "extra, setup",
    [
        (["--data", "nowhere"], None),
        (["--init-checkpoint", "{x}"], _zero_tensor_checkpoint),
        (["--classes", "3"], None),
        (["--freeze", "layerX"], None),
    ],
    ids=["missing-data", "zero-tensor-init", "classes-mismatch", "unknown-group"],
)
def test_bad_input_with_overwrite_leaves_the_folder_untouched(tmp_path, monkeypatch, capsys, extra, setup):
    monkeypatch.chdir(tmp_path)
    made = setup(tmp_path) if setup else None
    extra = [a.replace("{x}", made) if made else a for a in extra]
    (tmp_path / "out").mkdir()
    for name in ("metrics.csv", "last.pt", "model.safetensors"):
        (tmp_path / "out" / name).write_text(f"precious {name}\n")
    before = sorted((p.name, p.stat().st_mtime_ns) for p in (tmp_path / "out").iterdir())
    assert main(["finetune", *FAST, "--output", "out", "--overwrite", *extra]) == 2
    assert capsys.readouterr().err.startswith("error:")
    assert sorted((p.name, p.stat().st_mtime_ns) for p in (tmp_path / "out").iterdir()) == before
    assert (tmp_path / "out" / "last.pt").read_text() == "precious last.pt\n"


def test_bad_input_in_a_real_process_is_one_line_without_traceback(tmp_path):
    proc = run_cli(["--backbone", TINY, "--classes", "-1"], tmp_path, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error:"), proc.stderr
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------------------------------------
# what the console says


def test_random_init_banner_leaves_what_trains_to_the_freeze_line(tmp_path, monkeypatch, capsys):
    """Random weights with a thaw schedule: the banner says random init only; the freeze line says what trains,
    with epochs counted from 1 as the epoch lines count them (plan key 1 = thawed for epoch 2)."""
    monkeypatch.chdir(tmp_path)
    argv = ["finetune", *FAST, "--limit-train", "32", "--limit-val", "16", "--epochs", "2"]
    argv += ["--freeze", "backbone", "--unfreeze-at", "1:block", "--output", "out"]
    argv.remove("--quiet")  # the thaw is an INFO log line
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "training from RANDOM initialisation." in captured.err and "every layer trains" not in captured.err
    assert "head only, then thaw block after epoch 1 " in captured.out and "2 epochs x" in captured.out
    assert (
        "transferkit.schedule: epoch 2: thawed block" in captured.err
    )  # between "epoch 1/2" and "epoch 2/2"


def test_one_epoch_is_not_pluralised(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["finetune", *FAST, "--limit-train", "32", "--limit-val", "16", "--epochs", "1", "--output", "out"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "cosine schedule, 1 epoch x " in out and "1 epochs" not in out


def test_resume_of_a_finished_run_says_it_is_complete_and_writes_nothing(digits_run, capsys):
    run, _ = digits_run
    before = sorted((p.name, p.stat().st_mtime_ns) for p in run.iterdir())
    assert main(["finetune", "--resume", str(run)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert f"run {run} is complete: it already trained its 3 epochs; nothing to resume" in out[-2]
    assert f"--init-checkpoint {run / 'best.pt'}" in out[-2] and "--eval-only" in out[-2]
    labels = json.loads((run / "labels.json").read_text())
    assert (
        out[-1] == f"best val accuracy {labels['val_acc']:.2%} (epoch {labels['epoch']}/3); run folder: {run}"
    )
    assert not any(line.startswith("resumed") for line in out)
    assert sorted((p.name, p.stat().st_mtime_ns) for p in run.iterdir()) == before


def test_resume_of_a_finished_run_without_its_export_writes_the_export(tmp_path, monkeypatch, capsys):
    """Killed after the last epoch's last.pt but before model.safetensors: resuming finishes the export."""
    monkeypatch.chdir(tmp_path)
    argv = ["finetune", *FAST, "--limit-train", "32", "--limit-val", "16", "--epochs", "1", "--output", "out"]
    assert main(argv) == 0
    (tmp_path / "out" / "model.safetensors").unlink()
    capsys.readouterr()
    assert main(["finetune", "--resume", "out"]) == 0
    out = capsys.readouterr().out
    assert "epoch 1/1 was already trained; writing the missing export" in out and "is complete" not in out
    assert (tmp_path / "out" / "model.safetensors").is_file()


# ----------------------------------------------------------------------------------------------------------
# run folders: what is there is never lost


def _listing(folder: Path) -> list[tuple[str, int]]:
    return sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir())


def test_overwrite_refuses_a_folder_that_is_not_a_run_and_keeps_user_files_of_a_run(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    user = tmp_path / "thesis"
    user.mkdir()
    (user / "thesis.tex").write_text("precious\n")
    (user / "metrics.csv").write_text("my own numbers\n")  # named like a run file, but not a run's
    before = _listing(user)
    argv = ["finetune", *FAST, "--limit-train", "32", "--limit-val", "16", "--epochs", "1"]
    assert main([*argv, "--output", "thesis", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "is not a transferkit run folder" in err and "thesis.tex" in err and err.count("\n") == 1
    assert _listing(user) == before

    # a real run folder with a note of the user's: --overwrite replaces the run's files, keeps the note
    assert main([*argv, "--output", "run"]) == 0
    (tmp_path / "run" / "notes.txt").write_text("mine\n")
    assert main([*argv, "--output", "run", "--overwrite"]) == 0
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine\n"
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_resume_refuses_another_non_empty_output_folder(digits_run, tmp_path, capsys):
    run, _ = digits_run
    other = tmp_path / "other"
    other.mkdir()
    (other / "metrics.csv").write_text("precious\n")
    before = _listing(other)
    assert main(["finetune", "--resume", str(run), "--output", str(other)]) == 2
    assert "is not the folder of the run resumed" in capsys.readouterr().err
    assert _listing(other) == before


def _copy_run(run: Path, dest: Path, names: tuple[str, ...] = ("last.pt", "best.pt")) -> Path:
    import shutil

    dest.mkdir()
    for name in names:
        shutil.copyfile(run / name, dest / name)
    return dest


def test_resume_of_a_checkpoint_that_does_not_fit_writes_nothing(digits_run, tmp_path, monkeypatch, capsys):
    """A last.pt of a 10-class run, moved without its args.yaml, resumed on 3 classes: refused before a
    single file is written (args.yaml used to be written first, and then named the wrong run)."""
    run, _ = digits_run
    monkeypatch.chdir(tmp_path)
    moved = _copy_run(run, tmp_path / "moved")
    for c in ("a", "b", "c"):
        (tmp_path / "data" / c).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (16, 16), (60 * i, 20 * ord(c) % 255, 0)).save(
                tmp_path / "data" / c / f"{i}.png"
            )
    before = _listing(moved)
    argv = ["finetune", *FAST, "--data", "data", "--val-split", "0.5", "--epochs", "5", "--resume", "moved"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the checkpoint does not fit this run" in err and "3 classes" in err, err
    assert "load_partial" not in err and "--init-checkpoint" in err  # the CLI's words, not the API's
    assert _listing(moved) == before


def test_resume_without_args_yaml_or_backbone_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("not a checkpoint\n")
    assert main(["finetune", "--resume", "notes.txt"]) == 2
    err = capsys.readouterr().err
    assert "has no args.yaml, so it is not the folder of a transferkit run" in err, err


def test_resume_without_the_best_epochs_weights_is_refused_up_front(
    digits_run, tmp_path, monkeypatch, capsys
):
    """best.pt gone and last.pt is not the best epoch: the export could not be written after training."""
    from transferkit.checkpoint import load_checkpoint

    run, _ = digits_run
    monkeypatch.chdir(tmp_path)
    moved = _copy_run(run, tmp_path / "moved", ())
    ckpt = load_checkpoint(run / "last.pt")  # memory-mapped: never write over the file it maps
    ckpt["epoch"], ckpt["extra"]["best_epoch"] = 1, 0  # epoch 2 saved, epoch 1 the best
    torch.save(ckpt, moved / "last.pt")
    before = _listing(moved)
    assert main(["finetune", *FAST, "--epochs", "3", "--resume", "moved"]) == 2
    err = capsys.readouterr().err
    assert "best.pt is missing, and it holds the best epoch's weights (epoch 1)" in err, err
    assert _listing(moved) == before


def test_sigint_stops_with_one_line_and_a_resumable_last_pt(tmp_path):
    """Ctrl-C mid-run: exit 130, one line saying what last.pt holds and the --resume to continue."""
    from transferkit.checkpoint import load_checkpoint

    args = [*FAST, "--limit-train", "64", "--limit-val", "16", "--epochs", "200", "--output", "run"]
    args += ["--weights", "none"]
    # a test runner started in the background (`cmd &` without job control) ignores SIGINT, and a child
    # inherits that: Python then never raises KeyboardInterrupt. Give the run the default disposition.
    proc = subprocess.Popen([sys.executable, str(SCRIPT), *args], cwd=tmp_path, env=cli_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("epoch 2/200"):
                break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("interrupted: ") and "continue with transferkit finetune --resume run" in err
    held = int(err.split(" holds epoch ")[1].split("/")[0])
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] + 1 == held >= 2


def test_factory_in_the_current_folder_is_found(tmp_path, monkeypatch, capsys):
    """--backbone mymodels:net names a module of the working folder, as uvicorn/python -m find one."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    (tmp_path / "cwd_models_adv.py").write_text("from tests.tiny_models import tinynet as net\n")
    argv = ["finetune", *FAST, "--backbone", "cwd_models_adv:net", "--limit-train", "32", "--limit-val", "16"]
    assert main([*argv, "--epochs", "1", "--output", "out"]) == 0, capsys.readouterr().err
    assert sys.path[-1] == str(tmp_path)  # appended: never shadows an installed package


def test_more_workers_than_cores_are_capped_with_a_warning(monkeypatch, caplog):
    from transferkit.commands.flags import render_text
    from transferkit.run import data_plan

    monkeypatch.setattr(data_plan, "cpu_count", lambda: 2)
    bundle = type("B", (), {"source": "folder"})()
    with caplog.at_level("WARNING", logger="transferkit.run"):
        assert data_plan.loader_workers({"workers": 64}, bundle) == 2
    assert "--workers 64 is more than the 2 CPU core(s)" in render_text(caplog.text)  # as the CLI logs it
    assert data_plan.loader_workers({"workers": 1}, bundle) == 1


INSPECT_BAD = [
    (["{run}"], "is a folder, not a checkpoint file; checkpoint files in it: best.pt, last.pt"),
    (["{run}/nothing.pt"], "no such file"),
    (["{run}/last.pt", "--classes", "5"], "--classes 5 applies to --model"),
    (["{run}/last.pt", "--key", "nope"], "--key 'nope': no 'nope' at the top level"),
    (["{run}/last.pt", "--against", "{run}"], "--against"),
    (["{run}/args.yaml"], "not a PyTorch or safetensors checkpoint"),
]


@pytest.mark.parametrize("extra, match", INSPECT_BAD, ids=[" ".join(b[0]) for b in INSPECT_BAD])
def test_inspect_bad_input_exits_2_with_one_line(digits_run, capsys, extra, match):
    run, _ = digits_run
    assert main(["inspect", *[a.replace("{run}", str(run)) for a in extra]]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error:") and match in err, err


def test_salvage_reads_an_init_checkpoint_that_weights_only_refuses(tmp_path, monkeypatch, capsys):
    """--salvage: the refused file's tensors come out through the restricted unpickler, nothing runs."""
    monkeypatch.chdir(tmp_path)
    _unsafe_checkpoint(tmp_path)
    rc = main(["finetune", *FAST, *SUBSET, "--epochs", "1", "--init-checkpoint", "unsafe.pt", "--salvage",
               "--output", "out"])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    resolved = yaml.safe_load((tmp_path / "out" / "args.yaml").read_text())["resolved"]
    assert resolved["init_checkpoint_tensors"] > 0 and resolved["pretrained_weights_used"] is True


# ----------------------------------------------------------------------------------------------------------
# issue 16: what a new user hit


def test_version_is_printed(capsys):
    import transferkit

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"transferkit {transferkit.__version__}"


def test_inspect_exits_non_zero_when_the_dry_run_load_would_fail(tmp_path, capsys):
    _zero_tensor_checkpoint(tmp_path)
    rc = main(["inspect", str(tmp_path / "zero.pt"), "--model", TINY, "--classes", "10"])
    out = capsys.readouterr().out
    assert "a load would fail" in out and rc == 1


def _digit_folder(root: Path, names: tuple[str, ...] = ("zero", "one", "two"), per_class: int = 10) -> Path:
    """An image folder of real digit scans: one class folder per name."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for c, name in enumerate(names):
        folder = root / name
        folder.mkdir(parents=True)
        for i, img in enumerate(digits.images[digits.target == c][:per_class]):
            Image.fromarray((img * 15).astype("uint8")).resize((16, 16)).save(folder / f"{i}.png")
    return root


def test_eval_only_uses_the_whole_folder_and_refuses_other_class_names(tmp_path, monkeypatch, capsys):
    """Issue 16 item 1: --eval-only --data NEWDIR scored a random 20 % and mapped labels by sorted folder name."""
    import shutil

    monkeypatch.chdir(tmp_path)
    _digit_folder(tmp_path / "data")
    argv = ["finetune", *FAST, "--data", "data", "--epochs", "1", "--output", "run"]
    assert main(argv) == 0, capsys.readouterr().err
    _digit_folder(tmp_path / "new", per_class=7)
    capsys.readouterr()
    assert main(["finetune", "--resume", "run", "--eval-only", "--data", "new"]) == 0
    assert "on 21 images (every image of new)" in capsys.readouterr().out

    shutil.move(tmp_path / "new" / "two", tmp_path / "new" / "deux")  # a renamed class folder
    assert main(["finetune", "--resume", "run", "--eval-only", "--data", "new"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "class folder(s) the model was not trained on: ['deux']" in err, err
    assert "lacks the model's class(es) ['two']" in err


def _contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize(
    "failure",
    [KeyboardInterrupt, pytest.param(RuntimeError, marks=pytest.mark.slow)],  # one path: except BaseException
    ids=["ctrl-c", "exception"],
)
def test_overwrite_keeps_the_old_run_until_the_new_one_has_a_checkpoint(
    tmp_path, monkeypatch, capsys, failure
):
    """Issue 16 item 6: --overwrite deleted best.pt, last.pt, model.safetensors before epoch 1, so Ctrl-C in
    epoch 1 lost the old run."""
    from transferkit.train import Trainer

    monkeypatch.chdir(tmp_path)
    argv = ["finetune", *FAST, "--limit-train", "32", "--limit-val", "16", "--epochs", "1", "--output", "run"]
    assert main(argv) == 0
    (tmp_path / "run" / "notes.txt").write_text("mine\n")
    before = _contents(tmp_path / "run")

    def fail(self, epoch):
        raise failure("in epoch 1")

    monkeypatch.setattr(Trainer, "train_epoch", fail)
    if failure is KeyboardInterrupt:
        assert main([*argv, "--overwrite"]) == 130
        assert "the earlier run in run is back as it was" in capsys.readouterr().err
    else:
        with pytest.raises(RuntimeError):
            main([*argv, "--overwrite"])
    assert _contents(tmp_path / "run") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no hidden copy left beside it
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    assert main([*argv, "--overwrite"]) == 0  # a successful overwrite: the old files are gone, the note stays
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_failed_start_leaves_nothing_a_rerun_would_refuse(tmp_path, monkeypatch):
    """Issue 16 items 6 and 10: a run that fails in epoch 1 removes its folder, so the same command runs again."""
    from transferkit.train import Trainer

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(Trainer, "train_epoch", lambda self, epoch: 1 / 0)
    argv = ["finetune", *FAST, "--limit-train", "32", "--limit-val", "16", "--epochs", "1", "--output", "run"]
    with pytest.raises(ZeroDivisionError):
        main(argv)
    assert not (tmp_path / "run").exists()


def test_overwrite_refuses_a_folder_of_only_run_named_user_files(tmp_path, monkeypatch, capsys):
    """Issue 16 item 6: the user's own metrics.csv and labels.json are not a run."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "metrics.csv").write_text("my numbers\n")
    (tmp_path / "mine" / "labels.json").write_text("{}\n")
    before = _contents(tmp_path / "mine")
    assert main(["finetune", *FAST, "--output", "mine", "--overwrite"]) == 2
    assert "is not a transferkit run folder" in capsys.readouterr().err
    assert _contents(tmp_path / "mine") == before


def test_a_runs_args_yaml_as_config_never_points_at_that_run(digits_run, tmp_path, monkeypatch, capsys):
    """Issue 16 item 7: --config RUN/args.yaml carried output: RUN, and the advice was --overwrite."""
    run, _ = digits_run
    monkeypatch.chdir(tmp_path)
    before = _listing(run)
    argv = ["finetune", "--config", str(run / "args.yaml"), "--epochs", "1", "--limit-train", "32"]
    assert main(argv) == 0, capsys.readouterr().err
    assert len(list((tmp_path / "runs").iterdir())) == 1 and _listing(run) == before
    # a folder holding a complete run: the advice is a new --output, never --overwrite
    assert main([*argv, "--output", str(run)]) == 2
    err = capsys.readouterr().err
    assert "holds a complete run; give a new --output" in err and "--overwrite" not in err, err
    assert _listing(run) == before


def test_runs_started_in_the_same_second_get_numbered_folders(tmp_path, monkeypatch, capsys):
    """Issue 16 item 8: the second run of a backbone started in the same second failed."""
    import datetime as real

    from transferkit.run import start as run_start
    from transferkit.run.start import RunStart

    class Frozen(real.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2026, 1, 2, 3, 4, 5)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(run_start.datetime, "datetime", Frozen)
    argv = ["finetune", *FAST, "--limit-train", "32", "--limit-val", "16", "--epochs", "1"]
    assert main(argv) == 0 and main(argv) == 0, capsys.readouterr().err
    name = "20260102-030405-tests.tiny_models-tinynet"
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [name, f"{name}-2"]
    # the name is claimed when the folder is made: a run that took it meanwhile moves this one on
    start = RunStart(tmp_path / "runs" / name, overwrite=False, auto_named=True)
    start.begin()
    assert start.run_dir.name == f"{name}-3"


@pytest.mark.parametrize("backbone", [TINY, pytest.param("resnet18", marks=pytest.mark.slow)])
def test_the_random_weights_warning_is_one_short_line_and_only_when_it_matters(
    tmp_path, monkeypatch, capsys, backbone
):
    """Issue 16 item 15: a 600-character line and a box on every offline run, also after "run ... is complete"
    and with --init-checkpoint. (resnet18: torchvision weights not in an empty cache, the library's warning.)"""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_cache"))
    monkeypatch.delenv("TRANSFERKIT_ALLOW_DOWNLOAD", raising=False)
    argv = ["finetune", "--backbone", backbone, "--img-size", "32", "--batch-size", "8", "--workers", "0"]
    argv += ["--limit-train", "16", "--limit-val", "8", "--epochs", "1", "--quiet"]
    assert main([*argv, "--output", "run"]) == 0
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if "RANDOM" in ln]
    assert len(lines) == 1 and len(lines[0]) < 250 and "=" * 20 not in err, err
    assert main(["finetune", "--resume", "run"]) == 0  # complete: nothing trains, nothing to warn about
    assert "RANDOM" not in capsys.readouterr().err
    assert main([*argv, "--init-checkpoint", "run/best.pt", "--output", "run2"]) == 0
    assert "RANDOM" not in capsys.readouterr().err


def test_thaws_past_the_last_epoch_are_dropped_and_frozen_random_weights_warned(
    tmp_path, monkeypatch, capsys
):
    """Issue 16 item 14: "stem after epoch 10" announced in a 4-epoch run; --freeze backbone on random weights
    without a word."""
    monkeypatch.chdir(tmp_path)
    argv = ["finetune", *FAST, "--limit-train", "32", "--limit-val", "16", "--epochs", "2"]
    assert main([*argv, "--freeze", "backbone", "--unfreeze-every", "1", "--output", "a"]) == 0
    captured = capsys.readouterr()
    assert "head only, then thaw block after epoch 1; frozen for the whole run: stem" in captured.out
    assert "stem after epoch 2" not in captured.out
    assert "WARNING: stem would thaw only after epoch 2, past the run's 2 epochs" in captured.err
    assert "start frozen on RANDOM weights (until their thaw)" in captured.err
    resolved = yaml.safe_load((tmp_path / "a" / "args.yaml").read_text())["resolved"]
    assert "stem after" not in resolved["freeze"]

    assert main([*argv, "--freeze", "backbone", "--output", "b"]) == 0
    assert "start frozen on RANDOM weights (for the whole run)" in capsys.readouterr().err


def test_labels_json_rebuilds_the_exact_eval_transform(tmp_path, monkeypatch, capsys):
    """Issue 16 item 18: labels.json lacked resize size, crop ratio and interpolation; a pipeline rebuilt from
    it disagreed with transferkit's own on 47 of 100 images."""
    from torchvision.transforms import InterpolationMode, v2

    from transferkit.backbones import create_model
    from transferkit.data import load_image_folder

    monkeypatch.chdir(tmp_path)
    _digit_folder(tmp_path / "data", per_class=6)
    argv = ["finetune", *FAST, "--img-size", "20", "--data", "data", "--epochs", "1", "--output", "run"]
    assert main(argv) == 0, capsys.readouterr().err
    spec = json.loads((tmp_path / "run" / "labels.json").read_text())["eval_transform"]
    assert {"resize_size", "crop_size", "crop_pct", "interpolation", "mean", "std", "channels"} <= set(spec)
    ops = []
    for step in spec["steps"]:  # plain torchvision, from the JSON alone
        if step["op"] == "resize":
            ops.append(
                v2.Resize(step["size"], InterpolationMode(step["interpolation"]), antialias=step["antialias"])
            )
        elif step["op"] == "center_crop":
            ops.append(v2.CenterCrop(step["size"]))
        elif step["op"] == "to_float":
            ops += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
        elif step["op"] == "normalize":
            ops.append(v2.Normalize(step["mean"], step["std"]))
    rebuilt = v2.Compose(ops)
    model = create_model(TINY, 3, weights=None)
    ours = load_image_folder(tmp_path / "data", model.data_config, img_size=20, augment=False).val
    for path, _ in ours.samples:
        with Image.open(path) as img:
            assert torch.equal(rebuilt(img.convert("RGB")), ours[ours.samples.index((path, _))][0])


def test_batch_size_one_trains_where_batchnorm_sees_several_values(tmp_path, monkeypatch, capsys):
    """Issue 16 item 10: only a BatchNorm layer with one value per channel is refused (tinynet's last one
    still sees 8x8 values at 16 px)."""
    monkeypatch.chdir(tmp_path)
    argv = ["finetune", *FAST, "--batch-size", "1", "--limit-train", "4", "--limit-val", "4", "--epochs", "1"]
    assert main([*argv, "--output", "out"]) == 0, capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------
# the head policy of the default recipe (issue 11)


def test_a_fitting_head_with_other_class_names_is_fresh_and_a_runs_own_head_is_kept(tmp_path, monkeypatch):
    """A 10-class checkpoint whose labels are unknown (CIFAR's, say) gets a new head on the digits; a run's
    own best.pt, which records its class names, keeps its head when the data's classes are the same."""
    from transferkit import create_model
    from transferkit.checkpoint import load_checkpoint
    from transferkit.cli import main

    monkeypatch.chdir(tmp_path)
    _weights_file(tmp_path)  # tiny.pth: a 10-class tinynet state dict with no class names
    args = ["finetune", *FAST, "--limit-train", "32", "--limit-val", "16", "--epochs", "1"]
    assert main([*args, "--weights", "tiny.pth", "--output", "a"]) == 0
    resolved = yaml.safe_load((tmp_path / "a" / "args.yaml").read_text(encoding="utf-8"))["resolved"]
    assert resolved["pretrained_weights_used"] and resolved["head"].startswith(
        "fresh: the checkpoint's head fits"
    )
    source = torch.load(tmp_path / "tiny.pth", weights_only=True)
    fresh = create_model(TINY, 10, weights=tmp_path / "tiny.pth", class_names=[str(i) for i in range(10)])
    assert any("class names are unknown" in n for n in fresh.load_report.notes)
    assert not torch.equal(fresh.head.weight.detach(), source["fc.weight"])

    best = load_checkpoint(tmp_path / "a" / "best.pt")
    assert best["meta"]["class_names"] == [str(i) for i in range(10)]
    kept = create_model(TINY, 10, weights=tmp_path / "a" / "best.pt", class_names=[str(i) for i in range(10)])
    assert any("class names match" in n for n in kept.load_report.notes)
    trained = best["models"]["model"]
    head_key = next(k for k in trained if k.endswith("fc.weight"))
    assert torch.equal(kept.head.weight.detach(), trained[head_key])


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["finetune", "--backbone", "resnet18", "--output", ""], "--output"),
        (["predict", "runs/x", "a.png", "--out", ""], "--out"),
        (["evaluate", "runs/x", "--data", "d", "--output", ""], "--output"),
        (["export", "runs/x", "--out", ""], "--out"),
    ],
)
def test_an_empty_output_path_is_refused_before_any_work(tmp_path, monkeypatch, capsys, argv, flag):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{flag} is empty" in err[0], err
    assert list(tmp_path.iterdir()) == []
