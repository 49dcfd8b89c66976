"""HeadscopeCallback in real SparseEncoderTrainer runs on a tiny BERT (CPU, a few steps each),
and its statistics against a naive loop over the same probe batch."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

pytest.importorskip("sentence_transformers.sparse_encoder")
pytest.importorskip("datasets")  # SparseEncoderTrainer needs datasets and accelerate
pytest.importorskip("accelerate")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach the Hub, whatever the library tries

from tiny_models import VOCAB, save_tiny  # noqa: E402

from headscope.errors import InputError  # noqa: E402
from headscope.probe import builtin_probe  # noqa: E402
from headscope.splade.detectors import COLLAPSED, Thresholds, verdict  # noqa: E402
from headscope.splade.telemetry import StepRecord, read_telemetry  # noqa: E402
from headscope.trainer_callback import (  # noqa: E402
    LOGGED_FIELDS,
    CallbackConfig,
    HeadscopeCallback,
    ProbeRecord,
    measure,
    probe_stats,
)

PROBE = builtin_probe(8)
QUERIES = [p.query for p in PROBE.pairs]
PASSAGES = [p.passage for p in PROBE.pairs]
KEYS = [f"headscope/{name}" for name in LOGGED_FIELDS]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """A tiny model gains nothing from intra-op threads, and on a shared 2-core machine their
    synchronisation costs seconds per backward pass."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny("bert", tmp_path_factory.mktemp("tiny-bert-sparse"))


def _encoder(path):
    from sentence_transformers.sparse_encoder import SparseEncoder
    from sentence_transformers.sparse_encoder.modules import SpladePooling, Transformer

    mlm = Transformer(str(path), transformer_task="fill-mask")  # ST 6: MLMTransformer deprecated
    return SparseEncoder(modules=[mlm, SpladePooling("max")], device="cpu")


def _train_data():
    from datasets import Dataset

    pairs = builtin_probe(24).pairs[8:]  # 16 pairs, none of them in the probe
    return Dataset.from_dict({"query": [p.query for p in pairs],
                              "positive": [p.passage for p in pairs]})


