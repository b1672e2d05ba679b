"""Worker health on ``/metrics``, read at scrape time: consumer lag of every assigned
partition (records not yet *processed*, as the stuck-alert gate counts them) and whether the
worker is ready. Not in SPEC §10's list; the Grafana dashboard's lag and health panels use them."""
from __future__ import annotations

from typing import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


class WorkerCollector(Collector):
    def __init__(self, lags: Callable[[], dict[str, int]], ready: Callable[[], bool]) -> None:
        self.lags = lags
        self.ready = ready

    def describe(self) -> Iterator:
        yield GaugeMetricFamily("funnel_consumer_lag_records", "Records not yet processed, per assigned "
                                "partition.", labels=("topic", "partition"))
        yield GaugeMetricFamily("funnel_worker_ready", "1 when the worker is ready (derived state built, "
                                "processing), else 0.")

    def collect(self) -> Iterator:
        lag = GaugeMetricFamily("funnel_consumer_lag_records", "Records not yet processed, per assigned "
                                "partition.", labels=("topic", "partition"))
        try:
            lags = self.lags()
        except Exception:  # noqa: BLE001 - consumer not started yet: no lag series
            lags = {}
        for tp, n in sorted(lags.items()):
            topic, _, partition = tp.rpartition("/")
            lag.add_metric((topic, partition), n)
        yield lag
        yield GaugeMetricFamily("funnel_worker_ready", "1 when the worker is ready (derived state built, "
                                "processing), else 0.", value=1 if self.ready() else 0)
