"""The run folder: its creation, the saved configuration and environment, JSON files and the
per-stage ``done.json`` markers that let an interrupted run be continued.

Layout::

    <output_dir>/<name>/
        config.yaml          the resolved configuration
        run.json             the same configuration as JSON and its content hash (output_dir and
                             name aside): what --resume checks config.yaml against
        environment.json     versions, platform, device, command line, git commit, time, stages
        stages/01-<task>/    one folder per training stage: model/, method_state.*, predictions/,
                             per-step series; done.json is written last (save_stage, mark_stage_done)
                             and records the sha256 of every file of the stage

The folder is created whole: config.yaml and run.json are written into a hidden sibling
(``.<name>.creating-<pid>``) that is then renamed into place, so a process killed while creating
it leaves either a resumable run folder or no run folder at all.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
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
    "verify_stage_files",
]

CONFIG_FILE = "config.yaml"
ENVIRONMENT_FILE = "environment.json"
DONE_FILE = "done.json"
RUN_FILE = "run.json"
BASE_STAGE = "00-base"  # the zero-shot evaluation's predictions
CREATING = ".{name}.creating-"  # prefix of the hidden folder a run folder is created in
PACKAGES = ("torch", "transformers", "peft", "accelerate", "tokenizers", "numpy")

# Keys that say where the run folder is, not what the run does: ignored when an existing
# folder's config.yaml is compared with the current config.
_LOCATION_KEYS = ("output_dir", "name")
# Settings that change how fast evaluation runs, never its answers (tests/test_eval_speed.py
# holds them to identical predictions): a finished run is read back, and a cut one continued,
# whichever of them it was made with.
_SPEED_ONLY_KEYS = (("eval", "kv_cache"), ("eval", "prompt_cache_mb"))


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


def _result_dict(cfg: Any) -> dict[str, Any]:
    """The settings that decide a run's results: its content without the speed-only keys and
    without the settings of methods the run does not use (a new default for EWC's lambda leaves
    a finished LoRA run the same run)."""
    from .methods.registry import unused_settings

    data = _content_dict(cfg)
    for section, key in _SPEED_ONLY_KEYS:
        data.get(section, {}).pop(key, None)
    method = data.get("method")
    if isinstance(method, dict) and isinstance(method.get("name"), str):
        for key in unused_settings(method["name"], list(method.get("with") or [])):
            method.pop(key, None)
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

    An existing folder is reused only if its config describes the same run as ``cfg``
    (``output_dir`` and ``name`` aside), or if it is empty; otherwise RunError. A new folder
    appears with its config.yaml and run.json already in it (see the module docstring).
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
    if (run_dir / CONFIG_FILE).exists():
        check_same_run(run_dir, cfg)
        return run_dir
    if run_dir.is_dir() and any(run_dir.iterdir()):
        raise RunError(f"{run_dir} exists, is not empty and is not a run folder (no {CONFIG_FILE}); "
                       "choose another run name or output_dir")
    _create_whole(run_dir, cfg)
    return run_dir


def _create_whole(run_dir: Path, cfg: Any) -> None:
    """config.yaml and run.json written into a hidden sibling folder, renamed into place last."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    prefix = CREATING.format(name=run_dir.name)
    tmp = run_dir.parent / f"{prefix}{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    atomic_write_text(tmp / CONFIG_FILE, _config_text(cfg))
    content = _content_dict(cfg)
    save_json(tmp / RUN_FILE, {"config_hash": config_hash(content), "config": content, "created": _now()})
    if run_dir.is_dir():
        run_dir.rmdir()  # an empty folder (made by hand, or by an older mcit killed at start-up)
    os.rename(tmp, run_dir)
    for leftover in run_dir.parent.glob(f"{prefix}*"):  # an earlier attempt killed half-way
        shutil.rmtree(leftover, ignore_errors=True)


