"""What PostgreSQL's connection messages say, read the same way by both log parsers.

``logparse`` (Aurora's default ``log_line_prefix``, the fast path) and ``logformat`` (any other
prefix) split a line differently but must agree on the message after the prefix: which text may
follow an authorized user, which FATAL ends a just-authorized session, and whose authentication
failed. Those rules live here, so neither parser imports the other.
"""

from __future__ import annotations

#: What may follow ``user=U`` (or ``database=D``) in a connection-authorized message, PG 11-18.
AUTHORIZED_SUFFIXES = (" application_name=", " SSL enabled (", " GSS (", " database=")
#: The same after a replication connection's ``user=U``: it names no database.
REPLICATION_SUFFIXES = tuple(s for s in AUTHORIZED_SUFFIXES if s != " database=")

#: Time zone abbreviations a log line's ``%t`` / ``%m`` may carry for UTC.
UTC_ZONE_NAMES = frozenset({"UTC", "GMT", "Z", "UCT", "UT", "Zulu"})

# FATAL messages PostgreSQL emits *after* "connection authorized" that end the session at once,
# by how they start and how they end (names are quoted in the middle).
_REJECTION_STARTS = (
    "too many connections for role ",
    "permission denied for database ",
    "too many connections for database ",
    "remaining connection slots are reserved",
    "must be superuser or replication role to start walsender",
    "permission denied to start WAL sender",
)
_REJECTION_ENDS = (
    " is not permitted to log in",
    " does not exist",
    " is not currently accepting connections",
)
_AUTH_FAILED = 'authentication failed for user "'


def failed_user(message: str) -> str | None:
    """The name in ``authentication failed for user "NAME"`` (to the last quote), if the message says so.

    As the regex ``authentication failed for user "(.*)"`` on one line, without its cost.
    """
    i = message.find(_AUTH_FAILED)
    if i < 0:
        return None
    start = i + len(_AUTH_FAILED)
    end = message.rfind('"')
    return message[start:end] if end >= start else None


def is_rejection(message: str) -> bool:
    """Whether a FATAL message is one that ends a just-authorized session."""
    return message.startswith(_REJECTION_STARTS) or message.endswith(_REJECTION_ENDS)
