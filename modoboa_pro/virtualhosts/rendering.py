"""Render nginx site files from Django templates (instances may override them)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from django.template.loader import render_to_string

from .errors import ConfigurationError
from .hostnames import normalize_hostname

HTTP_ONLY_TEMPLATE = "virtualhosts/nginx/http_only.conf"
HTTPS_TEMPLATE = "virtualhosts/nginx/https.conf"

# What may reach an nginx directive unquoted: no whitespace, quotes, ';', '{', '}', '#', '$'.
_NGINX_SAFE = re.compile(r"^[A-Za-z0-9_./:\[\]@+=,-]+$")


@dataclass(frozen=True)
class SiteContext:
    """Plain values a site template needs."""

    hostname: str
    http_port: int
    https_port: int
    listen_address: str
    webroot: Path
    fullchain: Path
    privkey: Path
    upstream: str
    upstream_protocol: str


def _safe(name: str, value: str) -> str:
    if not _NGINX_SAFE.match(value):
        raise ConfigurationError(
            f"{name} = {value!r} cannot be written into an nginx configuration: remove spaces, "
            "quotes and the characters ; { } # $."
        )
    return value


def _listen(address: str, port: int) -> str:
    if not address:
        return str(port)
    if ":" in address and not address.startswith("["):
        address = f"[{address}]"  # IPv6
    return f"{address}:{port}"


def _context(ctx: SiteContext) -> dict[str, object]:
    if ctx.upstream_protocol not in ("uwsgi", "http"):
        raise ConfigurationError(
            "VIRTUALHOSTS_UPSTREAM_PROTOCOL must be 'uwsgi' or 'http' "
            f"(got {ctx.upstream_protocol!r})."
        )
    hostname = normalize_hostname(ctx.hostname)
    if ctx.listen_address:
        _safe("VIRTUALHOSTS_LISTEN_ADDRESS", ctx.listen_address)
    return {
        "hostname": hostname,
        "http_listen": _listen(ctx.listen_address, ctx.http_port),
        "https_listen": _listen(ctx.listen_address, ctx.https_port),
        "https_port": ctx.https_port,
        "webroot": _safe("acme_account_storage_path", str(ctx.webroot)),
        "fullchain": _safe("acme_account_storage_path", str(ctx.fullchain)),
        "privkey": _safe("acme_account_storage_path", str(ctx.privkey)),
        "upstream": _safe("VIRTUALHOSTS_UPSTREAM", ctx.upstream),
        "upstream_protocol": ctx.upstream_protocol,
    }


def render_http_only(ctx: SiteContext) -> str:
    """The site served before a certificate exists: challenge path + application."""
    return render_to_string(HTTP_ONLY_TEMPLATE, _context(ctx))


def render_https(ctx: SiteContext) -> str:
    """The final site: HTTP keeps the challenge path and redirects, HTTPS serves the app."""
    return render_to_string(HTTPS_TEMPLATE, _context(ctx))
