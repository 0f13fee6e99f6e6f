"""The one list of methods: each method's name, where its class is, whether it is a *base* (what
trains) or an *addition* (what it adds to training), and its settings (fields, defaults, ranges,
help). The `method:` config section, default.yaml and the README's table come from here.

Why the settings of the built-in methods are declared here and not in their own files: reading
them must not import the methods (peft and torch take seconds), and every config load reads
them. A method from outside mcit declares its settings on its class instead (`settings`, set
under `method.options`), since naming it imports it anyway.

The `method` section is one flat dataclass, MethodConfig: `name`, `with`, the union of every
registered settings field (so the old flat keys, `method.ewc_lambda=100`, keep working and
saved configs still load), and `options`. Range checks run at config load time
(mcit.config.check_config), then `MethodConfig.check_section` resolves the combination and
refuses the ones that cannot work, with the reason.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.metadata
import typing
from dataclasses import dataclass
from typing import Any, Callable, Literal

from ..fields import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, Range, finite, not_empty, setting

ENTRY_POINT_GROUP = "mcit.methods"
BASE, ADDITION = "base", "addition"
DEFAULT_BASE = "lora"  # what an addition named alone (method.name=ewc) runs on, as before composition

# How a default was chosen: a grid run with `mcit tune` on the tuning stream (the four coin-mini
# tasks the comparison does not use), best mean final accuracy; README, "How the defaults were tuned".
_TUNED = " [tuned on coin-mini: mcit tune configs/tune_small.yaml, best mean MFN over seeds 0,1,2 of {grid}; {paper}]"
_POSITIVE, _NON_NEGATIVE, _WEIGHT = POSITIVE, NON_NEGATIVE, Range(0, 1, low_open=True)


# ------------------------------------------------------------------------------------ settings


@dataclass
class LoRASettings:
    lora_r: int = setting(16, "LoRA rank", aliases=("r", "rank"), check=AT_LEAST_ONE)
    lora_alpha: int = setting(32, "LoRA scaling numerator (scale = alpha / r)", aliases=("alpha",), check=_POSITIVE)
    lora_dropout: float = setting(0.0, "dropout on the LoRA input", aliases=("dropout",),
                                  check=Range(0, 1, high_open=True))
    target_modules: list[str] | None = setting(
        None, "module names LoRA wraps; null = every linear layer of the language model",
        aliases=("targets", "lora_target_modules"), check=not_empty)


@dataclass
class ProjectorSettings:
    train_projector: bool = setting(True, "also train the vision-language projector",
                                    aliases=("tune_projector", "tune_mm_mlp_adapter"))


@dataclass
class MoESettings:
    moe_experts: int = setting(4, "moelora: LoRA experts per adapted layer, each of rank lora_r / moe_experts"
                               + _TUNED.format(grid="2, 4, 8", paper="CoIN: 8 experts of rank 16"),
                               aliases=("experts", "num_experts", "expert_num", "n_experts"), check=AT_LEAST_ONE)
    moe_top_k: int | None = setting(
        None, "moelora: experts each token uses (gates renormalised over them); null = dense, all experts",
        aliases=("top_k", "num_experts_per_tok"), check=AT_LEAST_ONE)
    moe_balance_weight: float = setting(
        0.0, "moelora: weight of the Switch load-balancing loss E * sum_e f_e * P_e (mean over layers); 0 = off",
        aliases=("balance_weight", "aux_loss_weight", "router_aux_loss_coef", "load_balance_weight"),
        check=_NON_NEGATIVE)
    moe_impl: Literal["fused", "reference"] = setting(
        "fused", 'moelora: "fused" (all experts in two matmuls) or "reference" (a loop over experts); same weights',
        aliases=("impl", "moe_implementation"))


def _check_moe(cfg) -> str | None:
    if cfg.lora_r % cfg.moe_experts:
        return (f"method.lora_r={cfg.lora_r} must be a multiple of method.moe_experts={cfg.moe_experts} "
                "(each expert has rank lora_r / moe_experts)")
    if cfg.moe_top_k is not None and cfg.moe_top_k > cfg.moe_experts:
        return f"method.moe_top_k={cfg.moe_top_k} must be null or at most method.moe_experts={cfg.moe_experts}"
    return None


@dataclass
class EMASettings:
    ema_weight: float = setting(
        0.03, "ema: weight a of the new parameters in theta* = (1 - a) theta* + a theta after each step"
        + _TUNED.format(grid="0.005, 0.01, 0.03, 0.1", paper="the usual 0.01 kept too little of each task here"),
        aliases=("ema_alpha", "ema_coef"), check=_WEIGHT)


@dataclass
class LCIABalancedSettings:
    lcia_fallback: float = setting(
        0.1, "lcia: the EMA weight used where the balanced coefficient is not in (0, 1)"
        + _TUNED.format(grid="0.01, 0.03, 0.1, 0.3", paper="the paper: 0.01"), aliases=("fallback",), check=_WEIGHT)


@dataclass
class LCIAGroupingSettings:
    lcia_grouping: bool = setting(
        True, "lcia: instruction grouping (retrain a similar group's adapter or expand with a new one, "
        "route each test sample by its instruction); false = balanced EMA only", aliases=("grouping",))
    lcia_threshold: float | None = setting(
        None, "lcia: similarity needed to join a group; null = by instruction set (0.90 Original, 0.30 Diverse/10Type)",
        aliases=("group_threshold", "similarity_threshold"), check=finite)
    lcia_similarity: Literal["tfidf", "embedding"] = setting(
        "tfidf", 'lcia: instruction similarity: "tfidf" (cosine, English stop words removed) or "embedding" '
        "(the bundled sentence-embedding model)", aliases=("similarity",))
    lcia_tfidf: Literal["pair", "union"] = setting(
        "pair", 'lcia: what each TF-IDF vectorizer is fitted on: "pair" (the two strings compared, as the official '
        'LoRASelect.py does) or "union" (both instruction sets at once; mcit before issue 16, other decisions on '
        "Diverse/10Type)", aliases=("tfidf_fit",))
    lcia_expand_ema: Literal["none", "projector"] = setting(
        "none", 'lcia: EMA on a task that starts a new group (the first task too): "none" (the official scripts, '
        '--dema False) or "projector" (the balanced EMA on the shared projector only; mcit before issue 16)',
        aliases=("expand_ema",))


@dataclass
class ReplaySettings:
    replay_size: int = setting(200, "replay: samples kept in the buffer", aliases=("buffer_size", "memory_size"),
                               check=_NON_NEGATIVE)
    replay_selection: Literal["reservoir", "balanced"] = setting(
        "balanced", 'replay: "reservoir" sampling over everything seen, or "balanced" (equal share per earlier task)',
        aliases=("buffer_selection",))
    replay_ratio: float = setting(
        0.5, "replay: buffer samples mixed in per task, as a fraction of the task's own training samples"
        + _TUNED.format(grid="0.1, 0.25, 0.5, 1", paper="with replay_size 200"),
        aliases=("mix_ratio", "replay_fraction"), check=_NON_NEGATIVE)


@dataclass
class EWCSettings:
    ewc_lambda: float = setting(1000.0, "ewc: weight of the quadratic penalty (lambda/2) sum F (theta - theta*)^2"
                                + _TUNED.format(grid="10, 100, 1000, 10000", paper="scale depends on the Fisher's"),
                                aliases=("ewc_weight",), check=_NON_NEGATIVE)
    ewc_fisher_samples: int = setting(64, "ewc: training samples of each task used to estimate the diagonal Fisher",
                                      aliases=("fisher_samples",), check=AT_LEAST_ONE)


@dataclass
class LwFSettings:
    lwf_lambda: float = setting(0.01, "lwf: weight of KL(previous stage || current) on the answer tokens"
                                + _TUNED.format(grid="0.01, 0.05, 0.1, 0.25, 1, 4", paper="at the grid's low edge "
                                                "again: less distillation was better down to LoRA's own MFN"),
                                aliases=("lwf_weight", "distill_weight"), check=_NON_NEGATIVE)
    lwf_temperature: float = setting(2.0, "lwf: softmax temperature of the distillation", aliases=("temperature",),
                                     check=_POSITIVE)


@dataclass
class OLoRASettings:
    olora_lambda: float = setting(0.05, "olora: weight of the orthogonality loss sum |A_t A_j^T| over earlier tasks j"
                                  + _TUNED.format(grid="0.01, 0.05, 0.5, 5", paper="O-LoRA: about 0.05"),
                                  aliases=("orth_weight", "lambda_orth"), check=_NON_NEGATIVE)


# ------------------------------------------------------------------------------------ the registry


@dataclass(frozen=True)
class MethodSpec:
    """What mcit knows about a method before importing it."""

    name: str
    target: str  # "module:Class"; ".module" is relative to mcit.methods
    role: str  # BASE (what trains) or ADDITION (what it adds to training)
    summary: str = ""
    settings: tuple[type, ...] = ()  # dataclasses of `setting` fields
    joint: bool = False  # one stage on all tasks at once (multitask): nothing to add to
    rewrites_weights: bool = False  # replaces the live weights at the end of a task (an EMA)
    refuses: dict[str, str] = dataclasses.field(default_factory=dict)  # other part's name -> why not together
    check: Callable[[Any], str | None] | None = None  # cross-field checks while the method is in use
    external: bool = False  # from an entry point or a dotted path: settings come from method.options

    def load(self) -> type:
        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module, __package__), attr)


_LORA = (LoRASettings, ProjectorSettings)
_NOTHING_CARRIES_OVER = ("lora-taskid trains a fresh adapter and projector copy per task and answers each task "
                         "with its own: nothing trained earlier is trained again, so {} has nothing to protect")
_LCIA_SWITCHES = ("lcia chooses the adapter a task trains only when it sees the task's samples (train_samples, "
                  "after before_task), so {} would be taken from the previous group's adapter")

# In the order of the old single list, so the method section's fields keep their order.
BUILTIN: tuple[MethodSpec, ...] = (
    MethodSpec("lora", ".lora:SequentialLoRA", BASE, "sequential LoRA on the language model's linear layers "
               "(CoIN's LoRA-FT baseline), projector trained", _LORA),
    MethodSpec("full", ".full:FullFineTune", BASE, "sequential full fine-tuning of the language model (+ projector)",
               (ProjectorSettings,)),
    MethodSpec("moelora", ".moelora:MoELoRA", BASE, "CoIN's MoELoRA: E experts of rank r/E per layer, per-token "
               "softmax router; dense, or top-k with an optional Switch load-balancing loss; a fused implementation "
               "and a reference loop, same weights", _LORA + (MoESettings,), check=_check_moe),
    MethodSpec("multitask", ".multitask:Multitask", BASE, "one LoRA trained once on the union of all tasks with the "
               "sum of their step budgets: the upper bound (`multitask.json`)", _LORA, joint=True),
    MethodSpec("lora-taskid", ".taskid_lora:TaskIdLoRA", BASE, "one LoRA (and projector copy) per task, the task id "
               "given at test time: an isolation reference that cannot forget", _LORA,
               refuses={"ewc": _NOTHING_CARRIES_OVER.format("ewc's penalty"),
                        "lwf": "lora-taskid trains each task's fresh adapter alone, so lwf's teacher would be "
                               "the base model, not the previous stage"}),
    MethodSpec("ema", ".ema:EMA", ADDITION, "EMA of the trainable weights, theta* = (1-a) theta* + a theta after "
               "each step, written back at the task's end", (EMASettings,), rewrites_weights=True),
    MethodSpec("lcia", ".lcia:LCIA", BASE, "LCIA: the balanced EMA (per-tensor coefficient from the real gradients "
               "after each step, logged to `stages/NN-task/lcia_coefficients.jsonl`) and instruction grouping "
               "(retrain a similar group's adapter or expand with a new one; each test sample routed by its own "
               "instruction)", _LORA + (LCIABalancedSettings, LCIAGroupingSettings), rewrites_weights=True,
               refuses={"ewc": _LCIA_SWITCHES.format("ewc's Fisher and anchor"),
                        "lwf": _LCIA_SWITCHES.format("lwf's teacher")}),
    MethodSpec("lcia-ema", ".lcia:BalancedEMA", BASE, "LCIA's balanced EMA alone on one LoRA, every task, no "
               "instruction grouping (`lcia` with `lcia_grouping: false`): the ablation row between a fixed EMA "
               "(`ema`) and LCIA", _LORA + (LCIABalancedSettings,), rewrites_weights=True),
    MethodSpec("replay", ".replay:Replay", ADDITION, "a buffer of earlier samples (reservoir or per-task balanced) "
               "mixed into each task; saved with every stage", (ReplaySettings,)),
    MethodSpec("ewc", ".ewc:EWC", ADDITION, "(lambda/2) sum F (theta - theta*)^2 on the trained weights, diagonal "
               "Fisher from per-sample gradients at each task's end, summed over tasks", (EWCSettings,)),
    MethodSpec("lwf", ".lwf:LwF", ADDITION, "lambda T^2 KL(previous stage ‖ current) on the answer tokens of the "
               "current task's inputs", (LwFSettings,)),
    MethodSpec("olora", ".olora:OLoRA", BASE, "a new LoRA per task, earlier ones frozen, lambda sum |A_t A_j^T| "
               "orthogonality loss, all summed at inference", _LORA + (OLoRASettings,)),
    MethodSpec("projector", ".projector:ProjectorOnly", BASE, "the projector alone, vision tower and language model "
               "frozen (EMT's lightest setting)"),
)
SPECS: dict[str, MethodSpec] = {s.name: s for s in BUILTIN}


# ------------------------------------------------------------------------------------ the config section


def _union_fields(settings: list[type]) -> list[tuple[str, Any, dataclasses.Field]]:
    """(name, type, field) of every settings field, first declaration first; a field declared twice
    must be the same declaration (a shared settings class)."""
    out: dict[str, tuple[str, Any, dataclasses.Field]] = {}
    for cls in dict.fromkeys(settings):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in out and out[f.name][2] is not f:
                raise TypeError(f"method setting {f.name!r} is declared twice ({cls.__name__})")
            out.setdefault(f.name, (f.name, hints[f.name], f))
    return list(out.values())


def _shown(value: Any) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")  # a bar inside a markdown table cell


def settings_markdown() -> str:
    """The README's tables (README, "Methods"): every registered method, then every method.* setting."""
    rows = ["| name | role | what it does |", "|---|---|---|"]
    for s in sorted(BUILTIN, key=lambda s: s.role != BASE):
        rows.append(f"| `{s.name}` | {s.role} | {_cell(s.summary)} |")
    rows += ["", "| setting | default | used by | meaning |", "|---|---|---|---|"]
    for name, _, f in _union_fields([c for s in BUILTIN for c in s.settings]):
        users = ", ".join(s.name for s in BUILTIN if any(f in dataclasses.fields(c) for c in s.settings))
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        rows.append(f"| `{name}` | `{_shown(default)}` | {users} | {_cell(f.metadata['help'])} |")
    return "\n".join(rows)


