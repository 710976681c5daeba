"""Scenarios through the whole chain: real redis-server, Pebble, nginx, DNS (mark ``chain``)."""
