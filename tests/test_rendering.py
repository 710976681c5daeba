"""Nginx site rendering: the templates produce configs nginx accepts, nothing unsafe gets in."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from modoboa_pro.virtualhosts import rendering
from modoboa_pro.virtualhosts.errors import ConfigurationError
from modoboa_pro.virtualhosts.rendering import SiteContext, render_http_only, render_https


def context(**overrides) -> SiteContext:
    values = dict(
        hostname="www.example.test",
        http_port=80,
        https_port=443,
        listen_address="",
        webroot=Path("/var/lib/modoboa/acme/webroot"),
        fullchain=Path("/var/lib/modoboa/acme/certs/www.example.test/fullchain.pem"),
        privkey=Path("/var/lib/modoboa/acme/certs/www.example.test/privkey.pem"),
        upstream="unix:/run/uwsgi/app/modoboa_instance/socket",
        upstream_protocol="uwsgi",
    )
    values.update(overrides)
    return SiteContext(**values)


def test_http_only_site_serves_the_challenge_and_the_app() -> None:
    text = render_http_only(context())
    assert "listen 80;" in text and "server_name www.example.test;" in text
    assert "location ^~ /.well-known/acme-challenge/" in text
    assert "root /var/lib/modoboa/acme/webroot;" in text
    assert "uwsgi_pass unix:/run/uwsgi/app/modoboa_instance/socket;" in text
    assert "ssl_certificate" not in text


def test_https_site_redirects_http_and_points_at_the_pair() -> None:
    text = render_https(context(listen_address="127.0.0.1", https_port=8443))
    assert "listen 127.0.0.1:80;" in text and "listen 127.0.0.1:8443 ssl;" in text
    assert "return 301 https://$host:8443$request_uri;" in text
    assert "ssl_certificate /var/lib/modoboa/acme/certs/www.example.test/fullchain.pem;" in text
    assert "ssl_certificate_key /var/lib/modoboa/acme/certs/www.example.test/privkey.pem;" in text
    assert "location ^~ /.well-known/acme-challenge/" in text
    assert "$host$request_uri" in render_https(context())  # no port on 443


def test_ipv6_listen_address_is_bracketed() -> None:
    assert "listen [::1]:80;" in render_http_only(context(listen_address="::1"))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("upstream", "127.0.0.1:8000; include /etc/shadow"),
        ("webroot", Path("/srv/web root")),
        ("listen_address", "127.0.0.1 default_server"),
        ("upstream_protocol", "fastcgi"),
    ],
)
def test_unsafe_values_never_reach_the_config(field: str, value: object) -> None:
    with pytest.raises(ConfigurationError):
        render_https(context(**{field: value}))


def test_rendered_sites_pass_nginx_test(tmp_path: Path) -> None:
    """Both templates, as rendered, are accepted by the real `nginx -t`."""
    from modoboa_pro.testing import make_self_signed_leaf

    fullchain, privkey = make_self_signed_leaf(tmp_path, ["www.example.test"])
    site = render_https(
        context(
            listen_address="127.0.0.1",
            http_port=18080,
            https_port=18443,
            fullchain=fullchain,
            privkey=privkey,
            upstream="http://127.0.0.1:8000",
            upstream_protocol="http",
            webroot=tmp_path / "webroot",
        )
    )
    site += render_http_only(
        context(
            hostname="other.example.test",
            listen_address="127.0.0.1",
            http_port=18080,
            upstream="http://127.0.0.1:8000",
            upstream_protocol="http",
        )
    )
    assert_nginx_accepts(tmp_path, site)


def assert_nginx_accepts(tmp_path: Path, sites: str) -> None:
    """`nginx -t` (the real binary) passes on ``sites`` in an http block of their own."""
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        f"pid {tmp_path}/nginx.pid; error_log {tmp_path}/error.log;\n"
        f"events {{}}\nhttp {{ access_log off; {sites} }}\n"
    )
    result = subprocess.run(
        ["nginx", "-t", "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "error.log")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_loading_the_templates_when_a_worker_starts_never_stops_it(settings, tmp_path):
    """A broken template of the operator's is reported by the run that renders it, not by
    a worker that cannot start."""
    from django.template import TemplateSyntaxError
    from django.template.loader import get_template

    override = tmp_path / "virtualhosts" / "nginx"
    override.mkdir(parents=True)
    (override / "https.conf").write_text("{% if %}\n")
    settings.TEMPLATES = [dict(engine, DIRS=[str(tmp_path)]) for engine in settings.TEMPLATES]
    rendering.load_templates()
    with pytest.raises(TemplateSyntaxError):
        get_template(rendering.HTTPS_TEMPLATE)
    assert "server_name" in get_template(rendering.HTTP_ONLY_TEMPLATE).render({})
