"""Verification of a written checkpoint (docs/rescale.md lists it for users).

- the written files, byte for byte (no reload needed): every header entry has the planned name,
  dtype and shape; every tensor the rescale does not change holds exactly the bytes of its source
  (the byte range in the source file, or the source tensor of a .bin checkpoint); every changed
  tensor holds exactly the bytes of its planned value (`verify_files`);
- the loaded source model: each unchanged tensor in memory equals its source value (cast to the
  loaded dtype), so a model changed in memory after loading is refused;
- one reload with plain ``AutoModelForMaskedLM.from_pretrained``: no missing or mismatched keys;
  the tie state; each changed tensor as reloaded equals its planned value; and one forward pass
  on the verification texts (cut at VERIFY_MAX_TOKENS tokens): the logits equal
  `expected_logits` of the original's within dtype tolerance (for ``tied``: equal the in-memory
  rescaled model's, with the departure from `expected_logits` reported); last hidden states
  unchanged for untie and fold (drift reported for tied) (`verify_model`).
Comparing bytes with the source instead of comparing every reloaded tensor with the model in
memory reads each tensor once from each side and never materialises a second model's unchanged
tensors. A failure raises VerificationError.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from headscope.errors import VerificationError, WeightFileError
from headscope.heads import find_head
from headscope.rescale import RescaleSpec, expected_logits
from headscope.safetensors_file import read_safetensors_header
from headscope.save.background import Progress, in_background
from headscope.save.plan import Plan, stored_dtype
from headscope.save.writer import tensor_bytes

if TYPE_CHECKING:
    from headscope.checkpoint import LoadedModel
    from headscope.heads import Head


@dataclass(frozen=True)
class Verification:
    """What was checked after writing (or, in a dry run, on the rescaled model in memory)."""

    against: str  # "reload" (AutoModelForMaskedLM.from_pretrained of the output) | "memory"
    n_texts: int
    max_abs_logit_error: float  # vs expected_logits(original logits)
    logit_tolerance: float
    hidden_drift: float  # max abs change of the last hidden states vs the original
    reload_error: float | None  # tied: reloaded logits vs the in-memory rescaled model's
    tensors_identical: int  # unchanged tensors checked byte-identical to the source
    tensors_changed: tuple[str, ...]  # state_dict names that changed, each equal to its plan
    tied: bool  # decoder shares storage with the input embeddings after reload


@dataclass
class Probe:
    inputs: dict[str, Any]
    logits: Any  # (B, T, V) float32
    hidden: Any  # (B, T, H) float32
    mask: Any  # (B, T) bool


# The verification texts are cut at this many tokens: every logit of every position is
# compared over the whole vocabulary, and a loader's mistake (a re-tied or dropped decoder, a
# missing key) shows at any length; longer texts only made the forward passes dearer.
VERIFY_MAX_TOKENS = 64


def encode_texts(loaded: LoadedModel, texts: Sequence[str]) -> dict[str, Any]:
    """The verification inputs: `texts` tokenized and cut at VERIFY_MAX_TOKENS (and at what the
    model's position table embeds); without a tokenizer, 32 fixed pseudo-random ids per text."""
    import torch

    from headscope.splade.encode import tokenize

    if loaded.tokenizer is not None:
        return dict(tokenize(loaded.model, loaded.tokenizer, texts, VERIFY_MAX_TOKENS))
    # Without a tokenizer: fixed pseudo-random ids, one row per text.
    gen = torch.Generator().manual_seed(0)
    vocab = int(loaded.model.config.vocab_size)
    ids = torch.randint(0, vocab, (len(texts), 32), generator=gen)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def forward_pass(model, inputs: dict[str, Any]) -> Probe:
    import torch

    from headscope.splade.encode import forward

    device = next(model.parameters()).device
    with torch.no_grad():
        out = forward(model, inputs, device, output_hidden_states=True)
    mask = inputs["attention_mask"].bool()
    return Probe(inputs, out.logits.float().cpu(), out.hidden_states[-1].float().cpu(), mask)


def _max_abs(a, b, mask) -> float:
    diff = (a - b).abs()[mask]  # (N, ...) non-padding positions only
    return float(diff.max()) if diff.numel() else 0.0


def _tolerance(dtype, expected, mask) -> float:
    import torch

    scale = max(1.0, float(expected.abs()[mask].max())) if mask.any() else 1.0
    if dtype in (torch.float16, torch.bfloat16):
        return 8 * torch.finfo(dtype).eps * scale
    return 1e-5 * scale


_COMPARE_CHUNK = 1 << 24  # bytes compared at once


class _Ranges:
    """Byte ranges of files, memory-mapped read-only (no copy), as uint8 arrays. `release`
    drops the pages of a range from this process's mapping once compared (the page cache keeps
    them), so the process's resident memory does not grow by the files' size."""

    def __init__(self) -> None:
        self._maps: dict[Path, mmap.mmap] = {}

    def reader(self, path: Path, begin: int) -> Callable[[int, int], Any]:
        """(offset, size) -> uint8 array of the file's bytes at begin + offset."""
        import numpy as np

        if path not in self._maps:
            with path.open("rb") as fh:
                self._maps[path] = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        mm = self._maps[path]

        def read(offset: int, size: int):
            at = begin + offset
            size = max(0, min(size, len(mm) - at))
            return np.frombuffer(mm, dtype=np.uint8, count=size, offset=at)

        read.release = lambda offset, size: self._release(mm, begin + offset, size)  # type: ignore[attr-defined]
        return read

    @staticmethod
    def _release(mm: mmap.mmap, at: int, size: int) -> None:
        if not hasattr(mmap, "MADV_DONTNEED"):
            return
        page = mmap.PAGESIZE
        first = -(-at // page) * page  # whole pages inside the range only
        last = (at + size) // page * page
        if last > first:
            mm.madvise(mmap.MADV_DONTNEED, first, last - first)

    def close(self) -> None:
        maps = list(self._maps.values())
        self._maps.clear()
        for mm in maps:
            try:
                mm.close()
            except BufferError:  # a view is still alive; the map closes when it goes
                pass


def _array_reader(arr) -> Callable[[int, int], Any]:
    return lambda offset, size: arr[offset : offset + size]


def _equal(a, b) -> bool:
    """Byte equality of two uint8 arrays, compared 8 bytes at a time."""
    import numpy as np

    if a.size != b.size:
        return False
    n = a.size - a.size % 8
    if n and not np.array_equal(a[:n].view(np.uint64), b[:n].view(np.uint64)):
        return False
    return bool(np.array_equal(a[n:], b[n:]))


def _first_difference(n: int, readers: Sequence[Callable[[int, int], Any]]) -> int | None:
    """Index of the first reader whose n bytes differ from readers[0]'s, else None; one pass,
    chunk by chunk (memory-bandwidth bound, far faster than hashing each side)."""
    for offset in range(0, n, _COMPARE_CHUNK):
        size = min(_COMPARE_CHUNK, n - offset)
        first = readers[0](offset, size)
        if first.size != size:
            return 1
        for i, read in enumerate(readers[1:], start=1):
            if not _equal(first, read(offset, size)):
                return i
        for read in readers:
            release = getattr(read, "release", None)
            if release is not None:
                release(offset, size)
    return None


def _bytes_of(t):
    """The raw bytes of a tensor as a uint8 numpy array (CPU, contiguous; a copy only when the
    tensor is not already so)."""
    import numpy as np

    return np.frombuffer(tensor_bytes(t), dtype=np.uint8)


def verify_files(tmp: Path, plan: Plan, loaded: LoadedModel, where: str) -> int:
    """Byte-level checks of the written shards against the source and the plan, and of the model
    in memory against the source; returns the number of unchanged tensors checked identical.
    Each tensor's bytes are read once from the written file and once from the source, in the
    same pass."""
    import torch

    state = loaded.model.state_dict()
    ranges = _Ranges()
    identical = 0
    try:
        for shard, entries in plan.shards:
            path = tmp / shard
            try:
                header = read_safetensors_header(path).tensors
            except WeightFileError as err:
                raise VerificationError(f"{err} ({where}); nothing was kept.") from err
            for e in entries:
                info = header.get(e.name)
                if (info is None or info.dtype != e.dtype or info.shape != e.shape
                        or info.end - info.begin != e.nbytes):
                    raise VerificationError(
                        f"Tensor {e.name} of {where} is missing from {shard} or has the wrong "
                        f"dtype or shape; nothing was kept."
                    )
                readers = [ranges.reader(path, info.begin)]
                stored = e.stored
                value = e.tensor if e.tensor is not None else (
                    stored.tensor if stored is not None else None)
                if value is not None:  # planned, or a .bin source tensor, or the model's own
                    readers.append(_array_reader(_bytes_of(value)))
                else:
                    assert stored is not None
                    readers.append(ranges.reader(stored.file, stored.begin))
                # The model in memory must still be the checkpoint as stored: compared in the
                # same pass when it holds the stored bytes (same dtype, on the CPU).
                t = None
                if not e.changed and e.model_name is not None and stored is not None:
                    t = state[e.model_name].detach()
                    if t.device.type == "cpu" and stored_dtype(t.dtype) == e.dtype:
                        readers.append(_array_reader(_bytes_of(t)))
                        t = None
                bad = _first_difference(e.nbytes, readers)
                if bad == 1 and e.changed:
                    raise VerificationError(
                        f"Tensor {e.model_name} of {where} does not hold the rescaled value "
                        "planned for it; nothing was kept. Report this with the checkpoint's "
                        "config.json."
                    )
                if bad == 1:
                    raise VerificationError(
                        f"Tensor {e.name} of {where} does not hold the bytes of the source "
                        "checkpoint although the rescale does not change it; nothing was kept."
                    )
                if t is not None and stored is not None:  # another dtype or device: by value
                    bad = None if torch.equal(stored.load().to(t.dtype), t.cpu()) else 2
                if bad == 2:
                    raise VerificationError(
                        f"Tensor {e.model_name} of {where} differs from the loaded source model "
                        "although the rescale does not change it; nothing was kept. If the model "
                        "was changed in memory after loading, save from the checkpoint as "
                        "loaded."
                    )
                if not e.changed:
                    identical += 1
    finally:
        ranges.close()
    return identical


def verify_model(candidate, loaded: LoadedModel, head: Head, spec: RescaleSpec, plan: Plan,
                 reference: Probe, memory_ref: Probe | None, against: str,
                 where: str, identical: int | None = None, fixed: Probe | None = None
                 ) -> Verification:
    """Tensors, tie state and one forward pass of `candidate`. `identical`: the count from
    `verify_files`, whose byte checks replace comparing every unchanged tensor here (then only
    the changed tensors are compared). `fixed`: the candidate's forward pass on the reference
    inputs when the caller ran it already."""
    changed_seen, n_identical = _check_tensors(candidate, loaded, plan, against, where, identical)
    after = find_head(candidate)
    if after.tied != plan.tied_out:
        state = "tied to" if after.tied else "separate from"
        raise VerificationError(
            f"After reloading {where} its decoder is {state} the input embeddings, but the "
            f"'{spec.strategy}' strategy should leave it {'tied' if plan.tied_out else 'untied'}; "
            "nothing was kept."
        )
    if fixed is None:
        fixed = forward_pass(candidate, reference.inputs)
    dtype = next(candidate.parameters()).dtype
    err, tol, drift, reload_error = _check_outputs(fixed, reference, memory_ref, head, spec,
                                                   dtype, where)
    return Verification(
        against=against,
        n_texts=int(reference.mask.shape[0]),
        max_abs_logit_error=err,
        logit_tolerance=tol,
        hidden_drift=drift,
        reload_error=reload_error,
        tensors_identical=n_identical if identical is None else identical,
        tensors_changed=tuple(sorted(changed_seen)),
        tied=after.tied,
    )


def _check_tensors(candidate, loaded: LoadedModel, plan: Plan, against: str, where: str,
                   identical: int | None) -> tuple[list[str], int]:
    """Each changed tensor of `candidate` against its planned value, and (unless the files'
    byte checks did: `identical`) each unchanged one against the loaded source model; returns
    (the changed names seen, the number of unchanged tensors found identical)."""
    import torch

    orig = loaded.model.state_dict()
    cand = candidate.state_dict()
    changed_seen, n_identical = [], 0
    for name, t in cand.items():
        if name not in orig:
            continue
        if identical is not None and name not in plan.changed:
            continue  # checked byte for byte in the files
        if name in plan.changed:
            want = plan.changed[name].to(device=t.device, dtype=t.dtype)
            # In memory the rescale ran on the loaded dtype, the plan on the stored one: a
            # float32 checkpoint loaded as bfloat16 may differ by one rounding step.
            same = torch.equal(t, want) if against == "reload" or t.dtype == plan.changed[
                name].dtype else torch.allclose(t.float(), want.float(),
                                                rtol=2 * torch.finfo(t.dtype).eps, atol=0)
            if not same:
                raise VerificationError(
                    f"Tensor {name} of {where} does not hold the rescaled value planned for it; "
                    "nothing was kept. Report this with the checkpoint's config.json."
                )
            changed_seen.append(name)
        else:
            if not torch.equal(t, orig[name].to(t.device)):
                raise VerificationError(
                    f"Tensor {name} of {where} differs from the loaded source model although "
                    "the rescale does not change it; nothing was kept. If the model was changed "
                    "in memory after loading, save from the checkpoint as loaded."
                )
            n_identical += 1
    return changed_seen, n_identical


def _check_outputs(fixed: Probe, reference: Probe, memory_ref: Probe | None, head: Head,
                   spec: RescaleSpec, dtype, where: str
                   ) -> tuple[float, float, float, float | None]:
    """The candidate's logits (`fixed`) against the expected ones, and its last hidden states
    against the original's; returns (logit error, tolerance, hidden drift, for tied: the
    departure from the in-memory rescale)."""
    bias = head.bias.detach().float().cpu() if head.bias is not None else None
    want = expected_logits(reference.logits, bias, spec)  # (B, T, V)
    mask = reference.mask
    tol = _tolerance(dtype, want, mask)
    err = _max_abs(fixed.logits, want, mask)
    drift = _max_abs(fixed.hidden, reference.hidden, mask)
    reload_error = None
    if spec.strategy == "tied":
        assert memory_ref is not None
        reload_error = _max_abs(fixed.logits, memory_ref.logits, mask)
        if reload_error > tol:
            raise VerificationError(
                f"The logits of {where} differ from the in-memory tied rescale by up to "
                f"{reload_error:.3g} (tolerance {tol:.3g}); nothing was kept."
            )
    else:
        if err > tol:
            raise VerificationError(
                f"The logits of {where} differ from the expected (x - b) / k + b by up to "
                f"{err:.3g} (tolerance {tol:.3g}); nothing was kept."
            )
        hidden_tol = _tolerance(dtype, reference.hidden, mask)
        if drift > hidden_tol:
            raise VerificationError(
                f"The last hidden states of {where} moved by up to {drift:.3g} although the "
                f"'{spec.strategy}' strategy leaves the encoder untouched; nothing was kept."
            )
    return err, tol, drift, reload_error


def reload(path: Path, loaded: LoadedModel):
    from transformers import AutoModelForMaskedLM

    try:
        model, info = AutoModelForMaskedLM.from_pretrained(
            str(path), output_loading_info=True, dtype=loaded.model.dtype,
            trust_remote_code=loaded.options.trust_remote_code,
        )
    except Exception as err:
        raise VerificationError(
            f"AutoModelForMaskedLM could not reload the written checkpoint ({err}); nothing "
            "was kept."
        ) from err
    missing = sorted(info.get("missing_keys") or ())
    mismatched = sorted(str(m) for m in info.get("mismatched_keys") or ())
    if missing or mismatched:
        listed = ", ".join(missing + mismatched)
        raise VerificationError(
            f"Reloading the written checkpoint left {listed} missing or mismatched (transformers "
            "would initialise them at random); nothing was kept."
        )
    return model.to(loaded.options.device).eval()


def verify_written(tmp: Path, loaded: LoadedModel, head: Head, spec: RescaleSpec, plan: Plan,
                    inputs: dict[str, Any],
                    references: Callable[[], tuple[Probe, Probe | None, Any]],
                    pending: list[Callable[[], Any]], report: Progress) -> Verification:
    """The files in `tmp` byte for byte against the source and the plan, and, at the same time
    on a thread, a reload of them and one forward pass; then the reloaded model's changed
    tensors, tie state and logits against the expected ones. The byte checks, when they fail,
    say so first. `pending` gets the thread's join (the caller waits for it on failure)."""
    report("verify", 0, 3)
    where = f"the checkpoint written to {tmp}"

    def reload_and_run() -> tuple[Any, Probe]:
        candidate = reload(tmp, loaded)
        return candidate, forward_pass(candidate, inputs)

    reloaded = in_background(reload_and_run, "headscope-reload")
    pending.append(reloaded)
    identical = verify_files(tmp, plan, loaded, where)
    report("verify", 1, 3)
    reference, memory_ref, memory_model = references()
    del memory_model
    candidate, fixed = reloaded()
    report("verify", 2, 3)
    verification = verify_model(candidate, loaded, head, spec, plan, reference, memory_ref,
                           "reload", where, identical=identical, fixed=fixed)
    del candidate
    report("verify", 3, 3)
    return verification
