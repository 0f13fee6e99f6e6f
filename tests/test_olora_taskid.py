"""O-LoRA and per-task LoRA with an oracle task id: the orthogonality loss by hand, only the
current adapter trains, O-LoRA sums every adapter at inference, task-id routing, checkpoints
(round trip and resume), and each method end to end through `mcit run`."""
import copy
import json
import shutil

import pytest
import torch
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file
from test_end_to_end import _run, cache  # noqa: F401  (cache is a fixture)
from test_moelora import IMAGE, PATCH, _tiny_llava

from mcit.cli import main
from mcit.config import load_config
from mcit.methods import build_method
from mcit.methods.base import TaskContext
from mcit.methods.olora import PROJECTOR_FILE, orthogonality_loss
from mcit.methods.taskid_lora import MANIFEST, active_adapters, adapter_of
from mcit.report.matrix import load_matrix

TASKS = ["A", "B", "C"]


def _batch(processor, n=3, length=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    tok = processor.tokenizer
    image = torch.full((n, (IMAGE // PATCH) ** 2), tok.convert_tokens_to_ids("<image>"))
    ids = torch.cat([image, torch.randint(10, len(tok), (n, length), generator=g)], 1)
    labels = torch.full_like(ids, -100)
    labels[:, -4:] = ids[:, -4:]
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
            "pixel_values": torch.randn(n, 3, IMAGE, IMAGE, generator=g)}


def _setup(method_name, *overrides, seed=0):
    base, processor = _tiny_llava(seed)
    cfg = load_config(None, [f"method.name={method_name}", "method.lora_r=4", *overrides])
    method = build_method(cfg.method)
    return method, method.setup(base, cfg), cfg, processor


def _ctx(model, index):
    return TaskContext(task=TASKS[index], index=index, tasks=TASKS, model=model, accelerator=None)


def _lora_layers(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer)}


def _randomise(model, adapter, seed):
    """Give `adapter` non-trivial weights (B = 0 at init would make it a no-op), its projector copy too."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if adapter_of(n) == adapter:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def _perturb_shared_projector(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "multi_modal_projector" in n and adapter_of(n) is None and "original_module" not in n:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


def _trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


# -- O-LoRA's orthogonality loss --------------------------------------------------------------

def test_orthogonality_loss_by_hand_zero_first_and_gradient_only_to_the_current_A():
    method, model, cfg, processor = _setup("olora", "method.lora_r=2", "method.target_modules=[q_proj]",
                                           "method.olora_lambda=0.5")
    method.before_task(_ctx(model, 0))
    assert method.extra_loss(_ctx(model, 0), None, None) is None  # first task: no earlier LoRA
    assert float(orthogonality_loss(model, "task0", [])) == 0.0
    for i in (1, 2):
        method.before_task(_ctx(model, i))
    layers = _lora_layers(model)
    assert len(layers) == 2  # q_proj of each of the 2 layers
    # Hand-set A's (2 x 32): small integers, so the expected value is exact.
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in layers.values():
            for name in ("task0", "task1", "task2"):
                layer.lora_A[name].weight.copy_(torch.randint(-2, 3, (2, 32), generator=g).float())
    expected = 0.0
    for layer in layers.values():
        a_t = layer.lora_A["task2"].weight.tolist()
        for j in ("task0", "task1"):
            a_j = layer.lora_A[j].weight.tolist()
            for row_t in a_t:  # |A_t A_j^T| entry by entry
                for row_j in a_j:
                    expected += abs(sum(x * y for x, y in zip(row_t, row_j)))
    assert expected > 0
    assert float(orthogonality_loss(model, "task2", ["task0", "task1"]).detach()) == expected

    ctx = _ctx(model, 2)
    loss = method.extra_loss(ctx, None, None)
    assert float(loss.detach()) == 0.5 * expected
    loss.backward()
    for layer in layers.values():
        a_t = layer.lora_A["task2"].weight
        # d/dA_t sum |A_t A_j^T| = sign(A_t A_j^T) A_j, summed over j
        grad = sum(torch.sign(a_t.detach() @ layer.lora_A[j].weight.T) @ layer.lora_A[j].weight
                   for j in ("task0", "task1"))
        torch.testing.assert_close(a_t.grad, 0.5 * grad)
        for j in ("task0", "task1"):
            assert layer.lora_A[j].weight.grad is None and layer.lora_B[j].weight.grad is None
        assert layer.lora_B["task2"].weight.grad is None  # the loss involves A only
    method.after_task(ctx)
    assert ctx.log["orth_loss_first"] == ctx.log["orth_loss_last"] == expected


# -- only the current adapter trains ------------------------------------------------------------

@pytest.mark.parametrize("method_name", ["olora", "lora-taskid"])
@pytest.mark.parametrize("projector", [True, False])
def test_only_the_current_adapter_trains(method_name, projector):
    method, model, cfg, processor = _setup(method_name, f"method.train_projector={str(projector).lower()}")
    for i in range(3):
        method.before_task(_ctx(model, i))
        _randomise(model, f"task{i}", seed=i)
    trainable = _trainable(model)
    owners = {adapter_of(n) for n in trainable}
    proj = {n for n in trainable if "multi_modal_projector" in n}
    assert owners - {None} == {"task2"}
    lora = {n for n in trainable if ".lora_" in n}
    assert len(lora) == 2 * 2 * 7  # A and B of q k v o gate up down, 2 layers
    assert trainable == lora | proj
    if not projector:
        assert not proj
    elif method_name == "olora":  # shared projector, the base model's own
        assert proj and all(adapter_of(n) is None for n in proj)
    else:  # a projector copy per task: this task's
        assert proj and all(".modules_to_save.task2." in n for n in proj)
    groups = method.param_groups(model, cfg)
    in_groups = {id(p) for g in groups for p in g["params"]}
    assert in_groups == {id(p) for n, p in model.named_parameters() if n in trainable}

    # One optimizer step moves this task's adapter only.
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(groups, weight_decay=0.1)
    ctx = _ctx(model, 2)
    batch = _batch(processor)
    model.train()
    out = model(**batch)
    loss = out.loss
    extra = method.extra_loss(ctx, batch, out)
    if extra is not None:
        loss = loss + extra
    loss.backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable
    assert any(".lora_A.task2." in n for n in changed) and any(".lora_B.task2." in n for n in changed)


# -- O-LoRA: every task LoRA summed at inference -----------------------------------------------

def test_olora_inference_sums_all_adapters():
    base, processor = _tiny_llava()
    reference = copy.deepcopy(base)
    cfg = load_config(None, ["method.name=olora", "method.lora_r=4", "method.lora_alpha=8"])
    method = build_method(cfg.method)
    model = method.setup(base, cfg)
    for i in range(3):
        method.before_task(_ctx(model, i))
        _randomise(model, f"task{i}", seed=10 + i)
    assert active_adapters(model) == ["task0", "task1", "task2"]

    # One layer: base(x) + sum_j scale * B_j A_j x.
    name, layer = next(iter(_lora_layers(model).items()))
    x = torch.randn(5, layer.base_layer.in_features)
    by_hand = layer.base_layer(x) + sum(2.0 * x @ layer.lora_A[j].weight.T @ layer.lora_B[j].weight.T
                                        for j in ("task0", "task1", "task2"))
    torch.testing.assert_close(layer(x), by_hand)

    # The whole model: equal to the base model with W + scale * sum_j B_j A_j written in by hand.
    with torch.no_grad():
        for name, layer in _lora_layers(model).items():
            target = reference.get_submodule(name.removeprefix("base_model.model."))
            target.weight += sum(2.0 * layer.lora_B[j].weight @ layer.lora_A[j].weight
                                 for j in ("task0", "task1", "task2"))
    batch = _batch(processor)
    torch.testing.assert_close(_logits(model, batch), _logits(reference, batch), atol=1e-5, rtol=1e-5)
    # O-LoRA needs no task id: one route, the model as it is.
    routes = method.eval_routes(model, "A", ["s1", "s2"])
    assert len(routes) == 1 and routes[0][0] == ["s1", "s2"]
    with routes[0][1]:
        assert active_adapters(model) == ["task0", "task1", "task2"]


# -- task-id LoRA: routing -------------------------------------------------------------------------

def test_taskid_routing_uses_each_tasks_adapter_and_restores_the_active_one():
    method, model, cfg, processor = _setup("lora-taskid")
    batch = _batch(processor)
    base_logits = _logits(model, batch)
    (samples, route), = method.eval_routes(model, "A", ["s"])  # nothing trained: the model as it is
    with route:
        assert torch.equal(_logits(model, batch), base_logits)

    right_after = []  # each task's outputs right after its own stage
    for i in range(3):
        method.before_task(_ctx(model, i))
        _randomise(model, f"task{i}", seed=20 + i)  # its LoRA and its projector copy
        right_after.append(_logits(model, batch))
    assert not torch.equal(right_after[0], right_after[1])
    flags = {n: p.requires_grad for n, p in model.named_parameters()}

    for task, expected in [("A", 0), ("B", 1), ("C", 2), ("D", 2)]:  # D: not trained, the most recent
        routes = method.eval_routes(model, task, ["s1", "s2"])
        assert len(routes) == 1 and routes[0][0] == ["s1", "s2"]
        with routes[0][1]:
            assert active_adapters(model) == [f"task{expected}"]
            assert model.base_model.model.model.multi_modal_projector.active_adapters == [f"task{expected}"]
            assert torch.equal(_logits(model, batch), right_after[expected])  # exactly as after its stage
        assert active_adapters(model) == ["task2"] and model.active_adapter == "task2"
        assert {n: p.requires_grad for n, p in model.named_parameters()} == flags

    # Restored even when evaluation fails inside the route.
    with pytest.raises(KeyError):
        with method.eval_routes(model, "A", [])[0][1]:
            raise KeyError("boom")
    assert active_adapters(model) == ["task2"]
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags


# -- checkpoints -----------------------------------------------------------------------------------

def _outputs(method, model, batch):
    """What evaluation sees: every task's route (O-LoRA: one, the summed model)."""
    outs = []
    for task in TASKS:
        for _, route in method.eval_routes(model, task, ["s"]):
            with route:
                outs.append(_logits(model, batch))
    return outs


@pytest.mark.parametrize("method_name", ["olora", "lora-taskid"])
def test_save_load_round_trip_and_resume_continues_identically(tmp_path, method_name):
    method, model, cfg, processor = _setup(method_name)
    batch = _batch(processor)
    for i in range(2):
        method.before_task(_ctx(model, i))
        _randomise(model, f"task{i}", seed=30 + i)
    _perturb_shared_projector(model, seed=3)  # O-LoRA's shared projector is saved too
    expected = _outputs(method, model, batch)
    method.save_model(model, tmp_path / "stage")
    stage = tmp_path / "stage"
    assert (stage / "task0" / "adapter_model.safetensors").is_file()
    assert (stage / "task1" / "adapter_model.safetensors").is_file()
    assert not list(stage.rglob("*.bin"))
    manifest = json.loads((stage / MANIFEST).read_text())
    assert manifest["adapters"] == [{"name": "task0", "task": "A"}, {"name": "task1", "task": "B"}]
    assert (stage / PROJECTOR_FILE).is_file() == (method_name == "olora")
    if method_name == "lora-taskid":  # the projector copy travels with its adapter
        assert any("multi_modal_projector" in k for k in load_file(str(stage / "task1" / "adapter_model.safetensors")))

    # Resume: a freshly set-up model (one fresh adapter), then load_model, then load_json_state.
    again_method, again, _, _ = _setup(method_name)
    assert not all(torch.equal(a, b) for a, b in zip(_outputs(again_method, again, batch), expected))
    again_method.load_model(again, stage)
    again_method.load_json_state(method.json_state())
    assert again_method.adapters == method.adapters == {"task0": "A", "task1": "B"}
    got = _outputs(again_method, again, batch)
    assert all(torch.equal(a, b) for a, b in zip(got, expected))

    # The next task starts the same way in both: same fresh adapter, same trainable set.
    method.before_task(_ctx(model, 2))
    again_method.before_task(_ctx(again, 2))
    assert _trainable(model) == _trainable(again)
    state, state_again = model.state_dict(), again.state_dict()
    assert state.keys() == state_again.keys()
    assert all(torch.equal(state[k], state_again[k]) for k in state)

    with pytest.raises(RuntimeError, match="json|adapters"):
        again_method.load_json_state({"adapters": {"task0": "A"}})
    other_method, other, _, _ = _setup(method_name, "method.target_modules=[q_proj,v_proj]")
    with pytest.raises(RuntimeError, match="keys"):  # a checkpoint of another adapter layout
        other_method.load_model(other, stage)


# -- end to end ----------------------------------------------------------------------------------

def _resume_after_first_stage(run):
    """Drop the last stage as if the run had been killed during it, then `mcit run --resume`."""
    shutil.rmtree(run / "stages" / "02-VQAv2")
    assert main(["run", "--resume", str(run)]) == 0


def test_olora_end_to_end_and_resume(cache):  # noqa: F811
    run = _run(cache, "olora", "method.name=olora")
    tasks, matrix, zero_shot, metrics = load_matrix(run / "matrix.json")
    assert all(v is not None for v in (matrix[0][0], matrix[1][0], matrix[1][1])) and "BWT" in metrics
    first, second = run / "stages" / "01-ImageNet" / "model", run / "stages" / "02-VQAv2" / "model"
    assert [e["name"] for e in json.loads((first / MANIFEST).read_text())["adapters"]] == ["task0"]
    assert json.loads((second / MANIFEST).read_text())["active"] == ["task0", "task1"]
    assert (second / PROJECTOR_FILE).is_file() and (second / "task1" / "adapter_model.safetensors").is_file()
    # The earlier task's LoRA is frozen: stage 2 saved it unchanged.
    a = load_file(str(first / "task0" / "adapter_model.safetensors"))
    b = load_file(str(second / "task0" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log = json.loads((run / "stages" / "02-VQAv2" / "done.json").read_text())["method_log"]
    assert log["orth_loss_first"] > 0 and log["orth_loss_last"] >= 0
    assert json.loads((run / "stages" / "02-VQAv2" / "method_state.json").read_text()) == {
        "adapters": {"task0": "ImageNet", "task1": "VQAv2"}}

    _resume_after_first_stage(run)
    assert load_matrix(run / "matrix.json")[1] == matrix


def test_taskid_lora_end_to_end_cannot_forget_and_resumes(cache):  # noqa: F811
    run = _run(cache, "taskid", "method.name=lora-taskid", "eval.upper_triangle=true")
    tasks, matrix, zero_shot, metrics = load_matrix(run / "matrix.json")
    assert tasks == ["ImageNet", "VQAv2"] and all(v is not None for row in matrix for v in row)
    assert matrix[1][0] == matrix[0][0]  # isolation: the first task's score is exactly kept
    stages = run / "stages"
    assert ((stages / "02-VQAv2" / "predictions" / "ImageNet.jsonl").read_text()
            == (stages / "01-ImageNet" / "predictions" / "ImageNet.jsonl").read_text())  # answer for answer
    first = load_file(str(stages / "01-ImageNet" / "model" / "task0" / "adapter_model.safetensors"))
    again = load_file(str(stages / "02-VQAv2" / "model" / "task0" / "adapter_model.safetensors"))
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    assert any("multi_modal_projector" in k for k in first)  # the projector is per task
    trained = load_file(str(stages / "02-VQAv2" / "model" / "task1" / "adapter_model.safetensors"))
    assert any("lora_B" in k and trained[k].abs().sum() > 0 for k in trained)  # task 2 did train its own

    _resume_after_first_stage(run)
    assert load_matrix(run / "matrix.json")[1] == matrix
