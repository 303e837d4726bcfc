"""What the Dispatcher and its mixins share: refusals and how internal
failure texts map to wire codes and HTTP statuses."""
from __future__ import annotations

from protocol.frames import ErrorCode

RETRY_S = 0.1  # a request or subscription without a leader right now is tried again this soon


class Refusal(Exception):
    """A request this node refuses: a wire error code, an HTTP status and a text."""

    def __init__(self, code: ErrorCode, status: int, slug: str, message: str) -> None:
        super().__init__(message)
        self.code, self.status, self.slug, self.message = code, status, slug, message


def _classify(error: str) -> tuple[ErrorCode, int, str]:
    """Map an internal failure text to (wire code, HTTP status, slug)."""
    e = error.lower()
    if "out-of-order" in e:
        return ErrorCode.OUT_OF_ORDER_SEQUENCE, 409, "out_of_order_sequence"
    if "overloaded" in e or "too many" in e:
        return ErrorCode.OVERLOADED, 503, "overloaded"
    if "bad batch" in e:
        return ErrorCode.INVALID_REQUEST, 400, "bad_request"
    if "busy" in e or "exclusive" in e:
        return ErrorCode.SUBSCRIPTION_BUSY, 409, "subscription_busy"
    if "not " in e and "is " in e and "subscription" in e:
        return ErrorCode.INVALID_REQUEST, 409, "conflict"
    if "timed out" in e or "timeout" in e:
        return ErrorCode.TIMEOUT, 504, "timeout"
    return ErrorCode.NOT_LEADER, 503, "unavailable"
