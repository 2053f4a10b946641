"""Ingest's inspection stage: every candidate file through
:func:`cxrflow.data.images.inspect_image`, in chunks, in worker processes with at most two chunks
per worker in flight (memory stays flat at any size), in-process when one chunk holds all.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence

from cxrflow.config import IngestParams
from cxrflow.data.images import ImageInfo, ImageRejected, inspect_image

# ------------------------------------------------------------------------------- inspection


def _inspect_chunk(
    tasks: Sequence[tuple[int, str]], params: IngestParams, store_dir: str | None
) -> list[tuple[int, ImageInfo | None, str, str]]:
    """Worker: inspect a chunk of files; return ``(index, info, reason, detail)`` per file."""
    out: list[tuple[int, ImageInfo | None, str, str]] = []
    for idx, path in tasks:
        try:
            out.append((idx, inspect_image(path, params, store_dir=store_dir), "", ""))
        except ImageRejected as exc:
            out.append((idx, None, exc.reason, exc.detail))
        except OSError:  # writing to the dataset dir failed (disk full, ...): fail the run
            raise
        except Exception as exc:  # a decoder bug must not lose the file from the accounting
            out.append((idx, None, "corrupt", f"{type(exc).__name__}: {exc}"[:300]))
    return out


def _chunks(tasks: list[tuple[int, str]], size: int) -> Iterator[list[tuple[int, str]]]:
    for i in range(0, len(tasks), size):
        yield tasks[i : i + size]


def _resolve_workers(workers: int) -> int:
    return workers if workers > 0 else max(1, os.cpu_count() or 1)


def _inspect_all(
    tasks: list[tuple[int, str]],
    params: IngestParams,
    store_dir: str | None,
    n_workers: int,
) -> Iterator[tuple[int, ImageInfo | None, str, str]]:
    """Inspect ``tasks`` in ``n_workers`` processes, bounded in flight.

    Runs in-process when ``n_workers`` is 1 or everything fits in one chunk (a pool would only
    add start-up time). Yields results in completion order.
    """
    from tqdm import tqdm

    bar = tqdm(
        total=len(tasks),
        desc="ingest: inspect",
        unit="img",
        file=sys.stderr,
        disable=not sys.stderr.isatty(),
        mininterval=1.0,
    )
    try:
        if n_workers <= 1 or len(tasks) <= params.chunk_size:
            for chunk in _chunks(tasks, params.chunk_size):
                results = _inspect_chunk(chunk, params, store_dir)
                bar.update(len(results))
                yield from results
            return
        import multiprocessing as mp
        from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

        # forkserver: safe when the parent holds threads (fork could deadlock), cheaper than spawn
        methods = mp.get_all_start_methods()
        ctx = mp.get_context("forkserver" if "forkserver" in methods else "spawn")
        max_in_flight = 2 * n_workers
        chunks = _chunks(tasks, params.chunk_size)
        with ProcessPoolExecutor(max_workers=n_workers, mp_context=ctx) as pool:
            pending: set[Future[list[tuple[int, ImageInfo | None, str, str]]]] = set()
            while True:
                while len(pending) < max_in_flight:
                    nxt = next(chunks, None)
                    if nxt is None:
                        break
                    pending.add(pool.submit(_inspect_chunk, nxt, params, store_dir))
                if not pending:
                    break
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    results = fut.result()  # BrokenProcessPool propagates: the run fails loudly
                    bar.update(len(results))
                    yield from results
    finally:
        bar.close()
