"""Vault cmdlets: New-Vault, Register-Vault, Get-Vault, Set-VaultPassphrase, Unregister-Vault.

New-Vault runs on the server (which must reach the storage) and writes the credentials
file it answers to -OutFile here, mode 0600, never over an existing file: it holds the
storage credentials. Register-Vault reads that file and sends it with the passphrase.
A generated passphrase is printed once, on stdout, with the instruction to store it
offline; nothing else ever prints a passphrase.

Passphrases (Register-Vault's, Set-VaultPassphrase's new one) come from -PassphraseFile,
$STOCKADE_VAULT_PASSPHRASE or a no-echo prompt on a terminal (server/cli/passphrase_input.py);
-Passphrase still works but shows the passphrase to every user of the host in ``ps``.
"""

import json
import os
from pathlib import Path
from typing import Any, Final

from server.cli.args import Kind, Param
from server.cli.cmdlet import Cmdlet, Invocation
from server.cli.cmdlets_pins import SECURITY_PIN_PARAM
from server.cli.errors import EXIT_OK, CliError, UsageError
from server.cli.passphrase_input import (
    PASSPHRASE_ENV,
    PASSPHRASE_FILE_PARAM,
    PASSPHRASE_SOURCES,
    passphrase_from,
)
from server.cli.render import key_values, local_time
from server.cli.resolve import expect_object

__all__ = ["GET_VAULT", "NEW_VAULT", "REGISTER_VAULT", "SET_VAULT_PASSPHRASE", "UNREGISTER_VAULT"]

Obj = dict[str, Any]

_MAX_CREDENTIALS_BYTES: Final = 64 * 1024
STORE_OFFLINE: Final = (
    "Store this passphrase offline now (paper, a password manager off this host): it is"
    " shown only this once, and without it the vault cannot be read or recovered."
)

# -Backend kind: the CLI parameters it takes, as (parameter, spec field).
_BACKEND_FIELDS: Final[dict[str, tuple[tuple[str, str], ...]]] = {
    "folder": (("Path", "path"),),
    "azure": (
        ("Container", "container"),
        ("Prefix", "prefix"),
        ("ConnectionString", "connection_string"),
        ("AccountUrl", "account_url"),
        ("Sas", "sas"),
    ),
    "s3": (
        ("Bucket", "bucket"),
        ("Prefix", "prefix"),
        ("Endpoint", "endpoint"),
        ("Region", "region"),
        ("AccessKey", "access_key"),
        ("SecretKey", "secret_key"),
    ),
}
_ALL_LOCATION_PARAMS: Final = sorted({p for fields in _BACKEND_FIELDS.values() for p, _ in fields})


def _backend_spec(inv: Invocation) -> Obj:
    kind = inv.args.text("Backend")
    assert kind is not None  # required, one of the choices
    allowed = dict(_BACKEND_FIELDS[kind])
    spec: Obj = {"kind": kind}
    for param in _ALL_LOCATION_PARAMS:
        value = inv.args.text(param)
        if value is None:
            continue
        if param not in allowed:
            raise UsageError(f"New-Vault -Backend {kind} does not take -{param}")
        spec[allowed[param]] = os.path.abspath(value) if param == "Path" else value
    return spec


