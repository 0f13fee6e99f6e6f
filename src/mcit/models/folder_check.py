"""Model folders checked before anything loads them: every problem of a folder in one user error.

``check_model_folder(path, kind)`` reads only small files (config.json, the processor's JSON
files, the safetensors headers), so a truncated, random or incomplete checkpoint, a folder that
would run its own code, or one holding pickle weights only is refused in milliseconds, naming
the folder and the file, instead of failing with a traceback half-way through ``from_pretrained``.
Nothing here imports torch; transformers' model-type tables are imported only once config.json
is readable (the run imports them next anyway).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..config import ConfigError

MLLM = "image-text-to-text"  # model.name, mcit emt: AutoModelForImageTextToText + AutoProcessor
CAUSAL_LM = "causal-lm"  # judge.backend=local: AutoModelForCausalLM + AutoTokenizer
KINDS = (MLLM, CAUSAL_LM)
BUILT_IN = "tiny-llava"  # model.name of the built-in model, built by mcit itself

# Hugging Face's on-disk names (transformers.utils' CONFIG_NAME, SAFE_WEIGHTS_NAME, ...; a test
# keeps them equal), spelled here because importing transformers.utils alone costs about a second.
CONFIG = "config.json"
SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
IMAGE_PROCESSOR = "preprocessor_config.json"
PROCESSOR = "processor_config.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
CHAT_TEMPLATES = ("chat_template.jinja", "chat_template.json")
# A tokenizer needs one of these (fast tokenizer, sentencepiece, BPE/WordPiece vocabularies, tiktoken).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json", "vocab.txt")
TOKENIZER_SUFFIXES = (".tiktoken",)
# Weights in Python's pickle format: loading one can run arbitrary code, so mcit never does.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# JSON files whose `auto_map` makes transformers import Python code shipped in the folder.
REMOTE_CODE_FILES = (CONFIG, TOKENIZER_CONFIG, PROCESSOR, IMAGE_PROCESSOR)

_CONVERT = ("convert it in a trusted environment: load it with transformers and "
            "save_pretrained(folder, safe_serialization=True)")


class ModelFolderError(ConfigError):
    """A model folder that cannot be loaded; ``problems`` lists every reason (file: what)."""

    def __init__(self, label: str, folder: Path, problems: list[str]):
        self.label, self.folder, self.problems = label, folder, problems
        super().__init__(f"{label}: cannot use model folder {folder}: " + "; ".join(problems))


def check_model_folder(path: str | Path, kind: str = MLLM, label: str = "model.name") -> Path:
    """Raise :class:`ModelFolderError` (a user error, named after the setting ``label``) with every
    problem that would stop ``kind``'s loader on the folder ``path``; return the folder."""
    folder = Path(path).expanduser()
    problems = model_folder_problems(folder, kind)
    if problems:
        raise ModelFolderError(label, folder, problems)
    return folder


def check_run_models(cfg) -> None:
    """The folders a run would load, checked at its start: model.name (unless the built-in model)
    and a local judge's judge.model; both reported at once."""
    wanted = []
    if cfg.model.name != BUILT_IN:
        wanted.append((cfg.model.name, MLLM, "model.name"))
    if cfg.judge.backend == "local" and cfg.judge.model:
        wanted.append((cfg.judge.model, CAUSAL_LM, "judge.model"))
    errors = []
    for path, kind, label in wanted:
        try:
            check_model_folder(path, kind, label)
        except ModelFolderError as err:
            errors.append(str(err))
    if errors:
        raise ConfigError(" | ".join(errors))


def model_folder_problems(folder: Path, kind: str) -> list[str]:
    """Every problem of ``folder`` as a ``kind`` checkpoint, each naming its file; [] if none."""
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} is not one of {KINDS}")
    if not folder.exists():
        return ["not a local checkpoint folder (no such folder; mcit never downloads: give a folder "
                "written by save_pretrained)"]
    if not folder.is_dir():
        return ["not a local checkpoint folder (it is a file)"]
    if not (folder / CONFIG).is_file() and (folder / "adapter_config.json").is_file():
        return [f"a PEFT adapter (adapter_config.json, no {CONFIG}), not a checkpoint: give its base model"]
    problems: list[str] = []
    config = _config(folder, problems)
    problems += _remote_code(folder)
    problems += _weight_problems(folder)
    problems += _tokenizer_problems(folder)
    if kind == MLLM:
        problems += _image_processor_problems(folder) + _chat_template_problems(folder)
    if config is not None:
        problems += _model_type_problems(config, kind)
    return problems


