"""LCIA as the official code does it (issue 16, part 2): TF-IDF fitted per pair of instruction
strings (LoRASelect.py) and no EMA on tasks that expand (the scripts' --dema False), by default;
the earlier choices as options; `lcia-ema` (the balanced EMA alone); the shipped ablation configs.

The expected grouping decisions are computed here independently, with scikit-learn directly, the
way LoRASelect.py does: one TfidfVectorizer(stop_words="english") per (current, stored) pair of
strings, cosine similarity, the mean over all pairs per stored group, join the most similar group
when the best mean reaches the threshold (0.30 for Diverse/10Type), else start a new one."""
import copy
import json
import math
from pathlib import Path

import pytest
import torch
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.metrics.pairwise import cosine_similarity
from test_ema_lcia import base_model, ctx_for, method_for  # noqa: F401 - `base_model` is a fixture used below
from test_end_to_end import SMALL, cache  # noqa: F401 - `cache` is a fixture used below

from mcit.cli import main
from mcit.config import ConfigError, load_config
from mcit.data.coin_mini import TASKS, TEMPLATES, _text_for
from mcit.data.schema import Sample
from mcit.methods import build_method
from mcit.methods.lcia import BalancedEMA, InstructionSimilarity, pair_tfidf_similarity

CONFIGS = Path(__file__).parents[1] / "src" / "mcit" / "configs"
ABLATION = {"Diverse": CONFIGS / "lcia_ablation_diverse.yaml", "10Type": CONFIGS / "lcia_ablation_10type.yaml"}

# ------------------------------------------------------------------------------------ the official rule, by hand


def official_similarity(current: list[str], stored: list[str]) -> float:
    sims = []
    for c in current:
        for s in stored:
            pair = TfidfVectorizer(stop_words="english").fit_transform([c, s])
            sims.append(cosine_similarity(pair[0:1], pair[1:2])[0][0])
    return sum(sims) / len(sims)


def official_decisions(instruction_sets: list[list[str]], threshold: float = 0.30) -> list[tuple[str, int, list]]:
    """(decision, group index, similarities to the groups before it) per task, as LoRASelect.py."""
    groups: list[list[str]] = []
    out = []
    for current in instruction_sets:
        sims = [official_similarity(current, g) for g in groups]
        if sims and max(sims) >= threshold:
            best = sims.index(max(sims))
            groups[best] += [t for t in current if t not in groups[best]]
            out.append(("retrain", best, sims))
        else:
            groups.append(list(current))
            out.append(("expand", len(groups) - 1, sims))
    return out


def task_samples(instruction_set: str, task: str) -> list[Sample]:
    """One sample per template of the task, built as coin-mini writes them (the instruction is read
    back from the prompt by the task's rule, as in training)."""
    return [Sample(id=f"{task}-{i}", task=task, image=None, text=_text_for(task, f"What is in picture {i}?", t),
                   answers=("x",)) for i, t in enumerate(TEMPLATES[instruction_set][task])]


def lcia_decisions(base_model, instruction_set: str, tasks=TASKS, *overrides):
    """LCIA's own records for a stream: every task's samples through train_samples, no training."""
    method, cfg = method_for("method.name=lcia", f"data.instruction_set={instruction_set}", *overrides)
    model = method.setup(copy.deepcopy(base_model), cfg)
    records = []
    for task in tasks:
        ctx = ctx_for(model, task)
        method.before_task(ctx)
        method.train_samples(ctx, task_samples(instruction_set, task))
        records.append(ctx.log["lcia_grouping"])
    return method, records


# ------------------------------------------------------------------------------------ similarity


def test_pair_similarity_by_hand_and_where_it_differs_from_the_union_fit():
    # Fitted on two strings: "red" is in both (smoothed idf 1), "apple"/"pear" in one (idf 1 + ln 1.5),
    # so cos = 1 / (1 + (1 + ln 1.5)^2) = 0.33610
    by_pair = 1 / (1 + (1 + math.log(1.5)) ** 2)
    assert pair_tfidf_similarity("red apple", "red pear") == pytest.approx(by_pair) == pytest.approx(0.33610, abs=1e-5)
    # Fitted on all three strings, "apple"/"pear"/"plum" get idf 1 + ln 2: cos = 1 / (1 + (1 + ln 2)^2) = 0.25862
    by_union = 1 / (1 + (1 + math.log(2)) ** 2)
    pair, union = InstructionSimilarity("tfidf", "pair"), InstructionSimilarity("tfidf", "union")
    assert pair.between(["red apple"], ["red pear", "red plum"]) == pytest.approx(by_pair)
    assert union.between(["red apple"], ["red pear", "red plum"]) == pytest.approx(by_union)
    assert by_union == pytest.approx(0.25862, abs=1e-5) and by_union < 0.30 <= by_pair  # a decision flips
    # stop words alone: no vocabulary (the official code raises there): 0, identical strings still 1
    assert pair_tfidf_similarity("What is it?", "Is it?") == 0.0
    assert pair.between(["What is it?"], ["What is it?"]) == 1.0
    assert pair_tfidf_similarity("red apple", "green pear") == 0.0
    assert pair_tfidf_similarity("red pear", "red apple") == pair_tfidf_similarity("red apple", "red pear")


