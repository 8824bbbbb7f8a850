"""POP3 (RFC 1939): the sans-IO protocol core and the session that drives it."""
