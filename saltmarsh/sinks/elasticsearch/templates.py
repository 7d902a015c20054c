"""Index names, composable index templates and the optional ILM policy for Elasticsearch.

Every index is monthly and chosen by the document's own time, `{prefix}-{family}-YYYY.MM`, never
by the clock at write time: a late duplicate of a reading from March lands in the March index,
where its `_id` already exists, so create-only writes deduplicate it exactly. A rolled-over
data stream would put it in today's backing index and store it twice.

Three monthly families, each with a template and an alias for Kibana data views:
- `readings`: every data message (readings, events and alerts share the seq counter, so the audit
  needs them in one place), `_id` = `device:boot:seq`.
- `deadletter`: messages that broke the contract or that Elasticsearch refused.
- `fleet-events`: Salt bus events relayed by the master's engine.

And one index that is not monthly, `{prefix}-commands`: each command target's state, `_id` =
`cmd_id/device`, overwritten in place as the target's state moves forward. A month suffix would
split a rollout that crosses a month end into two documents per target, and no version check
spans indices. It has a template but no alias (its own name is what a data view points at) and
never a retention policy: ILM deletes whole indices, so it would drop every target's state at once.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from elasticsearch import ApiError, Elasticsearch

log = logging.getLogger(__name__)

READINGS = "readings"
DEAD_LETTERS = "deadletter"
FLEET_EVENTS = "fleet-events"
COMMANDS = "commands"
FAMILIES = (READINGS, DEAD_LETTERS, FLEET_EVENTS, COMMANDS)  # one template each, named by template_name

# Above the built-in templates (logs-*-*, metrics-*-* at 100), so ours win if an operator
# widens a pattern; ours never overlap each other.
TEMPLATE_PRIORITY = 200
# Metric names come from the fleet, not from us; the default limit of 1000 fields per index would
# turn a few hundred distinct metric names in one month into refused readings.
READINGS_TOTAL_FIELDS_LIMIT = 2000

_KEYWORD = {"type": "keyword", "ignore_above": 1024}
_DATE = {"type": "date"}
# Kept in _source for reading, never indexed: a payload's head is 1 KiB of anything.
_STORED_ONLY = {"type": "keyword", "index": False, "doc_values": False}


def monthly_index(prefix: str, family: str, ts_ms: int) -> str:
    """`{prefix}-{family}-YYYY.MM` for the UTC month holding `ts_ms`."""
    when = datetime.fromtimestamp(ts_ms // 1000, tz=UTC)
    return f"{prefix}-{family}-{when.year:04d}.{when.month:02d}"


def index_pattern(prefix: str, family: str) -> str:
    return f"{prefix}-{family}-*"


def command_index(prefix: str) -> str:
    """The one index of command states, every rollout's."""
    return f"{prefix}-{COMMANDS}"


def alias_name(prefix: str, family: str) -> str:
    """Spans every month of one family: what a Kibana data view points at."""
    return f"{prefix}-{family}"


def template_name(prefix: str, family: str) -> str:
    return f"{prefix}-{family}"


def policy_name(prefix: str) -> str:
    return f"{prefix}-retention"


READINGS_MAPPINGS: dict[str, Any] = {
    # Strict: a field the sink does not write is a bug, and must fail loudly (as a dead letter)
    # rather than grow an unplanned mapping.
    "dynamic": "strict",
    "dynamic_templates": [
        {"metrics_as_float": {"path_match": "metrics.*", "match_mapping_type": "*", "mapping": {"type": "float"}}},
        {"units_as_keyword": {"path_match": "saltmarsh.units.*", "mapping": _KEYWORD}},
    ],
    "properties": {
        "@timestamp": _DATE,
        "message": {"type": "text"},
        "event": {
            "properties": {
                "kind": {"type": "keyword"},
                "dataset": {"type": "keyword"},
                "action": _KEYWORD,
                "ingested": _DATE,
            }
        },
        "device": {
            "properties": {
                "id": {"type": "keyword"},
                "model": {"properties": {"identifier": _KEYWORD}},
            }
        },
        "site": {"properties": {"id": {"type": "keyword"}}},
        "metrics": {"type": "object", "dynamic": True},
        "location": {"type": "geo_point"},
        "location_name": _KEYWORD,
        "saltmarsh": {
            "properties": {
                "key": {"type": "keyword"},
                "boot": {"type": "keyword"},
                "seq": {"type": "long"},
                "kind": {"type": "keyword"},
                "gateway": {"type": "keyword"},
                "firmware": _KEYWORD,
                "delivery_delay_ms": {"type": "long"},
                "units": {"type": "object", "dynamic": True},
                # A cmdres message's outcome: which command, for which target, in what state.
                "command": {
                    "properties": {
                        "cmd_id": {"type": "keyword"},
                        "rollout": {"type": "keyword"},
                        "state": {"type": "keyword"},
                        "hop": {"type": "keyword"},
                        "reason": _KEYWORD,
                        "target": {"type": "keyword"},
                        "result": {"type": "object", "enabled": False},  # kept, not indexed
                    }
                },
            }
        },
    },
}

