"""Methods as plugins that combine: a base (what trains) plus additions (`method.with`), methods
from outside mcit by dotted path or entry point with their own settings (`method.options`), the
combinations refused with their reason, old flat keys and saved configs, range errors at load."""
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_end_to_end import SMALL as E2E_SMALL
from test_end_to_end import cache  # noqa: F401  (a fixture)

from mcit.cli import DEFAULT_CONFIG, main
from mcit.config import ConfigError, load_config
from mcit.methods import BUILTIN, Addition, TaskContext, build_method
from mcit.methods.base import Method
from mcit.methods.registry import settings_markdown

# test_end_to_end's small run without its gradient accumulation and zero-shot row: faster, same loop.
SMALL = [a for a in E2E_SMALL if a != "train.grad_accum=2"] + ["eval.zero_shot=false"]

PLUGIN = '''
"""Methods from outside mcit, as a user would write them."""
from dataclasses import dataclass

from mcit.methods import Addition, Range, setting
from mcit.methods.lora import SequentialLoRA


@dataclass
class L2Settings:
    l2_weight: float = setting(0.5, "weight of an L2 pull of the trainable weights towards zero", check=Range(0))


class L2LoRA(SequentialLoRA):
    """Sequential LoRA with an L2 penalty on the trainable weights."""

    name = "l2-lora"
    settings = L2Settings

    def extra_loss(self, ctx, batch, outputs):
        ctx.log["l2"] = self.options.l2_weight
        params = [p for p in ctx.model.parameters() if p.requires_grad]
        return self.options.l2_weight * sum((p.float() ** 2).sum() for p in params)


class StepCounter(Addition):
    """Counts optimizer steps; keeps the count as its state."""

    name = "step-counter"

    def __init__(self, cfg, **kwargs):
        super().__init__(cfg, **kwargs)
        self.steps = 0

    def after_step(self, ctx):
        super().after_step(ctx)
        self.steps += 1

    def own_json_state(self):
        return {"steps": self.steps}

    def load_own_json_state(self, state):
        self.steps = state.get("steps", 0)
'''


@pytest.fixture()
def plugin(tmp_path, monkeypatch):
    """`plugmod` importable from tmp_path, and an installed distribution declaring an entry point."""
    (tmp_path / "plugmod.py").write_text(PLUGIN)
    info = tmp_path / "mcit_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mcit-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[mcit.methods]\nstep-counter = plugmod:StepCounter\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("plugmod", None)


def _run(tmp_path, name, *extra):
    assert main(["run", *SMALL, f"output_dir={tmp_path / 'runs'}", f"name={name}", *extra]) == 0
    return tmp_path / "runs" / name


def _stage(run, n):
    return next((run / "stages").glob(f"{n:02d}-*"))


def _done(run, n):
    return json.loads((_stage(run, n) / "done.json").read_text())


# -------------------------------------------------------------------------------- outside mcit


def test_a_method_from_outside_mcit_runs_by_dotted_path(plugin, cache):
    run = _run(cache, "l2", "method.name=plugmod:L2LoRA", "method.options={l2_weight: 0.25}")
    for n in (1, 2):
        done = _done(run, n)
        assert done["method_log"] == {"l2": 0.25} and done["train"]["extra_loss_first"] > 0
    saved = load_config(run / "config.yaml")  # the saved config reloads, options kept
    assert saved.method.name == "plugmod:L2LoRA" and saved.method.options == {"l2_weight": 0.25}

    cfg = load_config(None, ["method.name=plugmod:L2LoRA"])
    assert cfg.method.options == {"l2_weight": 0.5}  # the declared default, filled in at load
    with pytest.raises(ConfigError, match=r"'method.options.l2_wieght'.*did you mean 'method.options.l2_weight'"):
        load_config(None, ["method.name=plugmod:L2LoRA", "method.options={l2_wieght: 1}"])
    with pytest.raises(ConfigError, match=r"method.options.l2_weight: must be >= 0, got -1"):
        load_config(None, ["method.name=plugmod:L2LoRA", "method.options={l2_weight: -1}"])
    with pytest.raises(ConfigError, match="no method in use declares options"):
        load_config(None, ["method.options={l2_weight: 1}"])


