"""Per-task LoRA with an oracle task id: one fresh PEFT LoRA adapter per task, all kept on one
model; at evaluation the task's own adapter answers that task's questions. An isolation
reference: training task t touches only adapter t, so no earlier task can be forgotten.

Also home of `PerTaskLoRA`, the machinery shared with O-LoRA (methods/olora.py): adapter
names, seeded creation, "only this adapter trains", and saving/loading every adapter.

Choices (documented here because they change the numbers):
  * Projector: per task. With method.train_projector=true the projector rides in PEFT's
    `modules_to_save`, which keeps one copy per adapter name, each copied from the *base*
    projector when its adapter is created; so task t trains its own projector copy and the
    copies of earlier tasks stay untouched. With train_projector=false it is frozen (shared,
    but never trained). Either way, nothing shared is ever updated: isolation is exact.
  * A task that has no adapter yet (upper triangle, eval.upper_triangle=true) is answered with
    the most recent adapter (the one just trained), i.e. a "nearest in time" guess; before any
    stage (zero-shot row) the model is used as it is (a fresh adapter: B = 0, the base model).
  * Adapters are named by stream position, "task0", "task1", ... (task names may hold
    characters a module name cannot); `adapters.json` in each stage's model folder maps them to
    tasks so a resumed run can recreate them before loading their weights.

Checkpoint layout (stages/NN-<task>/model/): `<adapter>/adapter_model.safetensors` and
`<adapter>/adapter_config.json` per adapter (PEFT's own multi-adapter layout, loadable with
`PeftModel.load_adapter`), plus `adapters.json`.
"""
from __future__ import annotations

import copy
import json
import re
from contextlib import contextmanager
from pathlib import Path

import torch
from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file

from ..io import atomic_write_text
from ..models.adapters import is_projector, set_trainable
from .lora import SequentialLoRA

MANIFEST = "adapters.json"
WEIGHTS = "adapter_model.safetensors"

# A PEFT parameter name carries its adapter's name right after the container that holds it:
# "...q_proj.lora_A.task1.weight", "...multi_modal_projector.modules_to_save.task1.linear_1.bias".
_OWNER = re.compile(r"\.(?:lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector|modules_to_save)"
                    r"\.([^.]+)(?:\.|$)")


def adapter_name(index: int) -> str:
    return f"task{index}"


def adapter_of(param_name: str) -> str | None:
    """The adapter a parameter belongs to, None for a base-model parameter."""
    m = _OWNER.search(param_name)
    return m.group(1) if m else None


def unwrap(ctx) -> torch.nn.Module:
    """The PEFT model behind ctx.model (Accelerate may have wrapped it, e.g. in DDP)."""
    return ctx.accelerator.unwrap_model(ctx.model) if ctx.accelerator is not None else ctx.model


def activate(model, names: list[str], inference_mode: bool = False) -> None:
    """Make exactly `names` the active adapters (summed by every LoRA layer when several).

    PeftModel.set_adapter takes one name only; the tuner's set_adapter takes a list.
    PeftModel.active_adapter must stay one name (it indexes peft_config in forward), so it is
    set to the newest; all adapters share one config, so which one does not matter."""
    model.base_model.set_adapter(names[0] if len(names) == 1 else list(names), inference_mode=inference_mode)
    model.active_adapter = names[-1]


def active_adapters(model) -> list[str]:
    return list(model.base_model.active_adapters)


