"""Format vs content: hand-written predictions of every task kind, the summary metrics, the run
files, and the offline GK judge's reading of option letters."""
from __future__ import annotations

import json

import pytest

from mcit.data import coin_mini as cm
from mcit.data.coin_format import format_bbox
from mcit.data.schema import Sample
from mcit.eval.form_content import (content_text, decide, decide_record, expected_form, given_labels, option_texts,
                                    resolve_option)
from mcit.metrics import form_content_summary, pool_form_content
from mcit.report.matrix import form_content_cells, save_form_content

MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."
MC = "What color is the square?\nA. red\nB. green\nC. blue\n" + MC_INSTRUCTION
MC_COUNT = "How many shapes are in the image?\nA. 1\nB. 2\nC. 3\n" + MC_INSTRUCTION
MC_SHAPE = "Which shape is shown in the image?\nA. circle\nB. square\nReply with only the letter of the correct option."
# LLaVA's ScienceQA layout: the options inline on one line
MC_INLINE = ("Which of these states is farthest north?\nContext: N/A\nOptions: (A) West Virginia (B) Louisiana "
             "(C) Arizona\nAnswer with the option's letter from the given choices directly.")
BOX = "Please provide the bounding box coordinate of the region this sentence describes: the red circle"
LABELS = ("What is the object in the image? Choose one of the following: goldfish, tabby cat, tree frog.\n"
          "Answer the question using a single word or phrase.")
OBJECT = "What is the object in the image?\nAnswer the question using a single word or phrase."
SHORT = "What shape is to the left of the circle?\nAnswer the question using a single word or phrase."
SIGN = "What does the sign say?\nAnswer the question using a single word or phrase."
YES_NO = "Is the square red?\nAnswer the question using a single word or phrase."
NUMBER = "How many shapes are there?\nAnswer the question using a single word or phrase."
VIZWIZ = ("What color is this?\nWhen the provided information is insufficient, respond with 'Unanswerable'.\n"
          "Answer the question using a single word or phrase.")
TEXTVQA_ANSWERS = ("stop",) * 8 + ("STOP", "stp")

