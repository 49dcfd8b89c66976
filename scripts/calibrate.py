"""Calibration runner: conditions x k x seeds of short SPLADE trainings, pre-registered, resumable.

    python scripts/calibrate.py register --condition NAME --steps 300   # then commit the registry
    python scripts/calibrate.py run --condition NAME --out docs/calibration/runs/NAME.jsonl
    python scripts/calibrate.py report --runs docs/calibration/runs --md docs/calibration.md

`register` records, before any run, what the bands rule recommends for a condition at this commit
(k, bias setting, bands, per-k probe statistics under both bias settings), the grid that will
judge it (k in 1..64, both bias settings where the head has a bias, 3 seeds, BoolQ and SciQ) and
its training recipe, in docs/calibration/registry.jsonl (docs/calibration/decision-rule.md).
`run` refuses a condition whose entry is not in the committed registry and a working tree whose
code differs from its commit; every run records that commit, and a file's runs of one training
all come from one commit. Each arm trains once and is evaluated on every evaluation set.

`run` appends one JSON line per finished run and evaluation (keyed by condition, arm, seed,
steps, data and evaluation set) and skips every key already in the file, so an interrupted grid
resumes where it stopped; the number
of held-out queries is not in the key, so `run` refuses to add runs evaluated on another number
than the file's (the default, 400, is what every committed grid used). Each line
holds the per-query metrics (exact dot products over all terms; the pruned serving figure is a
separate, labelled field), the zero-shot (step 0) metrics of the same arm, per-step telemetry,
the configuration, the seed and the git commit. It also writes one "recommendation" line per
condition: the registered recommendation (older files: what `inspect` recommended at the time).

`inspect` appends, per calibration condition, what `headscope inspect` recommends at this commit
(default probe) with its per-k probe statistics under both bias settings.

`report` regenerates the tables and figures of docs/calibration.md from those lines alone: per
condition, the paired comparison of its arms and where the recommendation lands against the
tied-with-best set; then the band fit (`fit_bands`: forward selection of single bound moves,
starting from the pre-calibration bands) checked leaving one condition out, replaying the bands
rule on the recorded statistics (`replay`).

The conditions are scripts/conditions.py's registry (a simulation says so in its label). Thin
over the library: training, evaluation, rescaling, simulation and the paired statistics all live
in headscope.
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
from dataclasses import asdict, dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
import conditions  # noqa: E402  (scripts/conditions.py: the one registry of conditions)

# The conditions of the first grid, which shaped the shipped bands (the fitted block), and every
# condition in the order the page shows them.
FITTED_CONDITIONS = ("real-bert-tiny", "bias-dense", "projection-dense",
                     "modernbert-matched-sim", "modernbert-mini", "bert-mini-control")
CALIBRATION_CONDITIONS = tuple(conditions.CONDITIONS)


def build(name: str):
    """(checkpoint.LoadedModel, label) of the condition called `name` (or an alias)."""
    cond = conditions.get(name)
    return cond.load(), cond.label


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


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout


def git_commit() -> str:
    """HEAD, with "+dirty" when tracked code differs from it (the runs folder aside)."""
    try:
        head = _git("rev-parse", "HEAD").strip()
        return head + ("+dirty" if code_changes() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def code_changes() -> list[str]:
    """Paths that differ from HEAD, tracked or new, except the runs the grid appends to and the
    registry `register` appends to (neither is code)."""
    out = _git("status", "--porcelain", "--untracked-files=all", "--", ".",
               f":(exclude){RUNS_DIR.as_posix()}", f":(exclude){REGISTRY.as_posix()}")
    return [line[3:] for line in out.splitlines() if line.strip()]


def clean_commit(what: str) -> str:
    """HEAD, refusing a working tree whose code is not that commit's: a run or a registration
    must name the code that made it."""
    try:
        head = _git("rev-parse", "HEAD").strip()
        changed = code_changes()
    except (OSError, subprocess.CalledProcessError) as err:
        raise SystemExit(f"{what} needs a git checkout of headscope ({err}).") from None
    if changed:
        shown = ", ".join(changed[:5]) + (" ..." if len(changed) > 5 else "")
        raise SystemExit(f"{what} refuses a working tree that differs from its commit "
                         f"({shown}); commit or stash, or run from a worktree pinned at a "
                         "commit (git worktree add ../grid HEAD).")
    return head


# ------------------------------------------------------------------------- registration

REGISTRY = Path("docs/calibration/registry.jsonl")  # relative to ROOT
RUNS_DIR = Path("docs/calibration/runs")
GRID_KS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
GRID_SEEDS = (0, 1, 2)
GRID_EVALS = ("boolq", "sciq")
FITTED, PREREGISTERED = "fitted", "pre-registered"


def registry_rows(text: str) -> dict[str, dict]:
    """condition -> its registry entry."""
    return {row["condition"]: row for row in map(json.loads, text.splitlines())}


def committed_registry() -> dict[str, dict]:
    """The registry as HEAD holds it: what was registered before the code that runs now."""
    try:
        return registry_rows(_git("show", f"HEAD:{REGISTRY.as_posix()}"))
    except subprocess.CalledProcessError:
        return {}


def register(args) -> int:
    """Record, before any run, what the bands rule recommends for a condition and the grid that
    will judge it. Commit the registry file before `run`."""
    import torch

    torch.set_num_threads(args.threads)
    name = conditions.get(args.condition).name
    commit = clean_commit("register")
    path = ROOT / REGISTRY
    entries = registry_rows(path.read_text(encoding="utf-8")) if path.is_file() else {}
    if name in entries:
        raise SystemExit(f"{name} is already registered (commit {entries[name]['git_commit'][:7]}"
                         "); a registration is never replaced: register a new condition name.")
    ran = [r for r in read_rows(ROOT / RUNS_DIR) if r.get("condition") == name]
    block = FITTED if args.fitted else PREREGISTERED
    if ran and block == PREREGISTERED:
        raise SystemExit(f"{name} already has {len(ran)} lines in {RUNS_DIR}; a condition with "
                         "runs cannot be pre-registered (pass --fitted to record it in the "
                         "fitted block).")
    if block == FITTED and name not in FITTED_CONDITIONS:
        raise SystemExit(f"{name} is not one of the fitted block's conditions "
                         f"({', '.join(FITTED_CONDITIONS)}).")
    loaded, label = build(name)
    row = inspection(name, loaded, label, commit)
    from headscope import recommend

    ks = [float(k) for k in args.k.split(",")]
    entry = {
        "key": f"{name}|registration", "kind": "registration", "condition": name,
        "block": block, "label": label, "git_commit": commit,
        "registered_on": time.strftime("%Y-%m-%d", time.gmtime()),
        "recommendation": row["recommendation"], "has_bias": row["has_bias"],
        "row_norm_mean": row["row_norm_mean"],
        "bands": [asdict(b) for b in recommend.DEFAULT_BANDS],
        "probe": row["probe"], "per_k": row["per_k"],
        "grid": {"k": ks, "bias": [False, True] if row["has_bias"] else [False],
                 "seeds": [int(x) for x in args.seeds.split(",")],
                 "evals": args.eval_data.split(","), "data": args.data,
                 "max_eval_queries": args.max_eval_queries},
        "recipe": {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
                   "max_passage_length": args.max_passage_length},
    }
    if args.recipe_note:
        entry["recipe_note"] = args.recipe_note
    append(path, entry)
    rec = entry["recommendation"]
    print(f"registered {name} ({block}) at {commit[:7]}: bands recommend "
          f"{Arm(rec['k'], bool(rec['scale_bias']) and rec['k'] != 1).name}; commit "
          f"{REGISTRY} before running its grid.", flush=True)
    return 0


def registered_entry(name: str) -> dict:
    entry = committed_registry().get(name)
    if entry is None:
        raise SystemExit(
            f"{name} is not in the committed {REGISTRY}; run `python scripts/calibrate.py "
            f"register --condition {name}` and commit the registry before its grid.")
    return entry


def audit_registrations() -> list[str]:
    """What git history says against the pre-registered block, one sentence per problem: every
    run of a pre-registered condition must come from a clean commit of this history whose
    registry already held the condition's entry, unchanged; one grid (condition, training
    length, data) is one commit."""
    path = ROOT / REGISTRY
    if not path.is_file():
        return []
    problems = []
    rows = read_rows(ROOT / RUNS_DIR)
    for name, entry in registry_rows(path.read_text(encoding="utf-8")).items():
        if entry["block"] != PREREGISTERED:
            continue
        runs = [r for r in rows if r.get("kind") == "run" and r["condition"] == name]
        grids: dict[tuple, set[str]] = {}
        for r in runs:
            grids.setdefault((r["config"]["steps"], r["data"]), set()).add(r["git_commit"])
        for (steps, data), commits in sorted(grids.items()):
            if len(commits) > 1:
                problems.append(f"{name}: the {steps}-step grid on {data} mixes commits "
                                f"{', '.join(sorted(c[:7] for c in commits))}.")
        for commit in sorted({r["git_commit"] for r in runs}):
            try:
                _git("merge-base", "--is-ancestor", commit, "HEAD")
            except subprocess.CalledProcessError:
                problems.append(f"{name}: runs from {commit[:12]}, which is not a clean commit "
                                "of this history.")
                continue
            try:
                then = registry_rows(_git("show", f"{commit}:{REGISTRY.as_posix()}"))
            except subprocess.CalledProcessError:
                then = {}  # that commit had no registry yet
            if then.get(name) != entry:
                problems.append(f"{name}: runs from {commit[:7]}, whose registry did not hold "
                                "the condition's entry as it is now.")
    return problems


def check_one_grid(path: Path, condition: str, steps: int, data: str, commit: str,
                   device: str) -> None:
    """One grid is one commit on one device: refuse to add runs of `condition` to a file whose
    runs of the same training were made by other code or on another kind of device (a CPU and
    a GPU training of the same arm differ in the last bits, and so in the comparison)."""
    if not path.is_file():
        return
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line) if line.strip() else {}
        if not (row.get("kind") == "run" and row["condition"] == condition
                and row["config"]["steps"] == steps and row["data"] == data):
            continue
        if row["git_commit"] != commit:
            raise SystemExit(
                f"{path} holds runs of {condition} made at {row['git_commit'][:7]}, and this "
                f"code is {commit[:7]}; one grid is one commit: finish it from a worktree at "
                f"{row['git_commit'][:7]} or write to another --out.")
        theirs = row["config"].get("device", "cpu").split(":")[0]
        if theirs != device.split(":")[0]:
            raise SystemExit(
                f"{path} holds runs of {condition} trained on {theirs}, and this run would use "
                f"--device {device}; one grid is one kind of device: pass --device {theirs} or "
                "write to another --out.")


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


def run(args) -> int:
    """Run (or resume) the grid of a registered condition from clean, committed code: every arm
    trains once and is evaluated on each evaluation set, one line per (arm, seed, evaluation)."""
    import copy

    import torch

    from headscope.rescale import RescaleSpec, rescale_model
    from headscope.splade import data as splade_data
    from headscope.splade.evaluate import EvalConfig, evaluate
    from headscope.splade.train import TrainConfig, train

    name = conditions.get(args.condition).name  # runs are keyed by the canonical name
    entry = registered_entry(name)
    commit = clean_commit("run")
    grid, recipe = entry["grid"], entry["recipe"]
    steps = args.steps if args.steps is not None else recipe["steps"]
    data = args.data or grid["data"]
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    done = done_keys(out)
    loaded, label = build(name)
    model, tokenizer = loaded.model, loaded.tokenizer
    rec = entry["recommendation"]  # registered before the runs, never recomputed
    rec_key = f"{name}|recommendation"
    if rec_key not in done:
        append(out, {"key": rec_key, "kind": "recommendation", "condition": name,
                     "label": label, "recommendation": rec, "git_commit": entry["git_commit"],
                     "registered": True})
    ks = [float(k) for k in args.k.split(",")] if args.k else grid["k"]
    bias = grid["bias"] if args.bias is None else {"kept": [False], "divided": [True],
                                                    "both": [False, True]}[args.bias]
    rec_arm = Arm(float(rec["k"]), bool(rec["scale_bias"]) if rec["k"] != 1 else False)
    arms = {Arm(k, b if k != 1 else False) for k in ks for b in bias}
    # The recommended arm first (when the grid has it), then the others farthest from it (in
    # log k) first: when the grid is cut short, the comparisons that matter most are done.
    arms_sorted = sorted(arms, key=lambda a: (a != rec_arm, -abs(math.log(a.k / rec_arm.k)),
                                              a.k, a.scale_bias))
    n_eval = args.max_eval_queries or grid["max_eval_queries"]
    train_set = splade_data.load_dataset(data, max_eval_queries=n_eval)
    evals = args.eval_data.split(",") if args.eval_data else grid["evals"]
    eval_splits = {e: train_set.eval if e == data else splade_data.load_eval(
        e, max_eval_queries=n_eval).eval for e in evals}
    seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else grid["seeds"]
    for e, split in eval_splits.items():
        check_eval_size(out, name, data, e, len(split.queries))
    check_one_grid(out, name, steps, data, commit, args.device)
    eval_config = EvalConfig(max_query_length=32,
                             max_passage_length=recipe["max_passage_length"], device=args.device)
    new_runs = 0
    for seed in seeds:
        for arm in arms_sorted:
            keys = {e: f"{name}|{arm.name}|seed={seed}|steps={steps}|data={data}|eval={e}"
                    for e in evals}
            if all(k in done for k in keys.values()):
                continue
            if args.max_runs is not None and new_runs >= args.max_runs:
                return 0
            config = TrainConfig(steps=steps, batch_size=recipe["batch_size"], lr=recipe["lr"],
                                 max_query_length=32,
                                 max_passage_length=recipe["max_passage_length"], seed=seed,
                                 device=args.device)
            clone = copy.deepcopy(model)
            rescale_model(clone, RescaleSpec(arm.k, "untie", arm.scale_bias))
            clone.to(args.device)
            t0 = time.perf_counter()
            before = {e: evaluate(clone, tokenizer, eval_splits[e], eval_config) for e in evals}
            result = train(clone, tokenizer, train_set.train, config)
            after = {e: evaluate(clone, tokenizer, eval_splits[e], eval_config) for e in evals}
            wall = round(time.perf_counter() - t0, 1)
            for e in evals:
                if keys[e] in done:
                    continue
                append(out, {
                    "key": keys[e], "kind": "run", "condition": name, "label": label,
                    "arm": arm.name, "k": arm.k, "scale_bias": arm.scale_bias, "seed": seed,
                    "recommended": arm == rec_arm, "data": data, "eval": e,
                    "config": asdict(config), "eval_config": asdict(eval_config),
                    "git_commit": commit,
                    "step0": {k: _finite(v) for k, v in asdict(result.records[0]).items()},
                    "telemetry": _telemetry(result.records),
                    "zero_shot": _metrics(before[e]), "trained": _metrics(after[e]),
                    "wall_s": wall,
                })
                print(f"{keys[e]}: MRR@10 {before[e].mrr_at_10:.3f} -> "
                      f"{after[e].mrr_at_10:.3f} ({wall} s)", flush=True)
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
    # The bands by name: the shipped default rule may be a constant, which measures nothing.
    rep = api.inspect_loaded(loaded, probe_config=config, options=api.InspectOptions(rule="bands"))
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
        "row_norm_mean": rep.weights.row_norm_all.mean,
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
        loaded, label = build(name)
        name = conditions.get(name).name
        row = inspection(name, loaded, label, commit)
        append(out, row | {"wall_s": round(time.perf_counter() - t0, 1)})
        rec = row["recommendation"]
        print(f"{name}: inspect recommends {Arm(rec['k'], rec['scale_bias']).name} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("register", help="pre-register a condition: record today's "
                       "recommendation and its grid before any run")
    g.add_argument("--condition", required=True, choices=conditions.names())
    g.add_argument("--k", default=",".join(f"{k:g}" for k in GRID_KS))
    g.add_argument("--seeds", default=",".join(map(str, GRID_SEEDS)))
    g.add_argument("--steps", type=int, default=300)
    g.add_argument("--batch-size", type=int, default=16)
    g.add_argument("--lr", type=float, default=2e-5)
    g.add_argument("--max-passage-length", type=int, default=64)
    g.add_argument("--data", default="boolq")
    g.add_argument("--eval-data", default=",".join(GRID_EVALS))
    g.add_argument("--max-eval-queries", type=int, default=400)
    g.add_argument("--recipe-note", default=None,
                   help="how the recipe was chosen (e.g. a check of one arm before registering), "
                   "recorded with it")
    g.add_argument("--fitted", action="store_true",
                   help="record a condition of the fitted block (it had runs before)")
    g.add_argument("--threads", type=int, default=1)
    r = sub.add_parser("run", help="run (or resume) the grid of one registered condition")
    r.add_argument("--condition", required=True, choices=conditions.names())
    r.add_argument("--k", default=None, help="default: the registered grid's (the edge rule "
                   "adds larger ones)")
    r.add_argument("--bias", default=None, choices=("kept", "divided", "both"),
                   help="default: the registered grid's")
    r.add_argument("--seeds", default=None, help="default: the registered grid's")
    r.add_argument("--steps", type=int, default=None, help="default: the registered recipe's")
    r.add_argument("--data", default=None, help="default: the registered grid's")
    r.add_argument("--eval-data", default=None,
                   help="comma-separated evaluation sets (default: the registered grid's)")
    r.add_argument("--max-eval-queries", type=int, default=None,
                   help="held-out queries evaluated (default: the registered grid's; a file's "
                   "runs must all use the same number)")
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--device", default="cpu", help="cpu or cuda[:N]; recorded in each run's "
                   "config (a file's grid stays on one kind of device)")
    r.add_argument("--max-runs", type=int, default=None,
                   help="stop after this many new trainings (the rest resume later)")
    r.add_argument("--out", required=True)
    i = sub.add_parser("inspect", help="record what inspect recommends for each condition now")
    i.add_argument("--condition", action="append", choices=conditions.names(),
                   help="repeatable; default: every calibration condition")
    i.add_argument("--runs", default=str(ROOT / "docs" / "calibration" / "runs"))
    i.add_argument("--threads", type=int, default=1)
    p = sub.add_parser("report", help="regenerate docs/calibration.md tables and figures")
    p.add_argument("--runs", default=str(ROOT / "docs" / "calibration" / "runs"))
    p.add_argument("--md", default=str(ROOT / "docs" / "calibration.md"))
    p.add_argument("--figures", default=str(ROOT / "docs" / "calibration"))
    p.add_argument("--evidence", default=str(ROOT / EVIDENCE_FILE),
                   help="the evidence the package ships (inspect's 'how sure' lines)")
    args = parser.parse_args(argv)
    if args.command == "register":
        return register(args)
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


def _group_recommendation(recs: dict[tuple, dict], runs: list[dict]) -> dict | None:
    files: dict[str | None, int] = {}
    for r in runs:
        files[r.get("_file")] = files.get(r.get("_file"), 0) + 1
    for file in sorted(files, key=lambda f: (-files[f], str(f))):
        if (runs[0]["condition"], file) in recs:
            return recs[(runs[0]["condition"], file)]
    return next((v for (c, _f), v in recs.items() if c == runs[0]["condition"]), None)


def analyse(rows: list[dict]) -> list[dict]:
    """Per condition x (steps, data, eval): the paired comparison of its arms over the seeds
    every arm has."""
    from headscope import evidence

    # The recommendation line of each file: a group's is that of the file holding most of its
    # runs (a later file adding arms to an older grid does not rewrite when its runs started).
    recs = {(r["condition"], r.get("_file")): r for r in rows if r["kind"] == "recommendation"}
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
                  "label": runs[0]["label"], "recommendation": _group_recommendation(recs, runs)}
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
        "best − arm MRR@10 [95% CI] | tied with best | hierarchical CI | first-step training "
        "loss | "
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


def _provenance(g: dict) -> str:
    """Which code made a group's runs: each commit with its run count, labelled when it is not
    a commit of this repository's history or when the tree was dirty."""
    counts: dict[str, int] = {}
    for by_seed in g["by_arm"].values():
        for r in by_seed.values():
            counts[r["git_commit"]] = counts.get(r["git_commit"], 0) + 1
    parts, labelled = [], False
    for commit, n in sorted(counts.items()):
        base = commit.removesuffix("+dirty")
        try:
            _git("cat-file", "-e", f"{base}^{{commit}}")
            known = True
        except (OSError, subprocess.CalledProcessError):
            known = False
        note = [] if known else ["not a commit of this repository's history"]
        if commit.endswith("+dirty"):
            note.append("uncommitted changes on top of it")
        labelled = labelled or bool(note)
        parts.append(f"{base[:7]} ({n} run{'s' if n != 1 else ''}"
                     + (f"; {', '.join(note)}" if note else "") + ")")
    mixed = len(counts) > 1 or labelled
    return (f"Made by {'several commits' if len(counts) > 1 else 'one commit'}: "
            f"{', '.join(parts)}." + (" Not one clean commit: read it as a labelled grid, not as "
                                      "pre-registered evidence." if mixed else ""))


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
    """condition -> (inspection, group) for every condition of the fitted block with an
    inspection and a judged group; of several groups (step counts) of one condition, the one with
    the most seeds x arms, and of equally large ones the longest training (the nearest to where
    active terms settle)."""
    def size(g: dict) -> tuple[int, int]:
        return len(g["seeds"]) * len(g["arms"]), g["steps"]

    cases: dict[str, tuple] = {}
    for g in groups:
        # Only the fitted block is fitted on: a pre-registered condition judges, never shapes.
        if (g["condition"] not in FITTED_CONDITIONS or g["condition"] not in inspections
                or g.get("tied_mrr") is None):
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
    missing = [c for c in FITTED_CONDITIONS if c not in cases]
    if missing:
        lines += ["", f"No judged grid yet: {', '.join(missing)}."]
    return lines


