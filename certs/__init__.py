"""Development TLS: a self-signed certificate generated on first start (nothing secret in git)."""