def test_an_addition_from_outside_mcit_loads_by_entry_point(plugin):
    cfg = load_config(None, ["method.name=moelora", "method.lora_r=4", "method.with=[step-counter, replay]"])
    method = build_method(cfg.method)
    assert [type(m).__name__ for m in _chain(method)] == ["Replay", "StepCounter", "MoELoRA"]
    counter = method.inner
    ctx = TaskContext(task="t", index=0, tasks=["t"], model=torch.nn.Linear(1, 1), accelerator=None)
    method.after_step(ctx)
    method.after_step(ctx)
    assert counter.steps == 2
    state = method.json_state()  # namespaced: each addition's keys apart
    assert state["step-counter/steps"] == 2 and "replay/buffer" in state
    again = build_method(cfg.method)
    again.load_json_state(json.loads(json.dumps(state)))
    assert again.inner.steps == 2


def _chain(method):
    out = [method]
    while isinstance(out[-1], Addition):
        out.append(out[-1].inner)
    return out


# -------------------------------------------------------------------------------- combinations


def test_moelora_with_replay_trains_on_earlier_samples(cache, monkeypatch):
    from mcit.methods.replay import Replay

    mixed = []
    original = Replay.train_samples

    def recording(self, ctx, samples):
        out = original(self, ctx, samples)
        mixed.append((ctx.task, [s.task for s in out]))
        return out

    monkeypatch.setattr(Replay, "train_samples", recording)
    run = _run(cache, "moe-replay", "method.name=moelora", "method.lora_r=4", "method.with=[replay]",
               "method.replay_size=10", "method.replay_ratio=0.5")
    assert mixed[0] == ("ImageNet", ["ImageNet"] * 24)
    assert mixed[1][0] == "VQAv2" and mixed[1][1].count("ImageNet") == 12  # round(0.5 * 24) from the buffer
    assert _done(run, 2)["method_log"] == {"replay_mixed": 12, "replay_buffer": 10}
    assert (_stage(run, 2) / "model" / "moelora_config.json").is_file()  # MoELoRA trained and saved
    state = json.loads((_stage(run, 1) / "method_state.json").read_text())
    assert {d["task"] for d in state["replay/buffer"]} == {"ImageNet"}

    # Resume: stage 2 redone from the namespaced state saved with stage 1 trains exactly as before.
    final = (_stage(run, 2) / "method_state.json").read_text()
    weights = load_file(str(_stage(run, 2) / "model" / "adapter_model.safetensors"))
    (_stage(run, 2) / "done.json").unlink()
    assert main(["run", "--resume", str(run)]) == 0
    assert (_stage(run, 2) / "method_state.json").read_text() == final
    again = load_file(str(_stage(run, 2) / "model" / "adapter_model.safetensors"))
    assert all(torch.equal(weights[k], again[k]) for k in weights)


def test_full_fine_tuning_with_ewc_penalises_every_language_model_weight(cache):
    run = _run(cache, "full-ewc", "method.name=full", "method.with=[ewc]", "method.ewc_lambda=1e6",
               "method.ewc_fisher_samples=8")
    assert (_stage(run, 2) / "model" / "model.safetensors").is_file()
    state = load_file(str(_stage(run, 1) / "method_state.safetensors"))
    assert {k.split("/")[1] for k in state} == {"fisher", "anchor"} and all(k.startswith("ewc/") for k in state)
    assert any("language_model" in k and "self_attn" in k for k in state)  # full weights, not adapters
    first, second = _done(run, 1), _done(run, 2)
    assert "extra_loss_first" not in first["train"]  # nothing to consolidate on the first task
    assert second["train"]["extra_loss_last"] > 0 and second["method_log"]["ewc_penalty_last"] > 0