# ------------------------------------------------------------------------- rules compared

PAPER_K, LARGE_HEAD_ROW_NORM = 16.0, 1.5  # recommend's paper rule (arXiv 2606.18811's setting)
CONSTANT_RULES = (("k = 1", (1.0, False)),
                  *((f"k = {k:g}, bias {b}", (float(k), b == "divided"))
                    for k in (4, 8, 16) for b in ("kept", "divided")))
RULE_NAMES = ("bands (shipped)", "paper", *(name for name, _ in CONSTANT_RULES))
MIN_PREREGISTERED = 4  # complete conditions before the decision rule gives a verdict


def rule_decisions(entry: dict) -> dict[str, tuple[float, bool]]:
    """rule -> (k, bias divided) each rule chooses for a registered condition; the bands rule's
    is the decision recorded in the entry, never recomputed after the runs."""
    rec = entry["recommendation"]
    paper = PAPER_K if entry["row_norm_mean"] > LARGE_HEAD_ROW_NORM else 1.0
    out = {"bands (shipped)": (float(rec["k"]), bool(rec["scale_bias"]) and rec["k"] != 1),
           "paper": (paper, False)}
    for name, (k, divided) in CONSTANT_RULES:
        out[name] = (k, divided if entry["has_bias"] else False)
    return out


