import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Tests that do not set their own cache write generated data, base models and image checks into a folder
# of this session, never into the user's ~/.cache/mcit.
os.environ.setdefault("MCIT_CACHE", tempfile.mkdtemp(prefix="mcit-test-cache-"))
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Under pytest-xdist (`make test` runs one worker per core) each worker and every process it spawns
# uses one thread: two workers with a thread per core each would stall at every op's barrier
# whenever the other worker holds a core (issue 15: a 2-thread step went from 167 to 556 ms).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"


def save_tiny_checkpoint(path, texts=("What color is the shape? red blue yes no",), image_size=32, **dims):
    """A tiny random LLaVA saved with save_pretrained, as a downloaded checkpoint would be."""
    import torch

    from mcit.config import ModelConfig
    from mcit.models.tiny_llava import build_model, build_processor, train_tokenizer

    torch.manual_seed(0)
    shape = dict(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, vision_hidden_size=32,
                 vision_layers=1, patch_size=8, vocab_size=300) | dims
    processor = build_processor(train_tokenizer(list(texts) * 10, shape["vocab_size"]), image_size, shape["patch_size"])
    build_model(ModelConfig(**shape), processor, image_size).save_pretrained(path)
    processor.save_pretrained(path)
    return path


def train_losses(model, optimizer, batch, steps):
    """The loss of each of `steps` plain training steps on one batch (forward, backward, step)."""
    losses = []
    for _ in range(steps):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses
