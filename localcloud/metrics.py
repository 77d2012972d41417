"""The endpoints' CloudWatch metrics, and the evaluation of the alarms on them.

Every InvokeEndpoint records, under the namespace ``AWS/SageMaker`` and the dimensions ``EndpointName`` and
``VariantName`` (SageMaker's), ``Invocations`` (1), ``Invocation4XXErrors``/``Invocation5XXErrors`` (1 when the
model answered 4xx/5xx or could not be reached, else 0) and ``ModelLatency`` (microseconds, SageMaker's unit).
The points stay in memory for an hour; a background thread publishes them every few seconds to the CloudWatch
API localcloud serves (moto's), aggregated as ``StatisticValues`` at 1-second storage resolution, so
``GetMetricStatistics`` answers as on AWS.

CloudWatch's own API does not evaluate alarms, so this module does, as CloudWatch documents it: for an alarm on
one of these metrics, the last ``EvaluationPeriods`` periods of ``Period`` seconds ending now; each period's
statistic (``Statistic`` or a ``pNN`` ``ExtendedStatistic``) compared with ``Threshold``; ALARM when at least
``DatapointsToAlarm`` of them breach. A period without data counts by ``TreatMissingData`` (``missing``: not
counted; no data at all is INSUFFICIENT_DATA; ``ignore``: the state stays). A changed state is written with
``SetAlarmState``, so ``DescribeAlarms`` shows it. Alarms on other namespaces or metrics are left alone.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import defaultdict, deque

log = logging.getLogger("localcloud.metrics")

NAMESPACE = "AWS/SageMaker"
METRICS = ("Invocations", "Invocation4XXErrors", "Invocation5XXErrors", "ModelLatency")
UNITS = {"ModelLatency": "Microseconds"}
KEEP_SECONDS = 3600
PUBLISH_SECONDS = 5.0

COMPARE = {
    "GreaterThanThreshold": lambda v, t: v > t,
    "GreaterThanOrEqualToThreshold": lambda v, t: v >= t,
    "LessThanThreshold": lambda v, t: v < t,
    "LessThanOrEqualToThreshold": lambda v, t: v <= t,
}


def dimensions_key(dimensions: list[dict] | None) -> tuple:
    return tuple(sorted((d["Name"], d["Value"]) for d in dimensions or []))


def statistic(values: list[float], name: str) -> float:
    if name == "Sum":
        return float(sum(values))
    if name == "SampleCount":
        return float(len(values))
    if name == "Average":
        return float(sum(values)) / len(values)
    if name == "Maximum":
        return float(max(values))
    if name == "Minimum":
        return float(min(values))
    if name.startswith("p"):  # nearest-rank percentile, e.g. p99 or p99.9
        ranked = sorted(values)
        rank = max(1, math.ceil(float(name[1:]) / 100 * len(ranked)))
        return float(ranked[min(rank, len(ranked)) - 1])
    raise ValueError(f"unsupported statistic {name!r}")


class EndpointMetrics:
    """The metric points of every endpoint variant, and the alarms over them."""

    def __init__(self, client_factory, shutting_down: threading.Event):
        self._client = client_factory  # () -> a CloudWatch client of localcloud's own
        self._points: dict[tuple, dict[str, deque]] = defaultdict(lambda: defaultdict(deque))
        self._unpublished: list[tuple[tuple, str, float, float]] = []
        self._lock = threading.Lock()
        self._stopping = shutting_down
        self._thread: threading.Thread | None = None

    # -- recording ---------------------------------------------------------------------------------------
    def record(self, endpoint: str, variant: str, *, status: int, latency_seconds: float | None) -> None:
        """One invocation: the model's HTTP status (0: unreachable or timed out) and, when it answered, how long
        it took."""
        now = time.time()
        key = dimensions_key([{"Name": "EndpointName", "Value": endpoint}, {"Name": "VariantName", "Value": variant}])
        values = {
            "Invocations": 1.0,
            "Invocation4XXErrors": 1.0 if 400 <= status < 500 else 0.0,
            "Invocation5XXErrors": 1.0 if status >= 500 or status == 0 else 0.0,
        }
        if latency_seconds is not None:
            values["ModelLatency"] = latency_seconds * 1e6
        with self._lock:
            series = self._points[key]
            for metric, value in values.items():
                points = series[metric]
                points.append((now, value))
                while points and points[0][0] < now - KEEP_SECONDS:
                    points.popleft()
                self._unpublished.append((key, metric, now, value))

    def values(self, metric: str, dimensions: list[dict], start: float, end: float) -> list[float]:
        key = dimensions_key(dimensions)
        with self._lock:
            points = list(self._points.get(key, {}).get(metric, ()))
        return [v for t, v in points if start <= t < end]

    # -- alarms --------------------------------------------------------------------------------------------
    def alarm_state(self, alarm: dict, now: float | None = None) -> tuple[str, str] | None:
        """(state, reason) the alarm's definition gives now; None when it is not on these metrics or
        ``TreatMissingData`` is ``ignore`` and nothing is known."""
        if alarm.get("Namespace") != NAMESPACE or alarm.get("MetricName") not in METRICS:
            return None
        now = time.time() if now is None else now
        period = float(alarm["Period"])
        stat = alarm.get("ExtendedStatistic") or alarm["Statistic"]
        compare = COMPARE[alarm["ComparisonOperator"]]
        threshold = float(alarm["Threshold"])
        periods = int(alarm["EvaluationPeriods"])
        needed = int(alarm.get("DatapointsToAlarm") or periods)
        missing = alarm.get("TreatMissingData") or "missing"
        breaching, seen, shown = 0, 0, []
        for k in range(periods):
            end = now - k * period
            values = self.values(alarm["MetricName"], alarm.get("Dimensions") or [], end - period, end)
            if not values:
                if missing == "breaching":
                    breaching += 1
                    seen += 1
                elif missing == "notBreaching":
                    seen += 1
                continue
            value = statistic(values, stat)
            shown.append(round(value, 3))
            seen += 1
            breaching += compare(value, threshold)
        if seen == 0:
            if missing == "ignore":
                return None
            return "INSUFFICIENT_DATA", f"no datapoints in the last {periods} period(s) of {period:g} s"
        reason = (
            f"Threshold Crossed: {breaching} out of the last {periods} datapoints [{', '.join(map(str, shown))}] "
            f"{'were' if breaching else 'were not'} {alarm['ComparisonOperator']} ({threshold:g}); "
            f"{needed} needed for ALARM."
        )
        return ("ALARM" if breaching >= needed else "OK"), reason

    def evaluate(self, names: list[str] | None = None) -> dict[str, str]:
        """Evaluate the named alarms (default: every alarm on these metrics), write changed states, and return
        each named alarm's state (a name with no alarm is left out)."""
        client = self._client()
        kwargs = {"AlarmNames": names} if names else {}
        alarms = client.describe_alarms(**kwargs).get("MetricAlarms", [])
        states = {}
        for alarm in alarms:
            state = alarm.get("StateValue", "INSUFFICIENT_DATA")
            judged = self.alarm_state(alarm)
            if judged is not None and judged[0] != state:
                state = judged[0]
                client.set_alarm_state(AlarmName=alarm["AlarmName"], StateValue=state, StateReason=judged[1][:1023])
                log.info("alarm %s -> %s: %s", alarm["AlarmName"], state, judged[1])
            states[alarm["AlarmName"]] = state
        return states

    # -- publishing ------------------------------------------------------------------------------------------
    def publish(self) -> None:
        """Send the points recorded since the last call, one StatisticValues datum per metric and second."""
        with self._lock:
            pending, self._unpublished = self._unpublished, []
        grouped: dict[tuple, list[float]] = defaultdict(list)
        for key, metric, at, value in pending:
            grouped[(key, metric, int(at))].append(value)
        data = [
            {
                "MetricName": metric,
                "Dimensions": [{"Name": n, "Value": v} for n, v in key],
                "Timestamp": second,
                "StatisticValues": {
                    "SampleCount": float(len(values)),
                    "Sum": float(sum(values)),
                    "Minimum": float(min(values)),
                    "Maximum": float(max(values)),
                },
                "Unit": UNITS.get(metric, "None"),
                "StorageResolution": 1,
            }
            for (key, metric, second), values in grouped.items()
        ]
        client = self._client()
        for i in range(0, len(data), 500):  # PutMetricData's batch limit is 1,000 data
            client.put_metric_data(Namespace=NAMESPACE, MetricData=data[i : i + 500])

    def start(self) -> None:
        def loop() -> None:
            while not self._stopping.wait(PUBLISH_SECONDS):
                try:
                    self.publish()
                    self.evaluate()
                except Exception as err:  # the API may be stopping; the next round tries again
                    log.debug("metrics round failed: %s", err)

        self._thread = threading.Thread(target=loop, name="endpoint-metrics", daemon=True)
        self._thread.start()
