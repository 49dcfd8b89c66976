"""scripts/calibrate.py: the resumable grid runner and the report regenerated from its JSONL."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def calibrate():
    spec = importlib.util.spec_from_file_location("calibrate", ROOT / "scripts" / "calibrate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["calibrate"] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    from headscope.probe import builtin_probe

    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    path.write_text("".join(json.dumps({"query": p.query, "positive": p.passage}) + "\n"
                            for p in builtin_probe(60).pairs))
    return path


def test_settle_step_by_hand(calibrate):
    # 5 steps at 100 then 20 at 50: the final level is 50; the 10-step rolling mean starting at
    # step i is within 10% (<= 55) once it holds at most one step at 100, i.e. from i = 4.
    assert calibrate.settle_step([100.0] * 5 + [50.0] * 20) == 4
    assert calibrate.settle_step([7.0] * 30) == 0


def _git(root: Path, *args: str) -> str:
    import subprocess

    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=root,
                          capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture()
def grid_repo(calibrate, tiny_checkpoint, tmp_path, monkeypatch):
    """A git repository standing in for headscope's root, with a tiny condition in the registry
    of conditions: (root, condition name)."""
    root = tmp_path / "repo"
    (root / "docs" / "calibration" / "runs").mkdir(parents=True)
    (root / "code.py").write_text("x = 1\n")
    _git(root, "init", "-q")
    _git(root, "add", ".")
    _git(root, "commit", "-qm", "code")
    folder = tiny_checkpoint("bert")
    cond = calibrate.conditions.Condition("tiny-bert-test", False, "tiny test BERT (random)",
                                          lambda cache: folder)
    monkeypatch.setitem(calibrate.conditions.CONDITIONS, cond.name, cond)
    monkeypatch.setattr(calibrate, "ROOT", root)
    return root, cond.name


def test_run_refuses_unregistered_uncommitted_and_dirty(calibrate, grid_repo, pairs_file, capsys):
    root, name = grid_repo
    out = root / "docs" / "calibration" / "runs" / "tiny.jsonl"
    run = ["run", "--condition", name, "--out", str(out)]
    registry = calibrate.REGISTRY.as_posix()
    with pytest.raises(SystemExit) as err:
        calibrate.main(run)
    assert str(err.value) == (
        f"{name} is not in the committed {registry}; run `python scripts/calibrate.py register "
        f"--condition {name}` and commit the registry before its grid.")
    (root / "code.py").write_text("x = 2\n")
    with pytest.raises(SystemExit) as err:
        calibrate.main(["register", "--condition", name, "--data", str(pairs_file)])
    assert str(err.value) == (
        "register refuses a working tree that differs from its commit (code.py); commit or "
        "stash, or run from a worktree pinned at a commit (git worktree add ../grid HEAD).")
    assert not (root / registry).exists()  # refused: nothing written
    _git(root, "checkout", "--", "code.py")
    assert calibrate.main(["register", "--condition", name, "--k", "1,2", "--seeds", "0",
                           "--steps", "2", "--batch-size", "4", "--max-passage-length", "32",
                           "--data", str(pairs_file), "--eval-data", str(pairs_file),
                           "--max-eval-queries", "6", "--recipe-note", "lr checked on k=1"]) == 0
    entry = json.loads((root / registry).read_text())
    assert entry["condition"] == name and entry["block"] == "pre-registered"
    assert entry["recipe_note"] == "lr checked on k=1"
    assert entry["git_commit"] == _git(root, "rev-parse", "HEAD")
    assert entry["grid"]["k"] == [1.0, 2.0] and entry["grid"]["bias"] == [False, True]
    assert set(entry["per_k"]) == {"kept", "divided"}
    assert [b["metric"] for b in entry["bands"]]
    # Registered but not committed: still refused.
    with pytest.raises(SystemExit) as err:
        calibrate.main(run)
    assert str(err.value).startswith(f"{name} is not in the committed {registry};")
    with pytest.raises(SystemExit) as err:  # a registration is never replaced
        calibrate.main(["register", "--condition", name, "--data", str(pairs_file)])
    assert "is already registered" in str(err.value)
    _git(root, "add", registry)
    _git(root, "commit", "-qm", "register")
    (root / "code.py").write_text("x = 3\n")
    with pytest.raises(SystemExit) as err:
        calibrate.main(run)
    assert str(err.value).startswith("run refuses a working tree that differs from its commit "
                                     "(code.py);")
    assert not out.exists()


def test_grid_resumes_and_report_is_regenerated_from_the_lines(calibrate, grid_repo, pairs_file,
                                                               tmp_path, monkeypatch):
    from headscope.splade import train as train_mod

    root, name = grid_repo
    assert calibrate.main(["register", "--condition", name, "--k", "1,2", "--seeds", "0,1",
                           "--steps", "2", "--batch-size", "4", "--max-passage-length", "32",
                           "--data", str(pairs_file), "--eval-data", str(pairs_file),
                           "--max-eval-queries", "6"]) == 0
    _git(root, "add", ".")
    _git(root, "commit", "-qm", "register")
    registered = json.loads((root / calibrate.REGISTRY).read_text())
    out = root / "docs" / "calibration" / "runs" / "tiny.jsonl"
    argv = ["run", "--condition", name, "--bias", "kept", "--out", str(out)]
    calls = []
    real_train = train_mod.train
    monkeypatch.setattr(train_mod, "train",
                        lambda *a, **kw: calls.append(kw) or real_train(*a, **kw))
    assert calibrate.main(argv) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    rec = rows[0]
    assert rec["kind"] == "recommendation" and rec["condition"] == name
    assert rec["recommendation"] == registered["recommendation"]  # registered, not recomputed
    assert rec["git_commit"] == registered["git_commit"]
    runs = rows[1:]
    arms = {calibrate.Arm(2.0, False).name, "k=1"}
    assert {(r["arm"], r["seed"]) for r in runs} == {(a, s) for a in arms for s in (0, 1)}
    first = runs[0]
    assert first["git_commit"] == _git(root, "rev-parse", "HEAD")  # the clean commit that ran
    assert first["config"]["seed"] == first["seed"]
    assert len(first["trained"]["per_query_mrr"]) == first["trained"]["n_queries"] == 6
    assert first["trained"]["serving"]["label"] == "pruned to 2048 terms (serving)"
    assert len(first["telemetry"]["loss"]) == 2
    assert first["step0"]["loss"] == pytest.approx(first["telemetry"]["loss"][0], abs=1e-6)
    assert len(calls) == len(runs)

    # Interrupted: the last run is lost. Resuming recomputes that one only.
    out.write_text("".join(json.dumps(r) + "\n" for r in rows[:-1]))
    calls.clear()
    assert calibrate.main(argv) == 0
    again = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(calls) == 1
    assert again[:-1] == rows[:-1]
    assert again[-1]["key"] == rows[-1]["key"]
    assert again[-1]["trained"]["per_query_mrr"] == rows[-1]["trained"]["per_query_mrr"]

    # One grid is one commit: code that moved on cannot add to this file.
    (root / "code.py").write_text("x = 4\n")
    _git(root, "commit", "-qam", "later code")
    with pytest.raises(SystemExit) as err:
        calibrate.main(argv + ["--k", "4"])
    assert str(err.value) == (
        f"{out} holds runs of {name} made at {first['git_commit'][:7]}, and this code is "
        f"{_git(root, 'rev-parse', 'HEAD')[:7]}; one grid is one commit: finish it from a "
        f"worktree at {first['git_commit'][:7]} or write to another --out.")
    _git(root, "reset", "-q", "--hard", "HEAD~1")

    # One grid is one kind of device: a GPU cannot add to a CPU grid (refused before training).
    calls.clear()
    with pytest.raises(SystemExit) as err:
        calibrate.main(argv + ["--k", "4", "--device", "cuda:1"])
    assert str(err.value) == (
        f"{out} holds runs of {name} trained on cpu, and this run would use --device cuda:1; "
        "one grid is one kind of device: pass --device cpu or write to another --out.")
    assert calls == []

    # --max-runs 0 starts nothing new.
    calls.clear()
    assert calibrate.main(argv + ["--max-runs", "0"]) == 0
    assert calls == []

    # The report is a function of the lines alone: same lines, same document.
    md = tmp_path / "calibration.md"
    md.write_text("# Hand-written head\n\n<!-- BEGIN GENERATED by scripts/calibrate.py report "
                  "-->\nold\n<!-- END GENERATED -->\n\nHand-written tail.\n")
    report = ["report", "--runs", str(out.parent), "--md", str(md), "--figures",
              str(tmp_path / "fig")]
    assert calibrate.main(report) == 0
    text = md.read_text()
    assert text.startswith("# Hand-written head\n") and text.endswith("Hand-written tail.\n")
    assert "\nold\n" not in text
    for arm in arms:
        assert f"| {arm} " in text or f"| **{arm}** (recommended) " in text
    # The table's per-seed MRR@10 are the lines' values.
    k1 = sorted((r for r in again if r.get("arm") == "k=1"), key=lambda r: r["seed"])
    assert " / ".join(f"{r['trained']['mrr_at_10']:.3f}" for r in k1) in text
    assert "**Verdict:** recommended k = " in text
    assert (tmp_path / "fig" / "tiny-bert-test-2steps-pairs.jsonl-pairs.jsonl.png").is_file()
    assert calibrate.main(report) == 0
    assert md.read_text() == text


# ------------------------------------------------------------------ inspections and the bands


@pytest.mark.parametrize(("where", "expected"), [(None, (4.0, False)), ("bias", (16.0, True))])
def test_replay_gives_what_inspect_recommends(calibrate, bert_tiny_dir, where, expected):
    """The band fit replays the bands rule from recorded statistics; with the default bands it
    must decide what `inspect --rule bands` decided, including the bias fallback of the bias
    simulation. The inspection line records the bands whatever the shipped default rule is
    (registration records the bands' decision)."""
    from headscope import checkpoint, probe, simulate
    from headscope.recommend import DEFAULT_BANDS

    loaded = checkpoint.load(checkpoint.resolve(str(bert_tiny_dir)))
    if where is not None:
        texts = [p.passage for p in probe.builtin_probe(32).pairs]
        simulate.make_dense_variant(loaded.model, loaded.tokenizer, texts, where=where)
    row = calibrate.inspection("test", loaded, "label", "abc", probe.ProbeConfig(n_pairs=32))
    rec = row["recommendation"]
    assert (rec["k"], rec["scale_bias"], rec["rule"]) == (*expected, "bands")
    assert set(row["per_k"]) == {"kept", "divided"} and row["has_bias"]
    assert [d["k"] for d in row["per_k"]["kept"]] == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
    assert calibrate.replay(row, DEFAULT_BANDS) == expected
    # The line is JSON (no NaN): it is appended as it is.
    json.dumps(row, allow_nan=False)


def _case(calibrate, name, losses, tied):
    """A condition whose per-k start losses are `losses` (k = 1, 4, 16; every other statistic
    inside its default band) and whose tied-with-best set is `tied` among the three arms."""
    from headscope import evidence

    base = {"logit_p01": -5.0, "logit_p50": -2.0, "logit_p99": 1.0, "frac_positive": 0.01,
            "term_weight_mean": 0.5, "term_weight_max": 2.0, "share_above_5": 0.0,
            "active_query": 20.0, "active_passage": 100.0, "active_query_share": 0.001,
            "active_passage_share": 0.003, "cosine_unrelated": 0.5, "score_pos": 10.0,
            "score_neg": 5.0}
    stats = [dict(base, k=k, start_loss=loss) for k, loss in zip((1.0, 4.0, 16.0), losses,
                                                                  strict=True)]
    ins = {"condition": name, "has_bias": True, "per_k": {"kept": stats, "divided": stats}}
    arms = ["k=1", "k=4/bias kept", "k=16/bias kept"]
    tied_set = evidence.TiedSet(best=tied[0], means={}, tied=tuple(tied), differences={})
    return ins, {"condition": name, "arms": arms, "tied_mrr": tied_set, "seeds": [0, 1, 2]}


def test_band_fit_and_leave_one_out_by_hand(calibrate):
    DEFAULT_BANDS = calibrate.prior_bands()  # every fit starts from the pre-calibration bands
    start = next(b.high for b in DEFAULT_BANDS if b.metric == "start_loss")
    assert start == 150.0  # the hand computation below starts from this bound
    a = _case(calibrate, "A", (500.0, 100.0, 10.0), ["k=4/bias kept"])
    b = _case(calibrate, "B", (200.0, 60.0, 5.0), ["k=1"])
    # Default bands: A passes from k = 4 (tied), B from k = 4 too (worse: only k = 1 is tied).
    assert calibrate._outcome(calibrate.replay(a[0], DEFAULT_BANDS), a[1]) == "tied"
    assert calibrate._outcome(calibrate.replay(b[0], DEFAULT_BANDS), b[1]) == "worse"

    def bound(bands):
        return next(x.high for x in bands if x.metric == "start_loss")

    # Both: the bound must admit B's 200 at k = 1 and refuse A's 500: the only midpoint
    # between them is sqrt(200 * 500).
    both = calibrate.fit_bands([a, b], DEFAULT_BANDS)
    assert bound(both) == pytest.approx((200 * 500) ** 0.5)
    assert [calibrate.replay(c[0], both) for c in (a, b)] == [(4.0, False), (1.0, False)]
    # Other bounds had nothing to fit on (one recorded value each): unchanged.
    assert [x for x in both if x.metric != "start_loss"] == \
        [x for x in DEFAULT_BANDS if x.metric != "start_loss"]
    # Fitted on B alone: B's values are 5, 60, 200; admitting 200 needs a bound above it, and
    # the only candidate there is twice the largest, 400. A left out is then decided right.
    only_b = calibrate.fit_bands([b], DEFAULT_BANDS)
    assert bound(only_b) == 400.0
    assert calibrate.replay(a[0], only_b) == (4.0, False)
    # Fitted on A alone: the default 150 already decides A right and stays; B is then wrong.
    assert bound(calibrate.fit_bands([a], DEFAULT_BANDS)) == 150.0
    # The page's section says so.
    text = "\n".join(calibrate.band_section_from_cases({"A": a, "B": b}))
    assert "| A | {k=4/bias kept} | k=4/bias kept | tied | k=4/bias kept | tied | " in text
    assert "| B | {k=1} | k=4/bias kept | worse | k=4/bias kept | worse | " in text
    assert ("the bands before calibration (fitted on none of these runs) **1 of 2**; bands "
            "fitted with the condition left out **1 of 2**") in text
    assert "- Fitted on every condition: share_above_5 at most 0.01; start_loss at most 316" \
        in text


def test_band_fit_may_close_an_open_side(calibrate):
    DEFAULT_BANDS = calibrate.prior_bands()
    assert next(b.low for b in DEFAULT_BANDS if b.metric == "start_loss") is None
    # An already-trained head: loss 0.1 at k = 1 learns nothing; k = 4 was the best arm.
    c = _case(calibrate, "C", (0.1, 2.5, 2.8), ["k=4/bias kept"])
    assert calibrate.replay(c[0], DEFAULT_BANDS) == (1.0, False)
    fitted = calibrate.fit_bands([c], DEFAULT_BANDS)
    band = next(b for b in fitted if b.metric == "start_loss")
    # Candidates for the low side: 0.05, sqrt(0.1 * 2.5) = 0.5, sqrt(2.5 * 2.8), 5.6; only 0.5
    # puts k = 4 first (2.6458 skips to k = 16, 0.05 keeps k = 1).
    assert (band.low, band.high) == (pytest.approx(0.5), 150.0)
    assert calibrate.replay(c[0], fitted) == (4.0, False)


def _run_row(condition: str, n_queries: int, data: str = "boolq", steps: int = 300) -> dict:
    return {"key": f"{condition}|k=1|seed=0|steps={steps}|data={data}|eval={data}",
            "kind": "run", "condition": condition, "data": data, "eval": data,
            "config": {"steps": steps}, "zero_shot": {"n_queries": n_queries}}


def test_a_grid_file_never_mixes_two_evaluation_sizes(calibrate, tmp_path):
    """The run keys do not hold the number of held-out queries: resuming a file with another
    --max-eval-queries is refused, naming the number to pass; another condition, training set
    or the same number is accepted; and the analysis never pairs runs of two sizes."""
    path = tmp_path / "runs.jsonl"
    path.write_text(json.dumps(_run_row("matched", 400)) + "\n"
                    + json.dumps({"key": "matched|recommendation", "kind": "recommendation"})
                    + "\n")
    with pytest.raises(SystemExit) as err:
        calibrate.check_eval_size(path, "matched", "boolq", "boolq", 1000)
    assert str(err.value) == (f"{path} holds runs of matched evaluated on 400 held-out queries, "
                              "and this run would evaluate 1000; pass --max-eval-queries 400 or "
                              "another --out.")
    calibrate.check_eval_size(path, "matched", "boolq", "boolq", 400)
    calibrate.check_eval_size(path, "other", "boolq", "boolq", 1000)
    calibrate.check_eval_size(path, "matched", "msmarco", "msmarco", 1000)
    calibrate.check_eval_size(tmp_path / "new.jsonl", "matched", "boolq", "boolq", 1000)
    assert calibrate._group_key(_run_row("matched", 400)) != calibrate._group_key(
        _run_row("matched", 1000))


def test_audit_finds_runs_older_than_their_registration(calibrate, grid_repo, pairs_file):
    """The history check on a repository where it must fail: runs made before the registry
    entry was committed, then runs from two commits in one grid."""
    root, name = grid_repo
    runs = root / calibrate.RUNS_DIR / "tiny.jsonl"
    head = _git(root, "rev-parse", "HEAD")

    def run_line(commit: str, seed: int) -> str:
        return json.dumps({"key": f"{name}|k=1|seed={seed}", "kind": "run", "condition": name,
                           "config": {"steps": 2}, "data": "d", "git_commit": commit}) + "\n"

    runs.write_text(run_line(head, 0))  # a run from the commit before the registration
    (root / calibrate.REGISTRY).write_text(json.dumps(
        {"condition": name, "block": "pre-registered", "git_commit": head}) + "\n")
    _git(root, "add", ".")
    _git(root, "commit", "-qm", "register, with a run already made")
    assert calibrate.audit_registrations() == [
        f"{name}: runs from {head[:7]}, whose registry did not hold the condition's entry as "
        "it is now."]
    later = _git(root, "rev-parse", "HEAD")
    runs.write_text(run_line(later, 0) + run_line("f" * 40, 1))
    assert calibrate.audit_registrations() == [
        f"{name}: the 2-step grid on d mixes commits {later[:7]}, fffffff.",
        f"{name}: runs from ffffffffffff, which is not a clean commit of this history."]
    runs.write_text(run_line(later, 0) + run_line(later, 1))
    assert calibrate.audit_registrations() == []


def test_every_preregistered_condition_was_committed_before_its_runs(calibrate):
    """The committed evidence, checked from git history (docs/calibration/decision-rule.md)."""
    assert calibrate.audit_registrations() == []


def _entry(k: float, divided: bool, row_norm: float, has_bias: bool = True,
           block: str = "pre-registered") -> dict:
    return {"recommendation": {"k": k, "scale_bias": divided}, "row_norm_mean": row_norm,
            "has_bias": has_bias, "block": block,
            "grid": {"k": [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0], "bias": [False, True],
                     "seeds": [0, 1, 2]}}


def test_rule_decisions_by_hand(calibrate):
    large = calibrate.rule_decisions(_entry(32.0, True, 2.553))
    assert tuple(large) == calibrate.RULE_NAMES  # the table's columns are the rules decided
    assert large["bands (shipped)"] == (32.0, True)
    assert large["paper"] == (16.0, False)  # above 1.5: the paper's k = 16, bias kept
    assert large["k = 8, bias divided"] == (8.0, True)
    small = calibrate.rule_decisions(_entry(4.0, False, 0.682, has_bias=False))
    assert small["paper"] == (1.0, False)
    # without an output bias "divided" is the same arm as "kept"
    assert small["k = 16, bias divided"] == small["k = 16, bias kept"] == (16.0, False)
    assert calibrate.rule_decisions(_entry(1.0, True, 0.5))["bands (shipped)"] == (1.0, False)


def _group(condition: str, eval_name: str, arms: list[str], tied: list[str]):
    from types import SimpleNamespace

    return {"condition": condition, "data": "boolq", "eval": eval_name, "seeds": [0, 1, 2],
            "arms": arms, "steps": 300, "by_arm": {a: {0: {}, 1: {}, 2: {}} for a in ARMS},
            "tied_mrr": SimpleNamespace(tied=tuple(tied), best=tied[0])}


ARMS = ["k=1", *(f"k={k}/bias {b}" for k in (2, 4, 8, 16, 32, 64)
                 for b in ("kept", "divided"))]


def test_outcomes_and_verdict_by_hand(calibrate):
    names = ["a", "b", "c", "d"]
    registry = {n: _entry(4.0, True, 0.7) for n in names}
    # In domain the tied sets hold k=4/bias divided everywhere and k=1 nowhere; out of domain
    # k=1 is tied everywhere and k=4/bias divided only for "a".
    groups = [_group(n, "boolq", ARMS, ["k=4/bias divided", "k=8/bias divided"]) for n in names]
    groups += [_group(n, "sciq", ARMS, ["k=1"] + (["k=4/bias divided"] if n == "a" else []))
               for n in names]
    outcomes = calibrate.rule_outcomes(groups, registry)
    assert outcomes[("pre-registered", "a", "in", "bands (shipped)")] == "tied"
    assert outcomes[("pre-registered", "b", "out", "bands (shipped)")] == "worse"
    assert outcomes[("pre-registered", "b", "out", "paper")] == "tied"  # k = 1 below 1.5
    # bands: 4 in, 1 out; k = 1: 0 in, 4 out. The constant k = 4 with the bias divided chooses
    # bands' own arm on every condition, so it does as well in both domains and, being simpler,
    # ships.
    verdict = calibrate.decide(outcomes, names)
    assert verdict.endswith("ships: **k = 4, bias divided** (4 in domain, 1 out of domain, "
                            "of 4).")
    # Fewer than four complete conditions: no verdict.
    assert calibrate.decide(outcomes, names[:3]).startswith(
        "No verdict yet: the pre-registered block has 3 condition(s)")
    # A bands rule that is strictly best in both domains ships: its k differs per condition,
    # and each condition's tied set is its own arm, so no constant matches more than one.
    ks = dict(zip(names, (2.0, 4.0, 8.0, 32.0), strict=True))
    registry = {n: _entry(ks[n], False, 0.7) for n in names}
    groups = [_group(n, e, ARMS, [f"k={ks[n]:g}/bias kept"]) for n in names
              for e in ("boolq", "sciq")]
    outcomes = calibrate.rule_outcomes(groups, registry)
    assert calibrate.decide(outcomes, names) == ("The bands rule beats every other rule in both "
                                                 "domains: it ships as the default.")
    # Beaten in domain by a constant that is not as good out of domain, and no simpler rule as
    # good in both: the largest total count ships (decision-rule.md, step 3), and the words say
    # which step chose it.
    outcomes = {("pre-registered", n, d, r): "worse" for n in names for d in ("in", "out")
                for r in calibrate.RULE_NAMES}
    for n in names:
        outcomes["pre-registered", n, "out", "bands (shipped)"] = "tied"
    outcomes["pre-registered", "a", "in", "bands (shipped)"] = "tied"
    for n, d in (("a", "in"), ("b", "in"), ("a", "out")):
        outcomes["pre-registered", n, d, "k = 16, bias divided"] = "tied"
    assert calibrate.verdict(outcomes, names) == "bands (shipped)"
    assert calibrate.decide(outcomes, names) == (
        "The bands rule does not beat every other rule in both domains, and no simpler rule does "
        "as well as it in both; the rule with the largest total count (in + out) ships: **the "
        "bands rule** (1 in domain, 4 out of domain, of 4).")
    # A constant arm that was not run is "not run", not a miss.
    short = [_group("a", "boolq", ["k=1", "k=8/bias kept"], ["k=8/bias kept"])]
    assert calibrate.rule_outcomes(short, {"a": _entry(8.0, False, 0.7)})[
        ("pre-registered", "a", "in", "k = 4, bias kept")] == "not run"


def test_tied_range_by_hand(calibrate):
    assert calibrate.tied_range(_group("a", "boolq", ARMS, ["k=1", "k=4/bias kept"])) == \
        "1-4 (bias kept)"
    assert calibrate.tied_range(_group("a", "boolq", ARMS, ["k=16/bias divided",
                                                             "k=8/bias kept"])) == \
        "8-16 (bias divided or kept)"
    assert calibrate.tied_range(_group("a", "boolq", ARMS, ["k=1"])) == "1"


def test_a_group_keeps_the_recommendation_of_its_own_file(calibrate):
    """A later file that adds one arm to an older grid does not rewrite which recommendation
    the grid's runs started from."""
    old = {"condition": "c", "_file": "grid.jsonl", "recommendation": {"k": 8.0}}
    new = {"condition": "c", "_file": "grid-k64.jsonl", "recommendation": {"k": 32.0}}
    recs = {("c", "grid.jsonl"): old, ("c", "grid-k64.jsonl"): new}
    runs = [{"condition": "c", "_file": "grid.jsonl"}] * 5 + [
        {"condition": "c", "_file": "grid-k64.jsonl"}] * 3
    assert calibrate._group_recommendation(recs, runs) is old
    assert calibrate._group_recommendation(recs, runs[5:]) is new
    assert calibrate._group_recommendation({}, runs) is None


def test_a_preregistered_grid_is_judged_only_when_complete(calibrate):
    entry = _entry(4.0, False, 0.7) | {"grid": {"k": [1.0, 4.0], "bias": [False, True],
                                                "seeds": [0, 1, 2]}}
    g = _group("a", "boolq", ["k=1", "k=4/bias kept"], ["k=4/bias kept"])
    g["by_arm"] = {"k=1": {0: {}, 1: {}, 2: {}}, "k=4/bias kept": {0: {}, 1: {}, 2: {}}}
    assert calibrate.grid_progress(None, entry) == (0, 9)  # registered, nothing run
    entry["block"] = "pre-registered"
    entry["grid"] |= {"data": "boolq", "evals": ["boolq", "sciq"]}
    section = calibrate.rules_section([], {"a": entry})
    assert ("Registered, grid not complete (not judged until it is): a (in domain 0 of 9 "
            "trainings; out of domain 0 of 9 trainings).") in section
    assert calibrate.grid_progress(g, entry) == (6, 9)  # k=4/bias divided not run yet
    assert calibrate.rule_outcomes([g], {"a": entry}) == {}
    g["by_arm"]["k=4/bias divided"] = {0: {}, 1: {}, 2: {}}
    assert calibrate.grid_progress(g, entry) == (9, 9)
    assert calibrate.rule_outcomes([g], {"a": entry})[
        ("pre-registered", "a", "in", "bands (shipped)")] == "tied"
