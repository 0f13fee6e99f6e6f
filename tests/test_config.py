"""Behaviour of mcit.config: defaults, YAML merge, overrides, type checks and error messages."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from mcit.config import (
    ConfigError,
    DataConfig,
    EvalConfig,
    MethodConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    config_hash,
    config_keys,
    config_to_dict,
    config_to_yaml,
    load_config,
)


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- defaults


def test_defaults_without_file_or_overrides():
    cfg = load_config(None, [])
    assert cfg == RunConfig()
    assert cfg.seed == 0 and cfg.output_dir == "runs" and cfg.name is None
    assert cfg.data.benchmark == "coin-mini" and cfg.data.tasks is None
    assert cfg.data.train_per_task == 400 and cfg.data.image_size == 64
    assert cfg.model.name == "tiny-llava" and cfg.model.base_lr == 1e-3
    assert cfg.method.name == "lora" and cfg.method.lora_r == 16 and cfg.method.target_modules is None
    assert cfg.train.steps_per_task == 300 and cfg.train.lr == 1e-3 and cfg.train.projector_lr is None
    assert cfg.eval.zero_shot is True and cfg.eval.upper_triangle is False


def test_sections_are_independent_instances():
    a, b = RunConfig(), RunConfig()
    a.train.lr = 5.0
    assert b.train.lr == TrainConfig().lr
    assert isinstance(a.data, DataConfig) and isinstance(a.model, ModelConfig)
    assert isinstance(a.method, MethodConfig) and isinstance(a.train, TrainConfig)
    assert isinstance(a.eval, EvalConfig)


def test_every_field_is_documented():
    for key in config_keys(sections=True):
        section, _, leaf = key.rpartition(".")
        obj = RunConfig()
        for part in filter(None, section.split(".")):
            obj = getattr(obj, part)
        f = next(f for f in dataclasses.fields(obj) if f.name in (leaf, leaf + "_"))  # method.with is with_
        assert f.metadata.get("help"), key


def test_config_keys_lists_dotted_leaves():
    keys = config_keys()
    assert "train.lr" in keys and "data.tasks" in keys and "seed" in keys
    assert "train" not in keys
    assert "train" in config_keys(sections=True)


# ----------------------------------------------------------------------------- YAML merge


def test_yaml_merges_over_defaults(tmp_path):
    path = write(tmp_path, """
        seed: 7
        data:
          tasks: [ScienceQA, TextVQA]
        train:
          lr: 3e-4          # YAML 1.1 leaves this a string; it must become a float
          steps_per_task: 50
        method:
          name: full
    """)
    cfg = load_config(path, [])
    assert cfg.seed == 7
    assert cfg.data.tasks == ["ScienceQA", "TextVQA"]
    assert cfg.train.lr == pytest.approx(3e-4) and isinstance(cfg.train.lr, float)
    assert cfg.train.steps_per_task == 50
    assert cfg.method.name == "full"
    # untouched keys, also inside touched sections, keep their defaults
    assert cfg.train.batch_size == 16 and cfg.data.benchmark == "coin-mini"
    assert cfg.model == ModelConfig()


def test_empty_yaml_and_empty_section_mean_defaults(tmp_path):
    assert load_config(write(tmp_path, "", "empty.yaml"), []) == RunConfig()
    assert load_config(write(tmp_path, "# only a comment\n", "c.yaml"), []) == RunConfig()
    assert load_config(write(tmp_path, "train:\n", "s.yaml"), []) == RunConfig()


def test_overrides_apply_after_the_file(tmp_path):
    path = write(tmp_path, "train:\n  lr: 0.01\n  batch_size: 8\n")
    cfg = load_config(path, ["train.lr=0.5"])
    assert cfg.train.lr == 0.5 and cfg.train.batch_size == 8


def test_later_override_wins():
    cfg = load_config(None, ["seed=1", "seed=2"])
    assert cfg.seed == 2


def test_int_is_accepted_for_float_and_integral_float_for_int(tmp_path):
    cfg = load_config(write(tmp_path, "train:\n  lr: 1\n  epochs: 2\n  batch_size: 8.0\n"), [])
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.train.epochs == 2.0 and isinstance(cfg.train.epochs, float)
    assert cfg.train.batch_size == 8 and isinstance(cfg.train.batch_size, int)


# ----------------------------------------------------------------------------- overrides


@pytest.mark.parametrize(
    "override, getter, expected",
    [
        ("train.lr=3e-4", lambda c: c.train.lr, 3e-4),
        ("train.lr=0.002", lambda c: c.train.lr, 0.002),
        ("train.batch_size=4", lambda c: c.train.batch_size, 4),
        ("seed=123", lambda c: c.seed, 123),
        ("eval.zero_shot=false", lambda c: c.eval.zero_shot, False),
        ("eval.upper_triangle=true", lambda c: c.eval.upper_triangle, True),
        ("model.name=/models/llava", lambda c: c.model.name, "/models/llava"),
        ("data.benchmark=coin", lambda c: c.data.benchmark, "coin"),
        ("data.tasks=[GQA,VizWiz]", lambda c: c.data.tasks, ["GQA", "VizWiz"]),
        ("emt.datasets=[]", lambda c: c.emt.datasets, []),  # data.tasks=[] is refused: tests/test_badinput_config.py
        ("method.target_modules=[q_proj, v_proj]", lambda c: c.method.target_modules,
         ["q_proj", "v_proj"]),
        ("method.target_modules=null", lambda c: c.method.target_modules, None),
        ("train.steps_per_task=null", lambda c: c.train.steps_per_task, None),
        ("train.projector_lr=1e-4", lambda c: c.train.projector_lr, 1e-4),
        ("data.root=/data/coin", lambda c: c.data.root, "/data/coin"),
        ("name=my-run", lambda c: c.name, "my-run"),
        # text that YAML would read as a number or bool stays text for str fields
        ("name=001", lambda c: c.name, "001"),
        ("judge.model=16", lambda c: c.judge.model, "16"),
        ("name='quoted value'", lambda c: c.name, "quoted value"),
        ("  train.lr = 0.25 ", lambda c: c.train.lr, 0.25),
        ("model.name=a=b", lambda c: c.model.name, "a=b"),
    ],
)
def test_override_types(override, getter, expected):
    cfg = load_config(None, [override])
    value = getter(cfg)
    assert value == expected
    assert type(value) is type(expected)


def test_override_of_a_whole_section_merges():
    cfg = load_config(None, ["train={lr: 0.5, batch_size: 2}"])
    assert cfg.train.lr == 0.5 and cfg.train.batch_size == 2 and cfg.train.grad_accum == 1


def test_override_list_from_yaml_can_be_replaced(tmp_path):
    path = write(tmp_path, "data:\n  tasks: [A, B, C]\n")
    assert load_config(path, ["data.tasks=[C]"]).data.tasks == ["C"]
    assert load_config(path, ["data.tasks=null"]).data.tasks is None


@pytest.mark.parametrize("bad", ["train.lr", "=3", "train..lr=1", ".lr=1"])
def test_malformed_override(bad):
    with pytest.raises(ConfigError, match="override"):
        load_config(None, [bad])


def test_override_below_a_value_is_refused():
    with pytest.raises(ConfigError, match="'train.lr'.*not a section"):
        load_config(None, ["train.lr.x=1"])


# ----------------------------------------------------------------------------- type errors


@pytest.mark.parametrize(
    "override, key, expected",
    [
        ("train.lr=abc", "train.lr", "expected float"),
        ("train.batch_size=2.5", "train.batch_size", "expected int"),
        ("train.batch_size=true", "train.batch_size", "expected int"),
        ("eval.zero_shot=1", "eval.zero_shot", "expected bool"),
        ("eval.zero_shot=yesplease", "eval.zero_shot", "expected bool"),
        ("data.tasks=GQA", "data.tasks", "expected list[str] | None"),
        ("data.tasks=[GQA, [x]]", "data.tasks[1]", "expected str"),
        ("train.lr=null", "train.lr", "expected float"),
        ("model.name=null", "model.name", "expected str"),
        ("train.steps_per_task=many", "train.steps_per_task", "expected int | None"),
        ("train=5", "train", "expected a mapping"),
        ("model.name=[a, b]", "model.name", "expected str"),
    ],
)
def test_override_type_errors_name_source_key_and_type(override, key, expected):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    message = str(info.value)
    assert "override" in message
    assert repr(key) in message
    assert expected in message


def test_yaml_type_error_names_file_key_type_and_line(tmp_path):
    path = write(tmp_path, "seed: 1\ntrain:\n  batch_size: lots\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, [])
    message = str(info.value)
    assert str(path) in message and "'train.batch_size'" in message
    assert "expected int" in message and "line 3" in message


def test_yaml_number_for_a_string_field_is_an_error_with_a_hint(tmp_path):
    path = write(tmp_path, "model:\n  dtype: 16\n")
    with pytest.raises(ConfigError, match=r"'model.dtype'.*expected str.*quote"):
        load_config(path, [])


def test_yaml_scalar_for_a_section_is_an_error(tmp_path):
    path = write(tmp_path, "train: fast\n")
    with pytest.raises(ConfigError, match=r"'train'.*expected a mapping"):
        load_config(path, [])


# ----------------------------------------------------------------------------- unknown keys


def test_unknown_key_in_yaml_suggests_the_right_key(tmp_path):
    path = write(tmp_path, "train:\n  leanring_rate: 3e-4\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, [])
    message = str(info.value)
    assert f"unknown key 'train.leanring_rate' in {path}; did you mean 'train.lr'?" in message
    assert "line 2" in message


def test_unknown_key_in_yaml_relative_path_message(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("cfg.yaml").write_text("train:\n  leanring_rate: 3e-4\n")
    with pytest.raises(ConfigError) as info:
        load_config("cfg.yaml", [])
    assert str(info.value).startswith(
        "unknown key 'train.leanring_rate' in cfg.yaml; did you mean 'train.lr'?")


def test_unknown_top_level_section_in_yaml(tmp_path):
    path = write(tmp_path, "trian:\n  lr: 1\n")
    with pytest.raises(ConfigError, match=r"unknown key 'trian'.*did you mean 'train'\?"):
        load_config(path, [])


@pytest.mark.parametrize(
    "override, unknown, suggestion",
    [
        ("train.leanring_rate=1e-4", "train.leanring_rate", "train.lr"),
        ("train.learning_rate=1e-4", "train.learning_rate", "train.lr"),
        ("trian.lr=1e-4", "trian.lr", "train.lr"),
        ("method.lora_rank=8", "method.lora_rank", "method.lora_r"),
        ("eval.max_new_token=8", "eval.max_new_token", "eval.max_new_tokens"),
        ("train.max_new_tokens=8", "train.max_new_tokens", "eval.max_new_tokens"),
        ("lr=1e-4", "lr", "train.lr"),
        ("data.task=[A]", "data.task", "data.tasks"),
        ("sed=3", "sed", "seed"),
    ],
)
def test_unknown_key_in_override_suggests(override, unknown, suggestion):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    message = str(info.value)
    assert message.startswith(f"unknown key {unknown!r} in override")
    assert f"did you mean {suggestion!r}?" in message


def test_unknown_key_without_close_match_lists_valid_keys():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["eval.zzzzzzzzzz=1"])
    message = str(info.value)
    assert "unknown key 'eval.zzzzzzzzzz'" in message and "did you mean" not in message
    assert "batch_size" in message and "zero_shot" in message


# ----------------------------------------------------------------------------- bad files


@pytest.mark.parametrize("text, kind", [("- a\n- b\n", "list"), ("just text\n", "str"), ("3\n", "int")])
def test_non_mapping_yaml(tmp_path, text, kind):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, [])
    message = str(info.value)
    assert str(path) in message and "mapping" in message and kind in message and "line 1" in message


def test_unparsable_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path, "seed: 1\ntrain:\n  lr: [1, 2\n  batch_size: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, [])
    message = str(info.value)
    assert str(path) in message and "line " in message


def test_duplicate_key_in_yaml(tmp_path):
    path = write(tmp_path, "train:\n  lr: 1\n  lr: 2\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'train.lr'.*line 3"):
        load_config(path, [])


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml", [])


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


# ----------------------------------------------------------------------------- round trips, hashes


def _custom() -> RunConfig:
    return load_config(None, [
        "seed=5", "name=exp 1", "data.tasks=[GQA, VizWiz, 'Grounding: x']", "train.lr=3e-5",
        "train.projector_lr=1e-6", "method.target_modules=[q_proj]", "eval.upper_triangle=true",
        "model.name=/models/llava-1.5", "train.steps_per_task=null", "judge.model='yes'",
    ])


@pytest.mark.parametrize("make", [RunConfig, _custom])
def test_dict_yaml_round_trip(tmp_path, make):
    cfg = make()
    path = tmp_path / "dumped.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    assert load_config(path, []) == cfg


@pytest.mark.parametrize("make", [RunConfig, _custom])
def test_commented_yaml_round_trip(tmp_path, make):
    cfg = make()
    text = config_to_yaml(cfg, header="a header\nover two lines")
    assert text.startswith("# a header\n# over two lines\n")
    assert "lr: " in text and "# peak learning rate" in text
    path = tmp_path / "commented.yaml"
    path.write_text(text)
    assert load_config(path, []) == cfg


def test_config_to_dict_is_plain_and_detached():
    cfg = load_config(None, ["data.tasks=[A]"])
    data = config_to_dict(cfg)
    assert data["train"]["lr"] == TrainConfig().lr and data["data"]["tasks"] == ["A"]
    data["data"]["tasks"].append("B")
    assert cfg.data.tasks == ["A"]


def test_config_hash_is_stable_and_sensitive():
    h = config_hash(RunConfig())
    assert len(h) == 12 and all(c in "0123456789abcdef" for c in h)
    assert config_hash(RunConfig()) == h
    assert config_hash(config_to_dict(RunConfig())) == h
    assert config_hash(load_config(None, ["train.lr=0.0005"])) != h
    assert config_hash(load_config(None, ["data.tasks=[A, B]"])) != config_hash(
        load_config(None, ["data.tasks=[B, A]"]))
    # key order of plain dicts does not matter
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})


def test_config_hash_is_stable_across_processes():
    code = "from mcit.config import RunConfig, config_hash; print(config_hash(RunConfig()))"
    outputs = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       check=True, env={**os.environ, "PYTHONHASHSEED": seed}).stdout.strip()
        for seed in ("1", "2")
    }
    assert outputs == {config_hash(RunConfig())}


# ----------------------------------------------------------------------------- genericity


@dataclasses.dataclass
class _Inner:
    depth: int = 1
    tags: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class _Outer:
    title: str = "t"
    ratio: float | None = None
    inner: _Inner = dataclasses.field(default_factory=_Inner)


def test_machinery_works_for_any_nested_dataclass(tmp_path):
    path = write(tmp_path, "inner:\n  depth: 3\n")
    cfg = load_config(path, ["ratio=1e-2", "inner.tags=[x]"], cls=_Outer)
    assert cfg == _Outer(title="t", ratio=0.01, inner=_Inner(depth=3, tags=["x"]))
    with pytest.raises(ConfigError, match="did you mean 'inner.depth'"):
        load_config(None, ["inner.dept=2"], cls=_Outer)
