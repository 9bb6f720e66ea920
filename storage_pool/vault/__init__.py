"""The cloud vault: the second copy of every protected recovery point.

A vault is one container (an Azure Blob container, a prefix inside an S3 bucket, or a
local folder) holding only opaque, encrypted objects, so that a fresh server with the
vault's location, its credentials and the passphrase can list and restore every online RP.

Layers, from the bottom:

- ``backend``: the one small async storage interface (`VaultBackend`) with written
  contracts, and the error tree every implementation maps its SDK's errors into.
- ``folder``, ``azure``, ``s3``: the implementations. They store bytes under names and know
  nothing of encryption or of the vault format.
- ``retry`` and ``throttle``: wrappers over any backend. Retries (transient errors only)
  and upload rate limits live there and nowhere else.
- ``keys``, ``crypto``, ``format``, ``pack``: the vault format (header, key wrapping,
  AES-256-GCM objects, pack objects) built on a backend.

Like the rest of ``storage_pool`` this package imports nothing from ``server`` or ``agent``.
"""