def unused_settings(name: str, with_: list[str]) -> set[str]:
    """The built-in method settings that no part of the method `name` with `with_` declares, hence
    never reads (tests/test_rundir.py checks each method file reads only what its spec
    declares): a run's results cannot depend on them. Empty when a part is not built in (its
    class may read anything). Names only: nothing is imported or resolved."""
    parts = [SPECS.get(n) for n in [name, *with_]]
    if any(p is None for p in parts):
        return set()
    if parts[0].role == ADDITION:
        parts.append(SPECS[DEFAULT_BASE])
    declared = {f.name for p in parts for c in p.settings for f in dataclasses.fields(c)}
    return {n for n, _, _ in _union_fields([c for s in BUILTIN for c in s.settings])} - declared


def _names(role: str) -> str:
    return ", ".join(s.name for s in BUILTIN if s.role == role)


def _check_section(self, prefix: str = "method.") -> None:
    resolve(self, prefix)


def _build_section() -> type:
    """MethodConfig: name, with, every registered setting, options."""
    head = [
        ("name", str, setting(
            "lora", f"what trains (a base): {_names(BASE)}; or an addition alone, on lora: {_names(ADDITION)}; or a "
            f"method from outside mcit: module:Class or an entry point of group {ENTRY_POINT_GROUP}",
            aliases=("method",))),
        ("with_", list[str], setting(
            [], f"additions to what the base trains, e.g. [replay, ewc]: {_names(ADDITION)} or module:Class / entry "
            "points; hooks run base first, then the additions in this order (one that rewrites the weights, ema, "
            "right after the base)", aliases=("additions", "plus", "add"))),
    ]
    tail = [("options", dict[str, Any], setting(
        {}, "settings of methods from outside mcit (their `settings` dataclass), e.g. {alpha: 0.5}; checked when the "
        "config is loaded, defaults filled in", aliases=("plugin_options", "extra")))]
    fields = head + _union_fields([c for s in BUILTIN for c in s.settings]) + tail
    cls = dataclasses.make_dataclass(
        "MethodConfig", fields,
        namespace={"__doc__": "The continual-learning method (what trains and what it adds) and its settings.",
                   "check_section": _check_section})
    cls.__module__ = __name__  # found by pickle and copy as mcit.methods.registry.MethodConfig
    return cls