# ------------------------------------------------------------------------------- JSON files


def _read_json(path: Path) -> tuple[Any, str | None]:
    """(content, None), or (None, the reason it cannot be read)."""
    try:
        return json.loads(path.read_text(encoding="utf-8")), None
    except UnicodeDecodeError:
        return None, "not UTF-8 text"
    except json.JSONDecodeError as err:
        return None, f"not valid JSON ({err.msg} at line {err.lineno} column {err.colno})"
    except OSError as err:
        return None, f"cannot be read ({err.strerror or err})"


def _json_object(path: Path, problems: list[str]) -> dict | None:
    """The JSON object in ``path`` (absent: None, no problem); an unreadable one is a problem."""
    if not path.is_file():
        return None
    content, reason = _read_json(path)
    if reason is None and not isinstance(content, dict):
        reason = f"holds a JSON {type(content).__name__}, not an object"
    if reason is not None:
        problems.append(f"{path.name}: {reason}")
        return None
    return content


def _config(folder: Path, problems: list[str]) -> dict | None:
    if not (folder / CONFIG).is_file():
        problems.append(f"{CONFIG}: missing, so this is not a Hugging Face checkpoint folder")
        return None
    return _json_object(folder / CONFIG, problems)


def _remote_code(folder: Path) -> list[str]:
    """An `auto_map` makes transformers run the folder's own Python files (trust_remote_code):
    mcit never does, whatever the file."""
    problems: list[str] = []
    for name in REMOTE_CODE_FILES:
        content = _json_object(folder / name, problems if name != CONFIG else [])  # config.json: reported once
        if content and content.get("auto_map"):
            problems.append(f"{name}: auto_map names code shipped with the checkpoint "
                            f"({_names(content['auto_map'])}); mcit never runs a checkpoint's own code "
                            "(trust_remote_code): use a model type transformers itself implements")
    return problems


def _names(auto_map: Any) -> str:
    values = auto_map.values() if isinstance(auto_map, dict) else [auto_map]
    flat = [str(v) for value in values for v in (value if isinstance(value, list) else [value]) if v]
    return ", ".join(flat[:3]) + (", ..." if len(flat) > 3 else "")


# ------------------------------------------------------------------------------------ weights


def _weight_problems(folder: Path) -> list[str]:
    """model.safetensors, else a sharded model.safetensors.index.json (transformers' own order);
    every file complete. Without either: pickle weights are refused with the fix, else none found."""
    if (folder / SAFE_WEIGHTS).is_file():
        return _safetensors_problems(folder / SAFE_WEIGHTS)[1]
    if (folder / SAFE_INDEX).is_file():
        return _sharded_problems(folder)
    pickles = sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix in PICKLE_SUFFIXES)
    if pickles:
        return [f"{', '.join(pickles[:3])}: pickle weights only; mcit reads safetensors only (loading a pickle "
                f"can run arbitrary code): {_CONVERT}"]
    return [f"no weights ({SAFE_WEIGHTS} or {SAFE_INDEX})"]