def creation_leftovers(run_dir: str | Path) -> list[Path]:
    """Hidden folders left by processes killed while creating ``run_dir``."""
    run_dir = Path(run_dir)
    return sorted(run_dir.parent.glob(CREATING.format(name=run_dir.name) + "*"))


def remove_write_leftovers(run_dir: str | Path) -> list[Path]:
    """Delete the temporary files of atomic writes cut off by a killed process (``.<name>.*.tmp``,
    see mcit.io) anywhere in the run folder; returns them. Called when a run is continued."""
    leftovers = [p for p in Path(run_dir).rglob(".*.tmp") if p.is_file()]
    for path in leftovers:
        path.unlink(missing_ok=True)
    return leftovers


def _config_text(cfg: Any) -> str:
    from .redact import redact_config

    cfg = redact_config(cfg)  # URL credentials masked; the running process keeps the ones it was given
    return config_to_yaml(cfg, header=f"resolved mcit run configuration (config hash {config_hash(cfg)})")


def _json_canonical(data: Any) -> Any:
    """``data`` as it reads back from JSON (tuples become lists): comparable with run.json."""
    return json.loads(json.dumps(data, default=_json_default))


def _diff_text(old: dict, new: dict) -> str:
    diff = _differences(_json_canonical(old), _json_canonical(new))
    return "; ".join(diff[:5]) + (f"; and {len(diff) - 5} more" if len(diff) > 5 else "")


def load_run_config(run_dir: str | Path, cls: type | None = None) -> Any:
    """The config a run folder's config.yaml holds, checked against the record made when the
    folder was created (run.json; environment.json's hash for folders made before run.json):
    RunError naming the keys when config.yaml was edited since, or when it cannot be read."""
    run_dir = Path(run_dir)
    saved = run_dir / CONFIG_FILE
    try:
        cfg = load_config(saved, [], **({"cls": cls} if cls else {}))
    except ConfigError as exc:
        raise RunError(f"{saved} cannot be read ({exc})") from None
    record_path = run_dir / RUN_FILE
    if record_path.is_file():
        record = load_json(record_path)
        if (not isinstance(record, dict) or not isinstance(record.get("config"), dict)
                or config_hash(record["config"]) != record.get("config_hash")):
            raise RunError(f"{record_path} is damaged (its config does not match its config_hash)")
        content = _content_dict(cfg)
        if config_hash(content) != record["config_hash"]:
            raise RunError(f"{saved} was edited since the run started ({_diff_text(record['config'], content)}); "
                           "a run continues only with the config it started with: undo the edit, or start a "
                           "new run (another name) with the new config")
        return cfg
    environment = run_dir / ENVIRONMENT_FILE
    recorded = load_json(environment).get("config_hash") if environment.is_file() else None
    if recorded is None:
        raise RunError(f"{run_dir} has a {CONFIG_FILE} but no {RUN_FILE} (nor {ENVIRONMENT_FILE}) recording the "
                       f"config it started with, so an edit cannot be ruled out; it was not created by `mcit run` "
                       "or was damaged: start a new run")
    if config_hash(cfg) != recorded:
        raise RunError(f"{saved} was edited since the run started (its hash {config_hash(cfg)} differs from "
                       f"{recorded} recorded in {environment}); undo the edit, or start a new run")
    return cfg


