"""Test settings, built like the settings `modoboa-admin.py deploy` generates.

Redis lives on a unix socket in a per-run directory chosen here, before Django
starts; the session fixture starts a real redis-server on that socket.
"""

import os
import tempfile

RUN_DIR = os.environ.get("MODOBOA_PRO_TEST_RUN_DIR") or tempfile.mkdtemp(prefix="modoboa-pro-test-")
os.environ["MODOBOA_PRO_TEST_RUN_DIR"] = RUN_DIR  # inherited by worker subprocesses
REDIS_SOCKET = os.path.join(RUN_DIR, "redis.sock")
REDIS_URL = f"unix://{REDIS_SOCKET}?db=0"

SECRET_KEY = "modoboa-pro-tests-only"  # noqa: S105
DEBUG = False
ALLOWED_HOSTS = ["*"]
SITE_ID = 1

INSTALLED_APPS = (
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.sites",
    "django.contrib.staticfiles",
    "reversion",
    "oauth2_provider",
    "corsheaders",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "phonenumber_field",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "django_otp.plugins.otp_static",
    "django_rename_app",
    "django_rq",
)

MODOBOA_APPS = (
    "modoboa",
    "modoboa.core",
    "modoboa.lib",
    "modoboa.admin",
    "modoboa.transport",
    "modoboa.relaydomains",
    "modoboa.limits",
    "modoboa.parameters",
    "modoboa.dnstools",
    "modoboa.policyd",
    "modoboa.maillog",
    "modoboa.dmarc",
    "modoboa.autoconfig",  # its endpoints are what autoconfig/autodiscover sites forward to
    # The plugin under test, registered as an instance would.
    "modoboa_pro.virtualhosts",
)
INSTALLED_APPS += MODOBOA_APPS

AUTH_USER_MODEL = "core.User"

MIDDLEWARE = (
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "x_forwarded_for.middleware.XForwardedForMiddleware",
    "corsheaders.middleware.CorsMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "modoboa.core.middleware.LocalConfigMiddleware",
    "modoboa.lib.middleware.CommonExceptionCatcher",
    "modoboa.lib.middleware.RequestCatcherMiddleware",
)

AUTHENTICATION_BACKENDS = ("django.contrib.auth.backends.ModelBackend",)

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.debug",
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.template.context_processors.i18n",
                "django.template.context_processors.media",
                "django.template.context_processors.static",
                "django.template.context_processors.tz",
                "django.contrib.messages.context_processors.messages",
                "modoboa.core.context_processors.theme",
            ],
        },
    },
]

ROOT_URLCONF = "tests.urls"

if os.environ.get("DB", "sqlite").lower() == "postgres":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": os.environ.get("POSTGRES_DB", "modoboa_pro"),
            "USER": os.environ.get("POSTGRES_USER", "postgres"),
            "PASSWORD": os.environ.get("POSTGRES_PASSWORD", "postgres"),
            "HOST": os.environ.get("POSTGRES_HOST", "127.0.0.1"),
            "PORT": os.environ.get("POSTGRES_PORT", "5432"),
            "ATOMIC_REQUESTS": True,
            "TEST": {"NAME": "test_" + os.environ.get("POSTGRES_DB", "modoboa_pro")},
        }
    }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.path.join(RUN_DIR, "modoboa.db"),
            "ATOMIC_REQUESTS": True,
            # As docs/installation.md recommends (workers write while requests run). A test
            # database need not survive a power cut: without fsync, each of the suite's tens
            # of thousands of commits costs microseconds instead of ~10 ms. Locking (what
            # IMMEDIATE and the timeout are about) is the same.
            "OPTIONS": {
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
                "init_command": "PRAGMA synchronous=OFF",
            },
            "TEST": {"NAME": os.path.join(RUN_DIR, "test-modoboa.db")},
        }
    }

LANGUAGE_CODE = "en"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

