"""A restore's ``ChunkFetcher`` over the data plane (``POST /restores/{job}/chunks``).

The restore engine wants chunks in the order it asked for them; the server may answer in
any order. :meth:`HttpChunkFetcher.fetch` yields each id as soon as it and every id
before it have arrived, keeping early arrivals until their turn (at most one request's
worth, as the engine asks in bounded batches). A repeated id is yielded at each place.

Failures: chunks the server did not send, or whose content does not hash to their id,
raise ``ChunkUnavailableError`` naming the ids not yet yielded, so only the files using
them fail; a transport failure that outlived the retries is a ``DataPlaneError`` and ends
the restore.
"""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing

from agent.http_client import DataPlaneClient, MissingChunksError
from agent.restore_types import ChunkUnavailableError
from storage_pool.errors import IntegrityError
from storage_pool.ids import ChunkId

__all__ = ["HttpChunkFetcher"]


class HttpChunkFetcher:
    def __init__(self, client: DataPlaneClient, job_id: str) -> None:
        self._client = client
        self._job_id = job_id

    async def fetch(self, ids: Sequence[ChunkId]) -> AsyncIterator[tuple[ChunkId, bytes]]:
        want = list(ids)
        uses = collections.Counter(want)
        got: dict[ChunkId, bytes] = {}
        pos = 0
        try:
            async with aclosing(self._client.restore_chunks(self._job_id, want)) as stream:
                async for arrived, plaintext in stream:
                    got[arrived] = plaintext
                    while pos < len(want) and want[pos] in got:
                        cid = want[pos]
                        pos += 1
                        uses[cid] -= 1
                        yield cid, (got[cid] if uses[cid] else got.pop(cid))
        except MissingChunksError as err:
            raise ChunkUnavailableError(err.ids, "not sent by the server") from err
        except IntegrityError as err:
            raise ChunkUnavailableError(want[pos:], str(err)) from err