MethodConfig = _build_section()


# ------------------------------------------------------------------------------------ resolving names


def _error(message: str) -> Exception:
    from ..config import ConfigError  # here, not at import: mcit.config imports this module

    return ConfigError(message)


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def find_spec(name: str, key: str = "method.name") -> MethodSpec:
    """The spec of a built-in name, an entry point (group mcit.methods) or a dotted path
    (``my_pkg.my_module:MyMethod``); ConfigError naming `key` otherwise."""
    if name in SPECS:
        return SPECS[name]
    points = _entry_points()
    if name in points:
        return spec_of_class(name, points[name].load(), key)
    if ":" in name or "." in name:
        module, _, attr = name.partition(":") if ":" in name else name.rpartition(".")
        try:
            loaded = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            raise _error(f"{key}: cannot import {module!r} for {name!r} ({exc})") from None
        if not hasattr(loaded, attr):
            raise _error(f"{key}: module {module!r} has no {attr!r}")
        return spec_of_class(name, getattr(loaded, attr), key)
    role = ADDITION if key.endswith("with") else None
    known = [s.name for s in BUILTIN if role in (None, s.role)] + sorted(points)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise _error(f"unknown {key} '{name}'; {hint}choose one of {', '.join(known)}, or give module:Class of a "
                 "method from outside mcit")


