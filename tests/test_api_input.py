"""API v2 input of the wrong JSON type, shape or size: a 4xx saying what to fix, nothing written."""

from __future__ import annotations

import json
from typing import Any

import pytest
from rest_framework.test import APIClient

from modoboa_pro.virtualhosts.api.viewsets import MAX_BODY_BYTES
from modoboa_pro.virtualhosts.models import VirtualHost

from .api_world import World
from .test_api import URL, snapshot

OK = "ok.example.test"
JSON = "application/json"
MEGABYTE = 1_000_000


@pytest.fixture
def send(world: World, django_capture_on_commit_callbacks):
    """Send a raw body as a SuperAdmin; run what the request scheduled on commit."""

    def request(method: str, url: str, body: str | bytes, content_type: str = JSON):
        with django_capture_on_commit_callbacks(execute=True):
            return world.api("SuperAdmins").generic(method, url, body, content_type=content_type)

    return request


def refused(response, status: int, key: str, fragment: str) -> str:
    """The message under ``key`` of a ``status`` answer, which must contain ``fragment``."""
    assert response.status_code == status, response.content[:500]
    assert response["Content-Type"].startswith(JSON), response.content[:500]
    data = response.json()
    assert key in data, data
    message = data[key] if isinstance(data[key], str) else " ".join(data[key])
    assert fragment in message, message
    return message


def resolve(value: Any, world: World) -> Any:
    """Replace the placeholders DOMAIN (the id) and DOMAIN_TEXT (the id as a string)."""
    if value == "DOMAIN":
        return world.domain.pk
    if value == "DOMAIN_TEXT":
        return str(world.domain.pk)
    if isinstance(value, dict):
        return {k: resolve(v, world) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, world) for v in value]
    return value


# -- create: POST /api/v2/virtualhosts/ ---------------------------------------------------

CREATE = [
    # hostname: a JSON string, and a valid one
    ({"hostname": 123}, "hostname", 'as a JSON string, e.g. "www.example.com", not a number'),
    ({"hostname": 1.5}, "hostname", "not a decimal number"),
    ({"hostname": ["www.example.test"]}, "hostname", "not an array"),
    ({"hostname": {"name": "www.example.test"}}, "hostname", "not an object"),
    ({"hostname": None}, "hostname", "not null"),
    ({"hostname": True}, "hostname", "not a boolean"),
    ({"hostname": "x" * 10_000}, "hostname", "at most 253 characters"),
    ({"hostname": "a\u200db.example.test"}, "hostname", "U+200D ZERO WIDTH JOINER"),
    ({"hostname": "xn--0.example.test"}, "hostname", "not valid Punycode"),
    ({"hostname": "\ud800.example.test"}, "hostname", "not valid Unicode"),
    ({}, "hostname", "required"),
    # enabled: true or false, nothing that merely looks like them
    ({"hostname": OK, "enabled": "true"}, "enabled", "JSON boolean, without quotes), not a string"),
    ({"hostname": OK, "enabled": "false"}, "enabled", "not a string"),
    ({"hostname": OK, "enabled": 0}, "enabled", "not a number"),
    ({"hostname": OK, "enabled": 1}, "enabled", "not a number"),
    ({"hostname": OK, "enabled": {"value": True}}, "enabled", "not an object"),
    ({"hostname": OK, "enabled": [True]}, "enabled", "not an array"),
    ({"hostname": OK, "enabled": None}, "enabled", "not null"),
    # domain: an id (a whole number) or null
    (
        {"hostname": OK, "domain": "DOMAIN_TEXT"},
        "domain",
        "as a whole number (or null), not a string",
    ),
    ({"hostname": OK, "domain": "example.test"}, "domain", "not a string"),
    ({"hostname": OK, "domain": ["DOMAIN"]}, "domain", "not an array"),
    ({"hostname": OK, "domain": {"id": "DOMAIN"}}, "domain", "not an object"),
    ({"hostname": OK, "domain": True}, "domain", "not a boolean"),
    ({"hostname": OK, "domain": 1.0}, "domain", "not a decimal number"),
    ({"hostname": OK, "domain": -1}, "domain", "No domain you administer has the id -1."),
    ({"hostname": OK, "domain": 0}, "domain", "No domain you administer has the id 0."),
    ({"hostname": OK, "domain": 2**63}, "domain", f"has the id {2**63}."),
    ({"hostname": OK, "domain": 2**70}, "domain", f"has the id {2**70}."),
    # the body: one JSON object with known fields
    ([{"hostname": OK}], "non_field_errors", 'Send a JSON object such as {"hostname"'),
    (OK, "non_field_errors", "not a string"),
    (42, "non_field_errors", "not a number"),
    (True, "non_field_errors", "not a boolean"),
    ({"hostname": OK, "enable": False}, "non_field_errors", "Unknown field(s) 'enable'"),
    ({"hostname": OK, "status": "active"}, "non_field_errors", "send only hostname, enabled"),
    (
        {"hostname": OK, **{f"f{i}": i for i in range(50)}},
        "non_field_errors",
        "and 45 more",
    ),
]


@pytest.mark.parametrize(("body", "key", "fragment"), CREATE, ids=lambda v: ascii(v)[:50])
def test_create_refuses_wrong_json_types(world: World, send, body, key, fragment):
    before = snapshot()
    response = send("POST", URL, json.dumps(resolve(body, world)))
    refused(response, 400, key, fragment)
    assert snapshot() == before, "a refused request wrote something"


