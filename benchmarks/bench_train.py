"""Time per training step: headscope's loop vs a sentence-transformers SparseEncoder step.

Both train the real BERT-tiny SPLADE checkpoint (fresh copies) on the same BoolQ batches with
the same objective (in-batch InfoNCE on dot products + FLOPS on queries and passages) and the
same optimiser (AdamW, linear schedule, clipping at 1.0). Each step includes tokenization.
sentence-transformers uses one max_seq_length for every column; BoolQ questions stay under 32
tokens, so setting it to the passage length gives both sides identical tensors.

Steps alternate between the two in rounds so that load from other processes hits both alike;
the reported numbers are medians per step. Target: ours / sentence-transformers <= 1.1.

    python benchmarks/bench_train.py [--steps-per-round 5] [--rounds 4] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps-per-round", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    from sentence_transformers import SparseEncoder
    from sentence_transformers.sparse_encoder.losses import (
        SparseMultipleNegativesRankingLoss,
        SpladeLoss,
    )
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from headscope import assets
    from headscope.splade.data import boolq
    from headscope.splade.train import TrainConfig, batch_indices, lr_factor, train

    model_dir = str(assets.fetch("bert-tiny-splade"))
    pairs = boolq(max_eval_queries=1).train
    config = TrainConfig(steps=args.steps_per_round, batch_size=args.batch_size)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ours_model = AutoModelForMaskedLM.from_pretrained(model_dir)

    st = SparseEncoder(model_dir, device="cpu")
    st.max_seq_length = config.max_passage_length
    loss_fn = SpladeLoss(
        st,
        SparseMultipleNegativesRankingLoss(st),
        document_regularizer_weight=config.lambda_d,
        query_regularizer_weight=config.lambda_q,
    )
    st_params = [p for p in st.parameters() if p.requires_grad]
    st_opt = torch.optim.AdamW(st_params, lr=config.lr, weight_decay=0.0)
    total = args.steps_per_round * args.rounds
    st_sched = torch.optim.lr_scheduler.LambdaLR(
        st_opt, lambda s: lr_factor(s, total, config.warmup_ratio)
    )
    st.train()

    def st_steps(batches):
        times = []
        for batch in batches:
            t0 = time.perf_counter()
            features = [
                st.preprocess([p.query for p in batch]),
                st.preprocess([p.positive for p in batch]),
            ]
            st_opt.zero_grad(set_to_none=True)
            losses = loss_fn(features, None)
            loss = sum(losses.values())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(st_params, 1.0)
            st_opt.step()
            st_sched.step()
            times.append(time.perf_counter() - t0)
        return times

    ours_times: list[float] = []
    st_times: list[float] = []
    n = args.steps_per_round
    for round_ in range(args.rounds + 1):  # round 0 warms both up and is discarded
        # the same pairs for both: ours draws batches with its seed, sentence-transformers
        # replays exactly those
        indices = batch_indices(len(pairs), n, args.batch_size, seed=round_)
        batches = [[pairs[i] for i in idx] for idx in indices]
        stamps = [time.perf_counter()]
        train(
            ours_model,
            tokenizer,
            pairs,
            TrainConfig(steps=n, batch_size=args.batch_size, seed=round_),
            callback=lambda _r, stamps=stamps: stamps.append(time.perf_counter()),
        )
        theirs = st_steps(batches)
        if round_ > 0:
            ours_times += [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
            st_times += theirs

    ours_med, st_med = statistics.median(ours_times), statistics.median(st_times)
    print(
        f"batch {args.batch_size}, max lengths {config.max_query_length}/"
        f"{config.max_passage_length}, {len(ours_times)} timed steps each, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(f"headscope step:             median {ours_med:.3f} s")
    print(f"sentence-transformers step: median {st_med:.3f} s")
    print(f"ratio headscope / sentence-transformers: {ours_med / st_med:.2f} (target <= 1.1)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