def spec_of_class(name: str, cls: Any, key: str) -> MethodSpec:
    """The spec of a method class from outside mcit, read off its class attributes."""
    from .base import Addition, Method

    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise _error(f"{key}: {name!r} is not a subclass of mcit.methods.Method")
    settings = getattr(cls, "settings", None)
    return MethodSpec(
        name=name, target=f"{cls.__module__}:{cls.__qualname__}", role=ADDITION if issubclass(cls, Addition) else BASE,
        summary=(cls.__doc__ or "").strip().split("\n")[0], settings=(settings,) if settings else (),
        joint=not issubclass(cls, Addition) and bool(cls.joint), rewrites_weights=bool(cls.rewrites_weights),
        refuses=dict(getattr(cls, "refuses", {})), check=getattr(cls, "check_config", None), external=True)


@dataclass
class Plan:
    """A resolved method: the base, its additions innermost first, and whether the additions keep
    the state layout of the days when a method ran alone (method.name=ewc, no `with`)."""

    base: MethodSpec
    additions: list[MethodSpec]
    legacy_state: bool


def resolve(cfg, prefix: str = "method.") -> Plan:
    """The method section's base and additions, every combination rule checked (ConfigError with
    the reason); fills `cfg.options` with the declared defaults of methods from outside mcit."""
    named = find_spec(cfg.name, f"{prefix}name")
    listed = [find_spec(n, f"{prefix}with") for n in cfg.with_]
    for spec in listed:
        if spec.role == BASE:
            raise _error(f"{prefix}with: {spec.name!r} is a base method (what trains), not an addition; "
                         f"set {prefix}name={spec.name}")
    base, additions = (SPECS[DEFAULT_BASE], [named] + listed) if named.role == ADDITION else (named, listed)
    names = [s.name for s in additions]
    for n in names:
        if names.count(n) > 1:
            where = f"it is already {prefix}name" if n == named.name else "it is listed twice"
            raise _error(f"{prefix}with: {n!r} would be added twice ({where})")
    if base.joint and additions:
        raise _error(f"{prefix}with: {base.name} trains one joint stage on all tasks at once; there is no earlier "
                     f"task for {', '.join(names)} to act on")
    rewriters = [s.name for s in [base, *additions] if s.rewrites_weights]
    if len(rewriters) > 1:
        raise _error(f"{prefix}with: {' and '.join(rewriters)} both average the weights and write them back at the "
                     "end of a task; only one can decide a stage's weights")
    parts = [base, *additions]
    for a in parts:
        for b in parts:
            if b.name in a.refuses:
                raise _error(f"{prefix}with: {a.name} and {b.name} cannot be combined: {a.refuses[b.name]}")
    for spec in parts:
        problem = spec.check(cfg) if spec.check else None
        if problem:
            raise _error(problem)
    _fill_options(cfg, [c for s in parts if s.external for c in s.settings], prefix)
    # The one that rewrites the weights runs right after the base, so the others' after_task
    # (EWC's anchor, replay's buffer) sees the weights the stage saves.
    ordered = sorted(additions, key=lambda s: not s.rewrites_weights)
    return Plan(base, ordered, legacy_state=named.role == ADDITION and not listed)


def _fill_options(cfg, settings: list[type], prefix: str) -> None:
    """method.options read into the declared settings of the methods from outside mcit (unknown
    keys suggested, types and ranges checked), then written back with every default filled in."""
    from ..config import _apply_mapping, _Source, check_config

    key = f"{prefix}options"
    if not settings:
        if cfg.options:
            raise _error(f"{key}: no method in use declares options (the built-in methods' settings are "
                         f"{prefix}<field> keys, e.g. {prefix}ewc_lambda)")
        return
    try:
        merged = dataclasses.make_dataclass("Options", _union_fields(settings))
    except TypeError as exc:  # two methods from outside mcit declare one option differently
        raise _error(f"{key}: {exc}") from None
    values = merged()
    _apply_mapping(values, cfg.options, key, _Source("the method options"))
    check_config(values, key + ".")
    cfg.options = dataclasses.asdict(values)


def options_of(cls: type, cfg) -> Any:
    """The `settings` dataclass of a method from outside mcit, filled from method.options."""
    names = {f.name for f in dataclasses.fields(cls.settings)}
    return cls.settings(**{k: v for k, v in cfg.options.items() if k in names})
