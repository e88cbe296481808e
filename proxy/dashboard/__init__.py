"""The built-in dashboard (``GET /dashboard``) and the stats JSON behind it and ``nocp top``
(``GET /v1/nocp/stats``): see :mod:`proxy.dashboard._snapshot` for what the JSON holds."""

from proxy.dashboard._page import Page, page
from proxy.dashboard._snapshot import cohorts, policy, request_rate, snapshot
from proxy.dashboard._source import DEFAULT_RECORDS, MAX_RECORDS, LogStats

__all__ = [
    "DEFAULT_RECORDS",
    "MAX_RECORDS",
    "LogStats",
    "Page",
    "cohorts",
    "page",
    "policy",
    "request_rate",
    "snapshot",
]
