"""The one exceptions module of :mod:`proxy`.

Hierarchy::

    NocpError                       base of everything the proxy raises on purpose
    ├── ConfigError                 bad settings; raised at start-up, names the offending key
    └── ProxyHTTPError              a request we answer ourselves, in the protocol's error shape
        ├── BadRequest              400: body is not JSON / has the wrong shape
        ├── ModelNotFound           404: no upstream serves the model
        ├── PayloadTooLarge         413: body over ``server.max_body_bytes``
        ├── UpstreamUnavailable     502: could not connect to / read from the upstream
        └── UpstreamTimeout         504: the upstream did not answer in time

Errors inside pipeline stages are not part of this hierarchy: the pipeline catches every
exception a stage raises, forwards the original request (fail-open) and logs why.
"""

from __future__ import annotations


class NocpError(Exception):
    """Base class of every error the proxy raises on purpose."""


class ConfigError(NocpError):
    """The settings are invalid; the message names the key."""


class ProxyHTTPError(NocpError):
    """An error answered by the proxy itself, rendered in the client protocol's error shape."""

    status: int = 500
    error_type: str = "proxy_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class BadRequest(ProxyHTTPError):
    """The request body is not valid JSON or has the wrong shape."""

    status = 400
    error_type = "invalid_request_error"


class ModelNotFound(ProxyHTTPError):
    """No configured upstream serves the requested model."""

    status = 404
    error_type = "invalid_request_error"


class PayloadTooLarge(ProxyHTTPError):
    """The request body exceeds the configured limit."""

    status = 413
    error_type = "invalid_request_error"


class UpstreamUnavailable(ProxyHTTPError):
    """The upstream could not be reached or broke the connection."""

    status = 502
    error_type = "upstream_error"


class UpstreamTimeout(ProxyHTTPError):
    """The upstream did not answer within the configured timeout."""

    status = 504
    error_type = "upstream_timeout"
