"""The documentation site: it builds with ``mkdocs build --strict`` (broken links, missing
API references and a CLI flag without help fail), its generators read what the code says,
and every shell command of the getting-started page runs, at toy size, in the order shown.

mkdocs comes with the ``docs`` extra (the ``dev`` extra includes it, so ``.ci/run``'s
``pip install -e '.[dev,test]'`` installs it); without it these tests skip, except on CI
(``CI=true``), where a skipped docs test would hide a broken site.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Literal

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README_QUICKSTART = "python3 -m venv .venv && . .venv/bin/activate && pip install -e . && convssl quickstart"


def require_mkdocs() -> None:
    missing = [m for m in ("mkdocs", "material", "mkdocstrings_handlers.python")
               if importlib.util.find_spec(m.split(".")[0]) is None]
    if not missing:
        return
    reason = f"{', '.join(missing)} not installed: pip install -e '.[docs]' (the dev extra includes it)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"on CI the docs must build: {reason}")
    pytest.skip(reason)


def generators():
    """The docs' generator modules (docs/gen_*.py), imported as the MkDocs hook imports them."""
    sys.path[:0] = [str(DOCS)]
    try:
        import gen_cli
        import gen_config
    finally:
        sys.path.remove(str(DOCS))
    return gen_cli, gen_config


def build(site: Path, config: Path = ROOT / "mkdocs.yml") -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
                          cwd=config.parent, env=env, capture_output=True, text=True, timeout=600)


# ---- the site builds, strictly, with every generated page --------------------------------------

def test_site_builds_strict_with_every_command_flag_and_task(tmp_path):
    require_mkdocs()
    result = build(tmp_path / "site")
    assert result.returncode == 0, result.stdout + result.stderr
    import argparse

    from convssl.cli import build_parser

    _, gen_config = generators()

    cli_page = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()

    def check(parser, name):
        assert f"<code>{name}</code>" in cli_page, name
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub_name, sub in action.choices.items():
                    check(sub, f"{name} {sub_name}")
            elif not isinstance(action, argparse._HelpAction):
                for flag in action.option_strings:
                    assert f"<code>{flag}</code>" in cli_page, (name, flag)

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in sub.choices.items():
        check(parser, name)
    recipe_page = (tmp_path / "site" / "reference" / "recipe" / "index.html").read_text()
    for key in ("encoder.spec", "data.batch_size", "optim.lr_per_256", "train.max_bad_steps"):
        assert f"<code>{key}</code>" in recipe_page, key
    for task in gen_config.task_classes():  # a task registered since the docs were written gets its page by itself
        page = (tmp_path / "site" / "methods" / task / "index.html").read_text()
        assert f"task.name: {task}" in page and 'id="keys"' in page, task
    api = (tmp_path / "site" / "reference" / "api" / "index.html").read_text()
    for name in ("convssl.load_recipe", "convssl.pretrain", "convssl.probe", "convssl.export",
                 "convssl.build_encoder", "SparseEncoder", "PretextTask"):
        assert name in api, name


def test_a_broken_link_fails_the_build(tmp_path):
    require_mkdocs()
    copy = tmp_path / "repo"
    shutil.copytree(DOCS, copy / "docs", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "mkdocs.yml", copy / "mkdocs.yml")
    (copy / "ssl").symlink_to(ROOT / "ssl")
    (copy / "recipes").symlink_to(ROOT / "recipes")
    index = copy / "docs" / "index.md"
    index.write_text(index.read_text() + "\nSee [the old page](concepts/no-such-page.md).\n")
    result = build(tmp_path / "site", copy / "mkdocs.yml")
    assert result.returncode != 0
    assert "no-such-page.md" in result.stdout + result.stderr


# ---- the generators read the code --------------------------------------------------------------