def domain_of(data: str, evaluated: str) -> str:
    """"in" when a run evaluates on the set it trained on, else "out"."""
    return "in" if Path(evaluated).name == Path(data).name else "out"


def domain_groups(groups: list[dict]) -> dict[tuple[str, str], dict]:
    """(condition, "in" | "out") -> its judged group: of several, the most seeds x arms, then
    the longest training."""
    picked: dict[tuple[str, str], dict] = {}
    for g in groups:
        if g.get("tied_mrr") is None:
            continue
        key = (g["condition"], domain_of(g["data"], g["eval"]))
        old = picked.get(key)
        if old is None or (len(g["seeds"]) * len(g["arms"]), g["steps"]) > (
                len(old["seeds"]) * len(old["arms"]), old["steps"]):
            picked[key] = g
    return picked


def tied_range(g: dict) -> str:
    """The k of a group's tied-with-best set: "4", "1-4", with the bias settings it holds."""
    ks = sorted({float(a.split("/")[0].removeprefix("k=")) for a in g["tied_mrr"].tied})
    span = f"{ks[0]:g}" if len(ks) == 1 else f"{ks[0]:g}-{ks[-1]:g}"
    biases = sorted({a.split("/bias ")[1] for a in g["tied_mrr"].tied if "/bias " in a})
    return span + (f" (bias {' or '.join(biases)})" if biases else "")


