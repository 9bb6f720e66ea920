"""New-SecurityPin: a one-time PIN, valid 5 minutes, that destructive cmdlets ask for."""

from typing import Final

from server.cli.args import Param
from server.cli.cmdlet import Cmdlet, Invocation
from server.cli.errors import EXIT_OK
from server.cli.render import key_values, local_time
from server.cli.resolve import expect_object

__all__ = ["NEW_SECURITY_PIN", "SECURITY_PIN_PARAM"]

SECURITY_PIN_PARAM: Final = Param(
    "SecurityPin", help="PIN from New-SecurityPin (valid 5 minutes, used once)"
)


def _new_security_pin(inv: Invocation) -> int:
    answer = expect_object(inv.client.post("/security-pins"), inv.client, "POST /security-pins")
    if inv.json:
        inv.emit_json(answer)
        return EXIT_OK
    inv.out.write(
        key_values(
            [("Pin", str(answer.get("pin"))), ("Expires", local_time(answer.get("expires_at")))]
        )
    )
    return EXIT_OK


NEW_SECURITY_PIN: Final = Cmdlet(
    "New-SecurityPin",
    "a PIN valid 5 minutes for destructive operations",
    run=_new_security_pin,
    description="Destructive operations ask for -SecurityPin: deleting the data of a "
    "protection group, agent or data source, and a shorter disk retention that makes "
    "existing recovery points expire. A PIN works once, within 5 minutes.",
    examples=(
        "stockade New-SecurityPin",
        "stockade Remove-ProtectionGroup -Name web -DeleteData -SecurityPin 12345678",
    ),
)
