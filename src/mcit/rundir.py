"""The run folder: its creation, the saved configuration and environment, JSON files and the
per-stage ``done.json`` markers that let an interrupted run be continued.

Layout::

    <output_dir>/<name>/
        config.yaml          the resolved configuration
        environment.json     versions, platform, device, command line, git commit, time
        stages/01-<task>/    one folder per training stage: model/, method_state.*, predictions/,
                             per-step series; done.json is written last (save_stage, mark_stage_done)
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import importlib.metadata
import json
import platform
import re
import sys
from pathlib import Path
from typing import Any

from .config import ConfigError, config_hash, config_to_dict, config_to_yaml, load_config
from .errors import RunError  # noqa: F401 - raised here, imported from here by others
from .io import atomic_write_bytes, atomic_write_text

__all__ = [
    "RunError",
    "create_run_dir",
    "is_stage_done",
    "load_json",
    "load_stage_info",
    "mark_stage_done",
    "save_json",
    "save_run_info",
    "stage_dir",
    "save_stage",
    "restore_stage",
    "completed_stages",
    "save_jsonl",
]

CONFIG_FILE = "config.yaml"
ENVIRONMENT_FILE = "environment.json"
DONE_FILE = "done.json"
PACKAGES = ("torch", "transformers", "peft", "accelerate", "tokenizers", "numpy")

# Keys that say where the run folder is, not what the run does: ignored when an existing
# folder's config.yaml is compared with the current config.
_LOCATION_KEYS = ("output_dir", "name")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _safe_component(text: str) -> str:
    """``text`` usable as one path component: anything unusual becomes '_'."""
    cleaned = re.sub(r"[^A-Za-z0-9._+-]+", "_", str(text)).strip("._")
    return cleaned or "_"


def _content_dict(cfg: Any) -> dict[str, Any]:
    from .redact import redact_config

    data = config_to_dict(redact_config(cfg))  # as saved in config.yaml: URL credentials masked
    for key in _LOCATION_KEYS:
        data.pop(key, None)
    return data


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in list(a) + [k for k in b if k not in a]:
            out += _differences(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [f"{prefix[:-1]}: {a!r} -> {b!r}"]


def create_run_dir(cfg: Any) -> Path:
    """Create (or reuse) ``<output_dir>/<name or timestamp-method>`` and return it.

    An existing folder is reused only if it has no ``config.yaml`` yet or its ``config.yaml``
    describes the same run as ``cfg`` (``output_dir`` and ``name`` aside); otherwise RunError.
    """
    if cfg.name is not None:
        name = str(cfg.name)
        parts = Path(name).parts
        if not name.strip() or Path(name).is_absolute() or ".." in parts:
            raise RunError(f"run name {name!r} must be a relative folder name without '..'")
    else:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        name = f"{stamp}-{_safe_component(cfg.method.name)}"
    run_dir = Path(cfg.output_dir) / name

    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"{run_dir} exists and is not a folder")
    check_same_run(run_dir, cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def check_same_run(run_dir: Path, cfg: Any) -> None:
    """RunError unless ``run_dir`` has no config.yaml or its config describes the same run as
    ``cfg`` (``output_dir`` and ``name`` aside): a folder is only continued or reused as itself."""
    saved = Path(run_dir) / CONFIG_FILE
    if not saved.exists():
        return
    try:
        previous = load_config(saved, [], cls=type(cfg))
    except ConfigError as exc:
        raise RunError(f"{run_dir} already holds a run whose config cannot be read ({exc}); "
                       "choose another run name") from None
    old, new = _content_dict(previous), _content_dict(cfg)
    if config_hash(old) != config_hash(new):
        diff = _differences(old, new)
        shown = "; ".join(diff[:5]) + (f"; and {len(diff) - 5} more" if len(diff) > 5 else "")
        raise RunError(f"{run_dir} already holds a run with a different config ({shown}); "
                       "choose another run name or output_dir")


def _package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for package in ("mcit", *PACKAGES):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def _read_ref(git_dir: Path, ref: str) -> str | None:
    """The commit a ref points to, from loose refs or packed-refs (without running git)."""
    candidates = [git_dir]
    common = git_dir / "commondir"
    if common.is_file():
        candidates.append((git_dir / common.read_text().strip()).resolve())
    for base in candidates:
        loose = base / ref
        if loose.is_file():
            value = loose.read_text().strip()
            if re.fullmatch(r"[0-9a-f]{40,64}", value):
                return value
        packed = base / "packed-refs"
        if packed.is_file():
            for line in packed.read_text().splitlines():
                fields = line.split()
                if len(fields) == 2 and fields[1] == ref and re.fullmatch(r"[0-9a-f]{40,64}", fields[0]):
                    return fields[0]
    return None


def git_commit(start: str | Path | None = None) -> str | None:
    """Commit checked out in the repository containing ``start`` (default: the mcit package).

    Reads the ``.git`` files directly; returns None when there is no repository or it cannot
    be read.
    """
    try:
        here = Path(start if start is not None else __file__).resolve()
        for folder in (here, *here.parents):
            dot_git = folder / ".git"
            if dot_git.is_dir():
                git_dir = dot_git
            elif dot_git.is_file():  # worktree or submodule: "gitdir: <path>"
                text = dot_git.read_text().strip()
                if not text.startswith("gitdir:"):
                    return None
                git_dir = (folder / text[len("gitdir:"):].strip()).resolve()
            else:
                continue
            head = (git_dir / "HEAD").read_text().strip()
            if head.startswith("ref:"):
                return _read_ref(git_dir, head[len("ref:"):].strip())
            return head if re.fullmatch(r"[0-9a-f]{40,64}", head) else None
    except (OSError, UnicodeDecodeError):
        return None
    return None


def save_run_info(run_dir: str | Path, cfg: Any, extra: dict[str, Any] | None = None) -> None:
    """Write ``config.yaml`` (the resolved config) and ``environment.json`` into ``run_dir``.

    ``extra`` (e.g. ``{"device": {...}}``) is merged into environment.json's top level. Neither file
    holds a secret: URL credentials (judge.base_url's ``user:key@``, ``?api_key=``) and secret
    ``key=value`` arguments are masked (mcit.redact), and no environment variable is recorded.
    """
    from .redact import redact_argv, redact_config

    run_dir = Path(run_dir)
    cfg = redact_config(cfg)  # the saved config; the running process keeps the credentials it was given
    header = f"resolved mcit run configuration (config hash {config_hash(cfg)})"
    atomic_write_text(run_dir / CONFIG_FILE, config_to_yaml(cfg, header=header))
    environment: dict[str, Any] = {
        "time": _now(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "executable": sys.executable,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "packages": _package_versions(),
        "git_commit": git_commit(),
        "seed": getattr(cfg, "seed", None),
        "config_hash": config_hash(cfg),
        "argv": redact_argv(sys.argv),
    }
    environment.update(extra or {})
    save_json(run_dir / ENVIRONMENT_FILE, environment)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    if hasattr(obj, "tolist"):  # numpy arrays and scalars, torch tensors
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable: {obj!r}")


def save_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON (keys in their given order) atomically; return the path.

    NaN and infinities are written as the (non-standard) tokens Python's json module reads back.
    """
    text = json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False, default=_json_default)
    return atomic_write_text(path, text + "\n")