def registered_arms(entry: dict) -> set[str]:
    """The names of a registered grid's arms (k = 1 once: dividing the bias by 1 is no change)."""
    grid = entry["grid"]
    return {Arm(float(k), b if k != 1 else False).name for k in grid["k"] for b in grid["bias"]}


def grid_progress(g: dict | None, entry: dict) -> tuple[int, int]:
    """(trainings done, trainings registered) of a pre-registered condition's group (None: no
    run yet)."""
    arms = registered_arms(entry)
    done = sum(len(g["by_arm"].get(a, {})) for a in arms) if g is not None else 0
    return done, len(arms) * len(entry["grid"]["seeds"])


def rule_outcomes(groups: list[dict], registry: dict[str, dict]) -> dict[tuple, str]:
    """(block, condition, domain, rule) -> "tied" | "worse" | "not run"; a pre-registered
    condition is judged only once its registered grid is complete."""
    out = {}
    for (name, domain), g in domain_groups(groups).items():
        entry = registry.get(name)
        if entry is None:
            continue
        if entry["block"] == PREREGISTERED:
            done, total = grid_progress(g, entry)
            if done < total:
                continue
        for rule, decision in rule_decisions(entry).items():
            out[(entry["block"], name, domain, rule)] = _outcome(decision, g)
    return out


