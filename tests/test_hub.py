"""The Hub for real: huggingface_hub against a local Hub-compatible server (tests/hub_server.py).

The server binds 127.0.0.1 only and stops by itself; huggingface_hub reads HF_ENDPOINT when it is
imported, so each command runs in a subprocess pointed at the server. The model is the real
BERT-tiny SPLADE (and a tiny ESM for a family outside the layout table, and tiny SparseEncoders
whose masked LM sits in a sub-folder per modules.json).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hub_server import HubServer

from headscope import api, heads
from headscope import checkpoint as ck
from headscope.remote import MERGE_GAP
from headscope.report import to_dict
from headscope.save.card import split_card

REPO = "org/bert-tiny"


@pytest.fixture
def hub(bert_tiny_dir):
    with HubServer(lifetime=240) as server:
        server.add_folder(REPO, bert_tiny_dir)
        yield server
        assert server.unknown == []  # every request huggingface_hub made has an endpoint


def _run(hub, tmp_path, *args, token: bool = True, env: dict | None = None):
    """`headscope ARGS` in a subprocess pointed at `hub`, online unless `env` says otherwise."""
    given = dict(env or {})
    env = dict(os.environ, HF_ENDPOINT=hub.url, HF_HUB_CACHE=str(tmp_path / "hf-cache"),
               HF_HOME=str(tmp_path / "hf-home"), HF_HUB_DISABLE_TELEMETRY="1",
               HEADSCOPE_CACHE=str(tmp_path / "hs-cache"))
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        env.pop(var, None)
    if token:
        env["HF_TOKEN"] = "hf_local_test_token"
    env.update(given)
    return subprocess.run([sys.executable, "-m", "headscope", *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)


def _same_weights(report: dict, folder: Path) -> bool:
    """The JSON report's head statistics equal the local weights-only reading of `folder`."""
    local = api.inspect(str(folder), options=api.InspectOptions(weights_only=True))
    return report["weights"] == json.loads(json.dumps(to_dict(local.weights)))


def test_server_binds_loopback_only_and_stops_by_itself():
    server = HubServer(lifetime=0.5).start()
    host, port = server.address
    assert host == "127.0.0.1"
    socket.create_connection((host, port), timeout=2).close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=0.5).close()
        except OSError:
            break  # stopped
        time.sleep(0.1)
    else:
        pytest.fail("the server did not stop by itself")


def test_inspect_downloads_what_it_needs(hub, tmp_path, bert_tiny_dir):
    result = _run(hub, tmp_path, "inspect", REPO, "--fast", "--n-pairs", "8", "--json", "r.json")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    sha = hub.repos[REPO].commits[-1]
    assert report["model"]["source"] == REPO and report["model"]["revision"] == sha
    assert _same_weights(report, bert_tiny_dir)
    snapshot = tmp_path / "hf-cache" / "models--org--bert-tiny" / "snapshots" / sha
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (snapshot / name).read_bytes() == (bert_tiny_dir / name).read_bytes()


def test_weights_only_reads_the_header_and_the_head_ranges(hub, tmp_path, bert_tiny_dir):
    result = _run(hub, tmp_path, "inspect", "--weights-only", REPO, "--json", "-")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["model"]["revision"] == hub.repos[REPO].commits[-1]
    assert report["model"]["head_found_by"] == "layout"
    assert _same_weights(report, bert_tiny_dir)

    # What was read from the weights: the 8-byte length, the header, the head's tensors (ranges
    # closer than MERGE_GAP fetched together), nothing else; nothing went into the HF cache.
    resolved = ck.resolve(str(bert_tiny_dir))
    infos = ck.tensor_infos(resolved)
    names = heads.head_tensor_names(resolved)
    weights = bert_tiny_dir / "model.safetensors"
    header_end = min(info.start for info in infos.values())
    head_bytes = sum(infos[n].end - infos[n].start for n in names)
    served = hub.served[f"{REPO}/model.safetensors"]
    assert header_end + head_bytes <= served <= header_end + head_bytes + MERGE_GAP * len(names)
    assert served < weights.stat().st_size
    for method, path, wanted in hub.requests:
        if path.endswith("/model.safetensors"):
            assert method == "GET" and wanted is not None  # always a range, never the file
    assert not (tmp_path / "hf-cache").exists()


