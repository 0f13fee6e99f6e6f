"""Typed run configuration: nested dataclasses filled from YAML and ``key.sub=value`` overrides.

Every field carries a one-line ``help`` text in its metadata (the same text appears as a
comment in the YAML files under ``configs/`` and in the ``config.yaml`` saved with each run)
and optionally ``aliases``: other common spellings, used only to suggest the right key when an
unknown one is given (``learning_rate`` -> ``lr``), and a range ``check`` run at load time
(mcit.fields). The method section is built from the method registry (mcit.methods.registry).

The loading machinery is generic over any nested dataclass: field types are read from the
annotations (``int``, ``float``, ``bool``, ``str``, ``X | None``, ``list[X]``, ``dict[str, X]``,
``Literal[...]`` and nested dataclasses, which act as sections).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import json
import keyword
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping, Sequence, Union

import yaml

from .errors import ConfigError  # light module: the CLI's error handler catches it without torch
from .fields import (AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, SEED, SHARE, Each, OneOf, Range, not_empty, relative_name,
                     setting)
from .tracking import unknown_trackers
# The method section: the union of the registered methods' declared settings (mcit.methods.registry).
from .methods.registry import MethodConfig

__all__ = [
    "ConfigError",
    "DataConfig",
    "EmtConfig",
    "EvalConfig",
    "JudgeConfig",
    "LogConfig",
    "MethodConfig",
    "ModelConfig",
    "RunConfig",
    "TrainConfig",
    "config_hash",
    "check_config",
    "config_problems",
    "config_keys",
    "config_to_dict",
    "config_to_yaml",
    "load_config",
]


_field = setting  # a dataclass field with its help, aliases and optional range check (mcit.fields)

# The names an enumerated field accepts. Spelled out here because the modules that use them import
# torch (or import this module); tests/test_badinput_config.py asserts they match those modules'
# own lists (data.stream.NAMED_ORDERS, models.load.DTYPES, eval.coin_compat.MODES,
# eval.judge_protocol.BACKENDS, emt.evaluate.DECIDERS).
NAMED_ORDERS = ("coin", "reverse", "random")
DTYPES = ("float32", "bfloat16", "float16")
SCORING_MODES = ("corrected", "coin-compat")
# train.engine: how several processes share the model (mcit.distributed, DEEPSPEED_ENGINES too)
ENGINES = ("ddp", "fsdp", "deepspeed-zero2", "deepspeed-zero3")
EVAL_DTYPES = ("float32", "bfloat16")  # eval.dtype (mcit.eval.generate.DTYPES)
KV_CACHES = ("dynamic", "static")  # eval.kv_cache (mcit.eval.generate.KV_CACHES)
JUDGE_BACKENDS = ("embedding", "openai", "local", "none")
EMT_DECIDERS = ("rule", "rule-lenient", "openai", "local")


def random_order_seed(order: Any) -> int | None:
    """N of a data.order "random-N" (the seed of that permutation); None for any other value."""
    if isinstance(order, str) and order.startswith("random-") and order[len("random-"):].isdigit():
        return int(order[len("random-"):])
    return None


def named_order(value: Any) -> str | None:
    """data.order's check: a named order or random-<seed>."""
    if value in NAMED_ORDERS or random_order_seed(value) is not None:
        return None
    return f"must be one of {', '.join(NAMED_ORDERS)} or random-<seed> (e.g. random-1)"


def _section(cls: type, help: str) -> Any:
    return field(default_factory=cls, metadata={"help": help, "aliases": ()})


# --------------------------------------------------------------------------------------------
# The schema
# --------------------------------------------------------------------------------------------


@dataclass
class DataConfig:
    """Which benchmark to stream, where its files are and how much of it to use."""

    seed: int | None = _field(
        None, "seed of the generated benchmark, the random order and the built-in base model; null = the run "
        "seed (mcit compare fixes it so that seeds vary only training)", aliases=("data_seed",), check=SEED)
    benchmark: str = _field(
        "coin-mini", '"coin-mini" (built in, generated), "coin" (CoIN\'s release on disk) or a benchmark YAML '
        "file: its tasks in order, each with its scorer, evaluation file, generation budget and instruction rule "
        "(see mcit.data.benchmark; the built-in ones are in configs/benchmarks/)",
        aliases=("dataset", "bench"), check=not_empty)
    root: str | None = _field(
        None, "coin: the release folder; coin-mini: where to generate (default <cache>/coin-mini-<hash>)",
        aliases=("data_root", "data_dir", "path"))
    image_root: str | None = _field(
        None, "coin: the image root; coin-mini: <root>/images",
        aliases=("image_dir", "image_folder", "images"))
    instruction_set: str = _field(
        "Original", "which instruction templates to use: Original, Diverse or 10Type (the first of the set's "
        "known folders found under root is used: Instructions_Original, Instruction_Original, Instructions, "
        "Original; Instructions_Diverse, Instructions_Type1, ...; Instructions_10Type, Instructions_Type2, ...), "
        "or the name of a folder under root", aliases=("instructions", "instruction_type"), check=not_empty)
    eval_files: dict[str, str] = _field(
        {}, "coin: per-task evaluation file in the task's folder, overriding the official one (val.json for "
        "TextVQA, VizWiz, VQAv2; test.json for the others), e.g. {VQAv2: test.json}",
        aliases=("test_files", "eval_file"), check=Each(not_empty))
    textvqa_answers: str | None = _field(
        None, "coin: TextVQA's official answers file (10 human answers per question); null = "
        "<image_root>/TextVQA/TextVQA_0.5.1_val.json; \"record\" = each test record's single answer",
        aliases=("textvqa_annotations", "textvqa_annotation_file"))
    scienceqa_problems: str | None = _field(
        None, "coin: ScienceQA's problems.json; when given, its answers are the ground truth and `mcit data "
        "check` lists every test record that disagrees", aliases=("problems", "problems_file"))
    gqa_questions: str | None = _field(
        None, "coin: GQA's testdev_balanced_questions.json; when given, its answers are the ground truth and "
        "`mcit data check` lists every test record that disagrees", aliases=("gqa_testdev", "gqa_questions_file"))
    tasks: list[str] | None = _field(
        None, "the tasks (any subset), streamed in the named `order` (coin = as listed); null = all the benchmark's tasks",
        aliases=("task_order",), check=not_empty)
    order: str = _field(
        "coin", 'the order of data.tasks (as listed), or of all the benchmark\'s tasks when it is null: "coin" (as listed; the benchmark file\'s order: CoIN\'s for CoIN), "reverse", "random" (a permutation fixed by the data seed) or "random-N" (one fixed by the seed N, whatever the data seed: CoIN\'s task-order study)',
        aliases=("stream_order", "named_order"), check=named_order)
    train_fraction: float = _field(
        1.0, "share of each task's training records used (a seeded choice, kept in file order): CoIN's data-volume "
             "study, e.g. 0.25, 0.5, 1.0; train.epochs then sets the steps, train.steps_per_task does not scale",
        aliases=("data_fraction", "train_share"), check=Range(0, 1, low_open=True))
    train_per_task: int = _field(
        400, "coin-mini: training samples generated per task (coin: every record of the release is used)",
        aliases=("train_size", "n_train"), check=AT_LEAST_ONE)
    test_per_task: int = _field(
        60, "coin-mini: test samples generated per task (coin: every record of the release is used)", aliases=("test_size", "n_test"),
        check=AT_LEAST_ONE)
    pretrain_size: int = _field(
        4000, "captioning samples for the base-model (alignment) stage",
        aliases=("pretrain_samples", "n_pretrain"), check=NON_NEGATIVE)
    image_size: int = _field(64, "side of the square images fed to the vision tower, in pixels",
                             aliases=("resolution", "img_size"), check=AT_LEAST_ONE)
    max_image_pixels: int = _field(
        40_000_000, "largest image (width x height, in pixels) the data check and the image loader accept: 40 M takes "
        "any ordinary photo (a 7000 x 5000 camera image is 35 M) and refuses a bomb decoded again at every epoch",
        aliases=("max_pixels", "image_pixel_limit"), check=AT_LEAST_ONE)


