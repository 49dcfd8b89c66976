"""A checkpoint's vocabulary read from its tokenizer files, without transformers.

tokenizer.json is read with the `tokenizers` library and a bare vocab.txt as a WordPiece
vocabulary (one token per line, as BertTokenizer reads it). Special tokens come from
tokenizer_config.json and special_tokens_map.json; those missing from the vocabulary are
appended, as transformers does. `checkpoint.read_vocabulary` uses this for those two formats and
transformers (`checkpoint.load_tokenizer`) for the others.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from headscope.errors import InputError
from headscope.fileio import read_json_object

if TYPE_CHECKING:
    import numpy as np

# Files whose presence means the folder ships a tokenizer.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "spiece.model",
    "sentencepiece.bpe.model",
    "spm.model",
    "tokenizer.model",
)


@dataclass(frozen=True)
class Vocabulary:
    """A tokenizer's vocabulary read from its files, as `vocab_info` (below) needs it.

    It answers the three questions vocab_info asks a transformers tokenizer (`len`,
    `convert_ids_to_tokens`, `all_special_ids`), without transformers.
    """

    tokens: tuple[str | None, ...]  # id -> token, over len(tokenizer) ids (None: an id without one)
    all_special_ids: tuple[int, ...]
    file: str  # what was read: "tokenizer.json", "vocab.txt", or "transformers"

    def __len__(self) -> int:
        return len(self.tokens)

    def convert_ids_to_tokens(self, ids) -> list[str | None]:
        return [self.tokens[int(i)] for i in ids]


# transformers' named special tokens, in the order it adds those missing from the vocabulary.
_SPECIAL_ATTRIBUTES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token",
                       "cls_token", "mask_token")
# BertTokenizer's defaults, which a bare vocab.txt gets (as in load_tokenizer's fallback).
_WORDPIECE_SPECIALS = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
                       "cls_token": "[CLS]", "mask_token": "[MASK]"}


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json stores it: a string or an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def _special_tokens(folder: Path, wordpiece: bool) -> dict[str, str]:
    """Special token -> the attribute naming it ("unk_token", ..., "extra"), in the order
    transformers adds those missing from the vocabulary: the named ones, then the extra ones.

    tokenizer_config.json wins over special_tokens_map.json for a named token. A BERT-style
    (WordPiece) tokenizer gets BertTokenizer's defaults for the named tokens neither file sets;
    other tokenizer classes' built-in defaults are not known here (their files name their
    specials in practice).
    """
    named: dict[str, str] = {}
    extra: list[str] = []
    for file_name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = folder / file_name
        if not path.is_file():
            continue
        data = read_json_object(path)
        if file_name == "tokenizer_config.json" and str(data.get("tokenizer_class", "")) in (
                "BertTokenizer", "BertTokenizerFast"):
            wordpiece = True
        for attr in _SPECIAL_ATTRIBUTES:
            token = _token_text(data.get(attr))
            if token is not None:
                named.setdefault(attr, token)
        for key in ("extra_special_tokens", "additional_special_tokens"):
            values = data.get(key) or []
            for value in values.values() if isinstance(values, dict) else values:
                text = _token_text(value)
                if text is not None and text not in extra:
                    extra.append(text)
    if wordpiece:
        named = {**_WORDPIECE_SPECIALS, **named}
    out: dict[str, str] = {}
    for attr in _SPECIAL_ATTRIBUTES:
        if attr in named:
            out.setdefault(named[attr], attr)
    for token in extra:
        out.setdefault(token, "extra")
    return out


def own_file(folder: Path) -> str | None:
    """The file this module reads `folder`'s vocabulary from: "tokenizer.json", or "vocab.txt"
    when it is the whole tokenizer (beside no model file of another kind); None when the folder
    has neither (transformers reads other formats)."""
    present = {f for f in TOKENIZER_FILES if (folder / f).is_file()}
    if "tokenizer.json" in present:
        return "tokenizer.json"
    if "vocab.txt" in present and present <= {"vocab.txt", "tokenizer_config.json"}:
        return "vocab.txt"
    return None


# The JSON files beside tokenizer.json whose content the tokenizer loaders read.
_JSON_FILES = ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")


def check_files(folder: Path) -> None:
    """Refuse, in a fraction of a second and before any model is built, tokenizer files the
    loaders would refuse after it: tokenizer.json is parsed by the `tokenizers` library itself
    (so it accepts exactly what that library accepts), the other JSON files must hold objects.
    InputError names the file and, for tokenizer.json, whether it is not JSON at all or JSON
    the library does not accept (with the top-level keys it does not know)."""
    for name in _JSON_FILES:
        if (folder / name).is_file():
            read_json_object(folder / name)
    path = folder / "tokenizer.json"
    if not path.is_file():
        return
    import tokenizers

    try:
        tokenizers.Tokenizer.from_file(str(path))
    except Exception as err:  # tokenizers raises plain Exceptions on malformed files
        data = read_json_object(path)  # not JSON at all: named with its line and column
        known = set(json.loads(tokenizers.Tokenizer(
            tokenizers.models.WordPiece({"[UNK]": 0}, unk_token="[UNK]")).to_str()))
        unknown = sorted(set(data) - known)
        what = (f"top-level key{'s' if len(unknown) > 1 else ''} "
                f"{', '.join(map(repr, unknown))} it does not know (it knows "
                f"{', '.join(sorted(known))})" if unknown else str(err).splitlines()[0])
        raise InputError(
            f"{path} is JSON, but the tokenizers library {tokenizers.__version__} (which loads "
            f"it for transformers too) refuses it: {what}; repair or replace the file."
        ) from err


def read_file(folder: Path, file_name: str, source: str) -> Vocabulary:
    """The vocabulary in `folder` / `file_name` ("tokenizer.json" or "vocab.txt", as
    `own_file` names it) with its special tokens; `source` names the checkpoint in errors."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordPiece

    from_json = file_name == "tokenizer.json"
    specials = _special_tokens(folder, wordpiece=not from_json)
    try:
        if from_json:
            tok = Tokenizer.from_file(str(folder / file_name))
        else:
            # As BertTokenizer's load_vocab: line i is the token of id i (a repeated token keeps
            # its last id).
            lines = (folder / file_name).read_text(encoding="utf-8").split("\n")
            if lines[-1] == "":
                lines.pop()  # the newline ending the last line starts no token
            vocab = {token: index for index, token in enumerate(lines)}
            unk = next((t for t, attr in specials.items() if attr == "unk_token"), "[UNK]")
            tok = Tokenizer(WordPiece(vocab, unk_token=unk))
    except Exception as err:  # tokenizers raises plain Exceptions on malformed files
        raise InputError(
            f"The tokenizer of {source} in {folder} cannot be read ({err}); repair or "
            "replace its tokenizer files."
        ) from err
    missing = [t for t in specials if tok.token_to_id(t) is None]
    if missing:
        tok.add_special_tokens(missing)
    n = tok.get_vocab_size(with_added_tokens=True)
    if n <= len(specials):
        raise InputError(
            f"The tokenizer of {source} in {folder} holds only special tokens; add its "
            "vocabulary files (tokenizer.json, vocab.txt, ...) to the folder or remove the "
            "tokenizer files."
        )
    special_ids = [tok.token_to_id(t) for t in specials]
    return Vocabulary(tokens=tuple(tok.id_to_token(i) for i in range(n)),
                      all_special_ids=tuple(i for i in special_ids if i is not None),
                      file=file_name)


