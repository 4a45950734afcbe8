"""Data-parallel, resumable prediction for :func:`emolens.evaluate` (``accelerate launch`` / ``torchrun``).

How a run is laid out (``out`` is the ``--out`` JSON path):

* the samples are cut into fixed blocks of ``batch_size`` in dataset order, exactly the batches a
  single process would run; blocks are split between the ranks with accelerate's
  ``PartialState.split_between_processes`` (contiguous shares, the lmms-eval convention), so every
  batch a rank runs is a batch the single process runs and the predictions are bit-identical;
* rank K appends one JSON line per finished sample to ``<out>.rankK.jsonl`` (flushed and fsynced
  after every batch), so a crash loses at most the batch in flight;
* after a barrier every rank reads all ``<out>.rank*.jsonl`` files and rebuilds the predictions in
  dataset order (rank 0 writes the JSON; the others return the same result);
* a rerun with the same ``out`` skips every sample id already in a rank file, whatever the number of
  processes before or now (also in a single process); a torn last line from a killed writer is ignored.

The rank files start with a header line holding the run's identity (model, dataset, method...); a rank
file from a different run is refused with a one-line error rather than silently mixed in.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

EXTRA_HINT = "pip install -e .[cluster]"


@dataclass(frozen=True)
class Ranks:
    """This process's place in a launch: ``rank`` of ``world`` processes, ``local_rank`` on its node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def ranks_from_env(env: Optional[dict] = None) -> Ranks:
    """Read the launch from the environment: ``torchrun`` and ``accelerate launch`` both export
    ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``; without them this is a single process."""
    env = os.environ if env is None else env
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError as e:
        raise ValueError(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers ({e}); launch with accelerate or torchrun") from e
    if not (0 <= rank < max(world, 1)):
        raise ValueError(f"RANK={rank} is outside WORLD_SIZE={world}; launch with accelerate or torchrun")
    return Ranks(rank, max(world, 1), local)


def rank_device(device: str = "auto", ranks: Optional[Ranks] = None) -> str:
    """Under a multi-process launch, ``auto`` means this rank's own GPU ``cuda:LOCAL_RANK`` (CPU if none)."""
    import torch

    r = ranks or ranks_from_env()
    if device in (None, "auto") and r.world > 1 and torch.cuda.is_available():
        return f"cuda:{r.local_rank % torch.cuda.device_count()}"
    return device


class _Single:
    """The one-process stand-in for accelerate's PartialState (same three members we use)."""

    num_processes, process_index = 1, 0

    def wait_for_everyone(self) -> None:
        pass

    def split_between_processes(self, inputs):
        import contextlib

        return contextlib.nullcontext(inputs)


def process_state(ranks: Optional[Ranks] = None):
    """accelerate's ``PartialState`` (it initialises the process group: gloo on CPU, NCCL on GPUs) when
    launched with more than one process; a no-op stand-in otherwise."""
    r = ranks or ranks_from_env()
    if r.world == 1:
        return _Single()
    try:
        from accelerate import PartialState
    except ImportError:
        raise ValueError(f"data-parallel eval ({r.world} processes) needs accelerate: {EXTRA_HINT}") from None
    import torch

    # without cpu=True accelerate treats a CPU-only torchrun launch as a single process (accelerate 1.15)
    state = PartialState(cpu=not torch.cuda.is_available())
    if state.num_processes != r.world:
        raise ValueError(f"accelerate sees {state.num_processes} process(es) but WORLD_SIZE={r.world}; "
                         "launch with torchrun or `accelerate launch --multi_gpu`")
    return state


def rank_file(out, rank: int) -> Path:
    """``<out>.rank<K>.jsonl`` next to the output JSON."""
    return Path(f"{out}.rank{rank}.jsonl")


def _rank_files(out) -> list:
    p = Path(out)
    return sorted(p.parent.glob(f"{p.name}.rank*.jsonl"))


def _plain(obj, default) -> object:
    """JSON round trip, so the identity written to disk compares equal to the one in memory."""
    return json.loads(json.dumps(obj, default=default))


def read_records(out, identity: Optional[dict] = None, default=None) -> dict:
    """Every finished sample in ``<out>.rank*.jsonl``: ``uid -> record`` (first occurrence wins).

    A line that does not parse (the torn tail of a killed writer) is skipped. Raises ValueError when a
    file's header names a different run than ``identity``.
    """
    found: dict = {}
    want = None if identity is None else _plain(identity, default)
    for f in _rank_files(out):
        with open(f, encoding="utf-8") as fh:
            for n, line in enumerate(fh):
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if "run" in rec:
                    if want is not None and rec["run"] != want:
                        diff = sorted(k for k in set(want) | set(rec["run"]) if want.get(k) != rec["run"].get(k))
                        raise ValueError(f"{f} holds predictions of a different run (differs in {diff}); "
                                         f"delete {Path(out).name}.rank*.jsonl or choose another --out")
                    continue
                found.setdefault(rec["uid"], rec)
    return found


def _blocks(uids: Sequence, done, batch_size: int) -> list:
    """Fixed batches of the full sample list (what one process runs), minus finished samples."""
    blocks = []
    for b in range(0, len(uids), batch_size):
        idx = [i for i in range(b, min(b + batch_size, len(uids))) if uids[i] not in done]
        if idx:
            blocks.append(idx)
    return blocks


def _open_for_append(path: Path, identity: dict, default):
    fh = open(path, "a+", encoding="utf-8")
    fh.seek(0, os.SEEK_END)
    if fh.tell() == 0:
        fh.write(json.dumps({"run": identity}, default=default) + "\n")
    else:
        fh.seek(fh.tell() - 1)
        if fh.read(1) != "\n":  # torn last line of a killed writer: start ours on a fresh line
            fh.write("\n")
    return fh


def predict_resumable(predict: Callable, samples: Sequence, *, batch_size: int, out=None,
                      identity: Optional[dict] = None, progress: bool = True, desc: str = "",
                      default=None) -> tuple:
    """Run ``predict(list_of_samples) -> list[Prediction]`` over ``samples``, sharded across the ranks of
    the current launch and resumable through ``<out>.rank*.jsonl``.

    Args:
        predict: the method's batch prediction, e.g. ``lambda chunk: method.predict(model, chunk, task)``.
        samples: the evaluation samples in dataset order (each with a unique ``uid``).
        out: the output JSON path; ``None`` runs in memory (single process only, nothing to resume).
        identity: what makes two runs the same run (model, dataset, method...); stored in each rank file.
        default: ``json.dumps`` fallback for numpy/torch values.

    Returns:
        ``(predictions, latency)``: one :class:`~emolens.methods.base.Prediction` per sample in dataset
        order (identical on every rank), and ``latency`` with ``per_sample`` / ``total`` seconds of model
        time (summed over ranks, including samples finished by an earlier interrupted run) and
        ``per_rank`` (rank, samples, seconds).
    """
    from tqdm.auto import tqdm

    from .methods.base import Prediction

    ranks = ranks_from_env()
    uids = [s.uid for s in samples]
    if len(set(uids)) != len(uids):
        raise ValueError("sample uids are not unique; resumable/sharded eval identifies samples by uid")
    if out is None:
        if ranks.world > 1:
            raise ValueError(f"data-parallel eval ({ranks.world} processes) writes per-rank files next to its "
                             "output: give --out FILE")
        preds, seconds = [], 0.0
        bar = tqdm(total=len(samples), desc=desc, disable=not progress)
        for b in _blocks(uids, (), batch_size):
            t0 = time.perf_counter()
            preds.extend(predict([samples[i] for i in b]))
            seconds += time.perf_counter() - t0
            bar.update(len(b))
        bar.close()
        return preds, _latency({0: (len(samples), seconds)}, len(samples), batch_size)

    state = process_state(ranks)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    identity = identity or {}
    done = read_records(out, identity, default)
    state.wait_for_everyone()  # everyone has read the same finished set before anyone appends
    todo = _blocks(uids, done, batch_size)
    with state.split_between_processes(todo) as mine:
        mine = list(mine)
    if mine:
        bar = tqdm(total=sum(map(len, mine)), desc=f"{desc} [rank {ranks.rank}/{ranks.world}]" if ranks.world > 1
                   else desc, disable=not progress, position=ranks.rank)
        with _open_for_append(rank_file(out, ranks.rank), identity, default) as fh:
            for b in mine:
                t0 = time.perf_counter()
                got = predict([samples[i] for i in b])
                dt = (time.perf_counter() - t0) / len(b)
                for i, p in zip(b, got):
                    fh.write(json.dumps({"uid": uids[i], "rank": ranks.rank, "seconds": dt,
                                         "prediction": asdict(p)}, default=default) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
                bar.update(len(b))
        bar.close()
    state.wait_for_everyone()
    recs = read_records(out, identity, default)
    missing = [u for u in uids if u not in recs]
    if missing:
        raise ValueError(f"{len(missing)} samples have no prediction in {Path(out).name}.rank*.jsonl "
                         f"(first: {missing[0]!r}); a rank failed: rerun the same command to resume")
    preds = [Prediction(**recs[u]["prediction"]) for u in uids]
    per_rank: dict = {}
    for u in uids:  # by the rank that computed the sample (in this run or an interrupted earlier one)
        n, s = per_rank.get(recs[u]["rank"], (0, 0.0))
        per_rank[recs[u]["rank"]] = (n + 1, s + recs[u]["seconds"])
    return preds, _latency(per_rank, len(samples), batch_size)


def _latency(per_rank: dict, n: int, batch_size: int) -> dict:
    total = sum(s for _, s in per_rank.values())
    return {"per_sample": total / max(n, 1), "total": total, "batch_size": batch_size,
            "per_rank": [{"rank": r, "n": k, "seconds": s} for r, (k, s) in sorted(per_rank.items())]}
