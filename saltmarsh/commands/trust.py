"""Whether a received message is a command to trust: the checks a gateway and a device both make.

In: the topic, payload and retain flag as the broker handed them over, the trusted public keys,
and who is asking (a site; a device, for the last hop). Out: the parsed command, or `Refused`
naming which check failed (retained, invalid, forged, misaddressed) and why. The order is the
security model: nothing about a message that fails them is ever reported, only counted
(`count_refusal`), since a report about a forged `cmd_id` would let a forger write its state.
"""

from __future__ import annotations

import logging

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from saltmarsh.contract.command import Command, check_addressed, parse_command
from saltmarsh.contract.envelope import Limits
from saltmarsh.contract.errors import Reason, ValidationError
from saltmarsh.contract.signature import verify

DEFAULT_LIMITS = Limits()
REFUSALS = ("retained", "invalid", "forged", "misaddressed")


class Refused(Exception):
    def __init__(self, refusal: str, why: str) -> None:
        super().__init__(why)
        self.refusal = refusal  # one of REFUSALS
        self.why = why


def trusted_command(
    topic: str,
    payload: bytes,
    *,
    retained: bool,
    public_keys: list[Ed25519PublicKey],
    site: str,
    device: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> Command:
    """The command, if it may be trusted by `site` (and `device`, on the last hop); else Refused."""
    if retained:
        raise Refused("retained", "retained: a command is never a broker's last value")
    try:
        cmd = parse_command(topic, payload, limits)
        verify(cmd, public_keys)
    except ValidationError as err:
        raise Refused("forged" if err.reason is Reason.BAD_SIGNATURE else "invalid", str(err)) from None
    try:
        if device is None:
            if cmd.site != site:
                raise ValidationError(Reason.NOT_ADDRESSED, "site", f"{cmd.site!r} is not this gateway's {site!r}")
        else:
            check_addressed(cmd, site, device)
    except ValidationError as err:
        raise Refused("misaddressed", str(err)) from None
    return cmd


def count_refusal(counters: object, refused: Refused, topic: str, log: logging.Logger) -> None:
    """Count it in `counters.<refusal>_total` and log it: never more than that."""
    name = f"{refused.refusal}_total"
    setattr(counters, name, getattr(counters, name) + 1)
    extra = {"event": "command_refused", "refusal": refused.refusal, "topic": topic[:200]}
    log.warning("command refused: %s", refused.why[:300], extra=extra)
