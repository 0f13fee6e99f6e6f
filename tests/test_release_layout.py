"""The CoIN release laid out as published (issue 11, part 1, 2 and 6): `Instructions_*` folders,
`val.json` for TextVQA/VizWiz/VQAv2, TextVQA's ten answers in `TextVQA_0.5.1_val.json` under
the image root, a text-only ScienceQA question in a batch of image questions, multi-turn
training records, Grounding records with `size`, a `Multitask/` folder. `mcit data check` passes
it with the default settings and `mcit run` completes all eight tasks on it."""
import json
import shutil

import pytest
from conftest import save_tiny_checkpoint

from mcit.cli import main
from mcit.config import ConfigError, EvalConfig, load_config
from mcit.data import coin_mini
from mcit.data.benchmark import load_benchmark
from mcit.data.release import canonical_set, eval_file, resolve_instruction_set
from mcit.eval.coin_compat import OFFICIAL_MAX_NEW_TOKENS
from mcit.eval.evaluate import max_new_tokens_for

SETS = {"Original": "Instructions_Original", "Diverse": "Instructions_Diverse", "10Type": "Instructions_10Type"}
VAL_TASKS = ("TextVQA", "VizWiz", "VQAv2")
TEXT_ONLY = "sqa-text-only"


def _load(path):
    return json.loads(path.read_text())


def _dump(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))


def as_release(src, dst):
    """coin-mini's generated folder rewritten into the published release's layout."""
    shutil.copytree(src / "images", dst / "images")
    official = []
    for name, folder in SETS.items():
        shutil.copytree(src / name, dst / folder)
        for task in VAL_TASKS:
            (dst / folder / task / "test.json").rename(dst / folder / task / "val.json")
        textvqa = dst / folder / "TextVQA" / "val.json"
        records = _load(textvqa)
        for rec in records:  # the release's test record holds one answer; the ten are elsewhere
            answers = rec["answer"]
            rec["answer"] = answers[5]  # coin-mini's 6th answer differs in case ("WOLF")
            if name == "Original":
                official.append({"question_id": rec["question_id"], "answers": answers})
        _dump(textvqa, records)
        sqa = dst / folder / "ScienceQA" / "test.json"
        records = _load(sqa)
        text_only = {k: v for k, v in records[0].items() if k != "image"} | {"question_id": TEXT_ONLY}
        records[0]["text"] = "<image>\n" + records[0]["text"]  # as ScienceQA's records may store it
        _dump(sqa, records[:1] + [text_only] + records[1:])  # shares the first batch with image questions
        gqa = dst / folder / "GQA" / "train.json"
        records = _load(gqa)
        records[0]["conversations"] += [{"from": "human", "value": "And what colour is it?"},
                                        {"from": "gpt", "value": "red"}]
        _dump(gqa, records)
    union = [rec for task in coin_mini.TASKS for rec in _load(dst / "Instructions_Original" / task / "train.json")]
    _dump(dst / "Instructions_Original" / "Multitask" / "train.json", union)
    _dump(dst / "images" / "TextVQA" / "TextVQA_0.5.1_val.json", {"dataset_name": "textvqa", "data": official})
    return dst


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """The data check remembers the images that decoded fine in mcit's cache: a fresh one per test."""
    monkeypatch.setenv("MCIT_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    base = tmp_path_factory.mktemp("release")
    coin_mini.generate(base / "mini", seed=0, train_per_task=8, test_per_task=4, pretrain_size=8, image_size=32,
                       progress=False)
    return as_release(base / "mini", base / "CoIN")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))


def _data(root, *extra):
    return ["data.benchmark=coin", f"data.root={root}", f"data.image_root={root / 'images'}", *extra]


def _run(root, ckpt, out, *extra):
    return main(["run", *_data(root), f"model.name={ckpt}", "train.steps_per_task=2", "train.batch_size=4",
                 "eval.batch_size=4", "eval.max_new_tokens=4", "judge.backend=none", f"output_dir={out}", *extra])


