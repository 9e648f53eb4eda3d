"""Intervals, paired differences and verdicts: against closed forms, then end to end.

The bootstrap's percentile interval of an accuracy on n images is checked against the
binomial normal approximation p +- 1.96 sqrt(p (1 - p) / n) and against scipy's
bootstrap; a paired difference against exact counts and the normal approximation of a
mean of per-image differences; then ``convssl probe --baseline random --baseline
weights:FILE`` on the embedded Fashion-MNIST sample, its table and verdicts against its
report.json.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from convssl.eval.bootstrap import RESAMPLES, Interval, accuracy_intervals, bootstrap_means, paired_differences
from convssl.eval.correctness import pack_bits, unpack_bits
from convssl.eval.verdict import HURTS, NO_GAIN, PAYS, classify, format_difference, format_interval, verdict_line

ROOT = Path(__file__).resolve().parents[1]
FMNIST = ROOT / "data" / "fmnist"


def synthetic_correct(n: int, p: float, seed: int) -> torch.Tensor:
    return torch.rand(n, generator=torch.Generator().manual_seed(seed)) < p


# Tolerance: with R = 2000 resamples the 2.5% / 97.5% bootstrap quantiles have a Monte
# Carlo standard error of sqrt(q (1 - q) / R) / phi(1.96) = 0.060 sigma (sigma the
# accuracy's standard error); the bootstrap distribution's skew at n = 10k shifts them by
# under 0.03 sigma, its 1/n lattice by under 0.03 sigma. 0.25 sigma is ~4 Monte Carlo SEs;
# an interval off by a factor sqrt(2) in width (e.g. drawn without replacement from half
# the data, or divided by the wrong n) misses it by more than 0.8 sigma.
@pytest.mark.parametrize("p", [0.5, 0.84, 0.97])
def test_bootstrap_interval_agrees_with_the_binomial_normal_approximation(p):
    n = 10_000
    correct = synthetic_correct(n, p, seed=1)
    (iv,) = accuracy_intervals(correct)
    p_hat = correct.double().mean().item()
    sigma = math.sqrt(p_hat * (1 - p_hat) / n)
    assert iv.value == p_hat
    assert iv.low == pytest.approx(p_hat - 1.96 * sigma, abs=0.25 * sigma)
    assert iv.high == pytest.approx(p_hat + 1.96 * sigma, abs=0.25 * sigma)


def test_bootstrap_interval_agrees_with_scipy():
    stats = pytest.importorskip("scipy.stats")
    correct = synthetic_correct(10_000, 0.84, seed=2)
    (iv,) = accuracy_intervals(correct)
    ref = stats.bootstrap((correct.numpy().astype(float),), np.mean, n_resamples=RESAMPLES, method="percentile",
                          confidence_level=0.95, random_state=np.random.default_rng(0)).confidence_interval
    sigma = math.sqrt(0.84 * 0.16 / 10_000)
    # two independent Monte Carlo estimates of one quantile: 0.35 sigma is ~4 SEs of their difference
    assert iv.low == pytest.approx(ref.low, abs=0.35 * sigma)
    assert iv.high == pytest.approx(ref.high, abs=0.35 * sigma)


def test_bootstrap_is_seeded_and_pairs_columns_bootstrapped_apart():
    a, b = synthetic_correct(3000, 0.8, 3), synthetic_correct(3000, 0.7, 4)
    together = bootstrap_means(torch.stack([a, b], 1))
    apart = torch.cat([bootstrap_means(a), bootstrap_means(b)], 1)
    torch.testing.assert_close(together, apart, rtol=0, atol=1e-12)  # same resamples, whatever V
    assert not torch.equal(bootstrap_means(a, seed=1), bootstrap_means(a, seed=0))
    assert torch.equal(bootstrap_means(a, seed=5), bootstrap_means(a, seed=5))


def test_an_encoder_against_itself_differs_by_exactly_zero():
    a = synthetic_correct(5000, 0.83, 5)
    (d,) = paired_differences(a, a.clone())
    assert (d.value, d.low, d.high) == (0.0, 0.0, 0.0)
    assert classify(d) == NO_GAIN


def test_vectors_that_differ_on_known_images_give_that_exact_difference():
    n = 1000
    base = synthetic_correct(n, 0.8, 6)
    better = base.clone()
    wrong = torch.nonzero(~base).flatten()
    right = torch.nonzero(base).flatten()
    better[wrong[:37]] = True   # 37 images only the better one gets right
    better[right[:12]] = False  # 12 images only the base gets right
    (d,) = paired_differences(better, base)
    assert d.value == (37 - 12) / n
    # each resample's difference is (drawn from the 37 - drawn from the 12) / n: a mean of
    # per-image differences d_i in {-1, 0, 1}, whose normal approximation is independent of the code
    mean = 25 / n
    se = math.sqrt(((37 + 12) / n - mean ** 2) / n)
    assert d.low == pytest.approx(mean - 1.96 * se, abs=0.3 * se)
    assert d.high == pytest.approx(mean + 1.96 * se, abs=0.3 * se)
    assert classify(d) == PAYS  # 25 / 1000 is 3.6 standard errors above 0
    (r,) = paired_differences(base, better)
    assert (r.value, r.low, r.high) == pytest.approx((-d.value, -d.high, -d.low), abs=1e-12)
    assert classify(r) == HURTS
    (small,) = paired_differences(base.clone().index_fill_(0, wrong[:3], True), base)
    assert small.value == 3 / n and small.low >= 0 and classify(small) == NO_GAIN  # 3 of 1000: not measurable


def test_verdict_wording_and_formatting():
    assert format_interval(Interval(0.84, 0.833, 0.847)) == "84.0 [83.3, 84.7]"
    assert format_difference(Interval(0.021, 0.014, 0.028)) == "+2.1 [+1.4, +2.8]"
    assert format_difference(Interval(0.01, 0.0003, 0.021)) == "+1.0 [+0.03, +2.1]"  # excludes 0: never "+0.0"
    assert format_difference(Interval(0.0, 0.0, 0.0)) == "+0.0 [+0.0, +0.0]"
    assert verdict_line("layer3", Interval(0.021, 0.014, 0.028), "random init", 3000) == \
        "layer3: pays, +2.1 [+1.4, +2.8] over random init"
    assert verdict_line("layer1", Interval(0.003, -0.005, 0.011), "random init", 3000) == \
        "layer1: no gain measurable over random init with 3000 images (+0.3 [-0.5, +1.1])"
    assert verdict_line("layer4", Interval(-0.012, -0.02, -0.004), "random init", 3000).startswith("layer4: hurts, -1.2")


def test_a_halfway_figure_prints_the_same_whatever_its_last_bit():
    """7 of 400 images is 1.75%, halfway between 1.7 and 1.8: the same difference summed in
    another order (a last-bit change) must print the same figure in the table and the verdict."""
    exact = -7 / 400
    nearby = [math.nextafter(exact, 0.0), exact, math.nextafter(exact, -1.0), sum([-3 / 400, -4 / 400])]
    assert len({format_difference(Interval(x, -0.0525, -x)) for x in nearby}) == 1
    assert len({format_interval(Interval(-x, -x, -x)) for x in nearby}) == 1
    assert format_difference(Interval(exact, -0.0525, -exact)) == f"{-1.75:+.1f} [-5.2, {1.75:+.1f}]"


@pytest.mark.parametrize("n", [1, 7, 8, 1001])
def test_correctness_bits_round_trip(n):
    x = synthetic_correct(n, 0.5, n)
    text = pack_bits(x)
    assert len(text) == 4 * math.ceil(math.ceil(n / 8) / 3)
    assert torch.equal(unpack_bits(text, n), x)


# ---- end to end: convssl probe --baseline ---------------------------------------------

def subset_shards(src: Path, folder: Path, count: int) -> str:
    """The first ``count`` samples of a real labeled shard set, as one shard (no manifest)."""
    import tarfile

    folder.mkdir(parents=True)
    with tarfile.open(next(src.glob("*.tar"))) as tin, tarfile.open(folder / "shard-000000.tar", "w") as tout:
        for member in tin.getmembers()[: 2 * count]:  # .png and .cls of each sample, in order
            tout.addfile(member, tin.extractfile(member))
    return str(folder)


@pytest.fixture
def one_thread():
    """Tiny L-BFGS fits spend their time synchronising threads when the cores are shared
    (seen: 0.17 s on 1 thread, 3.6 s on 2 for one 300 x 64 probe under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def probed_with_baselines(tmp_path_factory):
    """A checkpoint (ResNet-18, ImageNet stem, 32 px, seed 1), probed with ``--baseline random
    --baseline weights:`` its own weights as safetensors, on 300 / 400 real Fashion-MNIST images."""
    safetensors = pytest.importorskip("safetensors.torch")
    from convssl.cli import main
    from convssl.config import to_dict
    from convssl.data.config import DataConfig
    from convssl.encoders import EncoderConfig, build_encoder
    from convssl import checkpoint

    tmp = tmp_path_factory.mktemp("baselines")
    cfg = EncoderConfig(spec="torchvision:resnet18", in_chans=1, input_size=32)
    torch.manual_seed(1)
    encoder = build_encoder(cfg)
    data = DataConfig(size=32, channels=1, mean=(0.286,), std=(0.353,))
    ckpt = checkpoint.save_atomic({"format": checkpoint.FORMAT, "step": 7, "encoder": encoder.backbone_state_dict(),
                                   "config": {"encoder": to_dict(cfg), "data": to_dict(data)}}, tmp / "c.pt")
    same = tmp / "same.safetensors"
    safetensors.save_file({k: v.contiguous() for k, v in encoder.backbone_state_dict().items()}, str(same))
    train = subset_shards(FMNIST / "train", tmp / "train", 300)
    val = subset_shards(FMNIST / "test", tmp / "val", 400)
    out = tmp / "probe"
    args = ["probe", "--ckpt", str(ckpt), "--train", train, "--val", val, "--out", str(out), "--workers", "0",
            "--max-dims", "64", "--quiet", "--baseline", "random", "--baseline", f"weights:{same}"]
    return main, args, out, tmp


def test_probe_with_baselines_writes_table_and_verdicts_consistent_with_report(probed_with_baselines, capsys,
                                                                                 one_thread):
    from convssl.eval.bootstrap import paired_differences

    main, args, out, _ = probed_with_baselines
    assert main(args) == 0
    stdout = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    n = report["counts"]["val"]
    assert n == 400 and report["bootstrap"]["resamples"] >= 1000
    names = [s["name"] for s in report["stages"]]
    assert names == ["layer1", "layer2", "layer3", "layer4"]
    random_init, same = report["baselines"]
    assert random_init["source"] == {"kind": "random", "seed": 0} and same["source"]["kind"] == "weights"
    # one verdict line per stage and baseline, printed and in report.md exactly as stored
    assert len(report["verdicts"]) == 2 * len(names)
    md = (out / "report.md").read_text()
    for line in report["verdicts"]:
        assert line in stdout.splitlines() and f"- {line}" in md
    for s, stage in enumerate(report["stages"]):
        for metric, key in (("linear", "linear_top1"), ("knn20", "knn20"), ("knn200", "knn200")):
            bits = unpack_bits(stage["correct"][metric], n)
            assert bits.double().mean().item() == pytest.approx(stage[key], abs=1e-12)
            low, high = stage[f"{metric}_ci"]
            assert low <= stage[key] <= high
        cell = format_interval(Interval(stage["linear_top1"], *stage["linear_ci"]))
        assert cell in stdout and cell in md  # the table shows 84.0 [83.3, 84.7]
        # the same weights as a baseline: the protocol is deterministic, the difference exactly 0
        zero = same["differences"][s]
        assert (zero["linear"]["value"], zero["linear"]["low"], zero["linear"]["high"]) == (0.0, 0.0, 0.0)
        assert zero["verdict"] == NO_GAIN and same["stages"][s]["correct"] == stage["correct"]
        # against random init: the stored difference is the paired bootstrap of the stored bits
        d = random_init["differences"][s]
        (ref,) = paired_differences(unpack_bits(stage["correct"]["linear"], n),
                                    unpack_bits(random_init["stages"][s]["correct"]["linear"], n),
                                    resamples=report["bootstrap"]["resamples"], seed=report["bootstrap"]["seed"])
        assert (d["linear"]["value"], d["linear"]["low"], d["linear"]["high"]) == pytest.approx(
            (ref.value, ref.low, ref.high), abs=1e-9)
        assert d["verdict"] == classify(ref)
        assert d["line"].startswith(f"{names[s]}: ") and format_difference(ref) in d["line"]


def test_probe_baseline_errors_are_one_line_and_early(probed_with_baselines, capsys, one_thread):
    main, args, out, tmp = probed_with_baselines
    base = args[: args.index("--baseline")]
    assert main([*base, "--baseline", "imagenet"]) == 2
    assert "random, random:SEED or weights:PATH" in capsys.readouterr().err
    assert main([*base, "--baseline", f"weights:{tmp / 'missing.pth'}"]) == 2
    assert "missing.pth" in capsys.readouterr().err
    from convssl.encoders import EncoderConfig, build_encoder

    wrong = build_encoder(EncoderConfig(spec="torchvision:resnet18", in_chans=1, input_size=32)).backbone_state_dict()
    wrong["bogus.weight"] = wrong.pop("layer4.1.bn2.bias")
    torch.save(wrong, tmp / "wrong.pth")
    assert main([*base, "--out", str(tmp / "wrong_out"), "--baseline", f"weights:{tmp / 'wrong.pth'}"]) == 2
    err = capsys.readouterr().err
    assert "layer4.1.bn2.bias" in err and "bogus.weight" in err and "Traceback" not in err
    assert not (tmp / "wrong_out" / "report.json").exists()


def test_python_api_returns_the_same_baselines_and_verdicts(probed_with_baselines, one_thread):
    import convssl

    main, args, out, tmp = probed_with_baselines
    if not (out / "report.json").is_file():
        assert main(args) == 0
    cli = json.loads((out / "report.json").read_text())
    api = convssl.probe(args[args.index("--ckpt") + 1], args[args.index("--train") + 1],
                        args[args.index("--val") + 1], tmp / "api", baselines=["random"], workers=0, max_dims=64)
    assert api["verdicts"] == cli["verdicts"][:4]  # deterministic: the same protocol, images and resamples
    assert api["baselines"][0]["differences"] == cli["baselines"][0]["differences"]


def test_monitor_reports_the_knn_interval_and_its_gain_over_random_init():
    """The online monitor's kNN gets its interval, and its paired gain over the same
    architecture at random init (seed = the monitor's) is exactly 0 for that very encoder."""
    from convssl.data.config import DataConfig
    from convssl.encoders import EncoderConfig
    from convssl.eval.baselines import random_init
    from convssl.eval.monitor import Monitor

    monitor = Monitor(str(FMNIST / "train"), DataConfig(size=16, channels=1, mean=(0.286,), std=(0.353,)),
                      samples=200, probe_epochs=1, seed=3)
    cfg = EncoderConfig(spec="torchvision:resnet18", in_chans=1, input_size=16, small_input=True)
    same = monitor.evaluate(random_init(cfg, 3))
    assert same["monitor/knn_low"] <= same["monitor/knn_top1"] <= same["monitor/knn_high"]
    assert (same["monitor/knn_gain"], same["monitor/knn_gain_low"], same["monitor/knn_gain_high"]) == (0.0, 0.0, 0.0)
    assert monitor.summary.endswith("+0.0 [+0.0, +0.0] over random init: no gain measurable")
    other = monitor.evaluate(random_init(cfg, 4))  # another draw: the same baseline, a nonzero paired gain
    (gain,) = paired_differences(monitor._knn_correct(monitor.features(random_init(cfg, 4))),
                                 monitor.random_init_correct, seed=3)
    assert other["monitor/knn_gain"] == gain.value
    assert gain.value == pytest.approx(other["monitor/knn_top1"] - same["monitor/knn_top1"], abs=1e-12)
    assert (other["monitor/knn_gain_low"], other["monitor/knn_gain_high"]) == (gain.low, gain.high)


def test_finetune_baseline_over_label_seeds_reports_intervals_gains_and_spread(tmp_path, capsys, one_thread):
    """finetune --baseline --label-seeds 2: per draw, both top-1s with intervals and the paired
    gain recomputed here from the stored bits; the spread across draws by its formula."""
    from test_finetune import ENC, TRUST

    from convssl.cli import main
    from convssl.config import to_dict
    from convssl.encoders import build_encoder
    from convssl import checkpoint

    torch.manual_seed(5)
    ckpt = checkpoint.save_atomic({"format": checkpoint.FORMAT, "step": 2, "encoder": build_encoder(ENC).backbone_state_dict(),
                                   "config": {"encoder": to_dict(ENC), "task": {"name": "rotation"},
                                              "data": {"size": 16, "channels": 1, "mean": [0.286], "std": [0.353]}},
                                   "versions": {}}, tmp_path / "c.pt")
    val = subset_shards(FMNIST / "test", tmp_path / "val", 120)
    out = tmp_path / "ft"
    assert main(["finetune", "--ckpt", str(ckpt), *TRUST, "--train", str(FMNIST / "train"), "--val", val,
                 "--out", str(out), "--label-fraction", "0.05", "--baseline", "--label-seeds", "2", "--max-steps", "2",
                 "--quiet", "--set", "data.batch_size=8", "--set", "data.workers=0", "--set", "train.channels_last=false"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "label_seeds.json").read_text())
    assert [d["label_seed"] for d in summary["draws"]] == [0, 1]
    gains = []
    for draw in summary["draws"]:
        run = out / f"label-seed-{draw['label_seed']}"
        pre, base = (json.loads((run / p / "report.json").read_text()) for p in (".", "baseline"))
        assert pre["labels"]["seed"] == draw["label_seed"] and pre["labels"]["count"] == 50
        assert pre["top1_ci"][0] <= pre["top1"] <= pre["top1_ci"][1]
        (gain,) = paired_differences(unpack_bits(pre["correct"], 120), unpack_bits(base["correct"], 120))
        assert draw["gain_ci"] == pytest.approx([gain.low, gain.high], abs=1e-12) and draw["verdict"] == classify(gain)
        comparison = json.loads((run / "comparison.json").read_text())
        assert comparison["gain_ci"] == draw["gain_ci"] and comparison["line"].startswith("fine-tuned: ")
        gains.append(pre["top1"] - base["top1"])
    assert summary["spread"]["gain"]["mean"] == pytest.approx(sum(gains) / 2)
    assert summary["spread"]["gain"]["sd"] == pytest.approx(abs(gains[0] - gains[1]) / math.sqrt(2))
    assert "Spread across the label draws" in printed and "gain [95% CI, paired]" in printed


def test_the_quickstart_held_out_set_is_the_whole_fashion_mnist_test_split():
    """test/ + holdout/ + test_rest/ (gzip-compressed tars) read as 10,000 labeled images,
    1000 per class as in the published test split, all distinct."""
    from convssl.commands.quickstart import HELD_OUT
    from convssl.eval.features import labeled_batches, shard_count

    spec = "::".join(str(FMNIST / s) for s in HELD_OUT)
    images, labels = [], []
    with labeled_batches(spec, 28, 1, 1000, 0) as batches:
        for img_BCHW, cls_B in batches:
            images.append(img_BCHW.flatten(1))
            labels.append(cls_B)
    labels_N = torch.cat(labels)
    assert len(labels_N) == 10_000 and torch.bincount(labels_N).tolist() == [1000] * 10
    assert shard_count(spec) == 10_000  # the progress line's total (ETA) over specs joined by ::
    assert len(torch.unique(torch.cat(images), dim=0)) > 9_990  # a handful of duplicate images exist in the split