@pytest.mark.slow  # ~20 s: builds a tiny ESM, and the subprocess imports torch for the meta model
def test_weights_only_from_the_hub_outside_the_layout_table(hub, tmp_path):
    import tiny_models

    folder = tiny_models.save_any("esm", tmp_path / "esm")
    hub.add_folder("org/tiny-esm", folder)
    result = _run(hub, tmp_path, "inspect", "--weights-only", "org/tiny-esm", "--json", "-")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["model"]["head_found_by"] == "meta-model"
    assert _same_weights(report, folder)


def test_a_session_lists_a_repository_once_per_revision_and_outside_it_always(
        monkeypatch, tmp_path):
    """Within one command (remote.session) a listing is asked once per revision; outside one,
    every reader asks again (a long-lived process sees a branch move)."""
    from headscope import remote

    asked: list[tuple[str, str | None]] = []

    def listing(repo_id, revision):
        asked.append((repo_id, revision))
        return "0" * 40, {}

    monkeypatch.setattr(remote, "_listing", listing)
    remote._Reader("o/n", None, tmp_path)
    remote._Reader("o/n", None, tmp_path)
    assert asked == [("o/n", None), ("o/n", None)]
    with remote.session():
        for revision in (None, "v1", None, "v1"):
            remote._Reader("o/n", revision, tmp_path)
    assert asked[2:] == [("o/n", None), ("o/n", "v1")]
    remote._Reader("o/n", None, tmp_path)
    assert len(asked) == 5


def test_weights_only_of_a_missing_repository(hub, tmp_path):
    result = _run(hub, tmp_path, "inspect", "--weights-only", "org/missing")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "Error: Checkpoint 'org/missing' was not found (no such repository on the Hub); pass a "
        "local directory or a Hub id that is in the Hugging Face cache.")


def test_fix_pushes_the_fixed_folder(hub, tmp_path):
    out = tmp_path / "fixed"
    result = _run(hub, tmp_path, "fix", REPO, "--k", "4", "--no-scale-bias", "--n-pairs", "8",
                  "--out", str(out), "--push-to-hub", "me/bert-tiny-k4", "--json", "-")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    pushed = hub.repos["me/bert-tiny-k4"]
    assert summary["pushed"] == f"{hub.url}/me/bert-tiny-k4/commit/{pushed.commits[-1]}"
    assert f"Pushed to the Hub: {summary['pushed']}." in result.stderr
    written = {p.name: p.read_bytes() for p in out.iterdir()}
    assert {k: v for k, v in pushed.files.items() if k != ".gitattributes"} == written
    assert len(pushed.commits) == 2  # the repository's creation, then one commit of the fix


CARD = ("---\nlicense: apache-2.0\ntags:\n- splade\n---\n# BERT-tiny SPLADE\n\n"
        "The source's own words about its training.\n")


def test_fix_of_a_hub_model_keeps_its_model_card(hub, tmp_path, bert_tiny_dir):
    """The download takes the card (README.md) and no other large file; fix's README.md is the
    source card's metadata and text, then headscope's section. A snapshot cached before cards
    were downloaded still serves offline: the card then holds headscope's section alone."""
    src = tmp_path / "src"
    shutil.copytree(bert_tiny_dir, src)
    (src / "README.md").write_text(CARD)
    (src / "flax_model.msgpack").write_bytes(b"\0" * 4096)  # weights in another format
    sha = hub.add_folder("org/carded", src)
    out = tmp_path / "fixed"
    result = _run(hub, tmp_path, "fix", "org/carded", "--k", "4", "--no-scale-bias",
                  "--out", str(out))
    assert result.returncode == 0, result.stderr
    snapshot = tmp_path / "hf-cache" / "models--org--carded" / "snapshots" / sha
    assert (snapshot / "README.md").read_text() == CARD
    assert not (snapshot / "flax_model.msgpack").exists()
    assert "org/carded/flax_model.msgpack" not in hub.served
    metadata, text = split_card((out / "README.md").read_text())
    assert metadata == "---\nlicense: apache-2.0\ntags:\n- splade\n---\n"
    assert text.startswith("# BERT-tiny SPLADE\n\nThe source's own words about its training."
                           "\n\n## Rescaled by headscope\n\nThis checkpoint is `org/carded` at "
                           f"revision `{sha}` with its masked-LM head's projection divided by "
                           "k = 4 ")

    (snapshot / "README.md").unlink()  # as a snapshot cached by an earlier headscope
    requests = len(hub.requests)
    again = _run(hub, tmp_path, "fix", "org/carded", "--k", "4", "--no-scale-bias",
                 "--out", str(tmp_path / "again"), env={"HF_HUB_OFFLINE": "1"})
    assert again.returncode == 0, again.stderr
    assert len(hub.requests) == requests
    assert (tmp_path / "again" / "README.md").read_text().startswith(
        "# org/carded, rescaled by headscope\n\n## Rescaled by headscope\n")


