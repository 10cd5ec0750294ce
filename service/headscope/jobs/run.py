"""Run a corpus job: stream shards to workers (local processes or Ray actors), write one file per
finished shard, then reduce.

OUT/job.json                                the job: id, corpus, model, kinds, status, totals
OUT/shards/000000.features.safetensors      probe features of shard 0 (float16), when asked
OUT/shards/000000.sums.safetensors          shard 0's float64 sums; written last: the shard is done
OUT/statistics.safetensors                  the reduce: every shard's sums added

A rerun with the same corpus, model and kinds into the same OUT skips the shards already written,
so a killed job resumes where it stopped; files are written under a temporary name and renamed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from headscope.errors import StartupError
from headscope.jobs.ablation import ABLATION, AblationJob, ablation_sums, with_means
from headscope.jobs.source import CorpusFile, Shard
from headscope.jobs.statistics import JOB_KINDS, STATISTICS, Sums, map_shard, merge, tag_vocabulary
from headscope.settings import Settings

log = logging.getLogger("headscope.jobs")

# Called in the worker process as it starts a shard (tests use it to kill a worker mid-run).
ShardStartCallback = Callable[[Shard], None]

JOB_FILE = "job.json"
SHARDS_DIR = "shards"
STATISTICS_FILE = "statistics.safetensors"
DEFAULT_SHARD_SEQUENCES = 256
ENGINES = ("local", "ray")
ALL_JOB_KINDS = (*JOB_KINDS, ABLATION)


class WorkerDied(StartupError):
    """A worker process of the job was killed (out of memory, a signal) mid-shard."""


@dataclass(frozen=True)
class WorkerConfig:
    """What a worker needs to load the model and tagger (once per worker process)."""

    model: str
    tokenizer: str | None = None
    max_tokens: int | None = None
    torch_threads: int | None = None
    attention_kernel: str = "auto"

    def settings(self) -> Settings:

        values: dict[str, Any] = {
            "model": self.model,
            "tokenizer": self.tokenizer,
            "torch_threads": self.torch_threads,
            "attention_kernel": self.attention_kernel,
            # A worker is one process: the tagger runs in it rather than in a child of its own.
            "tagger_process": False,
        }
        if self.max_tokens is not None:
            values["max_tokens"] = self.max_tokens
        return Settings(**values)


@dataclass(frozen=True)
class JobSpec:
    corpus: str  # a path, or "hub"
    kinds: tuple[str, ...]
    out: Path
    worker: WorkerConfig
    shard_sequences: int = DEFAULT_SHARD_SEQUENCES
    ablation: AblationJob | None = None  # what kind `ablation` ablates

    def __post_init__(self) -> None:
        unknown = [kind for kind in self.kinds if kind not in ALL_JOB_KINDS]
        if unknown or not self.kinds:
            raise StartupError(
                f"unknown job kind(s) {', '.join(unknown) or '(none)'}; choose from "
                + ",".join(ALL_JOB_KINDS)
            )
        if (ABLATION in self.kinds) != (self.ablation is not None):
            raise StartupError("job kind ablation and its ablation options go together")
        if self.shard_sequences < 1:
            raise StartupError("shard_sequences must be at least 1")


@dataclass
class ShardDone:
    index: int
    tokens: int
    sequences: int
    vocabulary: list[str] = field(default_factory=list)


# One runtime per worker process, loaded at its first shard.
_worker_runtimes: dict[WorkerConfig, Any] = {}


def worker_runtime(config: WorkerConfig):
    if config not in _worker_runtimes:
        from headscope.analysis.service import load_runtime

        _worker_runtimes[config] = load_runtime(config.settings(), load_probes=False)
    return _worker_runtimes[config]


def shard_paths(out: Path, index: int) -> tuple[Path, Path]:
    """(sums, features) files of shard `index`."""
    stem = out / SHARDS_DIR / f"{index:06d}"
    return stem.with_suffix(".sums.safetensors"), stem.with_suffix(".features.safetensors")


def _save_atomically(tensors: dict[str, np.ndarray], path: Path, metadata: dict[str, str]) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, partial, metadata)
    os.replace(partial, path)


def process_shard(
    runtime,
    kinds: tuple[str, ...],
    shard: Shard,
    out: Path,
    job_id: str,
    ablation: AblationJob | None = None,
) -> ShardDone:
    """The map of one shard, written to its files (features first, sums last)."""
    result = map_shard(runtime, shard.texts, kinds)
    if ablation is not None:
        result.sums |= ablation_sums(runtime, shard.texts, ablation)
    vocabulary = tag_vocabulary(runtime)
    metadata = {
        "job_id": job_id,
        "shard": str(shard.index),
        "first_sequence": str(shard.first_sequence),
        "sequences": str(result.sequences),
        "tokens": str(result.tokens),
        "tags": json.dumps(vocabulary),
    }
    if "quotes" in kinds:
        metadata["quote_spans"] = json.dumps(result.quote_spans)
    sums_path, features_path = shard_paths(out, shard.index)
    if result.features:
        _save_atomically(result.features, features_path, metadata)
    _save_atomically(result.sums, sums_path, metadata)
    return ShardDone(shard.index, result.tokens, result.sequences, vocabulary)


def run_shard_in_worker(
    config: WorkerConfig,
    kinds: tuple[str, ...],
    shard: Shard,
    out: Path,
    job_id: str,
    on_start: ShardStartCallback | None = None,
    ablation: AblationJob | None = None,
) -> ShardDone:
    """The local engine's task: the worker process's runtime, then the shard."""
    if on_start is not None:
        on_start(shard)
    return process_shard(worker_runtime(config), kinds, shard, out, job_id, ablation)


class ShardActor:
    """The Ray engine's worker: loads the model and tagger once, then maps shard after shard."""

    def __init__(self, config: WorkerConfig) -> None:
        self.runtime = worker_runtime(config)

    def run(
        self,
        kinds: tuple[str, ...],
        shard: Shard,
        out: str,
        job_id: str,
        ablation: AblationJob | None = None,
    ) -> ShardDone:
        return process_shard(self.runtime, kinds, shard, Path(out), job_id, ablation)

    def pid(self) -> int:
        return os.getpid()


