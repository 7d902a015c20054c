"""A transport node for OpenSearch-API servers that refuse Elasticsearch's vendor media types.

The `elasticsearch` 9.x client sends `application/vnd.elasticsearch+json; compatible-with=9`;
OpenSearch and in-memory emulators such as osmem-server answer 406 to it. With
`plain_json = true` in `[sink.elasticsearch]`, requests carry plain `application/json` and
`application/x-ndjson` instead. The default keeps the client's own headers.
"""

from __future__ import annotations

import re

from elastic_transport import HttpHeaders, Urllib3HttpNode
from elastic_transport._node import NodeApiResponse
from elastic_transport.client_utils import DEFAULT, DefaultType

_VENDOR_MEDIA_TYPE = re.compile(r"application/vnd\.elasticsearch\+([a-z-]+);\s*compatible-with=\d+")


class PlainJsonNode(Urllib3HttpNode):
    def perform_request(
        self,
        method: str,
        target: str,
        body: bytes | None = None,
        headers: HttpHeaders | None = None,
        request_timeout: DefaultType | float | None = DEFAULT,
    ) -> NodeApiResponse:
        plain = HttpHeaders(headers or {})
        for name in ("accept", "content-type"):
            if name in plain:
                plain[name] = _VENDOR_MEDIA_TYPE.sub(r"application/\1", plain[name])
        return super().perform_request(method, target, body, plain, request_timeout)