@pytest.mark.parametrize(("args", "token", "message"), [
    (("--k", "4", "--no-scale-bias", "--dry-run"), True,
     "Error: --push-to-hub uploads the folder fix writes, and --dry-run writes none; drop one "
     "of them."),
    (("--k", "4", "--no-scale-bias"), False,
     "Error: --push-to-hub me/out needs a Hub token with write access: log in with `hf auth "
     "login` or set HF_TOKEN."),
    (("--k", "0", "--no-scale-bias"), True, None),
])
def test_a_refused_fix_pushes_nothing(hub, tmp_path, args, token, message):
    result = _run(hub, tmp_path, "fix", REPO, *args, "--out", str(tmp_path / "o"),
                  "--push-to-hub", "me/out", token=token)
    assert result.returncode == 2, result.stderr
    if message is not None:
        assert result.stderr.strip() == message
    assert "me/out" not in hub.repos
    assert not [r for r in hub.requests if r[0] == "POST"]
    assert not (tmp_path / "o").exists()


def test_push_to_hub_refuses_a_malformed_repository_id(hub, tmp_path):
    result = _run(hub, tmp_path, "fix", REPO, "--k", "4", "--no-scale-bias", "--out", "o",
                  "--push-to-hub", "not a repo")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "Error: --push-to-hub 'not a repo' is not a Hub repository id of the form org/name; pass "
        "one such as my-org/my-model-fixed.")
    assert not Path(tmp_path / "o").exists() and not hub.requests


# ------------------------------------------------------------ a SparseEncoder in a sub-folder

SPLADE = "org/splade"
MLM = "0_MLMTransformer"
NOTE = f"{SPLADE}: reading the MLM module {MLM} of modules.json."


@pytest.fixture(scope="module")
def splade_dir(tmp_path_factory) -> Path:
    """A SparseEncoder saved as sentence-transformers 5 saved one: modules.json at the root, the
    masked LM in 0_MLMTransformer/ (no config.json at the top), the pooling in 1_SpladePooling/.
    Its BERT has six layers, so the head's tensors are a small part of the weight file."""
    pytest.importorskip("sentence_transformers.sparse_encoder")
    import tiny_models
    import torch
    from sentence_transformers.sparse_encoder import SparseEncoder
    from sentence_transformers.sparse_encoder.modules import MLMTransformer, SpladePooling
    from transformers import BertForMaskedLM

    root = tmp_path_factory.mktemp("splade")
    config = tiny_models._config("bert")
    config.num_hidden_layers, config.intermediate_size = 6, 512
    torch.manual_seed(18)
    BertForMaskedLM(config).save_pretrained(str(root / "mlm"))
    tiny_models.write_tokenizer(root / "mlm")
    mlm = MLMTransformer(str(root / "mlm"))
    mlm.save_in_root = False
    SparseEncoder(modules=[mlm, SpladePooling("max")], device="cpu").save(str(root / "st"))
    assert (root / "st" / MLM / "model.safetensors").is_file()
    assert not (root / "st" / "config.json").exists()
    return root / "st"