@dataclass
class ModelConfig:
    """The multimodal model: the built-in tiny LLaVA or a local Hugging Face checkpoint."""

    name: str = _field(
        "tiny-llava",
        '"tiny-llava" (built in) or a local folder with a HF image-text-to-text checkpoint',
        aliases=("model", "path", "model_name_or_path", "checkpoint"), check=not_empty)
    hidden_size: int = _field(128, "tiny-llava: width of the language model", aliases=("d_model",), check=AT_LEAST_ONE)
    num_layers: int = _field(4, "tiny-llava: decoder layers of the language model",
                             aliases=("layers", "n_layers", "num_hidden_layers"), check=AT_LEAST_ONE)
    num_heads: int = _field(4, "tiny-llava: attention heads of the language model",
                            aliases=("heads", "n_heads", "num_attention_heads"), check=AT_LEAST_ONE)
    intermediate_size: int = _field(512, "tiny-llava: MLP width of the language model",
                                    aliases=("ffn_size", "mlp_size"), check=AT_LEAST_ONE)
    vision_hidden_size: int = _field(128, "tiny-llava: width of the vision tower", check=AT_LEAST_ONE)
    vision_layers: int = _field(2, "tiny-llava: layers of the vision tower", check=AT_LEAST_ONE)
    patch_size: int = _field(8, "tiny-llava: vision patch side, in pixels", check=AT_LEAST_ONE)
    vocab_size: int = _field(1024, "tiny-llava: tokenizer vocabulary size", check=AT_LEAST_ONE)
    vision_steps: int = _field(800, "tiny-llava: optimizer steps of the vision-encoder pretraining stage",
                               check=AT_LEAST_ONE)
    vision_images: int = _field(8000, "tiny-llava: labelled images (generated) for the vision-encoder stage",
                                check=AT_LEAST_ONE)
    vision_batch_size: int = _field(64, "tiny-llava: batch size of the vision-encoder stage", check=AT_LEAST_ONE)
    base_steps: int = _field(1300, "tiny-llava: optimizer steps of the base-model (alignment) stage",
                             check=AT_LEAST_ONE)
    base_lr: float = _field(1e-3, "tiny-llava: learning rate of the base-model stage",
                            aliases=("base_learning_rate",), check=POSITIVE)
    base_batch_size: int = _field(32, "tiny-llava: batch size of the base-model stage", check=AT_LEAST_ONE)
    shipped_base: bool = _field(
        True, "tiny-llava: use the base model shipped with mcit when these model and data settings are the ones it "
              "was built for (the defaults; `mcit base-model --out DIR --check` rebuilds it and compares bit for "
              "bit); false = always build it here")
    dtype: str = _field("float32", "parameter dtype: float32, bfloat16 or float16",
                        aliases=("torch_dtype", "precision"), check=OneOf(*DTYPES))


