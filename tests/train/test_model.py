"""Tests for scar_train.model: small size, small inputs (the file runs in seconds on 2 cores)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from scar_train.model import (
    NUM_CLASSES,
    NUM_KEYPOINTS,
    ScarNet,
    ScarNetConfig,
    ScarNetOutput,
    build_model,
    count_parameters,
)
from scar_train.model.at import (
    adaptive_avg_pool_matrix,
    dynamic_depthwise_conv,
    keypoint_weight_map,
    modulated_attention,
)
from scar_train.model.heads import soft_argmax_2d


def _model(**overrides) -> ScarNet:
    torch.manual_seed(0)
    return build_model(ScarNetConfig.from_size("small", **overrides))


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny tensors: one thread avoids OpenMP spin contention on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model() -> ScarNet:
    return _model()


# --------------------------------------------------------------------------- shapes and inputs


@pytest.mark.parametrize("n,h,w", [(1, 64, 64), (3, 64, 96), (1, 128, 64), (3, 96, 128)])
@pytest.mark.parametrize("train", [False, True])
def test_output_shapes(model: ScarNet, n: int, h: int, w: int, train: bool) -> None:
    model.train(train)
    with torch.no_grad():
        out = model(torch.randn(n, 1, h, w))
    assert isinstance(out, ScarNetOutput)
    assert out.logits.shape == (n, NUM_CLASSES, h, w)
    assert out.heatmaps.shape == (n, NUM_KEYPOINTS, h // 4, w // 4)
    assert out.keypoints.shape == (n, NUM_KEYPOINTS, 2)
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in out)
    # soft-argmax key-points are expectations over the stride-4 cell centres
    assert (out.keypoints[..., 0] >= 1.5).all() and (out.keypoints[..., 0] <= h - 2.5).all()
    assert (out.keypoints[..., 1] >= 1.5).all() and (out.keypoints[..., 1] <= w - 2.5).all()


@pytest.mark.parametrize("shape", [(1, 1, 64, 72), (1, 1, 40, 64), (2, 1, 100, 100)])
def test_size_not_divisible_by_16_raises(model: ScarNet, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="divisible by 16"):
        model(torch.randn(*shape))


def test_wrong_channel_count_raises(model: ScarNet) -> None:
    with pytest.raises(ValueError, match="expects"):
        model(torch.randn(1, 2, 64, 64))


# --------------------------------------------------------------------------- gradients, gammas


def test_gammas_start_at_zero(model: ScarNet) -> None:
    gammas = {n: p for n, p in model.named_parameters() if "gamma" in n}
    assert set(gammas) == {"mcca.gamma1", "mcca.gamma2", "mcca.gamma3"}
    for p in gammas.values():
        assert isinstance(p, torch.nn.Parameter) and p.requires_grad
        assert torch.equal(p.detach(), torch.zeros_like(p))


def _backward(model: ScarNet) -> None:
    torch.manual_seed(1)
    model.train()
    model.zero_grad(set_to_none=True)
    x = torch.randn(2, 1, 64, 64)
    out = model(x)
    loss = (out.logits * torch.randn_like(out.logits)).sum() + (
        out.heatmaps * torch.randn_like(out.heatmaps)
    ).sum()
    loss.backward()


def _has_grad(p: torch.Tensor) -> bool:
    return p.grad is not None and bool(p.grad.abs().sum() > 0)


def test_every_parameter_gets_a_gradient() -> None:
    model = _model()
    # At initialisation (gammas = 0) the gammas themselves get a gradient, so one optimiser step
    # opens the attention paths; the parameters behind the gammas do not get one yet.
    _backward(model)
    for name in ("gamma1", "gamma2", "gamma3"):
        assert _has_grad(getattr(model.mcca, name)), name
    assert not _has_grad(model.mcca.inter.query.weight)
    assert not _has_grad(model.mcca.intra.value.weight)
    # With non-zero gammas (as after that first step) EVERY parameter must receive a gradient
    # from a loss on logits + heatmaps: both encoders, MCCA, AT, the adapter, head, decoder.
    with torch.no_grad():
        for name in ("gamma1", "gamma2", "gamma3"):
            getattr(model.mcca, name).fill_(0.5)
    _backward(model)
    missing = [n for n, p in model.named_parameters() if not _has_grad(p)]
    assert not missing, f"parameters without gradient: {missing}"
    for prefix in ("seg_encoder.", "rec_encoder.", "mcca.", "at.", "adapter."):
        assert any(n.startswith(prefix) for n, _ in model.named_parameters()), prefix


def test_keypoint_gradient_reaches_recognition_encoder_through_at() -> None:
    # The segmentation loss alone reaches the recognition path via MCCA (after gammas open) and
    # via the key-points (weight map) and the adapter.
    model = _model(use_mcca=False)
    model.train()
    out = model(torch.randn(2, 1, 64, 64))
    (out.logits * torch.randn_like(out.logits)).sum().backward()
    assert _has_grad(model.heatmap_head.out.weight)  # only via key-points -> weight map
    assert _has_grad(model.rec_encoder.stem[0][0].weight)


# --------------------------------------------------------------------------- ablation switches


def test_ablation_switches_remove_modules() -> None:
    counts = {}
    for mcca in (True, False):
        for at in (True, False):
            m = _model(use_mcca=mcca, use_at=at)
            assert (m.mcca is not None) == mcca
            assert all((getattr(m, n) is not None) == at for n in ("at", "adapter"))
            assert m.rec_encoder is not None and m.heatmap_head is not None
            out = m.eval()(torch.randn(1, 1, 64, 64))
            assert out.keypoints.shape == (1, NUM_KEYPOINTS, 2)
            counts[mcca, at] = count_parameters(m)
    assert counts[True, True] > counts[False, True] > counts[False, False]
    assert counts[True, True] > counts[True, False] > counts[False, False]


def test_small_size_budget() -> None:
    n = count_parameters(_model())
    assert 2_000_000 <= n <= 5_000_000, n


# --------------------------------------------------------------------------- soft-argmax


@pytest.mark.parametrize("peak", [(10.0, 20.0), (37.3, 81.6), (120.9, 3.2), (2.0, 125.0)])
def test_soft_argmax_recovers_peak(peak: tuple[float, float]) -> None:
    h, w, stride, sigma = 32, 32, 4, 6.0  # stride-4 map of a 128 x 128 input
    centres_r = torch.arange(h) * stride + 1.5
    centres_c = torch.arange(w) * stride + 1.5
    d2 = (centres_r[:, None] - peak[0]) ** 2 + (centres_c[None, :] - peak[1]) ** 2
    heat = torch.exp(-d2 / (2 * sigma**2))[None, None]  # peak 1, like the training targets
    heat = torch.cat([heat, heat.flip(-1)], dim=1)  # second key-point mirrored in col
    est = soft_argmax_2d(heat, beta=20.0, stride=stride)
    assert est.shape == (1, 2, 2)
    # within 1 input pixel, also near the border (the Gaussian is cut there)
    assert abs(est[0, 0, 0].item() - peak[0]) < 1.0
    assert abs(est[0, 0, 1].item() - peak[1]) < 1.0
    assert abs(est[0, 1, 0].item() - peak[0]) < 1.0
    assert abs(est[0, 1, 1].item() - (w * stride - 1 - peak[1])) < 1.0


def test_soft_argmax_interior_is_subpixel_and_non_square() -> None:
    h, w = 24, 40
    peak = torch.tensor([[45.7, 101.2], [60.0, 20.5]])
    r = torch.arange(h) * 4 + 1.5
    c = torch.arange(w) * 4 + 1.5
    dr = r[None, :, None] - peak[:, 0, None, None]
    dc = c[None, None, :] - peak[:, 1, None, None]
    d2 = dr**2 + dc**2
    heat = torch.exp(-d2 / (2 * 8.0**2))[None]  # (1, 2, h, w)
    est = soft_argmax_2d(heat, beta=20.0, stride=4)
    assert torch.allclose(est[0], peak, atol=0.25)


# --------------------------------------------------------------------------- AT building blocks


def test_dynamic_kernel_differs_per_sample(model: ScarNet) -> None:
    model.eval()
    torch.manual_seed(2)
    x = torch.stack([torch.randn(1, 64, 64), torch.rand(1, 64, 64) * 3.0])
    with torch.no_grad():
        alpha = model.adapter(model.rec_encoder(x).low)
        alpha_0 = model.adapter(model.rec_encoder(x[:1]).low)
    assert alpha.shape == (2, 128, 7, 7)
    assert not torch.allclose(alpha[0], alpha[1], atol=1e-4)
    assert torch.allclose(alpha[0], alpha_0[0], atol=1e-5)  # per sample: batch-independent


@pytest.mark.parametrize("k", [3, 7])
def test_dynamic_depthwise_conv_equals_grouped_conv(k: int) -> None:
    torch.manual_seed(3)
    n, c, h, w = 3, 5, 9, 12
    x = torch.randn(n, c, h, w)
    kernel = torch.randn(n, c, k, k)
    out = dynamic_depthwise_conv(x, kernel)
    ref = torch.cat(
        [F.conv2d(x[i : i + 1], kernel[i][:, None], padding=k // 2, groups=c) for i in range(n)]
    )
    assert out.shape == x.shape
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_dynamic_depthwise_conv_gradients() -> None:
    """The hand-written backward matches autograd through per-sample F.conv2d (and gradcheck)."""
    torch.manual_seed(7)
    x = torch.randn(2, 2, 4, 5, dtype=torch.double, requires_grad=True)
    kernel = torch.randn(2, 2, 3, 3, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(dynamic_depthwise_conv, (x, kernel))
    x = torch.randn(3, 4, 10, 8, requires_grad=True)
    kernel = torch.randn(3, 4, 7, 7, requires_grad=True)
    grad = torch.randn(3, 4, 10, 8)
    gx, gk = torch.autograd.grad(dynamic_depthwise_conv(x, kernel), (x, kernel), grad)
    ref = torch.cat(
        [F.conv2d(x[i : i + 1], kernel[i][:, None], padding=3, groups=4) for i in range(3)]
    )
    rx, rk = torch.autograd.grad(ref, (x, kernel), grad)
    torch.testing.assert_close(gx, rx, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(gk, rk, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="odd"):
        dynamic_depthwise_conv(x, kernel[..., :6, :6])


@pytest.mark.parametrize("size", [(7, 7), (14, 21), (16, 16), (10, 13), (5, 9), (64, 48), (3, 1)])
def test_adaptive_avg_pool_matrix_equals_torch(size: tuple[int, int]) -> None:
    torch.manual_seed(4)
    x = torch.randn(2, 3, *size)
    torch.testing.assert_close(
        adaptive_avg_pool_matrix(x, 7), F.adaptive_avg_pool2d(x, 7), atol=1e-5, rtol=1e-5
    )


def test_modulated_attention_is_multiply_and_renormalise() -> None:
    torch.manual_seed(5)
    n, heads, lq, lk, d, dv = 2, 2, 6, 5, 4, 3
    q, k = torch.randn(n, heads, lq, d), torch.randn(n, heads, lk, d)
    v = torch.randn(n, heads, lk, dv)
    weights = torch.rand(n, lk)
    weights[0, 2] = 0.0  # a key far from every key-point
    eps = 1e-3
    out = modulated_attention(q, k, v, weights, eps)
    attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)
    attn = attn * (weights + eps)[:, None, None, :]
    attn = attn / attn.sum(dim=-1, keepdim=True)
    torch.testing.assert_close(out, attn @ v, atol=1e-5, rtol=1e-5)


def test_adaptive_transformer_uses_pooled_weight_map(model: ScarNet) -> None:
    """The AT module equals an explicit re-implementation with multiply-and-renormalise."""
    at = model.at.eval()
    torch.manual_seed(6)
    x = torch.randn(2, 128, 8, 12)  # stride-4 map of a 32 x 48 input
    wmap = torch.rand(2, 1, 8, 12)
    with torch.no_grad():
        out = at(x, wmap)
        pooled = F.avg_pool2d(x, 4)
        heads = at.heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.flatten(2).reshape(2, heads, t.shape[1] // heads, -1).transpose(-1, -2)

        q, k, v = split(at.query(x)), split(at.key(pooled)), split(at.value(pooled))
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
        key_w = F.avg_pool2d(wmap, 4).flatten(1)[:, None, None, :] + at.attention.eps
        attn = attn * key_w
        attn = attn / attn.sum(-1, keepdim=True)
        ref = at.proj((attn @ v).transpose(-1, -2).reshape(2, -1, 8, 12))
        changed = at(x, torch.ones_like(wmap))
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(out, changed, atol=1e-4)  # the modulation has an effect


def test_keypoint_weight_map() -> None:
    like = torch.zeros(1, 1, 16, 16)
    kps = torch.tensor([[[9.5, 21.5], [41.5, 41.5]]])  # cell centres (2, 5) and (10, 10)
    wmap = keypoint_weight_map(kps, like, stride=4, sigma=8.0)
    assert wmap.shape == (1, 1, 16, 16)
    assert wmap[0, 0, 2, 5] == pytest.approx(1.0) and wmap[0, 0, 10, 10] == pytest.approx(1.0)
    # one cell (4 px) from the second point: exp(-16 / 128); the max over key-points is taken
    assert wmap[0, 0, 10, 11] == pytest.approx(math.exp(-16 / 128), rel=1e-5)
    assert wmap.max() <= 1.0 and wmap[0, 0, 15, 0] < 1e-3


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize("size", ["small", "paper"])
def test_config_round_trip(size: str) -> None:
    cfg = ScarNetConfig.from_size(size, use_mcca=False, use_at=True)
    data = json.loads(json.dumps(cfg.to_dict()))
    assert ScarNetConfig.from_dict(data) == cfg
    assert data["size"] == size and data["use_mcca"] is False


def test_unknown_size_and_field_raise() -> None:
    with pytest.raises(ValueError, match="small.*paper|paper.*small"):
        ScarNetConfig.from_size("huge")
    with pytest.raises(ValueError, match="unknown ScarNetConfig fields"):
        ScarNetConfig.from_dict({**ScarNetConfig().to_dict(), "bogus": 1})
    with pytest.raises(ValueError, match="128"):
        ScarNetConfig.from_size("small", low_channels=(48, 64, 96))


def test_build_model_and_paper_size() -> None:
    cfg = ScarNetConfig.from_size("paper")
    assert cfg.aspp_rates == (6, 12, 18)
    with torch.device("meta"):  # no memory, no init time: only the structure and the count
        paper = build_model(cfg)
    assert isinstance(paper, ScarNet)
    assert count_parameters(paper) > 20_000_000
    assert count_parameters(paper) > 10 * count_parameters(_model())


# --------------------------------------------------------------------------- boundary refinement


def test_boundary_refinement_starts_as_the_coarse_logits_and_learns() -> None:
    """The stride-2 head's correction starts at zero: its logits are then exactly the stride-4
    logits upsampled in two bilinear steps; a loss still sends gradients into the correction
    and the stem, so training moves it off zero."""
    model = _model(fine_refinement=True).eval()
    assert model.decoder.refine is not None and _model().decoder.refine is None
    x = torch.randn(2, 1, 64, 96)
    feats: dict[str, torch.Tensor] = {}
    hooks = [model.decoder.classifier.register_forward_hook(
                 lambda m, i, o: feats.update(s4=o.detach())),
             model.seg_encoder.stem.register_forward_hook(
                 lambda m, i, o: feats.update(s2=o.detach()))]
    with torch.no_grad():
        logits = model(x).logits
    for h in hooks:
        h.remove()
    assert feats["s2"].shape[-2:] == (32, 48) and feats["s4"].shape[-2:] == (16, 24)
    two_step = F.interpolate(F.interpolate(feats["s4"], size=(32, 48), mode="bilinear"),
                             size=(64, 96), mode="bilinear")
    torch.testing.assert_close(logits, two_step)
    model.train()
    out = model(x)
    (out.logits * torch.randn_like(out.logits)).sum().backward()
    assert _has_grad(model.decoder.refine.correction.weight)
    assert _has_grad(model.seg_encoder.stem[1][0].weight)


def test_fine_tuning_adds_the_refinement_head_to_an_older_checkpoint(tmp_path) -> None:
    """--init from a checkpoint without the head: every shared weight copied, the head keeps
    its zero start; any other missing weight is still refused."""
    from scar_runtime.core.errors import ConfigError
    from scar_train.checkpoint import save_checkpoint
    from scar_train.train import init_from_checkpoint

    old = _model()
    path = tmp_path / "old.pt"

    def save(state):
        save_checkpoint(path, model_state=state, model_config=old.config.to_dict(),
                        train_config={}, preprocess={}, data_index_sha256="", step=0, epoch=0)

    save(old.state_dict())
    new = _model(fine_refinement=True)
    torch.nn.init.normal_(new.seg_encoder.stem[0][0].weight)
    init_from_checkpoint(new, str(path))
    own, src = new.state_dict(), old.state_dict()
    assert all(torch.equal(own[k], v) for k, v in src.items())
    assert sorted(set(own) - set(src)) and all(k.startswith("decoder.refine.")
                                               for k in set(own) - set(src))
    assert not new.decoder.refine.correction.weight.any()
    state = {k: v for k, v in src.items() if not k.startswith("decoder.classifier.")}
    save(state)
    with pytest.raises(ConfigError, match="decoder.classifier"):
        init_from_checkpoint(_model(), str(path))
