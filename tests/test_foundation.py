"""Smoke tests through each real component, and the plugin loaded by a real Modoboa."""

from __future__ import annotations

import json

import pytest
import requests
from django.core import checks

from modoboa_pro.virtualhosts import jobs as vh_jobs
from modoboa_pro.virtualhosts.adapters import acme
from modoboa_pro.virtualhosts.checks import check_virtualhosts
from modoboa_pro.virtualhosts.errors import AcmeDirectoryUnreachable

from .conftest import Chain


def test_acme_account_registration_against_pebble(chain: Chain):
    """Registering an ACME account with the configured email, trusting ACME_CA_BUNDLE."""
    client = acme.AcmeClient(
        chain.pebble.directory_url,
        storage_root=chain.storage,
        email="hostmaster@example.org",
        ca_bundle=str(chain.pebble.ca_bundle),
    )
    account = client.ensure_account()
    assert account.uri.startswith(chain.pebble.directory_url.rsplit("/", 1)[0])
    key = acme.account_dir(chain.storage, chain.pebble.directory_url) / "private_key.json"
    assert key.stat().st_mode & 0o777 == 0o600
    assert key.parent.stat().st_mode & 0o777 == 0o700
    assert key.parent.parent.stat().st_mode & 0o777 == 0o700  # accounts/
    # A second client with the same key finds the same account.
    again = acme.AcmeClient(
        chain.pebble.directory_url,
        storage_root=chain.storage,
        email="hostmaster@example.org",
        ca_bundle=str(chain.pebble.ca_bundle),
    ).ensure_account()
    assert again.uri == account.uri


def test_the_remembered_account_is_that_of_the_key_in_use(chain: Chain):
    """A run uses the account URL saved for its key without asking the CA; a key that is
    not the one the URL was registered with (replaced, or created by another run at the
    same moment) registers instead of signing for another key's account."""
    actions: list[str] = []

    def client() -> acme.AcmeClient:
        return acme.AcmeClient(
            chain.pebble.directory_url,
            storage_root=chain.storage,
            email="hostmaster@example.org",
            ca_bundle=str(chain.pebble.ca_bundle),
            observer=lambda request: actions.append(request.action),
        )

    first = client().ensure_account()
    assert actions.count("newAccount") == 1
    assert client().ensure_account() == first and actions.count("newAccount") == 1
    key = acme.account_dir(chain.storage, chain.pebble.directory_url) / "private_key.json"
    other = acme.AcmeClient(
        chain.pebble.directory_url, storage_root=chain.storage / "other",
        email="hostmaster@example.org", ca_bundle=str(chain.pebble.ca_bundle),
    )  # fmt: skip
    other.ensure_account()
    key.write_bytes(
        (acme.account_dir(other.storage_root, chain.pebble.directory_url) / "private_key.json")
        .read_bytes()
    )
    again = client().ensure_account()
    assert actions.count("newAccount") == 2 and again.uri != first.uri


