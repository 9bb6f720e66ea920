"""The server's HTTP API (aiohttp, TLS): the agents' data plane and the operators' REST API.

Operator REST API (JSON; ``Authorization: Bearer <operator token>``; errors are
``{"error": "<one-line reason>"}`` with 400 bad input, 401 no/bad token, 403 security PIN
refused, 404 unknown object, 409 conflict/state, 422 integrity, 503 not ready, 507 storage
pool under its free-space reserve). Times are unix seconds (float).
Under ``/api/v1``:

``GET  /health``                      -> ``{"status": "ok", "version"}`` (no auth)
``POST /agent-tokens``                ``{"ttl_minutes"?}`` -> ``{"token", "expires_at"}``
``POST /register`` (no auth; the token is the credential)
    ``{"token", "name"?, "hostname", "version"}`` -> ``{"agent_id", "credential", "ca_pem",
    "server_url", "mqtt_url", "command_key"}``; 403 ``{"error"}`` for unknown/used/expired tokens.
``GET  /agents``                      -> ``[{"id","name","hostname","online","last_seen_at",
    "last_backup_at","version","created_at"}]``
``DELETE /agents/{id-or-name}``       -> ``{"removed": id}`` (``?delete_data=1`` also drops RPs;
    it needs a security PIN: body ``{"security_pin"}`` or ``?security_pin=``)
``GET  /data-sources?agent=``         -> ``[{"id","agent_id","agent_name","name","kind",
    "paths","excludes","created_at","last_rp_at","rp_count"}]``
``POST /data-sources``                ``{"agent","name"?,"paths":[...],"excludes":[...]}`` -> one
``DELETE /data-sources/{id}``         body ``{"delete_data"?, "security_pin"?}`` (or the same
    in the query): delete_data drops its RPs and needs a PIN
``POST /jobs/backup``                 ``{"data_source"}`` (id or ``agentname:dsname``) -> job;
    or ``{"protection_group"}`` (name or id) -> ``{"protection_group": {"id","name"},
    "jobs": [job], "skipped": [{"data_source_id","data_source","reason"}]}``: one job per
    member; members with a backup already queued or running are skipped, not an error
``POST /jobs/restore``                ``{"rp_id","items":[...],"target_agent"?,"target_path"?,
    "conflict":"overwrite|skip|rename"}`` -> job (no target_path = original location)
``GET  /jobs?state=&agent=&data_source=&limit=`` -> ``[job]``; ``GET /jobs/{id}`` -> job
``POST /jobs/{id}/cancel``            -> job
   job = ``{"id","kind","state","agent_id","data_source_id","params","progress":{"files",
   "bytes","rate_bps","current_path"},"result","error","warnings","created_at","started_at",
   "ended_at"}``
``GET  /recovery-points?data_source=&agent=&tier=disk|cloud|all`` -> ``[{"id","data_source_id",
    "data_source_name","agent_id","agent_name","created_at","entries","files","logical_bytes",
    "warnings","tier":"disk"}]``; with ``tier=cloud`` (or ``all``) the online RPs too, the one
    listing of them (server/operator_cloud.py): the same fields (``created_at`` of the disk RP
    copied; ``entries``/``files`` null) plus ``"copied_at","disk_rp_id","sequence","job_id",
    "deleted_at","tier":"cloud","vault_id","vault_registered"``. They come from the catalog
    (what this server recorded); ``source=vault`` syncs the catalog from the vault first
    (alternate-server recovery; no vault 409, wrong passphrase 403, tampered/rolled-back 422,
    storage 502); ``deleted=1`` adds soft-deleted ones. After Unregister-Vault they stay
    listed with ``vault_registered`` false (``vault_id`` names the vault they are in)
``GET  /recovery-points/{id}/items?path=`` -> ``[{"path","type","size","mode","mtime"}]``: the
    direct children of ``path`` ("" = top level); paths are fsdecode (surrogateescape) strings
``GET  /storage-pool``                -> ``{"path","recovery_points","logical_bytes",
    "stored_bytes","chunk_count","dedup_ratio","fs_total_bytes","fs_free_bytes",
    "fs_used_percent","reserve_bytes","below_reserve","scratch_path","scratch_used_bytes"}``
    (under the reserve, ``below_reserve`` is true and new backups are refused with 507)
``GET  /alerts?all=``                 -> ``[{"id","kind","subject","severity","message",
    "details","opened_at","updated_at","resolved_at"}]``, newest first; open ones only
    unless ``all=true``. Kinds: failed_job, missed_backup, agent_offline, pool_usage,
    pool_reserve; severity warning|error|critical
``GET  /protection-groups?include_removed=`` -> ``[group]``; ``GET /protection-groups/{ref}``
    (name or ``pg-...`` id) -> group
   group = ``{"id","name","members":[{"id","ref","agent_name","name","rp_count","last_rp_at"}],
   "disk":{"sync_frequency_minutes" (null = only at RP times),"recovery_point_times":["HH:MM"],
   "retention_days"},"online":{"enabled","times","daily","weekly","monthly","yearly"},
   "created_at","updated_at","removed_at"}``
``POST /protection-groups``           ``{"name","disk"?,"online"?,"members"?:[ds ref]}`` -> 201
    group; policy fields left out take their defaults; ``sync_frequency_minutes`` may be
    ``"rp-times"``; an invalid value is 400 naming the allowed values; a data source that
    is in another group is 409
``PATCH /protection-groups/{ref}``    ``{"name"?,"disk"?,"online"?,"add"?:[ref],"remove"?:[ref],
    "security_pin"?}`` -> group; only given fields change; a change that makes existing RPs
    expire (shorter retention, or an added member with older RPs) needs the PIN
``DELETE /protection-groups/{ref}``   body ``{"delete_data"?,"security_pin"?}`` (or the same in
    the query) -> ``{"removed","name","members","recovery_points_deleted"}``; members become
    unprotected; delete_data deletes all their RPs and needs the PIN
``POST /security-pins``               -> 201 ``{"pin","expires_at"}``: 8 digits, valid 5 minutes,
    usable once
``POST /vaults``                      ``{"backend": {"kind": "folder", "path"} | {"kind": "azure",
    "container", "prefix"?, "connection_string" | "account_url" + "sas"} | {"kind": "s3",
    "bucket", "prefix"?, "endpoint"?, "region"?, "access_key", "secret_key"}}`` -> 201 the vault
    credentials document (server/vault_credentials.py; valid 48 h): creates the container
    and, for a new vault, its marker; keys are made at the first registration
``POST /vault/registration``          ``{"credentials", "passphrase" | "generate_passphrase":
    true}`` -> 201 ``{"vault_id","created_keys","state","location","description",
    "registered_at","generated_passphrase"}`` (the generated passphrase appears here only,
    once; else null); expired/edited credentials or a short passphrase 400, a wrong
    passphrase 403, another vault already registered 409
``GET  /vault``                       -> ``{"registered","vault_id","location" (no secrets),
    "description","state" (active|expired|deprovisioned|unknown),"header_generation","kdf",
    "registered_at","created_keys","credentials_id","credentials_expires_at",
    "online_recovery_points","online_data_sources","stored_bytes","error"}``
``POST /vault/passphrase``            ``{"passphrase","security_pin"}`` -> ``{"vault_id",
    "header_generation"}``: re-wraps the master key; needs a security PIN (403)
``DELETE /vault/registration``        body ``{"security_pin"}`` (or ``?security_pin=``) ->
    ``{"vault_id","location","description","unregistered_at","online_recovery_points",
    "vault_data":"kept"}``: Unregister-Vault (server/vault_unregister.py); the registration
    and its stored passphrase are removed, the vault is not touched, online RP rows stay;
    no vault registered 409, a queued or running online backup, cloud restore, cloud
    verify or cloud GC 409 naming the job, a vault sync running 409, PIN refused 403.
    The connection then reads ``not_registered`` and cloud operations are refused
``POST /vault/sync``                  -> ``{"vault_id","catalog_generation","listed","added",
    "agents_created","data_sources_created","marked_deleted","pending","skipped","refused"}``:
    the catalog's online RPs brought in line with the vault (server/vault_sync.py)
``GET  /throttling``                  -> ``{"enabled","work_bps","non_work_bps","work_days"
    (0 Monday .. 6 Sunday),"work_start","work_end" (whole hours),"work_hour_bandwidth",
    "non_work_hour_bandwidth","work_day_names"}`` (server/throttling.py)
``PUT  /throttling``                  some of ``{"enabled","work_bps" ("10Mbps" or bit/s),
    "non_work_bps","work_days" (names or numbers),"work_start" ("08:00"),"work_end"}`` -> the
    new setting; a rate outside 512 Kbps .. 1023 Mbps or bad days/hours 400
``GET  /cloud/connection``            -> ``{"connected","connectivity" (connected|disconnected|
    lost|not_registered),"vault_state" (active|expired|deprovisioned|null),"vault",
    "last_success","last_failure","last_error","last_reason","last_probe","checked_at",
    "since_contact_seconds","lost_after_seconds","operations":{"backup_to_cloud"|
    "backup_to_disk"|"restore_from_cloud"|"restore_from_disk": {"allowed","reason"}},
    "summary", and "*_iso" copies of the four times}`` (server/operator_connection.py);
    503 while the connectivity monitor is not running
``POST /cloud/connection/probe``      probe the vault now -> the same document; a failed
    probe is the answer (``connected`` false, ``last_reason``), not an HTTP error
``POST /jobs/verify``                 ``{"tier": "disk"|"cloud","sample"?: (0, 1],"seed"?}`` ->
    201 a VERIFY job (server/verify_jobs.py); no vault for the cloud tier or another verify
    job active 409; its result lists damaged/repaired chunks and the (online) RPs they break

Outside ``/api/v1``, with no token: ``GET /metrics``, Prometheus text (server/metrics.py).
"""
