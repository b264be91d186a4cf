"""The parts researchers compare (issue 15): norm layers, Peri-LN, feed-forwards, GQA/MQA, QK-norm,
soft-capped logits and z-loss, flex and flash-v4 attention, Muon and WSD. Each against a reference."""

import math
import sys
import types
import warnings
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from b6lab import parts, registry
from b6lab.attention import AttentionContext, Documents, attention_mask
from b6lab.config import load_config
from b6lab.errors import ConfigError
from b6lab.flex_attention import block_mask
from b6lab.lm_loss import lm_loss
from b6lab.model import NORM_LAYERS, KVCache
from b6lab.plugins import attention
from b6lab.plugins.optimizers import MuonAdamW, is_hidden_matrix

CPU32 = AttentionContext(torch.device("cpu"), torch.float32, head_dim=16)
BATCH = torch.randint(0, 256, (4, 65), generator=torch.Generator().manual_seed(1))


def build(*overrides, attention="sdpa"):
    cfg = load_config(preset="tiny", overrides=[f"model.attention={attention}", "model.vocab_size=256", *overrides])
    torch.manual_seed(0)
    model, _ = parts.build_model(cfg.model, replace(CPU32, head_dim=cfg.model.head_dim), z_loss=cfg.train.z_loss)
    return cfg, model


