"""The vault format: what a vault holds, how objects are named, sealed and ordered.

Namespace (every name a backend sees)::

    stockade-vault.json          the header: plain JSON, authenticated (header.py)
    data/<2 hex>/<64 hex>        every other object: packs, index segments, online-RP
                                 manifests and catalogs alike (names.py)

An object name is 16 random bytes followed by a 16-byte HMAC tag of (kind, those bytes)
under the names subkey, in hex. Without the key the names are uniform random hex: no
kind, path, data source, size or chunk hash is in a name, and backends store no custom
metadata. With the key, a listing of `data/` is sorted into kinds by recomputing tags,
so a fresh server finds every catalog and manifest without downloading packs. The
2-hex shard lets listings run in parallel.

Sealed objects (crypto.py): ``b"SKV" | version u8 | nonce (12) | AES-256-GCM ciphertext
and tag (16)``, associated data = (vault id, format version, kind, object id). The kind
is not in the clear. A pack blob's object id is ``<pack name>:<chunk id hex>``, every
other object's id is its own name, so an object stored under another name, of another
kind, from another vault, truncated or bit-flipped fails with `TamperedObjectError`.

Pack (pack.py): ``blob_0 | ... | blob_n-1 | sealed trailer | trailer length u32 LE |
b"SKP1"``. A blob is one sealed chunk frame exactly as the pool stores it (framing.py:
zstd or raw), so nothing is recompressed and a restore fetches one blob with one ranged
GET. The trailer lists (chunk id, offset, length) of every blob; the last 8 bytes say
how long it is, so one ranged GET of the tail finds it.

Index segment (index_segment.py): chunk id -> (pack name, offset, length) for packs
already uploaded. Online-RP manifest and catalog: online_manifest.py, catalog.py.

Write order of an online backup:
  1. packs (each verified after upload);
  2. the index segments locating their blobs;
  3. the online-RP manifest, naming the index segments it relies on (with digests) and
     carrying the next vault-wide sequence number;
  4. a new catalog (generation + 1) listing every live manifest; then older catalogs
     are deleted. Step 4 is the commit: a reader trusts the newest catalog.
A crash before 3 leaves packs and segments no manifest relies on (found by GC); a crash
between 3 and 4 leaves a manifest newer than the head catalog, which readers accept as
pending and the next job adds to the catalog.

Rollback: object ids are bound into the AEAD and names are never reused, so an older
object cannot be served under a newer name. A deleted manifest restored under its own
name has a sequence at or below the head catalog's and is not listed in it: refused
with `RollbackError`. Rolling the whole vault back (an older catalog restored, newer
ones deleted) is detected only against a trusted high-water mark: the server keeps the
last catalog generation it saw and passes it as `min_generation`; a fresh server
recovering from the vault alone trusts the newest catalog it finds.
"""

from __future__ import annotations

import enum

FORMAT_VERSION = 1
HEADER_NAME = "stockade-vault.json"
DATA_PREFIX = "data/"


class ObjectKind(enum.StrEnum):
    """What an object (or a part of a pack) is; bound into the AEAD associated data."""

    PACK = "pack"  # names only: a pack as a whole is not sealed, its parts are
    BLOB = "blob"
    TRAILER = "trailer"
    INDEX = "index"
    MANIFEST = "manifest"
    CATALOG = "catalog"


NAMED_KINDS = (ObjectKind.PACK, ObjectKind.INDEX, ObjectKind.MANIFEST, ObjectKind.CATALOG)
