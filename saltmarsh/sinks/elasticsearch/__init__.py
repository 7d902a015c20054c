"""Elasticsearch as the store of record, and the templates it needs.

In: batches of `Delivery`s and `DeadLetter`s from the ingester (`sink`), or documents from the
Salt relay (`bulk`).
Out: documents in monthly, timestamp-routed indices via bulk `create` (`_id` = device:boot:seq),
dead letters in their own index, the index templates and aliases (`templates`), and an audit
source. `plain` is the transport for OpenSearch-API servers (the emulator in tests).
"""
