"""Kinesis beside the store of record: which messages go (`selection`) and how (`sink`).

In: envelopes (or, from the Salt relay, event tags) and their topics.
Out: the selected ones as PutRecords calls, partition key = device, only failed records retried,
per-device order kept; `KinesisUnavailable` names what was committed when the rest was not.
"""
