"""Statuses, queue names, steps and policy constants, each with its reason."""

from __future__ import annotations

import datetime

# Provisioning status of a virtual host (observed state, written by jobs only).
STATUS_PENDING = "pending"  # created, chain not started yet
STATUS_PROVISIONING = "provisioning"  # the chain is running
STATUS_ACTIVE = "active"  # served over HTTPS with a verified certificate
STATUS_HTTP_ONLY = "http_only"  # served over HTTP only: Let's Encrypt disabled
STATUS_FAILED = "failed"  # last run failed; see last_error
# Failing for days (or paused by the CA): no longer retried until an operator retries.
STATUS_PAUSED = "paused"
STATUS_DISABLED = "disabled"  # the admin disabled the host; no site, no renewal
STATUSES = (
    (STATUS_PENDING, "Pending"),
    (STATUS_PROVISIONING, "Provisioning"),
    (STATUS_ACTIVE, "Active"),
    (STATUS_HTTP_ONLY, "HTTP only"),
    (STATUS_FAILED, "Failed"),
    (STATUS_PAUSED, "Paused"),
    (STATUS_DISABLED, "Disabled"),
)

# RQ queues, as Modoboa names them. The privileged worker runs as root.
QUEUE_DEFAULT = "modoboa"
QUEUE_PRIVILEGED = "privileged"
# Services the mail deploy knows (VIRTUALHOSTS_MAIL_SERVICES).
MAIL_POSTFIX = "postfix"
MAIL_DOVECOT = "dovecot"

# Steps of the chain, recorded in each host's history (the UI shows them).
STEP_HTTP_SITE = "http_site"
STEP_ACCOUNT = "account"
STEP_ORDER = "order"
STEP_STORE = "store"
STEP_HTTPS_SITE = "https_site"
STEP_VERIFY = "verify"
STEP_REMOVE = "remove"
STEP_RENEW = "renew"
# Mail hosts only (DANE, docs/mail.md): which key the order uses, then what the
# published TLSA records say about the served certificate.
STEP_KEY = "key"
STEP_TLSA = "tlsa"
# A mail host's certificate deployed to Postfix and Dovecot, then seen on every mail port:
# steps of their own, since the web site may be fine while a mail service is not.
STEP_MAIL_DEPLOY = "mail_deploy"
STEP_MAIL_VERIFY = "mail_verify"
STEPS = (
    (STEP_HTTP_SITE, "HTTP-only site"),
    (STEP_ACCOUNT, "ACME account"),
    (STEP_ORDER, "Certificate order"),
    (STEP_STORE, "Certificate stored"),
    (STEP_HTTPS_SITE, "HTTPS site"),
    (STEP_VERIFY, "Served certificate verified"),
    (STEP_REMOVE, "Site removed"),
    (STEP_RENEW, "Renewal"),
    (STEP_KEY, "Private key chosen"),
    (STEP_TLSA, "TLSA records checked"),
    (STEP_MAIL_DEPLOY, "Mail services deployed"),
    (STEP_MAIL_VERIFY, "Mail certificate verified"),
)

# What a run is doing (its history entries and log lines say it).
KIND_PROVISION = "provisioning"
KIND_RENEWAL = "renewal"
KIND_DISABLE = "disable"

# What a job returns besides a status: the host was deleted, or another run holds it.
RESULT_GONE = "gone"
RESULT_BUSY = "busy"

OUTCOME_OK = "ok"
OUTCOME_FAILED = "failed"
OUTCOME_SKIPPED = "skipped"
OUTCOMES = ((OUTCOME_OK, "OK"), (OUTCOME_FAILED, "Failed"), (OUTCOME_SKIPPED, "Skipped"))

# How many history entries a host keeps: enough for a few full runs, small
# enough that the API can return them inline.
HISTORY_KEEP = 50

# Files under <acme_account_storage_path>, as the documentation promises.
WEBROOT_DIRNAME = "webroot"
CERTS_DIRNAME = "certs"
ACCOUNTS_DIRNAME = "accounts"
# Which challenge tokens each host's runs published (private): a run killed before its
# cleanup leaves tokens behind, and the host's next run removes exactly those.
CHALLENGES_DIRNAME = "challenges"
ARCHIVE_DIRNAME = "archive"
FULLCHAIN_FILENAME = "fullchain.pem"
PRIVKEY_FILENAME = "privkey.pem"

# File modes: private keys and their directories are never group/world readable.
PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700
PUBLIC_FILE_MODE = 0o644
# The webroot is read by nginx workers (an unprivileged user): the storage root
# is traversable, its certs/ and accounts/ subdirectories are not.
STORAGE_ROOT_MODE = 0o755
WEBROOT_DIR_MODE = 0o755

# A lock outlives any sane chain run (ACME polling is bounded well below it)
# but expires on its own if a worker is SIGKILLed mid-run. Disable and remove
# wait up to this long for the run in progress, so they never give up on a live one.
HOST_LOCK_TTL = datetime.timedelta(minutes=15)


# Hostname rules (RFC 1035 / RFC 5890).
HOSTNAME_MAX_LENGTH = 253
# ACME profile names (draft-ietf-acme-profiles): short tokens such as "tlsserver". Anything
# else would only be refused by the CA at the next order.
ACME_PROFILE_MAX_LENGTH = 64
ACME_PROFILE_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
LABEL_MAX_LENGTH = 63

# What a host's HTTPS site serves. "web": the whole Modoboa application (every host until
# the domain's usual names). The two others forward only the paths mail clients ask to
# Modoboa's own endpoints (modoboa.autoconfig) and answer 404 to anything else, so that a
# name published for client configuration does not expose the web UI under it.
SITE_WEB = "web"
SITE_AUTOCONFIG = "autoconfig"  # Thunderbird (and others): GET /mail/config-v1.1.xml
SITE_AUTODISCOVER = "autodiscover"  # Outlook: POST /autodiscover/autodiscover.xml
SITES = (
    (SITE_WEB, "Web (Modoboa)"),
    (SITE_AUTOCONFIG, "Mail client autoconfig"),
    (SITE_AUTODISCOVER, "Mail client autodiscover"),
)
SITE_MAX_LENGTH = 20