def test_per_task_bases_take_additions(cache):
    """O-LoRA + LwF + EWC: the teacher is the previous stage, the penalty covers what still trains (the
    shared projector; earlier adapters are frozen). Task-id LoRA + replay + EMA: runs, buffer namespaced."""
    run = _run(cache, "olora", "method.name=olora", "method.with=[lwf, ewc]", "method.ewc_lambda=1e6",
               "method.ewc_fisher_samples=8", "method.lwf_lambda=10")
    log = _done(run, 2)["method_log"]
    assert log["lwf_kl_last"] >= 0 and log["ewc_penalty_last"] > 0 and "orth_loss_last" in log
    state = load_file(str(_stage(run, 2) / "method_state.safetensors"))
    assert any("task0" in k for k in state) and any("projector" in k for k in state)  # Fisher of both tasks
    run = _run(cache, "taskid", "method.name=lora-taskid", "method.with=[replay, ema]", "method.replay_size=6")
    state = json.loads((_stage(run, 2) / "method_state.json").read_text())
    assert len(state["replay/buffer"]) == 6 and "adapters" in state and _done(run, 2)["method_log"]["ema"]["updates"] > 0


def test_additions_run_after_the_base_and_an_averaging_one_first():
    method = build_method(load_config(None, ["method.with=[ewc, lwf, ema]"]).method)
    assert [type(m).__name__ for m in _chain(method)] == ["LwF", "EWC", "EMA", "SequentialLoRA"]
    assert [m.namespace for m in _chain(method)[:-1]] == ["lwf/", "ewc/", "ema/"]
    alone = build_method(load_config(None, ["method.name=ewc"]).method)  # the old name: the old state layout
    assert type(alone.inner).__name__ == "SequentialLoRA" and alone.namespace == ""


@pytest.mark.parametrize("overrides, reason", [
    (["method.name=lcia", "method.with=[ema]"], "lcia and ema both average the weights"),
    (["method.name=ema", "method.with=[ema]"], "'ema' would be added twice (it is already method.name)"),
    (["method.with=[replay, replay]"], "'replay' would be added twice (it is listed twice)"),
    (["method.name=multitask", "method.with=[replay]"], "multitask trains one joint stage"),
    (["method.with=[moelora]"], "'moelora' is a base method"),
    (["method.name=lcia", "method.with=[ewc]"], "lcia and ewc cannot be combined: lcia chooses the adapter"),
    (["method.name=lcia", "method.with=[lwf]"], "lcia and lwf cannot be combined"),
    (["method.name=lora-taskid", "method.with=[ewc]"], "nothing trained earlier is trained again"),
    (["method.name=lora-taskid", "method.with=[lwf]"], "teacher would be the base model"),
    (["method.with=[ewx]"], "unknown method.with 'ewx'; did you mean 'ewc'"),
    (["method.name=no_such_module:Thing"], "cannot import 'no_such_module'"),
    (["method.name=json:dumps"], "'json:dumps' is not a subclass of mcit.methods.Method"),
    (["method.name=moelora", "method.lora_r=6", "method.moe_experts=4"], "must be a multiple of method.moe_experts"),
])
def test_combinations_that_cannot_work_are_refused_with_the_reason(overrides, reason):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert reason in str(info.value)


def test_a_refusal_is_a_one_line_cli_error(cache, capsys):
    assert main(["run", "method.name=lcia", "method.with=[ema]", f"output_dir={cache / 'runs'}"]) == 2
    err = capsys.readouterr().err
    assert "both average the weights" in err and "Traceback" not in err
    assert not (cache / "runs").exists()  # refused at load, before anything was written


# -------------------------------------------------------------------------------- config