def check_same_run(run_dir: Path, cfg: Any) -> None:
    """RunError unless ``run_dir`` has no config.yaml or its config describes the same run as
    ``cfg`` (``output_dir`` and ``name`` aside): a folder is only continued or reused as itself."""
    saved = Path(run_dir) / CONFIG_FILE
    if not saved.exists():
        return
    try:
        previous = load_run_config(run_dir, type(cfg))
    except RunError as exc:
        raise RunError(f"{run_dir} already holds a run whose config cannot be used ({exc}); "
                       "choose another run name") from None
    old, new = _result_dict(previous), _result_dict(cfg)
    if config_hash(old) != config_hash(new):
        raise RunError(f"{run_dir} already holds a run with a different config ({_diff_text(old, new)}); "
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
    """Write ``config.yaml`` (the resolved config) and ``environment.json`` into ``run_dir``."""
    atomic_write_text(Path(run_dir) / CONFIG_FILE, _config_text(cfg))
    save_environment(run_dir, cfg, extra)


def save_environment(run_dir: str | Path, cfg: Any, extra: dict[str, Any] | None = None) -> None:
    """Write ``environment.json``: versions, platform, git commit, seed, command line, time.

    ``extra`` (e.g. ``{"device": {...}}``) is merged into environment.json's top level. Neither file
    holds a secret: URL credentials (judge.base_url's ``user:key@``, ``?api_key=``) and secret
    ``key=value`` arguments are masked (mcit.redact), and no environment variable is recorded.
    """
    from .redact import redact_argv, redact_config

    cfg = redact_config(cfg)  # the saved config; the running process keeps the credentials it was given
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
        "threads": _threads_record(cfg),
    }
    environment.update(extra or {})
    save_json(Path(run_dir) / ENVIRONMENT_FILE, environment)