class LogSpy:
    """Stands where a reporting integration (wandb, tensorboard) stands: after our callback."""

    def __init__(self):
        from transformers import TrainerCallback

        spy = self

        class _Spy(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                spy.logs.append((state.global_step, dict(logs)))

        self.logs: list[tuple[int, dict]] = []
        self.callback = _Spy()


def _train(path, out, callback, *, steps=6, logging_steps=3, spy=None, seed=0):
    from sentence_transformers.sparse_encoder import (
        SparseEncoderTrainer,
        SparseEncoderTrainingArguments,
    )
    from sentence_transformers.sparse_encoder.losses import (
        SparseMultipleNegativesRankingLoss,
        SpladeLoss,
    )

    encoder = _encoder(path)
    loss = SpladeLoss(encoder, SparseMultipleNegativesRankingLoss(encoder),
                      query_regularizer_weight=5e-5, document_regularizer_weight=3e-5)
    args = SparseEncoderTrainingArguments(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=4,
        logging_steps=logging_steps, save_strategy="no", report_to="none", use_cpu=True,
        seed=seed, data_seed=seed, disable_tqdm=True, learning_rate=1e-3,
    )
    trainer = SparseEncoderTrainer(model=encoder, args=args, train_dataset=_train_data(),
                                   loss=loss, callbacks=[spy.callback] if spy else None)
    if callback is not None:
        callback.attach(trainer)
    trainer.train()
    return trainer, encoder


@pytest.fixture(scope="module")
def run(tiny_dir, tmp_path_factory):
    """6 steps, probe every 2, the Trainer logging every 3 on its own."""
    out = tmp_path_factory.mktemp("run")
    callback = HeadscopeCallback(QUERIES, PASSAGES, every_n_steps=2, jsonl=out / "tel.jsonl")
    spy = LogSpy()
    trainer, encoder = _train(tiny_dir, out, callback, spy=spy)
    return callback, trainer, spy, out / "tel.jsonl"


# ------------------------------------------------------------------------------ a real run


def test_records_at_probe_steps_with_sane_values(run):
    callback, trainer, _, _ = run
    assert trainer.state.global_step == 6
    assert [r.step for r in callback.records] == [2, 4, 6]
    assert callback.vocab_size == VOCAB
    for r in callback.records:
        assert isinstance(r, ProbeRecord) and isinstance(r, StepRecord)
        assert 0 <= r.active_query <= VOCAB and 0 <= r.active_passage <= VOCAB
        assert 0 < r.term_weight_mean <= r.term_weight_max
        for value in (r.score_pos, r.score_neg, r.flops_q, r.flops_d, r.loss, r.ranking_loss,
                      r.grad_norm, r.lr, r.weight_q, r.weight_d):
            assert math.isfinite(value)
        assert r.loss > 0 and r.loss_finite and r.grad_finite


def test_records_carry_the_trainer_logs_of_their_step(run):
    callback, trainer, _, _ = run
    train_logs = {h["step"]: h for h in trainer.state.log_history if "loss" in h}
    # Probe steps are logged (force_log) besides the Trainer's own logging_steps=3.
    assert sorted(train_logs) == [2, 3, 4, 6]
    for r in callback.records:
        log = train_logs[r.step]
        assert r.loss == log["loss"] and r.ranking_loss == log["base_loss"]
        assert r.grad_norm == log["grad_norm"] and r.lr == log["learning_rate"]


def test_logs_carry_headscope_keys_for_later_callbacks(run):
    callback, trainer, spy, _ = run
    order = trainer.callback_handler.callbacks
    assert order.index(callback) < order.index(spy.callback)
    seen = {step: logs for step, logs in spy.logs if "loss" in logs}
    by_step = {r.step: r for r in callback.records}
    for step, logs in seen.items():
        if step in by_step:
            assert {k: logs[k] for k in KEYS} == {
                f"headscope/{n}": getattr(by_step[step], n) for n in LOGGED_FIELDS}
        else:
            assert not any(k in logs for k in KEYS)  # step 3: the Trainer's own log only
    for h in trainer.state.log_history:  # the saved history gets them too
        assert all(k in h for k in KEYS) == (h["step"] in by_step and "loss" in h)


def test_jsonl_lines_parse_and_read_back(run):
    callback, _, _, path = run
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [row["step"] for row in rows] == [2, 4, 6]
    assert {"term_weight_mean", "term_weight_max"} <= set(rows[0])
    (back,) = read_telemetry(path).values()  # ProbeRecords, NaN fields included
    assert len(back) == len(callback.records)
    for got, want in zip(back, callback.records, strict=True):
        assert isinstance(got, ProbeRecord) and isinstance(got, StepRecord)
        for name in ProbeRecord.__dataclass_fields__:
            a, b = getattr(got, name), getattr(want, name)
            assert a == b or (math.isnan(a) and math.isnan(b)), name


def test_verdict_runs_the_detectors_and_does_not_stop_by_default(run):
    callback, trainer, _, _ = run
    assert callback.verdict() == verdict(callback.records, VOCAB)
    assert callback.stopped_at is None and trainer.state.global_step == 6


def test_stop_on_collapse_stops_when_the_evidence_persists(tiny_dir, tmp_path, caplog):
    # Dead collapse fires when fewer than 1e9 terms are active: at every probe.
    callback = HeadscopeCallback(QUERIES, PASSAGES, every_n_steps=1, stop_on_collapse=True,
                                 thresholds=Thresholds(dead_active=1e9))
    with caplog.at_level("WARNING", logger="headscope.trainer_callback"):
        trainer, _ = _train(tiny_dir, tmp_path, callback)
    assert trainer.state.global_step == 3  # the third consecutive probe (stop_patience = 3)
    assert [r.step for r in callback.records] == [1, 2, 3] and callback.stopped_at == 3
    assert callback.verdict().status == COLLAPSED
    assert callback.stop_reason.startswith(
        "headscope stopped training at step 3: collapse evidence at 3 consecutive probes (steps "
        "1, 2, 3; stop_patience = 3). Latest: ")
    assert "queries keep" in callback.stop_reason and "the representation died" in \
        callback.stop_reason
    ours = [r.getMessage() for r in caplog.records if r.name == "headscope.trainer_callback"]
    assert ours == [callback.stop_reason]


def _drive(callback, stats_by_step, steps, logs_by_step=None):
    """Feed the callback's Trainer events by hand, with made-up probe statistics per step (so
    a single bad probe can be placed exactly); returns the step training stopped at."""
    from unittest import mock

    from transformers import TrainerControl, TrainerState

    import headscope.trainer_callback as tc

    control = TrainerControl()
    for step in range(1, steps + 1):
        state = TrainerState(global_step=step, is_world_process_zero=True)
        with mock.patch.object(tc, "measure", return_value=stats_by_step(step)):
            callback.on_step_end(None, state, control, model=object())
        callback.on_log(None, state, control, logs=(logs_by_step or {}).get(step, {"loss": 1.0}))
        if control.should_training_stop:
            return step
    return None


def _stats(active: float):
    from headscope.trainer_callback import ProbeStats

    return ProbeStats(vocab_size=VOCAB, active_query=active, active_passage=active,
                      term_weight_mean=0.5, term_weight_max=2.0, score_pos=5.0, score_neg=1.0,
                      flops_q=1.0, flops_d=1.0)


def test_a_single_bad_probe_does_not_stop(tmp_path):
    # One non-finite loss at step 3, then healthy probes: the run goes on.
    callback = HeadscopeCallback(QUERIES, PASSAGES, every_n_steps=1, stop_on_collapse=True)
    logs = {3: {"loss": math.nan}}
    assert _drive(callback, lambda s: _stats(30.0), 8, logs) is None
    assert callback.stopped_at is None and callback.stop_reason is None
    assert callback.verdict().status == COLLAPSED  # the verdict still reports it
    # A non-finite loss at three consecutive probes stops at the third.
    callback = HeadscopeCallback(QUERIES, PASSAGES, every_n_steps=1, stop_on_collapse=True)
    logs = {s: {"loss": math.inf} for s in (3, 4, 5)}
    assert _drive(callback, lambda s: _stats(30.0), 8, logs) == 5
    assert "Latest: loss is not finite at step 5." in callback.stop_reason


def test_dead_probes_must_be_consecutive(tmp_path):
    # tail = 1: each probe is judged on itself. Dead at 2 and 4, alive between: no stop.
    th = Thresholds(tail=1)
    callback = HeadscopeCallback(QUERIES, PASSAGES, every_n_steps=1, stop_on_collapse=True,
                                 thresholds=th, stop_patience=2)
    dead = {2, 4, 7, 8}
    assert _drive(callback, lambda s: _stats(0.0 if s in dead else 30.0), 10) == 8
    assert callback.stop_reason.startswith("headscope stopped training at step 8: collapse "
                                           "evidence at 2 consecutive probes (steps 7, 8; "
                                           "stop_patience = 2).")
    with pytest.raises(InputError, match="stop_patience must be an integer >= 1"):
        CallbackConfig(stop_patience=0)


def test_force_log_off_keeps_logging_steps_and_leaves_losses_nan(tiny_dir, tmp_path):
    # Nothing collapses with these thresholds, so stop_on_collapse lets the run finish.
    never = Thresholds(dense_share=2.0, dead_active=0.0)
    callback = HeadscopeCallback(QUERIES, PASSAGES, every_n_steps=2, force_log=False,
                                 stop_on_collapse=True, thresholds=never,
                                 jsonl=tmp_path / "tel.jsonl")
    trainer, _ = _train(tiny_dir, tmp_path, callback, steps=4, logging_steps=4)
    assert trainer.state.global_step == 4 and callback.stopped_at is None
    first, second = callback.records
    assert first.step == 2 and math.isnan(first.loss) and math.isnan(first.grad_norm)
    assert first.loss_finite and first.grad_finite  # unknown is not non-finite
    assert second.step == 4 and math.isfinite(second.loss)
    train_logs = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["step"] for h in train_logs] == [4]
    (back,) = read_telemetry(tmp_path / "tel.jsonl").values()  # NaN survives as null
    assert math.isnan(back[0].loss) and back[1].loss == second.loss


