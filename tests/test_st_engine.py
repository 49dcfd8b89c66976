"""The `st` engine: confirm/sweep arms trained by SparseEncoderTrainer with HeadscopeCallback,
single-process on a tiny BERT, and under `torchrun --nproc-per-node 2` (gloo, CPU) on the real
BERT-tiny compared with the single-process run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from headscope.errors import InputError
from headscope.splade.data import Pair
from headscope.splade.losses import regularizer_weight
from headscope.splade.train import TrainConfig, batch_indices, lr_factor

pytest.importorskip("datasets")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _pairs(n: int, negatives: int = 0) -> list[Pair]:
    return [Pair(f"query {i}", f"passage {i}", tuple(f"neg {i}.{j}" for j in range(negatives)))
            for i in range(n)]


def test_dataset_holds_the_batches_of_the_own_loop_in_order():
    from headscope.st_engine import _dataset

    pairs = _pairs(10, negatives=2)
    config = TrainConfig(steps=7, batch_size=4, seed=3)
    rows = _dataset(pairs, config)
    order = [i for b in batch_indices(10, 7, 4, 3) for i in b]
    assert rows.column_names == ["query", "positive", "negative_1", "negative_2"]
    assert rows["query"] == [f"query {i}" for i in order]
    assert rows["negative_2"] == [f"neg {i}.1" for i in order]


def test_rank_and_world_size_come_from_the_launcher(monkeypatch):
    from headscope.st_engine import is_main_process, world_size

    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert is_main_process() and world_size() == 1
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert not is_main_process() and world_size() == 2


def test_batch_size_must_split_over_the_processes(monkeypatch, tiny_checkpoint):
    from headscope import checkpoint
    from headscope.st_engine import train

    monkeypatch.setenv("WORLD_SIZE", "3")
    loaded = checkpoint.load(checkpoint.resolve(str(tiny_checkpoint("bert"))))
    with pytest.raises(InputError, match=r"^--batch-size 4 does not split over 3 processes; "
                                         r"give a multiple of 3\.$"):
        train(loaded.model, loaded.tokenizer, _pairs(8), TrainConfig(steps=2, batch_size=4))


def test_unknown_engine_is_refused():
    from headscope.api import ConfirmOptions

    with pytest.raises(InputError, match=r"^Unknown engine 'ddp'; choose headscope or st\.$"):
        ConfirmOptions(engine="ddp")


def test_st_engine_follows_the_own_loops_schedule_and_trains_in_place(tiny_checkpoint):
    from headscope import checkpoint
    from headscope.st_engine import train

    loaded = checkpoint.load(checkpoint.resolve(str(tiny_checkpoint("bert"))))
    model = loaded.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = TrainConfig(steps=4, batch_size=4, lr=1e-3, max_passage_length=16)
    seen = []
    result = train(model, loaded.tokenizer, _pairs(12), config, seen.append,
                   probe=[("query 1", "passage 1"), ("query 2", "passage 2")])
    records = result.records
    assert [r.step for r in records] == [1, 2, 3, 4]  # the Trainer's global step after the update
    assert list(seen) == list(records)
    for r in records:  # step s is the own loop's 0-based step s - 1
        assert r.lr == pytest.approx(1e-3 * lr_factor(r.step - 1, 4, config.warmup_ratio))
        assert r.weight_q == pytest.approx(regularizer_weight(r.step - 1, 4, config.lambda_q))
        assert r.weight_d == pytest.approx(regularizer_weight(r.step - 1, 4, config.lambda_d))
        assert r.loss > 0 and r.grad_norm > 0
    assert result.vocab_size == model.config.vocab_size
    assert not model.training
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed  # the arm's own model was trained


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sweep(prefix: list[str], model: Path, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = prefix + ["-m", "headscope", "sweep", str(model), "--k", "1,4", "--engine", "st",
                        "--steps", "3", "--batch-size", "8", "--max-eval-queries", "20",
                        "--json", str(out / "summary.json"),
                        "--telemetry", str(out / "telemetry.jsonl")]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)


def _without_dropout(source: Path, dest: Path) -> Path:
    """The real BERT-tiny with dropout off: two processes draw other dropout masks than one,
    which on a 3-step run moves the losses by tens of percent and hides what is compared."""
    import shutil

    shutil.copytree(source, dest)
    config = json.loads((dest / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (dest / "config.json").write_text(json.dumps(config))
    return dest


@pytest.mark.slow
def test_two_gloo_processes_report_once_and_match_one_process(bert_tiny_dir, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    model = _without_dropout(bert_tiny_dir, tmp_path / "bert-tiny")
    single = _sweep([sys.executable], model, one)
    assert single.returncode == 0, single.stderr[-2000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                "--master-port", str(_free_port()), "--log-dir", str(tmp_path / "logs"),
                "--redirects", "3"]
    ddp = _sweep(torchrun, model, two)
    logs = {f"{p.parent.name}/{p.name}": p.read_text()
            for p in (tmp_path / "logs").rglob("*.log")}
    assert ddp.returncode == 0, ddp.stderr[-2000:] + str(logs)[-2000:]
    # Rank 0 alone prints the table and writes the files; rank 1 prints nothing at all.
    # (the table's arms may each say "verdict" in their reasons: count the closing line)
    assert logs["0/stdout.log"].count("telemetry: ") == 1
    assert logs["1/stdout.log"] == "" and logs["1/stderr.log"] == ""
    assert sorted(p.name for p in two.iterdir()) == ["summary.json", "telemetry.jsonl"]
    lines = (two / "telemetry.jsonl").read_text().splitlines()
    assert len(lines) == 3 * 2  # each step of each arm, once
    a = json.loads((one / "summary.json").read_text())["arms"]
    b = json.loads((two / "summary.json").read_text())["arms"]
    assert [x["name"] for x in a] == [x["name"] for x in b] == ["k=1", "k=4"]
    for x, y in zip(a, b, strict=True):
        assert x["status"] == y["status"]
        # The same batches split over two processes: only the FLOPS regulariser (each
        # process's own) and the order of float sums differ.
        assert y["start_loss"] == pytest.approx(x["start_loss"], rel=0.02, abs=1e-3)
        assert y["end_loss"] == pytest.approx(x["end_loss"], rel=0.02, abs=1e-3)
        assert y["active_query_end"] == pytest.approx(x["active_query_end"], rel=0.02)
        for metric in ("ndcg_at_10", "mrr_at_10", "recall_at_100"):
            assert y[metric] == pytest.approx(x[metric], abs=0.01)
    tel_one = [json.loads(line) for line in (one / "telemetry.jsonl").read_text().splitlines()]
    tel_two = [json.loads(line) for line in lines]
    for p, q in zip(tel_one, tel_two, strict=True):
        assert (p["arm"], p["step"], p["lr"]) == (q["arm"], q["step"], q["lr"])
        assert q["weight_d"] == pytest.approx(p["weight_d"])
        assert q["ranking_loss"] == pytest.approx(p["ranking_loss"], rel=0.02, abs=1e-3)
        assert q["active_passage"] == pytest.approx(p["active_passage"], rel=0.02)


_BROADCAST_STATS = """
import os, sys
import torch.distributed as dist
import torch.multiprocessing as mp

def worker(rank, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    from headscope.trainer_callback import ProbeStats, _main_process_has
    mine = ProbeStats(vocab_size=10, active_query=float(rank), active_passage=2.0,
                      term_weight_mean=0.5, term_weight_max=1.5, score_pos=3.0, score_neg=1.0,
                      flops_q=0.1, flops_d=0.2)
    got = _main_process_has(mine)  # ranks measured different statistics: rank 0's are kept
    with open(os.path.join(out, f"rank{rank}"), "w") as fh:
        fh.write(repr(got.active_query))
    dist.destroy_process_group()

if __name__ == "__main__":
    mp.spawn(worker, args=(int(sys.argv[1]), sys.argv[2]), nprocs=2)
"""


def test_every_rank_keeps_the_main_processs_probe_statistics(tmp_path):
    script = tmp_path / "stats.py"
    script.write_text(_BROADCAST_STATS, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(script), str(_free_port()), str(tmp_path)], env=env,
                   check=True, timeout=300)
    assert [(tmp_path / f"rank{r}").read_text() for r in (0, 1)] == ["0.0", "0.0"]
