"""The checks of a run's settings that need neither torch nor data: `mcit run` makes them right
after reading the config, before importing torch, transformers and PEFT, and mcit.train makes them
again before any work (for the Python API). Light imports only."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import ConfigError


def check_run_settings(cfg: Any) -> None:
    """ConfigError naming the setting that would otherwise fail late: checkpointing, scoring, the judge."""
    from .eval.coin_compat import MODES as SCORING_MODES
    from .eval.judge_backends import check_judge_config

    output_folder(cfg.output_dir, "output_dir")
    if cfg.train.checkpoint_every < 0:
        raise ConfigError(f"train.checkpoint_every={cfg.train.checkpoint_every} must be >= 0 (0 = off)")
    if cfg.eval.scoring not in SCORING_MODES:
        raise ConfigError(f"eval.scoring: '{cfg.eval.scoring}' is not one of {list(SCORING_MODES)}")
    check_judge_config(cfg.judge)  # a bad judge setting stops the run now, not after training


def output_folder(path: str | Path, what: str) -> Path:
    """``path`` as a folder to write into (it need not exist yet); ConfigError naming ``what`` when a
    file is in the way (the folder itself or one of its parents), found now rather than at the first write."""
    folder = Path(path)
    blocked = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
    if blocked is not None:
        raise ConfigError(f"{what}: {path}: {blocked} exists and is not a folder")
    return folder