def _threads_record(cfg: Any) -> dict[str, Any] | None:
    """train.threads, the usable cores and the threads a stage starts with (recorded only once a run
    is under way, torch loaded)."""
    train = getattr(cfg, "train", None)
    if train is None or "torch" not in sys.modules:
        return None
    from .threads import describe
    return describe(train.threads) | {"compile": train.compile}


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


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hash_files(folder: str | Path, relative_to: str | Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """sha256 of every file under ``folder`` by its POSIX path relative to ``relative_to``;
    hidden names (temporary files of atomic writes) and top-level entries named in ``skip`` aside."""
    folder, base = Path(folder), Path(relative_to)
    hashes = {}
    for path in sorted(folder.rglob("*")):
        inner = path.relative_to(folder).parts
        if path.is_file() and inner[0] not in skip and not any(part.startswith(".") for part in inner):
            hashes[path.relative_to(base).as_posix()] = file_sha256(path)
    return hashes


def verify_files(base: str | Path, recorded: dict[str, str], where: str | Path, advice: str) -> None:
    """RunError naming the first file of ``recorded`` (paths relative to ``base``) that is missing
    or whose sha256 differs; ``where`` says which record lists it, ``advice`` how to go on."""
    base = Path(base)
    for relative, digest in recorded.items():
        parts = Path(relative).parts
        if Path(relative).is_absolute() or ".." in parts or not parts:  # a crafted record
            raise RunError(f"{where} lists {relative!r}, which is not a path inside {base}")
        path = base / relative
        if not path.is_file():
            raise RunError(f"{path} is missing (listed in {where}); {advice}")
        if file_sha256(path) != digest:
            raise RunError(f"{path} is damaged: it is not the file recorded in {where} "
                           f"({path.stat().st_size} bytes, sha256 differs); {advice}")


# Top-level entries of a stage folder that are not part of the completed stage: done.json itself,
# its in-task checkpoint (removed once the stage is done), and what later commands write into it
# and may rewrite (`mcit judge`: judge/, `mcit emt`: emt/).
_NOT_STAGE_FILES = (DONE_FILE, "checkpoint", "judge", "emt")


def mark_stage_done(stage_dir: str | Path, info: dict[str, Any], also: tuple[str | Path, ...] = ()) -> Path:
    """Record that a stage finished: write ``done.json`` (``info``, ``done_at`` and ``files``, the
    sha256 of every file of the stage and of the run files in ``also``, by path relative to the
    run folder) atomically. Call it after everything else of the stage has been written."""
    path = Path(stage_dir)
    path.mkdir(parents=True, exist_ok=True)
    run_dir = path.parent.parent
    record = dict(info)
    record.setdefault("done_at", _now())
    files = hash_files(path, run_dir, skip=_NOT_STAGE_FILES)
    for extra in map(Path, also):
        if extra.is_file():
            files[extra.relative_to(run_dir).as_posix()] = file_sha256(extra)
        elif extra.is_dir():
            files |= hash_files(extra, run_dir, skip=_NOT_STAGE_FILES)
    record["files"] = files
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


def read_done(stage: str | Path) -> dict[str, Any] | None:
    """A stage's done.json: None when it has none, RunError when it cannot be read."""
    path = Path(stage) / DONE_FILE
    if not path.exists():
        return None
    advice = f"delete the folder {Path(stage).name} (and any later stage folder) to redo it"
    try:
        record = load_json(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise RunError(f"{path} cannot be read ({exc}); {advice}") from None
    except RunError as exc:
        raise RunError(f"{exc}: the stage cannot be taken as complete; {advice}") from None
    if not isinstance(record, dict) or not isinstance(record.get("scores"), dict):
        raise RunError(f"{path} is damaged (not a done.json record with scores); {advice}")
    return record


def verify_stage_files(run_dir: str | Path, stage: str | Path, info: dict[str, Any]) -> None:
    """RunError naming a file of a completed stage that is missing or changed since done.json
    recorded it (done.json written before file hashes were recorded are taken as they are)."""
    files = info.get("files")
    if files is None:
        return
    if not isinstance(files, dict):
        raise RunError(f"{Path(stage) / DONE_FILE} is damaged ('files' is not a mapping)")
    verify_files(run_dir, files, Path(stage) / DONE_FILE,
                 f"restore it, or delete the folder {Path(stage).name} and every later stage folder to redo them")


def completed_stages(run_dir: str | Path, names: list[str]) -> list[dict]:
    """done.json records of the completed stages, in order from the first, each checked against
    the files it records. RunError for a stage folder that is not one of ``names`` (besides the
    base model's), a damaged done.json, or a completed stage after one that is not."""
    run_dir = Path(run_dir)
    expected = {stage_dir(run_dir, t, name).name for t, name in enumerate(names)} | {BASE_STAGE}
    found = sorted(p.name for p in (run_dir / "stages").glob("*") if p.is_dir() and not p.name.startswith("."))
    unknown = [f for f in found if f not in expected]
    if unknown:
        raise RunError(f"{run_dir / 'stages' / unknown[0]} is not a stage of this run (its stages: "
                       f"{', '.join(stage_dir(run_dir, t, n).name for t, n in enumerate(names))}); "
                       "move it out of the run folder")
    done: list[dict] = []
    for t, name in enumerate(names):
        stage = stage_dir(run_dir, t, name)
        info = read_done(stage)
        if info is not None and len(done) < t:
            missing = stage_dir(run_dir, len(done), names[len(done)])
            raise RunError(f"{stage / DONE_FILE} says stage {t + 1} is complete but stage {len(done) + 1} is not "
                           f"({missing / DONE_FILE} is missing); delete {stage.name} and the stage folders after "
                           f"{missing.name} to redo them")
        if info is not None:
            verify_stage_files(run_dir, stage, info)
            done.append(info)
    return done


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
    try:
        method.load_model(model, stage / "model")
        if (stage / "method_state.safetensors").is_file():
            method.load_state_dict(load_file(str(stage / "method_state.safetensors")))
        if (stage / "method_state.json").is_file():
            method.load_json_state(load_json(stage / "method_state.json"))
    except RunError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the loader trips on, the folder is the cause
        raise RunError(f"{stage}: the saved weights or method state do not fit this run's model and method "
                       f"'{getattr(method, 'name', type(method).__name__)}' ({error_summary(exc)})") from None


def error_summary(exc: BaseException) -> str:
    """``Type: first line of the message`` (at most 300 characters): a loader's error in one line."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


def save_jsonl(path: str | Path, records: list[dict]) -> None:
    """One JSON object per line, written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
