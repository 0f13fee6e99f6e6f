"""Replay, EWC and LwF: the buffer (mixing, reservoir probabilities, balanced shares, JSON
round trip), the EWC penalty and Fisher by hand, the LwF distillation term by hand, and a
short run of each method (plus a resumed replay run) through `mcit run`."""
import json
import math
from dataclasses import asdict

import pytest
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import load_file
from safetensors.torch import save as save_tensors
from torch import nn

from test_end_to_end import _run, cache  # noqa: F401  (cache is a fixture)
from test_moelora import _batch, _tiny_llava

from mcit.config import load_config
from mcit.data.schema import Sample
from mcit.methods import build_method
from mcit.methods import ewc as ewc_mod
from mcit.methods.base import TaskContext
from mcit.methods.ewc import EWC, answer_nll, empirical_fisher
from mcit.methods.lwf import LwF, distillation_kl
from mcit.methods.replay import Replay, balanced_shares, sample_from_dict, sample_to_dict


def _method(name, *overrides, seed=0):
    cfg = load_config(None, [f"method.name={name}", f"seed={seed}", *overrides])
    return build_method(cfg.method), cfg


def _samples(task, n, start=0):
    return [Sample(id=f"{task}-{i}", task=task, image=f"{task}/{i}.png", text=f"q {i}\nAnswer briefly.",
                   answers=(f"a{i}", f"b{i}"), extra={"bbox": [0.1, 0.2, 0.3, 0.4], "size": [32, 32]})
            for i in range(start, start + n)]


def _ctx(index, model=None, tasks=("A", "B", "C", "D")):
    return TaskContext(task=tasks[index], index=index, tasks=list(tasks), model=model, accelerator=None)


def _replay(*overrides, seed=0):
    method, _ = _method("replay", *overrides, seed=seed)
    method.seed = seed  # what setup(model, run_cfg) takes from run_cfg.seed
    return method


def _feed(method, tasks):
    """Run `tasks` (lists of samples) through train_samples/after_task; the mixed lists."""
    out = []
    for i, samples in enumerate(tasks):
        ctx = _ctx(i)
        out.append(method.train_samples(ctx, samples))
        method.after_task(ctx)
    return out


# -- replay ------------------------------------------------------------------------------------

def test_replay_setup_takes_the_run_seed():
    method, cfg = _method("replay", seed=7)
    assert isinstance(method, Replay)
    method.setup(_tiny_llava()[0], cfg)
    assert method.seed == 7


def test_replay_mixes_round_ratio_times_n_buffer_samples_deterministically():
    a, b = _samples("A", 20), _samples("B", 9)
    method = _replay("method.replay_size=10", "method.replay_ratio=0.5")
    first, second = _feed(method, [a, b])
    assert first == a  # empty buffer before the first task
    assert second[:9] == b and len(second) == 9 + round(0.5 * 9)
    assert {s.task for s in second[9:]} == {"A"} and len({s.id for s in second[9:]}) == len(second) - 9
    assert len(method.buffer) == 10 and all(s.task in "AB" for s in method.buffer)

    again = _feed(_replay("method.replay_size=10", "method.replay_ratio=0.5"), [a, b])
    assert [s.id for s in again[1]] == [s.id for s in second]  # same seed: same draw
    draws = {tuple(s.id for s in _feed(_replay("method.replay_size=10", "method.replay_ratio=0.5", seed=k),
                                       [a, b])[1]) for k in range(5)}
    assert len(draws) > 1  # the seed matters


def test_replay_draws_whole_copies_when_more_are_asked_than_the_buffer_holds():
    method = _replay("method.replay_size=4", "method.replay_ratio=1.5")
    _, mixed = _feed(method, [_samples("A", 10), _samples("B", 7)])
    extra = [s.id for s in mixed[7:]]
    assert len(extra) == round(1.5 * 7) == 10
    counts = [extra.count(s.id) for s in method.buffer if s.task == "A"] + [0]
    assert set(extra) <= {f"A-{i}" for i in range(10)} and max(counts) - min(c for c in counts if c) <= 1


