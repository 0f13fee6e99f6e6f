"""Run by tests/test_distributed.py, once as one process and once under torchrun with 2 CPU
processes: train a toy causal LM for 3 optimizer steps through `mcit.fit.train_task` and record
the gradients a method sees in `after_step` (after clipping and the optimizer step) on every
process, plus the final weights. Usage: python ddp_grad_worker.py OUT.json"""
import dataclasses
import json
import sys
from types import SimpleNamespace

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, gather_object
from transformers.loss.loss_utils import ForCausalLMLoss

from mcit.config import RunConfig
from mcit.distributed import end_process_group
from mcit.fit import train_task
from mcit.methods.base import Method, TaskContext

VOCAB = 11


class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(VOCAB, 8)
        self.head = torch.nn.Linear(8, VOCAB)

    def forward(self, input_ids, attention_mask=None, labels=None, num_items_in_batch=None):
        logits = self.head(self.embed(input_ids))
        return SimpleNamespace(loss=ForCausalLMLoss(logits, labels, VOCAB, num_items_in_batch=num_items_in_batch))


class Recorder(Method):
    name = "recorder"

    def __init__(self):
        super().__init__(None)
        self.grads = []

    def after_step(self, ctx):
        model = ctx.accelerator.unwrap_model(ctx.model)
        self.grads.append({n: p.grad.detach().clone().tolist() for n, p in model.named_parameters()})


def main(out: str) -> None:
    acc = Accelerator(cpu=True, dataloader_config=DataLoaderConfiguration(split_batches=True))
    g = torch.Generator().manual_seed(1)
    items = []
    for k in range(24):  # answers of different lengths: the per-process token counts differ
        n = 4 + k % 5
        ids = torch.randint(1, VOCAB, (n,), generator=g)
        labels = ids.clone()
        labels[: n - 1 - k % 3] = -100
        items.append({"input_ids": ids, "labels": labels})
    cfg = RunConfig()
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=8, grad_accum=2, lr=0.05,
                                                             warmup_ratio=0.0, max_grad_norm=1.0))
    model = acc.prepare_model(Toy())
    method = Recorder()
    ctx = TaskContext(task="toy", index=0, tasks=["toy"], model=model, accelerator=acc)
    stats = train_task(model, method, ctx, items, cfg, pad_id=0, seed=3, desc="toy", steps=3)
    weights = {n: p.detach().tolist() for n, p in acc.unwrap_model(model).named_parameters()}
    every = gather_object([{"rank": acc.process_index, "grads": method.grads}])
    if acc.is_main_process:
        with open(out, "w") as fh:
            json.dump({"processes": acc.num_processes, "ranks": every, "weights": weights, "stats": stats}, fh)
    acc.wait_for_everyone()
    end_process_group()  # gloo's threads idle and joined now, not at interpreter exit


if __name__ == "__main__":
    main(sys.argv[1])
