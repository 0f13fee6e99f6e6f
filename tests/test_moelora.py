"""MoELoRA: the fused kernel equals the reference loop (outputs and gradients), routing,
the load-balancing loss, zero-init identity, checkpoints, merging, and a few training steps."""
import json

import pytest
import torch
from torch import nn

from mcit.config import ConfigError, ModelConfig, load_config
from mcit.methods import build_method
from mcit.methods.base import TaskContext
from mcit.methods.moelora import CONFIG_FILE, WEIGHTS_FILE, merge_moelora, moelora_layers, set_impl
from mcit.models.moelora_layer import DenseMoELoRA, MoELoRALinear, load_balancing_loss, moelora_reference, route
from mcit.models.tiny_llava import build_model, build_processor, train_tokenizer

IMAGE, PATCH = 32, 8


def _layer(experts=4, rank=8, top_k=None, fin=16, fout=12, seed=0):
    torch.manual_seed(seed)
    layer = MoELoRALinear(nn.Linear(fin, fout), experts, rank, alpha=16, top_k=top_k)
    with torch.no_grad():  # B = 0 at init would make every gradient but B's trivially zero
        layer.lora_B.normal_(0, 0.5)
    return layer


def _forward_backward(layer, impl, x, w):
    layer.impl = impl
    layer.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    out = layer(x)
    (out * w).sum().backward()
    grads = {n: p.grad.clone() for n, p in layer.named_parameters() if p.requires_grad}
    return out.detach(), grads, x.grad


@pytest.mark.parametrize("top_k", [None, 2, 1])
def test_fused_equals_reference_outputs_and_gradients(top_k):
    layer = _layer(top_k=top_k)
    x, w = torch.randn(3, 5, 16), torch.randn(3, 5, 12)
    out_f, grads_f, dx_f = _forward_backward(layer, "fused", x, w)
    out_r, grads_r, dx_r = _forward_backward(layer, "reference", x, w)
    torch.testing.assert_close(out_f, out_r, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dx_f, dx_r, atol=1e-5, rtol=1e-5)
    assert set(grads_f) == {"lora_A", "lora_B", "router.weight"}  # the base Linear is frozen
    for name in grads_f:
        assert grads_f[name].abs().sum() > 0, name
        torch.testing.assert_close(grads_f[name], grads_r[name], atol=1e-5, rtol=1e-5, msg=name)


def test_dense_training_forward_is_the_hand_written_backward_and_gradchecks():
    layer = _layer()
    x = torch.randn(2, 3, 16, requires_grad=True)
    assert type(layer(x).grad_fn).__name__ == "DenseMoELoRABackward"  # what the equality test above covers
    layer.top_k = 2  # top-k routing and the balance loss's record take the autograd path
    assert type(layer(x).grad_fn).__name__ != "DenseMoELoRABackward"
    with torch.no_grad():
        assert layer(x).grad_fn is None
    # the backward against finite differences, in float64, every input that takes a gradient
    g = torch.Generator().manual_seed(1)
    args = [torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=grad)
            for shape, grad in (((2, 3, 6), True), ((5, 6), False), ((5,), False), ((4, 6), True),
                                ((5, 4), True), ((2, 6), True))]
    assert torch.autograd.gradcheck(lambda *a: DenseMoELoRA.apply(*a, 0.7), args)


@pytest.mark.parametrize("top_k", [None, 1, 3])
def test_gates_sum_to_one_per_token(top_k):
    gates, probs = route(torch.randn(7, 11, 4) * 3, top_k)
    torch.testing.assert_close(gates.sum(-1), torch.ones(7, 11))
    torch.testing.assert_close(probs.sum(-1), torch.ones(7, 11))
    assert (gates >= 0).all()
    assert ((gates > 0).sum(-1) == (top_k or 4)).all()  # top-k: exactly k experts per token
    if top_k:  # the kept gates are the largest probabilities, renormalised
        top = probs.topk(top_k, -1).values
        torch.testing.assert_close(gates.topk(top_k, -1).values, top / top.sum(-1, keepdim=True))