def train_losses(*overrides, steps=2):
    cfg, model = build(*overrides)
    optimizer = parts.build_optimizer(cfg.optim, model)
    schedule = parts.build_schedule(cfg.schedule, steps)
    base = [group["lr"] for group in optimizer.param_groups]
    losses = []
    for step in range(steps):
        for group, lr in zip(optimizer.param_groups, base):
            group["lr"] = lr * schedule(step)
        loss = model.train()(BATCH[:2, :32], BATCH[:2, 1:33])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def test_the_b6_default_trains_to_the_same_losses_as_before_these_parts():
    """Pre-LN, LayerNorm, GELU, multi-head attention, Lion (cosine is 1.0 and below over 3 steps
    either way): the losses recorded on main before issue 15, with the same seed and batch."""
    cfg, model = build()
    optimizer = parts.build_optimizer(cfg.optim, model)
    losses = []
    for _ in range(3):
        loss = model.train()(BATCH[:, :-1], BATCH[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses == pytest.approx([5.573308944702148, 5.5020294189453125, 5.433310031890869], abs=1e-6)


@pytest.mark.parametrize("overrides", [
    ["model.norm_layer=rmsnorm"], ["model.norm_layer=layernorm-nobias", "model.norm=post"],
    ["model.norm=peri"], ["model.norm=deepnorm", "model.norm_layer=rmsnorm", "model.feedforward=swiglu"],
    ["model.feedforward=swiglu"], ["model.feedforward=relu2"], ["model.n_kv_heads=1"], ["model.qk_norm=true"],
    ["model.logit_softcap=15", "train.z_loss=1e-3"], ["optim.name=muon"], ["schedule.name=wsd"],
], ids=lambda o: ",".join(o))
def test_each_new_choice_trains(overrides):
    losses = train_losses(*overrides)
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]


def test_every_norm_of_the_model_is_of_norm_layer():
    _, model = build("model.norm_layer=rmsnorm", "model.norm=peri", "model.qk_norm=true")
    norms = [m for m in model.modules() if isinstance(m, (torch.nn.RMSNorm, torch.nn.LayerNorm))]
    assert norms and all(isinstance(m, torch.nn.RMSNorm) for m in norms)
    # peri: in and out of both sublayers per block, q and k, the embeddings and the final norm
    assert len(norms) == 2 * (4 + 2) + 2
    _, model = build("model.norm_layer=layernorm-nobias")
    assert all(m.bias is None for m in model.modules() if isinstance(m, torch.nn.LayerNorm))


def test_config_norm_layers_are_the_models():
    from typing import get_args, get_type_hints

    from b6lab.config import ModelConfig

    assert set(get_args(get_type_hints(ModelConfig)["norm_layer"])) == set(NORM_LAYERS)


def test_rmsnorm_is_torchs_rms_norm():
    norm = NORM_LAYERS["rmsnorm"](16)
    torch.nn.init.uniform_(norm.weight, 0.5, 1.5)
    x = torch.randn(3, 5, 16)
    torch.testing.assert_close(norm(x), F.rms_norm(x, (16,), norm.weight, eps=1e-5))
    manual = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight
    torch.testing.assert_close(norm(x), manual)


def test_peri_ln_normalises_embeddings_sublayer_inputs_and_outputs():
    wiring = registry.get("norm", "peri").build(8, 2)
    assert wiring.embedding_norm and wiring.final_norm is True
    for p in wiring.parameters():
        torch.nn.init.uniform_(p, 0.5, 1.5)
    attn, ffn = (lambda h: torch.tanh(h) * 2.0), (lambda h: h.pow(2) - 1.0)
    x = torch.randn(3, 5, 8)
    h = x + wiring.ln_attn_out(attn(wiring.ln_attn_in(x)))
    torch.testing.assert_close(wiring(x, attn, ffn), h + wiring.ln_ffn_out(ffn(wiring.ln_ffn_in(h))))


def test_a_placement_may_hand_the_model_its_final_norm():
    class OwnFinal(torch.nn.Module):
        def __init__(self, d_model, n_layers):
            super().__init__()
            self.final_norm = torch.nn.LayerNorm(d_model, elementwise_affine=False)

        def forward(self, x, attn, ffn):
            return x + ffn(x + attn(x))

    plugin = types.SimpleNamespace(b6lab_register_norm=lambda register: register("own-final", OwnFinal))
    import b6lab

    plugin.b6lab_register_norm = b6lab.hookimpl(plugin.b6lab_register_norm)
    registry.register_plugin(plugin, "test-own-final", "test")
    try:
        _, model = build("model.norm=own-final")
        assert isinstance(model.final_norm, torch.nn.LayerNorm) and not model.final_norm.elementwise_affine
        assert not any(hasattr(block.wiring, "final_norm") for block in model.blocks)  # one kept, no unused copies
        with pytest.raises(ConfigError, match="norm_layer"):
            build("model.norm=own-final", "model.norm_layer=rmsnorm")  # it builds its own norms
    finally:
        registry.unregister_plugin("test-own-final")


def test_swiglu_width_follows_the_papers():
    swiglu = registry.get("feedforward", "swiglu")
    dense = registry.get("feedforward", "gelu").build(96, None, bias=False)
    params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert dense.up.out_features == 4 * 96
    default = swiglu.build(96, None, bias=False)  # 2/3 * 4 * 96 = 256: the dense MLP's parameter count
    assert default.gate.out_features == 256 and params(default) == params(dense)
    assert swiglu.build(96, 300, bias=False).up.out_features == 300  # d_ff as given: the gated width
    assert swiglu.build(96, 384, bias=False, ff_match_dense=True).up.out_features == 256
    x = torch.randn(2, 3, 96)
    torch.testing.assert_close(default(x), default.down(F.silu(default.gate(x)) * default.up(x)))
    relu2 = registry.get("feedforward", "relu2").build(96, None, bias=True)
    torch.testing.assert_close(relu2(x), relu2.down(torch.relu(relu2.up(x)) ** 2))


def test_gqa_with_as_many_kv_heads_as_heads_is_multi_head_attention():
    _, mha = build("model.n_heads=4")
    _, gqa = build("model.n_heads=4", "model.n_kv_heads=4")
    assert mha.state_dict().keys() == gqa.state_dict().keys()
    for a, b in zip(mha.state_dict().values(), gqa.state_dict().values()):
        assert torch.equal(a, b)
    with torch.no_grad():
        assert torch.equal(mha(BATCH), gqa(BATCH))


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_grouped_query_attention_equals_repeating_the_kv_heads(backend):
    """GQA is MHA whose key/value heads are shared by groups of query heads: copying each kv head's
    weights into its group gives an MHA model with the same outputs."""
    _, gqa = build("model.n_heads=4", "model.n_kv_heads=2", attention=backend)
    _, mha = build("model.n_heads=4", attention=backend)
    state = gqa.state_dict()
    for key, value in state.items():
        if key.endswith("attn.qkv.weight"):
            q, k, v = value.split([64, 32, 32])
            value = torch.cat([q, k.view(2, 16, 64).repeat_interleave(2, 0).reshape(64, 64),
                               v.view(2, 16, 64).repeat_interleave(2, 0).reshape(64, 64)])
        mha.state_dict()[key].copy_(value)
    with torch.no_grad():
        torch.testing.assert_close(gqa(BATCH), mha(BATCH), atol=1e-5, rtol=1e-5)
    assert gqa.blocks[0].attn.repeat_kv == (backend == "eager")  # sdpa takes grouped heads itself


def test_kv_cache_holds_n_kv_heads_and_decodes_as_the_full_forward():
    _, model = build("model.n_heads=4", "model.n_kv_heads=1", "model.qk_norm=true")
    model.eval()
    idx = BATCH[:1, :20]
    cache = KVCache(len(model.blocks))
    with torch.no_grad():
        full = model(idx)
        steps = [model(idx[:, :12], cache=cache)[:, -1]]
        for t in range(12, 20):
            steps.append(model(idx[:, t : t + 1], cache=cache)[:, -1])
    assert cache.layers[0][0].shape == (1, 1, 20, 16)  # (batch, n_kv_heads, tokens, head_dim)
    torch.testing.assert_close(torch.stack(steps[1:], 1), full[:, 12:], atol=1e-4, rtol=1e-4)


def test_bad_n_kv_heads_is_a_config_error():
    with pytest.raises(ConfigError, match="n_kv_heads"):
        load_config(preset="tiny", overrides=["model.n_heads=4", "model.n_kv_heads=3"])


def head_inputs():
    torch.manual_seed(0)
    h, weight = torch.randn(2, 50, 32), torch.randn(300, 32) * 0.5
    targets = torch.randint(0, 300, (2, 50))
    targets[0, :5] = -1
    return h, weight, targets


def reference_loss(h, weight, targets, softcap, z_loss):
    logits = (h @ weight.t()).float()
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)
    valid = targets != -1
    lse = torch.logsumexp(logits, -1)
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1) + z_loss * lse[valid].square().mean()


