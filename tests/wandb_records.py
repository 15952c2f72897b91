"""The history of an offline wandb run, read back from its .wandb file.

wandb-core writes the file in LevelDB's log format: a 7-byte header (":W&B", magic 0xBEE1, version 0), then
32 KiB blocks of chunks, each with a 7-byte header (CRC32, little-endian length, type: 1 full, 2 first,
3 middle, 4 last) and a piece of one serialised `wandb_internal_pb2.Record`."""

import json
import struct
from pathlib import Path

BLOCK = 32768
CHUNK_HEADER = 7
FULL, LAST = 1, 4


def records(path):
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a .wandb file"
    pos, pending = 7, b""
    while True:
        left = BLOCK - pos % BLOCK
        if left < CHUNK_HEADER:  # a block's tail too short for a chunk header is zero padding
            pos += left
            continue
        if pos + CHUNK_HEADER > len(data):
            return
        length, kind = struct.unpack_from("<HB", data, pos + 4)
        pending += data[pos + CHUNK_HEADER : pos + CHUNK_HEADER + length]
        pos += CHUNK_HEADER + length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def history(run_folder) -> dict:
    """{step: {key: value}} of what a run under RUN/wandb/ logged (nested keys joined with "/")."""
    (path,) = Path(run_folder).glob("wandb/offline-run-*/run-*.wandb")
    steps = {}
    for record in records(path):
        if record.WhichOneof("record_type") == "history":
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            steps.setdefault(record.history.step.num, {}).update(items)
    return steps
