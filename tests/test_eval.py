"""Evaluation: logistic regression and kNN against independent references, the probe end to end."""

import io
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import webdataset as wds
from PIL import Image

from convssl.eval.features import extract_features, pool_grid
from convssl.eval.knn import knn_eval, knn_predict
from convssl.eval.linear import fit_in_row_space, fit_logistic, fit_path, linear_probe, standardize


def blobs(n, d, k, *, spread=4.0, noise=1.0, seed=0, sample_seed=None):
    """Gaussian blobs: class c centred at spread * a random unit direction (from ``seed``),
    samples drawn with ``sample_seed`` (default ``seed``): same centres, fresh samples."""
    centres_KD = F.normalize(torch.randn(k, d, generator=torch.Generator().manual_seed(seed)), dim=1) * spread
    y_N = torch.arange(n) % k
    g = torch.Generator().manual_seed(seed if sample_seed is None else sample_seed + 1000)
    return centres_KD[y_N] + noise * torch.randn(n, d, generator=g), y_N


def hand_gradient(x_ND, y_N, W_DK, b_K, wd):
    """d/dW, d/db of mean CE + wd/2 ||W||^2, written out: X^T (P - Y) / N + wd W."""
    p_NK = torch.softmax(x_ND @ W_DK + b_K, dim=1)
    r_NK = (p_NK - F.one_hot(y_N, W_DK.shape[1]).to(x_ND.dtype)) / len(y_N)
    return x_ND.T @ r_NK + wd * W_DK, r_NK.sum(0)


# ---- logistic regression -------------------------------------------------------------

@pytest.mark.parametrize("wd", [1e-3, 1e-1])
def test_fit_logistic_meets_optimality_condition(wd):
    x, y = blobs(90, 6, 3, spread=1.0, seed=1)
    x = x.double()
    W, b = fit_logistic(x, y, 3, wd, max_iter=500, tol=1e-10)
    gW, gb = hand_gradient(x, y, W, b, wd)
    assert gW.abs().max() < 1e-6 and gb.abs().max() < 1e-6  # ~0.3 at the zero start


def test_fit_path_solves_every_weight_decay_in_one_batch():
    # the batched solve must reach each wd's own optimum, wd spanning 4 decades of conditioning
    x, y = blobs(120, 7, 3, spread=1.0, seed=4)
    x = x.double()
    wds = [1.0, 1e-1, 1e-2, 1e-4]
    for wd, (W, b) in zip(wds, fit_path(x, y, 3, wds, max_iter=1000, tol=1e-10)):
        gW, gb = hand_gradient(x, y, W, b, wd)
        assert gW.abs().max() < 1e-6 and gb.abs().max() < 1e-6, wd


def test_row_space_fit_is_the_same_optimum():
    # D > N: the fit in the span of the rows must satisfy the optimality condition in the full space.
    x, y = blobs(40, 100, 4, spread=2.0, seed=2)
    x = x.double()
    W, b = fit_in_row_space(x, y, 4, 1e-2, max_iter=1000, tol=1e-10)
    assert W.shape == (100, 4)
    gW, gb = hand_gradient(x, y, W, b, 1e-2)
    assert gW.abs().max() < 1e-6 and gb.abs().max() < 1e-6  # ~0.3 at the zero start
    W_full, b_full = fit_logistic(x, y, 4, 1e-2, max_iter=1000, tol=1e-10)
    torch.testing.assert_close(W, W_full, atol=1e-5, rtol=1e-4)


def test_matches_sklearn_logistic_regression():
    sklearn_lm = pytest.importorskip("sklearn.linear_model")
    x, y = blobs(200, 8, 3, spread=1.5, seed=3)
    x_std, = standardize(x.double())
    wd = 1e-2
    W, b = fit_logistic(x_std, y, 3, wd, max_iter=500, tol=1e-10)
    # sklearn minimises C * sum CE + ||W||^2 / 2, i.e. ours with C = 1 / (N wd)
    ref = sklearn_lm.LogisticRegression(C=1 / (len(y) * wd), tol=1e-10, max_iter=10000)
    ref.fit(x_std.numpy(), y.numpy())
    ours = (x_std @ W + b).argmax(1).numpy()
    assert (ours == ref.predict(x_std.numpy())).mean() > 0.99
    # the softmax is invariant to a shift per feature: compare centred coefficients
    W_ref = torch.from_numpy(ref.coef_.T)
    torch.testing.assert_close(W - W.mean(1, keepdim=True), W_ref - W_ref.mean(1, keepdim=True), atol=1e-4, rtol=1e-3)


def test_standardize_uses_train_statistics_and_survives_constant_dims():
    train = torch.tensor([[1.0, 5.0], [3.0, 5.0]])
    val = torch.tensor([[2.0, 7.0]])
    train_std, val_std = standardize(train, val)
    assert torch.equal(train_std, torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))
    assert torch.equal(val_std, torch.tensor([[0.0, 0.0]]))