def test_the_first_runs_of_a_burst_share_one_account_key(chain: Chain, monkeypatch):
    """Runs that start together on a fresh storage each make a key: one of them is kept,
    and every run signs with it (another key's account URL would fail every order with
    "JWS verification error", as a burst on a new instance once did)."""
    import threading

    from cryptography.hazmat.primitives.asymmetric import ec

    runs = 6
    made = threading.Barrier(runs)
    real = ec.generate_private_key

    def together(*args, **kwargs):  # every run has made its key before any writes one
        key = real(*args, **kwargs)
        made.wait(timeout=30)
        return key

    monkeypatch.setattr(ec, "generate_private_key", together)
    clients = [
        acme.AcmeClient(
            chain.pebble.directory_url, storage_root=chain.storage,
            email="hostmaster@example.org", ca_bundle=str(chain.pebble.ca_bundle),
        )  # fmt: skip
        for _ in range(runs)
    ]
    threads = [threading.Thread(target=c.ensure_account) for c in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    directory = acme.account_dir(chain.storage, chain.pebble.directory_url)
    kept = acme.jose.JWK.json_loads((directory / "private_key.json").read_text())
    thumbprint = acme.jose.b64encode(kept.thumbprint()).decode()
    assert {c._key_thumbprint() for c in clients} == {thumbprint}
    uris = {c._connect().net.account.uri for c in clients}
    assert len(uris) == 1
    assert json.loads((directory / "account.json").read_text())["uri"] in uris


def test_acme_directory_not_trusted_without_bundle(chain: Chain):
    """Without ACME_CA_BUNDLE the private CA is refused, with a message naming the settings."""
    client = acme.AcmeClient(
        chain.pebble.directory_url, storage_root=chain.storage, email="a@example.org"
    )
    with pytest.raises(AcmeDirectoryUnreachable) as info:
        client.ensure_account()
    assert "ACME_CA_BUNDLE" in info.value.message


def test_nginx_serves_a_file_for_a_test_hostname(nginx_server, tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    (root / "hello.txt").write_text("hello from nginx\n")
    root.chmod(0o755)
    tmp_path.chmod(0o755)
    site = nginx_server.sites_dir / "smoke.example.test.conf"
    site.write_text(
        f"server {{ listen 127.0.0.1:{nginx_server.http_port}; server_name smoke.example.test;"
        f" root {root}; }}\n"
    )
    try:
        nginx_server.reload()
        response = requests.get(
            f"http://127.0.0.1:{nginx_server.http_port}/hello.txt",
            headers={"Host": "smoke.example.test"},
            timeout=5,
        )
        assert response.status_code == 200
        assert response.text == "hello from nginx\n"
    finally:
        site.unlink()
        nginx_server.reload()


@pytest.mark.django_db
def test_extension_loaded_by_modoboa(modoboa, client):
    """The API route exists, and the parameters appear with their defaults."""
    from django.urls import resolve
    from modoboa.core.models import User
    from rest_framework.authtoken.models import Token

    assert resolve("/api/v2/virtualhosts/").url_name == "virtualhost-list"
    admin = User.objects.get(username="admin")
    token = Token.objects.create(user=admin)
    auth = {"HTTP_AUTHORIZATION": f"Token {token.key}"}

    response = client.get("/api/v2/virtualhosts/", **auth)
    assert response.status_code == 200

    apps = client.get("/api/v2/parameters/global/applications/", **auth).json()
    assert "virtualhosts" in [app["name"] for app in apps]

    section = client.get("/api/v2/parameters/global/virtualhosts/", **auth).json()
    assert section["label"] == "Virtual hosts"
    values = section["params"]
    assert values["enable_letsencrypt"] is False
    assert values["acme_account_email"] == ""
    assert values["acme_account_storage_path"] == "/var/lib/modoboa/acme"
    assert values["certificate_renewal_threshold"] == 30


@pytest.mark.django_db
def test_settings_page_validates_input(modoboa, client, tmp_path):
    from modoboa.core.models import User
    from rest_framework.authtoken.models import Token

    token = Token.objects.create(user=User.objects.get(username="admin"))
    auth = {"HTTP_AUTHORIZATION": f"Token {token.key}"}
    response = client.put(
        "/api/v2/parameters/global/virtualhosts/",
        {
            "enable_letsencrypt": True,
            "acme_account_email": "not-an-email",
            "acme_account_storage_path": "relative/path",
            "certificate_renewal_threshold": 0,
        },
        content_type="application/json",
        **auth,
    )
    assert response.status_code == 400
    errors = response.json()
    assert "acme_account_email" in errors
    assert "absolute path" in str(errors["acme_account_storage_path"])
    assert "at least 1 day" in str(errors["certificate_renewal_threshold"])

    response = client.put(
        "/api/v2/parameters/global/virtualhosts/",
        {
            "enable_letsencrypt": True,
            "acme_account_email": "hostmaster@example.org",
            "acme_account_storage_path": str(tmp_path / "acme"),
            "certificate_renewal_threshold": 20,
        },
        content_type="application/json",
        **auth,
    )
    assert response.status_code == 200, response.content
    from modoboa_pro.virtualhosts import conf

    assert conf.param("certificate_renewal_threshold") == 20


def test_system_checks_report_missing_queues_and_binary(settings):
    settings.RQ_QUEUES = {"modoboa": {"URL": "redis://127.0.0.1:1/0"}}
    settings.VIRTUALHOSTS_NGINX_TEST_COMMAND = ["/nonexistent/nginx", "-t"]
    ids = {message.id for message in check_virtualhosts()}
    assert "virtualhosts.E002" in ids  # no privileged queue
    assert "virtualhosts.E003" in ids  # nginx binary not found
    assert "virtualhosts.E001" not in ids


def test_system_checks_pass_on_a_sane_configuration(settings, nginx_server):
    settings.VIRTUALHOSTS_NGINX_CONF_DIR = str(nginx_server.sites_dir)
    settings.VIRTUALHOSTS_NGINX_TEST_COMMAND = nginx_server.test_command
    settings.VIRTUALHOSTS_NGINX_RELOAD_COMMAND = nginx_server.reload_command
    assert check_virtualhosts() == []
    assert check_virtualhosts in checks.registry.registry.get_checks()


def test_system_checks_warn_about_sqlite_without_immediate_transactions(settings, nginx_server):
    settings.VIRTUALHOSTS_NGINX_TEST_COMMAND = nginx_server.test_command
    settings.VIRTUALHOSTS_NGINX_RELOAD_COMMAND = nginx_server.reload_command
    settings.VIRTUALHOSTS_NGINX_CONF_DIR = str(nginx_server.sites_dir)
    default = dict(settings.DATABASES["default"])
    if "sqlite3" not in default["ENGINE"]:
        default = {"ENGINE": "django.db.backends.sqlite3", "NAME": "x.db"}
    settings.DATABASES = {"default": {**default, "OPTIONS": {}}}
    [warning] = check_virtualhosts()
    assert warning.id == "virtualhosts.W003"
    assert 'transaction_mode="IMMEDIATE"' in warning.hint


def test_privileged_job_takes_no_argument():
    import inspect

    assert inspect.signature(vh_jobs.nginx_test_and_reload).parameters == {}


def test_the_app_parameters_read_as_modoboa_gives_them(modoboa):
    """``conf.params`` reads the stored row without building a LocalConfig: the same values
    as Modoboa's own reader, stored or defaulted."""
    from modoboa.core.models import LocalConfig
    from modoboa.parameters import tools as param_tools

    from modoboa_pro.virtualhosts import conf
    from modoboa_pro.virtualhosts.parameters import VirtualHostsSettingsSerializer

    from .conftest import set_parameters

    def modoboas() -> dict:
        return dict(param_tools.get_global_parameters(conf.PARAMETERS_APP))

    # The Settings page's fields are the parameters, with the same defaults.
    fields = VirtualHostsSettingsSerializer().fields
    assert {name: f.default for name, f in fields.items()} == conf.PARAMETER_DEFAULTS

    assert conf.params() == modoboas()
    set_parameters(acme_account_email="ops@example.org", certificate_renewal_threshold=12)
    assert conf.params() == modoboas()
    assert conf.params()["certificate_renewal_threshold"] == 12
    # A stored set without some parameter (saved by an older version): its default.
    config = LocalConfig.objects.first()
    del config._parameters[conf.PARAMETERS_APP]["enable_alert_emails"]
    config.save()
    assert conf.params() == modoboas()
    assert conf.params()["enable_alert_emails"] is True