def actor_name(job_id: str, worker: int) -> str:
    return f"headscope-job-{job_id}-{worker}"


# -- the job -----------------------------------------------------------------------------------


def job_identity(spec: JobSpec, corpus: CorpusFile, weights_sha256: str) -> dict[str, Any]:
    identity = {
        "corpus_sha256": corpus.sha256,
        "weights_sha256": weights_sha256,
        "max_tokens": spec.worker.settings().max_tokens,
        "kinds": sorted(spec.kinds),
        "shard_sequences": spec.shard_sequences,
    }
    if spec.ablation is not None:
        identity["ablation"] = spec.ablation.identity()
    return identity


def job_id_of(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def read_job(out: Path) -> dict[str, Any] | None:
    path = out / JOB_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def _write_job(out: Path, job: dict[str, Any]) -> None:
    partial = out / f".{JOB_FILE}.partial"
    partial.write_text(json.dumps(job, indent=2, sort_keys=True) + "\n")
    os.replace(partial, out / JOB_FILE)


def done_shards(out: Path) -> set[int]:
    """Indices of the shards whose sums are written (job.json vouches they are this job's)."""
    return {int(path.name.split(".")[0]) for path in (out / SHARDS_DIR).glob("*.sums.safetensors")}


ShardCallback = Callable[[ShardDone], None]


def _local_results(
    spec: JobSpec,
    shards: Iterable[Shard],
    workers: int,
    job_id: str,
    on_start: ShardStartCallback | None = None,
) -> Iterator[ShardDone]:
    if workers == 1:
        runtime = worker_runtime(spec.worker)
        for shard in shards:
            if on_start is not None:
                on_start(shard)
            yield process_shard(runtime, spec.kinds, shard, spec.out, job_id, spec.ablation)
        return
    from joblib import Parallel, delayed
    from joblib.externals.loky.process_executor import TerminatedWorkerError

    # Lazy dispatch: joblib pulls a few shards ahead of the workers, never the whole corpus.
    parallel = Parallel(n_jobs=workers, return_as="generator_unordered", pre_dispatch="2*n_jobs")
    in_flight: set[int] = set()

    def dispatched() -> Iterator[Shard]:
        for shard in shards:
            in_flight.add(shard.index)
            yield shard

    try:
        for finished in parallel(
            delayed(run_shard_in_worker)(
                spec.worker, spec.kinds, shard, spec.out, job_id, on_start, spec.ablation
            )
            for shard in dispatched()
        ):
            in_flight.discard(finished.index)
            yield finished
    except TerminatedWorkerError as error:
        # Only whole files are ever renamed into place, so the shards already written stand.
        unfinished = ", ".join(str(index) for index in sorted(in_flight))
        raise WorkerDied(
            f"a worker process died while mapping one of shards {unfinished} (not written); "
            "the finished shards are kept: run the same job again to resume"
        ) from error


def connect_ray(address: str | None, workers: int) -> None:
    """Join the Ray cluster at `address`, or start a local one on loopback (no dashboard)."""
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(
            num_cpus=workers,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            log_to_driver=False,
        )


def _ray_results(
    spec: JobSpec, shards: Iterable[Shard], workers: int, job_id: str, address: str | None
) -> Iterator[ShardDone]:
    import ray
    from ray.util import ActorPool

    connect_ray(address, workers)
    # A worker that dies is restarted (its model loaded again) and its shard retried.
    actor_class = ray.remote(num_cpus=1, max_restarts=-1, max_task_retries=3)(ShardActor)
    actors = [
        actor_class.options(name=actor_name(job_id, worker)).remote(spec.worker)
        for worker in range(workers)
    ]
    pool = ActorPool(actors)
    out = str(spec.out)
    try:
        for shard in shards:
            # Submit only as workers free up, so the corpus is read as fast as it is analysed.
            while not pool.has_free():
                yield pool.get_next_unordered()
            pool.submit(
                lambda actor, s: actor.run.remote(spec.kinds, s, out, job_id, spec.ablation), shard
            )
        while pool.has_next():
            yield pool.get_next_unordered()
    finally:
        for actor in actors:
            ray.kill(actor)  # type: ignore[arg-type]


def _checked(results: Iterator[ShardDone], out: Path, job: dict[str, Any]) -> Iterator[ShardDone]:
    """The results, with job.json marked failed (and why) when a worker dies."""
    try:
        yield from results
    except WorkerDied as error:
        _write_job(out, job | {"status": "failed", "error": str(error)})
        raise


def run_job(
    spec: JobSpec,
    *,
    engine: str = "local",
    workers: int = 1,
    address: str | None = None,
    progress: bool = True,
    on_shard: ShardCallback | None = None,
    on_shard_start: ShardStartCallback | None = None,
) -> dict[str, Any]:
    """Map every shard not yet written, reduce, and return the finished job.json."""
    from headscope.model.loading import resolve_model_files, sha256_of_files

    if engine not in ENGINES:
        raise StartupError(f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}")
    if workers < 1:
        raise StartupError("workers must be at least 1")
    corpus = CorpusFile.open(spec.corpus)
    files = resolve_model_files(spec.worker.model, spec.worker.tokenizer)
    identity = job_identity(spec, corpus, sha256_of_files(files.weight_files))
    job_id = job_id_of(identity)
    out = spec.out
    previous = read_job(out)
    if previous is not None and previous.get("id") != job_id:
        raise StartupError(
            f"{out} holds job {previous.get('id')} (another corpus, model, kinds or shard size); "
            "pass another --out, or delete it."
        )
    (out / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
    job: dict[str, Any] = previous or {
        "id": job_id,
        **identity,
        "corpus": corpus.label,
        "model": files.model_id,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if spec.ablation is not None:
        ablation = with_means(spec.ablation, corpus, worker_runtime(spec.worker))
        spec = replace(spec, ablation=ablation)
        job["ablation"] = ablation.describe()
    job["status"] = "running"
    job.pop("error", None)
    _write_job(out, job)

    done = done_shards(out)
    from tqdm.auto import tqdm

    bar = tqdm(
        total=corpus.path.stat().st_size,
        unit="B",
        unit_scale=True,
        desc=f"job {job_id}",
        disable=not progress,
    )
    started = time.monotonic()
    new_tokens = 0
    shard_bytes: dict[int, int] = {}

    def pending() -> Iterator[Shard]:
        for shard in corpus.shards(spec.shard_sequences):
            size = sum(len(text.encode()) for text in shard.texts)
            if shard.index in done:
                bar.update(size)
                continue
            shard_bytes[shard.index] = size
            yield shard

    if engine == "local":
        results = _local_results(spec, pending(), workers, job_id, on_shard_start)
    else:
        results = _ray_results(spec, pending(), workers, job_id, address)
    vocabulary: list[str] | None = job.get("tags")
    try:
        for finished in _checked(results, out, job):
            if vocabulary is None:
                vocabulary = finished.vocabulary
            elif finished.vocabulary != vocabulary:
                raise StartupError(
                    f"shard {finished.index} was tagged with another tag set than the rest of "
                    "the job"
                )
            new_tokens += finished.tokens
            elapsed = max(time.monotonic() - started, 1e-9)
            bar.update(shard_bytes.pop(finished.index, 0))
            bar.set_postfix_str(f"{new_tokens / elapsed:,.0f} tokens/s", refresh=False)
            if on_shard is not None:
                on_shard(finished)
        bar.update(bar.total - bar.n)  # the blank lines between sequences
    finally:
        bar.close()
    elapsed = time.monotonic() - started

    statistics, totals = reduce_shards(out)
    if vocabulary is None:
        vocabulary = totals["tags"]
    metadata = {"job_id": job_id, "tags": json.dumps(vocabulary)}
    if statistics:
        _save_atomically(statistics, out / STATISTICS_FILE, metadata)
    job |= {
        "status": "finished",
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "tags": vocabulary,
        "shards": totals["shards"],
        "sequences": totals["sequences"],
        "tokens": totals["tokens"],
        "truncated": totals["truncated"],
        "statistics": sorted(kind for kind in spec.kinds if kind in (*STATISTICS, ABLATION)),
        "last_run": {
            "engine": engine,
            "workers": workers,
            "seconds": round(elapsed, 3),
            "tokens": new_tokens,
            "tokens_per_second": round(new_tokens / elapsed, 1) if elapsed > 0 else None,
        },
    }
    _write_job(out, job)
    return job


def shard_sums(out: Path) -> Iterator[tuple[int, Sums, dict[str, str]]]:
    """(index, sums, metadata) of every finished shard, in index order."""
    from safetensors import safe_open

    for path in sorted((out / SHARDS_DIR).glob("*.sums.safetensors")):
        with safe_open(path, "numpy") as file:
            metadata = file.metadata() or {}
        yield int(path.name.split(".")[0]), load_file(path), metadata


def reduce_shards(out: Path, order: Iterable[int] | None = None) -> tuple[Sums, dict[str, Any]]:
    """The merged sums of every shard (in `order` of shard index when given) and the totals."""
    shards = {index: (sums, metadata) for index, sums, metadata in shard_sums(out)}
    indices = list(order) if order is not None else sorted(shards)
    merged = merge(shards[index][0] for index in indices)
    tags = json.loads(shards[indices[0]][1]["tags"]) if indices else []
    totals = {
        "shards": len(indices),
        "sequences": int(merged["sequences"][0]) if merged else 0,
        "tokens": int(merged["tokens"][0]) if merged else 0,
        "truncated": int(merged["truncated"][0]) if merged else 0,
        "tags": tags,
    }
    return merged, totals


def describe(job: dict[str, Any]) -> str:
    run = job.get("last_run", {})
    return (
        f"job {job['id']} {job['status']}: {job.get('shards', 0)} shards, "
        f"{job.get('sequences', 0)} sequences, {job.get('tokens', 0)} tokens; this run "
        f"{run.get('tokens', 0)} tokens in {run.get('seconds', 0)} s "
        f"({run.get('tokens_per_second') or 0:,.0f} tokens/s, {run.get('engine')} x "
        f"{run.get('workers')})"
    )
