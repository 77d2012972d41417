"""Shadow variants: an endpoint config's ``ShadowProductionVariants`` run beside the production ones and receive a
copy of the production traffic, as SageMaker's shadow tests do.

The client is answered by a production variant only; a copy of a share of the requests (the shadow's
``InitialVariantWeight`` over the production variants' total, at most all of them) goes to a shadow instance in
the background. The shadow's answers are never returned to anyone: they are counted in the shadow variant's
CloudWatch metrics and, when the config captures data, written as its own capture files
(``<destination>/<endpoint>/<shadow variant>/...``) with the same ``eventId`` as the production record of the
same request, so the two answers can be compared. DescribeEndpoint lists the shadows under
``ShadowProductionVariants``.
"""

from __future__ import annotations

import logging
import random
from concurrent.futures import ThreadPoolExecutor

from .model_servers import Variant

log = logging.getLogger("localcloud.endpoints")

MIRROR_WORKERS = 4


def production(variants: list[Variant]) -> list[Variant]:
    return [v for v in variants if not v.record.get("Shadow")]


def shadows(variants: list[Variant]) -> list[Variant]:
    return [v for v in variants if v.record.get("Shadow")]


def mirror_fraction(variants: list[Variant]) -> float:
    """The share of production requests copied to the shadows."""
    names = {}
    for v in variants:
        names.setdefault((bool(v.record.get("Shadow")), v.name), float(v.record.get("Weight", 1.0)))
    prod = sum(w for (shadow, _), w in names.items() if not shadow)
    shadow = sum(w for (is_shadow, _), w in names.items() if is_shadow)
    if prod <= 0 or shadow <= 0:
        return 0.0
    return min(1.0, shadow / prod)


class ShadowTraffic:
    """Mixed into ``Endpoints``: copies requests to the shadow variants (its lock, routes, forwarding, metrics,
    capture)."""

    _mirror_pool: ThreadPoolExecutor | None = None

    def _mirror(self, name: str, variants: list[Variant], body: bytes, headers, event_id: str) -> None:
        targets = shadows(variants)
        if not targets or random.random() >= mirror_fraction(variants):
            return
        with self._lock:
            target = random.choice(targets)
            target.inflight += 1
            if self._mirror_pool is None:
                self._mirror_pool = ThreadPoolExecutor(MIRROR_WORKERS, thread_name_prefix="shadow")
        forward = {k: headers.get(k) for k in ("Content-Type", "Accept") if headers.get(k)}
        self._mirror_pool.submit(self._shadow_call, name, target, body, forward, event_id)

    def _shadow_call(self, name: str, variant: Variant, body: bytes, headers: dict, event_id: str) -> None:
        try:
            response = self._forward_measured(variant, body, headers, name, variant.record.get("_region", "us-east-1"))
        except Exception as err:  # noqa: BLE001 - a failing shadow never reaches a client; its metrics show it
            log.debug("endpoint %s: shadow %s failed: %s", name, variant.name, err)
            return
        self._capture(name, variant, body, headers, response, event_id)

    def _stop_mirroring(self) -> None:
        if self._mirror_pool is not None:
            self._mirror_pool.shutdown(wait=True, cancel_futures=True)
