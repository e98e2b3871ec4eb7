"""Where each request's record goes: the structured access log (and the counters, once wired)."""

from __future__ import annotations

import logging

import orjson

from catcache.reports.record import RequestRecord

access_log = logging.getLogger("catcache.access")


class Recorder:
    def record(self, record: RequestRecord) -> None:
        if access_log.isEnabledFor(logging.INFO):
            access_log.info(orjson.dumps(record.as_dict()).decode())

    async def close(self) -> None:
        return None
