"""EMT curves over seeds (mcit.emt.bands): the t-band of the mean, steps every seed recorded, the
probe band, the table; and `mcit compare` writing them for runs that tracked EMT."""
import json
import math

import pytest
from test_end_to_end import SMALL, cache  # noqa: F401  (cache is a fixture)

from mcit.cli import main
from mcit.emt.bands import confidence_band, format_bands, merge_seeds, row_bands
from mcit.emt.curve import CURVE_FILE, PROBE_FILE


def _point(step, dataset, acc, stage=1, task="ImageNet"):
    return {"step": step, "stage": stage, "task": task, "dataset": dataset, "accuracy": acc}


def test_the_band_is_the_t_interval_of_the_mean():
    b = confidence_band([10.0, 20.0, 30.0])
    half = 4.302652729911275 * 10.0 / math.sqrt(3)  # t(0.975, 2) by hand: std 10, 3 seeds
    assert b == pytest.approx({"n": 3, "mean": 20.0, "std": 10.0, "lo": 20.0 - half, "hi": 20.0 + half})
    assert confidence_band([7.0]) == {"n": 1, "mean": 7.0, "std": 0.0, "lo": 7.0, "hi": 7.0}
    same = confidence_band([5.0, 5.0, 5.0, 5.0])
    assert same["lo"] == same["hi"] == 5.0


def test_seeds_merge_on_the_steps_every_seed_recorded():
    a = [_point(0, "digits", 0.0), _point(0, "coin-colors", 20.0), _point(5, "digits", 10.0),
         _point(5, "coin-colors", 40.0), _point(10, "digits", 30.0, stage=2, task="VQAv2")]
    b = [_point(0, "coin-colors", 30.0), _point(0, "digits", 10.0), _point(5, "digits", 20.0),
         _point(5, "coin-colors", 60.0)]  # stopped before step 10
    merged = merge_seeds([a, b])
    assert list(merged) == ["digits", "coin-colors"]  # the first run's order (emt.datasets)
    assert [p["step"] for p in merged["digits"]] == [0, 5]
    assert [p["mean"] for p in merged["digits"]] == [5.0, 15.0]
    assert [p["mean"] for p in merged["coin-colors"]] == [25.0, 50.0]
    assert merged["coin-colors"][1]["std"] == pytest.approx(math.sqrt(200.0))
    assert merge_seeds([a, []]) == {} and merge_seeds([]) == {}


def test_row_bands_reads_curves_and_probes(tmp_path):
    dirs = []
    for seed, (acc, probe) in enumerate([(10.0, 80.0), (30.0, 90.0)]):
        d = tmp_path / f"run-seed{seed}"
        d.mkdir()
        (d / CURVE_FILE).write_text("".join(json.dumps(r) + "\n" for r in
                                            [_point(0, "digits", 0.0), _point(5, "digits", acc)]))
        (d / PROBE_FILE).write_text(json.dumps({"datasets": {"digits": {"accuracy": probe}}}))
        dirs.append(d)
    bands = row_bands(dirs)
    assert bands["runs"] == ["run-seed0", "run-seed1"]
    assert bands["probe"]["digits"]["mean"] == 85.0 and bands["curve"]["digits"][1]["mean"] == 20.0
    table = format_bands({"lora": bands})
    # start, the highest point after it (with its step), the end, the probe; mean ± std over seeds
    assert "| lora | digits | 2 | 0.0 ± 0.0 | 20.0 ± 14.1 (5) | 20.0 ± 14.1 | 85.0 ± 7.1 |" in table
    (dirs[1] / CURVE_FILE).unlink()
    assert row_bands(dirs) is None  # a seed without EMT: no band pretends to cover it


def test_compare_writes_the_emt_curves_over_seeds(cache, capsys):  # noqa: F811
    out = cache / "cmp"
    args = ["compare", *SMALL, "--methods", "lora", "--seeds", "0,1", "--out", str(out), "data.tasks=[ImageNet]",
            "emt.every_steps=3", "emt.datasets=[digits,coin-colors]", "emt.limit=4", "emt.batch_size=4",
            "eval.zero_shot=false"]
    assert main(args) == 0
    bands = json.loads((out / "emt_curves.json").read_text())
    assert list(bands) == ["lora"] and list(bands["lora"]["curve"]) == ["digits", "coin-colors"]
    for name, points in bands["lora"]["curve"].items():
        assert [p["step"] for p in points] == [0, 3] and all(p["n"] == 2 for p in points)
        per_seed = [json.loads(line)["accuracy"] for s in (0, 1)
                    for line in (out / "runs" / f"lora-seed{s}" / CURVE_FILE).read_text().splitlines()
                    if json.loads(line)["dataset"] == name and json.loads(line)["step"] == 3]
        assert points[1]["mean"] == pytest.approx(sum(per_seed) / 2)
        assert bands["lora"]["probe"][name]["n"] == 2
    assert (out / "emt_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| lora | digits | 2 |" in (out / "compare.md").read_text()
    assert "EMT accuracy over seeds" in (out / "report.html").read_text()