# (id, scorer, question text, answers, prediction, format-valid, content): every decision by hand
CASES = [
    # multiple choice: one option letter; content is the option the answer names, in any form
    ("mc-letter", "letter", MC, "B", "B", True, 1.0),
    ("mc-letter-parenthesized", "letter", MC, "B", "(B)", True, 1.0),
    ("mc-letter-lowercase-dot", "letter", MC, "B", "b.", True, 1.0),
    ("mc-wrong-letter", "letter", MC, "B", "A", True, 0.0),
    ("mc-letter-of-no-option", "letter", MC, "B", "D", False, 0.0),
    ("mc-option-text-instead-of-letter", "letter", MC, "B", "green", False, 1.0),
    ("mc-option-text-capitalized", "letter", MC, "B", "Green.", False, 1.0),
    ("mc-letter-in-a-sentence", "letter", MC, "B", "The answer is B.", False, 1.0),
    ("mc-wrong-option-text", "letter", MC, "B", "red", False, 0.0),
    ("mc-option-text-in-a-sentence", "letter", MC, "B", "The square is green.", False, 1.0),
    ("mc-article-and-option-text", "letter", MC, "B", "A green square", False, 1.0),
    ("mc-two-option-texts", "letter", MC, "B", "red or green", False, 0.0),
    ("mc-empty", "letter", MC, "B", "", False, 0.0),
    ("mc-article-is-not-option-a", "letter", MC_SHAPE, "B", "A square", False, 1.0),
    ("mc-number-word-for-option", "letter", MC_COUNT, "B", "two", False, 1.0),
    ("mc-digit-for-option", "letter", MC_COUNT, "B", "2", False, 1.0),
    ("mc-inline-options-text", "letter", MC_INLINE, "A", "West Virginia", False, 1.0),
    ("mc-inline-options-letter", "letter", MC_INLINE, "A", "A", True, 1.0),
    ("mc-inline-options-wrong", "letter", MC_INLINE, "A", "(C)", True, 0.0),
    # box: "[x1, y1, x2, y2]" in [0, 1]; content by region, IoU > 0.5
    ("box-exact", "bbox", BOX, "[0.10, 0.20, 0.50, 0.60]", "[0.10, 0.20, 0.50, 0.60]", True, 1.0),
    ("box-no-spaces", "bbox", BOX, "[0.10, 0.20, 0.50, 0.60]", "[0.1,0.2,0.5,0.6]", True, 1.0),
    ("box-close-iou-0.82", "bbox", BOX, "[0.10, 0.20, 0.50, 0.60]", "[0.12, 0.22, 0.52, 0.58]", True, 1.0),
    ("box-elsewhere", "bbox", BOX, "[0.10, 0.20, 0.50, 0.60]", "[0.60, 0.60, 0.90, 0.90]", True, 0.0),
    ("box-without-brackets", "bbox", BOX, "[0.10, 0.20, 0.50, 0.60]", "0.10 0.20 0.50 0.60", False, 1.0),
    ("box-swapped-corners", "bbox", BOX, "[0.10, 0.20, 0.50, 0.60]", "[0.50, 0.60, 0.10, 0.20]", False, 1.0),
    ("box-in-a-sentence", "bbox", BOX, "[0.10, 0.20, 0.50, 0.60]", "The box is [0.10, 0.20, 0.50, 0.60].", False, 1.0),
    ("box-pixels", "bbox", BOX, "[0.10, 0.20, 0.50, 0.60]", "[10, 20, 50, 60]", False, 0.0),
    ("box-three-numbers", "bbox", BOX, "[0.10, 0.20, 0.50, 0.60]", "[0.1, 0.2, 0.5]", False, 0.0),
    ("box-a-phrase", "bbox", BOX, "[0.10, 0.20, 0.50, 0.60]", "red circle", False, 0.0),
    # label list: one label of the list; content ignores case, punctuation, articles
    ("label-from-list", "class", LABELS, "goldfish", "goldfish", True, 1.0),
    ("label-capitalized", "class", LABELS, "goldfish", "Goldfish.", True, 1.0),
    ("label-with-article", "class", LABELS, "goldfish", "The goldfish", True, 1.0),
    ("label-other-of-list", "class", LABELS, "goldfish", "tabby cat", True, 0.0),
    ("label-in-a-phrase", "class", LABELS, "goldfish", "a photo of a goldfish", False, 1.0),
    ("label-not-in-list", "class", LABELS, "goldfish", "fish", False, 0.0),
    ("label-option-letter", "class", LABELS, "goldfish", "B", False, 0.0),
    # label without a list (coin-mini's ImageNet): a short phrase
    ("object-word", "class", OBJECT, "mushroom", "mushroom", True, 1.0),
    ("object-plural", "class", OBJECT, "mushroom", "mushrooms", True, 1.0),
    ("object-wrong", "class", OBJECT, "mushroom", "tree", True, 0.0),
    ("object-sentence", "class", OBJECT, "mushroom", "It is a mushroom.", False, 1.0),
    ("object-box", "class", OBJECT, "mushroom", "[0.1, 0.2, 0.3, 0.4]", False, 0.0),
    # short phrase
    ("phrase", "exact", SHORT, "square", "square", True, 1.0),
    ("phrase-article-period", "exact", SHORT, "square", "The square.", True, 1.0),
    ("phrase-wrong", "exact", SHORT, "square", "circle", True, 0.0),
    ("phrase-long-sentence", "exact", SHORT, "square", "It is the square to the left of the circle.", False, 1.0),
    ("phrase-option-letter", "exact", SHORT, "square", "C", False, 0.0),
    ("phrase-box-cut-short", "exact", SHORT, "square", "[0.38, 0.", False, 0.0),
    ("phrase-soft-vqa", "vqa_soft", SIGN, TEXTVQA_ANSWERS, "STOP", True, 1.0),
    ("phrase-soft-vqa-sentence", "vqa_soft", SIGN, TEXTVQA_ANSWERS, "The sign says stop", False, 1.0),
    ("phrase-soft-vqa-rare-answer", "vqa_soft", SIGN, TEXTVQA_ANSWERS, "stp", True, 0.3),
    # yes/no
    ("yes", "exact", YES_NO, "yes", "yes", True, 1.0),
    ("yes-capitalized", "exact", YES_NO, "yes", "Yes.", True, 1.0),
    ("no-for-yes", "exact", YES_NO, "yes", "no", True, 0.0),
    ("yes-in-a-sentence", "exact", YES_NO, "yes", "Yes, the square is red.", False, 1.0),
    ("yes-no-answered-with-colour", "exact", YES_NO, "yes", "red", False, 0.0),
    ("yes-and-no", "exact", YES_NO, "yes", "yes and no", False, 0.0),
    # number
    ("number-digit", "exact", NUMBER, "2", "2", True, 1.0),
    ("number-word", "exact", NUMBER, "2", "two", True, 1.0),
    ("number-word-capitalized", "exact", NUMBER, "2", "Two.", True, 1.0),
    ("number-wrong", "exact", NUMBER, "2", "3", True, 0.0),
    ("number-with-noun", "exact", NUMBER, "2", "2 shapes", False, 1.0),
    ("number-in-a-sentence", "exact", NUMBER, "2", "There are two shapes.", False, 1.0),
    ("number-not-a-number", "exact", NUMBER, "2", "many", False, 0.0),
    # unanswerable (the instruction names the word)
    ("unanswerable", "exact", VIZWIZ, "unanswerable", "unanswerable", True, 1.0),
    ("unanswerable-capitalized", "exact", VIZWIZ, "unanswerable", "Unanswerable.", True, 1.0),
    ("unanswerable-said-otherwise", "exact", VIZWIZ, "unanswerable", "I cannot tell from the image", False, 1.0),
    ("unanswerable-as-unknown", "exact", VIZWIZ, "unanswerable", "unknown", False, 1.0),
    ("unanswerable-but-answered", "exact", VIZWIZ, "unanswerable", "red", True, 0.0),
    ("answerable-but-refused", "exact", VIZWIZ, "red", "unanswerable", True, 0.0),
    ("answerable-answered", "exact", VIZWIZ, "red", "Red", True, 1.0),
]