def _write_secret_file(path: Path, data: bytes) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as err:
        raise UsageError(f"{path} already exists; choose another -OutFile") from err
    except OSError as err:
        raise UsageError(f"cannot create {path}: {err.strerror}") from err
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _new_vault(inv: Invocation) -> int:
    out_file = inv.args.text("OutFile")
    assert out_file is not None  # required
    path = Path(out_file)
    if path.exists():
        raise UsageError(f"{path} already exists; choose another -OutFile")
    if not path.parent.is_dir():
        raise UsageError(f"-OutFile {path}: directory {path.parent} does not exist")
    spec = _backend_spec(inv)
    doc = expect_object(inv.client.post("/vaults", {"backend": spec}), inv.client, "POST /vaults")
    _write_secret_file(path, (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode())
    summary = {
        "out_file": str(path.resolve()),
        "credentials_id": doc.get("credentials_id"),
        "vault_id": doc.get("vault_id"),
        "expires_at": doc.get("expires_at"),
    }
    if inv.json:
        inv.emit_json(summary)
        return EXIT_OK
    vault = doc.get("vault_id") or "new (keys are made at the first Register-Vault)"
    inv.out.write(
        key_values(
            [
                ("CredentialsFile", str(summary["out_file"])),
                ("Vault", str(vault)),
                ("Expires", local_time(doc.get("expires_at"))),
            ]
        )
    )
    inv.note(
        "The credentials file holds the storage credentials: keep it secret. Register a"
        " server with it before it expires (stockade Register-Vault -CredentialsFile ...)."
    )
    return EXIT_OK


NEW_VAULT: Final = Cmdlet(
    "New-Vault",
    "create a vault on a backend and write a credentials file valid 48 h",
    params=(
        Param(
            "Backend", help="folder, azure or s3", required=True, choices=("folder", "azure", "s3")
        ),
        Param(
            "OutFile", help="credentials file to write (mode 0600, not overwritten)", required=True
        ),
        Param("Path", help="folder: the vault directory (as the server sees it)"),
        Param("ConnectionString", help="azure: storage account connection string"),
        Param("AccountUrl", help="azure: account URL (with -Sas instead of a connection string)"),
        Param("Sas", help="azure: SAS token for -AccountUrl"),
        Param("Container", help="azure: container name"),
        Param("Bucket", help="s3: bucket name"),
        Param("Prefix", help="azure/s3: a prefix inside the container or bucket"),
        Param("Endpoint", help="s3: endpoint URL of an S3-compatible service"),
        Param("Region", help="s3: region (default us-east-1)"),
        Param("AccessKey", help="s3: access key id"),
        Param("SecretKey", help="s3: secret access key"),
    ),
    run=_new_vault,
    description="The server creates the container (folder, bucket prefix) and writes the "
    "credentials file here. For a location that already holds a vault it writes credentials "
    "for that vault (for an alternate server). The vault's keys are made at the first "
    "Register-Vault, from its passphrase.",
    examples=(
        "stockade New-Vault -Backend folder -Path /srv/vault -OutFile vault.cred",
        "stockade New-Vault -Backend azure -ConnectionString $CS -Container backups"
        " -OutFile vault.cred",
        "stockade New-Vault -Backend s3 -Endpoint https://s3.example -Bucket b -Prefix stockade"
        " -AccessKey K -SecretKey S -OutFile vault.cred",
    ),
)


def _read_credentials(path_text: str) -> Any:
    path = Path(path_text)
    try:
        raw = path.read_bytes()[: _MAX_CREDENTIALS_BYTES + 1]
    except OSError as err:
        raise UsageError(f"cannot read credentials file {path}: {err.strerror}") from err
    if len(raw) > _MAX_CREDENTIALS_BYTES:
        raise UsageError(f"{path} is too large to be a vault credentials file")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UsageError(f"{path} is not a vault credentials file (not JSON)") from err


def _register_vault(inv: Invocation) -> int:
    creds_file = inv.args.text("CredentialsFile")
    assert creds_file is not None  # required
    generate = inv.args.switch("GeneratePassphrase")
    passphrase: str | None = None
    if generate:
        if inv.args.given("Passphrase") or inv.args.given("PassphraseFile"):
            raise UsageError(
                "-GeneratePassphrase makes the passphrase: drop -Passphrase/-PassphraseFile"
            )
    else:
        passphrase = passphrase_from(inv)
        if passphrase is None:
            raise UsageError(
                f"Register-Vault needs the passphrase: {PASSPHRASE_SOURCES};"
                " or -GeneratePassphrase for a new vault"
            )
    body: Obj = {"credentials": _read_credentials(creds_file)}
    if generate:
        body["generate_passphrase"] = True
    else:
        body["passphrase"] = passphrase
    answer = expect_object(
        inv.client.post("/vault/registration", body), inv.client, "POST /vault/registration"
    )
    generated = answer.get("generated_passphrase")
    if generate and not isinstance(generated, str):
        raise CliError("the server did not return the generated passphrase")
    if inv.json:
        inv.emit_json(answer)
        if generated:
            inv.note(STORE_OFFLINE)
        return EXIT_OK
    keys = "created" if answer.get("created_keys") else "existing vault unlocked"
    inv.out.write(
        key_values(
            [
                ("Vault", str(answer.get("vault_id"))),
                ("Location", str(answer.get("description"))),
                ("State", str(answer.get("state"))),
                ("Keys", keys),
            ]
        )
    )
    if generated:
        inv.out.write(f"Passphrase: {generated}\n{STORE_OFFLINE}\n")
    return EXIT_OK


REGISTER_VAULT: Final = Cmdlet(
    "Register-Vault",
    "register this server with a vault (credentials file + passphrase)",
    params=(
        Param("CredentialsFile", help="file written by New-Vault (valid 48 h)", required=True),
        PASSPHRASE_FILE_PARAM,
        Param(
            "Passphrase",
            help="the vault passphrase, at least 16 characters (visible to other users in ps:"
            " prefer -PassphraseFile)",
        ),
        Param("GeneratePassphrase", Kind.SWITCH, "generate one (new vault only; printed once)"),
    ),
    run=_register_vault,
    description="The first registration of a new vault makes its master key, wrapped by the "
    "passphrase. A later one (an alternate server) unlocks the vault with it. One server, "
    "one vault. An expired credentials file, a passphrase shorter than 16 characters or a "
    "wrong passphrase is refused and nothing is registered. The passphrase comes from "
    f"-PassphraseFile (first line; mode 0600 or stricter), else ${PASSPHRASE_ENV}, else a "
    "prompt without echo on a terminal. -Passphrase also works, but every user of this "
    "host can read it in ps while the command runs.",
    examples=(
        "stockade Register-Vault -CredentialsFile vault.cred -GeneratePassphrase",
        "stockade Register-Vault -CredentialsFile vault.cred -PassphraseFile /root/vault.pass",
        "stockade Register-Vault -CredentialsFile vault.cred   # asks for the passphrase",
    ),
)


def _get_vault(inv: Invocation) -> int:
    doc = expect_object(inv.client.get("/vault"), inv.client, "GET /vault")
    if inv.json:
        inv.emit_json(doc)
        return EXIT_OK
    if not doc.get("registered"):
        inv.out.write(
            "This server is not registered with a vault (see New-Vault, Register-Vault).\n"
        )
        return EXIT_OK
    stored = doc.get("stored_bytes")
    pairs = [
        ("Vault", str(doc.get("vault_id"))),
        ("Location", str(doc.get("description"))),
        ("State", str(doc.get("state"))),
        ("Registered", local_time(doc.get("registered_at"))),
        ("HeaderGeneration", str(doc.get("header_generation"))),
        ("Kdf", str(doc.get("kdf") or "-")),
        ("OnlineRecoveryPoints", str(doc.get("online_recovery_points"))),
        ("StoredBytes", "unknown" if stored is None else str(stored)),
    ]
    if doc.get("error"):
        pairs.append(("Error", str(doc["error"])))
    inv.out.write(key_values(pairs))
    return EXIT_OK


GET_VAULT: Final = Cmdlet(
    "Get-Vault",
    "vault location, state, usage, online RP counts",
    run=_get_vault,
    description="Shows the registered vault without any secret. State comes from the vault "
    "header, read and authenticated now; 'unknown' with the reason when it cannot be read.",
    examples=("stockade Get-Vault", "stockade Get-Vault -Json"),
)


def _set_vault_passphrase(inv: Invocation) -> int:
    passphrase = passphrase_from(inv, "new vault passphrase")
    if passphrase is None:
        raise UsageError(f"Set-VaultPassphrase needs the new passphrase: {PASSPHRASE_SOURCES}")
    body: Obj = {"passphrase": passphrase}
    pin = inv.args.text("SecurityPin")
    if pin is not None:
        body["security_pin"] = pin
    answer = expect_object(
        inv.client.post("/vault/passphrase", body), inv.client, "POST /vault/passphrase"
    )
    if inv.json:
        inv.emit_json(answer)
        return EXIT_OK
    inv.out.write(
        f"Vault {answer.get('vault_id')}: passphrase changed (header generation"
        f" {answer.get('header_generation')}). Store the new passphrase offline.\n"
    )
    return EXIT_OK


SET_VAULT_PASSPHRASE: Final = Cmdlet(
    "Set-VaultPassphrase",
    "change the vault passphrase (needs -SecurityPin)",
    params=(
        Param(
            "PassphraseFile",
            help="read the new passphrase from the first line of this file (mode 0600 or stricter)",
        ),
        Param(
            "Passphrase",
            help="the new passphrase, at least 16 characters (visible to other users in ps:"
            " prefer -PassphraseFile)",
        ),
        SECURITY_PIN_PARAM,
    ),
    run=_set_vault_passphrase,
    description="Re-wraps the vault's master key under the new passphrase; no object in the "
    "vault is rewritten. The old passphrase no longer opens the vault. The new passphrase "
    f"comes from -PassphraseFile (first line; mode 0600 or stricter), else ${PASSPHRASE_ENV}, "
    "else a prompt without echo on a terminal (asked twice). -Passphrase also works, but "
    "every user of this host can read it in ps while the command runs.",
    examples=(
        "stockade Set-VaultPassphrase -PassphraseFile /root/new.pass -SecurityPin 12345678",
        "stockade Set-VaultPassphrase -SecurityPin 12345678   # asks for the new passphrase",
    ),
)


def _unregister_vault(inv: Invocation) -> int:
    body: Obj = {}
    pin = inv.args.text("SecurityPin")
    if pin is not None:
        body["security_pin"] = pin
    answer = expect_object(
        inv.client.request("DELETE", "/vault/registration", body=body),
        inv.client,
        "DELETE /vault/registration",
    )
    if inv.json:
        inv.emit_json(answer)
        return EXIT_OK
    inv.out.write(
        f"Unregistered from vault {answer.get('vault_id')} ({answer.get('description')}).\n"
        "Its data stays in the vault; this server no longer holds its passphrase.\n"
        f"{answer.get('online_recovery_points', 0)} online recovery point(s) stay listed"
        " (Get-RecoveryPoint -Tier Cloud); Register-Vault with this vault makes them"
        " restorable again.\n"
    )
    return EXIT_OK


UNREGISTER_VAULT: Final = Cmdlet(
    "Unregister-Vault",
    "forget the registered vault; its data stays (needs -SecurityPin)",
    params=(SECURITY_PIN_PARAM,),
    run=_unregister_vault,
    description="Removes this server's registration (with the stored passphrase and storage "
    "credentials); nothing in the vault is deleted. Refused while an online backup, a "
    "restore from the cloud, a cloud verify or GC, or a vault sync is queued or running. "
    "Afterwards Get-CloudConnection says False (not_registered) and cloud operations are "
    "refused; online recovery points stay listed, marked as in an unregistered vault. "
    "Register-Vault with the same vault and passphrase brings them back.",
    examples=(
        "stockade New-SecurityPin",
        "stockade Unregister-Vault -SecurityPin 12345678",
    ),
)