@pytest.mark.parametrize("override, message", [
    ("method.ema_weight=2", "method.ema_weight: must be in (0, 1], got 2.0"),
    ("method.ewc_lambda=-1", "method.ewc_lambda: must be >= 0"),
    ("method.lora_r=0", "method.lora_r: must be >= 1"),
    ("method.lwf_temperature=0", "method.lwf_temperature: must be > 0"),
    ("method.lcia_threshold=.inf", "method.lcia_threshold: must be a finite number"),
])
def test_range_errors_name_the_key_at_load_time(override, message, tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert message in str(info.value)
    key, value = override.split("=")
    path = tmp_path / "c.yaml"
    path.write_text(f"method:\n  {key.split('.')[1]}: {value}\n")
    with pytest.raises(ConfigError, match=key):
        load_config(path)


OLD_SAVED_CONFIG = """\
# resolved mcit run configuration, written before methods composed (no method.with, no method.options)
seed: 3
method:
  name: ewc
  lora_r: 8
  lora_alpha: 32
  lora_dropout: 0.0
  target_modules: null
  train_projector: true
  moe_experts: 2
  moe_top_k: null
  moe_balance_weight: 0.0
  moe_impl: fused
  ema_weight: 0.03
  lcia_fallback: 0.03
  lcia_grouping: true
  lcia_threshold: null
  lcia_similarity: tfidf
  replay_size: 200
  replay_selection: balanced
  replay_ratio: 0.25
  ewc_lambda: 100.0
  ewc_fisher_samples: 64
  lwf_lambda: 0.05
  lwf_temperature: 2.0
  olora_lambda: 0.01
"""


def test_old_flat_keys_and_saved_configs_still_load(tmp_path):
    cfg = load_config(None, ["method.name=ewc", "method.ewc_lambda=100", "method.lora_r=8"])
    assert cfg.method.ewc_lambda == 100 and cfg.method.lora_r == 8 and cfg.method.with_ == []
    old = tmp_path / "config.yaml"
    old.write_text(OLD_SAVED_CONFIG)
    # the saved file's values where today's defaults moved since (issue 16's 3-seed tuning)
    assert load_config(old).method == load_config(None, [
        "method.name=ewc", "method.ewc_lambda=100", "method.lora_r=8", "method.lcia_fallback=0.03",
        "method.replay_ratio=0.25", "method.lwf_lambda=0.05", "method.olora_lambda=0.01", "method.moe_experts=2"]).method
    for path in sorted(Path(DEFAULT_CONFIG).parent.glob("*.yaml")):
        load_config(path)
    with pytest.raises(ConfigError, match="did you mean 'method.ewc_lambda'"):
        load_config(None, ["method.ewc_lamda=1"])


def test_the_method_section_and_its_documentation_come_from_the_registry():
    text = DEFAULT_CONFIG.read_text()
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert settings_markdown() in readme  # the README's table is the registry's
    for spec in BUILTIN:
        for cls in spec.settings:
            for name, f in cls.__dataclass_fields__.items():
                assert f"  {name}: " in text and f.metadata["help"] in text, name
                assert f"`{name}`" in settings_markdown(), name


def test_the_readme_example_method_loads_and_adds_its_loss(tmp_path, monkeypatch):
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    code = readme.split("### Writing your own method", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "my_pkg").mkdir()
    (tmp_path / "my_pkg" / "__init__.py").write_text("")
    (tmp_path / "my_pkg" / "my_module.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        cfg = load_config(None, ["method.name=moelora", "method.lora_r=4", "method.with=[my_pkg.my_module:L2]",
                                 "method.options={l2_weight: 0.5}"])
        method = build_method(cfg.method)
        model = torch.nn.Linear(2, 1)
        ctx = TaskContext(task="t", index=0, tasks=["t"], model=model, accelerator=None)
        expected = 0.5 * sum((p ** 2).sum() for p in model.parameters())
        torch.testing.assert_close(method.extra_loss(ctx, {}, None), expected)
    finally:
        for name in ("my_pkg.my_module", "my_pkg"):
            sys.modules.pop(name, None)


def test_every_registered_class_matches_its_entry():
    for spec in BUILTIN:
        cls = spec.load()
        assert issubclass(cls, Method) and cls.name == spec.name and cls.rewrites_weights == spec.rewrites_weights
        assert issubclass(cls, Addition) == (spec.role == "addition")
        assert issubclass(cls, Addition) or cls.joint == spec.joint