@dataclass
class TrainConfig:
    """Optimisation within each task of the stream."""

    steps_per_task: int | None = _field(
        300, "optimizer steps per task; null = use epochs", aliases=("max_steps", "steps"), check=AT_LEAST_ONE)
    epochs: float = _field(1.0, "passes over each task's data when steps_per_task is null",
                           aliases=("num_epochs", "num_train_epochs"), check=POSITIVE)
    task_steps: dict[str, int] = _field(
        {}, "per-task optimizer steps overriding steps_per_task, e.g. {Grounding: 600}",
        aliases=("steps_by_task", "per_task_steps"), check=Each(AT_LEAST_ONE))
    task_epochs: dict[str, float] = _field(
        {}, "per-task epochs (used when the task has no step budget), e.g. {ScienceQA: 2}",
        aliases=("epochs_by_task", "per_task_epochs"), check=Each(POSITIVE))
    batch_size: int = _field(16, "samples per forward pass over all processes (the global batch: each of N "
                                 "processes gets batch_size / N, which must divide evenly)",
                             aliases=("per_device_train_batch_size", "bs", "train_batch_size"), check=AT_LEAST_ONE)
    grad_accum: int = _field(1, "forward passes per optimizer step",
                             aliases=("gradient_accumulation_steps", "accumulation_steps"), check=AT_LEAST_ONE)
    lr: float = _field(1e-3, "peak learning rate", aliases=("learning_rate",), check=POSITIVE)
    projector_lr: float | None = _field(
        None, "learning rate of the projector; null = lr",
        aliases=("projector_learning_rate", "mm_projector_lr"), check=POSITIVE)
    weight_decay: float = _field(0.0, "AdamW weight decay", aliases=("wd",), check=NON_NEGATIVE)
    warmup_ratio: float = _field(0.03, "fraction of each task's steps spent warming up",
                                 aliases=("warmup",), check=SHARE)
    max_grad_norm: float = _field(1.0, "gradient clipping norm", aliases=("grad_clip", "clip_norm"), check=POSITIVE)
    max_length: int = _field(256, "maximum tokens per training sequence",
                             aliases=("model_max_length", "max_seq_length", "seq_len"), check=AT_LEAST_ONE)
    checkpoint_every: int = _field(
        0, "save an in-task checkpoint (<stage>/checkpoint/) every N optimizer steps, so --resume continues a "
        "stage from there; 0 = off (a cut stage is redone from its start). Writes the trainable weights and "
        "their optimizer state each time: e.g. 200 for long LoRA runs",
        aliases=("save_steps", "checkpoint_steps", "save_every"), check=NON_NEGATIVE)
    gradient_checkpointing: bool = _field(
        False, "recompute activations in the backward pass (less memory, more compute per step); for large models",
        aliases=("grad_checkpointing", "activation_checkpointing"))
    engine: str = _field(
        "ddp", '"ddp" (each process holds the whole model), "fsdp" (PyTorch FSDP2: parameters, gradients and '
        'optimizer state sharded across processes while a stage trains) or "deepspeed-zero2" / "deepspeed-zero3" '
        "(DeepSpeed ZeRO through Accelerate; CUDA GPUs and the deepspeed package); one process trains alone with "
        "ddp and fsdp",
        aliases=("distributed_engine", "sharding"), check=OneOf(*ENGINES))
    fsdp_cpu_offload: bool = _field(
        False, "fsdp: keep the sharded parameters, gradients and optimizer state in CPU memory; deepspeed-zero2|3: "
        "ZeRO-Offload of the optimizer state (zero3: the parameters too) to CPU (less GPU memory, slower steps)",
        aliases=("cpu_offload", "offload"))
    threads: int = _field(
        0, "torch threads for training; 0 = auto: the cores other processes leave free (at most OMP_NUM_THREADS "
        "if set), re-checked every few seconds (a busy neighbour otherwise stalls every thread at each op)",
        aliases=("num_threads", "torch_threads", "cpu_threads"), check=NON_NEGATIVE)
    compile: bool = _field(
        False, "torch.compile the model for training: faster steps after a one-off compile (about 30 s per "
        "stage on the default model; its time is in each stage's record); float rounding differs slightly",
        aliases=("torch_compile", "use_compile"))


@dataclass
class EvalConfig:
    """Evaluation after each stage."""

    batch_size: int = _field(64, "test questions per generation batch",
                             aliases=("eval_batch_size", "per_device_eval_batch_size"), check=AT_LEAST_ONE)
    max_new_tokens: int | None = _field(
        None, "answer length limit, in tokens; null = the benchmark's: coin-mini 20 (a box is 17), coin the "
        "official scripts' per task (1024 for ScienceQA, ImageNet, Grounding, VQAv2; 128 for the others)",
        aliases=("max_tokens",), check=AT_LEAST_ONE)
    task_max_new_tokens: dict[str, int] = _field(
        {}, "per-task answer length limits overriding max_new_tokens, e.g. {Grounding: 64}",
        aliases=("max_new_tokens_by_task", "per_task_max_new_tokens"), check=Each(AT_LEAST_ONE))
    upper_triangle: bool = _field(False, "also evaluate tasks not yet trained (forward transfer)",
                                  aliases=("forward_transfer", "full_matrix"))
    zero_shot: bool = _field(True, "evaluate the base model before stage 1", aliases=("zeroshot",))
    scoring: str = _field("corrected", '"corrected" scorers, or "coin-compat": the official CoIN scripts, defects included',
                          aliases=("scoring_mode", "scorer"), check=OneOf(*SCORING_MODES))
    dtype: str = _field(
        "float32", '"float32", or "bfloat16": generation under bf16 autocast (weights unchanged): 1.1-1.3x faster '
        "on a CPU with bf16 instructions, but it CHANGES ANSWERS (17 of the default run's 480 on the default model)",
        aliases=("eval_dtype", "eval_precision"), check=OneOf(*EVAL_DTYPES))
    kv_cache: str = _field(
        "static", '"static" (a StaticCache preallocated to prompt + max_new_tokens, written in place; models '
        "transformers does not mark compilable fall back to dynamic) or \"dynamic\" (transformers' default: "
        "concatenated at each token); the same answers, static 1.03-1.23x faster on the default model",
        aliases=("cache_implementation", "static_cache"), check=OneOf(*KV_CACHES))
    prompt_cache_mb: int = _field(
        1024, "MB of encoded test prompts (token ids, pixel values) kept in memory for the run, so each "
        "test image is read and encoded once, not after every stage; 0 = encode every time",
        aliases=("preprocess_cache_mb", "prompt_cache"), check=NON_NEGATIVE)


