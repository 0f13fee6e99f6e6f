"""Benchmarks as data (issue 12, part 1): a YAML file names the tasks in order with their scorer,
evaluation file, generation budget and instruction rule; a user's own stream runs with no code."""
import json
import shutil

import pytest
from conftest import save_tiny_checkpoint

from mcit.cli import main
from mcit.config import ConfigError
from mcit.data import coin_mini
from mcit.data.benchmark import load_benchmark
from mcit.data.schema import split_instruction

MY_BENCHMARK = """\
name: lab-stream
tasks:
  - {name: Shapes, scorer: class, eval_file: eval.json, max_new_tokens: 6}
  - {name: Boxes, scorer: bbox, instruction: before_colon}
"""


def test_builtin_benchmarks_are_coin_in_its_order():
    coin, mini = load_benchmark("coin"), load_benchmark("coin-mini")
    assert coin.task_names == mini.task_names == list(coin_mini.TASKS)
    assert mini.generator == "coin-mini" and coin.generator is None and coin.official_ground_truth


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A user's two-task stream in the LLaVA / test-record format, task names that are not CoIN's,
    no instruction-set folder (the tasks sit directly under the data root)."""
    base = tmp_path_factory.mktemp("lab")
    coin_mini.generate(base / "mini", seed=0, train_per_task=8, test_per_task=4, pretrain_size=8, image_size=32,
                       progress=False)
    root = base / "lab"
    for mine, theirs in (("Shapes", "ImageNet"), ("Boxes", "Grounding")):
        shutil.copytree(base / "mini" / "Original" / theirs, root / mine)
    (root / "Shapes" / "test.json").rename(root / "Shapes" / "eval.json")
    shutil.copytree(base / "mini" / "images", root / "images")
    (base / "lab.yaml").write_text(MY_BENCHMARK)
    return base


def test_a_custom_benchmark_runs_end_to_end(lab, tmp_path, capsys):
    ckpt = save_tiny_checkpoint(tmp_path / "ckpt")
    args = [f"data.benchmark={lab / 'lab.yaml'}", f"data.root={lab / 'lab'}", f"data.image_root={lab / 'lab' / 'images'}"]
    assert main(["data", "check", *args]) == 0
    code = main(["run", *args, f"model.name={ckpt}", "train.steps_per_task=2", "train.batch_size=4",
                 "eval.batch_size=4", "judge.backend=none", f"output_dir={tmp_path}", "name=lab"])
    assert code == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "lab" / "matrix.json").read_text())["tasks"] == ["Shapes", "Boxes"]
    preds = [json.loads(x) for x in (tmp_path / "lab" / "stages" / "02-Boxes" / "predictions" / "Boxes.jsonl")
             .read_text().splitlines()]
    assert {p["scorer"] for p in preds} == {"bbox"} and {p["instruction_rule"] for p in preds} == {"before_colon"}
    shapes = [json.loads(x) for x in (tmp_path / "lab" / "stages" / "02-Boxes" / "predictions" / "Shapes.jsonl")
              .read_text().splitlines()]
    assert len(shapes) == 4 and {p["scorer"] for p in shapes} == {"class"}
    assert main(["run", *args, "data.tasks=[Shapes,Charts]", f"model.name={ckpt}", f"output_dir={tmp_path}"]) == 2
    assert "'Charts' is not a task of benchmark 'lab-stream'" in capsys.readouterr().err


@pytest.mark.parametrize("text, where", [
    ("name: x\n", "tasks: missing"),
    ("name: x\ntasks: []\n", "tasks: must be a non-empty list"),
    ("name: x\ntasks:\n  - {name: A}\n", "tasks[0].scorer: missing"),
    ("name: x\ntasks:\n  - {name: A, scorer: fuzzy}\n", "tasks[0].scorer: unknown scorer 'fuzzy'"),
    ("name: x\ntasks:\n  - {name: A, scorer: exact, budget: 3}\n", "tasks[0].budget: unknown key"),
    ("name: x\ntasks:\n  - {name: A, scorer: exact, max_new_tokens: 0}\n", "tasks[0].max_new_tokens: 0 must be"),
    ("name: x\ntasks:\n  - {name: ../A, scorer: exact}\n", "tasks[0].name: '../A' must be a folder name"),
    ("name: x\ntasks:\n  - {name: A, scorer: exact, eval_file: ../t.json}\n", "tasks[0].eval_file"),
    ("name: x\ntasks:\n  - {name: A, scorer: exact, instruction: first_line}\n", "tasks[0].instruction"),
    ("name: x\ntasks:\n  - {name: A, scorer: exact}\n  - {name: A, scorer: bbox}\n", "['A'] listed more than once"),
    ("name: x\ngenerator: magic\ntasks:\n  - {name: A, scorer: exact}\n", "generator: 'magic'"),
    ("tasks: [\n", "cannot read the benchmark"),
])
def test_bad_benchmark_files_name_the_file_and_key(tmp_path, text, where):
    path = tmp_path / "bench.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_benchmark(str(path))
    assert str(path) in str(err.value) and where in str(err.value)


def test_bad_benchmark_through_the_cli_is_a_clean_error(tmp_path, capsys):
    (tmp_path / "b.yaml").write_text("name: x\ntasks:\n  - {name: A, scorer: fuzzy}\n")
    assert main(["run", f"data.benchmark={tmp_path / 'b.yaml'}", f"output_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "tasks[0].scorer: unknown scorer 'fuzzy'" in err and "Traceback" not in err
    assert main(["run", "data.benchmark=coin-maxi", f"output_dir={tmp_path}"]) == 2
    assert "neither a built-in benchmark" in capsys.readouterr().err


@pytest.mark.parametrize("rule, question, instruction", [
    ("auto", "What is it?", "Answer briefly."),
    ("last_line", "What is it?", "Answer briefly."),
    ("before_colon", "What is it?\nAnswer briefly.", "What is it?\nAnswer briefly."),
    ("none", "What is it?\nAnswer briefly.", ""),
])
def test_instruction_rules(rule, question, instruction):
    assert split_instruction("What is it?\nAnswer briefly.", rule) == (question, instruction)


def test_one_line_prompts_by_rule():
    text = "Give the box of: the red car"
    assert split_instruction(text, "auto") == ("the red car", "Give the box of")
    assert split_instruction(text, "before_colon") == ("the red car", "Give the box of")
    assert split_instruction(text, "last_line") == (text, text)
