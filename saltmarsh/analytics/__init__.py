"""Analytics on the free licence: time-of-week anomaly detection for each (device, metric).

In: one rollup per fixed step per series (a value, or None for a step with no value), in
timestamp order, with the site's time zone; or a `timestamp,value` CSV (`series_csv`).
Out: per step an `Assessment` (score 0..1, kind, expected value and band, "Tue 10:00" bucket);
an `Anomaly` that explains itself for each step at or above `THRESHOLD`; and per series a
bounded state a service persists (`SeriesDetector.to_dict` / `from_dict`).

- `week_clock`: which local hour-of-week bucket a timestamp is in (`zoneinfo`, DST-safe);
- `baseline`: median and spread per bucket, with fallbacks while the history is short;
- `faults`: stuck, drift, dropout and noise watches;
- `detector`: the scores, the threshold and the anomaly record;
- `series_csv`: the CSV the `saltmarsh anomaly score` verb reads and writes.
"""

from saltmarsh.analytics.detector import THRESHOLD, Anomaly, Assessment, SeriesDetector, SeriesKey, explain

__all__ = ["THRESHOLD", "Anomaly", "Assessment", "SeriesDetector", "SeriesKey", "explain"]