@dataclass
class JudgeConfig:
    """The General Knowledge view: a judge re-scores every saved prediction 0-10 at the end."""

    backend: str = _field(
        "embedding", '"embedding" (offline, bundled sentence-embedding model), "openai" (an '
        'OpenAI-compatible endpoint), "local" (a local HF causal-LM folder) or "none"',
        aliases=("kind", "judge_backend"), check=OneOf(*JUDGE_BACKENDS))
    model: str | None = _field(
        None, "openai: the model name the endpoint serves; local: the model folder; embedding: unused",
        aliases=("judge_model",), check=not_empty)
    protocol: Literal["mcit", "coin"] = _field(
        "mcit", 'openai, local: how a request is built and its reply read: "mcit" (mcit\'s own prompt, a parser '
        'refusing out-of-range values) or "coin" (CoIN\'s official requests and reply parser, rule texts read from '
        "judge.rules; also writes matrix_gk_official.*, the integer-rounded official scores)",
        aliases=("judge_protocol", "prompt_protocol"))
    rules: str | None = _field(
        None, "protocol coin: the user's copy of CoIN's rule.json, or a CoIN code checkout holding it at "
        "ETrain/Eval/LLaVA/CoIN/rule.json; its rule texts are read at run time",
        aliases=("rule", "rule_file", "rules_file"))
    system: str | None = _field(
        None, 'openai, local: system message before the prompt; null = the protocol\'s (coin: "You are a helpful '
        'assistant."; mcit: none); "" = none', aliases=("system_message", "system_prompt"))
    base_url: str = _field("http://127.0.0.1:8000/v1", "openai: endpoint base URL ({base_url}/chat/completions)",
                           aliases=("url", "endpoint", "api_base"))
    api_key_env: str = _field(
        "MCIT_JUDGE_API_KEY", "openai: environment variable holding the API key; the key itself is never "
        "written to a config or any file, and never sent over plain http to a host other than this machine",
        aliases=("api_key", "key_env"), check=not_empty)
    allow_openai_api_key_env: bool = _field(
        False, "openai: when judge.api_key_env's variable is unset, send $OPENAI_API_KEY instead (off: a key "
        "meant for another service never reaches judge.base_url)", aliases=("use_openai_api_key", "openai_key_fallback"))
    max_failed_share: float = _field(
        0.05, "largest share of judged samples whose request failed (after retries) or whose reply was unparsable "
        "for the GK view to count as valid; above it the numbers are kept but marked invalid and the command exits 2",
        aliases=("max_failures", "failure_threshold"), check=SHARE)
    timeout: float = _field(60.0, "openai: seconds per request", aliases=("request_timeout",), check=POSITIVE)
    max_retries: int = _field(4, "openai: retries after 429, 5xx or connection errors",
                              aliases=("retries",), check=NON_NEGATIVE)
    retry_backoff: float = _field(1.0, "openai: first retry delay in seconds, doubled at each retry",
                                  aliases=("backoff",), check=NON_NEGATIVE)
    concurrency: int = _field(8, "openai: requests in flight at once", aliases=("workers", "parallel"),
                              check=AT_LEAST_ONE)
    temperature: float = _field(0.7, "openai, local with protocol coin: sampling temperature (CoIN: 0.7); "
                                     "protocol mcit's local judge decodes greedily", check=NON_NEGATIVE)
    top_p: float = _field(0.8, "openai, local with protocol coin: nucleus sampling (CoIN: 0.8)",
                          check=Range(0, 1, low_open=True))
    repetition_penalty: float | None = _field(
        None, "openai (a vLLM sampling field, sent in the request body), local: repetition penalty; null = the "
        "protocol's (coin: 1.05; mcit: none)", aliases=("rep_penalty",), check=POSITIVE)
    max_tokens: int = _field(20, "openai, local: reply length limit in tokens (CoIN: 20)",
                             aliases=("reply_tokens",), check=AT_LEAST_ONE)
    batch_size: int = _field(32, "local, embedding: samples per forward pass", check=AT_LEAST_ONE)
    cache: str | None = _field(None, "judge cache file (JSON lines); null = <run folder>/judge_cache.jsonl",
                               aliases=("cache_path", "cache_file"))


@dataclass
class EmtConfig:
    """EMT tracking: the MLLM evaluated as an image classifier while it is fine-tuned."""

    every_steps: int = _field(
        0, "evaluate every N optimizer steps (and before the first step) into <run>/emt_curve.jsonl; 0 = off",
        aliases=("interval", "eval_every", "every"), check=NON_NEGATIVE)
    datasets: list[str] = _field(
        [], 'classification sets, e.g. [digits, coin-shapes, coin-colors, coin-objects] or "mnist:/data/mnist"; '
        "see mcit.emt.datasets", aliases=("sets", "emt_datasets"), check=Each(not_empty))
    limit: int = _field(100, "test images per dataset at each point", aliases=("n_test", "per_dataset"),
                        check=AT_LEAST_ONE)
    batch_size: int = _field(64, "images per generation batch", aliases=("eval_batch_size",), check=AT_LEAST_ONE)
    decider: str = _field(
        "rule", '"rule" (strict: the label alone, in frame words), "rule-lenient" (any answer naming exactly '
        'one label), or an LLM judge asked which label was given: "openai" / "local", configured by the judge '
        'section (judge.model, judge.base_url; asked at temperature 0); recorded with every point',
        aliases=("protocol",), check=OneOf(*EMT_DECIDERS))


@dataclass
class LogConfig:
    """What a run shows while it runs: progress lines in a log, per-step records, trackers."""

    every_steps: int = _field(
        100, "where there is no terminal (output to a file), a progress line every N steps of a long phase "
        "(training steps, evaluation batches, judged samples); 0 = by time only", aliases=("log_every", "log_steps"),
        check=NON_NEGATIVE)
    every_seconds: float = _field(
        60.0, "where there is no terminal, also a progress line every S seconds (whichever of the two comes "
        "first); 0 = by steps only", aliases=("log_seconds",),
        check=NON_NEGATIVE)
    report_to: list[str] = _field(
        [], "experiment trackers (through Accelerate) that get the per-step scalars, each stage's matrix row, the "
        "final metrics and the config: tensorboard, mlflow, wandb (pip install 'mcit[tensorboard]' etc.), "
        "also aim, comet_ml, clearml, dvclive, swanlab, trackio; [] = none", aliases=("trackers", "log_with"),
        check=unknown_trackers)