def test_pair_is_the_default_and_a_bad_fit_is_refused():
    method, _ = method_for("method.name=lcia")
    assert method.similarity.kind == "tfidf" and method.similarity.fit == "pair"
    assert method_for("method.name=lcia", "method.lcia_tfidf=union")[0].similarity.fit == "union"
    with pytest.raises(ConfigError, match="lcia_tfidf"):
        load_config(None, ["method.name=lcia", "method.lcia_tfidf=both"])
    with pytest.raises(ConfigError, match="lcia_expand_ema"):
        load_config(None, ["method.name=lcia", "method.lcia_expand_ema=all"])


# ------------------------------------------------------------------------------------ decisions on coin-mini


@pytest.mark.parametrize("instruction_set", ["Diverse", "10Type"])
def test_default_grouping_decides_as_the_official_code_on_coin_mini(base_model, instruction_set):
    expected = official_decisions([list(dict.fromkeys(TEMPLATES[instruction_set][t])) for t in TASKS])
    method, records = lcia_decisions(base_model, instruction_set)
    got = [(r["decision"], int(r["group"][len("group"):]), list(r["similarities"].values())) for r in records]
    for (decision, group, sims), (e_decision, e_group, e_sims) in zip(got, expected):
        assert (decision, group) == (e_decision, e_group)
        assert sims == pytest.approx(e_sims, abs=1e-4)  # records keep 4 significant digits
    assert len(method.groups) == 4  # the check: the official code forms 4 groups on both sets
    assert [g["tasks"] for g in method.groups] == [
        ["ScienceQA"], ["TextVQA", "ImageNet", "VizWiz", "VQAv2", "OCRVQA"], ["GQA"], ["Grounding"]] \
        if instruction_set == "Diverse" else [
        ["ScienceQA"], ["TextVQA", "GQA", "VizWiz", "VQAv2", "OCRVQA"], ["ImageNet"], ["Grounding"]]


def test_diverse_vizwiz_joins_at_0_322_and_the_union_fit_keeps_the_old_decisions(base_model):
    _, records = lcia_decisions(base_model, "Diverse")
    vizwiz = records[TASKS.index("VizWiz")]
    assert vizwiz["similarities"]["group1"] == pytest.approx(0.322, abs=5e-4)  # the official number
    assert vizwiz["decision"] == "retrain" and vizwiz["group"] == "group1"

    method, records = lcia_decisions(base_model, "Diverse", TASKS, "method.lcia_tfidf=union")
    vizwiz = records[TASKS.index("VizWiz")]
    assert vizwiz["similarities"]["group1"] == pytest.approx(0.251, abs=5e-4)  # mcit's earlier number
    assert vizwiz["decision"] == "expand" and len(method.groups) == 5


@pytest.mark.parametrize("instruction_set", ["Diverse", "10Type"])
def test_the_ablation_streams_make_grouping_decide(base_model, instruction_set):
    """On each shipped ablation stream LCIA does not just retrain one group: a later task expands."""
    cfg = load_config(ABLATION[instruction_set], [])
    assert cfg.data.instruction_set == instruction_set and cfg.method.name == "lora"
    _, records = lcia_decisions(base_model, instruction_set, cfg.data.tasks)
    decisions = [(r["decision"], r["group"]) for r in records]
    assert decisions == ([("expand", "group0"), ("retrain", "group0"), ("expand", "group1"), ("retrain", "group0")]
                         if instruction_set == "Diverse" else
                         [("expand", "group0"), ("expand", "group1"), ("retrain", "group0"), ("retrain", "group0")])
    # ... while on Original instructions the same four tasks all join the first group
    _, records = lcia_decisions(base_model, "Original", cfg.data.tasks)
    assert [r["decision"] for r in records] == ["expand", "retrain", "retrain", "retrain"]


# ------------------------------------------------------------------------------------ EMA on expand tasks


def _projector(model):
    return next(p for n, p in model.named_parameters() if "multi_modal_projector" in n and p.requires_grad)


