"""What a rescale preserves, measured on the real BERT-tiny SPLADE (docs/rescale.md).

For k = 1 (the model as shipped) and k = 16 with the output bias divided too or kept, each
model is rescaled in memory with `rescale.rescale_model` (strategy untie) and run on:

- the built-in probe (64 query/passage pairs, passages cut at 128 tokens): the active-term set
  of every passage, the order of terms within it, and how the q.d scores of all query x passage
  pairs rank;
- two human-judged word-similarity sets that ship inside the gensim wheel (its test data):
  WordSim-353 (353 pairs) and SimLex-999 (999 pairs). Each word is encoded alone as a SPLADE
  vector; agreement with the human means is the Spearman correlation of the cosine between the
  two vectors.

    python scripts/measure_rescale_preservation.py [--sets DIR]

DIR holds wordsim353.tsv and simlex999.txt; without it the pinned gensim wheel is fetched with
`pip download --no-deps` (its sha256 is checked) and the two files are read from it. Prints one
table; the numbers in docs/rescale.md are its output. Takes about a minute on one CPU core.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch
from scipy.stats import kendalltau, spearmanr

from headscope import assets, checkpoint, probe
from headscope.rescale import RescaleSpec, rescale_model
from headscope.splade.encode import splade_encode, tokenize

GENSIM = "gensim==4.3.3"
GENSIM_WHEEL = "gensim-4.3.3-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
GENSIM_SHA256 = "6237a50de4da7a037b19b2b6c430b6537243dcdedebf94afeb089e951953e601"
SETS = {"WordSim-353": "wordsim353.tsv", "SimLex-999": "simlex999.txt"}
K = 16.0


def word_sets(folder: Path | None) -> dict[str, list[tuple[str, str, float]]]:
    """name -> [(word 1, word 2, human mean)], from DIR or the pinned gensim wheel."""
    texts: dict[str, str] = {}
    if folder is not None:
        texts = {name: (folder / file).read_text(encoding="utf-8") for name, file in SETS.items()}
    else:
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", GENSIM,
                            "--only-binary=:all:", "--python-version", "3.12", "--platform",
                            "manylinux_2_17_x86_64", "-d", tmp], check=True)
            wheel = Path(tmp) / GENSIM_WHEEL
            digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
            if digest != GENSIM_SHA256:
                raise SystemExit(f"{wheel.name} has sha256 {digest}, expected {GENSIM_SHA256}")
            with zipfile.ZipFile(wheel) as z:
                texts = {name: z.read(f"gensim/test/test_data/{file}").decode("utf-8")
                         for name, file in SETS.items()}
    out = {}
    for name, text in texts.items():
        rows = [line.split("\t") for line in text.splitlines() if line and line[0] != "#"]
        out[name] = [(a.strip(), b.strip(), float(s)) for a, b, s in rows]
    return out


@torch.no_grad()
def pooled_weights(model, tokenizer, texts: list[str], max_length: int) -> np.ndarray:
    """SPLADE term weights max_t log(1 + relu(logit)), (N, V), in batches of 32."""
    out = []
    for i in range(0, len(texts), 32):
        batch = tokenize(model, tokenizer, texts[i : i + 32], max_length)
        out.append(splade_encode(model, batch).double().numpy())  # (B, V)
    return np.concatenate(out)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.maximum(na * nb, 1e-30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", type=Path, default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)

    loaded = checkpoint.load(checkpoint.resolve(str(assets.fetch("bert-tiny-splade"))))
    tok = loaded.tokenizer
    arms = {"k = 1 (as shipped)": loaded.model}
    for scale_bias in (True, False):
        model = copy.deepcopy(loaded.model)
        rescale_model(model, RescaleSpec(K, "untie", scale_bias))
        arms[f"k = {K:g}, bias {'divided' if scale_bias else 'kept'}"] = model

    pairs = probe.builtin_probe(64).pairs
    queries, passages = [p.query for p in pairs], [p.passage for p in pairs]
    words = word_sets(args.sets)

    base = None
    print(f"real BERT-tiny SPLADE, built-in probe ({len(pairs)} pairs), k = {K:g}\n")
    header = ("arm", "active/passage", "same active set", "within-passage order (min tau)",
              "pair-score Spearman vs k=1", "same top-1 passage", *words)
    print(" | ".join(header))
    for name, model in arms.items():
        q = pooled_weights(model, tok, queries, 32)  # (Q, V)
        d = pooled_weights(model, tok, passages, 128)  # (D, V)
        scores = q @ d.T  # (Q, D)
        agreement = []
        for pairs_ in words.values():
            a = pooled_weights(model, tok, [p[0] for p in pairs_], 8)
            b = pooled_weights(model, tok, [p[1] for p in pairs_], 8)
            agreement.append(spearmanr(cosine(a, b), [p[2] for p in pairs_]).statistic)
        if base is None:
            base = (d, scores)
        d0, s0 = base
        same_set = np.mean([np.array_equal(d[i] > 0, d0[i] > 0) for i in range(len(d))])
        taus = [kendalltau(d0[i][d0[i] > 0], d[i][d0[i] > 0]).statistic
                for i in range(len(d)) if np.array_equal(d[i] > 0, d0[i] > 0)]
        order = f"{min(taus):.4f}" if taus else "n/a (sets differ)"
        rank = spearmanr(s0.ravel(), scores.ravel()).statistic
        top1 = np.mean(scores.argmax(axis=1) == s0.argmax(axis=1))
        row = (name, f"{(d > 0).sum(axis=1).mean():.1f}", f"{same_set:.0%}", order,
               f"{rank:.4f}", f"{top1:.0%}", *(f"{r:.3f}" for r in agreement))
        print(" | ".join(row))


if __name__ == "__main__":
    main()