@pytest.mark.parametrize("softcap, z_loss", [(None, 1e-2), (3.0, 0.0), (3.0, 1e-2)])
@pytest.mark.parametrize("chunk_elements", [2**26, 2000])  # one chunk, and many
def test_softcap_and_z_loss_in_the_fused_loss_match_plain_pytorch(softcap, z_loss, chunk_elements, monkeypatch):
    from b6lab import lm_loss as module

    monkeypatch.setattr(module, "LOSS_CHUNK_ELEMENTS", chunk_elements)
    h, weight, targets = head_inputs()
    results = []
    for fn in (lm_loss, reference_loss):
        h_, w_ = h.clone().requires_grad_(), weight.clone().requires_grad_()
        loss = fn(h_, w_, targets, softcap, z_loss)
        loss.backward()
        results.append((loss.detach(), h_.grad, w_.grad))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_z_loss_applies_in_training_only_and_softcap_bounds_the_logits():
    _, plain = build()
    _, with_z = build("train.z_loss=0.1", "model.logit_softcap=2.0")
    with torch.no_grad():
        assert with_z.eval()(BATCH).abs().max() < 2.0
        eval_loss = with_z.eval()(BATCH[:, :-1], BATCH[:, 1:])
        train_loss = with_z.train()(BATCH[:, :-1], BATCH[:, 1:])
    assert train_loss > eval_loss  # z * mean(log Z^2) on top in training
    logits = with_z.eval()(BATCH[:, :-1]).detach()
    torch.testing.assert_close(eval_loss, F.cross_entropy(logits.flatten(0, 1), BATCH[:, 1:].flatten()))


MASKS = {
    "causal": dict(causal=True),
    "window": dict(causal=True, window=5),
    "documents": dict(causal=True, docs=True),
    "window+documents": dict(causal=True, window=4, docs=True),
}


