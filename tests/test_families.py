"""Every family of transformers' masked-LM table, weights-only and fully loaded.

Each model type of `AutoModelForMaskedLM`'s table is built tiny from its own config
(tests/tiny_models.py `save_any`), saved, and measured twice: `inspect --weights-only` (the head
read from the files; families outside headscope's layout table are named by a model built on the
meta device) and the full load (`checkpoint.load` + `heads.find_head`). Both must report the same
head statistics, tie and family, or refuse with the same message. A representative subset runs
in the default suite; the sweep over every family is slow-marked.
"""

from __future__ import annotations

import numpy as np
import pytest
import tiny_models

from headscope import api, heads, vocabulary
from headscope import checkpoint as ck
from headscope.api.inspecting import head_weight_stats
from headscope.errors import NoMLMHeadError

FAMILIES = tiny_models.masked_lm_families()
KNOWN = {t for layout in heads.LAYOUTS for t in layout.model_types}

# Families whose head headscope cannot measure, with the reason both paths give (docs/cli.md).
REFUSED = {
    "perceiver": "PerceiverForMaskedLM has no output embeddings (get_output_embeddings() "
                 "returned None); its logits do not come from one vocabulary projection that "
                 "headscope can measure and divide",
}
# transformers changes these stored tensors when it loads them: role -> rows it rewrites.
# Funnel zeroes the padding row of its word embeddings (the tied decoder) on every load.
REWRITTEN_ON_LOAD = {"funnel": ("decoder_weight", [0])}

# The default suite's subset: two families of the table, and families outside it whose heads
# differ in kind (a BART decoder tied to a shared embedding with a bias buffer, ESM's separate
# bias, Funnel's rewritten row, UltraVBert's head renamed on loading, Perceiver's refusal).
FAST = {"bert", "modernbert", "bart", "esm", "funnel", "ultravbert", "perceiver"}


@pytest.fixture(scope="module")
def family_dir(tmp_path_factory):
    made = {}

    def make(model_type: str):
        if model_type not in made:
            made[model_type] = tiny_models.save_any(
                model_type, tmp_path_factory.mktemp(f"any-{model_type}"))
        return made[model_type]

    return make


def _full_load(folder):
    loaded = ck.load(ck.resolve(str(folder)))
    head = heads.find_head(loaded)
    vocab = vocabulary.vocab_info(head.decoder_weight.shape[0], loaded.tokenizer)
    return head, head_weight_stats(head, vocab)


@pytest.mark.parametrize("model_type", [
    pytest.param(t, marks=() if t in FAST else pytest.mark.slow) for t in FAMILIES])
def test_weights_only_reports_the_head_the_full_load_finds(family_dir, model_type, monkeypatch):
    folder = family_dir(model_type)
    if model_type in REFUSED:
        with pytest.raises(NoMLMHeadError) as files:
            api.inspect(str(folder), options=api.InspectOptions(weights_only=True))
        with pytest.raises(NoMLMHeadError) as live:
            _full_load(folder)
        want = f"{folder} has no trained MLM head: {REFUSED[model_type]}."
        assert str(files.value) == str(live.value) == want
        return

    # Weights-only reads the head's tensors and nothing else.
    read: list[str] = []
    real_read_arrays = ck.read_arrays

    def recording(ckpt, names, infos=None):
        names = list(names)
        read.extend(names)
        return real_read_arrays(ckpt, names, infos)

    monkeypatch.setattr(ck, "read_arrays", recording)
    report = api.inspect(str(folder), options=api.InspectOptions(weights_only=True))
    monkeypatch.undo()
    stored = heads.read_head(ck.resolve(str(folder)))
    assert sorted(read) == sorted(set(stored.names.values()))

    head, full = _full_load(folder)
    assert report.model.tied == head.tied
    assert report.model.family == head.layout.family
    found_by = "layout" if model_type in KNOWN else "meta-model"
    assert report.model.head_found_by == found_by
    assert heads.found_by(head.layout, weights_only=False) == (
        "layout" if model_type in KNOWN else "output-embeddings")
    if model_type in REWRITTEN_ON_LOAD:
        role, rows = REWRITTEN_ON_LOAD[model_type]
        live = getattr(head, role).detach().numpy()
        differs = np.flatnonzero(np.abs(stored.arrays[role] - live).max(axis=1))
        assert differs.tolist() == rows  # only those rows; the rest read exactly as loaded
        return
    assert report.weights == full
    for role, array in stored.arrays.items():
        live = {"decoder_weight": head.decoder_weight, "bias": head.bias,
                "dense_weight": head.dense_weight, "norm_weight": head.norm_weight,
                "norm_bias": head.norm_bias}.get(role)
        if live is not None:
            assert np.array_equal(array, live.detach().numpy()), role


