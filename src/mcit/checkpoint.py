"""In-task checkpoints (`train.checkpoint_every`): a stage cut off half-way continues from its
last checkpoint instead of from its start, and ends exactly where an uninterrupted run ends.

`<stage>/checkpoint/` holds, after optimizer step k:

    model/                       the trainable weights, written by the method's save_model
    optimizer.safetensors        every tensor of the optimizer state ("state/<param index>/<key>")
    method_state.safetensors     the method's stage state and its in-task state (task_state_dict)
    rng.safetensors              each process's torch (and CUDA) generator and numpy key
    state.json                   step k, the losses so far, the optimizer's param groups and
                                 scalars, the scheduler, python/numpy RNG scalars, the method's
                                 JSON state, the task's log/series and the sha256 of every other
                                 file of the checkpoint (checked before it is used); written last

Under train.engine=fsdp (`whole`: the unsharded model the stage's sharded copy was made from) the
files are the same ordinary ones: the sharded weights are gathered into the whole model, which
the method saves as always; each optimizer tensor is gathered whole (DTensor.full_tensor) and split
again on loading (`distributed.shard_like`). A method's in-task state holds this process's shards
(an EMA shadow of a sharded weight), so it is kept per process, as "task/<rank>/<key>", like
the RNG states.

Tensors go to safetensors and the rest to JSON: nothing is pickled. The data order needs no
state of its own: the sampler is seeded per stage, so resuming replays the first k x grad_accum
batches of the same seeded order (collation only, no forward pass) to reach the position.

A checkpoint is written into a temporary sibling folder and swapped in with renames; a reader
takes `checkpoint/` if complete, else the previous one kept as `.checkpoint.old/` during the
swap. Only the main process writes; the RNG states of the others are gathered to it.
"""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

# torch, numpy, accelerate and safetensors are imported where tensors are handled: `mcit run
# --resume` checks a checkpoint (`verify`) before any of them is loaded.
from .rundir import RunError, error_summary, hash_files, load_json, save_json, verify_files

NAME = "checkpoint"
_OLD = ".checkpoint.old"
_STATE = "state.json"


def find(stage: Path) -> Path | None:
    """The stage's complete checkpoint folder, or None."""
    for candidate in (Path(stage) / NAME, Path(stage) / _OLD):
        if (candidate / _STATE).is_file():
            return candidate
    return None


def remove(stage: Path) -> None:
    """The stage's checkpoint, the previous one and any half-written one (a process killed mid-save)."""
    stage = Path(stage)
    for path in [stage / NAME, stage / _OLD, *stage.glob(f".{NAME}.tmp-*")]:
        shutil.rmtree(path, ignore_errors=True)


def saved_processes(directory: Path) -> int:
    return int(load_json(Path(directory) / _STATE)["num_processes"])


def saved_step(directory: Path) -> int:
    return int(load_json(Path(directory) / _STATE)["step"])


def verify(directory: Path) -> None:
    """RunError naming a file of the checkpoint that is missing or damaged (its sha256 differs
    from the one state.json recorded), or a state.json that cannot be read; and how to go on."""
    directory = Path(directory)
    advice = (f"delete the folder {directory} to redo stage {directory.parent.name} from its start, "
              "then --resume again")
    try:
        state = load_json(directory / _STATE)
    except RunError as exc:
        raise RunError(f"{exc}; {advice}") from None
    files = state.get("files") if isinstance(state, dict) else None
    if not isinstance(state, dict) or (files is not None and not isinstance(files, dict)):
        raise RunError(f"{directory / _STATE} is damaged; {advice}")
    if files is not None:  # checkpoints written before hashes were recorded are taken as they are
        verify_files(directory, files, directory / _STATE, advice)


# -- RNG --------------------------------------------------------------------------------------

def _rng_state() -> tuple[dict, dict]:
    import numpy as np
    import torch

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors = {"torch": torch.get_rng_state(), "numpy_keys": torch.from_numpy(keys.astype(np.int64))}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda{i}"] = s
    version, words, gauss_next = random.getstate()
    scalars = {"numpy": [kind, int(pos), int(has_gauss), float(cached)],
               "python": [version, list(words), gauss_next]}
    return tensors, scalars


