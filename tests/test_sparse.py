"""Sparse execution (masked backend): no leakage, exact statistics, dense equivalence, names.

Legend: B batch, C channels, h/w map size; masks are bool, True = visible.
"""

import copy

import pytest
import torch
import torch.nn as nn
import torchvision
from torchvision.ops.misc import SqueezeExcitation

from convssl.encoders import Encoder, build_encoder
from convssl.errors import EncoderError
from convssl.sparse import SparseEncoder, random_patch_mask, upsample_mask
from convssl.sparse.layers import SparseLayer


def custom_sequential(in_chans: int = 3) -> nn.Sequential:
    """A user's plain convnet: Conv/BN/ReLU/MaxPool, head inside the Sequential."""
    return nn.Sequential(
        nn.Conv2d(in_chans, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    )


# name -> (encoder factory, input size); 224-px models at 64 px: a 2x2 patch grid
ENCODERS = {
    "resnet18": (lambda: build_encoder("torchvision:resnet18", input_size=64), 64),
    "resnet18_small": (lambda: build_encoder("torchvision:resnet18", small_input=True, input_size=32, in_chans=1), 32),
    "convnext_tiny": (lambda: build_encoder("torchvision:convnext_tiny", input_size=64), 64),
    "mobilenet_v3_large": (lambda: build_encoder("torchvision:mobilenet_v3_large", input_size=64), 64),
    "efficientnet_b0": (lambda: build_encoder("torchvision:efficientnet_b0", input_size=64), 64),
    "regnet_y_400mf": (lambda: build_encoder("torchvision:regnet_y_400mf", input_size=64), 64),
    "custom_sequential": (lambda: Encoder(custom_sequential(), input_size=32), 32),
}


def masked_pixels(mask_B1hw, size):
    return ~upsample_mask(mask_B1hw, (size, size))


def run(enc, x, mask, seed=0):
    torch.manual_seed(seed)  # stochastic depth / dropout draw the same in both runs
    with torch.no_grad():
        return enc(x) if mask is None else enc(x, mask)


@pytest.mark.parametrize("name", list(ENCODERS))
def test_no_leakage_and_zero_masked_positions(name):
    make, size = ENCODERS[name]
    dense = make()
    keys = list(dense.model.state_dict())
    enc = SparseEncoder(dense).train()
    assert list(enc.model.state_dict()) == keys, "parameter and buffer names must not change"

    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, enc.in_chans, size, size, generator=g)
    mask = random_patch_mask(2, enc.grid((size, size)), 0.5, generator=g)
    hidden = masked_pixels(mask, size)
    x_changed = torch.where(hidden, torch.randn(x.shape, generator=g) * 10, x)

    a, b = run(enc, x, mask), run(enc, x_changed, mask)
    assert len(a) == len(enc.stages)
    for fa, fb, stage in zip(a, b, enc.stages):
        assert torch.equal(fa, fb), f"{name} {stage.name}: masked pixels leaked into visible features"
        m = upsample_mask(mask, fa.shape[-2:])
        assert (fa * ~m).abs().max() == 0, f"{name} {stage.name}: masked positions are not 0"
        assert (fa * m).abs().max() > 0

    # sanity: a visible pixel change does change the features
    x_vis = torch.where(hidden, x, x + 1.0)
    assert not torch.equal(run(enc, x_vis, mask)[-1], a[-1])


def test_sparse_batch_norm_matches_hand_computation():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8, momentum=0.3)
    nn.init.normal_(bn.weight), nn.init.normal_(bn.bias)
    enc = SparseEncoder(Encoder(nn.Sequential(conv, bn, nn.ReLU(), nn.MaxPool2d(2),
                                                           nn.Conv2d(8, 8, 3, padding=1)), input_size=16))
    x = torch.randn(4, 3, 16, 16)
    mask = random_patch_mask(4, (8, 8), 0.6, generator=torch.Generator().manual_seed(3))
    m = upsample_mask(mask, (16, 16))
    got = {}
    enc.model[1].register_forward_hook(lambda mod, i, o: got.setdefault("y", o))
    enc.train()(x, mask)

    conv_out = conv(x * m) * m
    vis_NC = conv_out.permute(0, 2, 3, 1)[m[:, 0]].detach()  # [visible positions, C]
    n = vis_NC.shape[0]
    mean, var = vis_NC.mean(0), vis_NC.var(0, unbiased=False)
    want = (conv_out - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + bn.eps)
    want = (want * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)) * m
    torch.testing.assert_close(got["y"], want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bn.running_mean, 0.3 * mean)
    torch.testing.assert_close(bn.running_var, 0.7 + 0.3 * var * n / (n - 1))
    assert int(bn.num_batches_tracked) == 1


