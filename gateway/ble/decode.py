"""Advertisement in, `Parsed` out: which parser, one parser per device, one call per advertisement.

The kind comes from what the advertisement carries, as the libraries match it: a BTHome service
data UUID (bthome-ble's own list) or Ruuvi's company id in the manufacturer data. Anything else
(phones, beacons, the neighbour's TV) is not a sensor and is not decoded. Each device (MAC) gets
its own parser, because bthome-ble keeps per-device state, with the bindkey configured for it;
the table is bounded so that a street full of random addresses cannot grow it without end.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

from gateway.ble.advertisement import Advertisement
from gateway.ble.bthome import BTHOME_UUIDS, BTHomeParser
from gateway.ble.parsed import Kind, Parsed
from gateway.ble.reasons import BadReason
from gateway.ble.ruuvi import RUUVI_COMPANY_ID, RuuviParser
from gateway.ble.service_info import to_service_info
from saltmarsh.contract.mac import normalize_mac

# An advertising data structure's length is one byte, so no AD value holds more than 254 bytes
# (less its type and UUID or company id); extended advertising carries at most 1650 bytes in all
# (Core spec, Vol 4, Part E 7.4.2). Anything larger did not come off the air.
MAX_AD_VALUE_BYTES = 252
MAX_ADVERTISING_BYTES = 1650
MAX_PARSERS = 4096


def kind_of(advertisement: Advertisement) -> Kind | None:
    """BTHome or Ruuvi, by the service data UUID or company id it carries; None if neither."""
    if any(uuid in BTHOME_UUIDS for uuid, _ in advertisement.service_data):
        return Kind.BTHOME
    if any(company == RUUVI_COMPANY_ID for company, _ in advertisement.manufacturer_data):
        return Kind.RUUVI
    return None


def oversized(advertisement: Advertisement) -> bool:
    values = [data for _, data in advertisement.service_data] + [data for _, data in advertisement.manufacturer_data]
    return any(len(data) > MAX_AD_VALUE_BYTES for data in values) or sum(map(len, values)) > MAX_ADVERTISING_BYTES


class Decoder:
    """The parsers of every device heard, each fed every advertisement of its device once."""

    def __init__(self, bindkeys: Mapping[str, bytes] | None = None, max_parsers: int = MAX_PARSERS) -> None:
        self._bindkeys = {normalize_mac(mac): key for mac, key in (bindkeys or {}).items()}
        self._max_parsers = max_parsers
        self._parsers: OrderedDict[tuple[str, Kind], BTHomeParser | RuuviParser] = OrderedDict()
        self.parsers_evicted = 0

    def decode(self, advertisement: Advertisement, kind: Kind) -> Parsed:
        if oversized(advertisement):
            return Parsed(bad=BadReason.OVERSIZED)
        return self._parser(advertisement.address, kind).parse(to_service_info(advertisement))

    def _parser(self, mac: str, kind: Kind) -> BTHomeParser | RuuviParser:
        key = (mac, kind)
        parser = self._parsers.get(key)
        if parser is not None:
            self._parsers.move_to_end(key)
            return parser
        parser = BTHomeParser(self._bindkeys.get(mac)) if kind is Kind.BTHOME else RuuviParser()
        self._parsers[key] = parser
        if len(self._parsers) > self._max_parsers:
            # The longest-unheard device loses its state: at worst one repeat gets through for it.
            self._parsers.popitem(last=False)
            self.parsers_evicted += 1
        return parser
