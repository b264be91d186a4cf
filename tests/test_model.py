"""The B6 model: attention backends agree, causality, RoPE, norm wiring, KV cache, checkpointing."""

from dataclasses import replace

import pytest
import torch

from b6lab import fast_paths, parts, registry
from b6lab.attention import AttentionContext, Documents
from b6lab.config import load_config
from b6lab import model as plain
from b6lab.model import KVCache, RotaryEmbedding
from b6lab.rope_kernel import apply_rope

CPU32 = AttentionContext(torch.device("cpu"), torch.float32, head_dim=16)


def tiny_model(attention="eager", norm="pre", **model_overrides):
    cfg = load_config(preset="tiny", overrides=[f"model.attention={attention}", f"model.norm={norm}"])
    model_cfg = replace(cfg.model, vocab_size=256, d_model=64, n_heads=4, **model_overrides)
    torch.manual_seed(0)
    model, _ = parts.build_model(model_cfg, replace(CPU32, head_dim=model_cfg.head_dim))
    return model.eval()


def backend(name, **options):
    return registry.get("attention", name).build(CPU32, **options)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("with_docs", [False, True])
def test_eager_and_sdpa_agree_in_fp32(causal, with_docs):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 33, 16) for _ in range(3))
    docs = Documents(torch.tensor([[0] * 10 + [1] * 20 + [2] * 3, [0] * 33])) if with_docs else None
    expected = backend("eager")(q, k, v, causal=causal, docs=docs, scale=0.25)
    actual = backend("sdpa")(q, k, v, causal=causal, docs=docs, scale=0.25)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("norm", ["pre", "post", "sandwich", "deepnorm"])
def test_whole_model_eager_and_sdpa_agree(norm):
    idx = torch.randint(0, 256, (2, 40))
    with torch.no_grad():
        expected, actual = tiny_model("eager", norm)(idx), tiny_model("sdpa", norm)(idx)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_changing_a_future_token_changes_no_earlier_output(attention):
    model = tiny_model(attention)
    idx = torch.randint(0, 256, (1, 32))
    changed = idx.clone()
    changed[0, 20] = (idx[0, 20] + 1) % 256
    with torch.no_grad():
        before, after = model(idx), model(changed)
    torch.testing.assert_close(before[:, :20], after[:, :20], atol=0, rtol=0)
    assert not torch.allclose(before[:, 20:], after[:, 20:])


def test_document_masking_isolates_packed_documents():
    eos = 0
    model = tiny_model("sdpa")
    first_doc = torch.tensor([[5, 6, 7, eos]])
    idx = torch.cat([first_doc, torch.tensor([[9, 10, 11, 12]])], dim=1)
    other = torch.cat([torch.tensor([[50, 60, 70, eos]]), torch.tensor([[9, 10, 11, 12]])], dim=1)
    with torch.no_grad():
        a = model(idx, docs=Documents.from_tokens(idx, eos))
        b = model(other, docs=Documents.from_tokens(other, eos))
        alone = model(torch.tensor([[9, 10, 11, 12]]))
    # The second document sees nothing of the first; RoPE is relative, so its outputs equal those of
    # the same tokens on their own.
    torch.testing.assert_close(a[:, 4:], b[:, 4:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a[:, 4:], alone, atol=1e-5, rtol=1e-5)


def test_documents_give_flash_varlen_offsets():
    docs = Documents.from_tokens(torch.tensor([[1, 2, 0, 3, 4, 0], [5, 0, 6, 7, 8, 9]]), eos_id=0)
    assert docs.doc_ids.tolist() == [[0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 1]]
    assert docs.cu_seqlens.tolist() == [0, 3, 6, 8, 12]
    assert docs.max_seqlen == 4


def test_rope_scores_depend_only_on_relative_position():
    rope = RotaryEmbedding(head_dim=16, max_seq_len=64, theta=10000.0)
    cos, sin = rope(64)
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(m, n):
        q_m = apply_rope(q, cos[m : m + 1], sin[m : m + 1])
        k_n = apply_rope(k, cos[n : n + 1], sin[n : n + 1])
        return (q_m * k_n).sum()

    for m, n, shift in [(5, 2, 7), (10, 10, 30), (3, 9, 40)]:
        torch.testing.assert_close(score(m, n), score(m + shift, n + shift), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(score(5, 2), score(5, 3))


def test_rope_cache_grows_on_demand_and_keeps_its_values():
    rope = RotaryEmbedding(head_dim=8, max_seq_len=16, theta=10000.0)
    short_cos, _ = rope(16)
    short_cos = short_cos.clone()
    cos, sin = rope(10, offset=30)  # past the cached 16 positions
    assert rope.cos.size(0) >= 40 and cos.shape == (10, 4)
    fresh = RotaryEmbedding(head_dim=8, max_seq_len=64, theta=10000.0)
    torch.testing.assert_close(cos, fresh.cos[30:40])
    torch.testing.assert_close(rope.cos[:16], short_cos)


def test_generating_past_max_seq_len_works():
    model = tiny_model("sdpa")
    idx = torch.randint(0, 256, (1, model.cfg.max_seq_len + 10))
    with torch.no_grad():
        assert model(idx).shape == (1, idx.size(1), 256)


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_kv_cache_decoding_equals_the_full_forward(attention):
    model = tiny_model(attention)
    idx = torch.randint(0, 256, (1, 12))
    with torch.no_grad():
        full = model(idx)
        cache = KVCache(len(model.blocks))
        steps = [model(idx[:, :8], cache=cache)]
        for t in range(8, 12):
            steps.append(model(idx[:, t : t + 1], cache=cache))
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    idx, targets = torch.randint(0, 256, (2, 32)), torch.randint(0, 256, (2, 32))
    results = []
    for checkpointing in (False, True):
        model = tiny_model("sdpa", gradient_checkpointing=checkpointing).train()
        loss = model(idx, targets)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_a, loss_b)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_lm_head_is_tied_and_init_is_gpt2_style():
    model = tiny_model("sdpa")
    assert model.lm_head.weight is model.tok_emb.weight
    n_layers = model.cfg.n_layers
    residual_std = model.blocks[0].attn.proj.weight.std().item()
    assert residual_std == pytest.approx(0.02 / (2 * n_layers) ** 0.5, rel=0.15)
    assert model.blocks[0].attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.1)
    untied = tiny_model("sdpa", tie_embeddings=False)
    assert untied.lm_head.weight is not untied.tok_emb.weight