# --------------------------------------------------------------------------------------------
# which decoder rows are real tokens

# "[unused12]" (BERT), "<unused12>" (Gemma-style), "[UNUSED_TOKEN_3]", "<|unused_3|>".
_PLACEHOLDER = re.compile(r"^[\[<]\|?unused(?:[_ -]?token)?[_ -]?\d*\|?[\]>]$", re.IGNORECASE)


def is_placeholder(token: str | None) -> bool:
    return token is None or bool(_PLACEHOLDER.match(token))


@dataclass(frozen=True)
class VocabInfo:
    n_rows: int  # decoder rows (config vocab_size)
    n_tokenizer: int | None  # len(tokenizer), None without tokenizer
    real_rows: np.ndarray  # bool (V,): rows of real tokens (id < len(tokenizer), not a
    # "[unused*]"-style placeholder)
    special_ids: tuple[int, ...]
    special_tokens: tuple[str, ...]


def vocab_info(n_rows: int, tokenizer) -> VocabInfo:
    """Which of the `n_rows` decoder rows belong to real tokens of `tokenizer` (or all, without):
    a transformers tokenizer or a `Vocabulary`."""
    import numpy as np

    if tokenizer is None:
        return VocabInfo(
            n_rows=n_rows,
            n_tokenizer=None,
            real_rows=np.ones(n_rows, dtype=bool),
            special_ids=(),
            special_tokens=(),
        )
    n_tok = len(tokenizer)
    n_ids = min(n_rows, n_tok)
    tokens = tokenizer.convert_ids_to_tokens(list(range(n_ids)))
    real = np.zeros(n_rows, dtype=bool)  # (V,) rows past the tokenizer stay False
    real[:n_ids] = [not is_placeholder(t) for t in tokens]
    special_ids = tuple(sorted({int(i) for i in tokenizer.all_special_ids if i is not None}))
    special_tokens = tuple(str(t) for t in tokenizer.convert_ids_to_tokens(list(special_ids)))
    return VocabInfo(
        n_rows=n_rows,
        n_tokenizer=n_tok,
        real_rows=real,
        special_ids=special_ids,
        special_tokens=special_tokens,
    )
