"""Looking at runs: `mcit ls`, `mcit show`, `mcit diff` on real run folders made by a tiny `mcit run`,
`mcit config show`, `mcit --version`, suggestions for a mistyped verb, and the heatmaps' titles."""
import base64
import json
import shutil
from html.parser import HTMLParser

import pytest

from badinput import assert_rejected, invoke, rerecord
from test_end_to_end import SMALL

import mcit
from mcit.config import load_config
from mcit.report.browse import matrix_delta, most_forgotten
from mcit.report.matrix import figure_caption, figure_title


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two finished runs, made once: `a` (lora, GK view by the embedding judge) and `b` (a higher lr)."""
    root = tmp_path_factory.mktemp("browse")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MCIT_CACHE", str(root / "cache"))
        for name, extra in (("a", ["judge.backend=embedding"]), ("b", ["train.lr=0.02", "train.steps_per_task=4"])):
            code, out, err = invoke(["run", *SMALL, f"output_dir={root / 'runs'}", f"name={name}", *extra])
            assert code == 0, err
        yield root / "runs"


def _json(path):
    return json.loads(path.read_text())


def _copy(runs, tmp_path, name, as_name=None):
    return shutil.copytree(runs / name, tmp_path / (as_name or name))


# ------------------------------------------------------------------------------------- ls


def test_ls_lists_done_partial_and_failed_runs_and_runs_inside_compare_folders(runs, tmp_path):
    root = tmp_path / "all"
    _copy(runs, root, "a")
    partial = _copy(runs, root, "b", "b-partial")  # stopped after stage 1 of 2
    for f in ["metrics.json", "matrix.json", "stages/02-VQAv2/done.json"]:
        (partial / f).unlink()
    failed = _copy(runs, root, "b", "c-failed")  # no stage completed
    for f in ["metrics.json", "matrix.json", "stages/01-ImageNet/done.json", "stages/02-VQAv2/done.json"]:
        (failed / f).unlink()
    shutil.copytree(runs / "a", root / "cmp" / "runs" / "lora-seed0")

    code, out, _ = invoke(["ls", str(root)])
    assert code == 0
    lines = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert list(lines) == ["a", "b-partial", "c-failed", "cmp/runs/lora-seed0"]
    a_if, a_gk = _json(runs / "a" / "metrics.json"), _json(runs / "a" / "metrics_gk.json")
    expected = ["a", "lora", "ImageNet,VQAv2", "done"] + [f"{v[k]:.1f}" for v in (a_if, a_gk) for k in ("MFT", "MFN", "BWT")]
    assert lines["a"][:10] == expected
    assert lines["b-partial"][3:5] == ["partial", "1/2"] and lines["b-partial"][5:11] == ["-"] * 6
    assert lines["c-failed"][3] == "failed" and lines["c-failed"][-1] == "-"
    stage1 = _json(runs / "b" / "stages" / "01-ImageNet" / "done.json")["elapsed_seconds"]
    assert lines["b-partial"][-1] == f"{round(stage1)}s"  # a partial run's time: up to its last stage
    assert lines["cmp/runs/lora-seed0"][:4] == ["cmp/runs/lora-seed0", "lora", "ImageNet,VQAv2", "done"]


def test_ls_and_show_say_running_stopped_failed_and_interrupted(runs, tmp_path, monkeypatch):
    import os
    import subprocess
    import sys

    from mcit import train
    from mcit.runstate import read_state, write_state

    assert read_state(runs / "a")["state"] == "done"  # a finished run says so
    # a run stopping on an error in stage 2: the error is recorded; resuming it finishes it
    monkeypatch.setenv("MCIT_CACHE", str(runs.parent / "cache"))
    real = train._train_stage

    def breaks_in_stage_2(run, t, name, trained):
        if t == 1:
            raise RuntimeError("disk on fire")
        return real(run, t, name, trained)

    monkeypatch.setattr(train, "_train_stage", breaks_in_stage_2)
    code, _, err = invoke(["run", *SMALL, f"output_dir={tmp_path}", "name=broken"])
    assert code == -1 and "RuntimeError: disk on fire" in err  # a bug's traceback, as a user sees it
    run = tmp_path / "broken"
    code, out, _ = invoke(["ls", str(tmp_path)])
    assert code == 0 and out.splitlines()[1].split()[3:5] == ["failed", "1/2"]
    code, out, _ = invoke(["show", str(run)])
    assert "status failed 1/2" in out and "error RuntimeError: disk on fire" in out

    write_state(run, "running")  # this process: alive
    assert invoke(["ls", str(tmp_path)])[1].splitlines()[1].split()[3:5] == ["running", "1/2"]
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    state = read_state(run) | {"pid": int(gone.stdout)}  # a process that died without a word (SIGKILL)
    (run / "state.json").write_text(json.dumps(state))
    assert int(gone.stdout) != os.getpid()
    assert invoke(["ls", str(tmp_path)])[1].splitlines()[1].split()[3:5] == ["stopped", "1/2"]

    def ctrl_c(run, t, name, trained):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "_train_stage", ctrl_c)
    assert invoke(["run", "--resume", str(run)])[0] == 130
    assert invoke(["ls", str(tmp_path)])[1].splitlines()[1].split()[3:5] == ["interrupted", "1/2"]

    monkeypatch.setattr(train, "_train_stage", real)
    assert invoke(["run", "--resume", str(run)])[0] == 0
    assert read_state(run)["state"] == "done" and "error" not in read_state(run)
    assert invoke(["ls", str(tmp_path)])[1].splitlines()[1].split()[3] == "done"


def test_ls_of_a_folder_without_runs_says_so(tmp_path):
    code, out, _ = invoke(["ls", str(tmp_path)])
    assert code == 0 and out.strip() == f"no run folders under {tmp_path}"


# ------------------------------------------------------------------------------------- show


def test_show_gives_config_changes_matrices_baselines_and_answers(runs):
    code, out, _ = invoke(["show", str(runs / "b"), "--answers", "1"])
    assert code == 0
    assert "  train.lr: 0.001 -> 0.02" in out and "  train.steps_per_task: 300 -> 4" in out
    assert "output_dir" not in out.split("## config")[1].split("##")[0]  # where the run is, not what it does
    assert "## instruction following" in out and "## general knowledge" not in out  # b has no judge
    m = _json(runs / "b" / "matrix.json")
    assert f"MFN {m['metrics']['MFN']:.2f}" in out
    base = _json(runs / "b" / "baselines.json")["VQAv2"]
    assert (f"| VQAv2 | {base['constant_answer']} | {base['score']:.1f} | {m['zero_shot'][1]:.1f} | "
            f"{m['matrix'][1][1]:.1f} | {m['matrix'][1][1]:.1f} |") in out
    answers = out.split("## answers after 02-VQAv2")[1]
    preds = [json.loads(line) for line in (runs / "b" / "stages" / "02-VQAv2" / "predictions" / "VQAv2.jsonl")
             .read_text().splitlines()]
    wrong = next(r for r in preds if r["score"] < 0.5)
    assert f"(expected {wrong['answers'][0]})" in answers
    assert sum(line.startswith("  ✗") for line in answers.splitlines()) == 2  # --answers 1: one per task


def test_show_of_a_judged_run_has_both_views(runs):
    code, out, _ = invoke(["show", str(runs / "a")])
    gk = _json(runs / "a" / "matrix_gk.json")
    assert code == 0 and "## general knowledge" in out
    assert f"MFN {gk['metrics']['MFN']:.2f}" in out.split("## general knowledge")[1]


def test_show_of_a_partial_run_shows_its_last_completed_stage(runs, tmp_path):
    run = _copy(runs, tmp_path, "b")
    (run / "stages" / "02-VQAv2" / "done.json").unlink()  # cut during stage 2's evaluation
    (run / "metrics.json").unlink()
    code, out, _ = invoke(["show", str(run)])
    assert code == 0 and "status partial 1/2" in out
    assert "## answers after 01-ImageNet" in out and "02-VQAv2" not in out


def test_most_forgotten_lists_the_largest_drops_first():
    matrix = [[80.0, None, None], [60.0, 90.0, None], [50.0, 40.0, 70.0]]
    # task 0: best before the last stage 80 -> 50 (30); task 1: 90 -> 40 (50); the last task is not counted
    assert most_forgotten(["a", "b", "c"], matrix) == [("b", 90.0, 40.0, 50.0), ("a", 80.0, 50.0, 30.0)]
    assert most_forgotten(["a", "b"], [[50.0, None], [60.0, 70.0]]) == []  # improved: nothing forgotten


# ------------------------------------------------------------------------------------- diff


def test_diff_gives_config_changes_and_metric_deltas(runs):
    code, out, _ = invoke(["diff", str(runs / "a"), str(runs / "b")])
    assert code == 0
    assert "  train.lr: 0.001 -> 0.02" in out and "  judge.backend: 'embedding' -> 'none'" in out
    a, b = _json(runs / "a" / "metrics.json"), _json(runs / "b" / "metrics.json")
    assert f"| MFT | {a['MFT']:.2f} | {b['MFT']:.2f} | {b['MFT'] - a['MFT']:+.2f} |" in out
    assert "instruction following: matrix B - A" in out
    assert "general knowledge: metrics" in out  # A has the view: its column is shown, B's cells "-"
    assert "| MFN | " in out.split("general knowledge: metrics")[1]


def test_diff_of_a_run_with_itself_is_all_zero(runs):
    code, out, _ = invoke(["diff", str(runs / "a"), str(runs / "a")])
    assert code == 0 and "(same)" in out and "| MFN |" in out and out.count("+0.00") >= 5


def test_matrix_delta_is_b_minus_a_cell_by_cell():
    assert matrix_delta([[1.0, None], [2.0, 3.0]], [[2.5, None], [1.0, 5.0]]) == [[1.5, None], [-1.0, 2.0]]


# ------------------------------------------------------------------------------------- figures


def test_heatmap_title_names_run_method_view_and_scoring(runs):
    assert figure_title(runs / "a", "matrix") == "a · lora · instruction following · scoring corrected"
    assert figure_title(runs / "a", "matrix_gk") == "a · lora · general knowledge · judge embedding"
    assert figure_title(runs / "a", "matrix_partial").endswith("instruction following (partial) · scoring corrected")
    assert (runs / "a" / "matrix.md").read_text().splitlines()[0] == "# a · lora · instruction following · scoring corrected"
    assert (runs / "a" / "matrix_gk.md").read_text().startswith("# a · lora · general knowledge")


def test_title_outside_a_run_folder_is_the_name(tmp_path):
    assert figure_title(tmp_path, "matrix") == "matrix"


def test_heatmap_caption_has_the_headline_metrics():
    assert figure_caption({"MFT": 85.0, "MFN": 80.25, "BWT": -9.5, "FWT": None}) == "MFT 85.00   MFN 80.25   BWT -9.50"
    assert figure_caption({"MFT": 85.0, "MFN": 80.25, "BWT": None}) == "MFT 85.00   MFN 80.25   BWT -"


# ------------------------------------------------------------------------------------- CLI conveniences


def test_config_show_prints_the_resolved_commented_config(tmp_path):
    code, out, _ = invoke(["config", "show", "train.lr=3e-4", "method.name=moelora"])
    assert code == 0
    assert "  lr: 0.0003  # peak learning rate" in out.splitlines()
    saved = tmp_path / "shown.yaml"
    saved.write_text(out)
    cfg = load_config(saved, [])  # what it prints is a config that loads back
    assert cfg.train.lr == 3e-4 and cfg.method.name == "moelora"


def test_config_show_of_a_config_file_with_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 0.005\n")
    code, out, _ = invoke(["config", "show", str(path), "seed=3"])
    assert code == 0 and "  lr: 0.005  # peak learning rate" in out and out.count("\nseed: 3  #") == 1


def test_version():
    code, out, _ = invoke(["--version"])
    assert code == 0 and out == f"mcit {mcit.__version__}\n"


def test_mistyped_verb_gets_a_suggestion():
    assert_rejected(["rnu"], mentions=["invalid choice: 'rnu'", "did you mean 'run'?"])
    assert_rejected(["shwo", "x"], mentions=["did you mean 'show'?"])


# ------------------------------------------------------------------------------------- HTML report


class _Tags(HTMLParser):
    """Every start tag with its attributes, and the page's text."""

    def __init__(self):
        super().__init__()
        self.tags, self.text = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def _parse(html):
    parser = _Tags()
    parser.feed(html)
    return parser


