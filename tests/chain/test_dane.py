"""DANE-safe key rollover through the real chain: Pebble issues, nginx serves, the DNS stub
publishes the TLSA records the test sets (docs/mail.md).

What an operator checks: the public key and serial of the certificate nginx serves, the
next key on disk (0600), the host's history, `GET .../tlsa/`, `virtualhosts tlsa HOST`,
and the alarm.
"""

from __future__ import annotations

import io
import logging
import stat

import pytest
from django.core.management import call_command
from django.utils import timezone
from rest_framework.test import APIClient

from modoboa_pro.virtualhosts import constants, jobs, pipeline, services
from modoboa_pro.virtualhosts.adapters import preflight, storage, tlsa
from modoboa_pro.virtualhosts.errors import UnusablePair
from modoboa_pro.virtualhosts.models import VirtualHost, VirtualHostEvent

from ..conftest import Chain
from .test_provisioning import served_certificate

pytestmark = [pytest.mark.chain, pytest.mark.dane]

MAIL = "mail.dane.test"
SMTP = f"_25._tcp.{MAIL}"
URL = "/api/v2/virtualhosts/"


def served(chain: Chain, hostname: str = MAIL) -> tuple[str, int]:
    """The served certificate's key (its 3 1 1 digest) and serial."""
    cert = served_certificate(chain, hostname)
    return tlsa.certificate_digest(cert), cert.serial_number


def next_key_digest(chain: Chain, hostname: str = MAIL) -> str:
    path = storage._pairs_dir(chain.storage, hostname) / storage.NEXT_KEY_FILENAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    return tlsa.key_digest(path.read_bytes())


def last_message(host: VirtualHost, step: str) -> str:
    event = VirtualHostEvent.objects.filter(virtualhost=host, step=step).first()
    assert event is not None, f"no {step} event"
    assert event.outcome == constants.OUTCOME_OK, event.message
    return event.message


def renew(chain: Chain, host: VirtualHost) -> VirtualHost:
    services.renew_now(host)
    chain.drain()
    host.refresh_from_db()
    assert host.status == constants.STATUS_ACTIVE, host.last_error
    return host


def admin_api() -> APIClient:
    from modoboa.core.models import User

    client = APIClient()
    client.force_authenticate(User.objects.get(username="admin"))
    return client


def cli(*args: str) -> str:
    out = io.StringIO()
    call_command("virtualhosts", *args, stdout=out)
    return out.getvalue()


def tlsa_alarms(host: VirtualHost) -> list[str]:
    from modoboa.admin import constants as admin_constants
    from modoboa.admin.models import Alarm

    opened = Alarm.objects.filter(
        internal_name=f"virtualhost-tlsa:{host.pk}", status=admin_constants.ALARM_OPENED
    )
    return [alarm.title for alarm in opened]


def test_the_key_is_kept_until_the_next_one_is_published(chain: Chain, caplog):
    caplog.set_level(logging.INFO, logger="modoboa.jobs")
    host = services.create_virtualhost(MAIL, serves_mail=True)
    chain.drain()
    host.refresh_from_db()
    assert host.status == constants.STATUS_ACTIVE, host.last_error
    current, first_serial = served(chain)
    upcoming = next_key_digest(chain)
    assert upcoming != current
    assert host.tlsa_keys["current"] == current and host.tlsa_keys["next"] == upcoming
    assert last_message(host, constants.STEP_KEY) == "a new key (no usable current key on disk)"

    # Both records, ready to paste, neither published yet.
    api = admin_api()
    answer = api.get(f"{URL}{host.pk}/tlsa/")
    assert answer.status_code == 200, answer.content
    records = answer.json()["records"]
    assert [(r["name"], r["role"], r["published"]) for r in records] == [
        (SMTP, "current", False),
        (SMTP, "next", False),
    ]
    assert records[1]["zone_line"] == f"{SMTP}. IN TLSA 3 1 1 {upcoming}"
    assert cli("tlsa", MAIL).splitlines()[1:] == [
        "; current key, NOT published yet",
        f"{SMTP}. IN TLSA 3 1 1 {current}",
        "; next key, NOT published yet",
        f"{SMTP}. IN TLSA 3 1 1 {upcoming}",
    ]

    # Renewal without the next key's record: a new certificate, the same key.
    host = renew(chain, host)
    key, serial = served(chain)
    assert (key, serial != first_serial) == (current, True)
    assert next_key_digest(chain) == upcoming
    privkey = storage.certificate_paths(chain.storage, MAIL)[1]
    assert stat.S_IMODE(privkey.stat().st_mode) == 0o600
    assert storage.previous_pair(chain.storage, MAIL) is not None  # a new version, swapped whole
    assert last_message(host, constants.STEP_KEY) == (
        f"current key kept: the next key's TLSA 3 1 1 record is not published at {SMTP}; "
        "publish it and the first renewal that finds it rotates to the next key"
    )

    # The operator publishes both records: the next renewal serves the next key, and a
    # new next key is made for the rotation after.
    chain.dns.tlsa[SMTP] = [(3, 1, 1, current), (3, 1, 1, upcoming)]
    published = [r["published"] for r in api.get(f"{URL}{host.pk}/tlsa/").json()["records"]]
    assert published == [True, True]
    host = renew(chain, host)
    assert served(chain)[0] == upcoming
    newer = next_key_digest(chain)
    assert newer not in (current, upcoming)
    assert host.tlsa_keys == {**host.tlsa_keys, "current": upcoming, "next": newer}
    assert last_message(host, constants.STEP_KEY) == (
        "next key rotated in: its TLSA 3 1 1 record is published"
    )
    assert f"next key {newer[:12]}... NOT published at {SMTP}" in last_message(
        host, constants.STEP_TLSA
    )
    # Nothing secret reached the log.
    assert "PRIVATE KEY" not in caplog.text


