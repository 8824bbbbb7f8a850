"""Errors the store raises; their text is fit to show a user as one line."""


class StoreError(Exception):
    """Base of every refusal by the store. The store is unchanged when one is raised."""


class NotFound(StoreError):
    pass


class AlreadyExists(StoreError):
    pass


class InUse(StoreError):
    """The record is still needed by others (a domain that still has accounts)."""


class SchemaTooNew(StoreError):
    """The data was written by a newer version of the appliance."""
