"""HTTP/1.1 messages as bytes: the request head, the response head and body framing.

Pure modules, no I/O and no clock: ``request_head`` checks a client's head and makes the one
sent to a backend, ``response_head`` does the same for a backend's response, ``framing`` knows
how bodies end and holds the one chunk encoder. docs/request-path.md describes their rules.
"""
