"""Render nginx site files from Django templates (instances may override them)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from django.template import TemplateDoesNotExist, TemplateSyntaxError
from django.template.loader import get_template, render_to_string

from . import constants
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
    site: str = constants.SITE_WEB  # what the HTTPS site serves (constants.SITES)


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


# An upstream of each protocol: "http(s)://host[:port][/]" for proxy_pass; for uwsgi_pass a
# socket ("unix:/path"), "host:port" or an upstream{} group's name. Anything else (a path
# after the host, a scheme of the other protocol) makes nginx -t fail or forwards elsewhere.
_UPSTREAM_FORMS = {
    "http": re.compile(r"^https?://[A-Za-z0-9_.\[\]:-]+/?$"),
    "uwsgi": re.compile(r"^(unix:/[A-Za-z0-9_./@+=,-]+|(s?uwsgi://)?[A-Za-z0-9_.\[\]:-]+)$"),
}


def _upstream(ctx: SiteContext) -> str:
    """The upstream, checked for the protocol its site uses (named by the setting it is)."""
    web = ctx.site == constants.SITE_WEB
    name = "VIRTUALHOSTS_UPSTREAM" if web else "VIRTUALHOSTS_AUTOCONFIG_UPSTREAM"
    form = _UPSTREAM_FORMS.get(ctx.upstream_protocol)
    if form is None:
        raise ConfigurationError(
            f"{name}_PROTOCOL must be 'uwsgi' or 'http' (got {ctx.upstream_protocol!r})."
        )
    value = _safe(name, ctx.upstream)
    if not form.match(value):
        example = "http://127.0.0.1:8000" if ctx.upstream_protocol == "http" else "unix:/path"
        raise ConfigurationError(
            f"{name} = {value!r} is not an upstream for protocol {ctx.upstream_protocol!r}: "
            f"write it like {example} (no path), or change {name}_PROTOCOL."
        )
    return value


def _context(ctx: SiteContext) -> dict[str, object]:
    if ctx.site not in dict(constants.SITES):
        raise ConfigurationError(
            f"Unknown site kind {ctx.site!r}: expected one of "
            + ", ".join(kind for kind, _ in constants.SITES)
            + "."
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
        "upstream": _upstream(ctx),
        "upstream_protocol": ctx.upstream_protocol,
        "site": ctx.site,
    }


def load_templates() -> None:
    """Compile the site templates now (a worker, before it forks its jobs): Django's cached
    loader keeps them, and every job rendering a site saves about 8 ms. A template that does
    not load is left for the run that renders it, which fails saying why."""
    for name in (HTTP_ONLY_TEMPLATE, HTTPS_TEMPLATE):
        try:
            get_template(name)
        except (TemplateDoesNotExist, TemplateSyntaxError):
            pass


def render_http_only(ctx: SiteContext) -> str:
    """The site served before a certificate exists: challenge path + what the site serves."""
    return render_to_string(HTTP_ONLY_TEMPLATE, _context(ctx))


def render_https(ctx: SiteContext) -> str:
    """The final site: HTTP keeps the challenge path and redirects, HTTPS serves the app."""
    return render_to_string(HTTPS_TEMPLATE, _context(ctx))