def _assert_self_contained(page):
    images = [a for t, a in page.tags if t == "img"]
    for attrs in images:
        assert attrs["src"].startswith("data:image/png;base64,")
        assert base64.b64decode(attrs["src"].split(",", 1)[1]).startswith(b"\x89PNG\r\n\x1a\n")
    assert not [t for t, _ in page.tags if t in ("script", "link", "iframe", "object")]
    assert not [a for _, a in page.tags for k in ("src", "href") if k in a and not a[k].startswith("data:")]
    return images


def test_run_report_is_one_self_contained_page(runs, tmp_path):
    out = tmp_path / "r.html"
    code, stdout, _ = invoke(["report", str(runs / "a"), "-o", str(out)])
    assert code == 0 and stdout.strip() == f"wrote {out}"
    page = _parse(out.read_text())
    images = _assert_self_contained(page)
    pngs = sorted(p.stem for p in (runs / "a").glob("*.png"))
    assert {"matrix", "matrix_gk"} <= set(pngs) and sorted(a["alt"] for a in images) == pngs  # both heatmaps
    text = "".join(page.text)
    metrics = _json(runs / "a" / "metrics.json")
    assert "Accuracy matrix: instruction following" in text and "Accuracy matrix: general knowledge" in text
    assert f"{metrics['MFN']:.2f}" in text and "environment.json" in text and "data.train_per_task: 400 -> 24" in text