def test_expand_tasks_train_without_any_ema_by_default(base_model):
    method, cfg = method_for("method.name=lcia", "data.instruction_set=Diverse")
    model = method.setup(copy.deepcopy(base_model), cfg)
    ctx = ctx_for(model, "TextVQA")
    method.before_task(ctx)
    method.train_samples(ctx, task_samples("Diverse", "TextVQA"))
    for step in (1, 2, 3):  # stands for training: the weights move; nothing shadows them
        with torch.no_grad():
            _projector(model).add_(1.0)
        ctx.step = step
        method.after_step(ctx)
    trained = _projector(model).detach().clone()
    method.after_task(ctx)
    torch.testing.assert_close(_projector(model), trained)  # no EMA written back
    assert ctx.log["lcia"]["ema_scope"] == "none" and "ema_tensors" not in ctx.log["lcia"]
    assert "lcia_coefficients" not in ctx.series and method.task_state_dict() == {}

    ctx = ctx_for(model, "ImageNet")  # joins group0: the balanced EMA on every trainable tensor
    method.before_task(ctx)
    method.train_samples(ctx, task_samples("Diverse", "ImageNet"))
    assert ctx.log["lcia_grouping"]["decision"] == "retrain" and method._ema_scope == "all"


# ------------------------------------------------------------------------------------ lcia-ema


def test_lcia_ema_is_the_balanced_ema_alone():
    method, cfg = method_for("method.name=lcia-ema", "data.instruction_set=Diverse")
    assert isinstance(method, BalancedEMA) and method.name == "lcia-ema" and not method.grouping
    model = torch.nn.Linear(2, 2)
    ctx = ctx_for(model, "TextVQA")
    method.before_task(ctx)
    assert method.train_samples(ctx, task_samples("Diverse", "TextVQA"))
    assert "lcia_grouping" not in ctx.log and method._ema_scope == "all"  # the first task too
    assert method.json_state() == {} and method.groups == []
    with pytest.raises(ConfigError, match="lcia-ema and ema both average the weights"):
        build_method(load_config(None, ["method.name=lcia-ema", "method.with=[ema]"]).method)


def test_lcia_ema_needs_no_threshold_for_an_instruction_set_lcia_does_not_know(base_model):
    method, cfg = method_for("method.name=lcia-ema", "data.instruction_set=MyPrompts")
    method.setup(copy.deepcopy(base_model), cfg)  # no grouping: nothing to compare, no threshold
    lcia, cfg = method_for("method.name=lcia", "data.instruction_set=MyPrompts")
    with pytest.raises(ConfigError, match="no default threshold"):
        lcia.setup(copy.deepcopy(base_model), cfg)


# ------------------------------------------------------------------------------------ the ablation, in miniature


def test_ablation_config_runs_every_row_in_miniature(cache):
    """The Diverse ablation, shipped config and command, on the SMALL model for one seed: four rows,
    and inside the lcia runs the decisions and EMA scopes the config's comment promises."""
    small = [a for a in SMALL if not a.startswith("data.tasks")]
    out = cache / "ablation"
    assert main(["compare", str(ABLATION["Diverse"]), *small, "--methods", "lora,ema,lcia-ema,lcia",
                 "--seeds", "0", "--out", str(out)]) == 0
    record = json.loads((out / "compare.json").read_text())
    assert list(record["table"]) == ["lora", "ema", "lcia-ema", "lcia"]
    assert all(row["seeds"] == 1 and row["if"]["MFN"] is not None for row in record["table"].values())

    stages = ["01-TextVQA", "02-ImageNet", "03-GQA", "04-VQAv2"]
    logs = [json.loads((out / "runs" / "lcia-seed0" / "stages" / s / "done.json").read_text())["method_log"]
            for s in stages]
    assert [(log["lcia_grouping"]["decision"], log["lcia"]["ema_scope"]) for log in logs] == [
        ("expand", "none"), ("retrain", "all"), ("expand", "none"), ("retrain", "all")]
    for stage, log in zip(stages, logs):  # coefficients are logged exactly where the EMA ran
        has_series = (out / "runs" / "lcia-seed0" / "stages" / stage / "lcia_coefficients.jsonl").is_file()
        assert has_series == (log["lcia"]["ema_scope"] == "all")
    assert (out / "runs" / "lcia-seed0" / "stages" / "03-GQA" / "model" / "group1").is_dir()
    for stage in stages:
        log = json.loads((out / "runs" / "lcia-ema-seed0" / "stages" / stage / "done.json").read_text())["method_log"]
        assert "lcia_grouping" not in log and log["lcia"]["ema_scope"] == "all"