@pytest.fixture(scope="module")
def router_dir(splade_dir, tmp_path_factory) -> Path:
    """An inference-free SparseEncoder on the same masked LM: a Router sends queries to a
    SparseStaticEmbedding (weights of its own) and documents to the masked LM."""
    from sentence_transformers.base.modules import Router, Transformer
    from sentence_transformers.sparse_encoder import SparseEncoder
    from sentence_transformers.sparse_encoder.modules import SparseStaticEmbedding, SpladePooling

    doc = Transformer(str(splade_dir / MLM), transformer_task="fill-mask")
    router = Router.for_query_document(
        query_modules=[SparseStaticEmbedding(tokenizer=doc.tokenizer, frozen=False)],
        document_modules=[doc, SpladePooling("max")])
    folder = tmp_path_factory.mktemp("router") / "st"
    SparseEncoder(modules=[router], device="cpu").save(str(folder))
    return folder


@pytest.fixture
def splade_hub(splade_dir):
    with HubServer(lifetime=240) as server:
        server.add_folder(SPLADE, splade_dir)
        yield server
        assert server.unknown == []


def test_weights_only_of_a_sparse_encoder_reads_its_mlm_module_by_ranges(
        splade_hub, tmp_path, splade_dir):
    result = _run(splade_hub, tmp_path, "inspect", "--weights-only", SPLADE, "--json", "-")
    assert result.returncode == 0, result.stderr
    assert result.stderr == NOTE + "\n"
    report = json.loads(result.stdout)
    assert report["model"]["revision"] == splade_hub.repos[SPLADE].commits[-1]
    assert _same_weights(report, splade_dir)
    assert _same_weights(report, splade_dir / MLM)  # the module's folder read on its own

    # One listing for the module line and the read together; read whole, once each:
    # modules.json (an MLMTransformer needs no other module file to be found) and the MLM
    # module's small files. Not the root's or the pooling's config. The weight file: its
    # header and the head's ranges only, a small part of it.
    commit = splade_hub.repos[SPLADE].commits[-1]
    prefix = f"/{SPLADE}/resolve/{commit}/"
    assert [r for r in splade_hub.requests if not r[1].startswith(prefix)] == [
        ("GET", f"/api/models/{SPLADE}", None)]
    whole = sorted(p[len(prefix):] for m, p, wanted in splade_hub.requests
                   if p.startswith(prefix) and wanted is None)
    assert whole == ["0_MLMTransformer/config.json", "0_MLMTransformer/sentence_bert_config.json",
                     "0_MLMTransformer/tokenizer.json", "0_MLMTransformer/tokenizer_config.json",
                     "modules.json"]
    ranged = [(m, p[len(prefix):]) for m, p, wanted in splade_hub.requests
              if p.startswith(prefix) and wanted is not None]
    assert set(ranged) == {("GET", f"{MLM}/model.safetensors")}
    resolved = ck.resolve(str(splade_dir))
    infos = ck.tensor_infos(resolved)
    names = heads.head_tensor_names(resolved)
    header_end = min(info.start for info in infos.values())
    head_bytes = sum(infos[n].end - infos[n].start for n in names)
    served = splade_hub.served[f"{SPLADE}/{MLM}/model.safetensors"]
    size = (splade_dir / MLM / "model.safetensors").stat().st_size
    assert header_end + head_bytes <= served <= header_end + head_bytes + MERGE_GAP * len(names)
    assert served < size / 10
    assert not (tmp_path / "hf-cache").exists()


def test_weights_only_of_an_inference_free_sparse_encoder(splade_hub, tmp_path, router_dir):
    """The Router's document route is the masked LM; the query route's SparseStaticEmbedding
    weights are not read at all."""
    splade_hub.add_folder("org/router", router_dir)
    result = _run(splade_hub, tmp_path, "inspect", "--weights-only", "org/router", "--json", "-")
    assert result.returncode == 0, result.stderr
    assert " ".join(result.stderr.split()) == (
        "org/router: reading the MLM module document_0_Transformer of modules.json, the "
        "Router's document route; its query route is a SparseStaticEmbedding, which has no MLM "
        "head (left as it is).")
    assert _same_weights(json.loads(result.stdout), router_dir)
    weights = [p for p in (p.relative_to(router_dir).as_posix() for p in router_dir.rglob("*"))
               if p.endswith(".safetensors")]
    assert sorted(weights) == ["document_0_Transformer/model.safetensors",
                               "query_0_SparseStaticEmbedding/model.safetensors"]
    assert splade_hub.served["org/router/document_0_Transformer/model.safetensors"] > 0
    assert "org/router/query_0_SparseStaticEmbedding/model.safetensors" not in splade_hub.served