def judge(groups: list[dict], registry: dict[str, dict]) -> tuple[dict[tuple, str], list[str]]:
    """(rule_outcomes, the pre-registered conditions complete in both domains)."""
    outcomes = rule_outcomes(groups, registry)
    complete = [c for c, e in registry.items() if e["block"] == PREREGISTERED
                and all((PREREGISTERED, c, d, "k = 1") in outcomes for d in ("in", "out"))]
    return outcomes, complete


def rule_counts(outcomes: dict[tuple, str], complete: list[str]) -> dict[tuple[str, str], int]:
    """(rule, "in" | "out") -> on how many complete pre-registered conditions the rule lands
    inside the tied-with-best set."""
    return {(r, d): sum(outcomes.get((PREREGISTERED, c, d, r)) == "tied" for c in complete)
            for r in RULE_NAMES for d in ("in", "out")}


def _decision(outcomes: dict[tuple, str], complete: list[str]) -> tuple[str, str] | None:
    """(the rule docs/calibration/decision-rule.md ships, the step that chose it: "beats" (2),
    "as good" (3, a simpler rule as good as the bands) or "largest total" (3, none is)); None
    while the pre-registered block is too small for a verdict (1)."""
    if len(complete) < MIN_PREREGISTERED:
        return None
    count = rule_counts(outcomes, complete)
    bands = "bands (shipped)"
    others = [r for r in RULE_NAMES if r != bands]
    if all(count[bands, d] > count[r, d] for r in others for d in ("in", "out")):
        return bands, "beats"
    simplest = ["k = 1", *(r for r in RULE_NAMES if r.startswith("k = ") and r != "k = 1"),
                "paper", bands]
    as_good = [r for r in simplest if all(count[r, d] >= count[bands, d] for d in ("in", "out"))]
    if as_good and as_good[0] != bands:
        return as_good[0], "as good"
    return max(simplest, key=lambda r: (count[r, "in"] + count[r, "out"], -simplest.index(r))), \
        "largest total"


