"""Stream variations: named orders and subsets, per-task budgets, and the multitask upper bound."""
import json

import pytest

from mcit.cli import main
from mcit.config import ConfigError, DataConfig, TrainConfig
from mcit.data import coin_mini
from mcit.data.stream import stream_order, train_share
from mcit.fit import steps_for

from test_end_to_end import SMALL, _run, cache  # noqa: F401  (cache is a fixture)


def test_named_orders():
    assert stream_order(DataConfig(), seed=0) == list(coin_mini.TASKS)
    assert stream_order(DataConfig(order="reverse"), seed=0) == list(reversed(coin_mini.TASKS))
    shuffled = stream_order(DataConfig(order="random"), seed=0)
    assert sorted(shuffled) == sorted(coin_mini.TASKS) and shuffled != list(coin_mini.TASKS)
    assert stream_order(DataConfig(order="random"), seed=0) == shuffled  # fixed by the seed
    assert stream_order(DataConfig(order="random"), seed=1) != shuffled


def test_random_n_is_fixed_by_its_own_seed_whatever_the_data_seed():
    first = stream_order(DataConfig(order="random-1"), seed=0)
    assert stream_order(DataConfig(order="random-1"), seed=7) == first
    assert first == stream_order(DataConfig(order="random"), seed=1)  # random = random-<data seed>
    assert stream_order(DataConfig(order="random-2"), seed=0) != first
    assert sorted(first) == sorted(coin_mini.TASKS)


def test_named_orders_apply_to_a_listed_subset_and_repeats_are_refused():
    tasks = ["TextVQA", "ImageNet", "GQA", "VQAv2"]
    assert stream_order(DataConfig(tasks=tasks), seed=0) == tasks  # coin: as listed
    assert stream_order(DataConfig(tasks=tasks, order="reverse"), seed=0) == tasks[::-1]
    shuffled = stream_order(DataConfig(tasks=tasks, order="random-1"), seed=0)
    assert sorted(shuffled) == sorted(tasks) and shuffled != tasks
    with pytest.raises(ConfigError, match=r"\['GQA'\] listed more than once"):
        stream_order(DataConfig(tasks=["GQA", "VizWiz", "GQA"]), seed=0)
    with pytest.raises(ConfigError, match="data.order: 'sideways'"):
        stream_order(DataConfig(order="sideways"), seed=0)


def test_train_fraction_keeps_a_seeded_share_in_file_order():
    samples = list(range(10))
    assert train_share(samples, 1.0, seed=0, task="GQA") is samples
    quarter = train_share(samples, 0.25, seed=0, task="GQA")
    assert len(quarter) == 2 and quarter == sorted(quarter)  # round(2.5) = 2, file order kept
    assert train_share(samples, 0.25, seed=0, task="GQA") == quarter  # fixed by seed and task
    assert len(train_share(samples, 0.5, seed=0, task="GQA")) == 5
    assert len(train_share(samples, 0.01, seed=0, task="GQA")) == 1  # never an empty task
    assert {tuple(train_share(samples, 0.5, seed=s, task="GQA")) for s in range(5)} != {tuple(quarter)}


def test_multitask_trains_on_the_shares_when_the_tasks_are_cut(cache):  # noqa: F811
    from mcit.data.stream import build_stream

    dc = DataConfig(train_per_task=8, test_per_task=2, pretrain_size=4, image_size=32)
    release = build_stream(dc, 0, show_progress=False).release
    # CoIN ships Multitask/train.json, the union of the task files; coin-mini does not: write one
    union = [r for t in coin_mini.TASKS for r in json.loads((release / t / "train.json").read_text())]
    (release / "Multitask").mkdir()
    (release / "Multitask" / "train.json").write_text(json.dumps(union))
    whole = build_stream(dc, 0, show_progress=False)
    assert len(whole.multitask) == len(union) == sum(len(v) for v in whole.train.values())  # the release's own
    half = build_stream(DataConfig(**{**dc.__dict__, "train_fraction": 0.5}), 0, show_progress=False)
    assert half.multitask is None  # the loop then trains on the union of the shares
    assert all(len(half.train[t]) == round(len(whole.train[t]) / 2) for t in whole.tasks)


@pytest.mark.parametrize("bad, message", [
    ("data.order=random-x", "random-<seed>"), ("data.order=sideways", "random-<seed>"),
    ("data.train_fraction=0", "data.train_fraction"), ("data.train_fraction=1.5", "data.train_fraction"),
])
def test_bad_order_or_fraction_is_refused_by_the_config(bad, message, capsys):
    assert main(["config", "show", bad]) == 2
    assert message in capsys.readouterr().err


def test_per_task_budgets():
    tc = TrainConfig(steps_per_task=300, batch_size=16, task_steps={"Grounding": 900}, task_epochs={"GQA": 2.0})
    assert steps_for(tc, 400, "Grounding") == 900
    assert steps_for(tc, 400, "VQAv2") == 300
    assert steps_for(tc, 400, "GQA") == 50  # 2 epochs x 400 samples / global batch 16, on any number of processes
    assert steps_for(TrainConfig(steps_per_task=None, epochs=1.5, batch_size=8, grad_accum=2), 100) == 10


def test_per_task_steps_reach_the_stage(cache):
    run = _run(cache, "budget", "train.task_steps={VQAv2: 5}", "eval.zero_shot=false")
    done = [json.loads((run / "stages" / s / "done.json").read_text()) for s in ("01-ImageNet", "02-VQAv2")]
    assert [d["train"]["steps"] for d in done] == [3, 5]


def test_budget_for_a_task_not_in_the_stream_is_a_clean_error(cache, capsys):
    code = main(["run", *SMALL, "train.task_steps={Grounding: 5}", f"output_dir={cache / 'runs'}", "name=x"])
    err = capsys.readouterr().err
    assert code == 2 and "['Grounding']" in err and "Traceback" not in err


def test_multitask_trains_once_on_the_union_and_scores_every_task(cache, capsys):
    run = _run(cache, "joint", "method.name=multitask")
    assert "multitask (upper bound)" in capsys.readouterr().out
    stages = sorted(p.name for p in (run / "stages").iterdir() if p.name != "00-base")
    assert stages == ["01-multitask"]
    done = json.loads((run / "stages" / "01-multitask" / "done.json").read_text())
    assert done["train"]["steps"] == 6  # the sum of the two tasks' budgets (3 + 3)
    assert set(done["scores"]) == {"ImageNet", "VQAv2"}
    saved = json.loads((run / "multitask.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert saved["scores"] == done["scores"]
    assert metrics["multitask_mean"] == pytest.approx(sum(done["scores"].values()) / 2)