def test_forced_rotation_and_the_2_1_1_warning(chain: Chain, monkeypatch):
    host = services.create_virtualhost(MAIL, serves_mail=True)
    chain.drain()
    upcoming = next_key_digest(chain)
    served_chain = served_certificate(chain, MAIL)
    host.refresh_from_db()
    [intermediate] = host.tlsa_keys["chain"]
    # The real intermediate pinned: no warning; and another CA's (Let's Encrypt's old one).
    stale = "00" * 32
    chain.dns.tlsa[SMTP] = [(2, 1, 1, intermediate), (2, 1, 1, stale)]

    # Forced through the API: the renewal uses the next key although it is not published.
    # Its first attempt finds the new pair unusable (injected): the old pair is put back,
    # and the forced rotation stays asked for.
    real = pipeline._usable_pair
    refusals = []

    def refuse_once(s, hostname, serial):
        if not refusals:
            refusals.append(serial)
            raise UnusablePair("certificate unusable (injected).")
        return real(s, hostname, serial)

    monkeypatch.setattr(pipeline, "_usable_pair", refuse_once)
    answer = admin_api().post(f"{URL}{host.pk}/rotate-key/")
    assert answer.status_code == 202, answer.content
    chain.drain()
    host.refresh_from_db()
    assert host.status == constants.STATUS_FAILED and "injected" in host.last_error
    assert served(chain)[0] != upcoming
    assert host.key_rotation_requested_at is not None
    # The retry sweep, once the retry is due, rotates again (its order is forced).
    VirtualHost.objects.filter(pk=host.pk).update(next_attempt_at=timezone.now())
    assert jobs.retry_due_virtualhosts()["retried"] == [MAIL]
    chain.drain()
    host.refresh_from_db()
    assert host.status == constants.STATUS_ACTIVE, host.last_error
    key, serial = served(chain)
    assert key == upcoming and serial != served_chain.serial_number
    assert host.key_rotation_requested_at is None
    assert next_key_digest(chain) != upcoming
    assert last_message(host, constants.STEP_KEY).endswith("the operator forced it (rotate-key)")

    # The 2 1 1 record of another CA: in the history, an alarm, the API and the CLI.
    warning = f"{SMTP} has a TLSA 2 1 1 record ({stale[:16]}...) pinning a CA"
    assert warning in last_message(host, constants.STEP_TLSA)
    [title] = tlsa_alarms(host)
    assert warning in title
    [api_warning] = admin_api().get(f"{URL}{host.pk}/tlsa/").json()["warnings"]
    assert api_warning.startswith(warning)
    assert f"; WARNING: {warning}" in cli("tlsa", MAIL)

    # The stale record removed: the next run closes the alarm.
    chain.dns.tlsa[SMTP] = [(2, 1, 1, intermediate)]
    host = renew(chain, host)
    assert tlsa_alarms(host) == []
    assert "Warning" not in last_message(host, constants.STEP_TLSA)

    # A web host has no key to rotate.
    web = VirtualHost.objects.create(hostname="www.dane.test", enabled=False)
    with pytest.raises(Exception, match="new key with every certificate"):
        cli("rotate-key", web.hostname)


def test_a_dns_failure_keeps_the_key_and_says_so(chain: Chain, monkeypatch):
    # The stub stops answering TLSA queries (A and AAAA still answer: the pre-flight passes).
    monkeypatch.setattr(preflight, "RESOLVER_TIMEOUT", 0.2)
    monkeypatch.setattr(preflight, "RESOLVER_LIFETIME", 0.3)
    host = services.create_virtualhost(MAIL, serves_mail=True)
    chain.drain()
    current, _ = served(chain)
    chain.dns.silent.add(SMTP)
    host = renew(chain, host)
    assert served(chain)[0] == current
    message = last_message(host, constants.STEP_KEY)
    assert message.startswith("current key kept: whether the next key's TLSA record is")
    assert f"TLSA lookup of {SMTP} at {chain.dns.address} failed (no answer in time)" in message
    assert message.endswith("a DNS failure never blocks a renewal")
    assert "failed (no answer in time)" in last_message(host, constants.STEP_TLSA)


def test_a_web_host_gets_a_new_key_every_renewal(chain: Chain, settings):
    host = services.create_virtualhost("www.dane.test")
    chain.drain()
    first, _ = served(chain, host.hostname)
    host = renew(chain, host)
    assert served(chain, host.hostname)[0] != first
    steps = set(VirtualHostEvent.objects.filter(virtualhost=host).values_list("step", flat=True))
    assert not steps & {constants.STEP_KEY, constants.STEP_TLSA}
    next_key = storage._pairs_dir(chain.storage, host.hostname) / storage.NEXT_KEY_FILENAME
    assert not next_key.exists()

    # A mail host too, with VIRTUALHOSTS_MAIL_KEEP_KEY off (read at call time).
    settings.VIRTUALHOSTS_MAIL_KEEP_KEY = False
    mail = services.create_virtualhost(MAIL, serves_mail=True)
    chain.drain()
    first, _ = served(chain)
    mail = renew(chain, mail)
    assert served(chain)[0] != first
    assert last_message(mail, constants.STEP_KEY) == (
        "a new key (VIRTUALHOSTS_MAIL_KEEP_KEY is off)"
    )
    assert not (storage._pairs_dir(chain.storage, MAIL) / storage.NEXT_KEY_FILENAME).exists()
