"""What checking a model folder costs: the check against loading the same checkpoint, and the
check on a small against a large weight file (it reads headers only, so the size should not matter).

    PYTHONPATH=src python bench/model_folder_check.py

The large file is sparse (a valid header, then a hole), so it takes no disk space and is never read.
"""
from __future__ import annotations

import json
import shutil
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from conftest import save_tiny_checkpoint  # noqa: E402

from mcit.models.folder_check import MLLM, model_folder_problems  # noqa: E402
from mcit.models.load import load_checkpoint  # noqa: E402


def best_of(repeats: int, work) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def with_one_big_tensor(folder: Path, n_bytes: int) -> None:
    """Replace the weights by one F32 tensor of ``n_bytes`` (sparse on disk)."""
    header = json.dumps({"w": {"dtype": "F32", "shape": [n_bytes // 4], "data_offsets": [0, n_bytes]}}).encode()
    header += b" " * (-len(header) % 8)
    path = folder / "model.safetensors"
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        f.truncate(8 + len(header) + n_bytes)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_tiny_checkpoint(Path(tmp) / "tiny")
        assert model_folder_problems(folder, MLLM) == []  # warm: transformers' tables imported once
        check = best_of(20, lambda: model_folder_problems(folder, MLLM))
        load = best_of(3, lambda: load_checkpoint(folder))
        sizes = {}
        for n_bytes in (2 * 2**20, 2 * 2**30):
            big = Path(tmp) / f"big{n_bytes}"
            shutil.copytree(folder, big)
            with_one_big_tensor(big, n_bytes)
            assert model_folder_problems(big, MLLM) == []
            sizes[n_bytes] = best_of(20, lambda: model_folder_problems(big, MLLM))
        small, large = sizes.values()
        print(json.dumps({"checkpoint_mb": round((folder / "model.safetensors").stat().st_size / 1e6, 2),
                          "check_ms": round(check * 1e3, 2), "load_checkpoint_ms": round(load * 1e3, 1),
                          "load_over_check": round(load / check, 1), "check_ms_2mib_file": round(small * 1e3, 2),
                          "check_ms_2gib_file": round(large * 1e3, 2), "large_over_small": round(large / small, 2)}))

if __name__ == "__main__":
    main()
