"""Logits only where an answer token is scored (mcit.fit.answer_forward, issue 15): the same loss and
gradients as transformers' causal-LM loss over every position, in both reductions; the loop uses it
unless a method reads every logit (LwF) or the model cannot take ``logits_to_keep``."""
import pytest
import torch
from conftest import save_tiny_checkpoint

from mcit.config import load_config
from mcit.fit import answer_forward, takes_logits_to_keep
from mcit.methods import build_method
from mcit.methods.base import Method, needs_all_logits
from mcit.models.load import load_checkpoint


@pytest.fixture(scope="module")
def model_and_batch(tmp_path_factory):
    model, processor = load_checkpoint(save_tiny_checkpoint(tmp_path_factory.mktemp("m") / "ckpt"), "float32")
    tok = processor.tokenizer
    g = torch.Generator().manual_seed(0)
    n, length, image_tokens = 3, 30, 16
    ids = torch.randint(10, len(tok), (n, length), generator=g)
    ids[:, :image_tokens] = tok.convert_tokens_to_ids("<image>")
    labels = torch.full_like(ids, -100)
    labels[0, 20:24] = ids[0, 20:24]  # answers at different places per row, one row longer
    labels[1, 25:27] = ids[1, 25:27]
    labels[2, 22:30] = ids[2, 22:30]
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
             "pixel_values": torch.randn(n, 3, 32, 32, generator=g)}
    return model.train(), batch


def _loss_and_grads(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("num_items", [None, 7.5])
def test_answer_only_logits_give_transformers_loss_and_gradients(model_and_batch, num_items):
    model, batch = model_and_batch
    kwargs = {} if num_items is None else {"num_items_in_batch": torch.tensor(num_items)}
    full = model(**batch, **kwargs)
    out = answer_forward(model, batch, **kwargs)
    # Position i predicts token i + 1: the 14 labelled tokens (4 + 2 + 8) are predicted at 19..22, 24..25
    # and 21..28, so logits are kept at positions 19..28 (their union over rows), 10 of 30.
    assert out.logits.shape[:2] == (3, 10) and full.logits.shape[:2] == (3, 30)
    loss_full, grads_full = _loss_and_grads(model, full.loss)
    loss_answers, grads_answers = _loss_and_grads(model, answer_forward(model, batch, **kwargs).loss)
    torch.testing.assert_close(loss_answers, loss_full, rtol=1e-6, atol=1e-6)
    assert grads_full.keys() == grads_answers.keys()
    for name in grads_full:
        torch.testing.assert_close(grads_answers[name], grads_full[name], rtol=1e-5, atol=1e-6)
    if num_items is not None:  # the sum over scored tokens / the given count, as transformers does
        mean = model(**batch).loss.detach()
        torch.testing.assert_close(loss_full * num_items, mean * 14, rtol=1e-5, atol=1e-5)


def _method(*overrides):
    return build_method(load_config(None, list(overrides)).method)


def test_the_loop_keeps_every_logit_for_a_method_that_reads_them():
    assert not needs_all_logits(_method("method.name=lora"))
    assert not needs_all_logits(_method("method.name=moelora"))
    assert not needs_all_logits(_method("method.with=[ewc,replay]"))
    assert needs_all_logits(_method("method.with=[lwf]"))
    assert needs_all_logits(_method("method.name=lwf"))

    class Outside(Method):  # a user's method that adds a loss and says nothing: it may read logits
        def extra_loss(self, ctx, batch, outputs):
            return outputs.logits.sum() * 0

    class Declared(Outside):
        reads_all_logits = False

    assert needs_all_logits(Outside(load_config(None, []).method))
    assert not needs_all_logits(Declared(load_config(None, []).method))


def test_only_models_that_take_positions_get_them(model_and_batch):
    model, _ = model_and_batch
    assert takes_logits_to_keep(model)

    class Old(torch.nn.Module):
        def forward(self, input_ids, labels=None):
            return None

    assert not takes_logits_to_keep(Old())