def test_probing_does_not_change_training(tiny_dir, tmp_path):
    callback = HeadscopeCallback(QUERIES, PASSAGES, every_n_steps=1)
    _, with_probe = _train(tiny_dir, tmp_path / "a", callback, steps=3)
    _, without = _train(tiny_dir, tmp_path / "b", None, steps=3)
    a, b = with_probe.state_dict(), without.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------ statistics


def _naive_weights(encoder, texts):
    """SPLADE weights by hand: the masked LM's logits, then per text and term the max over its
    real tokens of log(1 + relu(logit))."""
    mlm = encoder[0].auto_model
    enc = encoder.tokenizer(texts, padding=True, truncation=True,
                            max_length=encoder.max_seq_length, return_tensors="pt")
    with torch.no_grad():
        logits = mlm(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
    rows = []
    for b in range(len(texts)):
        keep = [t for t in range(logits.shape[1]) if enc["attention_mask"][b, t]]
        rows.append([max(math.log1p(max(float(logits[b, t, j]), 0.0)) for t in keep)
                     for j in range(logits.shape[2])])
    return rows  # B lists of V floats


def test_measure_matches_a_naive_loop(tiny_dir):
    encoder = _encoder(tiny_dir)
    encoder.train()
    encoder.max_active_dims = 3
    stats = measure(encoder, QUERIES, PASSAGES)
    assert encoder.training and encoder[0].auto_model.training  # mode restored
    assert encoder.max_active_dims == 3  # restored, and not applied (raw weights measured)

    encoder.eval()  # no dropout in the reference either
    q, d = _naive_weights(encoder, QUERIES), _naive_weights(encoder, PASSAGES)
    n, v = len(q), len(q[0])
    dot = [[sum(q[i][j] * d[k][j] for j in range(v)) for k in range(n)] for i in range(n)]
    active_d = [w for row in d for w in row if w > 0]
    want = {
        "vocab_size": v,
        "active_query": sum(sum(w > 0 for w in row) for row in q) / n,
        "active_passage": len(active_d) / n,
        "term_weight_mean": sum(active_d) / len(active_d),
        "term_weight_max": max(active_d),
        "score_pos": sum(dot[i][i] for i in range(n)) / n,
        "score_neg": sum(dot[i][k] for i in range(n) for k in range(n) if i != k) / (n * n - n),
        "flops_q": sum((sum(row[j] for row in q) / n) ** 2 for j in range(v)),
        "flops_d": sum((sum(row[j] for row in d) / n) ** 2 for j in range(v)),
    }
    assert stats.active_passage > 3
    for name, value in want.items():
        assert getattr(stats, name) == pytest.approx(value, rel=1e-4, abs=1e-5), name


def test_probe_stats_on_a_hand_example():
    q = torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 0.0]])  # (2, 3)
    d = torch.tensor([[3.0, 0.0, 0.0], [0.0, 1.0, 4.0]])  # (2, 3)
    s = probe_stats(q, d)
    assert (s.vocab_size, s.active_query, s.active_passage) == (3, 1.0, 1.5)
    assert s.term_weight_mean == pytest.approx(8 / 3) and s.term_weight_max == 4.0
    assert (s.score_pos, s.score_neg) == (1.5, 4.0)  # q0.d0 = 3, q1.d1 = 0; q0.d1 = 8, q1.d0 = 0
    assert s.flops_q == pytest.approx(0.25 + 0 + 1) and s.flops_d == pytest.approx(2.25 + 0.25 + 4)
    dead = probe_stats(torch.zeros(2, 3), torch.zeros(2, 3))
    assert math.isnan(dead.term_weight_mean) and dead.active_passage == 0


