"""Several processes (`accelerate launch`, `torchrun`): the few places where the loop needs to know.

The rules, in one place:

* **Global batch.** `train.batch_size` is the batch of one optimizer micro-step over *all*
  processes; each of N processes gets `batch_size / N` samples (an error if N does not divide
  it). The accelerator splits every batch of one seeded DataLoader (Accelerate's
  `split_batches`), so the union of the N shards is exactly the single-process batch, in the
  same order, and the learning-rate schedule steps once per optimizer step. The loss is the
  token mean over the global micro-batch (`global_loss_kwargs`), not a mean of per-process
  means, so 1 x 8 and 2 x 4 follow the same trajectory up to float reduction order.
* **Evaluation.** Each process answers `samples[rank::world]`; the records are gathered on
  every process and put back in the test set's order (`shard`, `merge_shards`); every test
  sample is answered exactly once. Only the main process writes.
* **Parameters that change** (a new adapter per task): DDP registers the parameters that
  require grad when it wraps the model, so the loop re-wraps the model when that set changes
  (`rewrap_if_changed`).
* **train.engine=fsdp** (PyTorch FSDP2): each stage trains a sharded copy of the model; the
  whole weights are gathered back for evaluation and saving (see the FSDP2 section below).
* **train.engine=deepspeed-zero2 | deepspeed-zero3** (GPU machines, through Accelerate's
  DeepSpeedPlugin): the same scheme, each stage trains a DeepSpeed engine built from a copy of the
  model and that stage's optimizer (see the DeepSpeed section at the end).
"""
from __future__ import annotations

import gc
import time
from contextlib import contextmanager, nullcontext
from typing import Any, Callable

import torch
from accelerate.utils import DistributedType, broadcast_object_list, gather_object, send_to_device

from .config import ConfigError
from .launch import per_process_batch

# Engines where the wrapped model is a DistributedDataParallel over a module we can re-wrap.
_DDP_TYPES = {getattr(DistributedType, n) for n in ("MULTI_CPU", "MULTI_GPU", "MULTI_NPU", "MULTI_XPU",
                                                     "MULTI_MLU", "MULTI_MUSA", "MULTI_HPU", "MULTI_SDAA")
              if hasattr(DistributedType, n)}


# Methods verified to train sharded as they do on one process (tests/test_fsdp.py and the runs
# listed in the README). Others keep references to whole parameters across the stage (EWC's
# penalty terms, O-LoRA's earlier adapters) or were not verified: refused, not silently wrong.
FSDP_METHODS = ("lora", "full", "lcia", "ema")


def check_engine_settings(cfg, acc) -> None:
    """train.engine=fsdp with what it cannot follow yet: refused before any work."""
    if not uses_fsdp(cfg, acc):
        return
    unverified = [m for m in (cfg.method.name, *cfg.method.with_) if m not in FSDP_METHODS]
    if unverified:
        raise ConfigError(f"train.engine=fsdp: method {unverified[0]!r} is not supported sharded yet (supported: "
                          f"{', '.join(FSDP_METHODS)}); use train.engine=ddp")
    if cfg.emt.every_steps > 0:
        raise ConfigError("emt.every_steps evaluates mid-stage on the whole model, which train.engine=fsdp only "
                          "gathers at the end of a stage: use train.engine=ddp for EMT tracking")


def check_engine(acc, engine: str = "ddp") -> None:
    """The loop runs on one process or on a plain process group (torchrun, `accelerate launch
    --multi_gpu`), where it wraps the model itself: DDP, or FSDP2 with train.engine=fsdp, or a
    DeepSpeed engine per stage with train.engine=deepspeed-zero2|3 (the plugin mcit builds).
    A DeepSpeed or FSDP plugin from an Accelerate config file would prepare the model once, not
    together with each task's optimizer: refused, not silently wrong."""
    if acc.distributed_type == DistributedType.DEEPSPEED and engine in DEEPSPEED_ENGINES:
        return
    if acc.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP):
        raise ConfigError(f"the continual loop does not use Accelerate's {acc.distributed_type.value} plugin from a "
                          "config file (see README, Multi-GPU): launch with src/mcit/configs/accelerate/ddp.yaml, and "
                          "add train.engine=fsdp or train.engine=deepspeed-zero2 (or -zero3) to shard the model")