def _set_rng_state(tensors: dict, scalars: dict) -> None:
    import numpy as np
    import torch

    torch.set_rng_state(tensors["torch"].to(torch.uint8))
    kind, pos, has_gauss, cached = scalars["numpy"]
    np.random.set_state((kind, tensors["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, words, gauss_next = scalars["python"]
    random.setstate((version, tuple(words), gauss_next))
    cuda = [tensors[f"cuda{i}"] for i in range(len(tensors)) if f"cuda{i}" in tensors]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.to(torch.uint8) for s in cuda])


# -- optimizer ----------------------------------------------------------------------------------

def _flatten_optimizer(state: dict) -> tuple[dict, dict]:
    import torch

    from .distributed import full_value

    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):  # fsdp: the whole tensor (a collective, in the same order everywhere)
                tensors[f"state/{index}/{key}"] = full_value(value.detach()).contiguous().cpu()
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict, meta: dict, params: list) -> dict:
    """The optimizer state dict; `params` in the optimizer's order: a whole tensor saved for a
    sharded parameter is split as the parameter is (the step counter stays as it is)."""
    from .distributed import shard_like

    state: dict[int, dict] = {}
    for name, value in tensors.items():
        _, index, key = name.split("/", 2)
        param = params[int(index)]
        if value.shape == param.shape:
            value = shard_like(param, value)
        state.setdefault(int(index), {})[key] = value
    for index, values in meta["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    groups = [dict(g) for g in meta["param_groups"]]
    for g in groups:  # JSON made tuples lists; AdamW reads betas either way, keep the original type
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
    return {"state": state, "param_groups": groups}


# -- save / load --------------------------------------------------------------------------------

def save(stage: Path, acc, *, model, method, ctx, optimizer, scheduler, step: int, batches: int,
         losses: list[float], extras: list[float], whole=None) -> None:
    """Write the checkpoint after optimizer step `step`. A collective: every process calls it
    (their RNG states are gathered; with `whole`, fsdp's sharded weights, optimizer state and
    per-process method state too); only the main process writes."""
    from accelerate.utils import gather_object
    from safetensors.torch import save_file

    rng = _rng_state()
    every = gather_object([rng]) if acc.num_processes > 1 else [rng]
    per_process = whole is not None  # fsdp: collectives every process joins, before the others return
    if per_process:
        from .distributed import gather_into

        gather_into(model, whole, "cpu", trainable_only=True)  # `whole` waits in CPU memory during the stage
        model = whole
    if per_process or acc.is_main_process:
        opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
        task_state = _on_cpu(method.task_state_dict())
        task_parts = gather_object([task_state]) if per_process else [task_state]
    if not acc.is_main_process:
        return
    stage = Path(stage)
    stage.mkdir(parents=True, exist_ok=True)
    tmp = stage / f".{NAME}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    method.save_model(model, tmp / "model")
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    method_tensors = {f"stage/{k}": v for k, v in method.state_dict().items()}
    for rank, part in enumerate(task_parts):
        method_tensors |= {f"task/{rank}/{k}" if per_process else f"task/{k}": v for k, v in part.items()}
    save_file(_on_cpu(method_tensors), str(tmp / "method_state.safetensors"))
    save_file({f"{rank}/{k}": v.contiguous() for rank, (tensors, _) in enumerate(every) for k, v in tensors.items()},
              str(tmp / "rng.safetensors"))
    files = hash_files(tmp, tmp)
    save_json(tmp / _STATE, {
        "files": files, "step": step, "batches_drawn": batches, "num_processes": acc.num_processes,
        "losses": losses, "extras": extras, "log": ctx.log, "series": ctx.series,
        "optimizer": opt_meta, "scheduler": scheduler.state_dict(),
        "rng": [scalars for _, scalars in every], "method_json": method.json_state(),
        "task_state_per_process": per_process,
    })  # last: a folder without state.json is incomplete
    # Swap in: the previous checkpoint stays readable as .checkpoint.old until the new one is in place.
    current, old = stage / NAME, stage / _OLD
    shutil.rmtree(old, ignore_errors=True)
    if current.exists():
        os.replace(current, old)
    os.replace(tmp, current)
    shutil.rmtree(old, ignore_errors=True)


def load(directory: Path, acc, *, model, method, ctx, optimizer, scheduler, whole=None) -> dict:
    """Restore weights, optimizer, scheduler and method state (every process); returns the JSON
    state. RNG states are restored separately (`restore_rng`), after the data order is replayed.
    With `whole` (fsdp), the weights are loaded into it and split into `model`'s shards.
    RunError when the files are damaged or do not fit the model (nothing is half-restored that
    matters: the run stops)."""
    directory = Path(directory)
    verify(directory)
    try:
        return _load(directory, model=model, method=method, ctx=ctx, optimizer=optimizer, scheduler=scheduler,
                     whole=whole, rank=acc.process_index)
    except Exception as exc:  # noqa: BLE001 - whatever the loader trips on, this folder does not fit the run
        raise RunError(f"{directory}: the in-task checkpoint does not fit this run's model and method "
                       f"({error_summary(exc)}); delete the folder to redo stage "
                       f"{directory.parent.name} from its start") from None


def _load(directory: Path, *, model, method, ctx, optimizer, scheduler, whole, rank: int) -> dict:
    from safetensors.torch import load_file

    state = load_json(directory / _STATE)
    if whole is not None:  # fsdp: the method loads the whole model, each process keeps its shards
        from .distributed import scatter_into

        method.load_model(whole, directory / "model")
        scatter_into(whole, model, trainable_only=True)  # the frozen shards are those of `whole` already
    else:
        method.load_model(model, directory / "model")
    tensors = load_file(str(directory / "method_state.safetensors"))
    stage_part = {k.removeprefix("stage/"): v for k, v in tensors.items() if k.startswith("stage/")}
    if stage_part:
        method.load_state_dict(stage_part)
    if state["method_json"]:
        method.load_json_state(state["method_json"])
    ctx.log.update(state["log"])
    ctx.series.update(state["series"])  # before the task state: a method may keep appending to its series
    ctx.step = state["step"]
    task = f"task/{rank}/" if state.get("task_state_per_process") else "task/"
    method.load_task_state_dict(ctx, {k.removeprefix(task): v for k, v in tensors.items() if k.startswith(task)})
    params = [p for group in optimizer.param_groups for p in group["params"]]  # the state dict's numbering
    optimizer.load_state_dict(_unflatten_optimizer(load_file(str(directory / "optimizer.safetensors")),
                                                   state["optimizer"], params))
    scheduler.load_state_dict(state["scheduler"])
    return state


def _on_cpu(tensors: dict) -> dict:
    return {k: v.detach().contiguous().cpu() for k, v in tensors.items()}


def restore_rng(directory: Path, state: dict, rank: int) -> None:
    from safetensors.torch import load_file

    tensors = load_file(str(Path(directory) / "rng.safetensors"))
    mine = {k.split("/", 1)[1]: v for k, v in tensors.items() if k.split("/", 1)[0] == str(rank)}
    _set_rng_state(mine, state["rng"][rank])
