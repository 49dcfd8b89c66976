"""Checkpoints written by headscope (under transformers 5) must load correctly under transformers
4.57.x, which re-ties a decoder to the input embeddings whenever config.json allows it and ties
BERT's decoder bias to cls.predictions.bias on every load (docs/rescale.md).

The parent writes fixed checkpoints with every strategy (real BERT-tiny; tiny ModernBERT built
from a config) and the logits each must produce; a child process running the `.venv-tf4`
interpreter (created by scripts/tf4-venv.sh) loads them with plain AutoModelForMaskedLM and
compares. A negative control (an untied decoder whose config still says tie) shows the check can
fail. Slow: a second interpreter importing transformers 4 takes tens of seconds.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from headscope import checkpoint
from headscope.rescale import RescaleSpec, expected_logits
from headscope.save import save_fixed
from tests.tiny_models import save_tiny

ROOT = Path(__file__).resolve().parent.parent
VENV_PYTHON = ROOT / ".venv-tf4" / "bin" / "python"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not VENV_PYTHON.exists(),
        reason=f"{VENV_PYTHON} is absent; create it with `bash scripts/tf4-venv.sh` (make tf4)",
    ),
]

TEXTS = ["What is a sparse retriever?", "The head projects hidden states onto the vocabulary."]

CHILD = r'''
import json, sys, torch, transformers
from transformers import AutoModelForMaskedLM
cases = json.loads(open(sys.argv[1]).read())
out = {"transformers": transformers.__version__}
for name, case in cases.items():
    model, info = AutoModelForMaskedLM.from_pretrained(case["dir"], output_loading_info=True)
    model.eval()
    data = torch.load(case["data"])
    with torch.no_grad():
        logits = model(input_ids=data["input_ids"],
                       attention_mask=data["attention_mask"]).logits.float()
    mask = data["attention_mask"].bool()
    err = (logits - data["expected"])[mask].abs().max().item()
    dec, emb = model.get_output_embeddings().weight, model.get_input_embeddings().weight
    out[name] = {"missing": sorted(info["missing_keys"]), "error": err,
                 "tied": dec.data_ptr() == emb.data_ptr()}
print(json.dumps(out))
'''


def _case(tmp_path: Path, name: str, loaded, spec: RescaleSpec, cases: dict) -> None:
    out = tmp_path / name
    save_fixed(loaded, spec, out, verify_texts=TEXTS)
    enc = loaded.tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = loaded.model(**enc).logits
    if spec.strategy == "tied":
        # approximate by nature: the reference is the same checkpoint under transformers 5
        from transformers import AutoModelForMaskedLM

        fixed = AutoModelForMaskedLM.from_pretrained(str(out)).eval()
        with torch.no_grad():
            want = fixed(**enc).logits.float()
    else:
        bias = loaded.model.get_output_embeddings().bias
        want = expected_logits(logits, bias, spec)
    data = tmp_path / f"{name}.pt"
    torch.save({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                "expected": want}, data)
    cases[name] = {"dir": str(out), "data": str(data), "tied": spec.strategy != "untie",
                   "scale": float(want.abs().max())}


def _run_child(tmp_path: Path, cases: dict) -> dict:
    spec_file = tmp_path / "cases.json"
    spec_file.write_text(json.dumps(cases))
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    proc = subprocess.run([str(VENV_PYTHON), str(script), str(spec_file)], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_fixed_checkpoints_load_under_transformers_4(bert_tiny_dir, tmp_path):
    cases: dict = {}
    bert = checkpoint.load(checkpoint.resolve(str(bert_tiny_dir)))
    for strategy in ("untie", "tied", "fold"):
        _case(tmp_path, f"bert-{strategy}", bert, RescaleSpec(16, strategy), cases)
    _case(tmp_path, "bert-untie-scale-bias", bert, RescaleSpec(8, "untie", True), cases)
    modern = checkpoint.load(checkpoint.resolve(str(save_tiny("modernbert",
                                                              tmp_path / "modernbert-src"))))
    for strategy in ("untie", "tied", "fold"):
        _case(tmp_path, f"modernbert-{strategy}", modern, RescaleSpec(8, strategy), cases)

    # Negative control: the untied checkpoint with config.json claiming a tie. Transformers 4
    # re-ties the decoder to the (undivided) embeddings, and the check must notice.
    control = tmp_path / "control"
    import shutil

    shutil.copytree(cases["bert-untie"]["dir"], control)
    cfg = json.loads((control / "config.json").read_text())
    cfg["tie_word_embeddings"] = True
    (control / "config.json").write_text(json.dumps(cfg))
    cases["control"] = {**cases["bert-untie"], "dir": str(control)}

    result = _run_child(tmp_path, cases)
    assert result["transformers"].startswith("4.57."), result["transformers"]
    for name, case in cases.items():
        got = result[name]
        tol = 1e-4 * max(1.0, case["scale"])
        if name == "control":
            assert got["tied"] and got["error"] > 100 * tol, got
            continue
        assert got["missing"] == [], (name, got)
        assert got["tied"] is case["tied"], (name, got)
        assert got["error"] <= tol, (name, got, tol)
