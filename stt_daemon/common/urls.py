"""Passwords out of URLs before they reach a log line or an error message."""

from __future__ import annotations

from urllib.parse import urlsplit


def redact(url: str) -> str:
    """``url`` with its password (if any) shown as ``***``, for logs and errors.

    Never raises: settings validators call it on whatever was configured.
    """
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        # Unparsable (a broken IPv6 literal, say): it may still hold a password anywhere.
        return "<unparsable URL>"
    if not password:
        return url
    # The last "@" ends the user part: a password may hold an unescaped "@".
    userinfo, host = parts.netloc.rsplit("@", 1)
    user = userinfo.split(":", 1)[0]
    return parts._replace(netloc=f"{user}:***@{host}").geturl()
