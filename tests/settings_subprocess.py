"""Settings for a `manage.py` subprocess started by a test: it reads the test database."""

from .settings import *  # noqa: F403
from .settings import DATABASES

DATABASES["default"]["NAME"] = (
    DATABASES["default"].get("TEST", {}).get("NAME", DATABASES["default"]["NAME"])
)