def test_release_checks_and_all_eight_tasks_run(release, checkpoint, tmp_path, capsys):
    assert main(["data", "check", *_data(release)]) == 0
    out = capsys.readouterr().out
    assert "Instructions_Original" in out and "no problems found" in out
    assert "TextVQA: ground truth from" in out and "TextVQA_0.5.1_val.json" in out

    assert _run(release, checkpoint, tmp_path, "name=r", "eval.scoring=coin-compat") == 0
    run = tmp_path / "r"
    matrix = _load(run / "matrix.json")
    assert matrix["tasks"] == list(coin_mini.TASKS)
    last = sorted((run / "stages").iterdir())[-1]
    textvqa = [json.loads(line) for line in (last / "predictions" / "TextVQA.jsonl").read_text().splitlines()]
    official = {r["question_id"]: r["answers"] for r in
                _load(release / "images" / "TextVQA" / "TextVQA_0.5.1_val.json")["data"]}
    assert textvqa and all(r["answers"] == official[r["id"]] and len(r["answers"]) == 10 for r in textvqa)
    stored = {r["question_id"]: r for r in _load(release / "Instructions_Original" / "TextVQA" / "val.json")}
    assert all(r["record_answer"] == stored[r["id"]]["answer"] == r["answers"][5] for r in textvqa)
    sqa = [json.loads(line) for line in (last / "predictions" / "ScienceQA.jsonl").read_text().splitlines()]
    assert TEXT_ONLY in [r["id"] for r in sqa] and len(sqa) == 5
    assert sqa[0]["record_text"].startswith("<image>\n") and not sqa[0]["text"].startswith("<image>")
    assert all("record_text" not in r for r in sqa[1:])


def test_the_judge_is_shown_the_record_as_stored():
    from mcit.eval.judge import _item

    rec = {"text": "Q?\nAnswer.", "record_text": "<image>\nQ?\nAnswer.", "answers": ["a", "b"],
           "record_answer": "b", "prediction": "x"}
    item = _item(rec, "TextVQA")
    assert (item.answer, item.text, item.references) == ("b", "<image>\nQ?\nAnswer.", ("a", "b"))
    plain = _item({"text": "Q?\nAnswer.", "answers": ["a", "b"], "prediction": "x"}, "TextVQA")
    assert (plain.answer, plain.text) == ("a", "Q?\nAnswer.")


def test_instruction_set_names_resolve_to_the_release_folders(release, tmp_path):
    for name, folder in SETS.items():
        assert resolve_instruction_set(release, name) == release / folder
    assert resolve_instruction_set(release, "Instructions_Diverse") == release / "Instructions_Diverse"
    (tmp_path / "Instructions").mkdir()  # the LCIA authors' refined copy of Original
    assert resolve_instruction_set(tmp_path, "Original") == tmp_path / "Instructions"
    with pytest.raises(ConfigError, match="Instructions_Diverse or Instruction_Diverse or Instructions_Type1"):
        resolve_instruction_set(tmp_path, "Diverse")
    assert [canonical_set(n) for n in ("Instructions", "Instructions_Type2", "Instruction_Original", "Mine")] \
        == ["Original", "10Type", "Original", None]


def test_lcia_threshold_follows_the_resolved_set():
    from mcit.methods.lcia import THRESHOLDS, canonical_set as lcia_set

    assert THRESHOLDS[lcia_set("Instructions_Original")] == THRESHOLDS["Original"]
    assert THRESHOLDS[lcia_set("Instructions_Type1")] == THRESHOLDS["Diverse"]


def test_evaluation_files_and_overrides():
    coin, mini = load_benchmark("coin"), load_benchmark("coin-mini")
    assert [eval_file(t, {}) for t in coin.tasks] == \
        ["test.json", "val.json", "test.json", "test.json", "val.json", "test.json", "val.json", "test.json"]
    assert eval_file(coin.spec("VQAv2"), {"VQAv2": "test.json"}) == "test.json"
    assert eval_file(mini.spec("VQAv2"), {}) == "test.json"  # coin-mini writes test.json for every task


