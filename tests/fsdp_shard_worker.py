"""Run by tests/test_fsdp.py under torchrun with 2 CPU (gloo) processes: shard a small Llama (built
from a config, no download) the way train.engine=fsdp does and record, per process, the local
shapes of its parameters, the L1 norms mcit.distributed sums over shards, whether gathering
gives the whole weights back and whether scattering whole weights gives each process its shards. Usage: torchrun ... fsdp_shard_worker.py OUT_PREFIX"""
import json
import sys
from types import SimpleNamespace

import torch
import torch.distributed as dist
from torch.distributed.fsdp import FSDPModule
from transformers import LlamaConfig, LlamaForCausalLM

from mcit.distributed import (end_process_group, gather_into, local_shard, scatter_into, shard_for_training,
                              shard_layers, shard_like, sum_over_shards)


def main(prefix: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    # 5 attention heads of 2: q_proj's weight has 10 rows, so 2 processes hold 5 each
    plain = LlamaForCausalLM(LlamaConfig(vocab_size=33, hidden_size=10, intermediate_size=14, num_hidden_layers=2,
                                         num_attention_heads=5, num_key_value_heads=5))
    cfg = SimpleNamespace(train=SimpleNamespace(fsdp_cpu_offload=False))
    sharded = shard_for_training(plain, cfg, "cpu")
    ids = torch.randint(0, 33, (2, 6), generator=torch.Generator().manual_seed(1))
    sharded(input_ids=ids, labels=ids).loss.backward()
    params = dict(sharded.named_parameters())
    local_l1 = torch.stack([local_shard(p.grad).abs().sum().double() for p in params.values()])
    whole_l1 = torch.stack([p.grad.full_tensor().abs().sum().double() for p in params.values()])
    with torch.no_grad():  # a change made while sharded must reach the whole model
        for p in params.values():
            p.add_(1.0)
    gather_into(sharded, plain, "cpu")
    gathered = {n: p.detach().tolist() for n, p in plain.named_parameters()}
    with torch.no_grad():  # the way back (an in-task checkpoint loaded into the whole model): scatter_into
        for p in plain.parameters():
            p.mul_(2.0)
    scatter_into(plain, sharded)
    whole = dict(plain.named_parameters())
    record = {
        # a list, not a generator: full_tensor is a collective, every process must call it for every tensor
        "scattered_back": all([torch.equal(p.full_tensor(), whole[n]) for n, p in sharded.named_parameters()]),
        "shard_like_local": {n: list(local_shard(shard_like(p, whole[n].detach())).shape) for n, p in params.items()},
        "layers": [type(m).__name__ for m in shard_layers(plain)],
        "wrapped": [type(m).__name__ for m in sharded.modules() if isinstance(m, FSDPModule)],
        "local": {n: list(local_shard(p).shape) for n, p in params.items()},
        "full": {n: list(p.shape) for n, p in params.items()},
        "summed_l1": sum_over_shards(local_l1, True).tolist(),
        "whole_l1": whole_l1.tolist(),
        "local_l1": local_l1.tolist(),
        "gathered": gathered,
    }
    with open(f"{prefix}{rank}.json", "w") as fh:
        json.dump(record, fh)
    end_process_group()  # gloo's threads idle and joined now, not at interpreter exit


if __name__ == "__main__":
    main(sys.argv[1])
