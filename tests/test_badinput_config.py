"""The bad-input catalogue, configs: every malformed config value, file or path is refused before any
work, in one clean message naming the key and where it was set, and nothing is created or changed.

Each case runs `mcit run` in-process (tests/badinput.py). A refused run must create no run folder:
every case watches its tmp folder and asserts that `runs/` was not made.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from badinput import assert_rejected, invoke
from mcit import config as config_module
from mcit.config import ConfigError, config_problems, load_config
from test_end_to_end import SMALL


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MCIT_CACHE", str(tmp_path / "cache"))
    return tmp_path


def _refused_run(tmp_path: Path, args: list[str], mentions: list[str], watch: list[Path] = ()) -> str:
    """`mcit run` with the small settings and ``args``: refused with exit 2, nothing trained or written."""
    runs = tmp_path / "runs"
    err = assert_rejected(["run", *SMALL, f"output_dir={runs}", *args], mentions=mentions,
                          watch=[tmp_path, *watch], code=2)
    assert not runs.exists(), "a refused run created its output folder"
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").glob("tiny-llava-*")), \
        "a refused run trained a base model"
    return err


# --------------------------------------------------------------------------------------------
# 1. one bad value on the command line: (override, what the message must name)

BAD_VALUES = [
    # learning rates: finite and > 0 (these were silently accepted)
    ("train.lr=nan", ["train.lr", "must be > 0", "train.lr=nan"]),
    ("train.lr=inf", ["train.lr", "must be > 0"]),
    ("train.lr=-1e-3", ["train.lr", "must be > 0", "-0.001"]),
    ("train.lr=0", ["train.lr", "must be > 0"]),
    ("train.projector_lr=-1", ["train.projector_lr", "must be > 0"]),
    ("model.base_lr=nan", ["model.base_lr", "must be > 0"]),
    # step budgets and counts: >= 1
    ("train.steps_per_task=0", ["train.steps_per_task", "must be >= 1"]),
    ("train.steps_per_task=-5", ["train.steps_per_task", "must be >= 1", "-5"]),
    ("train.grad_accum=0", ["train.grad_accum", "must be >= 1"]),
    ("train.batch_size=0", ["train.batch_size", "must be >= 1"]),  # was a traceback
    ("train.batch_size=-4", ["train.batch_size", "must be >= 1"]),  # was a traceback
    ("train.max_length=0", ["train.max_length", "must be >= 1"]),
    ("train.task_steps={ImageNet: 0}", ["train.task_steps", "ImageNet: must be >= 1"]),
    ("train.epochs=0", ["train.epochs", "must be > 0"]),
    ("train.task_epochs={VQAv2: -1}", ["train.task_epochs", "VQAv2: must be > 0"]),
    ("train.checkpoint_every=-1", ["train.checkpoint_every", "must be >= 0"]),
    ("data.test_per_task=0", ["data.test_per_task", "must be >= 1"]),
    ("data.train_per_task=0", ["data.train_per_task", "must be >= 1"]),
    ("data.pretrain_size=-1", ["data.pretrain_size", "must be >= 0"]),
    ("model.vocab_size=0", ["model.vocab_size", "must be >= 1"]),
    ("model.num_layers=0", ["model.num_layers", "must be >= 1"]),
    ("eval.max_new_tokens=0", ["eval.max_new_tokens", "must be >= 1"]),  # was a traceback
    ("eval.batch_size=0", ["eval.batch_size", "must be >= 1"]),  # was a traceback
    ("eval.task_max_new_tokens={VQAv2: 0}", ["eval.task_max_new_tokens", "VQAv2: must be >= 1"]),
    ("method.lora_r=0", ["method.lora_r", "must be >= 1"]),  # was a traceback
    ("emt.limit=0", ["emt.limit", "must be >= 1"]),
    ("judge.concurrency=0", ["judge.concurrency", "must be >= 1"]),
    ("judge.max_tokens=0", ["judge.max_tokens", "must be >= 1"]),
    # ratios, weights, penalties
    ("train.warmup_ratio=1.5", ["train.warmup_ratio", "must be in [0, 1]"]),
    ("train.weight_decay=-0.1", ["train.weight_decay", "must be >= 0"]),
    ("train.max_grad_norm=0", ["train.max_grad_norm", "must be > 0"]),
    ("method.lora_dropout=1", ["method.lora_dropout", "must be in [0, 1)"]),
    ("judge.top_p=0", ["judge.top_p", "must be in (0, 1]"]),
    ("judge.timeout=-1", ["judge.timeout", "must be > 0"]),
    ("judge.temperature=nan", ["judge.temperature", "must be >= 0"]),
    ("judge.max_retries=-1", ["judge.max_retries", "must be >= 0"]),
    # seeds: what numpy, torch and random all take
    ("seed=-1", ["seed", "must be in [0, 4294967295]"]),  # was a traceback
    ("seed=4294967296", ["seed", "4294967296"]),
    ("data.seed=-3", ["data.seed", "must be in [0, 4294967295]"]),
    # enumerated fields
    ("model.dtype=float64", ["model.dtype", "must be one of float32, bfloat16, float16"]),
    ("judge.backend=bogus", ["judge.backend", "must be one of embedding, openai, local, none"]),
    ("eval.scoring=strict", ["eval.scoring", "corrected, coin-compat"]),
    ("emt.decider=gpt", ["emt.decider", "rule, rule-lenient"]),
    ("data.order=sideways", ["data.order", "coin, reverse, random"]),
    ("judge.protocol=official", ["judge.protocol", "'mcit', 'coin'"]),
    # lists and names
    ("data.tasks=[]", ["data.tasks", "must not be empty"]),  # was silently accepted
    ("method.target_modules=[]", ["method.target_modules", "must not be empty"]),
    ("name=../escape", ["name", "stays inside output_dir"]),
    ("name=/tmp/elsewhere", ["name", "not absolute"]),
    ("output_dir=''", ["output_dir", "must not be empty"]),
    # types and keys
    ("train.lr=fast", ["train.lr", "expected float", "'fast'"]),
    ("train.batch_size=2.5", ["train.batch_size", "expected int"]),
    ("eval.zero_shot=maybe", ["eval.zero_shot", "true or false"]),
    ("data.tasks=ImageNet", ["data.tasks", "expected list"]),
    ("train.learning_rate=0.1", ["unknown key 'train.learning_rate'", "did you mean 'train.lr'"]),
    ("trian.lr=0.1", ["unknown key", "train.lr"]),
    ("train.lr.value=1", ["'train.lr'", "is a value, not a section"]),
    ("train=5", ["'train'", "expected a mapping"]),
]


@pytest.mark.parametrize("override, mentions", BAD_VALUES, ids=[o for o, _ in BAD_VALUES])
def test_bad_value_is_refused_before_any_work(cache, override, mentions):
    _refused_run(cache, [override], mentions)


# --------------------------------------------------------------------------------------------
# 2. rules across fields, and rules that need the benchmark's task list: (overrides, mentions)

BAD_COMBINATIONS = [
    (["model.num_heads=3"], ["model.hidden_size=32", "multiple of model.num_heads=3"]),  # was a traceback
    (["model.vision_hidden_size=33"], ["model.vision_hidden_size=33", "model.num_heads=2"]),
    (["model.hidden_size=30"], ["model.hidden_size / model.num_heads = 15", "must be even"]),
    (["data.image_size=36"], ["data.image_size=36", "multiple of model.patch_size=8"]),
    (["data.image_size=16"], ["data.image_size", ">= 32"]),  # coin-mini's own limit; was a traceback
    (["model.patch_size=64"], ["data.image_size=32", "model.patch_size=64"]),
    (["data.pretrain_size=0"], ["data.pretrain_size=0", "base stage", "model.name=<folder>"]),
    (["data.tasks=[ImageNet,ImageNet]"], ["data.tasks", "ImageNet listed more than once"]),
    (["data.tasks=[ImageNet,Nope]"], ["data.tasks", "'Nope' is not a task of benchmark 'coin-mini'", "VQAv2"]),
    (["train.task_steps={Imagenet: 5}"], ["train.task_steps names ['Imagenet'], which is not in the stream"]),
    (["eval.task_max_new_tokens={GQA: 5}"],
     ["eval.task_max_new_tokens names ['GQA']", "not in the stream ['ImageNet', 'VQAv2']"]),
    (["emt.every_steps=5"], ["emt.every_steps=5", "emt.datasets is empty"]),
    (["method.name=moelora", "method.lora_r=3"], ["method.lora_r=3", "multiple of method.moe_experts"]),
    (["method.with=[ewc,ewc]"], ["method.with", "twice"]),
    (["data.benchmark=nowhere.yaml"], ["data.benchmark", "nowhere.yaml", "not found"]),
]


@pytest.mark.parametrize("overrides, mentions", BAD_COMBINATIONS, ids=[" ".join(o) for o, _ in BAD_COMBINATIONS])
def test_bad_combination_is_refused_before_any_work(cache, overrides, mentions):
    _refused_run(cache, overrides, mentions)


def test_every_problem_is_reported_at_once_with_where_it_was_set(cache):
    err = _refused_run(cache, ["train.lr=-1", "seed=-1", "model.num_heads=3", "train.lern=2"],
                       ["5 problems", "unknown key 'train.lern'", "train.lr: must be > 0",
                        "(in override 'train.lr=-1')", "seed: must be in", "multiple of model.num_heads=3",
                        "override 'model.num_heads=3'"])
    assert err.count("\n") == 6  # the count, then one line each (both towers' widths)


def test_max_length_too_short_for_a_task_stops_before_stage_one(cache):
    """The rule that needs the encoded data: checked once the model's processor exists, before any
    stage trains. ScienceQA's records at these sizes hold 93 to 101 tokens; the base stage's fit in 95."""
    small = [a for a in SMALL if not a.startswith("data.tasks")] + ["data.tasks=[ScienceQA]"]
    runs = cache / "runs"
    assert_rejected(["run", *small, f"output_dir={runs}", "train.max_length=95"],
                    mentions=["train.max_length=95 cannot hold every sample of task ScienceQA", "101 tokens",
                              "raise train.max_length to at least 101"], watch=[cache], code=2)
    assert not runs.exists()
    assert_rejected(["run", *small, f"output_dir={runs}", "train.max_length=20"],  # the base model is cached now
                    mentions=["train.max_length=20 is shorter than every sample of task ScienceQA", "93 tokens"],
                    watch=[cache], code=2)
    assert not runs.exists()


# --------------------------------------------------------------------------------------------
# 3. config files: bad YAML shapes; problems named with file and line


BAD_FILES = {
    "top level a list": ("- train\n- lr\n", ["bad.yaml", "top level must be a mapping"]),
    "top level a number": ("5\n", ["bad.yaml", "top level must be a mapping"]),
    "unparsable": ("train:\n  lr: [1, 2\n", ["cannot parse", "bad.yaml", "line"]),
    "tab indentation": ("train:\n\tlr: 1\n", ["cannot parse", "bad.yaml", "line 2"]),
    "duplicate key": ("train:\n  lr: 1\n  lr: 2\n", ["duplicate key 'train.lr'", "line 3"]),
    "section a scalar": ("train: 5\n", ["'train'", "bad.yaml (line 1)", "expected a mapping"]),
    "value out of range": ("seed: 0\ntrain:\n  lr: -1\n", ["train.lr: must be > 0", "bad.yaml (line 3)"]),
    "two problems": ("train:\n  batch_size: 0\n  grad_accum: -2\n",
                     ["2 problems", "train.batch_size", "(line 2)", "train.grad_accum", "(line 3)"]),
    "wrong type with line": ("train:\n  batch_size: big\n", ["train.batch_size", "bad.yaml (line 2)", "expected int"]),
    "unknown key with line": ("model:\n  heads_num: 4\n", ["unknown key 'model.heads_num'", "line 2"]),
    "non-string key": ("train:\n  1: 2\n", ["key train.1", "not a string"]),
    "not UTF-8": (b"seed: \xff\xfe\n", ["cannot read", "bad.yaml"]),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_config_file_is_refused(cache, case):
    text, mentions = BAD_FILES[case]
    path = cache / "bad.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    assert_rejected(["run", str(path), f"output_dir={cache / 'runs'}"], mentions=mentions, watch=[cache], code=2)
    assert not (cache / "runs").exists()


def test_config_path_that_is_a_folder(cache):
    folder = cache / "conf.yaml"
    folder.mkdir()
    assert_rejected(["run", str(folder)], mentions=["conf.yaml"], watch=[cache])


def test_missing_config_file(cache):
    assert_rejected(["run", str(cache / "missing.yaml")], mentions=["config file not found", "missing.yaml"],
                    watch=[cache])


# --------------------------------------------------------------------------------------------
# 4. paths of the wrong kind


def test_output_dir_that_is_a_file(cache):  # was a traceback
    target = cache / "runs"
    target.write_text("my notes\n")
    assert_rejected(["run", *SMALL, f"output_dir={target}"], mentions=["output_dir", "is a file"], watch=[cache],
                    code=2)
    assert target.read_text() == "my notes\n"


def test_output_dir_below_a_file(cache):
    blocker = cache / "notes.txt"
    blocker.write_text("x")
    _refused_run(cache, [f"output_dir={blocker / 'runs'}"], ["output_dir", "cannot be created", "notes.txt"])


def test_run_name_that_is_a_file(cache):
    runs = cache / "out"
    runs.mkdir()
    (runs / "exp").write_text("x")
    assert_rejected(["run", *SMALL, f"output_dir={runs}", "name=exp"], mentions=["name", "is a file"],
                    watch=[cache], code=2)


def test_foreign_folder_as_coin_mini_root(cache):  # was a traceback
    root = cache / "mine"
    root.mkdir()
    (root / "thesis.tex").write_text("\\documentclass{article}\n")
    _refused_run(cache, [f"data.root={root}"], ["data.root", str(root), "new or empty folder"], watch=[root])


# --------------------------------------------------------------------------------------------
# 5. the names of enumerated fields are the ones the code uses


def test_enumerated_names_match_the_modules_that_use_them():
    from mcit.data.stream import NAMED_ORDERS
    from mcit.emt.evaluate import DECIDERS
    from mcit.eval.coin_compat import MODES
    from mcit.eval.judge_protocol import BACKENDS
    from mcit.models.load import DTYPES

    assert config_module.NAMED_ORDERS == tuple(NAMED_ORDERS)
    assert config_module.DTYPES == tuple(DTYPES)
    assert config_module.SCORING_MODES == tuple(MODES)
    assert config_module.JUDGE_BACKENDS == tuple(BACKENDS)
    assert config_module.EMT_DECIDERS == tuple(DECIDERS)


def test_every_numeric_field_has_a_check():
    """A count, size, rate or seed added later without a range check fails here."""
    import typing

    from mcit.config import RunConfig, _fields, _hints, _is_section

    def unchecked(cls, prefix=""):
        for key, f in _fields(cls).items():
            tp = _hints(cls)[key]
            if _is_section(tp):
                yield from unchecked(tp, f"{prefix}{key}.")
            elif {int, float} & set(typing.get_args(tp) or (tp,)) and f.metadata.get("check") is None:
                yield prefix + key

    assert list(unchecked(RunConfig)) == []


def test_problems_are_a_list_on_the_error():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["train.lr=-1", "eval.batch_size=0"])
    assert len(info.value.problems) == 2
    assert info.value.problems[0].startswith("train.lr: must be > 0, got -1.0")
    assert config_problems(load_config(None, [])) == []


def test_valid_edge_values_are_accepted():
    cfg = load_config(None, ["seed=4294967295", "train.warmup_ratio=0", "train.warmup_ratio=1",
                             "train.steps_per_task=null", "train.checkpoint_every=0", "emt.every_steps=0",
                             "name=group/run-1", "method.lora_dropout=0", "judge.top_p=1"])
    assert cfg.seed == 2**32 - 1 and cfg.train.steps_per_task is None and cfg.name == "group/run-1"


def test_data_check_refuses_a_bad_config_too(cache):
    code, _, err = invoke(["data", "check", "train.lr=nan"])
    assert code == 2 and "train.lr: must be > 0" in err and "Traceback" not in err