@contextmanager
def _seeded(seed: int):
    """Adapter init (kaiming A) draws from the global RNG; a private seed makes a new adapter the
    same in an uninterrupted and in a resumed run, whatever ran before."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


class PerTaskLoRA(SequentialLoRA):
    """One LoRA adapter per task on one PEFT model; subclasses choose which adapters are active
    when training and at inference (`train_active`, `inference_active`) and whether the shared
    (base) projector trains (`shared_projector_trains`)."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.adapters: dict[str, str] = {}  # adapter name -> task, in stream order
        self._config = None
        self._seed = 0

    # -- what subclasses decide ------------------------------------------------------------
    def train_active(self, current: str) -> list[str]:
        return [current]

    def inference_active(self) -> list[str]:
        return list(self.adapters)[-1:]

    def shared_projector_trains(self) -> bool:
        return False

    # -- hooks -------------------------------------------------------------------------------
    def setup(self, model, run_cfg):
        set_trainable(model, language_model=False, projector=False)
        # Built once from the plain model: once wrapped, the target layers are no longer
        # nn.Linear and target_regex would not find them again.
        self._config = self.lora_config(model)
        self._seed = int(run_cfg.seed)
        with _seeded(self._adapter_seed(0)):
            peft = get_peft_model(model, copy.deepcopy(self._config), adapter_name=adapter_name(0))
        self.set_trainable_adapter(peft, adapter_name(0))
        return peft

    def before_task(self, ctx) -> None:
        model = unwrap(ctx)
        name = self._ensure_adapter(model, ctx.index)
        self.adapters.pop(name, None)  # a redone stage keeps its place at the end
        self.adapters[name] = ctx.task
        activate(model, self.train_active(name))
        self.set_trainable_adapter(model, name)

    def set_trainable_adapter(self, model, current: str | None) -> None:
        """requires_grad on `current`'s parameters (LoRA and its projector copy) and, if the
        method trains it, the shared projector; everything else frozen. Set explicitly because
        PEFT's set_adapter/add_adapter flip flags on every *active* adapter and re-freeze
        non-adapter modules."""
        shared = self.shared_projector_trains()
        for n, p in model.named_parameters():
            owner = adapter_of(n)
            if owner is not None:
                p.requires_grad_(owner == current)
            else:
                p.requires_grad_(shared and is_projector(n) and "original_module" not in n.split("."))

    def _adapter_seed(self, index: int) -> int:
        return self._seed * 1000 + 997 + index  # apart from fit's seed*1000 + t

    def _ensure_adapter(self, model, index: int) -> str:
        name = adapter_name(index)
        if name not in model.peft_config:
            with _seeded(self._adapter_seed(index)):
                model.add_adapter(name, copy.deepcopy(self._config))
        return name

    def json_state(self) -> dict:
        return {"adapters": dict(self.adapters)}

    def load_json_state(self, state: dict) -> None:
        # load_model (called first on resume) already restored the adapters from the checkpoint.
        saved = state.get("adapters")
        if saved is not None and saved != self.adapters:
            raise RuntimeError(f"method state lists adapters {saved}, the checkpoint {self.adapters}")

    # -- checkpoints -------------------------------------------------------------------------
    def save_model(self, model, directory: Path) -> None:
        directory = Path(directory)
        names = list(self.adapters)
        if names:
            model.save_pretrained(directory, selected_adapters=names, safe_serialization=True)
        self.save_extra(model, directory)
        manifest = {"adapters": [{"name": n, "task": t} for n, t in self.adapters.items()],
                    "active": self.inference_active()}
        atomic_write_text(directory / MANIFEST, json.dumps(manifest, indent=2) + "\n")

    def save_extra(self, model, directory: Path) -> None:
        """Weights outside the PEFT adapters (O-LoRA's shared projector)."""

    def load_extra(self, model, directory: Path) -> None:
        pass

    def load_model(self, model, directory: Path) -> None:
        """Recreate every adapter a saved stage had (on a freshly set-up model) and load its
        weights; the adapter set of that stage becomes active, the newest adapter trainable."""
        directory = Path(directory)
        manifest = json.loads((directory / MANIFEST).read_text())
        adapters = {}
        for entry in manifest["adapters"]:
            name = entry["name"]
            self._ensure_adapter(model, int(name.removeprefix("task")))
            saved = load_file(str(directory / name / WEIGHTS))
            expected = set(get_peft_model_state_dict(model, adapter_name=name))
            if set(saved) != expected:
                raise RuntimeError(f"{directory / name}: saved adapter keys differ from the model's "
                                   f"(missing {sorted(expected - set(saved))[:3]}, "
                                   f"unexpected {sorted(set(saved) - expected)[:3]})")
            set_peft_model_state_dict(model, saved, adapter_name=name)
            adapters[name] = entry["task"]
        self.adapters = adapters
        self.load_extra(model, directory)
        if adapters:
            activate(model, self.inference_active())
            self.set_trainable_adapter(model, list(adapters)[-1])


class TaskIdLoRA(PerTaskLoRA):
    name = "lora-taskid"

    def adapter_for(self, task: str) -> str | None:
        """The adapter trained on `task` (the latest, should a task recur), else the most recent
        one (a task not trained yet), else None (nothing trained: the model as it is)."""
        for name, trained_on in reversed(self.adapters.items()):
            if trained_on == task:
                return name
        return next(reversed(self.adapters), None)

    def eval_routes(self, model, task, samples):
        name = self.adapter_for(task)
        if name is None:
            return super().eval_routes(model, task, samples)
        return [(samples, self.using(model, name))]

    @contextmanager
    def using(self, model, name: str):
        """`name` alone active (its LoRA and its projector copy) inside; on exit the previous
        active adapters and every requires_grad flag come back."""
        previous = active_adapters(model)
        flags = [(p, p.requires_grad) for p in model.parameters()]
        activate(model, [name], inference_mode=True)  # nothing trains while evaluating
        try:
            yield
        finally:
            activate(model, previous)
            for p, flag in flags:
                p.requires_grad_(flag)