def verdict(outcomes: dict[tuple, str], complete: list[str]) -> str | None:
    """The rule docs/calibration/decision-rule.md ships, judged on the pre-registered block;
    None while the block is too small for a verdict."""
    decision = _decision(outcomes, complete)
    return None if decision is None else decision[0]


def shipped(choice: str | None) -> dict | None:
    """The verdict as the product applies it (headscope.calibrated.shipped_rule): None while it
    is pending (the bands stay the default), else the rule and, for a constant, its arm."""
    if choice is None:
        return None
    if choice == "bands (shipped)":
        return {"rule": "bands"}
    if choice == "paper":
        return {"rule": "paper"}
    k, divided = dict(CONSTANT_RULES)[choice]
    return {"rule": "constant", "k": k, "scale_bias": divided}


def decide(outcomes: dict[tuple, str], complete: list[str]) -> str:
    """The verdict of docs/calibration/decision-rule.md on the pre-registered block, in words."""
    decision = _decision(outcomes, complete)
    if decision is None:
        return (f"No verdict yet: the pre-registered block has {len(complete)} condition(s) with "
                f"complete grids in both domains, and the decision rule needs "
                f"{MIN_PREREGISTERED}. The product keeps its current default (the bands rule) "
                "and says the out-of-sample verdict is pending.")
    choice, step = decision
    if step == "beats":
        return "The bands rule beats every other rule in both domains: it ships as the default."
    count = rule_counts(outcomes, complete)
    counts = (f"({count[choice, 'in']} in domain, {count[choice, 'out']} out of domain, of "
              f"{len(complete)})")
    if step == "as good":
        return (f"The bands rule does not beat every other rule in both domains; the simplest "
                f"rule that does as well ships: **{choice}** {counts}.")
    from headscope.calibrated import rule_in_words

    return (f"The bands rule does not beat every other rule in both domains, and no simpler rule "
            f"does as well as it in both; the rule with the largest total count (in + out) "
            f"ships: **{rule_in_words(choice)}** {counts}.")


