"""The files that make a masked-LM folder a sentence-transformers SparseEncoder folder.

`fix --sparse-encoder` writes them beside the fixed masked LM, so that `SparseEncoder(out)`
loads it as the SPLADE encoder (the masked LM with SpladePooling("max")). They are laid out by
the installed sentence-transformers itself: a SparseEncoder built on the source folder is saved
into a temporary folder, and every file it writes that the masked LM does not already have
(modules.json, config_sentence_transformers.json, sentence_bert_config.json, the pooling's
folder) is taken, bytes as written. A source that is a sentence-transformers folder already
keeps its own layout (`fix` writes it back, see `st_folder`): for a SparseEncoder folder the
flag adds nothing, and another kind of folder is refused.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from headscope.errors import InputError
from headscope.fileio import read_json_object
from headscope.st_folder import ST_CONFIG

# Files of the masked LM itself, which `fix` writes (weights, config, tokenizer, card).
_MLM_FILES = ("config.json", "README.md", "model.safetensors", "model.safetensors.index.json")


def check_sparse_encoder_source(ckpt) -> None:
    """Refuse what --sparse-encoder cannot do, before any work. A SparseEncoder folder needs
    nothing (fix keeps its layout); another sentence-transformers folder would conflict."""
    if ckpt.module is not None:
        config = ckpt.root / ST_CONFIG
        kind = read_json_object(config).get("model_type") if config.is_file() else None
        if kind not in (None, "SparseEncoder"):
            raise InputError(
                f"{ckpt.root} is a sentence-transformers {kind} folder, whose layout fix keeps; "
                "--sparse-encoder cannot make it a SparseEncoder: drop --sparse-encoder, or "
                f"pass the masked LM's folder {ckpt.path} to wrap it in a new one.")
        return
    try:
        import sentence_transformers.sparse_encoder  # noqa: F401
    except ImportError as err:
        raise InputError("--sparse-encoder needs sentence-transformers (pip install "
                         "'sentence-transformers>=5'); install it or drop the flag.") from err


def sparse_encoder_files(folder: Path) -> dict[str, bytes]:
    """relative path -> bytes of the SparseEncoder files for the masked LM in `folder`."""
    from sentence_transformers.sparse_encoder import SparseEncoder
    from sentence_transformers.sparse_encoder.modules import SpladePooling

    try:
        from sentence_transformers.base.modules import Transformer

        mlm = Transformer(str(folder), transformer_task="fill-mask")
    except (ImportError, TypeError):  # sentence-transformers 5.x
        from sentence_transformers.sparse_encoder.modules import MLMTransformer

        mlm = MLMTransformer(str(folder))
    encoder = SparseEncoder(modules=[mlm, SpladePooling("max")], device="cpu")
    own = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    with tempfile.TemporaryDirectory(prefix="headscope-st-") as tmp:
        encoder.save(tmp, create_model_card=False)
        root = Path(tmp)
        return {rel: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
                and (rel := p.relative_to(root).as_posix()) not in own
                and rel not in _MLM_FILES and not rel.endswith((".safetensors", ".bin"))}