def test_load_balancing_loss_hand_computed():
    # 3 tokens, 2 experts, dense (top-1 counts): f = [2/3, 1/3], P = [1.9/3, 1.1/3]
    probs = torch.tensor([[0.7, 0.3], [0.8, 0.2], [0.4, 0.6]], requires_grad=True)
    loss = load_balancing_loss(probs)
    torch.testing.assert_close(loss, torch.tensor(2 * (2 / 3 * 1.9 / 3 + 1 / 3 * 1.1 / 3)))
    loss.backward()  # only P carries gradient: dL/dp_te = E * f_e / N
    torch.testing.assert_close(probs.grad, torch.tensor([[2 * (2 / 3) / 3, 2 * (1 / 3) / 3]] * 3))

    # top-2 of 3 experts: each token gives 1/2 to each of its two largest
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]])
    f = torch.tensor([0.5, 1.0, 0.5]) / 2  # expert 0: one half slot; 1: two; 2: one
    p = probs.mean(0)
    torch.testing.assert_close(load_balancing_loss(probs, top_k=2), 3 * (f * p).sum())

    # uniform routing gives 1; a padding token (mask 0) does not count
    assert load_balancing_loss(torch.full((4, 4), 0.25)).item() == pytest.approx(1.0)
    padded = torch.tensor([[[0.7, 0.3], [0.8, 0.2], [0.4, 0.6], [1.0, 0.0]]])
    mask = torch.tensor([[1, 1, 1, 0]])
    assert load_balancing_loss(padded, mask=mask).item() == pytest.approx(2 * (2 / 3 * 1.9 / 3 + 1 / 3 * 1.1 / 3))


# ----------------------------------------------------------------------------- tiny LLaVA


def _tiny_llava(seed=0):
    """(model, processor): a 2-layer LLaVA on IMAGE-px images, the one model the method tests share."""
    torch.manual_seed(seed)
    processor = build_processor(train_tokenizer(["what color is the shape red blue yes no"] * 10, 300), IMAGE, PATCH)
    mc = ModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, vision_hidden_size=32,
                     vision_layers=1, patch_size=PATCH, vocab_size=300)
    return build_model(mc, processor, IMAGE).eval(), processor