STATIC_URL = "/sitestatic/"
STATIC_ROOT = os.path.join(RUN_DIR, "sitestatic")
MEDIA_URL = "/media/"
MEDIA_ROOT = os.path.join(RUN_DIR, "media")

OAUTH2_PROVIDER = {
    "SCOPES": {"read": "Read scope", "write": "Write scope"},
    "DEFAULT_SCOPES": ["read", "write"],
}

REST_FRAMEWORK = {
    "DEFAULT_THROTTLE_RATES": {
        "user": "30000/minute",
        "ddos": "5000/second",
        "ddos_lesser": "20000/minute",
        "login": "10000/minute",
        "password_recovery_request": "12000/hour",
        "password_recovery_totp_check": "25000/hour",
        "password_recovery_apply": "25000/hour",
    },
    "DEFAULT_AUTHENTICATION_CLASSES": (
        "oauth2_provider.contrib.rest_framework.OAuth2Authentication",
        "rest_framework.authentication.TokenAuthentication",
    ),
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_VERSIONING_CLASS": "rest_framework.versioning.NamespaceVersioning",
}

MODOBOA_API_URL = "https://api.modoboa.org/1/"
DISABLE_DASHBOARD_EXTERNAL_QUERIES = True
PID_FILE_STORAGE_PATH = RUN_DIR

REDIS_HOST = "localhost"
REDIS_PORT = 0
REDIS_QUOTA_DB = 0

# Modoboa's queues; "ASYNC" stays True: tests run real workers on real Redis.
RQ_QUEUES = {name: {"URL": REDIS_URL} for name in ("dkim", "modoboa", "dovecot", "privileged")}
RQ = {"COMMIT_MODE": "auto"}

CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

PHONENUMBER_DB_FORMAT = "INTERNATIONAL"
SILENCED_SYSTEM_CHECKS = ["security.W019"]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "modoboa.jobs": {"handlers": ["console"], "level": "INFO", "propagate": True},
    },
}

# The plugin's own settings: the session fixtures point these at the real
# nginx / Pebble they start (see tests/conftest.py).
VIRTUALHOSTS_RELOAD_MODE = "local"
# Never the system's Postfix and Dovecot: the mail deploy is off, except in tests/mail, whose
# fixtures point it at their own instances.
VIRTUALHOSTS_MAIL_SERVICES: list[str] = []

# Never the machine's own nginx: the fixtures point reloads at theirs.
VIRTUALHOSTS_NGINX_PID_FILE = None

# Worker subprocesses (the privileged worker) get nginx's commands from the fixtures.
if os.environ.get("MODOBOA_PRO_TEST_NGINX_TEST_COMMAND"):
    import json

    VIRTUALHOSTS_NGINX_TEST_COMMAND = json.loads(os.environ["MODOBOA_PRO_TEST_NGINX_TEST_COMMAND"])
    VIRTUALHOSTS_NGINX_RELOAD_COMMAND = json.loads(
        os.environ["MODOBOA_PRO_TEST_NGINX_RELOAD_COMMAND"]
    )
    VIRTUALHOSTS_NGINX_PID_FILE = os.environ["MODOBOA_PRO_TEST_NGINX_PID_FILE"]

# What Modoboa's autoconfig/autodiscover endpoints answer (its settings template's form).
EMAIL_CLIENT_CONNECTION_SETTINGS = {
    "imap": {"HOSTNAME": "mail.%EMAILDOMAIN%", "SOCKET_TYPE": "SSL", "PORT": 993},
    "smtp": {"HOSTNAME": "mail.%EMAILDOMAIN%", "SOCKET_TYPE": "STARTTLS", "PORT": 587},
}

# The mail tests' privileged worker: the mail services' settings, and the test database
# (it reads the mail hosts from it).
if os.environ.get("MODOBOA_PRO_TEST_MAIL_SETTINGS"):
    import json

    globals().update(json.loads(os.environ["MODOBOA_PRO_TEST_MAIL_SETTINGS"]))
    DATABASES["default"]["NAME"] = DATABASES["default"]["TEST"]["NAME"]
