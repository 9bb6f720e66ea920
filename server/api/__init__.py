"""The server's HTTP API (aiohttp, TLS): the agents' data plane and the operators' REST API.

Operator REST API (JSON; ``Authorization: Bearer <operator token>``; errors are
``{"error": "<one-line reason>"}`` with 400 bad input, 401 no/bad token, 404 unknown object,
409 conflict/state, 422 integrity, 503 not ready). Times are unix seconds (float).
Under ``/api/v1``:

``GET  /health``                      -> ``{"status": "ok", "version"}`` (no auth)
``POST /agent-tokens``                ``{"ttl_minutes"?}`` -> ``{"token", "expires_at"}``
``POST /register`` (no auth; the token is the credential)
    ``{"token", "name"?, "hostname", "version"}`` -> ``{"agent_id", "credential", "ca_pem",
    "server_url", "mqtt_url", "command_key"}``; 403 ``{"error"}`` for unknown/used/expired tokens.
``GET  /agents``                      -> ``[{"id","name","hostname","online","last_seen_at",
    "last_backup_at","version","created_at"}]``
``DELETE /agents/{id-or-name}``       -> ``{"removed": id}`` (``?delete_data=1`` also drops RPs)
``GET  /data-sources?agent=``         -> ``[{"id","agent_id","agent_name","name","kind",
    "paths","excludes","created_at","last_rp_at","rp_count"}]``
``POST /data-sources``                ``{"agent","name"?,"paths":[...],"excludes":[...]}`` -> one
``DELETE /data-sources/{id}``
``POST /jobs/backup``                 ``{"data_source"}`` (id or ``agentname:dsname``) -> job
``POST /jobs/restore``                ``{"rp_id","items":[...],"target_agent"?,"target_path"?,
    "conflict":"overwrite|skip|rename"}`` -> job (no target_path = original location)
``GET  /jobs?state=&agent=&data_source=&limit=`` -> ``[job]``; ``GET /jobs/{id}`` -> job
``POST /jobs/{id}/cancel``            -> job
   job = ``{"id","kind","state","agent_id","data_source_id","params","progress":{"files",
   "bytes","rate_bps","current_path"},"result","error","warnings","created_at","started_at",
   "ended_at"}``
``GET  /recovery-points?data_source=&agent=`` -> ``[{"id","data_source_id","data_source_name",
    "agent_id","agent_name","created_at","entries","files","logical_bytes","tier":"disk"}]``
``GET  /recovery-points/{id}/items?path=`` -> ``[{"path","type","size","mode","mtime"}]``: the
    direct children of ``path`` ("" = top level); paths are fsdecode (surrogateescape) strings
``GET  /storage-pool``                -> ``{"path","recovery_points","logical_bytes",
    "stored_bytes","chunk_count","dedup_ratio","fs_total_bytes","fs_free_bytes",
    "scratch_path","scratch_used_bytes"}``
"""