def test_sparse_group_norm_matches_hand_computation():
    torch.manual_seed(0)
    gn = nn.GroupNorm(2, 8)
    nn.init.normal_(gn.weight), nn.init.normal_(gn.bias)
    enc = SparseEncoder(Encoder(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), gn,
                                                           nn.Conv2d(8, 8, 3, stride=2, padding=1),
                                                           nn.Conv2d(8, 8, 3, stride=2, padding=1)),
                                             input_size=16))
    x = torch.randn(2, 3, 16, 16)
    mask = random_patch_mask(2, (4, 4), 0.5, generator=torch.Generator().manual_seed(0))
    m = upsample_mask(mask, (16, 16))
    got = {}
    enc.model[1].register_forward_hook(lambda mod, i, o: got.setdefault("y", o))
    enc(x, mask)
    conv_out = (enc.model[0](x * m)).detach()  # enc.model[0] is sparse but masks only inside the context
    conv_out = conv_out * m
    want = torch.zeros_like(conv_out)
    for b in range(2):
        for g in range(2):
            vals = conv_out[b, 4 * g:4 * g + 4].permute(1, 2, 0)[m[b, 0]]  # visible positions x 4 channels
            mu, var = vals.mean(), vals.var(unbiased=False)
            want[b, 4 * g:4 * g + 4] = (conv_out[b, 4 * g:4 * g + 4] - mu) / torch.sqrt(var + gn.eps)
    want = (want * gn.weight.view(1, -1, 1, 1) + gn.bias.view(1, -1, 1, 1)) * m
    torch.testing.assert_close(got["y"], want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["resnet18", "convnext_tiny", "mobilenet_v3_large"])
@pytest.mark.parametrize("train", [True, False])
def test_all_visible_equals_dense(name, train):
    make, size = ENCODERS[name]
    dense = make().train(train)
    if not train:  # non-trivial running statistics
        for mod in dense.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.normal_()
                mod.running_var.uniform_(0.5, 2.0)
    ref = copy.deepcopy(dense)
    enc = SparseEncoder(dense)
    x = torch.randn(2, 3, size, size)
    ones = torch.ones(2, 1, *enc.grid((size, size)), dtype=torch.bool)
    want, got = run(ref, x, None), run(enc, x, ones)
    for w, g in zip(want, got):
        torch.testing.assert_close(g, w, atol=2e-4, rtol=1e-4)
    for (kw, w), (kg, g) in zip(ref.model.state_dict().items(), enc.model.state_dict().items()):
        assert kw == kg
        if w.is_floating_point():
            torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)
        else:
            assert torch.equal(g, w)


def test_sparse_twin_leaves_the_dense_encoder_unchanged_and_shares_its_parameters():
    make, size = ENCODERS["mobilenet_v3_large"]
    dense = make()
    ref = copy.deepcopy(dense)
    enc = SparseEncoder(dense)
    x = torch.randn(2, 3, size, size)
    mask = random_patch_mask(2, enc.grid((size, size)), 0.5, generator=torch.Generator().manual_seed(0))
    enc(x, mask)[-1].sum().backward()  # a sparse training pass: BN running stats move, grads land
    # the dense encoder keeps its classes, and is still the dense model: in eval mode (same
    # running statistics, which the sparse pass updated in place) it computes what a dense copy does
    assert not any(isinstance(mod, SparseLayer) for mod in dense.model.modules())
    assert [type(mod) for mod in dense.model.modules()] == [type(mod) for mod in ref.model.modules()]
    ref.load_state_dict(dense.state_dict())
    dense.eval(), ref.eval()
    for w, g in zip(run(ref, x, None), run(dense, x, None)):
        assert torch.equal(w, g)
    # one set of Parameter objects: the sparse pass's gradients are the dense encoder's
    assert [id(p) for p in enc.parameters()] == [id(p) for p in dense.parameters()]
    assert all(p.grad is not None for p in dense.parameters())
    # the twin follows train/eval of the dense modules at each call
    enc(x, mask)
    assert all(twin.training == orig.training for twin, orig in enc.view.twins)