def test_linear_probe_separable_reaches_100_percent():
    x, y = blobs(400, 32, 5, spread=12.0, noise=1.0, seed=4)
    xv, yv = blobs(400, 32, 5, spread=12.0, noise=1.0, seed=4, sample_seed=5)
    result = linear_probe(x, y, xv, yv)
    assert result["top1"] == 1.0 and result["train_top1"] == 1.0
    assert result["wd"] in [wd for wd, _ in result["heldout"]]


def test_linear_probe_shuffled_labels_is_at_chance():
    k = 4
    x, y = blobs(600, 64, k, spread=6.0, seed=6)
    xv, yv = blobs(600, 64, k, spread=6.0, seed=6, sample_seed=7)
    y_shuffled = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))]
    result = linear_probe(x, y_shuffled, xv, yv)
    assert abs(result["top1"] - 1 / k) < 0.07  # 600 val samples: binomial sd 0.018


def test_linear_probe_is_deterministic():
    x, y = blobs(200, 300, 3, spread=2.0, seed=7)  # D > N: the row-space path
    xv, yv = blobs(100, 300, 3, spread=2.0, seed=7, sample_seed=8)
    first, second = linear_probe(x, y, xv, yv), linear_probe(x, y, xv, yv)
    assert torch.equal(first.pop("correct"), second.pop("correct")) and first == second


# ---- kNN -----------------------------------------------------------------------------

def knn_loop(train, train_y, query, k, temperature, num_classes):
    """Reference: one query at a time, plain Python."""
    preds = []
    for q in query:
        sims = [(float(F.cosine_similarity(q, t, dim=0)), int(c)) for t, c in zip(train, train_y)]
        sims.sort(key=lambda s: -s[0])
        votes = [0.0] * num_classes
        for s, c in sims[:k]:
            votes[c] += np.exp(s / temperature)
        preds.append(int(np.argmax(votes)))
    return preds


def test_knn_matches_brute_force_loop():
    g = torch.Generator().manual_seed(0)
    train, train_y = torch.randn(60, 8, generator=g), torch.randint(0, 3, (60,), generator=g)
    query = torch.randn(25, 8, generator=g)
    preds = knn_predict(train, train_y, query, ks=(1, 5, 20, 200), num_classes=3, chunk_size=7)
    for k in (1, 5, 20, 200):
        assert preds[k].tolist() == knn_loop(train, train_y, query, min(k, 60), 0.07, 3), k


def test_knn_eval_separable_and_scale_invariant():
    x, y = blobs(300, 16, 3, spread=10.0, seed=9)
    xv, yv = blobs(90, 16, 3, spread=10.0, seed=9, sample_seed=10)
    acc = knn_eval(x, y, xv, yv)
    assert acc == {20: 1.0, 200: 1.0}
    assert knn_eval(3.0 * x, y, 0.5 * xv, yv) == acc  # cosine: per-sample scale does not matter


# ---- features ------------------------------------------------------------------------

def test_pool_grid_keeps_stages_under_max_dims():
    # small-input ResNet-18 at 32 px: 64x32x32, 128x16x16, 256x8x8, 512x4x4
    assert [pool_grid(c, s, s) for c, s in [(64, 32), (128, 16), (256, 8), (512, 4)]] == [12, 8, 6, 4]
    assert pool_grid(2048, 7, 7) == 2 and pool_grid(4096, 7, 7) == 1
    assert pool_grid(64, 3, 3) == 3  # never more than the map
    assert pool_grid(64, 32, 32, max_dims=None) == 1


def test_extract_features_shapes_eval_mode_and_gap():
    from convssl.encoders import build_encoder

    torch.manual_seed(0)
    encoder = build_encoder("custom_nets:small_convnet", in_chans=1, input_size=16).train()
    batches = [(torch.randint(0, 256, (5, 1, 16, 16), dtype=torch.uint8), torch.arange(5) % 2) for _ in range(3)]
    fs = extract_features(encoder, batches, mean=(0.5,), std=(0.25,), max_dims=512)
    assert encoder.training  # mode restored
    assert len(fs) == 15 and fs.labels_N.tolist() == [0, 1, 0, 1, 0] * 3
    for st in fs.stages:
        assert st.feats_ND.shape == (15, st.dims) and st.dims <= 512
    gap = extract_features(encoder, batches, mean=(0.5,), std=(0.25,), max_dims=None)
    x = (torch.cat([b for b, _ in batches]).float() / 255 - 0.5) / 0.25
    with torch.no_grad():
        maps = encoder.eval()(x)
    for st, m in zip(gap.stages, maps):
        assert st.feats_ND.dtype == torch.float16  # half the memory; float16 rounding is 2^-11 relative
        torch.testing.assert_close(st.feats_ND.float(), m.mean((2, 3)), rtol=2e-3, atol=1e-4)
    assert all(p.is_contiguous() for p in encoder.parameters())  # NCHW layout restored after the pass