def test_cli_generator_refuses_a_flag_without_help():
    import argparse

    gen_cli, _ = generators()
    parser = argparse.ArgumentParser(prog="demo", description="a demo command")
    parser.add_argument("--size", type=int, default=32, help="input size (default: %(default)s)")
    page = "\n".join(gen_cli._command(parser, "demo", 2))
    assert "| `--size` | `SIZE` | `32` | input size (default: 32) |" in page
    parser.add_argument("--device", default=None)
    with pytest.raises(gen_cli.MissingHelp, match="demo --device: the flag has no help text"):
        gen_cli._command(parser, "demo", 2)


def test_config_generator_reads_types_defaults_checks_and_help():
    from convssl.config import at_least, between

    _, gen_config = generators()

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Demo:
        """A demo section.

        ratio: fraction masked, as in the paper;
            continued on a second line.
        width / depth: the head's shape.
        """

        ratio: float = 0.6
        width: int = 64
        depth: int = 2
        mode: Literal["a", "b"] = "a"
        stages: tuple[str, ...] = ()

        def __post_init__(self):
            between("ratio", self.ratio, 0, 1, high_open=True)
            at_least("width", self.width, 1, strict=True)
            if self.depth > 8:
                raise ValueError(f"depth must be at most 8, got {self.depth}")

    rows = gen_config.config_rows(Demo, "task")
    assert rows == [
        "| `task.ratio` | float | `0.6` | in [0, 1) | fraction masked, as in the paper; continued on a second line. |",
        "| `task.width` | int | `64` | > 1 | the head's shape. |",
        "| `task.depth` | int | `2` | must be at most 8 | the head's shape. |",
        '| `task.mode` | "a" \\| "b" | `"a"` |  |  |',
        "| `task.stages` | list of str | `[]` |  |  |",
    ]


# ---- every command of the getting-started page runs ------------------------------------------

TOY = {  # appended to a command at toy size: a few steps, small inputs, few resamples
    "convssl quickstart": "--max-steps 2 --set data.batch_size=8 --val data/fmnist/test",
    "convssl pretrain": "--max-steps 2 --set data.batch_size=4 --set data.size=32 --set data.workers=0",
    "convssl probe": "--batch-size 16 --workers 0 --max-dims 512",
    "convssl finetune": "--max-steps 2 --set data.batch_size=4 --set data.workers=0",
    "convssl embed": "--method pca --workers 0",
    "convssl shards": "",
    "convssl export": "",
}
DROP = ("--budget 30m",)  # a toy run is a number of steps, not a time budget
CLASSES = 3


