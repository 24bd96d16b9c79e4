"""HTTP's token grammar (RFC 9110 section 5.6.2), for both sides.

A header's name and a WebSocket subprotocol's are tokens. The sandbox
refuses a bad one where tenant code sets it (workerd's ``TypeError`` or
``SyntaxError``); the supervisor checks again what a child sends and what
goes onto the wire, since a child may send anything.
"""

from __future__ import annotations

import re

_TOKEN_CHARS = r"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
#: A token, as text (what tenant code and frames carry).
TOKEN = re.compile(_TOKEN_CHARS)
#: A token, as bytes (what goes onto the wire).
TOKEN_BYTES = re.compile(_TOKEN_CHARS.encode())