# -- evaluation -------------------------------------------------------------------------------

def shard(items: list, rank: int, world: int) -> list:
    """This process's share of `items`: every world-th item from position rank."""
    return items[rank::world]


def merge_shards(records: list[dict], ids: list) -> list[dict]:
    """`records` gathered from every shard, back in the order of `ids`; every id exactly once."""
    position = {i: k for k, i in enumerate(ids)}
    seen = sorted(position.get(r["id"], -1) for r in records)
    if seen != list(range(len(ids))):
        raise RuntimeError(f"evaluation shards do not cover the {len(ids)} samples exactly once "
                           f"(got {len(records)} records)")
    return sorted(records, key=lambda r: position[r["id"]])


def gather_records(acc, records: list[dict]) -> list[dict]:
    """Every process's records, on every process (a collective: all processes must call it)."""
    return records if acc.num_processes == 1 else gather_object(records)


# -- training -----------------------------------------------------------------------------------

def global_loss_kwargs(acc, batch: dict) -> dict:
    """Extra forward arguments that make each process's loss its share of the global token mean.

    Transformers divides the summed token loss by `num_items_in_batch`; DDP then averages the
    processes' gradients, so dividing by (global answer tokens / N) gives exactly the gradient
    of the mean over the global micro-batch. One process: nothing (the model's own mean)."""
    if acc.num_processes == 1 or "labels" not in batch:
        return {}
    local = (batch["labels"][:, 1:] != -100).sum()  # tokens the shifted causal loss scores
    total = acc.reduce(local.detach().clone(), "sum")
    return {"num_items_in_batch": total.float().clamp(min=1) / acc.num_processes}


def mean_over_processes(acc, value: torch.Tensor) -> float:
    return float(value if acc.num_processes == 1 else acc.reduce(value.detach().clone(), "mean"))


