"""Each norm placement wires its norms and residuals exactly as its definition says."""

import pytest
import torch

from b6lab import registry

D, L = 8, 4


def sublayers():
    # Two different, non-linear sublayers, so that a swapped or missing norm changes the result.
    attn = lambda h: torch.tanh(h) * 2.0  # noqa: E731
    ffn = lambda h: h.pow(2) - 1.0  # noqa: E731
    return attn, ffn


def placement(name):
    module = registry.get("norm", name).build(D, L)
    for p in module.parameters():  # non-trivial norm weights, so each norm is told apart
        torch.nn.init.uniform_(p, 0.5, 1.5)
    return module


x = torch.randn(3, 5, D)


def test_pre_ln():
    wiring, (attn, ffn) = placement("pre"), sublayers()
    h = x + attn(wiring.ln_attn(x))
    expected = h + ffn(wiring.ln_ffn(h))
    torch.testing.assert_close(wiring(x, attn, ffn), expected)
    assert wiring.final_norm


def test_post_ln_normalises_after_the_residual_add():
    wiring, (attn, ffn) = placement("post"), sublayers()
    h = wiring.ln_attn(x + attn(x))
    expected = wiring.ln_ffn(h + ffn(h))
    torch.testing.assert_close(wiring(x, attn, ffn), expected)
    assert not wiring.final_norm


def test_sandwich_normalises_sublayer_input_and_output():
    wiring, (attn, ffn) = placement("sandwich"), sublayers()
    h = x + wiring.ln_attn_out(attn(wiring.ln_attn_in(x)))
    expected = h + wiring.ln_ffn_out(ffn(wiring.ln_ffn_in(h)))
    torch.testing.assert_close(wiring(x, attn, ffn), expected)


def test_deepnorm_scales_the_residual_and_its_init():
    wiring, (attn, ffn) = placement("deepnorm"), sublayers()
    alpha = (2 * L) ** 0.25
    h = wiring.ln_attn(alpha * x + attn(x))
    expected = wiring.ln_ffn(alpha * h + ffn(h))
    torch.testing.assert_close(wiring(x, attn, ffn), expected)
    assert wiring.beta == pytest.approx((8 * L) ** -0.25)


def test_deepnorm_initialises_value_output_and_ffn_with_gain_beta():
    from b6lab import parts
    from b6lab.attention import AttentionContext
    from b6lab.config import load_config

    cfg = load_config(preset="tiny", overrides=["model.norm=deepnorm", "model.d_model=256", "model.n_heads=4", "model.n_layers=6", "model.d_ff=1024"])
    cfg.model.vocab_size = 256
    torch.manual_seed(0)
    model, _ = parts.build_model(cfg.model, AttentionContext(torch.device("cpu"), torch.float32, 64))
    beta = (8 * 6) ** -0.25
    block = model.blocks[0]
    xavier_std = lambda fan_in, fan_out, gain: gain * (2.0 / (fan_in + fan_out)) ** 0.5  # noqa: E731
    value = block.attn.qkv.weight[512:]
    assert value.std().item() == pytest.approx(xavier_std(256, 256, beta), rel=0.1)
    assert block.ffn.up.weight.std().item() == pytest.approx(xavier_std(256, 1024, beta), rel=0.1)
    assert block.attn.qkv.weight[:256].std().item() == pytest.approx(xavier_std(256, 256, 1.0), rel=0.1)
    assert isinstance(model.final_norm, torch.nn.Identity)  # the block already ends with a norm


@pytest.mark.parametrize("name, final", [("pre", True), ("sandwich", True), ("post", False), ("deepnorm", False)])
def test_only_placements_that_leave_the_stream_unnormalised_get_a_final_norm(name, final):
    assert registry.get("norm", name).factory.final_norm is final
