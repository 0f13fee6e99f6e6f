"""`mcit compare`: same stream for every method, mean ± std over seeds, finished runs reused."""
import json
import math

import pytest

from mcit.cli import main
from mcit.compare import mean_std, parse_list

from test_end_to_end import SMALL, cache  # noqa: F401  (cache is a fixture)


def test_mean_and_sample_std_by_hand():
    assert mean_std([1.0, 2.0, 3.0, 4.0]) == (2.5, pytest.approx(math.sqrt(5 / 3)))
    assert mean_std([7.0]) == (7.0, 0.0)
    assert mean_std([1.0, None]) is None and mean_std([]) is None


def test_list_arguments():
    assert parse_list("lora, ema,lcia", "methods") == ["lora", "ema", "lcia"]
    assert parse_list("0,1,2", "seeds", int) == [0, 1, 2]
    with pytest.raises(ValueError, match="--seeds"):
        parse_list("0,x", "seeds", int)


def test_compare_two_methods_two_seeds_then_reuse(cache, capsys, monkeypatch):
    out = cache / "cmp"
    args = ["compare", *SMALL, "--methods", "lora,multitask", "--seeds", "0,1", "--out", str(out)]
    assert main(args) == 0
    table = json.loads((out / "compare.json").read_text())["table"]
    assert set(table) == {"lora", "multitask"} and table["lora"]["seeds"] == 2
    finals = [json.loads((out / "runs" / f"lora-seed{s}" / "metrics.json").read_text())["MFN"] for s in (0, 1)]
    assert table["lora"]["if"]["MFN"][0] == pytest.approx(sum(finals) / 2)
    assert table["multitask"]["if"]["BWT"] is None  # no sequence, no backward transfer
    envs = [json.loads((out / "runs" / f"lora-seed{s}" / "environment.json").read_text()) for s in (0, 1)]
    assert envs[0]["checkpoint"] == envs[1]["checkpoint"]  # seeds vary training, not the data or base model
    assert [e["seed"] for e in envs] == [0, 1]
    md = (out / "compare.md").read_text()
    assert "| lora |" in md and "BWT (IF)" in md and "trainable params" in md
    # the score's forgetting split into format and content, each the mean of the runs' form_content.json
    split = {(m, k): ms for m, k, ms in table["lora"]["form_content"]}
    fcs = [json.loads((out / "runs" / f"lora-seed{s}" / "form_content.json").read_text())["metrics"] for s in (0, 1)]
    for measure, k in [("score", "BWT"), ("format_valid", "BWT"), ("content", "BWT"), ("content", "MFN")]:
        assert split[(measure, k)][0] == pytest.approx(sum(f[measure][k] for f in fcs) / 2)
    assert split[("score", "BWT")][0] == pytest.approx(table["lora"]["if"]["BWT"][0])  # the same score
    assert "| method | BWT score | BWT format-valid | BWT content |" in md
    assert all(ms is None for *_, ms in table["multitask"]["form_content"])  # a joint run has no sequence
    assert "format vs content" in (out / "report.html").read_text()

    import mcit.train

    def no_training(*a, **k):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(mcit.train, "run_stream", no_training)
    assert main(args) == 0  # everything read back from the run folders
    # and with settings that change evaluation's speed, never its answers
    assert main([*args, "eval.kv_cache=dynamic", "eval.prompt_cache_mb=0"]) == 0
    capsys.readouterr()
    # Other settings under the same --out: the finished runs are not passed off as these.
    assert main([*args, "train.lr=5e-3"]) == 2
    err = capsys.readouterr().err
    assert "lora-seed0 already holds a run with a different config (train.lr: 0.001 -> 0.005)" in err


def test_unknown_method_fails_before_any_run(cache, capsys):
    assert main(["compare", *SMALL, "--methods", "lora,nope", "--out", str(cache / "c")]) == 2
    assert "unknown method.name 'nope'" in capsys.readouterr().err
    assert not (cache / "c").exists()


def test_tune_runs_every_grid_point_and_picks_the_best(cache, capsys, monkeypatch):
    out = cache / "tune"
    args = ["tune", *SMALL, "--method", "ema", "--grid", "method.ema_weight=0.01,0.5", "--grid",
            "train.lr=1e-3,2e-3", "--out", str(out)]
    assert main(args) == 0
    record = json.loads((out / "tune.json").read_text())
    points = [r["point"] for r in record["rows"]]
    assert points == ["method.ema_weight=0.01 train.lr=1e-3", "method.ema_weight=0.01 train.lr=2e-3",
                      "method.ema_weight=0.5 train.lr=1e-3", "method.ema_weight=0.5 train.lr=2e-3"]
    names = sorted(p.name for p in (out / "runs").iterdir())
    assert names == ["ema-ema_weight=0.01_lr=1e-3-seed0", "ema-ema_weight=0.01_lr=2e-3-seed0",
                     "ema-ema_weight=0.5_lr=1e-3-seed0", "ema-ema_weight=0.5_lr=2e-3-seed0"]
    finals = {r["point"]: r["if"]["MFN"][0] for r in record["rows"]}
    assert record["best"] == max(finals, key=finals.get)  # the first of equals wins, as max does
    cfg_text = (out / "runs" / names[2] / "config.yaml").read_text()
    assert "ema_weight: 0.5" in cfg_text and "name: ema" in cfg_text
    assert f"best by mean MFN (IF): {record['best']}" in (out / "tune.md").read_text()


@pytest.mark.parametrize("argv, message", [
    (["--grid", "method.ema_weight"], "write key=v1,v2"),
    (["--grid", "method.nope=1,2"], "nope"),
    (["--grid", "method.ema_weight=0.1", "--select", "XYZ"], "--select"),
])
def test_tune_bad_arguments_fail_before_any_run(cache, capsys, argv, message):
    out = cache / "t-bad"
    assert main(["tune", *SMALL, "--method", "ema", *argv, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_compare_vary_runs_each_method_at_each_value(cache, monkeypatch):
    """A study: --vary key=v1,v2 gives a row per (method, value), each run with that value set."""
    out = cache / "study"
    assert main(["compare", *SMALL, "--methods", "lora", "--vary", "data.order=coin,reverse", "--out", str(out)]) == 0
    record = json.loads((out / "compare.json").read_text())
    assert list(record["table"]) == ["lora order=coin", "lora order=reverse"]
    assert record["vary"] == ["data.order=coin,reverse"]
    orders = {}
    for name in ("lora-order=coin-seed0", "lora-order=reverse-seed0"):
        matrix = json.loads((out / "runs" / name / "metrics.json").read_text())
        orders[name] = json.loads((out / "runs" / name / "environment.json").read_text())["tasks"]
        assert matrix["MFN"] is not None
    assert orders["lora-order=reverse-seed0"] == orders["lora-order=coin-seed0"][::-1]
    assert "| lora order=reverse |" in (out / "compare.md").read_text()


@pytest.mark.parametrize("vary, message", [
    ("data.order", "write key=v1,v2"), ("data.order=coin,sideways", "random-<seed>"), ("data.nope=1", "nope"),
    # found before the first value's runs, not when the grid reaches the bad value
    ("data.instruction_set=Original,Divers", "coin-mini's instruction sets are Original, Diverse, 10Type"),
    ("data.image_size=32,16", "image_size must be >= 32"),
])
def test_compare_bad_vary_fails_before_any_run(cache, capsys, vary, message):
    out = cache / "v-bad"
    assert main(["compare", *SMALL, "--methods", "lora", "--vary", vary, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