RAW = [
    # (body, content type, status, key, fragment)
    ("{hostname: x}", JSON, 400, "detail", "JSON parse error"),
    ('{"hostname": "ok.example.test",}', JSON, 400, "detail", "JSON parse error"),
    ('{"hostname": "ok.example.test", "enabled": NaN}', JSON, 400, "detail", "JSON parse error"),
    (b"\xff\xfe{}", JSON, 400, "detail", "JSON parse error"),
    ("null", JSON, 400, "non_field_errors", "Send a JSON object such as"),
    ("", JSON, 400, "hostname", "required"),
    ("hostname=ok.example.test", "application/x-www-form-urlencoded", 415, "detail", "Unsupported"),
    ("hostname=ok.example.test", "multipart/form-data; boundary=x", 415, "detail", "Unsupported"),
    ("ok.example.test", "text/plain", 415, "detail", "Unsupported media type"),
    (json.dumps({"hostname": "x" * 60_000}), JSON, 400, "hostname", "at most 253 characters"),
    (json.dumps({"hostname": "x" * MEGABYTE}), JSON, 413, "detail", f"at most {MAX_BODY_BYTES}"),
    (json.dumps({"hostname": OK, "pad": "x" * MEGABYTE}), JSON, 413, "detail", "send at most"),
    (json.dumps([OK] * (MEGABYTE // 20)), JSON, 413, "detail", "send at most"),
    (json.dumps({"hostname": "x" * 3 * MEGABYTE}), JSON, 413, "detail", "send at most"),
]


@pytest.mark.parametrize(
    ("body", "content_type", "status", "key", "fragment"), RAW, ids=lambda v: ascii(v)[:40]
)
def test_create_refuses_bodies_that_are_not_one_small_json_object(
    world: World, send, body, content_type, status, key, fragment
):
    before = snapshot()
    response = send("POST", URL, body, content_type)
    refused(response, status, key, fragment)
    assert snapshot() == before, "a refused request wrote something"


def test_the_size_is_checked_before_anything_reads_the_body(world: World):
    """Even before authentication (which reads the body): a stranger learns only the limit."""
    body = json.dumps({"hostname": "x" * 3 * MEGABYTE})
    response = APIClient().generic("POST", URL, body, content_type=JSON)
    refused(response, 413, "detail", f"send at most {MAX_BODY_BYTES}")
    response = APIClient().generic("POST", URL, json.dumps({"hostname": OK}), content_type=JSON)
    assert response.status_code == 401


def test_a_body_with_the_right_types_is_still_accepted(world: World, send):
    body = {"hostname": OK, "enabled": False, "domain": world.domain.pk}
    response = send("POST", URL, json.dumps(body))
    assert response.status_code == 201, response.content
    assert VirtualHost.objects.get(hostname=OK).enabled is False


# -- update: PATCH /api/v2/virtualhosts/{id}/ --------------------------------------------

PATCH = [
    ({"enabled": "false"}, "enabled", "not a string"),
    ({"enabled": "no"}, "enabled", "not a string"),
    ({"enabled": 0}, "enabled", "not a number"),
    ({"enabled": None}, "enabled", "not null"),
    ({"enabled": []}, "enabled", "not an array"),
    ({"enabled": {}}, "enabled", "not an object"),
    ({"enabled": False, "status": "active"}, "non_field_errors", "Unknown field(s) 'status'"),
    ({"enabled": False, "hostname": 5}, "hostname", "cannot be changed"),
    ({"enabled": False, "hostname": ["www.example.test"]}, "hostname", "cannot be changed"),
    ({"enabled": False, "hostname": None}, "hostname", "cannot be changed"),
    ({"enabled": False, "domain": "example.test"}, "domain", "cannot be changed"),
    ({"enabled": False, "domain": -1}, "domain", "cannot be changed"),
    ([{"enabled": False}], "non_field_errors", 'such as {"enabled": false}, not an array'),
    ("false", "non_field_errors", "not a string"),
    (False, "non_field_errors", "not a boolean"),
    ({}, "enabled", "Send enabled (true or false)"),
]


@pytest.mark.parametrize(("body", "key", "fragment"), PATCH, ids=lambda v: ascii(v)[:50])
def test_update_refuses_wrong_json_types(world: World, send, body, key, fragment):
    before = snapshot()
    response = send("PATCH", f"{URL}{world.mine.pk}/", json.dumps(body))
    refused(response, 400, key, fragment)
    assert snapshot() == before, "a refused request wrote something"


PATCH_RAW = [
    ("{enabled: false}", JSON, 400, "detail", "JSON parse error"),
    ("null", JSON, 400, "non_field_errors", "Send a JSON object such as"),
    ("enabled=false", "application/x-www-form-urlencoded", 415, "detail", "Unsupported"),
    (json.dumps({"enabled": False, "pad": "x" * MEGABYTE}), JSON, 413, "detail", "send at most"),
]


@pytest.mark.parametrize(
    ("body", "content_type", "status", "key", "fragment"), PATCH_RAW, ids=lambda v: ascii(v)[:40]
)
def test_update_refuses_bodies_that_are_not_one_small_json_object(
    world: World, send, body, content_type, status, key, fragment
):
    before = snapshot()
    response = send("PATCH", f"{URL}{world.mine.pk}/", body, content_type)
    refused(response, status, key, fragment)
    assert snapshot() == before, "a refused request wrote something"


def test_update_accepts_the_unchanged_name_and_domain_sent_back(world: World, send):
    body = {"enabled": False, "hostname": "www.example.test", "domain": world.domain.pk}
    response = send("PATCH", f"{URL}{world.mine.pk}/", json.dumps(body))
    assert response.status_code == 200, response.content
    assert VirtualHost.objects.get(pk=world.mine.pk).enabled is False