def test_squeeze_excitation_and_global_pool_ignore_masked_positions():
    torch.manual_seed(0)

    class CustomSE(nn.Module):  # a user's SE built from modules: pool child + 1x1 convs
        def __init__(self, c):
            super().__init__()
            self.pool, self.fc, self.gate = nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, c, 1), nn.Sigmoid()

        def forward(self, x):
            return x * self.gate(self.fc(self.pool(x)))

    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), SqueezeExcitation(8, 4), CustomSE(8),
                          nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.Conv2d(8, 8, 3, stride=2, padding=1))
    ref = copy.deepcopy(model)
    enc = SparseEncoder(Encoder(model, input_size=16))
    got = {}
    enc.model[2].register_forward_hook(lambda mod, i, o: got.setdefault("y", o))
    x = torch.randn(2, 3, 16, 16)
    mask = random_patch_mask(2, (4, 4), 0.75, generator=torch.Generator().manual_seed(0))
    m = upsample_mask(mask, (16, 16)).float()
    with torch.no_grad():
        enc(x, mask)
        h = ref[0](x * m) * m
        se = ref[1]
        mean = (h * m).sum((2, 3), keepdim=True) / m.sum((2, 3), keepdim=True)
        h = h * torch.sigmoid(se.fc2(torch.relu(se.fc1(mean))))
        mean = (h * m).sum((2, 3), keepdim=True) / m.sum((2, 3), keepdim=True)
        want = h * torch.sigmoid(ref[2].fc(mean))
        torch.testing.assert_close(got["y"], want)
        # a dense average over all positions would differ (the test can tell them apart)
        assert not torch.allclose(h.mean((2, 3), keepdim=True), mean)


def test_unknown_layer_error_names_the_layer():
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.gain = nn.Parameter(torch.ones(1))

        def forward(self, x):
            return x * self.gain

    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1),
                          nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1), Scale()),
                          nn.Conv2d(8, 8, 3, stride=2, padding=1))
    with pytest.raises(EncoderError, match=r"1\.1 \(.*Scale\)"):
        SparseEncoder(Encoder(model, input_size=16))

    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Upsample(scale_factor=1.0),
                          nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.Conv2d(8, 8, 3, stride=2, padding=1))
    with pytest.raises(EncoderError, match=r"1 \(.*Upsample\)"):
        SparseEncoder(Encoder(model, input_size=16))


def test_custom_elementwise_layer_can_be_declared():
    class Swish(nn.Module):
        def forward(self, x):
            return x * torch.sigmoid(x) + 0.1  # f(0) != 0: must be re-masked

    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), Swish(), nn.Conv2d(8, 8, 3, stride=2, padding=1),
                          nn.Conv2d(8, 8, 3, stride=2, padding=1))
    enc = SparseEncoder(Encoder(model, input_size=16), elementwise=(Swish,))
    mask = random_patch_mask(2, (4, 4), 0.5)
    out = enc(torch.randn(2, 3, 16, 16), mask)
    for f in out:
        assert (f * ~upsample_mask(mask, f.shape[-2:])).abs().max() == 0


def test_bad_sizes_and_masks_get_clear_errors():
    enc = SparseEncoder(ENCODERS["resnet18_small"][0]())
    with pytest.raises(EncoderError, match="not a multiple of the encoder's total reduction 8"):
        enc.grid((36, 36))
    with pytest.raises(EncoderError, match="at least 4 patches"):
        enc.grid((8, 8))
    with pytest.raises(EncoderError, match="at least 4 patches"):
        SparseEncoder(build_encoder("torchvision:resnet18", input_size=64)).grid((32, 32))
    x = torch.randn(2, 1, 36, 36)
    with pytest.raises(EncoderError, match="multiple"):
        enc(x, torch.ones(2, 1, 4, 4, dtype=torch.bool))
    with pytest.raises(EncoderError, match=r"expected \[2, 1, 4, 4\]"):
        enc(torch.randn(2, 1, 32, 32), torch.ones(2, 1, 2, 2, dtype=torch.bool))
    with pytest.raises(EncoderError, match="no visible patch"):
        random_patch_mask(2, (2, 2), 0.9)