def test_extract_features_keeps_float32_when_half_overflows():
    from convssl.encoders import build_encoder

    torch.manual_seed(0)
    encoder = build_encoder("custom_nets:small_convnet", in_chans=1, input_size=16)
    batches = [(torch.full((2, 1, 16, 16), 255, dtype=torch.uint8), torch.arange(2))]
    fs = extract_features(encoder, batches, mean=(0.0,), std=(1e-8,), max_dims=None)  # inputs 1e8
    with torch.no_grad():
        maps = encoder.eval()(torch.full((2, 1, 16, 16), 1.0) / 1e-8)
    for st, m in zip(fs.stages, maps):
        expected = m.mean((2, 3))
        if expected.abs().max() >= 65504:
            assert st.feats_ND.dtype == torch.float32
            torch.testing.assert_close(st.feats_ND, expected, rtol=1e-4, atol=0)  # channels-last rounding
    assert any(st.feats_ND.dtype == torch.float32 for st in fs.stages)


# ---- end to end on shards -------------------------------------------------------------

def write_stripes(folder, n, seed, size=16):
    """Labeled shards: class 0 vertical, class 1 horizontal stripes, random phase and noise."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    with wds.TarWriter(str(folder / "shard-000000.tar")) as sink:
        for i in range(n):
            cls, phase = i % 2, rng.integers(0, 4)
            stripes = ((np.arange(size) + phase) // 2 % 2 * 160).astype(np.float64)
            img = np.tile(stripes, (size, 1)) if cls == 0 else np.tile(stripes[:, None], (1, size))
            img = np.clip(img + rng.normal(0, 30, img.shape) + 40, 0, 255).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="PNG")
            sink.write({"__key__": f"{i:05d}", "png": buf.getvalue(), "cls": str(cls)})
    return str(folder)


@pytest.fixture(scope="module")
def stripes(tmp_path_factory):
    root = tmp_path_factory.mktemp("stripes")
    return write_stripes(root / "train", 80, 0), write_stripes(root / "val", 40, 1)


def test_probe_writes_report(stripes, tmp_path):
    from convssl.encoders import build_encoder
    from convssl.eval.probe import probe

    torch.manual_seed(0)
    encoder = build_encoder("custom_nets:small_convnet", in_chans=1, input_size=16)
    report = probe(encoder, *stripes, size=16, channels=1, mean=(0.4,), std=(0.3,), out_dir=tmp_path,
                   batch_size=32, workers=0, max_dims=256)
    assert {p.name for p in tmp_path.iterdir()} >= {"report.json", "report.md", "stages.png"}
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["counts"] == {"train": 80, "val": 40, "classes": 2}
    assert [s["name"] for s in saved["stages"]] == encoder.stage_names
    for s in saved["stages"]:
        assert set(s) >= {"name", "channels", "reduction", "dims", "linear_top1", "linear_wd", "knn20", "knn200"}
        assert s["dims"] <= 256
    assert max(s["linear_top1"] for s in saved["stages"]) == 1.0  # stripes: trivially separable
    assert "| stage |" in (tmp_path / "report.md").read_text()
    assert Image.open(tmp_path / "stages.png").size[0] >= 360


def test_probe_cli_random_init_and_checkpoint(stripes, tmp_path, capsys):
    from convssl.cli import main
    from convssl.config import to_dict
    from convssl.data.config import DataConfig
    from convssl.encoders import EncoderConfig, build_encoder
    from convssl import checkpoint

    train, val = stripes
    common = ["--train", train, "--val", val, "--workers", "0", "--max-dims", "128", "--mean", "0.4", "--std", "0.3"]
    assert main(["probe", "--encoder", "custom_nets:small_convnet", "--size", "16", "--in-chans", "1",
                 "--out", str(tmp_path / "rand"), *common]) == 0
    out = capsys.readouterr().out
    assert "linear top-1" in out and "random init (seed 0)" in out
    assert json.loads((tmp_path / "rand" / "report.json").read_text())["data"]["channels"] == 1

    cfg = EncoderConfig(spec="custom_nets:small_convnet", in_chans=1, input_size=16)
    encoder = build_encoder(cfg)
    data = DataConfig(size=16, channels=1, mean=(0.4,), std=(0.3,))
    ckpt = checkpoint.save_atomic({"format": checkpoint.FORMAT, "step": 3, "encoder": encoder.backbone_state_dict(),
                                   "config": {"encoder": to_dict(cfg), "data": to_dict(data)}}, tmp_path / "c.pt")
    assert main(["probe", "--ckpt", str(ckpt), "--train", train, "--val", val, "--workers", "0",
                 "--out", str(tmp_path / "ck"), "--trust-encoder", cfg.spec]) == 0
    report = json.loads((tmp_path / "ck" / "report.json").read_text())
    assert report["checkpoint"] == str(ckpt) and report["step"] == 3 and report["data"]["mean"] == [0.4]


def test_probe_cli_errors_are_clear(stripes, tmp_path, capsys):
    from convssl.cli import main

    train, val = stripes
    assert main(["probe", "--ckpt", str(tmp_path / "nope.pt"), "--train", train, "--val", val,
                 "--out", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["probe", "--encoder", "custom_nets:small_convnet", "--train", str(tmp_path / "none"),
                 "--val", val, "--out", str(tmp_path)]) == 2
    assert "shards" in capsys.readouterr().err