def load_json(path: str | Path) -> Any:
    """Parse the JSON file at ``path`` (FileNotFoundError if missing, RunError if malformed)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise RunError(f"{path} is not valid JSON (line {exc.lineno}): {exc.msg}") from None


def stage_dir(run_dir: str | Path, t: int, task: str) -> Path:
    """``<run_dir>/stages/<t+1:02d>-<task>`` for the 0-based stage ``t`` (not created here)."""
    if isinstance(t, bool) or not isinstance(t, int) or t < 0:
        raise ValueError(f"stage index must be a non-negative int, got {t!r}")
    return Path(run_dir) / "stages" / f"{t + 1:02d}-{_safe_component(task)}"


def mark_stage_done(stage_dir: str | Path, info: dict[str, Any]) -> Path:
    """Record that a stage finished: write ``done.json`` (``info`` plus ``done_at``) atomically.

    Call it after everything else of the stage has been written.
    """
    path = Path(stage_dir)
    path.mkdir(parents=True, exist_ok=True)
    record = dict(info)
    record.setdefault("done_at", _now())
    return save_json(path / DONE_FILE, record)


def load_stage_info(stage_dir: str | Path) -> dict[str, Any] | None:
    """The ``info`` recorded by ``mark_stage_done``, or None if the stage is not done."""
    try:
        record = load_json(Path(stage_dir) / DONE_FILE)
    except (OSError, RunError):
        return None
    return record if isinstance(record, dict) else None


def is_stage_done(stage_dir: str | Path) -> bool:
    """Whether ``mark_stage_done`` completed for this stage folder."""
    return load_stage_info(stage_dir) is not None


# ---------------------------------------------------------------------------------------
# stages: what a trained stage leaves in its folder, and how a later run reads it back


def save_stage(stage: str | Path, method: Any, model: Any, series: dict[str, list] | None = None) -> None:
    """A trained stage's weights (in the method's format: full weights or adapters), the method's
    tensor state (safetensors) and JSON state, and its per-step series (``<name>.jsonl``)."""
    from safetensors.torch import save as save_tensors  # torch: only where weights are written

    stage = Path(stage)
    method.save_model(model, stage / "model")
    state = method.state_dict()
    if state:
        atomic_write_bytes(stage / "method_state.safetensors",
                           save_tensors({k: v.contiguous().cpu() for k, v in state.items()}))
    if method.json_state():
        save_json(stage / "method_state.json", method.json_state())
    for name, records in (series or {}).items():
        save_jsonl(stage / f"{name}.jsonl", records)


def restore_stage(method: Any, model: Any, stage: str | Path) -> None:
    """A saved stage's weights and method state into a freshly set-up model (resume, `mcit emt`)."""
    from safetensors.torch import load_file

    stage = Path(stage)
    method.load_model(model, stage / "model")
    if (stage / "method_state.safetensors").is_file():
        method.load_state_dict(load_file(str(stage / "method_state.safetensors")))
    if (stage / "method_state.json").is_file():
        method.load_json_state(load_json(stage / "method_state.json"))


def completed_stages(run_dir: str | Path, names: list[str]) -> list[dict]:
    """done.json records of the stages finished in order from the first (stops at a gap)."""
    done = []
    for t, name in enumerate(names):
        info = load_stage_info(stage_dir(run_dir, t, name))
        if info is None:
            break
        done.append(info)
    return done


def save_jsonl(path: str | Path, records: list[dict]) -> None:
    """One JSON object per line, written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