def enable_gradient_checkpointing(model) -> None:
    """train.gradient_checkpointing: recompute activations in backward (memory for time, for
    large models). Non-reentrant, so gradients reach LoRA weights although the frozen
    embeddings' outputs need none; transformers 5 renamed the call (the old name warns)."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def trainable_ids(model: torch.nn.Module) -> frozenset[int]:
    return frozenset(id(p) for p in model.parameters() if p.requires_grad)


def rewrap_if_changed(acc, model, wrapped: frozenset[int]) -> tuple[Any, frozenset[int]]:
    """Re-wrap `model` when the parameters that require grad differ from those it was wrapped
    with (`wrapped`); returns the model to train and the set it is now wrapped with.

    A DDP wrapper built before a method added an adapter (O-LoRA, task-id LoRA) or moved
    requires_grad to another adapter would leave the new parameters unsynchronised and wait
    forever for gradients of the frozen ones. With one process nothing is wrapped."""
    live = acc.unwrap_model(model)
    now = trainable_ids(live)
    if model is live or now == wrapped:
        return model, now
    if acc.distributed_type not in _DDP_TYPES:
        raise RuntimeError(f"the trainable parameters changed after the model was prepared, which "
                           f"{acc.distributed_type.value} cannot follow; use DDP or one process")
    plain = acc.unwrap_model(model, keep_fp32_wrapper=False)  # prepare_model adds autocast again
    acc._models = [m for m in acc._models if m is not plain]  # prepare_model lists it again
    # The old wrapper goes when the caller drops it; its reducer's gradient hooks only act after
    # a forward pass through it, so they stay inert meanwhile.
    return acc.prepare_model(plain), now


def end_process_group() -> None:
    """Tear this process's group down while the interpreter is fully alive, with gloo's worker
    threads idle (every launched process calls it when its command returns).

    A gloo thread that drops a finished collective's work releases Python-owned tensors, which
    needs the GIL. Left to the interpreter's exit that thread cannot get it: the process aborts
    ("terminate called without an active exception", seen in CI) or hangs, because the group's
    destructor joins the thread while holding the GIL (seen here: DDP's reducer, the last owner of
    the group, freed at exit). So: release the GIL briefly so the threads finish dropping their
    works, free the wrappers that still own the group, then destroy it (pytorch/pytorch#190489)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    time.sleep(0.1)
    gc.collect()
    torch.distributed.destroy_process_group()


def on_main(acc, fn: Callable[[], Any]) -> Any:
    """`fn()` run on the main process only; every process gets its result, or raises the error
    it raised (so a user error on the main process does not leave the others waiting). `acc`
    None (no accelerator, e.g. a method driven by hand) is one process."""
    if acc is None or acc.num_processes == 1:
        return fn()
    payload: list = [None]
    error = None
    if acc.is_main_process:
        try:
            payload = [("ok", fn())]
        except Exception as exc:  # re-raised below, on every process
            error = exc
            payload = [("error", exc)]
    kind, value = broadcast_object_list(payload, from_process=0)[0]
    if error is not None:
        raise error
    if kind == "error":
        raise value
    return value


class SingleProcess:
    """The part of the Accelerator API `fit.train_task` uses, for one process training alone
    while the others wait (the built-in model's base stage). The real accelerator would wrap
    the model in DDP and shard the data loader: collectives the waiting processes never join."""

    num_processes = 1
    process_index = 0
    is_main_process = True
    distributed_type = DistributedType.NO

    def __init__(self, device):
        self.device = device
        self._models, self._optimizers, self._schedulers, self._dataloaders = [], [], [], []

    def prepare_model(self, model):
        return model.to(self.device)

    def prepare(self, *objects):
        out = tuple(_OnDevice(o, self.device) if isinstance(o, torch.utils.data.DataLoader) else o for o in objects)
        return out if len(out) > 1 else out[0]

    def unwrap_model(self, model, keep_fp32_wrapper: bool = True):
        return model

    def no_sync(self, model):
        return nullcontext()

    def backward(self, loss):
        loss.backward()

    def clip_grad_norm_(self, parameters, max_norm):
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm)

    def reduce(self, tensor, reduction="sum"):
        return tensor

    def wait_for_everyone(self):
        pass


class _OnDevice:
    """A DataLoader whose batches arrive on `device` (what Accelerate's prepared loader does)."""

    def __init__(self, loader, device):
        self.loader, self.device = loader, device

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            yield send_to_device(batch, self.device)


# -- FSDP2 (train.engine=fsdp) -------------------------------------------------------------------
#
# Between stages every process keeps the whole model (`plain`): methods change its structure
# (a new adapter, requires_grad moved), evaluation generates a different number of tokens on
# each process (no collectives allowed there), and stages are saved from it. For training, a
# copy is sharded with `fully_shard` (each decoder layer, then the root): parameters, gradients
# and optimizer state are split across processes for the stage, and its weights are gathered
# back into `plain` when the stage ends (`gather_into`).


def uses_fsdp(cfg, acc) -> bool:
    """train.engine=fsdp in a launched run (torchrun, `accelerate launch --multi_gpu`): a process
    group exists, also for a single GPU process (which the GPU check uses to run the FSDP2 path).
    A plain `mcit run` is one process with nothing to shard."""
    return cfg.train.engine == "fsdp" and acc.distributed_type in _DDP_TYPES