def test_random_mask_keeps_round_n_visible_per_image():
    mask = random_patch_mask(64, (7, 7), 0.6, generator=torch.Generator().manual_seed(0))
    assert mask.shape == (64, 1, 7, 7) and mask.dtype == torch.bool
    assert (mask.flatten(1).sum(1) == round(49 * 0.4)).all()
    assert len({tuple(m.flatten().tolist()) for m in mask}) > 60  # drawn per image


def test_replacing_layers_after_conversion_is_caught():
    dense = ENCODERS["resnet18_small"][0]()
    enc = SparseEncoder(dense)
    dense.model.bn1 = nn.BatchNorm2d(64)  # what nn.SyncBatchNorm.convert_sync_batchnorm would do
    with pytest.raises(EncoderError, match="bn1 .*replaced"):
        enc(torch.randn(2, 1, 32, 32), random_patch_mask(2, (4, 4), 0.5))


def test_cross_rank_sparse_bn_equals_one_process(tmp_path):
    """2 gloo ranks x batch 2 == 1 process x batch 4 (statistics over all visible positions)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    script = root / "tests" / "dist_scripts" / "sparse_bn_ranks.py"
    sys.path.insert(0, str(script.parent))
    from sparse_bn_ranks import encoder  # noqa: E402

    x = torch.randn(4, 3, 16, 16)
    mask = random_patch_mask(4, (4, 4), 0.5)
    torch.save({"x": x, "mask": mask}, tmp_path / "inputs.pt")
    env = {**os.environ, "PYTHONPATH": str(root / "ssl"), "OMP_NUM_THREADS": "1"}
    ranks = [subprocess.Popen([sys.executable, str(script), str(r), "2", str(tmp_path / "init"),
                               str(tmp_path / "inputs.pt"), str(tmp_path / f"rank{r}.pt")], env=env,
                              stderr=subprocess.PIPE, text=True) for r in range(2)]
    for proc in ranks:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
    result = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    enc = encoder()
    out = enc(x, mask)[0]
    out.pow(2).sum().backward()
    torch.testing.assert_close(torch.cat([result[0]["out"], result[1]["out"]]), out.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(result[0]["running_mean"], enc.model[1].running_mean)
    # per-rank gradients summed (what DDP's average does, times world size) == one-process gradient
    torch.testing.assert_close(result[0]["grad"] + result[1]["grad"], enc.model[0].weight.grad, atol=1e-4, rtol=1e-4)


def test_channels_first_layernorm2d_like_timms():
    class LayerNorm2d(nn.LayerNorm):  # timm's: normalise over channels of a [B, C, h, w] map
        def forward(self, x):
            return nn.functional.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight,
                                            self.bias, self.eps).permute(0, 3, 1, 2)

    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), LayerNorm2d(8), nn.Conv2d(8, 8, 3, stride=2, padding=1),
                          nn.Conv2d(8, 8, 3, stride=2, padding=1))
    nn.init.normal_(model[1].bias)  # so that a missed re-mask would show
    ref = copy.deepcopy(model)
    enc = SparseEncoder(Encoder(model, input_size=16))
    x = torch.randn(2, 3, 16, 16)
    for w, g in zip(run(Encoder(ref, input_size=16), x, None), run(enc, x, torch.ones(2, 1, 4, 4, dtype=torch.bool))):
        torch.testing.assert_close(g, w)
    mask = random_patch_mask(2, (4, 4), 0.5)
    got = {}
    enc.model[1].register_forward_hook(lambda mod, i, o: got.setdefault("y", o))
    run(enc, x, mask)
    m = upsample_mask(mask, (16, 16))
    want = ref[1](ref[0](x * m)) * m  # per position over channels, masked positions 0
    torch.testing.assert_close(got["y"], want)


def test_timm_style_drop_path_passes_through_by_name():
    """timm's DropPath (per-sample scaling) is recognised without importing timm."""
    from convssl.sparse.convert import _passes_through

    DropPath = type("DropPath", (torch.nn.Module,), {"__module__": "timm.layers.drop"})
    assert _passes_through(DropPath(), ())
    Other = type("DropPath", (torch.nn.Module,), {"__module__": "someone.else"})
    assert not _passes_through(Other(), ())


