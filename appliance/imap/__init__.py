"""IMAP (RFC 9051, RFC 3501): command syntax, the sans-IO protocol core, and the session."""
