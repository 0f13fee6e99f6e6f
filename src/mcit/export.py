"""`mcit export RUN [--stage N] --merge OUT`: one trained stage as a standalone Hugging Face model.

The stage is rebuilt the way `mcit run` left it (base model, the method's set-up, the stage's
saved weights: rundir.restore_stage), its adapters are merged into the weights (PEFT's
merge_and_unload; MoELoRA's own merge) and the result is written with save_pretrained together
with the base model's processor, so it loads with transformers alone.

A run records its base model in environment.json (``base_model``: path and sha256, see
``base_model_record``); export looks there first, then in mcit's cache, and otherwise says where
the base model was.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from .rundir import ENVIRONMENT_FILE, RunError, load_json

# Base methods whose stage is one set of weights once merged, and how; every other base says why not.
MERGEABLE = {
    "lora": "PEFT merge_and_unload (LoRA and the projector copy it trained)",
    "multitask": "PEFT merge_and_unload (one LoRA trained on all tasks)",
    "lcia-ema": "PEFT merge_and_unload (one LoRA and its projector copy, as lora; no instruction groups)",
    "olora": "PEFT merge_and_unload of every task's LoRA (all active and summed at inference)",
    "moelora": "W0 + scale * B A of its single expert (exact only with method.moe_experts=1)",
    "projector": "nothing to merge: the trained projector is written into the model",
    "full": "nothing to merge: the stage holds full weights",
}
NOT_MERGEABLE = {
    "lora-taskid": "lora-taskid answers each task with that task's own adapter (the task id is given at test "
                   "time): no single set of weights answers every task as the stage did",
    "lcia": "lcia routes each question to an instruction group's adapter by its instruction: no single set of "
            "weights answers every task as the stage did",
}


class ExportError(RunError):
    """The stage cannot be exported as asked (a user error: exit 2)."""


# ------------------------------------------------------------------------------ the base model


def model_fingerprint(folder: str | Path) -> str:
    """sha256 of a checkpoint folder's config.json and weight files (*.safetensors), by name.
    The processor files are left out: they do not change what the weights compute."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for path in sorted([folder / "config.json", *folder.glob("*.safetensors")]):
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as fh:
            digest.update(hashlib.file_digest(fh, "sha256").digest())
    return digest.hexdigest()


def base_model_record(checkpoint: str | Path) -> dict[str, str]:
    """What a run saves of its base model (environment.json ``base_model``): path and sha256."""
    checkpoint = Path(checkpoint).resolve()
    return {"path": str(checkpoint), "sha256": model_fingerprint(checkpoint)}


def _cache_candidates() -> list[Path]:
    from .data.stream import cache_dir

    root = cache_dir()
    return sorted(p for p in root.iterdir() if (p / "config.json").is_file()) if root.is_dir() else []


def find_base_model(run: Path, given: str | Path | None = None) -> Path:
    """The run's base model: ``given``, else the recorded path if it still holds the same weights,
    else a folder of mcit's cache that does; ExportError saying where it was otherwise."""
    env = load_json(run / ENVIRONMENT_FILE)
    record = env.get("base_model") or {}
    recorded, sha = record.get("path") or env.get("checkpoint"), record.get("sha256")
    if given is not None:
        given = Path(given)
        if not (given / "config.json").is_file():
            raise ExportError(f"--base-model: {given} is not a checkpoint folder (no config.json)")
        if sha and model_fingerprint(given) != sha:
            raise ExportError(f"--base-model: {given} is not the run's base model (sha256 differs from "
                              f"{sha[:12]}… recorded in {run / ENVIRONMENT_FILE})")
        return given
    if recorded and (Path(recorded) / "config.json").is_file():
        if not sha or model_fingerprint(recorded) == sha:  # a run from before the hash was saved: trust the path
            return Path(recorded)
    if sha:
        for candidate in _cache_candidates():
            if model_fingerprint(candidate) == sha:
                return candidate
    where = f"it was at {recorded}" if recorded else "environment.json does not say where it was"
    state = " (that folder now holds other weights)" if recorded and Path(recorded).is_dir() else ""
    raise ExportError(f"{run}: base model not found: {where}{state}" + (f", sha256 {sha[:12]}…" if sha else "")
                      + "; give its folder with --base-model")


# ------------------------------------------------------------------------------ the stage


def stage_folder(run: Path, stage: int | None, stage_names: list[str]) -> Path:
    """The folder of 1-based ``stage`` (default: the last completed one); it must be done."""
    from .rundir import completed_stages, stage_dir

    done = completed_stages(run, stage_names)
    if not done:
        raise ExportError(f"{run}: no stage has completed; nothing to export")
    if stage is None:
        stage = len(done)
    if not 1 <= stage <= len(stage_names):
        raise ExportError(f"--stage {stage}: the run has stages 1 to {len(stage_names)}")
    if stage > len(done):
        raise ExportError(f"--stage {stage}: that stage has not completed (the run completed {len(done)})")
    return stage_dir(run, stage - 1, stage_names[stage - 1])


def check_mergeable(method_cfg) -> str:
    """The base method's name if its stage merges into one model; ExportError saying why otherwise."""
    from .methods import resolve

    base = resolve(method_cfg).base.name
    if base in NOT_MERGEABLE:
        raise ExportError(f"method {base}: cannot be merged into one model: {NOT_MERGEABLE[base]}")
    if base not in MERGEABLE:
        raise ExportError(f"method {base}: mcit does not know how to merge its stages (mergeable: "
                          f"{', '.join(MERGEABLE)})")
    if base == "moelora" and method_cfg.moe_experts > 1:
        raise ExportError(f"method moelora with moe_experts={method_cfg.moe_experts}: a per-token router mixes "
                          "the experts differently for every input, so no merged weight matrix answers as the "
                          "stage did (only a single-expert MoELoRA merges exactly)")
    return base


def merged_model(model):
    """The plain transformers model of a restored stage, adapters folded into the weights."""
    from peft import PeftModel

    from .methods.moelora import merge_moelora, moelora_layers

    if isinstance(model, PeftModel):
        return model.merge_and_unload()
    if moelora_layers(model):  # its layers replaced by plain nn.Linear (whatever additions wrap the method)
        return merge_moelora(model)
    return model


def export_stage(run: str | Path, out: str | Path, stage: int | None = None, base_model: str | Path | None = None,
                 log=print) -> Path:
    """Write the merged model of one stage of ``run`` into ``out`` (which must not exist yet)."""
    from .config import load_config
    from .methods import build_method
    from .models.load import load_checkpoint
    from .report.browse import require_run
    from .rundir import restore_stage

    run, out = require_run(run), Path(out)
    if out.exists():
        raise ExportError(f"--merge: {out} already exists; give a new folder")
    cfg = load_config(run / "config.yaml", [])
    base = check_mergeable(cfg.method)
    stage = stage_folder(run, stage, list(load_json(run / ENVIRONMENT_FILE).get("stages") or []))
    checkpoint = find_base_model(run, base_model)
    log(f"export: {stage} on base model {checkpoint} ({base}: {MERGEABLE[base]})")

    model, processor = load_checkpoint(checkpoint, cfg.model.dtype)
    method = build_method(cfg.method)
    model = method.setup(model, cfg)
    restore_stage(method, model, stage)
    model = merged_model(model).eval()

    # Written beside the target and renamed into place, so a failed export leaves no half model.
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"export: wrote {out}")
    return out