def test_attention_bias_and_softmax_scale_are_configurable():
    model = tiny_model("eager", attn_bias=True, bias=True, softmax_scale=0.1)
    attn = model.blocks[0].attn
    assert attn.qkv.bias is not None and attn.proj.bias is not None and model.blocks[0].ffn.up.bias is not None
    assert attn.scale == 0.1
    assert tiny_model("eager").blocks[0].attn.qkv.bias is None


def test_cpu_bf16_attention_and_rope_compute_in_fp32_and_round_once():
    """On a CPU, bf16 attention and RoPE run on fp32 copies (torch's bf16 CPU kernels are slower there):
    the result is the fp32 computation on the same bf16 inputs, rounded to bf16 once, and so are the
    gradients."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 33, 16).bfloat16().requires_grad_() for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = backend("sdpa")(q, k, v, causal=True, scale=0.25)
    assert out.dtype == torch.bfloat16
    exact = [t.detach().float().requires_grad_() for t in (q, k, v)]
    expected = backend("eager")(*exact, causal=True, scale=0.25)
    torch.testing.assert_close(out.float(), expected.bfloat16().float(), atol=0, rtol=2**-7)
    grad = torch.randn_like(expected)
    out.backward(grad.bfloat16())
    expected.backward(grad.bfloat16().float())
    for got, want in zip((q, k, v), exact):
        torch.testing.assert_close(got.grad.float(), want.grad.bfloat16().float(), atol=1e-2, rtol=2**-6)

    rope = RotaryEmbedding(16, 33, 10000.0)
    x = torch.randn(2, 33, 4, 16).bfloat16().requires_grad_()
    rotated = apply_rope(x, *rope(33))
    x32 = x.detach().float().requires_grad_()
    cos, sin = (t.bfloat16().float() for t in rope(33))  # the tables as the bf16 route reads them
    expected = apply_rope(x32, cos, sin)
    assert rotated.dtype == torch.bfloat16
    assert torch.equal(rotated, expected.bfloat16())
    rotated.float().sum().backward()
    expected.sum().backward()
    assert torch.equal(x.grad, x32.grad.bfloat16())


def test_the_fast_paths_compute_what_the_plain_model_computes():
    """A run's model (fast_paths.py: the RoPE kernel, the fused loss) against model.py's plain
    PyTorch, the same weights: the same logits, loss and gradients."""
    cfg = replace(load_config(preset="tiny", overrides={"model.attention": "eager"}).model, vocab_size=256,
                  d_model=64, n_heads=4, logit_softcap=5.0)
    context = replace(CPU32, head_dim=cfg.head_dim)
    built = parts.build_attention(cfg, context)[0], parts.norm_placement(cfg, context), parts.feedforward(cfg, context)
    torch.manual_seed(0)
    fast = fast_paths.make_model(context, cfg, *built, parts.initialisation(cfg, context)).train()
    slow = plain.B6(cfg, *built, lambda model: None).train()
    slow.load_state_dict(fast.state_dict())
    assert slow.loss is plain.next_token_loss and slow.blocks[0].attn.rotate is plain.apply_rope
    fast.z_loss = slow.z_loss = 1e-2
    idx, targets = torch.randint(0, 256, (2, 40)), torch.randint(0, 256, (2, 40))
    targets[0, :5] = -1
    for model in (fast, slow):
        model(idx, targets).backward()
    torch.testing.assert_close(fast(idx, targets), slow(idx, targets), atol=1e-5, rtol=1e-5)
    for (name, a), b in zip(fast.named_parameters(), slow.parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4, msg=name)
    with torch.no_grad():
        torch.testing.assert_close(fast.eval()(idx), slow.eval()(idx), atol=1e-5, rtol=1e-5)
    x = torch.randn(2, 33, 4, 16)
    torch.testing.assert_close(apply_rope(x, *RotaryEmbedding(16, 33, 10000.0)(33)),
                               plain.apply_rope(x, *RotaryEmbedding(16, 33, 10000.0)(33)), atol=1e-6, rtol=1e-6)
