"""Virtual hosts with automatic HTTPS (ACME HTTP-01, Nginx)."""
