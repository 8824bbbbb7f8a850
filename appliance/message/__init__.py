"""Internet messages as stored octets: MIME structure, header fields, text.

Pure functions of the bytes (no store, no sockets), shared by delivery,
which analyzes a message once when it arrives, and by the readers of stored
mail (IMAP FETCH and SEARCH, webmail).
"""
