"""`make bench`: every bench script (bench/*.py but this one and the _helpers), one after the
other (never two at once: they time the same cores), each printing one JSON object; all of them
in one JSON file with the headline figures and their goals (issue 15) at the top.

    python bench/run_all.py [--out bench/results.json] [--only lora_step,threads_neighbour]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"


def scripts(only: list[str] | None) -> list[Path]:
    found = sorted(p for p in HERE.glob("*.py") if not p.name.startswith("_") and p.name != "run_all.py")
    return [p for p in found if only is None or p.stem in only]


def run(script: Path) -> dict:
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
                        "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(script)], cwd=HERE, env=env, capture_output=True, text=True)
    seconds = round(time.perf_counter() - start, 1)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1:] or [f"exit {proc.returncode}"], "seconds": seconds}
    try:
        return json.loads(proc.stdout) | {"bench_seconds": seconds}
    except json.JSONDecodeError:
        return {"error": ["output is not one JSON object"], "seconds": seconds}


def dig(results: dict, *path):
    for key in path:
        if not isinstance(results, dict) or key not in results:
            return None
        results = results[key]
    return results


def headline(results: dict) -> list[dict]:
    """The figures issue 15's acceptance names, each with its goal and whether this run met it."""
    rows = [
        ("LoRA step / full fine-tuning step (default size)", ("lora_step", "sizes", "hidden_128", "lora_over_full"), "<=", 1.0),
        ("LoRA step / PEFT's LoRA step (default size)", ("lora_step", "sizes", "hidden_128", "lora_over_lora_peft"), "<", 1.0),
        ("training utilisation, LoRA, default size (fp32)", ("lora_step", "sizes", "hidden_128", "utilisation", "lora"), ">=", 0.40),
        ("training utilisation, LoRA, hidden 256 (fp32)", ("lora_step", "sizes", "hidden_256", "utilisation", "lora"), ">=", 0.60),
        ("training utilisation, LoRA with train.compile=true, hidden 256 (fp32)",
         ("lora_step", "sizes", "hidden_256", "utilisation", "lora_compiled"), ">=", 0.60),
        ("training utilisation against the matmul rate timed beside the steps, LoRA, default size",
         ("lora_step", "sizes", "hidden_128", "utilisation_beside_steps", "lora"), ">=", 0.40),
        ("training utilisation against the matmul rate timed beside the steps, LoRA, hidden 256",
         ("lora_step", "sizes", "hidden_256", "utilisation_beside_steps", "lora"), ">=", 0.60),
        ("training utilisation, full FT, default size", ("lora_step", "sizes", "hidden_128", "utilisation", "full"), None, None),
        ("training utilisation, full FT, hidden 256", ("lora_step", "sizes", "hidden_256", "utilisation", "full"), None, None),
        ("step with one CPU-bound neighbour / quiet (auto threads)", ("threads_neighbour", "busy_over_quiet", "auto"), "<=", 1.5),
        ("step with one CPU-bound neighbour / quiet (all threads, before)", ("threads_neighbour", "busy_over_quiet", "threads_all"), None, None),
        ("step with one CPU-bound neighbour / quiet (all threads, OMP_WAIT_POLICY=PASSIVE)",
         ("threads_neighbour", "busy_over_quiet", "threads_all_passive"), None, None),
        ("step with one CPU-bound neighbour / best quiet step (auto threads)",
         ("threads_neighbour", "busy_over_best_quiet", "auto"), "<=", 1.5),
        ("step with one CPU-bound neighbour / quiet one-thread step (auto; one process's floor on 2 cores)",
         ("threads_neighbour", "busy_over_quiet_one_core_fewer", "auto"), None, None),
        ("quiet step, one thread / all threads (one process's busy/quiet cannot go below it on 2 cores)",
         ("threads_neighbour", "quiet_all_threads_speedup_over_one"), None, None),
        ("step with one CPU-bound neighbour / quiet, 2 data-parallel processes x 1 thread (torchrun)",
         ("ddp_neighbour", "busy_over_quiet", "ddp_2x1_thread"), "<=", 1.5),
        ("the same busy step / quiet step of one process at all threads (mcit run alone)",
         ("ddp_neighbour", "ddp_busy_over_one_process_quiet"), "<=", 1.5),
        ("quiet step, 2 data-parallel processes x 1 thread / one process at all threads",
         ("ddp_neighbour", "ddp_quiet_over_one_process_quiet"), None, None),
        ("MoELoRA fused step / LoRA step", ("moelora_step", "fused_over_lora"), "<=", 1.15),
        ("LCIA step overhead", ("lcia_overhead", "lcia_overhead"), "<=", 0.05),
        ("batched evaluation / one at a time", ("eval_batching", "speedup"), ">=", 6.0),
        ("evaluation: test prompts encoded each time / once per run", ("eval_batching", "prompt_cache_speedup"),
         None, None),
        ("evaluation: dynamic KV cache / static KV cache", ("eval_batching", "static_cache_speedup"), None, None),
        ("evaluation seconds per sample (batched, as a run)", ("eval_batching", "batched_seconds_per_sample"),
         None, None),
    ]
    out = []
    for label, path, op, goal in rows:
        value = dig(results, *path)
        met = None
        if value is not None and goal is not None:
            met = {"<=": value <= goal, "<": value < goal, ">=": value >= goal}[op]
        out.append({"figure": label, "value": value, "goal": f"{op} {goal}" if goal is not None else None, "met": met,
                    "source": ".".join(path)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(HERE / "results.json"))
    ap.add_argument("--only", help="comma-separated bench names (file stems)")
    args = ap.parse_args()
    results = {}
    for script in scripts(args.only.split(",") if args.only else None):
        print(f"bench {script.stem} ...", file=sys.stderr, flush=True)
        results[script.stem] = run(script)
    report = {"headline": headline(results), "cores": len(os.sched_getaffinity(0)), "load_average_at_end": os.getloadavg(),
              "benches": results}
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    for row in report["headline"]:
        print(f"{row['figure']:<66} {row['value']!s:>8}  goal {row['goal'] or '-':<8} "
              f"{'' if row['met'] is None else 'met' if row['met'] else 'NOT met'}")
    print(f"all figures: {args.out}")


if __name__ == "__main__":
    main()
