"""Real-server harness for tests and the demo: Redis, PostgreSQL, Pebble, nginx and a DNS stub.

Plain Python (no pytest, no Django) so both the pytest fixtures and ``make demo`` can use it.
"""

from modoboa_pro.testing.acme_proxy import (
    AcmeProxy,
    Problem,
    RenewalAnswer,
    already_replaced,
    http_date,
    paused,
    rate_limited,
    window,
)
from modoboa_pro.testing.dns import DnsResponder
from modoboa_pro.testing.pki import (
    make_ca,
    make_chain_pem,
    make_self_signed_leaf,
    make_server_cert,
    validity,
)
from modoboa_pro.testing.servers import (
    HarnessError,
    ManagedProcess,
    NginxServer,
    PebbleServer,
    PostgresServer,
    RedisServer,
    free_port,
)

__all__ = [
    "AcmeProxy",
    "DnsResponder",
    "HarnessError",
    "ManagedProcess",
    "NginxServer",
    "PebbleServer",
    "PostgresServer",
    "Problem",
    "RedisServer",
    "RenewalAnswer",
    "already_replaced",
    "free_port",
    "http_date",
    "make_ca",
    "make_chain_pem",
    "make_self_signed_leaf",
    "make_server_cert",
    "paused",
    "rate_limited",
    "validity",
    "window",
]
