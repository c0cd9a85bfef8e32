"""The header lists aiohttp's C HTTP parser keeps after a head is parsed, emptied once it is.

aiohttp's C parser (``_http_parser.pyx``, llhttp) builds each head in two lists, the decoded
``(name, value)`` pairs and the raw ``(bytes, bytes)`` pairs, and keeps both until the next message on
the connection begins. On an open stream that is the whole head held a second time for the stream's
life (issue 21: ~3.5 KB per upstream connection once the response handle let its message go, ~1 KB
per client connection beside the request's own headers). They are private C attributes, reachable
only as the parser's references (``gc.get_referents``); a list is emptied only when its first item is
the message's own (the raw pair itself, or the decoded value object), so no other list of the parser
is ever touched, and an aiohttp that lays its parser out differently is left as it is. The
pure-Python parser keeps no such list: nothing is found, nothing is emptied.
"""
from __future__ import annotations

import gc
from collections.abc import Mapping, Sequence


def forget_parsed_head(parser: object, raw_headers: Sequence[tuple[bytes, bytes]],
                       headers: Mapping[str, str]) -> int:
    """Empty the lists ``parser`` keeps of the head just parsed; returns how many it emptied."""
    if not raw_headers:
        return 0
    first_raw = raw_headers[0]
    first_value = next(iter(headers.values()), None)
    emptied = 0
    for ref in gc.get_referents(parser):
        if type(ref) is list and ref and _is_head_pair(ref[0], first_raw, first_value):
            ref.clear()
            emptied += 1
    return emptied


def _is_head_pair(item: object, first_raw: object, first_value: object) -> bool:
    if item is first_raw:
        return True
    return type(item) is tuple and len(item) == 2 and item[1] is first_value