@dataclass
class RunConfig:
    """One continual instruction tuning run."""

    seed: int = _field(0, "seed for data order, initialisation and sampling", aliases=("random_seed",), check=SEED)
    output_dir: str = _field("runs", "folder holding the run folders", aliases=("out_dir", "output"), check=not_empty)
    name: str | None = _field(None, "run folder name; null = <timestamp>-<method>",
                              aliases=("run_name", "exp_name"), check=relative_name)
    data: DataConfig = _section(DataConfig, "the benchmark")
    model: ModelConfig = _section(ModelConfig, "the model")
    method: MethodConfig = _section(MethodConfig, "the continual-learning method")
    train: TrainConfig = _section(TrainConfig, "training within each task")
    eval: EvalConfig = _section(EvalConfig, "evaluation after each stage")
    judge: JudgeConfig = _section(JudgeConfig, "General Knowledge view: judge scores of the saved predictions")
    emt: EmtConfig = _section(EmtConfig, "EMT tracking: the model as an image classifier during fine-tuning")
    log: LogConfig = _section(LogConfig, "progress lines, per-step training records, experiment trackers")

    @property
    def data_seed(self) -> int:
        """Seed of what the run starts from: generated data, named random order, built-in base model."""
        return self.seed if self.data.seed is None else self.data.seed


# --------------------------------------------------------------------------------------------
# Type handling
# --------------------------------------------------------------------------------------------

_NoneType = type(None)


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    """Field types by YAML key (see _key)."""
    return {_key(name): tp for name, tp in typing.get_type_hints(cls).items()}


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _type_name(tp: Any) -> str:
    if tp is _NoneType:
        return "None"
    if tp is Any:
        return "any"
    if _is_union(tp):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (list, tuple, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args if a is not Ellipsis)}]"
    if _is_section(tp):
        return f"a mapping ({tp.__name__})"
    return getattr(tp, "__name__", repr(tp))