DEAD_LETTER_MAPPINGS: dict[str, Any] = {
    # Not strict: a dead letter that Elasticsearch refuses has nowhere left to go, so this
    # mapping takes anything and indexes only what it names.
    "dynamic": False,
    "properties": {
        "@timestamp": _DATE,
        "reason": {"type": "keyword"},
        "field": _KEYWORD,
        "detail": {"type": "text"},
        "topic": _KEYWORD,
        "payload_encoding": {"type": "keyword"},
        "payload": _STORED_ONLY,  # the head only; the size and hash are of the whole payload
        "payload_bytes": {"type": "long"},
        "payload_sha256": {"type": "keyword"},
        "event": {"properties": {"kind": {"type": "keyword"}, "ingested": _DATE}},
        "device": {"properties": {"id": {"type": "keyword"}}},
        "site": {"properties": {"id": {"type": "keyword"}}},
        "saltmarsh": {"properties": {"key": {"type": "keyword"}, "gateway": {"type": "keyword"}}},
        "error": {"properties": {"type": {"type": "keyword"}, "status": {"type": "short"}}},
    },
}

FLEET_EVENT_MAPPINGS: dict[str, Any] = {
    "dynamic": False,
    "properties": {
        "@timestamp": _DATE,
        "tag": _KEYWORD,
        "minion_id": {"type": "keyword"},
        "fun": {"type": "keyword"},
        "jid": {"type": "keyword"},
        "success": {"type": "boolean"},
        "retcode": {"type": "long"},
        # Salt return data is any JSON shape, scalars included; `enabled: false` keeps it in
        # _source without ever parsing it, so no return value can cause a mapping conflict.
        "data": {"type": "object", "enabled": False},
    },
}

COMMAND_MAPPINGS: dict[str, Any] = {
    # Strict, as readings: the sink writes every document here itself (CommandRecord.to_doc).
    "dynamic": "strict",
    "properties": {
        "cmd_id": {"type": "keyword"},
        "device": {"type": "keyword"},
        "rollout": {"type": "keyword"},
        "site": {"type": "keyword"},
        "state": {"type": "keyword"},
        "hop": {"type": "keyword"},
        "reported_by": {"type": "keyword"},
        "rank": {"type": "long"},
        "final": {"type": "boolean"},
        "ts_ms": {"type": "long"},
        "received_ms": {"type": "long"},
        # Rejections name the field in prose ("args.interval_s: ..."): searchable as text,
        # countable as a keyword.
        "reason": {"type": "text", "fields": {"keyword": _KEYWORD}},
        "result": {"type": "object", "enabled": False},  # kept, not indexed, as in readings
    },
}

_MAPPINGS = {READINGS: READINGS_MAPPINGS, DEAD_LETTERS: DEAD_LETTER_MAPPINGS, FLEET_EVENTS: FLEET_EVENT_MAPPINGS}


def index_template(prefix: str, family: str, policy: str | None = None) -> dict[str, Any]:
    """The body of `indices.put_index_template` for one family."""
    if family == COMMANDS:
        return {
            "index_patterns": [command_index(prefix)],
            "priority": TEMPLATE_PRIORITY,
            "template": {"mappings": COMMAND_MAPPINGS},
            "_meta": {"managed_by": "saltmarsh"},
        }
    settings: dict[str, Any] = {}
    if family == READINGS:
        settings["index.mapping.total_fields.limit"] = READINGS_TOTAL_FIELDS_LIMIT
    if policy is not None:
        settings["index.lifecycle.name"] = policy
    template: dict[str, Any] = {
        "mappings": _MAPPINGS[family],
        "aliases": {alias_name(prefix, family): {}},
    }
    if settings:
        template["settings"] = settings
    return {
        "index_patterns": [index_pattern(prefix, family)],
        "priority": TEMPLATE_PRIORITY,
        "template": template,
        "_meta": {"managed_by": "saltmarsh"},
    }


def delete_policy(delete_after_days: int) -> dict[str, Any]:
    # ILM counts min_age from index creation: a month index lives delete_after_days past the day
    # its first document arrived, which for a backlog drained late is later than its month.
    return {"phases": {"delete": {"min_age": f"{delete_after_days}d", "actions": {"delete": {}}}}}


def install_policy(client: Elasticsearch, prefix: str, delete_after_days: int) -> str | None:
    """Put the delete policy; its name, or None where the cluster has no ILM (OpenSearch, emulators)."""
    name = policy_name(prefix)
    try:
        client.ilm.put_lifecycle(name=name, policy=delete_policy(delete_after_days))
    except ApiError as err:
        # A 4xx here means no ILM at all (OpenSearch answers 400 "no handler"): data is still
        # written, only retention is left to the operator, so warn and go on.
        if err.meta.status >= 500:
            raise
        log.warning(
            "ILM is not available; indices will not be deleted automatically",
            extra={"event": "es_ilm_unavailable", "policy": name, "status": err.meta.status, "error": str(err)[:200]},
        )
        return None
    return name


def install_templates(client: Elasticsearch, prefix: str, delete_after_days: int | None = None) -> None:
    """Put the policy (if asked) and every family's template; idempotent, so run at every start."""
    policy = install_policy(client, prefix, delete_after_days) if delete_after_days else None
    for family in FAMILIES:
        body = index_template(prefix, family, policy)
        client.indices.put_index_template(
            name=template_name(prefix, family),
            index_patterns=body["index_patterns"],
            priority=body["priority"],
            template=body["template"],
            meta=body["_meta"],
        )