def _safetensors_problems(path: Path) -> tuple[set[str], list[str]]:
    """(tensor names, problems) of one safetensors file, from its header alone.

    safe_open parses the 8-byte length and the JSON header and checks every tensor's dtype, shape
    and byte range against the file: the ranges must tile the data exactly, so a truncated file,
    random bytes or a header claiming more bytes than the file holds are all refused. It does not
    read the tensor values (NaN or garbage inside a well-formed file pass) and does not know which
    tensors the model expects (from_pretrained reports missing keys itself)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:  # numpy: no torch import just to read a header
            return set(handle.keys()), []
    except SafetensorError as err:
        return set(), [f"{path.name}: not a complete safetensors file, truncated or damaged ({_reason(err)})"]
    except OSError as err:
        return set(), [f"{path.name}: cannot be read ({err.strerror or err})"]


def _reason(err: Exception) -> str:
    text = " ".join(str(err).split())
    return text.removeprefix("Error while deserializing header: ")


def _sharded_problems(folder: Path) -> list[str]:
    """The index is an object whose weight_map names, for each tensor, a shard file in this folder
    (never a path out of it); every shard complete and holding the tensors the index puts in it."""
    problems: list[str] = []
    index = _json_object(folder / SAFE_INDEX, problems)
    if index is None:
        return problems
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map or not all(isinstance(v, str) for v in weight_map.values()):
        return [f"{SAFE_INDEX}: weight_map must map every tensor name to a shard file name"]
    for shard in sorted(set(weight_map.values())):
        expected = {name for name, file in weight_map.items() if file == shard}
        problems += _shard_problems(folder, shard, expected)
    return problems


def _shard_problems(folder: Path, shard: str, expected: set[str]) -> list[str]:
    if Path(shard).name != shard or shard in ("", ".", ".."):
        return [f"{SAFE_INDEX}: shard {shard!r} is not a file name in the checkpoint folder"]
    if not (folder / shard).is_file():
        return [f"{shard}: missing (named by {SAFE_INDEX} for {len(expected)} tensors)"]
    present, problems = _safetensors_problems(folder / shard)
    absent = sorted(expected - present)
    if not problems and absent:
        problems.append(f"{shard}: lacks {len(absent)} tensors {SAFE_INDEX} puts there (e.g. {absent[0]})")
    return problems


# ---------------------------------------------------------------------------- processor files


def _tokenizer_problems(folder: Path) -> list[str]:
    if any((folder / name).is_file() for name in TOKENIZER_FILES):
        return []
    if any(p.suffix in TOKENIZER_SUFFIXES for p in folder.iterdir()):
        return []
    return [f"no tokenizer files ({', '.join(TOKENIZER_FILES)}): save the processor or tokenizer too "
            "(processor.save_pretrained(folder))"]


def _image_processor_problems(folder: Path) -> list[str]:
    """transformers 5 keeps the image processor inside processor_config.json; 4.x and the hub's
    older layouts in preprocessor_config.json."""
    if (folder / IMAGE_PROCESSOR).is_file():
        return []
    processor = _json_object(folder / PROCESSOR, [])  # an unreadable one is reported by _remote_code
    if processor and "image_processor" in processor:
        return []
    return [f"no image processor ({IMAGE_PROCESSOR}, or image_processor in {PROCESSOR}): save the "
            "checkpoint's processor too (processor.save_pretrained(folder))"]


def _chat_template_problems(folder: Path) -> list[str]:
    """mcit builds every prompt with the processor's chat template."""
    if any((folder / name).is_file() for name in CHAT_TEMPLATES) or (folder / "additional_chat_templates").is_dir():
        return []
    for name in (PROCESSOR, TOKENIZER_CONFIG):
        content = _json_object(folder / name, [])
        if content and content.get("chat_template"):
            return []
    return [f"no chat template ({CHAT_TEMPLATES[0]}, or chat_template in {PROCESSOR} or {TOKENIZER_CONFIG})"]


# --------------------------------------------------------------------------------- model type


def _model_type_problems(config: dict, kind: str) -> list[str]:
    """The model type must be one transformers implements and its Auto class for ``kind`` maps."""
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        return [f"{CONFIG}: no model_type, so transformers cannot tell which model this is"]
    from transformers import __version__
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)

    if model_type not in CONFIG_MAPPING_NAMES:
        return [f"{CONFIG}: model_type {model_type!r} is not a model type transformers {__version__} implements"]
    if kind == MLLM and model_type not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        return [f"{CONFIG}: model_type {model_type!r} is not an image-text-to-text model (AutoModelForImageTextToText "
                "has no class for it); a multimodal checkpoint is needed (LLaVA, Qwen2-VL, Idefics3, ...)"]
    if kind == CAUSAL_LM:
        return _causal_lm_problems(config, model_type, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    return []


def _causal_lm_problems(config: dict, model_type: str, causal: dict) -> list[str]:
    if model_type not in causal:
        return [f"{CONFIG}: model_type {model_type!r} is not a causal LM (AutoModelForCausalLM has no class for "
                "it); the local judge needs a text-generation model"]
    known = {name for value in causal.values() for name in (value if isinstance(value, (list, tuple)) else [value])}
    architectures = config.get("architectures") or []
    if isinstance(architectures, str):
        architectures = [architectures]
    if architectures and not any(str(a).endswith("ForCausalLM") or a in known for a in architectures):
        return [f"{CONFIG}: architectures {architectures} is not a causal LM (*ForCausalLM); the local judge "
                "needs a text-generation model"]
    return []
