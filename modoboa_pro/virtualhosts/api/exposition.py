"""Renderers that let the metrics endpoint accept what Prometheus and curl ask for.

The exposition itself is produced by ``metrics`` (prometheus_client); these only make
DRF's content negotiation accept the Prometheus text and OpenMetrics types, and render
an error (401, 403) as text when that is all the client accepts.
"""

from __future__ import annotations

import json
from typing import Any

from rest_framework import renderers


class _Text(renderers.BaseRenderer):
    charset = "utf-8"

    def render(self, data: Any, accepted_media_type=None, renderer_context=None) -> bytes:
        if isinstance(data, bytes):
            return data
        return (json.dumps(data) + "\n").encode()


class PrometheusTextRenderer(_Text):
    media_type = "text/plain"
    format = "txt"


class OpenMetricsRenderer(_Text):
    media_type = "application/openmetrics-text"
    format = "openmetrics"


RENDERERS = (PrometheusTextRenderer, OpenMetricsRenderer)