def test_every_family_of_the_table_is_covered():
    """The sweep above covers the installed transformers' whole table; the families the docs list
    as refused are exactly REFUSED."""
    assert len(FAMILIES) >= 49 and KNOWN <= set(FAMILIES)
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = text.split("### Model families", 1)[1].split("\n## ", 1)[0]
    refused = section.split("Refused, with the reason:", 1)[1].split("One family", 1)[0]
    listed = {line.split("`")[1] for line in refused.splitlines() if line.startswith("- `")}
    assert listed == set(REFUSED)
    for model_type in REWRITTEN_ON_LOAD:
        assert f"`{model_type}`" in section.split("One family reads differently", 1)[1]
    assert f"; {len(FAMILIES)} in transformers" in section


def test_meta_model_names_a_head_without_reading_other_tensors(family_dir):
    """ESM keeps its output bias beside a bias-free decoder (`lm_head.bias`, added to
    `decoder(x)`): the generic finder takes it for the head's bias, on the full load and so on
    the weights-only path; the decoder is the tied embeddings."""
    import numpy as np
    from safetensors.numpy import load_file

    folder = family_dir("esm")
    stored = heads.read_head(ck.resolve(str(folder)))
    assert stored.found_by == "meta-model" and stored.tied
    assert stored.names == {"decoder_weight": "esm.embeddings.word_embeddings.weight",
                            "embeddings": "esm.embeddings.word_embeddings.weight",
                            "bias": "lm_head.bias"}
    assert stored.decoder_weight is stored.arrays["embeddings"]
    np.testing.assert_array_equal(stored.arrays["bias"],
                                  load_file(str(folder / "model.safetensors"))["lm_head.bias"])


def test_a_bias_beside_the_decoder_is_the_heads_bias_on_the_full_load(family_dir):
    """The full load finds ESM's `lm_head.bias`, and the logits are decoder(x) + that bias: the
    head's bias is the one the logits carry (checked against the model's own forward)."""
    import torch

    loaded = ck.load(ck.resolve(str(family_dir("esm"))))
    head = heads.find_head(loaded)
    model = loaded.model
    assert head.names["bias"] == "lm_head.bias"
    assert head.bias is model.lm_head.bias
    with torch.no_grad():
        model.lm_head.bias.add_(1.5)  # a non-zero bias, so the check could fail
        ids = torch.tensor([[0, 5, 6, 7, 2]])
        logits = model(input_ids=ids).logits
        hidden = model.esm(input_ids=ids).last_hidden_state
        features = model.lm_head.layer_norm(torch.nn.functional.gelu(
            model.lm_head.dense(hidden)))
        by_hand = features @ head.decoder_weight.T + head.bias
    torch.testing.assert_close(logits, by_hand)


def test_weights_only_refuses_a_family_without_a_masked_lm_class(tmp_path, tiny_checkpoint):
    """A model type outside the layout table and the masked-LM table: nothing names its head."""
    import json
    import shutil

    import transformers

    from headscope.errors import UnsupportedModelError

    folder = tmp_path / "gpt2-like"
    shutil.copytree(tiny_checkpoint("bert"), folder)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "gpt2"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModelError) as err:
        heads.read_head(ck.resolve(str(folder)))
    assert str(err.value) == (
        f"model_type 'gpt2' of {folder} has no masked-LM class in transformers "
        f"{transformers.__version__} (AutoModelForMaskedLM), so its head cannot be named; "
        "headscope needs an encoder with an MLM head."
    )