def shard_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The blocks FSDP2 wraps one by one: the decoder (and vision encoder) layers, found by the
    class names transformers lists as never to be split across devices (`_no_split_modules`)."""
    names = {n for m in model.modules() for n in (getattr(m, "_no_split_modules", None) or ())}
    return [m for m in model.modules() if type(m).__name__ in names]


def shard_for_training(plain: torch.nn.Module, cfg, device) -> torch.nn.Module:
    """A copy of `plain` with `fully_shard` applied to each layer and the root; mixed precision
    (bf16 compute, fp32 gradient reduction) on GPUs only, CPU offload with train.fsdp_cpu_offload.
    `plain` waits in CPU memory while the stage trains (`gather_into` brings it back): the copy is
    made there too, and `fully_shard` moves only this process's shards to `device`."""
    import copy

    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    plain.to("cpu")
    model = copy.deepcopy(plain)
    options: dict[str, Any] = {}
    on_gpu = torch.device(device).type == "cuda"
    if on_gpu and torch.cuda.is_bf16_supported():
        options["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    if cfg.train.fsdp_cpu_offload and on_gpu:  # on CPU everything is in CPU memory already
        options["offload_policy"] = CPUOffloadPolicy()
    for layer in shard_layers(model):
        fully_shard(layer, **options)
    fully_shard(model, **options)
    return model.to(device)  # what fully_shard does not manage (buffers) goes along


def full_value(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a sharded DTensor or of a ZeRO-3 partitioned parameter (a collective),
    an ordinary tensor as it is."""
    if hasattr(tensor, "full_tensor"):
        return tensor.full_tensor()
    if hasattr(tensor, "ds_id") or hasattr(tensor, "_hp_mapping"):  # a parameter of a DeepSpeed engine
        return _deepspeed_full_value(tensor)
    return tensor


@torch.no_grad()
def gather_into(sharded: torch.nn.Module, plain: torch.nn.Module, device, trainable_only: bool = False) -> None:
    """Copy the trained weights of `sharded` (a `shard_for_training` copy) into `plain`, then move
    `plain` to `device`; every process must call it (each sharded tensor is all-gathered, one at
    a time). `trainable_only`: the parameters that require grad (an in-task checkpoint: the frozen
    ones are still those `sharded` was copied from)."""
    target = dict(plain.named_parameters())
    for name, param in sharded.named_parameters():  # the same names: fully_shard keeps them
        if trainable_only and not param.requires_grad:
            continue
        target[name].copy_(full_value(param).to(target[name].device, target[name].dtype))
    plain.to(device)


def shard_like(template: torch.Tensor, whole: torch.Tensor) -> torch.Tensor:
    """`whole` split across processes as the sharded `template` is (a DTensor on its mesh and
    placements), an ordinary tensor as it is. No communication: every process holds `whole` (read
    from the same file) and keeps its own part."""
    if not is_sharded(template):
        return whole
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(whole.to(template.device), template.device_mesh, template.placements, src_data_rank=None)


@torch.no_grad()
def scatter_into(plain: torch.nn.Module, sharded: torch.nn.Module, trainable_only: bool = False) -> None:
    """The inverse of `gather_into`: the weights of `plain` into each process's shards of
    `sharded` (a `shard_for_training` copy of it), e.g. after an in-task checkpoint was loaded
    into `plain`."""
    source = dict(plain.named_parameters())
    for name, param in sharded.named_parameters():
        if trainable_only and not param.requires_grad:
            continue
        part = shard_like(param, source[name].detach())
        local_shard(param).copy_(local_shard(part))


def is_sharded(tensor: torch.Tensor) -> bool:
    return hasattr(tensor, "to_local")  # a DTensor (FSDP2's sharded parameters and their gradients)


def local_shard(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """This process's part of a sharded tensor (a view: in-place updates reach the parameter),
    an ordinary tensor as it is. Element-wise work on the local parts is exactly the sharded
    part of the element-wise work on the whole tensors."""
    return tensor.to_local() if tensor is not None and is_sharded(tensor) else tensor


def sum_over_shards(values: torch.Tensor, sharded: bool) -> torch.Tensor:
    """Per-shard sums (e.g. L1 norms of local parts) made whole: the sum over all processes."""
    if sharded:
        values = values.clone()
        torch.distributed.all_reduce(values, op=torch.distributed.ReduceOp.SUM)
    return values


# -- DeepSpeed ZeRO-2/3 (train.engine=deepspeed-zero2 | deepspeed-zero3) ---------------------------
#
# GPU machines only. As with fsdp, the whole model waits in CPU memory between stages; each stage
# trains a copy that Accelerate hands to deepspeed.initialize together with the stage's optimizer
# and scheduler (fit.train_task prepares them together); the engine scales the loss by the
# accumulation steps and, at the last micro-batch, clips, steps and zeroes the gradients itself
# (`backward`). At the stage's end the trained weights are gathered back into the whole model
# (`gather_into`: the fp32 master weights, ZeRO-3's gathered; the frozen ones never changed and
# stay as they were, not rounded to bf16).
# In-task checkpoints are not written: DeepSpeed's own checkpoint format pickles.
# NOT RUN on the machine mcit is developed on (no GPU, deepspeed not installed): bench/gpu_check.py
# runs this path where a GPU and deepspeed are present.

DEEPSPEED_ENGINES = {"deepspeed-zero2": 2, "deepspeed-zero3": 3}
# Methods that read nothing of the weights or gradients between steps: under ZeRO the gradients
# are partitioned and zeroed inside the engine's step, and ZeRO-3 partitions the weights too.
DEEPSPEED_METHODS = ("lora", "full")


def check_deepspeed(cfg) -> None:
    """train.engine=deepspeed-*: refused before any work where it cannot run (no CUDA GPU, the
    deepspeed package missing) or with what it cannot follow; one line naming the setting."""
    engine = cfg.train.engine
    if engine not in DEEPSPEED_ENGINES:
        return
    import importlib.util

    if not torch.cuda.is_available():
        raise ConfigError(f"train.engine={engine} needs a CUDA GPU and this machine has none; use "
                          "train.engine=fsdp to shard on CPU processes")
    if importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(f"train.engine={engine} needs the deepspeed package, which is not installed "
                          "(pip install deepspeed); or use train.engine=fsdp")
    unsupported = [m for m in (cfg.method.name, *cfg.method.with_) if m not in DEEPSPEED_METHODS]
    if unsupported:
        raise ConfigError(f"train.engine={engine}: method {unsupported[0]!r} is not supported with DeepSpeed "
                          f"(supported: {', '.join(DEEPSPEED_METHODS)}); use train.engine=fsdp or ddp")
    if cfg.emt.every_steps > 0:
        raise ConfigError(f"emt.every_steps evaluates mid-stage on the whole model, which train.engine={engine} "
                          "only gathers at the end of a stage: use train.engine=ddp for EMT tracking")


def deepspeed_config(cfg, num_processes: int, bf16: bool) -> dict:
    """The DeepSpeed config mcit hands to Accelerate for train.engine=deepspeed-zero2|3, every value
    from the run's own settings (none left "auto", so config.yaml says what ran): the global batch
    split over the processes, train.grad_accum, train.max_grad_norm, bf16 where the GPU has it
    (fp16 with loss scaling for model.dtype=float16), and train.fsdp_cpu_offload as ZeRO-Offload
    (the optimizer state; for ZeRO-3 the parameters too)."""
    tc = cfg.train
    stage = DEEPSPEED_ENGINES[tc.engine]
    offload = {"device": "cpu", "pin_memory": True} if tc.fsdp_cpu_offload else {"device": "none"}
    zero: dict[str, Any] = {"stage": stage, "offload_optimizer": dict(offload)}
    if stage == 3:
        zero["offload_param"] = dict(offload)
    fp16 = cfg.model.dtype == "float16"
    config = {
        "train_batch_size": tc.batch_size * tc.grad_accum,
        "train_micro_batch_size_per_gpu": per_process_batch(tc.batch_size, num_processes),
        "gradient_accumulation_steps": tc.grad_accum,
        "gradient_clipping": tc.max_grad_norm,
        "bf16": {"enabled": bf16 and not fp16},
        "fp16": {"enabled": fp16},
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,  # mcit's own AdamW (torch's), not a DeepSpeed one
    }
    if tc.fsdp_cpu_offload:  # the same AdamW steps on the offloaded state (DeepSpeed asks for its CPUAdam)
        config["zero_force_ds_cpu_optimizer"] = False
    return config


def accelerator_options(cfg) -> dict:
    """Extra Accelerator arguments for the engine: the DeepSpeed plugin for deepspeed-zero2|3
    (after `check_deepspeed`), nothing otherwise. The launcher (torchrun, accelerate launch) sets
    WORLD_SIZE, which the per-GPU micro-batch needs before the accelerator exists."""
    if cfg.train.engine not in DEEPSPEED_ENGINES:
        return {}
    import os

    from accelerate.utils import DeepSpeedPlugin

    bf16 = torch.cuda.is_bf16_supported()
    config = deepspeed_config(cfg, int(os.environ.get("WORLD_SIZE", "1")), bf16)
    precision = "fp16" if config["fp16"]["enabled"] else "bf16" if config["bf16"]["enabled"] else "no"
    # zero3_init_flag off: the loop keeps the whole model between stages (see whole_models)
    return {"deepspeed_plugin": DeepSpeedPlugin(hf_ds_config=config, zero3_init_flag=False),
            "mixed_precision": precision}


@contextmanager
def whole_models(cfg, acc):
    """Models built or loaded in the block are whole. While Accelerate's ZeRO-3 config is active,
    transformers builds models already partitioned (deepspeed.zero.Init); the loop keeps the whole
    model between stages and lets each stage's engine partition its own copy."""
    if not uses_deepspeed(cfg, acc):
        yield
        return
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        acc.state.deepspeed_plugin.set_deepspeed_weakref()


def _deepspeed_full_value(param: torch.Tensor) -> torch.Tensor:
    """The optimizer's fp32 master copy of a trained parameter (with bf16 on, the engine's module
    holds bf16 weights), else the parameter itself, gathered under ZeRO-3. Both are collectives
    under ZeRO-3."""
    import deepspeed
    from deepspeed.utils import safe_get_full_fp32_param

    master = safe_get_full_fp32_param(param)
    if master is not None:
        return master
    with deepspeed.zero.GatheredParameters([param]):
        return param.detach().clone()


def uses_deepspeed(cfg, acc) -> bool:
    return cfg.train.engine in DEEPSPEED_ENGINES and acc.distributed_type == DistributedType.DEEPSPEED


def engine_in_use(cfg, acc) -> str:
    """What environment.json records: the engine that trained the stages."""
    if uses_fsdp(cfg, acc):
        return "fsdp"
    return cfg.train.engine if uses_deepspeed(cfg, acc) else "ddp"


def copy_for_engine(plain: torch.nn.Module) -> torch.nn.Module:
    """The copy a stage's DeepSpeed engine trains (ZeRO-3 partitions it in place, bf16 casts it);
    made in CPU memory, where `plain` waits, as `shard_for_training` does."""
    import copy

    plain.to("cpu")
    return copy.deepcopy(plain)


def backward(acc, loss: torch.Tensor, last_micro: bool, grad_accum: int) -> None:
    """The backward pass of one of `grad_accum` micro-batches. DeepSpeed: the engine divides by its
    gradient_accumulation_steps itself and, at the last micro-batch, clips, steps the optimizer and
    the scheduler and zeroes the gradients (the loop's own calls are Accelerate's no-ops there)."""
    engine = getattr(acc, "deepspeed_engine_wrapped", None)
    if engine is None:
        acc.backward(loss / grad_accum)
    else:
        engine.backward(loss, sync_gradients=last_micro)