def rules_section(groups: list[dict], registry: dict[str, dict]) -> list[str]:
    """The headline: per block and domain, how often each rule lands inside the tied-with-best
    set, then per condition; the verdict from the pre-registered block alone."""
    outcomes, complete = judge(groups, registry)
    rules = list(RULE_NAMES)
    lines = ["### Rules compared: how often each lands inside the tied-with-best set", "",
             "Each rule chooses one arm per condition: **bands** the shipped fitted rule (the "
             "decision recorded in the condition's registry entry), **paper** k = 16 with the "
             "bias kept when the decoder's mean row norm is above 1.5 and k = 1 otherwise, and "
             "constants. Cells: inside / judged, and how many conditions did not run that "
             "rule's arm (\"not run\" is neither inside nor outside). In domain: trained and "
             "evaluated on BoolQ; out of domain: trained on BoolQ, evaluated on SciQ. The "
             "fitted block shaped the bands (in sample); only the pre-registered block judges "
             "them ([decision-rule.md](calibration/decision-rule.md)).", ""]
    blocks = [(FITTED, "fitted block (in sample)"), (PREREGISTERED, "pre-registered block")]
    header = "| rule | " + " | ".join(f"{title}, {d}" for _, title in blocks
                                      for d in ("in domain", "out of domain")) + " |"
    lines += [header, "|---" * 5 + "|"]
    for rule in rules:
        cells = []
        for block, _ in blocks:
            for d in ("in", "out"):
                got = [v for (b, _c, dd, r), v in outcomes.items()
                       if b == block and dd == d and r == rule]
                judged = [v for v in got if v != "not run"]
                inside = sum(v == "tied" for v in judged)
                missing = len(got) - len(judged)
                cells.append(f"{inside} / {len(judged)}" + (f" ({missing} not run)"
                                                            if missing else "") if got else "—")
        lines.append(f"| {rule} | " + " | ".join(cells) + " |")
    lines += ["", "Per condition (✓ inside, ✗ outside, – not run), with the range of k the "
              "evidence cannot separate from the best arm (the k of the tied-with-best set, "
              "among the arms run):", "",
              "| block | condition | domain | k the evidence cannot separate | "
              + " | ".join(rules) + " |", "|---" * (4 + len(rules)) + "|"]
    mark = {"tied": "✓", "worse": "✗", "not run": "–"}
    picked = domain_groups(groups)
    for block, _ in blocks:
        for (name, domain) in sorted({(c, d) for (b, c, d, _r) in outcomes if b == block},
                                     key=lambda cd: (list(registry).index(cd[0]), cd[1])):
            lines.append(f"| {block} | {name} | {domain} | {tied_range(picked[name, domain])} | "
                         + " | ".join(mark[outcomes[(block, name, domain, r)]] for r in rules)
                         + " |")
    missing = [c for c in registry if c not in {c for (_b, c, _d, _r) in outcomes}]
    if missing:
        progress = []
        for c in missing:
            grid = registry[c]["grid"]  # its registered domains, run or not
            domains = sorted({domain_of(grid["data"], e) for e in grid["evals"]})
            done = []
            for d in domains:
                n, total = grid_progress(picked.get((c, d)), registry[c])
                done.append(f"{'in domain' if d == 'in' else 'out of domain'} {n} of {total} "
                            "trainings")
            progress.append(f"{c} ({'; '.join(done)})")
        lines += ["", "Registered, grid not complete (not judged until it is): "
                  f"{', '.join(progress)}."]
    lines += ["", f"**Out-of-sample verdict** (pre-registered block only): "
              f"{decide(outcomes, complete)}"]
    return lines


