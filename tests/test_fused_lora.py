"""Fused LoRA (mcit.models.fused_lora): the same function and gradients as PEFT's own LoRA
forward, the same losses over training steps, PEFT's saved format (loads with PeftModel
unchanged, same answers), and PEFT's path wherever the fusion does not apply."""
import copy

import pytest
import torch
from conftest import train_losses
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import Linear as PeftLoraLinear

from mcit.config import ModelConfig, load_config
from mcit.methods import build_method
from mcit.models import fused_lora
from mcit.models.fused_lora import FusedLoraLinear, add_low_rank
from mcit.models.tiny_llava import build_model, build_processor, train_tokenizer

IMAGE, PATCH = 32, 8
# fp32 rounding: the fused sum accumulates scale * (h B^T) inside one matmul instead of rounding
# h B^T, then the scaled product, then the sum: a few ulps per layer, nothing more.
TOL = dict(rtol=1e-5, atol=1e-6)


def _tiny():
    mc = ModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, vision_hidden_size=32,
                     vision_layers=1, vocab_size=300, patch_size=PATCH)
    processor = build_processor(train_tokenizer(["what color is the shape red blue yes no"] * 10, mc.vocab_size),
                                IMAGE, PATCH)
    torch.manual_seed(0)
    return build_model(mc, processor, IMAGE), processor


def _batch(processor, n=4, text=12):
    g = torch.Generator().manual_seed(1)
    tok = processor.tokenizer
    ids = torch.cat([torch.full((n, (IMAGE // PATCH) ** 2), tok.convert_tokens_to_ids("<image>")),
                     torch.randint(10, len(tok), (n, text), generator=g)], 1)
    labels = torch.full_like(ids, -100)
    labels[:, -4:] = ids[:, -4:]
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
            "pixel_values": torch.randn(n, 3, IMAGE, IMAGE, generator=g)}


def _lora_pair(dropout=0.0):
    """(PEFT's plain LoRA model, the mcit method's fused one) from the same base and init."""
    base, processor = _tiny()
    cfg = load_config(None, ["method.name=lora", "method.lora_r=4", f"method.lora_dropout={dropout}"])
    method = build_method(cfg.method)
    torch.manual_seed(3)
    fused = method.setup(copy.deepcopy(base), cfg)
    plain_config = method.lora_config(base)
    plain_config._custom_modules = None  # PEFT's own layer
    torch.manual_seed(3)
    plain = get_peft_model(copy.deepcopy(base), plain_config)
    return plain, fused, method, cfg, processor


def test_add_low_rank_is_result_plus_scaled_product():
    result, h, b = torch.randn(2, 3, 5), torch.randn(2, 3, 4), torch.randn(5, 4)
    expected = result + 0.5 * (h @ b.T)
    out = add_low_rank(result, h, b, 0.5)
    torch.testing.assert_close(out, expected, **TOL)
    assert out is result  # accumulated in place: no full-size copy of the base output
    strided = torch.randn(5, 3, 2).transpose(0, 2)  # not contiguous: a new tensor, the input untouched
    before = strided.clone()
    torch.testing.assert_close(add_low_rank(strided, h, b, 0.5), before + 0.5 * (h @ b.T), **TOL)
    assert torch.equal(strided, before)


def test_add_low_rank_into_a_linear_output_keeps_the_gradients():
    # in place into the base layer's fresh output: autograd still gives the out-of-place gradients
    torch.manual_seed(0)
    x, w = torch.randn(4, 6, requires_grad=True), torch.randn(5, 6)
    h, b = torch.randn(4, 3, requires_grad=True), torch.randn(5, 3, requires_grad=True)
    grads = []
    for fused in (True, False):
        base = torch.nn.functional.linear(x, w)
        y = add_low_rank(base, h, b, 0.5) if fused else base + 0.5 * (h @ b.T)
        grads.append(torch.autograd.grad((y ** 2).sum(), (x, h, b)))
    for g1, g2 in zip(*grads):
        torch.testing.assert_close(g1, g2, **TOL)


def test_method_builds_fused_layers_and_saves_plain_peft_config(tmp_path):
    plain, fused, *_ = _lora_pair()
    layers = [m for m in fused.modules() if isinstance(m, PeftLoraLinear)]
    assert layers and all(type(m) is FusedLoraLinear for m in layers)
    assert not any(type(m) is FusedLoraLinear for m in plain.modules())
    fused.save_pretrained(tmp_path)
    assert "custom" not in (tmp_path / "adapter_config.json").read_text()


def test_training_steps_match_peft_forward():
    plain, fused, method, cfg, processor = _lora_pair()
    with torch.no_grad():  # B = 0 at init: give the adapters something to contribute from step 1
        for model in (plain, fused):
            torch.manual_seed(5)
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.3)
    batch = _batch(processor)
    losses = {}
    for key, model in (("plain", plain), ("fused", fused)):
        model.train()
        opt = torch.optim.AdamW(method.param_groups(model, cfg), lr=1e-2)
        losses[key] = train_losses(model, opt, batch, 4)
    assert losses["plain"][0] != losses["plain"][-1]  # the steps did train
    torch.testing.assert_close(torch.tensor(losses["fused"]), torch.tensor(losses["plain"]), **TOL)
    trained = dict(plain.named_parameters())
    for name, p in fused.named_parameters():
        if p.requires_grad:  # AdamW divides each gradient by its own size: a rounding difference in a
            # near-zero gradient moves that weight by up to lr x its relative size (lr 1e-2 here)
            torch.testing.assert_close(p, trained[name], rtol=1e-4, atol=1e-4)


def _gradients(model, batch):
    model.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_merged_weight_path_gives_peft_gradients_and_is_taken_in_fp32_only(monkeypatch):
    """float32, one adapter, frozen base: MergedLowRank (x (W + s B A)^T); its gradients for A, B and
    the input equal PEFT's to rounding. A base weight that trains, or bf16, keeps the addmm path."""
    plain, fused, _, _, processor = _lora_pair()
    with torch.no_grad():
        for model in (plain, fused):
            torch.manual_seed(5)
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.3)
    calls = []
    original = fused_lora.MergedLowRank.apply
    monkeypatch.setattr(fused_lora.MergedLowRank, "apply", lambda *a: calls.append(1) or original(*a))
    batch = _batch(processor)
    loss_plain, grads_plain = _gradients(plain, batch)
    loss_fused, grads_fused = _gradients(fused, batch)
    layers = [m for m in fused.modules() if isinstance(m, FusedLoraLinear)]
    assert len(calls) == len(layers)  # every wrapped layer went through the merged weight
    torch.testing.assert_close(loss_fused, loss_plain, rtol=1e-6, atol=1e-6)
    assert grads_plain.keys() == grads_fused.keys() and any("lora_A" in n for n in grads_fused)
    for name in grads_plain:  # float32 rounding in another order, carried back through the layers:
        # measured up to 2.3e-5 of each gradient's largest element (layer 0, the deepest backward)
        scale = grads_plain[name].abs().max()
        assert (grads_fused[name] - grads_plain[name]).abs().max() <= 1e-4 * scale, name
    calls.clear()
    layers[0].base_layer.weight.requires_grad_(True)
    fused(**batch)
    assert len(calls) == len(layers) - 1  # that layer's weight trains: not merged
    layers[0].base_layer.weight.requires_grad_(False)
    calls.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused.to(torch.bfloat16)(**{k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in batch.items()})
    assert not calls  # half precision would round the LoRA update away in W + s B A


