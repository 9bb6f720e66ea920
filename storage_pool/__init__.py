"""Stockade's storage pool: the local, deduplicated, content-addressed first copy.

On disk (one directory per pool)::

    config.json          format version, chunker parameters, compression (config.py)
    pool.lock            flock held by the one process that has the pool open
    chunks/abc/<id>      one chunk per file, named by the SHA-256 of its plaintext,
                         framed as in framing.py (version byte, codec, lengths, payload)
    index.sqlite         which chunks exist, with their stored size: a rebuildable cache
    recovery_points/<data source>/<rp id>.json
                         one record per committed recovery point (recovery_point.py)
    quarantine/          damaged chunk files moved aside by verify

Chunks are cut by FastCDC 2020 (pyfastcdc, compiled) with the parameters recorded in
config.json; default min 256 KiB, avg 1 MiB, max 8 MiB (mean chunk ~1.25 MiB).
Manifests (manifest.py) are msgpack streams stored as chunks too, so the pool alone
lists and restores every recovery point; a catalog elsewhere is only an index of it.

Write order (crash safety):
  1. chunk: temp file -> fsync -> rename -> fsync of its directory -> index row;
  2. manifest: cut into chunks, written as in 1;
  3. recovery-point record: temp file -> fsync -> rename -> fsync of its directory.
     Step 3 is the commit. A crash before it leaves unreferenced chunks, never a partial
     recovery point. The index never holds a row for a chunk file that is not durable.

Garbage collection (gc.py) marks from every committed recovery point and every session
open during its run, and sweeps only unmarked chunks older than its start minus
`SafetyParameters.min_chunk_age`; it deletes the index row before the file. It needs no
global lock: sessions and GC meet only in a short critical section per chunk batch.

Verify (verify.py) re-hashes chunks, names the recovery points each damaged or missing
chunk breaks, quarantines damaged files so new backups rewrite them, and can repair
from another copy through the `ChunkSource` hook.

The public API is async; blocking work runs on the pool's bounded executor.
"""

from storage_pool.chunker import Chunker, ChunkerParams
from storage_pool.config import PoolConfig
from storage_pool.errors import (
    ChunkCorruptError,
    ChunkNotFoundError,
    IntegrityError,
    ManifestError,
    PoolBusyError,
    PoolConfigError,
    PoolError,
    PoolIOError,
    PoolVersionError,
    RecoveryPointNotFoundError,
    SessionError,
)
from storage_pool.framing import EncodedChunk, encode_chunk
from storage_pool.gc import SAFETY_FULL, SAFETY_NONE, GcAbortedError, GcReport, SafetyParameters
from storage_pool.ids import ChunkId, RecoveryPointId, chunk_id_of
from storage_pool.manifest import Entry, EntryType
from storage_pool.pool import PoolStats, StoragePool
from storage_pool.recovery_point import RecoveryPoint
from storage_pool.session import PutResult, Session
from storage_pool.verify import ChunkProblem, ChunkSource, VerifyReport

__all__ = [
    "SAFETY_FULL",
    "SAFETY_NONE",
    "ChunkCorruptError",
    "ChunkId",
    "ChunkNotFoundError",
    "ChunkProblem",
    "ChunkSource",
    "Chunker",
    "ChunkerParams",
    "EncodedChunk",
    "Entry",
    "EntryType",
    "GcAbortedError",
    "GcReport",
    "IntegrityError",
    "ManifestError",
    "PoolBusyError",
    "PoolConfig",
    "PoolConfigError",
    "PoolError",
    "PoolIOError",
    "PoolStats",
    "PoolVersionError",
    "PutResult",
    "RecoveryPoint",
    "RecoveryPointId",
    "RecoveryPointNotFoundError",
    "SafetyParameters",
    "Session",
    "SessionError",
    "StoragePool",
    "VerifyReport",
    "chunk_id_of",
    "encode_chunk",
]