def test_the_module_line_is_of_the_revision_asked_for(splade_hub, tmp_path, router_dir):
    """modules.json moved between two commits (a sub-folder MLM, then a Router's): each
    revision's line and report are its own."""
    first = splade_hub.repos[SPLADE].commits[-1]
    splade_hub.add_folder(SPLADE, router_dir)  # main: the Router's modules.json
    lines = {}
    for revision in (first, None):
        args = ("--revision", first) if revision else ()
        result = _run(splade_hub, tmp_path, "inspect", "--weights-only", SPLADE, *args,
                      "--json", "-")
        assert result.returncode == 0, result.stderr
        lines[revision] = " ".join(result.stderr.split())
        assert json.loads(result.stdout)["model"]["revision"] == (
            revision or splade_hub.repos[SPLADE].commits[-1])
    assert lines[first] == NOTE
    assert lines[None].startswith(f"{SPLADE}: reading the MLM module document_0_Transformer "
                                  "of modules.json, the Router's document route;")


def test_inspect_downloads_a_sparse_encoder_and_reads_its_mlm_module(
        splade_hub, tmp_path, splade_dir):
    result = _run(splade_hub, tmp_path, "inspect", SPLADE, "--fast", "--n-pairs", "8",
                  "--json", "r.json")
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines()[0] == NOTE
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["model"]["source"] == SPLADE and not report["model"]["weights_only"]
    assert _same_weights(report, splade_dir)
    sha = splade_hub.repos[SPLADE].commits[-1]
    snapshot = tmp_path / "hf-cache" / "models--org--splade" / "snapshots" / sha
    for name in ("modules.json", f"{MLM}/config.json", f"{MLM}/model.safetensors"):
        assert (snapshot / name).read_bytes() == (splade_dir / name).read_bytes()


def test_fix_of_a_hub_sparse_encoder_pushes_the_same_layout(splade_hub, tmp_path, splade_dir):
    """Fixed and pushed in its own layout, with the source's cards: the root's (headscope's
    section appended) and the MLM module's, copied as it is."""
    module_card = b"# The masked LM of this SparseEncoder\n"
    splade_hub.repos[SPLADE].commit({f"{MLM}/README.md": module_card})
    out = tmp_path / "fixed"
    result = _run(splade_hub, tmp_path, "fix", SPLADE, "--k", "4", "--no-scale-bias",
                  "--n-pairs", "8", "--out", str(out), "--push-to-hub", "me/splade-k4",
                  "--json", "-")
    assert result.returncode == 0, result.stderr
    assert f"Fixed the MLM module {MLM} of modules.json" in " ".join(result.stderr.split())
    pushed = splade_hub.repos["me/splade-k4"]
    written = {p.relative_to(out).as_posix(): p.read_bytes()
               for p in out.rglob("*") if p.is_file()}
    assert {k: v for k, v in pushed.files.items() if k != ".gitattributes"} == written
    for name in ("modules.json", "config_sentence_transformers.json",
                 "1_SpladePooling/config.json", f"{MLM}/tokenizer.json"):
        assert written[name] == (splade_dir / name).read_bytes()
    assert written[f"{MLM}/README.md"] == module_card
    source_card = (splade_dir / "README.md").read_text()
    assert source_card.startswith("---\n")  # sentence-transformers' card, with metadata
    assert written["README.md"].decode().startswith(
        source_card.rstrip("\n") + "\n\n## Rescaled by headscope\n")
    # The pushed module's head is the source's divided by 4 (the rest of it unchanged).
    from safetensors.numpy import load_file

    before = load_file(str(splade_dir / MLM / "model.safetensors"))
    after = load_file(str(out / MLM / "model.safetensors"))
    decoder = "cls.predictions.decoder.weight"
    embeddings = "bert.embeddings.word_embeddings.weight"
    assert np.allclose(after[decoder], before[embeddings] / 4, rtol=1e-6, atol=0)
    assert np.array_equal(after[embeddings], before[embeddings])
