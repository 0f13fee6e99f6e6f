"""EMT building blocks: evaluate an MLLM as an image classifier against its own vision encoder.

* :mod:`mcit.emt.datasets` (+ :mod:`mcit.emt.readers`): classification sets, built in (digits,
  coin-mini drawings) or read from disk (image folder, MNIST idx, CIFAR binary), split by seed.
* :mod:`mcit.emt.decide`: the question listing the label set, and the rule-based decider that
  puts each answer in correct / wrong label / hallucinated; :mod:`mcit.emt.judge_decider` does
  the same with an LLM judge (OpenAI-compatible endpoint or local causal LM).
* :mod:`mcit.emt.probe`: the encoder baseline, pooled vision-tower features with a linear probe,
  and zero-shot class-name matching when the encoder has a text tower.
* :mod:`mcit.emt.evaluate`: a live model asked on a set (batched generation, decided answers) and
  the encoder baseline; :mod:`mcit.emt.command` is ``mcit emt`` (a checkpoint or a run's stage);
  :mod:`mcit.emt.curve` tracks EMT accuracy during a run (``emt.every_steps``).

Torch and scikit-learn are only imported by the functions that need them. The decider
function is not re-exported here, so ``mcit.emt.decide`` stays the module; use
``from mcit.emt.decide import decide``.
"""
from .datasets import ClassificationSet, DatasetSpec, load_dataset, parse_spec
from .decide import Decision, LabelMatcher, build_prompt, summarize

__all__ = [
    "ClassificationSet",
    "DatasetSpec",
    "Decision",
    "LabelMatcher",
    "build_prompt",
    "load_dataset",
    "parse_spec",
    "summarize",
]