def test_saved_adapter_loads_with_peft_model_and_answers_alike(tmp_path):
    _, fused, _, _, processor = _lora_pair()
    with torch.no_grad():
        for name, p in fused.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    fused.save_pretrained(tmp_path)
    base, _ = _tiny()
    loaded = PeftModel.from_pretrained(base, tmp_path).eval()
    assert not any(type(m) is FusedLoraLinear for m in loaded.modules())
    fused.eval()
    batch = _batch(processor)
    with torch.no_grad():
        torch.testing.assert_close(fused(**batch).logits, loaded(**batch).logits, **TOL)
        prompt = {"input_ids": batch["input_ids"][:, :-4], "attention_mask": batch["attention_mask"][:, :-4],
                  "pixel_values": batch["pixel_values"]}
        kw = dict(max_new_tokens=4, do_sample=False, pad_token_id=processor.tokenizer.pad_token_id)
        assert torch.equal(fused.generate(**prompt, **kw), loaded.generate(**prompt, **kw))


@pytest.mark.parametrize("case", ["dropout", "disabled", "merged"])
def test_cases_outside_the_fusion_take_peft_path(case, monkeypatch):
    plain, fused, _, _, processor = _lora_pair(dropout=0.1 if case == "dropout" else 0.0)
    calls = []
    original = PeftLoraLinear.forward
    monkeypatch.setattr(PeftLoraLinear, "forward", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    batch = _batch(processor)
    fused.eval()
    with torch.no_grad():
        if case == "disabled":
            with fused.disable_adapter():
                fused(**batch)
        elif case == "merged":
            fused.merge_adapter()
            fused(**batch)
        else:
            fused(**batch)
    assert calls  # PEFT's forward ran


def test_fused_path_does_not_call_peft_forward(monkeypatch):
    _, fused, _, _, processor = _lora_pair()
    monkeypatch.setattr(PeftLoraLinear, "forward", lambda *a, **k: pytest.fail("PEFT's forward ran"))
    with torch.no_grad():
        fused.eval()(**_batch(processor))
