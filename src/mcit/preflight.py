"""The checks of a run's settings that need neither torch nor data: `mcit run` makes them right
after reading the config, before importing torch, transformers and PEFT, and mcit.train makes them
again before any work (for the Python API). Light imports only."""
from __future__ import annotations

from typing import Any

from .errors import ConfigError


def check_run_settings(cfg: Any) -> None:
    """ConfigError naming the setting that would otherwise fail late: checkpointing, scoring, the judge."""
    from .eval.coin_compat import MODES as SCORING_MODES
    from .eval.judge_backends import check_judge_config

    if cfg.train.checkpoint_every < 0:
        raise ConfigError(f"train.checkpoint_every={cfg.train.checkpoint_every} must be >= 0 (0 = off)")
    if cfg.eval.scoring not in SCORING_MODES:
        raise ConfigError(f"eval.scoring: '{cfg.eval.scoring}' is not one of {list(SCORING_MODES)}")
    check_judge_config(cfg.judge)  # a bad judge setting stops the run now, not after training