# ------------------------------------------------------------------------------ contract


def test_only_the_main_process_writes(tiny_dir, tmp_path):
    from transformers import TrainerControl, TrainerState, TrainingArguments

    path = tmp_path / "tel.jsonl"
    callback = HeadscopeCallback(QUERIES, PASSAGES, every_n_steps=2, jsonl=path)
    state = TrainerState(global_step=2, is_world_process_zero=False)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    control = callback.on_step_end(args, state, TrainerControl(), model=_encoder(tiny_dir))
    assert control.should_log
    callback.on_log(args, state, control, logs={"loss": 1.0})
    callback.on_train_end(args, state, control)
    assert [r.step for r in callback.records] == [2] and callback.records[0].loss == 1.0
    assert not path.exists()


_BROADCAST = """
import os, sys
import torch.distributed as dist
import torch.multiprocessing as mp

def worker(rank, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    from headscope.trainer_callback import _main_process_says
    got = _main_process_says(rank == 0)  # only the main process sees a collapse
    with open(os.path.join(out, f"rank{rank}"), "w") as fh:
        fh.write(str(got))
    dist.destroy_process_group()

if __name__ == "__main__":
    mp.spawn(worker, args=(int(sys.argv[1]), sys.argv[2]), nprocs=2)
"""


@pytest.mark.slow  # over 20 s: two spawned processes each import torch and transformers
def test_every_rank_follows_the_main_process_verdict(tmp_path):
    import socket
    import subprocess
    import sys
    from pathlib import Path

    with socket.socket() as s:  # a free port for the two-process gloo group
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "broadcast.py"
    script.write_text(_BROADCAST, encoding="utf-8")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(script), str(port), str(tmp_path)], env=env,
                   check=True, timeout=300)
    assert [(tmp_path / f"rank{r}").read_text() for r in (0, 1)] == ["True", "True"]