def sample(text, answers, task="T"):
    answers = (answers,) if isinstance(answers, str) else tuple(answers)
    return Sample(id="s", task=task, image=None, text=text, answers=answers)


@pytest.mark.parametrize("scorer, text, answers, prediction, valid, content",
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_format_and_content_are_decided_apart(scorer, text, answers, prediction, valid, content):
    decision = decide(prediction, sample(text, answers), scorer)
    assert decision.format_valid is valid
    assert decision.content == pytest.approx(content)


def test_every_task_kind_is_in_the_catalogue():
    forms = {expected_form(sample(c[2], c[3]), c[1]) for c in CASES}
    assert forms == {"letter", "box", "label", "yes/no", "number", "phrase"}
    assert any(c[0].startswith("unanswerable") for c in CASES)


@pytest.mark.parametrize("answers, form", [("yes", "yes/no"), (("no", "yes", "no"), "yes/no"), ("3", "number"),
                                           ("three", "number"), ("left", "phrase"), (("yes", "maybe"), "phrase")])
def test_open_answer_form_follows_the_references(answers, form):
    assert expected_form(sample(SHORT, answers), "exact") == form


def test_option_texts_reads_lines_and_llava_inline_options():
    assert option_texts(MC) == {"A": "red", "B": "green", "C": "blue"}
    assert option_texts(MC_INLINE) == {"A": "West Virginia", "B": "Louisiana", "C": "Arizona"}
    assert option_texts("A) cat\n(B) dog") == {"A": "cat", "B": "dog"}
    assert option_texts(SHORT) == {} and option_texts("") == {}


def test_resolve_option_and_content_text():
    options = option_texts(MC_SHAPE)
    assert resolve_option("A square", options) == "B"  # the option's text, not the article as option A
    assert resolve_option("The answer is A.", options) == "A"
    assert resolve_option("It is a square, I think.", options) == "B"
    assert resolve_option("triangle", options) is None and resolve_option("E", options) is None
    assert content_text("B", MC) == "green"
    assert content_text("purple", MC) == "purple" and content_text("B", SHORT) == "B"


def test_given_labels():
    assert given_labels(LABELS) == ["goldfish", "tabby cat", "tree frog"]
    assert given_labels("Which class is it, one of: cat / dog | bird or fish?") == ["cat", "dog", "bird", "fish"]
    assert given_labels(OBJECT) == [] and given_labels(MC) == []


@pytest.fixture(scope="module")
def coin_mini(tmp_path_factory):
    return cm.generate(tmp_path_factory.mktemp("cm") / "coin-mini", seed=0, train_per_task=8, test_per_task=4,
                       pretrain_size=16, progress=False)


SCORERS = {"ScienceQA": "letter", "TextVQA": "vqa_soft", "ImageNet": "class", "GQA": "exact", "VizWiz": "exact",
           "Grounding": "bbox", "VQAv2": "exact", "OCRVQA": "exact"}


@pytest.mark.parametrize("instruction_set", cm.INSTRUCTION_SETS)
def test_coin_mini_reference_answers_have_the_form_and_the_content(coin_mini, instruction_set):
    """Every reference answer of coin-mini, in every instruction set, is format-valid and right."""
    for task in cm.TASKS:
        for s in cm.load(coin_mini, task, "test", instruction_set):
            answer = format_bbox(s.extra["bbox"]) if "bbox" in s.extra else s.answer
            decision = decide(answer, s, SCORERS[task])
            assert decision.format_valid and decision.content == 1.0, (instruction_set, task, s.text, answer)


def test_a_saved_record_is_decided_again_when_it_has_no_fields():
    rec = {"id": "1", "task": "ScienceQA", "text": MC, "answers": ["B"], "prediction": "green", "scorer": "letter",
           "score": 0.0}
    assert decide_record(rec) == {"form": "letter", "format_valid": False, "content": 1.0}
    assert decide_record(rec | {"form": "x", "format_valid": True, "content": 0.5}) == \
        {"form": "x", "format_valid": True, "content": 0.5}


# ----------------------------------------------------------------------------- metrics


def rec(score, valid, content):
    return {"score": score, "format_valid": valid, "content": content}


def test_form_content_summary_hand_computed():
    records = [rec(1.0, True, 1.0),   # right
               rec(0.0, False, 1.0),  # format failure, content right: lost alignment
               rec(0.0, False, 0.0),  # format failure, content wrong
               rec(0.0, True, 0.0),   # content error
               rec(0.6, True, 0.6)]   # soft VQA score: 0.4 of an error, a content error
    # IF errors 0 + 1 + 1 + 1 + 0.4 = 3.4; on the wrong form: 2; right in content: 1
    got = form_content_summary(records)
    assert got["n"] == 5
    assert got["score"] == pytest.approx(32.0)  # (1 + 0.6) / 5
    assert got["format_valid"] == pytest.approx(60.0)
    assert got["content"] == pytest.approx(52.0)  # (1 + 1 + 0.6) / 5
    assert got["format_error_share"] == pytest.approx(100 * 2 / 3.4)
    assert got["recovered_share"] == pytest.approx(100 * 1 / 3.4)


def test_form_content_summary_without_errors_or_records():
    assert form_content_summary([rec(1.0, True, 1.0)])["format_error_share"] is None
    assert form_content_summary([]) == {"n": 0, "score": None, "format_valid": None, "content": None,
                                        "format_error_share": None, "recovered_share": None}


def test_pool_form_content_weighs_every_answer_alike():
    a = form_content_summary([rec(0.0, False, 1.0), rec(1.0, True, 1.0)])   # 1 error, a format failure
    b = form_content_summary([rec(0.0, True, 0.0)] * 3 + [rec(0.0, False, 0.0)])  # 4 errors, 1 format failure
    pooled = pool_form_content([a, b, form_content_summary([])])
    assert pooled["n"] == 6
    assert pooled["score"] == pytest.approx(100 / 6)
    assert pooled["format_valid"] == pytest.approx(100 * 4 / 6)
    assert pooled["content"] == pytest.approx(100 * 2 / 6)
    assert pooled["format_error_share"] == pytest.approx(100 * 2 / 5)  # (1 + 1) of 5 errors
    assert pooled["recovered_share"] == pytest.approx(100 * 1 / 5)
    assert pool_form_content([])["score"] is None


# ----------------------------------------------------------------------------- run files


def _write(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _mc(prediction, score):
    return {"text": MC, "answers": ["B"], "prediction": prediction, "scorer": "letter", "score": score}


def _yn(prediction, score):
    return {"text": YES_NO, "answers": ["yes"], "prediction": prediction, "scorer": "exact", "score": score}


def test_save_form_content_tables_per_task_and_stage(tmp_path):
    """Records saved without the fields (an older run) are decided from their text. Task SQA
    forgets its format after stage 2 but keeps its content."""
    stages = tmp_path / "stages"
    _write(stages / "00-base" / "predictions" / "SQA.jsonl", [_mc("green", 0.0), _mc("A", 0.0)])
    _write(stages / "00-base" / "predictions" / "YN.jsonl", [_yn("no", 0.0), _yn("Yes, it is.", 0.0)])
    _write(stages / "01-SQA" / "predictions" / "SQA.jsonl", [_mc("B", 1.0), _mc("B", 1.0)])
    _write(stages / "02-YN" / "predictions" / "SQA.jsonl", [_mc("green", 0.0), _mc("red", 0.0)])
    _write(stages / "02-YN" / "predictions" / "YN.jsonl", [_yn("yes", 1.0), _yn("no", 0.0)])

    cells = form_content_cells(tmp_path, ["SQA", "YN"])
    assert list(cells) == ["base", "SQA", "YN"] and list(cells["SQA"]) == ["SQA"]
    assert cells["YN"]["SQA"] == {"n": 2, "score": 0.0, "format_valid": 0.0, "content": 50.0,
                                  "format_error_share": 100.0, "recovered_share": 50.0}
    assert cells["YN"]["YN"] == {"n": 2, "score": 50.0, "format_valid": 100.0, "content": 50.0,
                                 "format_error_share": 0.0, "recovered_share": 0.0}
    assert cells["base"]["YN"]["format_valid"] == 50.0 and cells["base"]["YN"]["content"] == 50.0

    paths = save_form_content(tmp_path, ["SQA", "YN"])
    record = json.loads(paths["json"].read_text())
    # IF BWT: SQA 100 -> 0 = -100; content BWT: SQA 100 -> 50 = -50; format BWT 100 -> 0 = -100
    assert record["metrics"]["score"]["BWT"] == pytest.approx(-100.0)
    assert record["metrics"]["content"]["BWT"] == pytest.approx(-50.0)
    assert record["metrics"]["format_valid"]["BWT"] == pytest.approx(-100.0)
    # after the last stage the earlier task SQA: 2 errors, both format failures, one right in content
    final = record["pooled"]["final stage, earlier tasks"]
    assert (final["n"], final["format_error_share"], final["recovered_share"]) == (2, 100.0, 50.0)
    md = paths["md"].read_text()
    assert "## format-valid rate (%)" in md and "## content accuracy (%)" in md
    assert "| YN | 0.0 | 100.0 |" in md  # format-valid after stage 2: SQA 0, YN 100
    # content view: MFT (100 + 50) / 2, MFN (50 + 50) / 2, MAA (100 + 50) / 2, BWT 50 - 100
    assert "| content | 75.00 | 50.00 | 75.00 | -50.00 |" in md


def test_save_form_content_of_an_unfinished_run_has_no_metrics(tmp_path):
    _write(tmp_path / "stages" / "01-SQA" / "predictions" / "SQA.jsonl", [_mc("B", 1.0)])
    record = json.loads(save_form_content(tmp_path, ["SQA", "YN"])["json"].read_text())
    assert record["cells"] == {"SQA": {"SQA": form_content_summary([rec(1.0, True, 1.0)])}}
    assert record["metrics"] == {}


# ----------------------------------------------------------------------------- the offline GK judge


@pytest.fixture(scope="module")
def embedding():
    from mcit.eval.judge_backends import EmbeddingJudge

    return EmbeddingJudge()


def test_offline_judge_reads_an_option_letter_as_its_option_text(embedding):
    from mcit.eval.judge_protocol import JudgeItem

    question = "What color is the square?\nA. blue\nB. red\nC. green"
    letter_right, letter_wrong, text_right = embedding.score([
        JudgeItem(question, "red", "B", references=("red",)),  # "B" says red: right
        JudgeItem(question, "red", "A", references=("red",)),  # "A" says blue: wrong
        JudgeItem(question, "B", "red", references=("B",)),    # red for the letter B: right
    ])
    assert letter_right == 10.0 and text_right == 10.0
    assert letter_wrong <= 5.0  # blue vs red: similarity alone, never a full mark


# ----------------------------------------------------------------------------- a real run


def test_a_run_keeps_both_decisions_per_record_and_writes_the_tables(tmp_path, monkeypatch):
    from mcit.cli import main
    from mcit.report.matrix import load_matrix
    from test_end_to_end import SMALL

    monkeypatch.setenv("MCIT_CACHE", str(tmp_path / "cache"))
    assert main(["run", *SMALL, f"output_dir={tmp_path / 'runs'}", "name=fc"]) == 0
    run = tmp_path / "runs" / "fc"
    records = [json.loads(line) for line in
               (run / "stages" / "02-VQAv2" / "predictions" / "ImageNet.jsonl").read_text().splitlines()]
    assert records and all(r["form"] == "label" and isinstance(r["format_valid"], bool) and 0 <= r["content"] <= 1
                           for r in records)
    assert all(decide_record({k: v for k, v in r.items() if k not in ("form", "format_valid", "content")})
               == decide_record(r) for r in records)  # what was stored is what the saved record says
    record = json.loads((run / "form_content.json").read_text())
    tasks, matrix, _, metrics = load_matrix(run / "matrix.json")
    for t, stage in enumerate(tasks):  # the IF score of every cell is the accuracy matrix's
        for i in range(t + 1):
            assert record["cells"][stage][tasks[i]]["score"] == pytest.approx(matrix[t][i])
    assert record["metrics"]["score"]["BWT"] == pytest.approx(metrics["BWT"])
    assert "Format vs content" in (run / "report.html").read_text()
    assert (run / "form_content.md").read_text().startswith("# Format vs content · fc")
