"""Mail authentication: SPF, DKIM, DMARC and the Authentication-Results field.

Everything here works on bytes, names and files under the data directory;
it depends only on the store level and below, never on a protocol server.
"""