def test_report_escapes_what_the_model_answered(runs, tmp_path):
    run = _copy(runs, tmp_path, "b")
    path = run / "stages" / "02-VQAv2" / "predictions" / "VQAv2.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    records[0].update(prediction="<script>document.title='pwned'</script><b>x", score=0.0)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    rerecord(path)  # as if the model had answered so (an edited stage file is refused as damaged)
    code, _, _ = invoke(["report", str(run)])
    html = (run / "report.html").read_text()  # the default place
    assert code == 0 and "<script" not in html and "<b>x" not in html
    assert "&lt;script&gt;document.title=&#x27;pwned&#x27;&lt;/script&gt;&lt;b&gt;x" in html
    assert "<script>document.title='pwned'</script><b>x" in "".join(_parse(html).text)  # shown as text


def test_compare_report_has_mean_std_table_and_error_bar_charts(runs, tmp_path):
    from mcit.compare import _read_run, _summarise
    from mcit.rundir import save_json

    folder = tmp_path / "cmp"
    for name in ("a", "b"):
        shutil.copytree(runs / name, folder / "runs" / f"lora-seed{ord(name) - ord('a')}")
    table = {"lora": _summarise([_read_run(folder / "runs" / f"lora-seed{s}") for s in (0, 1)])}
    save_json(folder / "compare.json", {"methods": ["lora"], "seeds": [0, 1], "table": table})
    code, _, _ = invoke(["report", str(folder)])
    page = _parse((folder / "report.html").read_text())
    assert code == 0
    images = _assert_self_contained(page)
    assert [a["alt"] for a in images] == ["instruction following by method"]  # b has no GK view: no GK chart
    mfn = [_json(runs / n / "metrics.json")["MFN"] for n in ("a", "b")]
    mean, std = sum(mfn) / 2, abs(mfn[0] - mfn[1]) / 2 ** 0.5  # sample std of two values
    text = "".join(page.text)
    assert f"{mean:.2f} ± {std:.2f}" in text and "lora-seed0" in text and "lora-seed1" in text


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium package is not installed")
def test_report_renders_in_headless_chromium(runs, tmp_path):
    import subprocess

    run = _copy(runs, tmp_path, "a")
    path = run / "stages" / "02-VQAv2" / "predictions" / "VQAv2.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    records[0].update(prediction="<script>document.title='pwned'</script>", score=0.0)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    rerecord(path)  # as if the model had answered so (an edited stage file is refused as damaged)
    assert invoke(["report", str(run)])[0] == 0
    # --enable-logging=stderr prints every console message as ":CONSOLE" (checked against a page that
    # logs an error and calls an undefined function: both appear)
    shown = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                            "--v=0", "--dump-dom", (run / "report.html").as_uri()],
                           capture_output=True, text=True, timeout=120)
    dom = shown.stdout
    assert ":CONSOLE" not in shown.stderr, shown.stderr
    assert "<title>mcit run a</title>" in dom and "pwned" in dom and "<title>pwned" not in dom
    assert dom.count('class="chart"') == len(list(run.glob("*.png")))
