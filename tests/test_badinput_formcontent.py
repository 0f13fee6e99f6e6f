"""Bad-input catalogue: a damaged form_content.json (the format vs content tables of a run) given
to `mcit report`. Each case damages a copy of one real run folder (made once by a tiny `mcit run`)
and asserts a clean refusal naming the file, no traceback and no file changed (report.html kept)."""
import json
import shutil

import pytest

from badinput import assert_rejected, tiny_run


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    with tiny_run(tmp_path_factory, "badformcontent") as run:
        yield run


def _edit(run, change):
    path = run / "form_content.json"
    data = json.loads(path.read_text())
    path.write_text(json.dumps(change(data)))


def _set(key, value):
    def change(data):
        data[key] = value
        return data
    return change


def _first_cell(value):
    def change(data):
        row = next(iter(data["cells"].values()))
        if value is None:
            del row[next(iter(row))]["score"]
        else:
            row[next(iter(row))]["content"] = value
        return data
    return change


# id: (damage(run), mentions)
CASES = {
    "not-json": (lambda run: (run / "form_content.json").write_text('{"tasks": ['),
                 ["form_content.json", "not valid JSON"]),
    "a-list": (lambda run: _edit(run, lambda data: [data]), ["form_content.json", "expected a JSON object, got list"]),
    "tasks-missing": (lambda run: _edit(run, lambda data: {"cells": data["cells"]}), ["form_content.json", "'tasks'"]),
    "tasks-not-names": (lambda run: _edit(run, _set("tasks", [1, 2])), ["form_content.json", "'tasks'", "names"]),
    "cells-a-list": (lambda run: _edit(run, _set("cells", [])), ["form_content.json", "'cells'"]),
    "row-not-a-mapping": (lambda run: _edit(run, _set("cells", {"base": [1]})), ["form_content.json", "'cells'"]),
    "cell-value-a-string": (lambda run: _edit(run, _first_cell("12.5")),
                            ["form_content.json", "cells.base.ImageNet.content", "got str"]),
    "cell-without-score": (lambda run: _edit(run, _first_cell(None)),
                           ["form_content.json", "cells.base.ImageNet", "'score'"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_rejected(made, tmp_path, case):
    run = shutil.copytree(made, tmp_path / "lora")
    damage, mentions = CASES[case]
    damage(run)
    assert_rejected(["report", str(run)], mentions=mentions, watch=[tmp_path], code=2)