def test_reservoir_keeps_each_seen_sample_with_probability_size_over_n():
    sizes, size, seeds = [5, 4, 3], 4, 4000
    tasks = [_samples(t, n) for t, n in zip("ABC", sizes)]
    n = sum(sizes)
    hits = {s.id: 0 for t in tasks for s in t}
    method = _replay("method.replay_selection=reservoir", f"method.replay_size={size}")
    for seed in range(seeds):
        method.seed, method.buffer, method.seen = seed, [], 0
        _feed(method, tasks)
        assert len(method.buffer) == size and method.seen == n
        for s in method.buffer:
            hits[s.id] += 1
    p = size / n
    sd = math.sqrt(p * (1 - p) / seeds)
    worst = max(abs(h / seeds - p) for h in hits.values())
    # Every sample, early or late, kept with p = size / n (an off-by-one in the draw moves the
    # first samples by 1/(n-1) = 0.09, about 10 sd).
    assert worst < 4.5 * sd, (worst, sd)
    for t, k in zip(tasks, sizes):  # hence each task's share is proportional to its size
        share = sum(hits[s.id] for s in t) / (seeds * size)
        assert abs(share - k / n) < 0.02


def test_reservoir_fills_before_it_replaces():
    method = _replay("method.replay_selection=reservoir", "method.replay_size=30")
    _feed(method, [_samples("A", 12), _samples("B", 12)])
    assert sorted(s.id for s in method.buffer) == sorted(s.id for s in _samples("A", 12) + _samples("B", 12))


def test_balanced_shares_by_hand():
    assert balanced_shares([100], 12) == [12]
    assert balanced_shares([12, 100], 12) == [6, 6]
    assert balanced_shares([5, 1, 100], 9) == [4, 1, 4]  # the short task's spare slots are re-shared
    assert balanced_shares([3, 3], 10) == [3, 3]  # not enough samples to fill the buffer
    assert balanced_shares([4, 4, 4, 2], 12) == [4, 3, 3, 2]  # remainder to the earliest task


def test_balanced_buffer_rebalances_when_a_task_is_added():
    method = _replay("method.replay_selection=balanced", "method.replay_size=12")
    history = []
    for i, (task, n) in enumerate([("A", 20), ("B", 20), ("C", 20), ("D", 2)]):
        ctx = _ctx(i)
        method.train_samples(ctx, _samples(task, n))
        method.after_task(ctx)
        history.append({t: [s.id for s in method.buffer if s.task == t] for t in "ABCD"})
    counts = [{t: len(ids) for t, ids in h.items() if ids} for h in history]
    assert counts == [{"A": 12}, {"A": 6, "B": 6}, {"A": 4, "B": 4, "C": 4}, {"A": 4, "B": 3, "C": 3, "D": 2}]
    for before, after in zip(history, history[1:]):  # an older task only gives slots up
        for t in [t for t in "ABC" if before[t]]:
            assert set(after[t]) <= set(before[t])
    assert len({s.id for s in method.buffer}) == 12


@pytest.mark.parametrize("selection", ["reservoir", "balanced"])
def test_replay_json_state_round_trip(selection):
    tasks = [_samples("A", 15), _samples("B", 15), _samples("C", 15)]
    method = _replay(f"method.replay_selection={selection}", "method.replay_size=8")
    _feed(method, tasks[:2])
    state = json.loads(json.dumps(method.json_state()))  # exactly what the run folder holds
    restored = _replay(f"method.replay_selection={selection}", "method.replay_size=8")
    restored.load_json_state(state)
    assert [asdict(s) for s in restored.buffer] == [asdict(s) for s in method.buffer]
    assert all(isinstance(s.answers, tuple) and isinstance(s.extra, dict) for s in restored.buffer)
    assert restored.seen == method.seen == 30
    # The resumed method continues exactly like the uninterrupted one.
    assert [s.id for s in _feed_from(restored, 2, tasks[2])] == [s.id for s in _feed_from(method, 2, tasks[2])]
    assert [s.id for s in restored.buffer] == [s.id for s in method.buffer]