def test_a_missing_evaluation_file_names_it(release, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(release, bad)
    (bad / "Instructions_Original" / "VizWiz" / "val.json").rename(bad / "Instructions_Original" / "VizWiz" / "test.json")
    assert main(["data", "check", *_data(bad)]) == 1
    assert "VizWiz/val.json: file not found" in capsys.readouterr().out
    assert main(["data", "check", *_data(bad, "data.eval_files={VizWiz: test.json}")]) == 0


def test_generation_budgets_are_the_official_ones_unless_set():
    coin, mini = load_benchmark("coin"), load_benchmark("coin-mini")
    ec = EvalConfig()
    assert {t.name: max_new_tokens_for(ec, t) for t in coin.tasks} == OFFICIAL_MAX_NEW_TOKENS
    assert max_new_tokens_for(ec, coin.spec("ScienceQA")) == 1024 and max_new_tokens_for(ec, coin.spec("GQA")) == 128
    assert max_new_tokens_for(ec, mini.spec("ScienceQA")) == 20
    ec = EvalConfig(max_new_tokens=7, task_max_new_tokens={"Grounding": 64})
    assert max_new_tokens_for(ec, coin.spec("ScienceQA")) == 7 and max_new_tokens_for(ec, coin.spec("Grounding")) == 64


def test_textvqa_answers_file_missing_is_a_problem_with_the_way_out(release, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(release, bad)
    (bad / "images" / "TextVQA" / "TextVQA_0.5.1_val.json").unlink()
    assert main(["data", "check", *_data(bad)]) == 1
    out = capsys.readouterr().out
    assert "TextVQA_0.5.1_val.json" in out and "data.textvqa_answers=record" in out
    assert main(["data", "check", *_data(bad, "data.textvqa_answers=record")]) == 0


def test_textvqa_question_missing_from_the_answers_file_is_a_problem(release, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(release, bad)
    path = bad / "images" / "TextVQA" / "TextVQA_0.5.1_val.json"
    data = _load(path)
    gone = data["data"].pop(1)["question_id"]
    _dump(path, data)
    assert main(["data", "check", *_data(bad)]) == 1
    assert f"TextVQA/val.json, record '{gone}', field 'question_id': question not found" in capsys.readouterr().out


def test_scienceqa_and_gqa_official_files_replace_and_report_disagreements(release, tmp_path, capsys):
    sqa = _load(release / "Instructions_Original" / "ScienceQA" / "test.json")
    problems = {r["question_id"]: {"answer": "ABCDE".index(r["answer"]), "choices": ["x"] * 5} for r in sqa}
    flipped = sqa[2]["question_id"]
    problems[flipped]["answer"] = (problems[flipped]["answer"] + 1) % 4
    del problems[TEXT_ONLY]
    gqa = _load(release / "Instructions_Original" / "GQA" / "test.json")
    questions = {r["question_id"]: {"answer": r["answer"]} for r in gqa}
    questions[gqa[0]["question_id"]]["answer"] = "zebra"
    _dump(tmp_path / "problems.json", problems)
    _dump(tmp_path / "testdev_balanced_questions.json", questions)
    extra = (f"data.scienceqa_problems={tmp_path / 'problems.json'}",
             f"data.gqa_questions={tmp_path / 'testdev_balanced_questions.json'}")
    assert main(["data", "check", *_data(release, *extra)]) == 0  # notes, not problems
    out = capsys.readouterr().out
    assert f"ScienceQA/test.json, record '{flipped}', field 'answer'" in out
    assert f"ScienceQA/test.json, record '{TEXT_ONLY}', field 'question_id': not in problems.json" in out
    assert f"GQA/test.json, record '{gqa[0]['question_id']}', field 'answer'" in out and "zebra" in out
    assert "3 test records whose own answer the official file replaces" in out

    from mcit.data.stream import build_stream

    cfg = load_config(None, _data(release, *extra))
    stream = build_stream(cfg.data, 0, show_progress=False)
    by_id = {s.id: s for s in stream.test["GQA"]}
    assert by_id[gqa[0]["question_id"]].answers == ("zebra",)
    by_id = {s.id: s for s in stream.test["ScienceQA"]}
    assert by_id[flipped].answer == "ABCDE"[problems[flipped]["answer"]]
    assert by_id[TEXT_ONLY].answer == sqa[0]["answer"]  # not in problems.json: its own answer


def test_an_empty_later_turn_is_a_problem(release, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(release, bad)
    path = bad / "Instructions_Original" / "GQA" / "train.json"
    records = _load(path)
    records[0]["conversations"][-1]["value"] = " "
    _dump(path, records)
    assert main(["data", "check", *_data(bad)]) == 1
    assert f"GQA/train.json, record '{records[0]['id']}', field 'conversations': the gpt turn of pair 2 is empty" \
        in capsys.readouterr().out


def test_malformed_official_file_is_a_clean_problem(release, tmp_path, capsys):
    (tmp_path / "problems.json").write_text('{"1": {"answer": 9}}')
    assert main(["data", "check", *_data(release, f"data.scienceqa_problems={tmp_path / 'problems.json'}")]) == 1
    assert "record '1', field 'answer': must be an option index 0-4" in capsys.readouterr().out


def test_multitask_trains_on_the_release_multitask_folder(release, checkpoint, tmp_path, capsys):
    assert _run(release, checkpoint, tmp_path, "name=m", "method.name=multitask") == 0
    assert "Instructions_Original/Multitask/train.json (64 records)" in capsys.readouterr().out


def test_builtin_model_on_a_release_builds_its_base_from_coin_mini(release, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MCIT_CACHE", str(tmp_path / "cache"))
    small = ["model.hidden_size=32", "model.num_layers=1", "model.num_heads=2", "model.intermediate_size=64",
             "model.vision_hidden_size=32", "model.vision_layers=1", "model.vocab_size=300", "model.vision_steps=2",
             "model.vision_images=16", "model.base_steps=2", "model.base_batch_size=4", "data.image_size=32",
             "data.pretrain_size=8", "data.train_per_task=8", "data.test_per_task=4"]
    code = main(["run", *_data(release), "model.name=tiny-llava", *small, "data.tasks=[ImageNet,VQAv2]",
                 "train.steps_per_task=2", "train.batch_size=4", "eval.batch_size=4", "eval.max_new_tokens=4",
                 "judge.backend=none", f"output_dir={tmp_path}", "name=t"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "its base model learns from coin-mini" in out
    assert _load(tmp_path / "t" / "matrix.json")["tasks"] == ["ImageNet", "VQAv2"]


def test_a_bad_judge_setting_stops_the_run_before_training(release, checkpoint, tmp_path, capsys):
    code = main(["run", *_data(release), f"model.name={checkpoint}", "judge.backend=openai", "judge.model=m",
                 "judge.protocol=coin", f"judge.rules={tmp_path / 'nowhere.json'}", f"output_dir={tmp_path}", "name=j"])
    err = capsys.readouterr().err
    assert code == 2 and "judge.rules" in err and "nowhere.json" in err and "Traceback" not in err
    assert not (tmp_path / "j").exists()


def test_a_grounding_record_shows_the_judge_its_answer_box(tmp_path):
    from mcit.data.coin_format import read_test_json

    rec = {"question_id": "g1", "image": "x.png", "text": "Box of: the dog", "answer": "the dog on the left",
           "answer_bbox": "[0.1, 0.2, 0.3, 0.4]", "size": [10, 10]}
    _dump(tmp_path / "test.json", [rec, rec | {"question_id": "g2", "answer": "[0.1, 0.2, 0.3, 0.4]"}])
    first, second = read_test_json(tmp_path / "test.json", "Grounding", tmp_path)
    assert first.extra["record_answer"] == "[0.1, 0.2, 0.3, 0.4]" and first.answer == "the dog on the left"
    assert "record_answer" not in second.extra
