"""CLI surface and the standard-library ``ssl`` guarantee."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "convssl", *args], cwd=cwd, capture_output=True, text=True)


def test_help_lists_commands():
    out = run("--help")
    assert out.returncode == 0
    for name in ("shards", "pretrain", "probe", "export", "info"):
        assert name in out.stdout


def test_info_prints_stages():
    out = run("info", "torchvision:resnet18", "--small-input", "--in-chans", "1")
    assert out.returncode == 0, out.stderr
    lines = [line.split() for line in out.stdout.splitlines() if line.startswith("layer")]
    assert [(l[0], int(l[1]), int(l[2])) for l in lines] == [
        ("layer1", 64, 1), ("layer2", 128, 2), ("layer3", 256, 4), ("layer4", 512, 8)
    ]
    assert "11,167,680" in out.stdout  # resnet18 without fc, 1-channel 3x3 conv1


def test_user_error_is_one_line_not_a_traceback():
    out = run("info", "torchvision:resnet19")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and "no classification model" in out.stderr


def test_stdlib_ssl_not_shadowed():
    assert not (ROOT / "ssl" / "__init__.py").exists()
    code = "import ssl, sysconfig; ssl.create_default_context(); print(ssl.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).parent == Path(sysconfig_stdlib())


def sysconfig_stdlib():
    import sysconfig
    return sysconfig.get_paths()["stdlib"]
