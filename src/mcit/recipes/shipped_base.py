"""The built-in model's base stage, shipped: the default settings' base model as a versioned artefact.

Building the base model is most of a fresh default run (about 11 of 22 minutes on a 2-core CPU,
issue 15), and it depends only on the model and data settings. So the base model of the
*default* settings ships inside the package (assets/tiny-llava-base: the save_pretrained folder,
about 7 MB) with a manifest naming the base-stage key it was built for, the SHA-256 of every
file, the command that rebuilds it and the machine it was built on. A run whose settings have
that key copies it into the cache (every file's digest checked) instead of building; any other
settings, or model.shipped_base=false, build as before.

`mcit base-model --out DIR --check` rebuilds it from nothing and compares the files bit for bit.
Written by hand: a content-addressed copy with a manifest is a few lines, and no library here
(the Hub cache is for downloads, which mcit never does) fits a file that ships with the code.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
from pathlib import Path

from ..io import atomic_write_text

ASSET = Path(__file__).resolve().parent.parent / "assets" / "tiny-llava-base"
MANIFEST = "manifest.json"
REBUILD = "mcit base-model --out DIR --check"  # at the manifest's thread count


def file_digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every file in ``folder`` (the manifest itself excluded), by name."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}


def read_manifest(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def write_manifest(folder: Path, key: str, threads: int) -> dict:
    """The manifest of a built base-model folder: its key, every file's digest, how and where it was built."""
    import torch

    from .. import __version__

    manifest = {
        "format": 1,
        "key": key,
        "files": file_digests(folder),
        "rebuild": REBUILD,
        "built_with": {"mcit": __version__, "torch": torch.__version__, "python": platform.python_version(),
                       "machine": platform.machine(), "cpu": _cpu_name(), "threads": threads},
    }
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return manifest


def differences(folder: Path, manifest: dict) -> list[str]:
    """The files whose digest differs from ``manifest``'s (or that one side lacks), sorted."""
    have, want = file_digests(folder), manifest.get("files", {})
    return sorted(name for name in set(have) | set(want) if have.get(name) != want.get(name))


def install_shipped(key: str, target: Path, log=print, asset: Path = ASSET) -> bool:
    """Copy the shipped base model into ``target`` if it was built for ``key``; True when done.
    A shipped file that does not match its digest (a damaged install) is reported and not used."""
    manifest = read_manifest(asset)
    if manifest is None or manifest.get("key") != key:
        return False
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(asset, tmp)
    damaged = differences(tmp, manifest)
    if damaged:
        shutil.rmtree(tmp, ignore_errors=True)
        log(f"the shipped base model in {asset} does not match its manifest ({', '.join(damaged)}): "
            "building it instead")
        return False
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    built = manifest.get("built_with", {})
    log(f"base model: the one shipped with mcit (built by `{REBUILD}` on {built.get('cpu', '?')}, "
        f"torch {built.get('torch', '?')}), copied to {target}")
    return True


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