def _feed_from(method, index, samples):
    ctx = _ctx(index)
    mixed = method.train_samples(ctx, samples)
    method.after_task(ctx)
    return mixed


def test_sample_dict_round_trip_keeps_types():
    s = Sample(id="x", task="Grounding", image=None, text="t", answers=("[0.1, 0.2, 0.3, 0.4]",),
               extra={"bbox": [0.1, 0.2, 0.3, 0.4]})
    back = sample_from_dict(json.loads(json.dumps(sample_to_dict(s))))
    assert back == s and back.extra == s.extra and back.image is None and back.answers == s.answers


# -- EWC ---------------------------------------------------------------------------------------

class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
        self.v = nn.Parameter(torch.tensor([[0.5, 0.5]]))
        self.frozen = nn.Parameter(torch.tensor([9.0]), requires_grad=False)


_DUMMY = {"input_ids": torch.zeros(2, 3, dtype=torch.long)}


def test_ewc_is_zero_on_the_first_task():
    method, _ = _method("ewc")
    assert isinstance(method, EWC)
    toy = _Toy()
    method.before_task(_ctx(0, toy))
    assert method.extra_loss(_ctx(0, toy), _DUMMY, None) is None


def _toy_state():
    return {"fisher/w": torch.tensor([1.0, 0.0, 2.0]), "anchor/w": torch.tensor([0.0, 0.0, 0.0]),
            "fisher/v": torch.tensor([[4.0, 0.5]]), "anchor/v": torch.tensor([[0.0, 1.0]])}


def test_ewc_penalty_and_gradient_by_hand():
    method, _ = _method("ewc", "method.ewc_lambda=3.0")
    method.load_state_dict(_toy_state())
    toy = _Toy()
    method.before_task(_ctx(1, toy))
    penalty = method.extra_loss(_ctx(1, toy), _DUMMY, None)
    # (3/2) * (1*1^2 + 0*(-2)^2 + 2*3^2 + 4*0.5^2 + 0.5*(-0.5)^2) = 1.5 * 20.125
    assert penalty.item() == pytest.approx(1.5 * 20.125)
    penalty.backward()
    torch.testing.assert_close(toy.w.grad, 3.0 * torch.tensor([1.0, 0.0, 2.0]) * torch.tensor([1.0, -2.0, 3.0]))
    torch.testing.assert_close(toy.v.grad, 3.0 * torch.tensor([[4.0, 0.5]]) * torch.tensor([[0.5, -0.5]]))
    assert toy.frozen.grad is None


def test_ewc_state_dict_round_trip_through_safetensors():
    method, _ = _method("ewc", "method.ewc_lambda=3.0")
    method.load_state_dict(_toy_state())
    blob = save_tensors({k: v.contiguous() for k, v in method.state_dict().items()})  # as train.py writes it
    restored, _ = _method("ewc", "method.ewc_lambda=3.0")
    restored.load_state_dict(load_tensors(blob))
    for k, v in method.state_dict().items():
        torch.testing.assert_close(restored.state_dict()[k], v)
    toy = _Toy()
    restored.before_task(_ctx(1, toy))
    assert restored.extra_loss(_ctx(1, toy), _DUMMY, None).item() == pytest.approx(1.5 * 20.125)


def _lora_model(method_name, *overrides):
    model, processor = _tiny_llava()
    method, cfg = _method(method_name, "method.lora_r=4", *overrides)
    model = method.setup(model, cfg)
    torch.manual_seed(3)
    with torch.no_grad():  # B = 0 at init would make most gradients trivially zero
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.3)
    return method, model, processor