def test_known_visible_count_finds_the_same_sites_as_nonzero_and_the_same_features():
    """SparK's own masks keep the same number of patches per image, so the visible sites
    come from ``nonzero_static`` (no host sync): the same positions in the same order as
    ``nonzero``, hence bit-identical stage maps and BatchNorm statistics."""
    from convssl.sparse.mask import upsample_mask, visible_count, visible_sites

    g = torch.Generator().manual_seed(3)
    mask = random_patch_mask(5, (4, 4), 0.6, generator=g)
    keep = visible_count(16, 0.6)
    for f in (1, 2, 8):
        m = upsample_mask(mask, (4 * f, 4 * f))[:, 0]
        for a, b in zip(visible_sites(m, 5 * keep * f * f), m.nonzero(as_tuple=True)):
            assert torch.equal(a, b)

    torch.manual_seed(0)
    sparse = SparseEncoder(build_encoder("torchvision:resnet18", small_input=True, in_chans=1, input_size=32)).train()
    x = torch.randn(5, 1, 32, 32)
    running = {n: b.clone() for n, b in sparse.named_buffers()}
    out_known = sparse(x, mask, keep)
    after_known = {n: b.clone() for n, b in sparse.named_buffers()}
    for n, b in sparse.named_buffers():
        b.copy_(running[n])
    out_unknown = sparse(x, mask)
    for a, b in zip(out_known, out_unknown):
        assert torch.equal(a, b)
    for n, b in sparse.named_buffers():
        assert torch.equal(after_known[n], b), n


@pytest.mark.parametrize("momentum", [0.3, None])  # None: a cumulative average
def test_sparse_batch_norm_equals_batch_norm_of_the_visible_rows(momentum):
    """Output, input/weight/bias gradients and running statistics over two steps against
    torch's BatchNorm1d run on the visible rows alone."""
    from convssl.sparse import sparse_batch_norm

    torch.manual_seed(0)
    ours, ref = nn.BatchNorm2d(6, momentum=momentum), nn.BatchNorm1d(6, momentum=momentum)
    nn.init.normal_(ours.weight), nn.init.normal_(ours.bias)
    ref.load_state_dict(ours.state_dict())
    for step in range(2):
        mask = upsample_mask(random_patch_mask(3, (4, 4), 0.5, generator=torch.Generator().manual_seed(step)), (8, 8))
        x = torch.randn(3, 6, 8, 8, requires_grad=True)
        g = torch.randn(3, 6, 8, 8)
        y = sparse_batch_norm(ours, x, mask, sync=False)
        rows = x.permute(0, 2, 3, 1)[mask[:, 0]]
        y_ref = ref(rows)
        torch.testing.assert_close(y.permute(0, 2, 3, 1)[mask[:, 0]], y_ref)
        assert (y.permute(0, 2, 3, 1)[~mask[:, 0]] == 0).all()
        got = torch.autograd.grad(y, [x, ours.weight, ours.bias], g)
        want = torch.autograd.grad(y_ref, [x, ref.weight, ref.bias], g.permute(0, 2, 3, 1)[mask[:, 0]])
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(ours, name), getattr(ref, name))


def test_sparse_batch_norm_keeps_channels_last():
    """A channels-last map stays channels-last through sparse BN: an NCHW output there made
    every following convolution reorder its input (SparK's step: 0.78 -> about 1.0 of its ceiling)."""
    from convssl.sparse import sparse_batch_norm

    x = torch.randn(2, 8, 8, 8).contiguous(memory_format=torch.channels_last)
    mask = upsample_mask(random_patch_mask(2, (2, 2), 0.5, generator=torch.Generator().manual_seed(0)), (8, 8))
    y = sparse_batch_norm(nn.BatchNorm2d(8), x, mask, sync=False)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert sparse_batch_norm(nn.BatchNorm2d(8), x.contiguous(), mask, sync=False).is_contiguous()
