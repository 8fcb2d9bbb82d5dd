"""The Confluent wire format: magic byte 0, a 4-byte big-endian schema id, then the Avro record."""

from __future__ import annotations

import struct

MAGIC = 0
HEADER = struct.Struct(">bI")
HEADER_SIZE = HEADER.size


class WireFormatError(ValueError):
    """A message that is not in the Confluent wire format."""


def confluent_header(schema_id: int) -> bytes:
    """The 5 bytes in front of a record written under `schema_id`."""
    if not 0 <= schema_id < 2**31:
        raise ValueError(f"schema id {schema_id} is not a non-negative 32-bit int")
    return HEADER.pack(MAGIC, schema_id)


def frame(schema_id: int, payload: bytes) -> bytes:
    """A whole message: the header, then the schemaless Avro `payload`."""
    return confluent_header(schema_id) + payload


def unframe(message: bytes) -> tuple[int, memoryview]:
    """The schema id of a message and its Avro payload (a view, not a copy)."""
    if len(message) < HEADER_SIZE:
        raise WireFormatError(f"message of {len(message)} bytes is shorter than the 5-byte header")
    magic, schema_id = HEADER.unpack_from(message)
    if magic != MAGIC:
        raise WireFormatError(f"magic byte is {magic}, not 0: not Confluent wire format")
    return schema_id, memoryview(message)[HEADER_SIZE:]