def _manual_fisher(model, batch):
    """Per-sample squared gradients, each row run on its own (padding kept), averaged."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    model.eval()
    for i in range(batch["input_ids"].shape[0]):
        row = {k: v[i:i + 1] for k, v in batch.items()}
        model.zero_grad(set_to_none=True)
        lg, lb = model(**{k: v for k, v in row.items() if k != "labels"}).logits[:, :-1], row["labels"][:, 1:]
        nn.functional.cross_entropy(lg.reshape(-1, lg.shape[-1]), lb.reshape(-1), ignore_index=-100).backward()
        for n, p in params.items():
            total[n] += p.grad ** 2
    model.zero_grad(set_to_none=True)
    return {n: t / batch["input_ids"].shape[0] for n, t in total.items()}


def test_ewc_fisher_is_the_mean_squared_per_sample_gradient(monkeypatch):
    _, model, processor = _lora_model("ewc")
    batch = _batch(processor, n=4)
    expected = _manual_fisher(model, batch)
    fisher, count = empirical_fisher(model, [batch], limit=10)
    assert count == 4 and set(fisher) == set(expected)
    assert sum(f.sum() for f in fisher.values()) > 0
    for n in expected:
        torch.testing.assert_close(fisher[n], expected[n], atol=1e-6, rtol=1e-4, msg=n)
    # Batches whose fields are not per row (Qwen2-VL) go through one forward, a backward per row.
    monkeypatch.setattr(ewc_mod, "split_rows", lambda batch: None)
    shared, count = empirical_fisher(model, [batch], limit=10)
    assert count == 4
    for n in expected:
        torch.testing.assert_close(shared[n], expected[n], atol=1e-6, rtol=1e-4, msg=n)


def test_ewc_fisher_uses_at_most_the_limit_newest_rows():
    _, model, processor = _lora_model("ewc")
    old, new = _batch(processor, n=4, seed=1), _batch(processor, n=4, seed=2)
    fisher, count = empirical_fisher(model, [old, new], limit=3)
    assert count == 3
    last3 = {k: v[1:] for k, v in new.items()}
    for n, f in _manual_fisher(model, last3).items():
        torch.testing.assert_close(fisher[n], f, atol=1e-6, rtol=1e-4, msg=n)


def test_answer_nll_is_the_per_row_lm_loss():
    _, model, processor = _lora_model("ewc")
    batch = _batch(processor, n=3)
    out = model(**batch)
    nll, has = answer_nll(out.logits, batch["labels"])
    assert has.all()
    single = model(**{k: v[:1] for k, v in batch.items()}).loss
    assert nll[0].item() == pytest.approx(single.item(), rel=1e-5)


def test_ewc_task_sequence_sums_fisher_and_moves_the_anchor():
    method, model, processor = _lora_model("ewc", "method.ewc_fisher_samples=4", "method.ewc_lambda=10")
    batch = _batch(processor, n=4)
    ctx = _ctx(0, model)
    method.before_task(ctx)
    assert method.extra_loss(ctx, batch, model(**batch)) is None
    method.after_task(ctx)
    f1 = {k: v.clone() for k, v in method.fisher.items()}
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(f1) == names and ctx.log["ewc_fisher_rows"] == 4
    for n, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(method.anchor[n], p.detach())

    ctx = _ctx(1, model)
    method.before_task(ctx)
    assert method.extra_loss(ctx, batch, None).item() == 0.0  # at the anchor
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1)
    penalty = method.extra_loss(ctx, batch, None)
    expected = 5.0 * sum((f1[n] * 0.01).sum() for n in names)
    assert penalty.item() == pytest.approx(expected.item(), rel=1e-4) and penalty.item() > 0
    method.after_task(ctx)
    f2, _ = empirical_fisher(model, [batch], 4)
    for n in names:  # summed over tasks
        torch.testing.assert_close(method.fisher[n], f1[n] + f2[n], atol=1e-6, rtol=1e-4)
    assert "ewc_penalty_last" in ctx.log


# -- LwF ---------------------------------------------------------------------------------------

def _labels():
    """Two rows of 5 tokens; answer tokens at positions 3-4 (row 0) and 4 (row 1)."""
    return torch.tensor([[-100, -100, -100, 7, 2], [-100, -100, -100, -100, 1]])


def test_lwf_kl_zero_when_equal_positive_otherwise():
    torch.manual_seed(0)
    z = torch.randn(2, 5, 11)
    assert distillation_kl(z, z.clone(), _labels(), 2.0).item() == pytest.approx(0.0, abs=1e-7)
    assert distillation_kl(z + torch.randn(2, 5, 11), z, _labels(), 2.0).item() > 0


def test_lwf_kl_counts_only_answer_positions():
    torch.manual_seed(0)
    old, new = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
    base = distillation_kl(new, old, _labels(), 1.0)
    # Predicting positions (shifted): row 0 -> logits 2, 3; row 1 -> logit 3. Everything else is free.
    noisy = new.clone()
    noisy[0, [0, 1, 4]] += 5 * torch.randn(3, 11)
    noisy[1, [0, 1, 2, 4]] += 5 * torch.randn(4, 11)
    assert distillation_kl(noisy, old, _labels(), 1.0).item() == pytest.approx(base.item(), rel=1e-6)
    moved = new.clone()
    moved[1, 3] += 5 * torch.randn(11)
    assert distillation_kl(moved, old, _labels(), 1.0).item() != pytest.approx(base.item(), rel=1e-3)
    # By hand: the mean over the three answer positions of KL(p_old || p_new).
    pos = [(0, 2), (0, 3), (1, 3)]
    kl = [sum(p * (math.log(p) - math.log(q)) for p, q in zip(old[r, c].softmax(-1).tolist(),
                                                              new[r, c].softmax(-1).tolist())) for r, c in pos]
    assert base.item() == pytest.approx(sum(kl) / 3, rel=1e-5)
    nothing = torch.full((2, 5), -100)
    assert distillation_kl(new, old, nothing, 1.0).item() == 0.0


def test_lwf_temperature_scaling():
    torch.manual_seed(1)
    old, new, labels = torch.randn(2, 5, 11), torch.randn(2, 5, 11), _labels()
    for t in (0.5, 2.0, 4.0):  # T^2 * KL of the softened distributions
        assert distillation_kl(new, old, labels, t).item() == pytest.approx(
            t * t * distillation_kl(new / t, old / t, labels, 1.0).item(), rel=1e-5)
    # Softer targets carry less KL before the T^2 factor; with it, the scale stays bounded:
    # T^2 * KL tends to the variance-like logit-matching term (Hinton et al.) as T grows.
    raw = [distillation_kl(new / t, old / t, labels, 1.0).item() for t in (1.0, 2.0, 4.0)]
    assert raw[0] > raw[1] > raw[2]
    big = [distillation_kl(new, old, labels, t).item() for t in (50.0, 100.0)]
    assert big[0] == pytest.approx(big[1], rel=0.01)


def test_lwf_teacher_is_the_previous_stage_and_student_gets_gradients():
    method, model, processor = _lora_model("lwf", "method.lwf_lambda=2.0", "method.lwf_temperature=2.0")
    assert isinstance(method, LwF)
    batch = _batch(processor, n=4)
    ctx0 = _ctx(0, model)
    method.before_task(ctx0)
    assert method.extra_loss(ctx0, batch, model(**batch)) is None  # first task: nothing to keep
    method.after_task(ctx0)

    model.eval()
    with torch.no_grad():
        before = model(**batch).logits
    ctx1 = _ctx(1, model)
    method.before_task(ctx1)
    model.train()
    out = model(**batch)
    assert method.extra_loss(ctx1, batch, out).item() == pytest.approx(0.0, abs=1e-6)  # same weights
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    out = model(**batch)
    loss = method.extra_loss(ctx1, batch, out)
    torch.testing.assert_close(method.teacher_logits(model, batch), before)  # the old weights, not the live ones
    expected = 2.0 * distillation_kl(out.logits, before, batch["labels"], 2.0)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5) and loss.item() > 0
    assert model.training  # the teacher pass restored train mode
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    method.after_task(ctx1)
    assert "lwf_kl_last" in ctx1.log and method.teacher is None


# -- through `mcit run` --------------------------------------------------------------------------

def _stage2(run):
    return run / "stages" / "02-VQAv2"


def _adapter(run):
    return load_file(str(_stage2(run) / "model" / "adapter_model.safetensors"))


def _differs(a, b):
    return any(not torch.equal(a[k], b[k]) for k in a)


def test_replay_end_to_end(cache):
    run = _run(cache, "replay", "method.name=replay", "method.replay_size=10", "method.replay_ratio=0.5")
    log = json.loads((_stage2(run) / "done.json").read_text())["method_log"]
    assert log == {"replay_mixed": 12, "replay_buffer": 10}  # round(0.5 * 24) drawn from 10 ImageNet samples
    state = json.loads((run / "stages" / "01-ImageNet" / "method_state.json").read_text())
    assert len(state["buffer"]) == 10 and {d["task"] for d in state["buffer"]} == {"ImageNet"}
    final = json.loads((_stage2(run) / "method_state.json").read_text())
    assert {d["task"] for d in final["buffer"]} == {"ImageNet", "VQAv2"} and final["seen"] == 48
    assert (run / "metrics.json").is_file()

    # Resume: stage 2 cut off (its done.json gone) is redone from the buffer saved with stage 1,
    # and trains exactly as before.
    first = _adapter(run)
    for f in ["done.json", "method_state.json"]:
        (_stage2(run) / f).unlink()
    (run / "metrics.json").unlink()
    assert _run_resume(run) == 0
    assert json.loads((_stage2(run) / "done.json").read_text())["method_log"] == log
    assert json.loads((_stage2(run) / "method_state.json").read_text()) == final
    assert not _differs(_adapter(run), first)


def _run_resume(run):
    from mcit.cli import main

    return main(["run", "--resume", str(run)])


def test_ewc_end_to_end(cache):
    lora = _run(cache, "lora")
    run = _run(cache, "ewc", "method.name=ewc", "method.ewc_lambda=1e6", "method.ewc_fisher_samples=16")
    s1 = load_file(str(run / "stages" / "01-ImageNet" / "method_state.safetensors"))
    s2 = load_file(str(_stage2(run) / "method_state.safetensors"))
    assert {k.split("/")[0] for k in s1} == {"fisher", "anchor"} and set(s1) == set(s2)
    assert all((s2[k] >= s1[k] - 1e-12).all() for k in s1 if k.startswith("fisher/"))  # summed
    log = json.loads((_stage2(run) / "done.json").read_text())["method_log"]
    assert log["ewc_fisher_rows"] == 16 and log["ewc_penalty_last"] > 0
    first = json.loads((run / "stages" / "01-ImageNet" / "done.json").read_text())["method_log"]
    assert "ewc_penalty_last" not in first  # no penalty on the first task
    # Stage 1 is plain LoRA; the penalty changes stage 2.
    assert not _differs(load_file(str(run / "stages" / "01-ImageNet" / "model" / "adapter_model.safetensors")),
                        load_file(str(lora / "stages" / "01-ImageNet" / "model" / "adapter_model.safetensors")))
    assert _differs(_adapter(run), _adapter(lora))


def test_lwf_end_to_end(cache):
    lora = _run(cache, "lora")
    run = _run(cache, "lwf", "method.name=lwf", "method.lwf_lambda=100")
    log = json.loads((_stage2(run) / "done.json").read_text())["method_log"]
    assert log["lwf_kl_last"] > 0
    assert not (_stage2(run) / "method_state.safetensors").exists()  # the teacher is the saved stage 1
    assert sorted(p.name for p in (_stage2(run) / "model").iterdir()) == sorted(
        p.name for p in (_stage2(lora) / "model").iterdir())  # only the live adapter is saved
    assert _differs(_adapter(run), _adapter(lora))