@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_flex_matches_eager_with_each_mask(mask, kv_heads):
    spec = dict(MASKS[mask])
    window = spec.pop("window", 0)
    flex = attention.flex(CPU32, window=window, flex_compile=False)  # torch 2.13 compiles flex for CPU, but slowly
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 40, 16), torch.randn(2, kv_heads, 40, 16), torch.randn(2, kv_heads, 40, 16)
    docs = Documents(torch.tensor([[0] * 10 + [1] * 25 + [2] * 5, [0] * 40])) if spec.pop("docs", False) else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "called without torch.compile": meant
        got = flex(q, k, v, causal=True, docs=docs, dropout_p=0.0, scale=0.25)
    k_, v_ = k.repeat_interleave(4 // kv_heads, 1), v.repeat_interleave(4 // kv_heads, 1)
    scores = (q @ k_.transpose(-2, -1)) * 0.25
    keep = torch.ones(40, 40, dtype=torch.bool).tril()
    if window:
        keep &= (torch.arange(40)[:, None] - torch.arange(40)[None, :]) < window
    if docs is not None:
        keep = keep & docs.mask()
    want = torch.softmax(scores.masked_fill(~keep, float("-inf")), -1) @ v_
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    if not window:
        eager = attention.eager(CPU32)(q, k_, v_, causal=True, docs=docs, dropout_p=0.0, scale=0.25)
        torch.testing.assert_close(got, eager, atol=1e-5, rtol=1e-5)


def test_flex_decodes_one_token_against_a_longer_cache():
    flex = attention.flex(CPU32, flex_compile=False)
    q, k, v = torch.randn(1, 4, 1, 16), torch.randn(1, 4, 30, 16), torch.randn(1, 4, 30, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = flex(q, k, v, causal=False, docs=None, dropout_p=0.0, scale=0.25)
    torch.testing.assert_close(got, attention.eager(CPU32)(q, k, v, causal=False, scale=0.25), atol=1e-5, rtol=1e-5)


def test_flex_and_flash_v4_say_why_they_cannot_run_here():
    assert "CUDA" in registry.get("attention", "flex").why_unavailable(device="cpu", dtype=torch.float32)
    reason = registry.get("attention", "flash-v4").why_unavailable(device="cpu", dtype=torch.bfloat16)
    assert "not installed" in reason or "CUDA" in reason


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_torch_still_refuses_flex_backward_on_a_cpu(compiled):
    """Why flex is refused on a CPU: torch's own check (2.13), uncompiled and under torch.compile.
    When a torch lifts it this fails: then let flex_unavailable allow a CPU and train flex there."""
    from torch.nn.attention.flex_attention import flex_attention

    mask = block_mask(32, 32, causal=True, window=0, docs=None, device="cpu")
    q = torch.randn(1, 2, 32, 16, requires_grad=True)
    run = torch.compile(flex_attention, dynamic=False) if compiled else flex_attention
    with pytest.raises(NotImplementedError, match="does not support backward on CPU"):
        run(q, q, q, block_mask=mask)
    assert "refuses FlexAttention's backward pass on a CPU" in registry.get("attention", "flex").why_unavailable(
        device="cpu", dtype=torch.float32)


def test_flash_v4_wrapper_matches_eager_on_a_stand_in(monkeypatch):
    """flash_attn.cute stood in for by reference math (its documented call: (B, S, H, D) in half
    precision, GQA by fewer kv heads, an (out, lse) pair back); checks b6lab's side of the call."""
    from tests.test_flash_wrappers import padded, varlen

    def cute_func(q, k, v, softmax_scale=None, causal=False):
        k, v = (t.repeat_interleave(q.size(2) // t.size(2), 2) for t in (k, v))
        return padded(q, k, v, 0.0, softmax_scale, causal), None

    def cute_varlen(q, k, v, cu_q, cu_k, max_q, max_k, softmax_scale=None, causal=False):
        k, v = (t.repeat_interleave(q.size(1) // t.size(1), 1) for t in (k, v))
        return varlen(q, k, v, cu_q, cu_k, max_q, max_k, 0.0, softmax_scale, causal), None

    package = types.ModuleType("flash_attn")
    cute = types.ModuleType("flash_attn.cute")
    cute.flash_attn_func, cute.flash_attn_varlen_func = cute_func, cute_varlen
    monkeypatch.setitem(sys.modules, "flash_attn", package)
    monkeypatch.setitem(sys.modules, "flash_attn.cute", cute)
    context = AttentionContext(torch.device("cpu"), torch.float32, head_dim=8)
    backend = attention.flash_v4(context)
    assert backend.grouped_kv
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, 12, 8), torch.randn(2, 3, 12, 8), torch.randn(2, 3, 12, 8)
    for docs in (None, Documents(torch.tensor([[0] * 5 + [1] * 4 + [2] * 3, [0] * 12]))):
        got = backend(q, k, v, causal=True, docs=docs, dropout_p=0.0, scale=8**-0.5)
        want = attention.eager(context)(q, k, v, causal=True, docs=docs, dropout_p=0.0, scale=8**-0.5)
        assert got.shape == q.shape and got.dtype == q.dtype
        torch.testing.assert_close(got, want, atol=3e-2, rtol=3e-2)


def test_auto_tries_flash_v4_first():
    assert attention.AUTO_ORDER[0] == "flash-v4"
    assert attention.choose(CPU32) == "sdpa"


def test_muon_routes_hidden_matrices_to_muon_and_the_rest_to_adamw():
    cfg, model = build("optim.name=muon", "model.tie_embeddings=false")
    optimizer = parts.build_optimizer(cfg.optim, model)
    assert isinstance(optimizer, MuonAdamW)
    muon_params = {id(p) for g in optimizer.muon.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in muon_params) == (p.dim() == 2 and name.startswith("blocks.")), name
    assert id(model.lm_head.weight) not in muon_params and id(model.tok_emb.weight) not in muon_params
    assert is_hidden_matrix("blocks.0.attn.qkv.weight", model.blocks[0].attn.qkv.weight)


def test_muon_steps_as_torch_muon_and_adamw_on_the_same_groups():
    cfg, model = build("optim.name=muon", "optim.lr=0.05", "optim.weight_decay=0.01")
    _, twin = build()
    twin.load_state_dict(model.state_dict())
    optimizer = parts.build_optimizer(cfg.optim, model)
    names = dict(twin.named_parameters())
    hidden = [p for n, p in names.items() if is_hidden_matrix(n, p)]
    rest_decay = [p for n, p in names.items() if not is_hidden_matrix(n, p) and p.dim() == 2]
    rest_no_decay = [p for n, p in names.items() if p.dim() < 2]
    muon = torch.optim.Muon(hidden, lr=0.05, weight_decay=0.01, momentum=0.95, nesterov=True, ns_steps=5, adjust_lr_fn="original")
    adamw = torch.optim.AdamW([{"params": rest_decay}, {"params": rest_no_decay, "weight_decay": 0.0}],
                              lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    for _ in range(2):
        for m, steps in ((model, [optimizer]), (twin, [muon, adamw])):
            m.train()(BATCH[:, :-1], BATCH[:, 1:]).backward()
            for opt in steps:
                opt.step()
                opt.zero_grad()
    for (name, a), b in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)


def test_muon_state_survives_a_checkpoint_round_trip():
    cfg, model = build("optim.name=muon")
    optimizer = parts.build_optimizer(cfg.optim, model)
    model.train()(BATCH[:, :-1], BATCH[:, 1:]).backward()
    optimizer.step()
    fresh = parts.build_optimizer(cfg.optim, model)
    fresh.load_state_dict(optimizer.state_dict())
    qkv = model.blocks[0].attn.qkv.weight
    assert torch.equal(fresh.muon.state[qkv]["momentum_buffer"], optimizer.state[qkv]["momentum_buffer"])
    assert fresh.adamw.state is fresh.state and fresh.muon.param_groups[0] is fresh.param_groups[0]


@pytest.mark.parametrize("shape", ["linear", "cosine", "sqrt"])
def test_wsd_warms_up_holds_then_decays_over_its_fraction(shape):
    multiplier = registry.get("scheduler", "wsd").build(100, warmup_steps=10, decay_ratio=0.2, decay_shape=shape)
    assert multiplier(0) == pytest.approx(0.1) and multiplier(9) == pytest.approx(1.0)
    assert all(multiplier(step) == 1.0 for step in range(10, 80))
    decay = [multiplier(step) for step in range(80, 100)]
    assert all(a > b for a, b in zip(decay, decay[1:])) and decay[-1] == pytest.approx(0.0)
    middle = {"linear": 0.5, "cosine": 0.5, "sqrt": 1 - math.sqrt(0.5)}[shape]
    assert multiplier(89) == pytest.approx(middle)


def test_wsd_refuses_an_unknown_shape():
    with pytest.raises(ConfigError, match="decay_shape"):
        registry.get("scheduler", "wsd").build(100, decay_shape="exp")


class LearnedTemperature(torch.nn.Module):
    """SDPA with a learned temperature per head (an attention backend with a parameter)."""

    def __init__(self, context, *, temperature_heads: int = 2):
        super().__init__()
        self.log_temperature = torch.nn.Parameter(torch.zeros(temperature_heads, 1, 1))

    def forward(self, q, k, v, *, causal, docs=None, dropout_p=0.0, scale):
        q = q * self.log_temperature.exp().to(q.dtype)
        mask = attention_mask(q.size(-2), k.size(-2), causal, docs, q.device)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)


def test_an_attention_backend_with_parameters_gets_its_own_per_block(register_plugin):
    register_plugin(types.SimpleNamespace(b6lab_register_attention=lambda register: register("temperature", LearnedTemperature)))
    cfg, model = build(attention="temperature")
    temperatures = [block.attn.backend.log_temperature for block in model.blocks]
    assert len({id(t) for t in temperatures}) == cfg.model.n_layers  # not one tied tensor
    assert len([name for name in model.state_dict() if name.endswith("log_temperature")]) == cfg.model.n_layers
    # Trained, each layer's temperature moves on its own.
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    model(BATCH[:, :-1], BATCH[:, 1:]).backward()
    optimizer.step()
    assert not torch.equal(temperatures[0], temperatures[1])
