"""Webmail, the reading side: mailboxes, lists, messages, search, and acting on them.

Any account may use it with the login of the admin pages. Modules:
access (whose mailbox is this), reading (what a message shows: its
people, body parts and attachments), sanitize (a stranger's HTML made
safe to show), search (IMAP SEARCH's matching over a mailbox), events (new
mail pushed to an open list), state (what is kept in memory), handlers
(the pages). Writing mail is appliance.web.mail_compose.
"""

from appliance.web.mail.handlers import add_routes

__all__ = ["add_routes"]