def _batch(processor, n=4, length=12, seed=0):
    """Image tokens, then a random text; loss on the last 4 tokens; the last row padded."""
    g = torch.Generator().manual_seed(seed)
    tok = processor.tokenizer
    image = torch.full((n, (IMAGE // PATCH) ** 2), tok.convert_tokens_to_ids("<image>"))
    text = torch.randint(10, len(tok), (n, length), generator=g)
    ids = torch.cat([image, text], 1)
    labels = torch.full_like(ids, -100)
    labels[:, -4:] = ids[:, -4:]
    mask = torch.ones_like(ids)
    ids[-1, -2:], labels[-1, -2:], mask[-1, -2:] = tok.pad_token_id, -100, 0
    return {"input_ids": ids, "attention_mask": mask, "labels": labels,
            "pixel_values": torch.randn(n, 3, IMAGE, IMAGE, generator=g)}


def _setup(overrides=(), seed=0):
    model, processor = _tiny_llava(seed)
    cfg = load_config(None, ["method.name=moelora", "method.lora_r=8", "method.moe_experts=4", *overrides])  # not the default: pinned
    method = build_method(cfg.method)
    return method, method.setup(model, cfg), cfg, processor


def _randomise(model, seed=1):
    torch.manual_seed(seed)
    with torch.no_grad():
        for layer in moelora_layers(model).values():
            layer.lora_B.normal_(0, 0.3)
            layer.router.weight.normal_(0, 1.0)


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


def test_injection_targets_lm_linears_and_starts_identical_to_base():
    base, processor = _tiny_llava()
    batch = _batch(processor)
    expected = _logits(base, batch)
    method, model, _, _ = _setup()
    layers = moelora_layers(model)
    assert len(layers) == 2 * 7 and all(".language_model." in n for n in layers)  # q k v o gate up down
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    adapters = [n for n in trainable if "multi_modal_projector" not in n]
    assert adapters and all(n.endswith(("lora_A", "lora_B", "router.weight")) for n in adapters)
    assert len(adapters) == 3 * len(layers)
    assert any("multi_modal_projector" in n for n in trainable)
    assert torch.equal(_logits(model, batch), expected)  # B = 0: exactly the base model
    model.train()
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, expected)  # no dropout by default

    _, frozen_proj, _, _ = _setup(["method.train_projector=false"])
    assert not any("multi_modal_projector" in n for n, p in frozen_proj.named_parameters() if p.requires_grad)


def test_save_load_round_trip(tmp_path):
    method, model, _, processor = _setup(["method.moe_top_k=2"])
    _randomise(model)
    with torch.no_grad():
        model.model.multi_modal_projector.linear_1.bias.add_(0.5)  # the projector trains too: saved
    batch = _batch(processor)
    expected = _logits(model, batch)
    method.save_model(model, tmp_path / "stage")
    assert sorted(p.name for p in (tmp_path / "stage").iterdir()) == [WEIGHTS_FILE, CONFIG_FILE]
    saved = json.loads((tmp_path / "stage" / CONFIG_FILE).read_text())
    assert saved["experts"] == 4 and saved["rank"] == 8 and saved["alpha"] == 32 and saved["impl"] == "fused"
    assert len(saved["targets"]) == 14 and saved["top_k"] == 2

    again_method, again, _, _ = _setup(["method.moe_top_k=2", "method.moe_impl=reference"])
    assert not torch.equal(_logits(again, batch), expected)
    again_method.load_model(again, tmp_path / "stage")
    # the other implementation: the same weights, another summation order, compounded over every
    # layer of the model (per-layer agreement to 1e-5 is tested above)
    torch.testing.assert_close(_logits(again, batch), expected, atol=1e-4, rtol=1e-4)
    set_impl(again, "fused")
    assert torch.equal(_logits(again, batch), expected)

    other_method, other, _, _ = _setup(["method.moe_experts=2"])
    with pytest.raises(RuntimeError, match="experts"):
        other_method.load_model(other, tmp_path / "stage")


def test_merge_is_exact_with_one_expert():
    _, model, _, processor = _setup(["method.moe_experts=1"])
    _randomise(model)
    batch = _batch(processor)
    expected = _logits(model, batch)
    merge_moelora(model)
    assert not moelora_layers(model)
    assert type(model.model.language_model.layers[0].self_attn.q_proj) is nn.Linear
    torch.testing.assert_close(_logits(model, batch), expected, atol=1e-5, rtol=1e-5)


def test_merge_with_fixed_gates_is_exact():
    layer = _layer(experts=4, rank=8)
    x = torch.randn(6, 16)
    g = torch.tensor([0.1, 0.2, 0.3, 0.4])
    expected = layer.base_layer(x) + moelora_reference(x, layer.lora_A, layer.lora_B, g.expand(6, 4), layer.scale)
    merged = nn.Linear(16, 12)
    with torch.no_grad():
        merged.weight.copy_(layer.merged_weight(g))
        merged.bias.copy_(layer.bias)
    torch.testing.assert_close(merged(x), expected, atol=1e-5, rtol=1e-5)

    # the same through the model, a gate vector per layer
    _, model, _, processor = _setup()
    _randomise(model)
    gates = {name: torch.softmax(torch.randn(4), 0) for name in moelora_layers(model)}
    for name, layer in moelora_layers(model).items():  # pin each router to its fixed gates
        layer.gates = lambda x, g=gates[name]: (g.expand(*x.shape[:-1], 4), g.expand(*x.shape[:-1], 4))
    batch = _batch(processor)
    expected = _logits(model, batch)
    merge_moelora(model, gates)
    torch.testing.assert_close(_logits(model, batch), expected, atol=1e-5, rtol=1e-5)


def test_merge_refuses_a_learned_router():
    _, model, _, _ = _setup()
    with pytest.raises(ValueError, match="depend on the input"):
        merge_moelora(model)
    with pytest.raises(ValueError, match="no gate vector"):
        merge_moelora(model, {"model.language_model.layers.0.self_attn.q_proj": torch.ones(4) / 4})
    assert len(moelora_layers(model)) == 14  # nothing replaced


def test_config_errors():
    for overrides, match in [(["method.lora_r=6"], "multiple"), (["method.moe_top_k=5"], "moe_top_k"),
                             (["method.moe_top_k=0"], "moe_top_k"), (["method.moe_balance_weight=-1"], ">= 0")]:
        with pytest.raises(ConfigError, match=match):
            build_method(load_config(None, ["method.name=moelora", "method.lora_r=8", "method.moe_experts=4", *overrides]).method)
    with pytest.raises(ConfigError, match="moe_impl"):
        load_config(None, ["method.moe_impl=sparse"])


def test_balance_loss_through_extra_loss_and_a_few_steps_reduce_the_loss():
    method, model, cfg, processor = _setup(["method.moe_top_k=2", "method.moe_balance_weight=0.1", "train.lr=3e-2"])
    batch = _batch(processor)
    ctx = TaskContext(task="t", index=0, tasks=["t"], model=model, accelerator=None)
    model.train()

    out = model(**batch)
    extra = method.extra_loss(ctx, batch, out)
    layer = next(iter(moelora_layers(model).values()))
    assert layer.last_probs is None  # read and cleared
    assert 1.0 <= extra.item() / 0.1 <= 4.0 and ctx.log["moe_balance_loss_last"] == pytest.approx(extra.item() / 0.1)

    optimizer = torch.optim.AdamW(method.param_groups(model, cfg))  # lr from the groups
    router_before = layer.router.weight.detach().clone()
    losses = []
    for _ in range(15):
        out = model(**batch)
        loss = out.loss + method.extra_loss(ctx, batch, out)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(out.loss.item())
    # The random tiny LM (frozen head) learns slowly through any adapter; PEFT LoRA does no better here.
    assert sum(losses[-3:]) / 3 < losses[0] - 0.2
    assert not torch.equal(layer.router.weight, router_before)  # the router learns too
    model.eval()
    model(**batch)
    assert layer.last_probs is None  # nothing recorded outside training
