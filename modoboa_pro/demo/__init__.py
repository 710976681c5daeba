"""``make demo``: a throwaway Modoboa instance obtains HTTPS certificates for two hosts.

Everything runs on loopback: redis-server, a DNS stub, nginx and Pebble (a test ACME
CA) from :mod:`modoboa_pro.testing`, then a Modoboa instance deployed with
``modoboa-admin.py deploy`` on SQLite, its RQ workers and its application server.
Virtual hosts are created through Modoboa's REST API, as an admin would, and the demo
follows them until nginx serves each one over HTTPS. Every process it starts is
stopped by PID before it exits.
"""

from modoboa_pro.demo.run import main

__all__ = ["main"]
