"""Signed update bundles: verified, streamed into the inactive slot, booted with a try count.

bundle.py is the format, keys.py the trusted keyring, install.py the slot
and boot entry work, settings.py the [update] table. See DESIGN.md "The image".
"""
