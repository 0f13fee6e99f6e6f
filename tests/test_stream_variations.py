"""Stream variations: named orders and subsets, per-task budgets, and the multitask upper bound."""
import json

import pytest

from mcit.cli import main
from mcit.config import ConfigError, DataConfig, TrainConfig
from mcit.data import coin_mini
from mcit.data.stream import stream_order
from mcit.fit import steps_for

from test_end_to_end import SMALL, _run, cache  # noqa: F401  (cache is a fixture)


def test_named_orders():
    assert stream_order(DataConfig(), seed=0) == list(coin_mini.TASKS)
    assert stream_order(DataConfig(order="reverse"), seed=0) == list(reversed(coin_mini.TASKS))
    shuffled = stream_order(DataConfig(order="random"), seed=0)
    assert sorted(shuffled) == sorted(coin_mini.TASKS) and shuffled != list(coin_mini.TASKS)
    assert stream_order(DataConfig(order="random"), seed=0) == shuffled  # fixed by the seed
    assert stream_order(DataConfig(order="random"), seed=1) != shuffled


def test_explicit_subset_wins_and_repeats_are_refused():
    dc = DataConfig(tasks=["VQAv2", "ScienceQA"], order="reverse")
    assert stream_order(dc, seed=0) == ["VQAv2", "ScienceQA"]
    with pytest.raises(ConfigError, match=r"\['GQA'\] listed more than once"):
        stream_order(DataConfig(tasks=["GQA", "VizWiz", "GQA"]), seed=0)
    with pytest.raises(ConfigError, match="data.order: 'sideways'"):
        stream_order(DataConfig(order="sideways"), seed=0)


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