def _show(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


class _Mismatch(Exception):
    """Internal: ``value`` at ``key`` is not a ``tp``."""

    def __init__(self, key: str, tp: Any, value: Any, hint: str = ""):
        super().__init__(key)
        self.key, self.tp, self.value, self.hint = key, tp, value, hint


def _accepts_str(tp: Any) -> bool:
    if tp is str or tp is Any:
        return True
    return _is_union(tp) and any(_accepts_str(a) for a in typing.get_args(tp))


def _coerce(value: Any, tp: Any, key: str, src: "_Source") -> Any:
    """``value`` converted to the annotation ``tp``; raises ``_Mismatch`` if it cannot be."""
    if tp is Any:
        return value
    if tp is _NoneType:
        if value is None:
            return None
        raise _Mismatch(key, tp, value)
    if _is_union(tp):
        args = typing.get_args(tp)
        if value is None:
            if _NoneType in args:
                return None
            raise _Mismatch(key, tp, value)
        members = [a for a in args if a is not _NoneType]
        if len(members) == 1:  # Optional[X]: let X report the precise problem
            try:
                return _coerce(value, members[0], key, src)
            except _Mismatch as err:
                if err.key == key:
                    raise _Mismatch(key, tp, value, err.hint) from None
                raise
        for member in members:
            try:
                return _coerce(value, member, key, src)
            except _Mismatch:
                continue
        raise _Mismatch(key, tp, value)

    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise _Mismatch(key, tp, value)
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _Mismatch(key, tp, value)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise _Mismatch(key, tp, value, f"expected {len(args)} items")
            items = [_coerce(v, a, f"{key}[{i}]", src) for i, (v, a) in enumerate(zip(value, args))]
        else:
            item_tp = args[0] if args else Any
            items = [_coerce(v, item_tp, f"{key}[{i}]", src) for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise _Mismatch(key, tp, value)
        key_tp, val_tp = args if args else (Any, Any)
        return {_coerce(k, key_tp, f"{key}.<key>", src): _coerce(v, val_tp, f"{key}.{k}", src)
                for k, v in value.items()}
    if _is_section(tp):
        if not isinstance(value, Mapping):
            raise _Mismatch(key, tp, value)
        obj = tp()
        _apply_mapping(obj, value, key, src)
        return obj
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch(key, tp, value, "use true or false")
    if tp is int:
        if isinstance(value, bool):
            raise _Mismatch(key, tp, value)
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            text = value.strip()
            try:
                return int(text)
            except ValueError:
                pass
            try:
                number = float(text)
            except ValueError:
                raise _Mismatch(key, tp, value) from None
            if number.is_integer():
                return int(number)
        raise _Mismatch(key, tp, value)
    if tp is float:
        if isinstance(value, bool):
            raise _Mismatch(key, tp, value)
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                raise _Mismatch(key, tp, value) from None
        raise _Mismatch(key, tp, value)
    if tp is str:
        if isinstance(value, str):
            return value
        hint = "quote it to make it a string" if isinstance(value, (int, float, bool)) else ""
        raise _Mismatch(key, tp, value, hint)
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise _Mismatch(key, tp, value)
    raise ConfigError(f"{key}: unsupported annotation {tp!r} in the config schema")


# --------------------------------------------------------------------------------------------
# Applying mappings and overrides
# --------------------------------------------------------------------------------------------


@dataclass
class _Source:
    """Where values come from, for error messages."""

    name: str  # "cfg.yaml" or "override 'train.lr=3e-4'"
    lines: dict[tuple[str, ...], int] = field(default_factory=dict)  # YAML key path -> line

    def where(self, key: str) -> str:
        line = self.lines.get(tuple(key.split("."))) if key else None
        return f"{self.name} (line {line})" if line else self.name


def _key(name: str) -> str:
    """The YAML key of a field: its name, but a field named after a Python keyword carries a
    trailing underscore that the key drops (``method.with`` is the attribute ``with_``)."""
    return name[:-1] if name.endswith("_") and keyword.iskeyword(name[:-1]) else name


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    """The fields of ``cls`` by YAML key."""
    return {_key(f.name): f for f in dataclasses.fields(cls) if f.init}


def config_keys(cls: type = RunConfig, *, sections: bool = False) -> list[str]:
    """Every dotted key of the dataclass ``cls`` (leaves; with ``sections=True`` sections too)."""
    return [key for key, _, is_section in _walk_schema(cls) if sections or not is_section]


def _walk_schema(cls: type, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field, bool]]:
    hints = _hints(cls)
    for name, f in _fields(cls).items():
        key = prefix + name
        tp = hints[name]
        if _is_section(tp):
            yield key, f, True
            yield from _walk_schema(tp, key + ".")
        else:
            yield key, f, False


def _similarity(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a.lower(), b.lower()).ratio()


def _suggest(root_cls: type, level_cls: type, prefix: str, bad: str, rest: str) -> str | None:
    """The closest valid dotted key to ``prefix + bad (+ '.' + rest)``, or None."""
    requested = prefix + bad + ("." + rest if rest else "")
    valid = {key: (f, is_section) for key, f, is_section in _walk_schema(root_cls)}
    scored: list[tuple[float, int, str]] = []  # (score, preference, suggestion)

    # 1. a sibling at the level where the key went wrong (or one of its aliases)
    for name, f in _fields(level_cls).items():
        for spelling in (name, *f.metadata.get("aliases", ())):
            score = _similarity(bad, spelling)
            suggestion = prefix + name
            if rest and suggestion + "." + rest in valid:
                suggestion += "." + rest
            scored.append((score, 2, suggestion))
    # 2. the whole dotted key against every dotted key (and dotted alias)
    # 3. the last component against the leaf names (and aliases) of every section
    last = requested.rsplit(".", 1)[-1]
    for key, (f, _) in valid.items():
        head = key.rsplit(".", 1)[0] + "." if "." in key else ""
        for spelling in (key.rsplit(".", 1)[-1], *f.metadata.get("aliases", ())):
            scored.append((_similarity(requested, head + spelling), 1, key))
            leaf_score = _similarity(last, spelling)
            if leaf_score >= 0.8:
                scored.append((leaf_score - 0.01, 0, key))
    scored = [s for s in scored if s[0] >= 0.6 and s[2] != requested]
    if not scored:
        return None
    return max(scored)[2]


def _unknown_key(root_cls: type, level_cls: type, prefix: str, bad: str, rest: str,
                 src: _Source) -> ConfigError:
    requested = prefix + bad + ("." + rest if rest else "")
    message = f"unknown key {requested!r} in {src.name}"
    suggestion = _suggest(root_cls, level_cls, prefix, bad, rest)
    if suggestion:
        message += f"; did you mean {suggestion!r}?"
    else:
        names = ", ".join(_fields(level_cls))
        message += f"; valid keys{' under ' + repr(prefix[:-1]) if prefix else ''}: {names}"
    line = src.lines.get(tuple(requested.split(".")))
    if line:
        message += f" (line {line})"
    return ConfigError(message)


def _mismatch_error(err: _Mismatch, src: _Source) -> ConfigError:
    message = (f"invalid value for {err.key!r} in {src.where(err.key.split('[')[0])}: "
               f"expected {_type_name(err.tp)}, got {_show(err.value)}")
    if err.hint:
        message += f" ({err.hint})"
    return ConfigError(message)


def _apply_mapping(obj: Any, mapping: Mapping, prefix: str, src: _Source, root_cls: type | None = None,
                   problems: list[str] | None = None, origins: dict[str, str] | None = None) -> None:
    """Merge ``mapping`` into the dataclass instance ``obj`` (in place), section by section.
    With a ``problems`` list, a bad key is added to it and the others are still applied (so that
    every problem is reported at once); ``origins`` gets where each key set came from."""
    for raw_key, value in mapping.items():
        try:
            _apply_key(obj, raw_key, value, prefix, src, root_cls or type(obj), problems, origins)
        except ConfigError as exc:
            if problems is None:
                raise
            problems.append(str(exc))


def _apply_key(obj: Any, raw_key: Any, value: Any, prefix: str, src: _Source, root_cls: type,
               problems: list[str] | None, origins: dict[str, str] | None) -> None:
    cls = type(obj)
    dotted_prefix = prefix + "." if prefix else ""
    fields_, hints = _fields(cls), _hints(cls)
    if not isinstance(raw_key, str):
        raise ConfigError(f"key {dotted_prefix}{raw_key!r} in {src.name} is not a string")
    if raw_key not in fields_:
        raise _unknown_key(root_cls, cls, dotted_prefix, raw_key, "", src)
    key = dotted_prefix + raw_key
    tp = hints[raw_key]
    if _is_section(tp):
        if value is None:  # an empty section ("train:" with everything commented out)
            return
        if not isinstance(value, Mapping):
            raise ConfigError(f"invalid value for {key!r} in {src.where(key)}: expected "
                              f"{_type_name(tp)}, got {_show(value)}")
        _apply_mapping(getattr(obj, fields_[raw_key].name), value, key, src, root_cls, problems, origins)
        return
    try:
        setattr(obj, fields_[raw_key].name, _coerce(value, tp, key, src))
    except _Mismatch as err:
        raise _mismatch_error(err, src) from None
    if origins is not None:
        origins[key] = src.where(key)


def _apply_override(cfg: Any, text: str, origins: dict[str, str] | None = None) -> None:
    src = _Source(f"override {text!r}")
    if not isinstance(text, str) or "=" not in text:
        raise ConfigError(f"malformed override {text!r}: expected key.sub=value")
    dotted, raw = (part.strip() for part in text.split("=", 1))
    parts = dotted.split(".")
    if not dotted or any(not p for p in parts):
        raise ConfigError(f"malformed override {text!r}: empty key")

    obj, root_cls = cfg, type(cfg)
    for i, part in enumerate(parts[:-1]):
        fields_, hints = _fields(type(obj)), _hints(type(obj))
        prefix = ".".join(parts[:i]) + "." if i else ""
        if part not in fields_:
            raise _unknown_key(root_cls, type(obj), prefix, part, ".".join(parts[i + 1:]), src)
        if not _is_section(hints[part]):
            raise ConfigError(f"{prefix + part!r} in {src.name} is a value, not a section; "
                              f"cannot set {dotted!r}")
        obj = getattr(obj, fields_[part].name)

    leaf = parts[-1]
    cls = type(obj)
    prefix = ".".join(parts[:-1]) + "." if len(parts) > 1 else ""
    if leaf not in _fields(cls):
        raise _unknown_key(root_cls, cls, prefix, leaf, "", src)
    tp = _hints(cls)[leaf]

    try:
        value = yaml.safe_load(raw)
        parse_error = None
    except yaml.YAMLError as exc:
        value, parse_error = None, exc
    if parse_error is not None:
        if _accepts_str(tp):
            value = raw
        else:
            raise ConfigError(f"cannot parse the value of {src.name}: "
                              f"{str(parse_error).splitlines()[0]}") from None

    if _is_section(tp):
        _apply_mapping(obj, {leaf: value}, prefix.rstrip("."), src, root_cls, origins=origins)
        return
    try:
        coerced = _coerce(value, tp, dotted, src)
    except _Mismatch as err:
        # `run.name=001` or `model.name=true`: YAML made a number/bool of what is meant as text
        if value is not None and not isinstance(value, str) and _accepts_str(tp) \
                and not isinstance(value, (list, dict)):
            coerced = raw
        else:
            raise _mismatch_error(err, src) from None
    setattr(obj, _fields(cls)[leaf].name, coerced)
    if origins is not None:
        origins[dotted] = src.name


# --------------------------------------------------------------------------------------------
# YAML files
# --------------------------------------------------------------------------------------------


def _yaml_error(name: str, exc: yaml.YAMLError) -> ConfigError:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f"{name} (line {mark.line + 1}, column {mark.column + 1})" if mark else name
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    detail = f"{context}, {problem}" if context else problem
    return ConfigError(f"cannot parse {where}: {detail}")


def _key_lines(node: yaml.Node, name: str, path: tuple[str, ...] = (),
               out: dict[tuple[str, ...], int] | None = None) -> dict[tuple[str, ...], int]:
    """Line of every mapping key (by key path); raises on duplicate keys."""
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.value == "<<":
                continue
            key = key_node.value
            line = key_node.start_mark.line + 1
            if key in seen:
                dotted = ".".join(path + (key,))
                raise ConfigError(f"duplicate key {dotted!r} in {name} (line {line})")
            seen.add(key)
            out[path + (key,)] = line
            _key_lines(value_node, name, path + (key,), out)
    return out


def _read_yaml(path: Path) -> tuple[Any, dict[tuple[str, ...], int]]:
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {name}") from None
    except IsADirectoryError:
        raise ConfigError(f"config path is a folder, not a YAML file: {name}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {name}: {exc}") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise _yaml_error(name, exc) from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        line = node.start_mark.line + 1 if node is not None else 1
        raise ConfigError(f"{name} (line {line}): the top level must be a mapping of keys to "
                          f"values, got {type(data).__name__}")
    return data, _key_lines(node, name)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def load_config(path: str | Path | None, overrides: Sequence[str] = (),
                cls: type = RunConfig) -> Any:
    """The defaults of ``cls``, then the YAML file at ``path`` (if any), then ``overrides``.

    Overrides are ``key.sub=value`` strings whose value is parsed as YAML
    (``train.lr=3e-4``, ``data.tasks=[GQA,VizWiz]``, ``method.target_modules=null``).
    Raises one ``ConfigError`` listing every problem: an unparsable file (alone: nothing else can
    be read then), unknown keys, wrong types, values out of range and broken cross-field rules
    (see check_config), each naming its key and where it was set.
    """
    if isinstance(overrides, str):
        overrides = [overrides]
    cfg = cls()
    problems: list[str] = []
    origins: dict[str, str] = {}  # dotted key -> the file (and line) or the override that set it
    if path is not None:
        path = Path(path)
        data, lines = _read_yaml(path)
        _apply_mapping(cfg, data, "", _Source(str(path), lines), problems=problems, origins=origins)
    for text in overrides:
        try:
            _apply_override(cfg, text, origins)
        except ConfigError as exc:
            problems.append(str(exc))
    problems += config_problems(cfg, origins=origins)
    if problems:
        raise ConfigError.of(problems)
    return cfg


def check_config(cfg: Any, prefix: str = "", origins: Mapping[str, str] | None = None) -> None:
    """ConfigError listing every problem of ``cfg`` (see config_problems); nothing if none."""
    problems = config_problems(cfg, prefix, origins)
    if problems:
        raise ConfigError.of(problems)


def config_problems(cfg: Any, prefix: str = "", origins: Mapping[str, str] | None = None) -> list[str]:
    """Every problem of ``cfg``, one line each naming the key (and, from ``origins``, the file and
    line or the override that set it): each field's own check (``setting(..., check=)``), each
    section's ``check_section(prefix)`` if it has one (the method section resolves and checks the
    method combination there), then for a RunConfig the rules across fields (_run_rules)."""
    origins = origins or {}
    problems: list[str] = []
    hints = _hints(type(cfg))
    for key, f in _fields(type(cfg)).items():
        value = getattr(cfg, f.name)
        if _is_section(hints[key]):
            problems += config_problems(value, f"{prefix}{key}.", origins)
            continue
        check = f.metadata.get("check")
        problem = check(value) if check is not None and value is not None else None
        if problem:
            shown = str(value) if isinstance(value, float) and not math.isfinite(value) else _yaml_scalar(value)
            problems.append(f"{prefix}{key}: {problem}, got {shown}{_origin(origins, prefix + key)}")
    if hasattr(cfg, "check_section") and not problems:  # a combination is judged on valid settings only
        try:
            cfg.check_section(prefix)
        except ConfigError as exc:
            problems += exc.problems
    if isinstance(cfg, RunConfig):
        problems += [f"{problem}{_origin(origins, *keys)}" for keys, problem in _run_rules(cfg)]
    return problems


def _origin(origins: Mapping[str, str], *keys: str) -> str:
    """" (in cfg.yaml (line 3); override 'seed=1')": where each of ``keys`` that was set came from;
    "" if all are defaults."""
    where = list(dict.fromkeys(origins[k] for k in keys if k in origins))
    return f" (in {'; '.join(where)})" if where else ""


def _run_rules(cfg: "RunConfig") -> Iterator[tuple[tuple[str, ...], str]]:
    """The rules across fields that need neither files nor a model: (the keys involved, the problem).
    The rules that read the benchmark or the disk are mcit.preflight's."""
    mc, dc = cfg.model, cfg.data
    if mc.name == "tiny-llava":  # the built-in model's shapes (mcit.models.tiny_llava.build_model)
        for key in ("hidden_size", "vision_hidden_size"):  # both towers use model.num_heads heads
            width = getattr(mc, key)
            if width % mc.num_heads:
                yield ((f"model.{key}", "model.num_heads"),
                       f"model.{key}={width} must be a multiple of model.num_heads={mc.num_heads} (each head "
                       f"gets an equal share of the width)")
            elif key == "hidden_size" and (width // mc.num_heads) % 2:
                yield ((f"model.{key}", "model.num_heads"),
                       f"model.{key} / model.num_heads = {width // mc.num_heads} must be even (the language "
                       "model's rotary position embeddings turn pairs of dimensions)")
        if dc.pretrain_size == 0:
            yield (("data.pretrain_size",), "data.pretrain_size=0 leaves the built-in model's base stage (alignment) "
                   "no samples; 0 only suits a local checkpoint (model.name=<folder>)")
        if dc.image_size % mc.patch_size or dc.image_size < mc.patch_size:
            yield (("data.image_size", "model.patch_size"),
                   f"data.image_size={dc.image_size} must be a multiple of model.patch_size={mc.patch_size} "
                   "(the vision tower cuts each image into whole patches)")
    if dc.tasks:
        repeated = sorted({t for t in dc.tasks if dc.tasks.count(t) > 1})
        if repeated:
            yield ("data.tasks",), f"data.tasks: {', '.join(repeated)} listed more than once"
    if cfg.emt.every_steps > 0 and not cfg.emt.datasets:
        yield (("emt.every_steps", "emt.datasets"),
               f"emt.every_steps={cfg.emt.every_steps} tracks EMT, but emt.datasets is empty: name the sets to "
               "classify, e.g. [digits, coin-shapes], or set emt.every_steps=0")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A plain (deep-copied) dict of a config dataclass, nested sections as dicts, by YAML key."""
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"expected a config dataclass instance, got {type(cfg).__name__}")
    return _by_key(type(cfg), dataclasses.asdict(cfg))


def _by_key(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    hints = _hints(cls)
    return {key: _by_key(hints[key], data[f.name]) if _is_section(hints[key]) else data[f.name]
            for key, f in _fields(cls).items()}


def _canonical(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _canonical(config_to_dict(obj))
    if isinstance(obj, Mapping):
        return {str(k): _canonical(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted((_canonical(v) for v in obj), key=lambda v: json.dumps(v, sort_keys=True))
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return repr(obj)
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    if hasattr(obj, "item"):  # numpy / torch scalars
        return _canonical(obj.item())
    raise TypeError(f"cannot hash a {type(obj).__name__} in a config: {obj!r}")


def config_hash(obj: Any) -> str:
    """First 12 hex digits of the sha256 of ``obj`` (a config or JSON-like data) as canonical JSON."""
    text = json.dumps(_canonical(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def _yaml_scalar(value: Any) -> str:
    if isinstance(value, str) and any(c in value for c in "\n\r\t") or (
            isinstance(value, str) and not value.isprintable()):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid YAML scalar
    text = yaml.safe_dump(value, default_flow_style=True, width=2**31 - 1, allow_unicode=True)
    text = text.strip()
    if text.endswith("\n..."):
        text = text[: -len("\n...")]
    elif text.endswith("..."):
        text = text[:-3].rstrip()
    return text


def config_to_yaml(cfg: Any, *, comments: bool = True, header: str | None = None) -> str:
    """YAML text of ``cfg``; with ``comments`` each key carries its help text as a comment.

    ``load_config`` on the result gives back an equal config.
    """
    lines: list[str] = []
    if header:
        lines += [f"# {line}".rstrip() for line in header.splitlines()]

    def emit(obj: Any, indent: int) -> None:
        hints = _hints(type(obj))
        pad = "  " * indent
        for name, f in _fields(type(obj)).items():
            value = getattr(obj, f.name)
            help_text = f.metadata.get("help", "") if comments else ""
            if _is_section(hints[name]):
                if lines and lines[-1] != "":
                    lines.append("")
                lines.append(f"{pad}{name}:" + (f"  # {help_text}" if help_text else ""))
                emit(value, indent + 1)
                continue
            line = f"{pad}{name}: {_yaml_scalar(value)}"
            if help_text:
                line += f"  # {help_text}"
            lines.append(line)

    emit(cfg, 0)
    return "\n".join(lines) + "\n"
