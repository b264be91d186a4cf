"""Lion against its update rule (by hand and against lion-pytorch), AdamW, and the decay split."""

import types

import pytest
import torch

from b6lab import parts, registry
from b6lab.plugins.optimizers import Lion


def test_lion_matches_its_update_rule_on_a_hand_computed_step():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5, 0.0]))
    opt = Lion([p], lr=0.1, betas=(0.9, 0.99), weight_decay=0.5)
    m0 = torch.tensor([0.2, 0.1, -0.4, 0.0])
    opt.state[p]["exp_avg"] = m0.clone()
    g = torch.tensor([-1.0, 0.5, 0.3, 0.2])
    p.grad = g.clone()
    opt.step()
    # c = 0.9*m + 0.1*g = [0.08, 0.14, -0.33, 0.02]: signs [+, +, -, +]
    # p = p - lr*(sign(c) + wd*p) = p*(1 - 0.05) - 0.1*sign(c)
    expected_p = torch.tensor([1.0 * 0.95 - 0.1, -2.0 * 0.95 - 0.1, 0.5 * 0.95 + 0.1, 0.0 - 0.1])
    expected_m = 0.99 * m0 + 0.01 * g
    torch.testing.assert_close(p.detach(), expected_p)
    torch.testing.assert_close(opt.state[p]["exp_avg"], expected_m)


def test_lion_foreach_and_single_tensor_paths_agree():
    torch.manual_seed(0)
    shapes = [(5, 3), (7,), (2, 2, 2)]
    params = {flag: [torch.nn.Parameter(torch.randn(s)) for s in shapes] for flag in (True, False)}
    for a, b in zip(params[True], params[False]):
        b.data.copy_(a.data)
    opts = {flag: Lion(params[flag], lr=0.01, weight_decay=0.1, foreach=flag) for flag in (True, False)}
    for _ in range(5):
        grads = [torch.randn(s) for s in shapes]
        for flag in (True, False):
            for p, g in zip(params[flag], grads):
                p.grad = g.clone()
            opts[flag].step()
    for a, b in zip(params[True], params[False]):
        torch.testing.assert_close(a, b)


def test_lion_matches_the_lion_pytorch_reference():
    lion_pytorch = pytest.importorskip("lion_pytorch")
    torch.manual_seed(0)
    ours = torch.nn.Linear(6, 4)
    theirs = torch.nn.Linear(6, 4)
    theirs.load_state_dict(ours.state_dict())
    opt_ours = Lion(ours.parameters(), lr=1e-2, betas=(0.9, 0.99), weight_decay=0.2)
    opt_theirs = lion_pytorch.Lion(theirs.parameters(), lr=1e-2, betas=(0.9, 0.99), weight_decay=0.2)
    for _ in range(10):
        x = torch.randn(8, 6)
        for model, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def small_model():
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    return model


def test_param_groups_split_matrices_from_norms_and_biases():
    model = small_model()
    decay, no_decay = parts.param_groups(model, decay_embeddings=True)
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[1].weight)}
    assert {id(p) for p in no_decay["params"]} == {id(model[1].bias), id(model[2].weight), id(model[2].bias)}
    assert no_decay["weight_decay"] == 0.0 and "weight_decay" not in decay
    decay, no_decay = parts.param_groups(model, decay_embeddings=False)
    assert id(model[0].weight) in {id(p) for p in no_decay["params"]}


@pytest.mark.parametrize("name", ["lion", "adamw"])
def test_optimizers_apply_weight_decay_to_the_decay_group_only(name):
    model = small_model()
    opt = registry.get("optimizer", name).build(parts.param_groups(model), weight_decay=0.3)
    assert opt.param_groups[0]["weight_decay"] == 0.3
    assert opt.param_groups[1]["weight_decay"] == 0.0
    model[1](model[0](torch.tensor([1, 2]))).sum().backward()
    before = model[1].weight.detach().clone()
    opt.step()
    assert not torch.equal(before, model[1].weight)


def test_lion_defaults_follow_the_paper_ratios_to_adamw():
    lion, adamw = registry.get("optimizer", "lion").options, registry.get("optimizer", "adamw").options
    assert lion["betas"] == (0.9, 0.99)
    assert 3 - 1e-9 <= adamw["lr"] / lion["lr"] <= 10
    assert 3 - 1e-9 <= lion["weight_decay"] / adamw["weight_decay"] <= 10


def test_the_built_in_rules_do_not_judge_a_plugins_own_options(register_plugin):
    from b6lab.config import load_config
    from b6lab.errors import ConfigError

    def ademamix_like(param_groups, *, lr: float = 1e-3, betas=(0.9, 0.999, 0.9999)):
        """AdEMAMix's three betas (fast EMA, second moment, slow EMA); the step here is Adam's on the first two."""
        return torch.optim.Adam(param_groups, lr=lr, betas=betas[:2])

    register_plugin(types.SimpleNamespace(b6lab_register_optimizer=lambda register: register("ademamix", ademamix_like)))
    cfg = load_config(preset="tiny", overrides=["optim.name=ademamix"])
    assert cfg.optim.options["betas"] == (0.9, 0.999, 0.9999)
    optimizer = parts.build_optimizer(cfg.optim, torch.nn.Linear(4, 4))
    assert optimizer.param_groups[0]["betas"] == (0.9, 0.999)
    # The built-in optimizers are still held to them.
    with pytest.raises(ConfigError, match="optim.betas.*two numbers in"):
        parts.build_optimizer(load_config(preset="tiny", overrides=["optim.name=adamw", "optim.betas=[0.9, 1.5]"]).optim,
                              torch.nn.Linear(4, 4))


def test_check_optimizer_refuses_one_decayed_group_over_every_parameter():
    from b6lab import testing
    from b6lab.contracts import ContractError

    def one_group(param_groups, *, lr: float = 1e-3, weight_decay: float = 0.1):
        """AdamW over every parameter in one group: the norms' weight_decay 0.0 is lost."""
        params = [p for group in param_groups for p in group["params"]]
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)

    with pytest.raises(ContractError, match="decays 1 parameter.*weight_decay 0.0"):
        testing.check_optimizer(one_group)
    assert "the no-decay group (weight_decay 0.0) is kept" in testing.check_optimizer("adamw")