def page_commands(page: Path) -> list[str]:
    """The commands of the page's ``sh`` blocks, continuation lines joined."""
    blocks = re.findall(r"^```sh\n(.*?)^```", page.read_text(), re.M | re.S)
    return [line.strip() for block in blocks for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def toy(command: str) -> str:
    import torch

    if command.startswith("python3 -m venv"):  # the install: this environment is that install
        assert command == README_QUICKSTART, "the page's install line is not the README's first command"
        command = "convssl quickstart"
    for flag in DROP:
        command = command.replace(f" {flag}", "")
    if "--device cuda" in command and not torch.cuda.is_available():
        command = command.replace("--device cuda", "--device cpu")
    for prefix, extra in TOY.items():
        if prefix in command:
            return f"{command} {extra}".strip()
    raise AssertionError(f"no toy size for {command!r}: add it to TOY")


def write_images(root: Path) -> None:
    """Real images: the embedded Fashion-MNIST sample's PNGs as a folder of files (unlabeled)
    and two ImageFolder trees (train, val), read with tarfile, not with convssl."""
    samples = []
    for shard in sorted((ROOT / "data" / "fmnist" / "train").glob("*.tar")):
        with tarfile.open(shard) as tar:
            files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
        for name in sorted(files):
            if name.endswith(".png") and name[:-4] + ".cls" in files:
                samples.append((files[name], int(files[name[:-4] + ".cls"])))
        if len(samples) > 400:
            break
    per_class = {c: [png for png, label in samples if label == c] for c in range(CLASSES)}
    for c, pngs in per_class.items():
        for i, png in enumerate(pngs[:40]):
            split = "train" if i < 24 else "val"
            for folder in (root / split / f"class{c}", root / "unlabeled"):
                folder.mkdir(parents=True, exist_ok=True)
                (folder / f"{c}_{i}.png").write_bytes(png)


def test_getting_started_commands_run_at_toy_size(tmp_path):
    commands = page_commands(DOCS / "getting-started.md")
    assert commands[0] == README_QUICKSTART and len(commands) >= 8
    for name in ("recipes", "data"):
        (tmp_path / name).symlink_to(ROOT / name)
    write_images(tmp_path / "my_images")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "ssl"), os.environ.get("PYTHONPATH", "")])}
    bin_dir = Path(sys.executable).parent
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    for command in commands:
        line = toy(command)
        result = subprocess.run(shlex.split(line), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, f"{line}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    loading = python_blocks(DOCS / "getting-started.md")[0]  # the export loads back into torchvision's model
    assert "resnet50_rotation.pth" in loading
    result = subprocess.run([sys.executable, "-c", loading], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['fc.weight', 'fc.bias'] []", result.stdout
    assert "verdict at the best stage" in (tmp_path / "runs" / "quickstart" / "quickstart.md").read_text()
    assert (tmp_path / "shards" / "train" / "manifest.json").is_file()
    report = (tmp_path / "runs" / "rotation" / "probe" / "report.md").read_text()
    assert "over random init" in report
    assert (tmp_path / "resnet50_rotation.pth").is_file()
    assert (tmp_path / "runs" / "ft10" / "comparison.md").is_file()
    assert (tmp_path / "runs" / "rotation" / "map" / "embedding.png").is_file()
    assert (tmp_path / "runs" / "rotation-ddp" / "config.yaml").is_file()


# ---- the guides' code runs ---------------------------------------------------------------------

def python_blocks(page: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", page.read_text(), re.M | re.S)


def test_own_task_guide_trains_from_a_recipe_naming_it(tmp_path, monkeypatch):
    import yaml

    import convssl

    (tmp_path / "mytasks.py").write_text(python_blocks(DOCS / "guides" / "own-task.md")[0])
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(ROOT / "tests"))  # custom_nets: a small convnet, so a step is quick
    recipe = {
        "encoder": {"spec": "custom_nets:small_convnet", "in_chans": 1},
        "data": {"size": 16, "channels": 1, "mean": [0.286], "std": [0.353], "batch_size": 8, "workers": 0},
        "task": {"name": "mytasks:UpsideDown", "hidden": 16},
        "optim": {"name": "sgd", "lr_per_256": 0.1},
        "train": {"max_steps": 3, "ckpt_every": 0, "log_every": 1, "channels_last": False},
    }
    (tmp_path / "my_recipe.yaml").write_text(yaml.safe_dump(recipe))
    run = convssl.pretrain(convssl.load_recipe(tmp_path / "my_recipe.yaml"), str(ROOT / "data" / "fmnist" / "unlabeled"),
                           tmp_path / "run", device="cpu", progress=False)
    assert run["steps"] == 3 and Path(run["checkpoint"]).is_file()
    logged = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert '"acc"' in logged and '"loss"' in logged


def test_own_encoder_guide_shows_the_stages_it_describes(tmp_path):
    (tmp_path / "mynets.py").write_text(python_blocks(DOCS / "guides" / "own-encoder.md")[0])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT / "ssl")])}
    result = subprocess.run([sys.executable, "-m", "convssl", "info", "mynets:tiny_net", "--in-chans", "1", "--size", "32"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    stages = re.findall(r"^(\S+) +(\d+) +(\d+) +(\d+ x \d+)$", result.stdout, re.M)
    assert stages == [("5", "64", "2", "16 x 16"), ("8", "128", "4", "8 x 8")], result.stdout