def test_invalid_options_are_refused(tmp_path):
    with pytest.raises(InputError, match="every_n_steps must be an integer >= 1"):
        HeadscopeCallback(QUERIES, PASSAGES, every_n_steps=0)
    with pytest.raises(InputError, match="Unknown HeadscopeCallback option"):
        HeadscopeCallback(QUERIES, PASSAGES, every_n_step=2)
    with pytest.raises(InputError, match="as many queries as passages"):
        HeadscopeCallback(QUERIES, PASSAGES[:-1])
    with pytest.raises(InputError, match="at least 2"):
        HeadscopeCallback(QUERIES[:1], PASSAGES[:1])
    existing = tmp_path / "tel.jsonl"
    existing.write_text("{}\n", encoding="utf-8")
    with pytest.raises(InputError) as err:
        HeadscopeCallback(QUERIES, PASSAGES, jsonl=existing)
    assert str(err.value) == (f"Telemetry file {existing} already exists; pass overwrite=True "
                              "or choose another jsonl path.")
    HeadscopeCallback(QUERIES, PASSAGES, jsonl=existing, overwrite=True)
    config = CallbackConfig(every_n_steps=3)
    assert HeadscopeCallback.from_probe(PROBE, config).config == config


def test_measure_refuses_a_model_without_encode():
    with pytest.raises(InputError, match="needs a sentence-transformers SparseEncoder"):
        measure(torch.nn.Linear(2, 2), QUERIES, PASSAGES)


# --------------------------------------------------------------------------------------------
# multi-process manners


def test_unused_parameters_names_what_the_output_does_not_reach(tiny_dir):
    """None on the plain SPLADE encoder, none after an untie rescale (the family's bias the
    decoder no longer reads is frozen), and exactly an added parameter that nothing reads; the
    gradients, the mode and the random state are as before."""
    from headscope.rescale import RescaleSpec, rescale_model
    from headscope.trainer_callback import unused_parameters

    encoder = _encoder(tiny_dir)
    encoder.eval()
    state = torch.get_rng_state()
    assert unused_parameters(encoder) == ()
    assert torch.equal(torch.get_rng_state(), state) and not encoder.training
    assert all(p.grad is None for p in encoder.parameters())

    rescale_model(encoder, RescaleSpec(k=4, strategy="untie", scale_bias=False))
    assert unused_parameters(encoder) == ()
    mlm = encoder[0].model
    assert not mlm.cls.predictions.bias.requires_grad
    assert mlm.cls.predictions.decoder.bias.requires_grad

    mlm.register_parameter("spare", torch.nn.Parameter(torch.ones(3)))
    assert unused_parameters(encoder) == ("0.model.spare",)


_QUIET = """
import logging, sys, warnings
from tqdm.auto import tqdm  # imported before, as a training script does
from headscope.trainer_callback import quiet_other_ranks
print("main" if quiet_other_ranks() else "other", flush=True)
from transformers.utils import logging as hf_logging
hf_logging.get_logger("transformers.trainer").warning("a library warning")
logging.getLogger("sentence_transformers.trainer").warning("another")
warnings.warn("a Python warning")
for _ in tqdm(range(3), desc="a bar"):
    pass
"""


@pytest.mark.parametrize(("rank", "quiet"), [("1", True), ("0", False)])
def test_quiet_other_ranks_silences_every_rank_but_the_main_one(tmp_path, rank, quiet):
    import subprocess
    import sys

    env = {**os.environ, "RANK": rank, "WORLD_SIZE": "2"}
    for var in ("TQDM_DISABLE", "TRANSFORMERS_VERBOSITY"):  # other tests' CLI runs set it
        env.pop(var, None)
    result = subprocess.run([sys.executable, "-c", _QUIET], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ("other\n" if quiet else "main\n")
    if quiet:
        assert result.stderr == ""
    else:
        for text in ("a library warning", "another", "a Python warning", "a bar"):
            assert text in result.stderr
