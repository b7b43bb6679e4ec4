"""The record the web tier queues for each accepted push.

One header line (receipt id, source, receipt time) then the raw body bytes,
so the ack path never re-encodes the body.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Envelope:
    receipt_id: str
    source: str
    received_at: float  # Unix time, seconds
    body: bytes

    def encode(self) -> bytes:
        return b"%s\t%s\t%.6f\n%s" % (
            self.receipt_id.encode(),
            self.source.encode(),
            self.received_at,
            self.body,
        )

    @classmethod
    def decode(cls, raw: bytes) -> Envelope:
        header, _, body = raw.partition(b"\n")
        receipt_id, source, received_at = header.decode().split("\t")
        return cls(receipt_id, source, float(received_at), body)