EVIDENCE_FILE = Path("headscope/data/calibration.json")  # relative to ROOT: what inspect shows
_ARM = re.compile(r"k=([0-9.e+]+)(?:/bias (kept|divided))?$")


def weights_identity(name: str) -> dict | None:
    """The sha256 and size of a real condition's weight file, by which `inspect` knows the
    model; None for a simulation (no user has its files)."""
    from headscope.fileio import sha256_file

    condition = conditions.CONDITIONS[name]
    if condition.simulation:
        return None
    path = condition() / "model.safetensors"
    return {"weights_sha256": sha256_file(path), "weights_bytes": path.stat().st_size}


def product_evidence(groups: list[dict], registry: dict[str, dict]) -> dict:
    """What the package ships of this evidence (headscope/data/calibration.json): each rule's
    counts on the complete pre-registered conditions, the verdict (None while pending), and,
    for each real condition by its weights' sha256, the arms its tied-with-best set holds in
    each judged domain."""
    outcomes, complete = judge(groups, registry)
    count = rule_counts(outcomes, complete)
    picked = domain_groups(groups)
    models = []
    for name, entry in registry.items():
        domains = []
        for d in ("in", "out"):
            if (entry["block"], name, d, "k = 1") not in outcomes:
                continue  # not run in this domain, or a pre-registered grid not complete
            g = picked[name, d]
            arms = [_ARM.match(a) for a in sorted(g["tied_mrr"].tied)]
            tied = sorted({(float(m[1]), m[2] == "divided") for m in arms if m})
            domains.append({"domain": d, "train": Path(g["data"]).name,
                            "eval": Path(g["eval"]).name, "steps": g["steps"],
                            "seeds": len(g["seeds"]), "tied_text": tied_range(g),
                            "tied": [{"k": k, "scale_bias": b} for k, b in tied]})
        identity = weights_identity(name) if domains else None
        if identity is not None:
            models.append({"condition": name, "block": entry["block"], **identity,
                           "domains": domains})
    chosen = verdict(outcomes, complete)
    return {
        "written_by": "scripts/calibrate.py report, from the committed runs; do not edit",
        "complete": len(complete),
        "needed": MIN_PREREGISTERED,
        "verdict": chosen,
        "ships": shipped(chosen),
        "row_norms": sorted(registry[c]["row_norm_mean"] for c in complete),
        "counts": {rule: {d: [count[rule, d], len(complete)] for d in ("in", "out")}
                   for rule in RULE_NAMES},
        "models": models,
    }


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
    registry_file = ROOT / REGISTRY
    registry = (registry_rows(registry_file.read_text(encoding="utf-8"))
                if registry_file.is_file() else {})
    out += rules_section(groups, registry) + [""]
    evidence = Path(args.evidence)
    evidence.parent.mkdir(parents=True, exist_ok=True)
    evidence.write_text(json.dumps(product_evidence(groups, registry), indent=1) + "\n",
                        encoding="utf-8")
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
        out += ["", _plateau(g), "", _provenance(g), "",
                f"![{name}](calibration/{fig_path.name})", ""]
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
