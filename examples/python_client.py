#!/usr/bin/env python3
"""A minimal time-sync client in Python (protocol v5), written from docs/PROTOCOL.md alone.

It exists to prove that the protocol document is enough to write a compatible client without
reading the Rust code. It takes part in a cluster like `ts-client` does: it reports its virtual
clock every second, can be elected master, follows the master's updates, takes part in Berkeley
rounds and obeys an operator's `set_time`.

What version 5 asks of every client, and this one does (PROTOCOL.md §5-§8, §14, §20):

* Keys (§7): it reads its key directory (`--key-dir`): `client.key` (`<kid> <hex>` lines, the
  first one seals), `leader.pub` (every line opens) and `client.id`. Its id is `--id` if given,
  else `client.id`; it refuses to start with neither, with two that differ, or without a client
  key or a leader public key. It looks at the key files' modification times at every report
  tick (once a second) and re-reads them when they change, keeping its keys if they do not
  parse.
* Sealing (§6): every message it sends (reports, Berkeley readings) is compact JSON sealed with
  HMAC-SHA256 under its own client key and that key's kid. Every message it receives is opened
  in the order of §6.5 (size, seal shape, `v`, `type`, exact schema and ranges, the leader key
  by kid, a strict Ed25519 signature: canonical `S`, no small-order `R` or public key) before
  anything in it is looked at. A message that does not open is rejected without requeue,
  counted by reason (`too_large`, `malformed`, `bad_version`, `unsigned`, `unknown_key`,
  `bad_signature`) and logged with the rate limit of §14.5 (10 lines per 10 s).
* Fencing (§13.8, §14.4): after opening, a message whose `epoch` is below the one followed, or
  more than 1 000 000 (`MAX_EPOCH_STEP`) above it, is acknowledged, counted in
  `stale_epoch_msgs` and otherwise ignored, however long the followed epoch has been silent;
  any other message makes its epoch the followed one.
* Logical time (§8): a Lamport counter stamps every report, reading and event and takes in the
  stamp of every message that opened and passed fencing. The hybrid logical clock of §8.3 runs
  on the reference's time as a probe estimate gives it; this client does not probe, so it
  sends no `hlc` and takes in none (the clock class keeps the HLC rules for a client that
  would). It never sends a vector clock.
* Reports (§9, §14.2): every second, the first at once; `seq` counts from 1 for the life of the
  process (not reset on reconnect), `boot_us` is the host clock at process start, `time_us` is
  read immediately before sealing and publishing. It sends `epoch`, `stale_epoch_msgs`,
  `rejected_msgs` and, as `events`, up to 8 of the events waiting (at most 64 are kept):
  `clock_synced`, `clock_stepped` and `fencing_refused` (one per deposed epoch higher than any
  refused before).
* `client_id` (§14.4): a `probe_reply`, `berkeley_adjust` or `set_time` meant for another
  client is acknowledged and ignored (after fencing and taking in its stamp), counted nowhere
  in its reports.
* `set_time` (§10.5, §14.4): applied once per `op_id` (the last 256 are remembered), as a step
  that does not count in `max_step_us`; the clock is not synced afterwards.
* Broker (§2.2, §4, §14.1): it runs as the cluster's *client* broker user, so it only checks
  `ts.reports`, `ts.rpc` and `ts.master_updates` with passive declarations (a missing one ends
  the session; it tries again a second later, having published nothing), then declares its own
  server-named exclusive auto-delete queue, binds it to `ts.master_updates` and consumes it
  with manual acks. Readings go to `ts.rpc` with `reply_to` = that queue and expiration 1 s;
  reports to `ts.reports` with expiration 2 s.

What it keeps from the v3 example client, and what it leaves out on purpose:

* The clock is virtual: host realtime clock + an offset (no simulated drift, no frequency).
* It does **not probe** (PROTOCOL.md §11.1, §15.3): it never sends `probe` messages, so it has
  no estimate of its offset to the reference clock. Its reports carry `ref_offset_us`,
  `ref_freq_ppm` and `ref_server_id` as `null`, and it follows a `master_update` of algorithm
  `master` (or `berkeley`) through the fallback of §15.3, the min-delay filter (last 8 samples
  of `master_time_us` minus host receive time, estimate = maximum, emptied when
  `(server_id, master_id)` changes); the follower's error is then about two transits (1-2 ms).
  Updates of algorithm `naive` set the clock to `master_time_us`, unfiltered. `probe_reply`
  messages (none should come) are acknowledged and ignored.
* It answers `berkeley_poll` with a `berkeley_reading` whose `time_us` is its clock at the
  poll's arrival and without `ref_offset_us` (so the coordinator uses the poll's round trip),
  and applies `berkeley_adjust` by adding `adjust_us` to its offset. It learns no frequency.
  `--no-berkeley` makes it ignore polls and adjustments instead.
* Correction is simpler than `ts-client`: every correction is applied at once (the offset is
  just set), above and below the 128 ms step threshold, instead of being slewed at 500 ppm. So
  this clock can jump and can run backwards; that is fine for a demonstration, not for a clock
  anyone reads. `max_step_us` in its reports says how large those jumps were after it first
  came within 1 ms of its target. A `clock_stepped` event is recorded only for a jump of a
  synced clock above the 128 ms step threshold (the ones `ts-client` would step; smaller ones
  stand in for its slews) and for a `set_time`.
* Reconnects after a broker failure with growing delays (1 s .. 5 s), re-declaring everything;
  after a session that ended with an error it waits 1 s.

Usage (the broker URL of the cluster's client user comes from the environment, so that no
password appears on a command line; `--amqp-url` overrides it):
    TS_AMQP_URL=amqp://<prefix>-client:<password>@127.0.0.1:5672/<vhost> \\
    python3 examples/python_client.py --key-dir <dir with leader.pub, client.key, client.id> \\
        --ip 127.0.0.9 --initial-offset-ms 500000 --duration 15
    python3 examples/python_client.py --self-test   # the seals of every example of PROTOCOL.md

Requires Python 3.11 with `pika` (>= 1.2) and `cryptography` (>= 38).

At exit it prints one JSON line:
    {"id": ..., "updates_applied": N, "final_offset_us": ..., "master_id": ..., ...,
     "messages_rejected": N, "rejected_by_reason": {...}, "time_sets_applied": N}
`messages_ignored` counts messages that opened and passed fencing but were not acted on (for
another client, a stale update or round, an `op_id` already applied, a `probe_reply`, Berkeley
messages with `--no-berkeley`).
"""

import argparse
import hashlib
import hmac
import ipaddress
import json
import math
import os
import re
import sys
import time
import uuid
from collections import deque

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

PROTOCOL_VERSION = 6
REPORTS_QUEUE = "ts.reports"
UPDATES_EXCHANGE = "ts.master_updates"
RPC_QUEUE = "ts.rpc"
MAX_MESSAGE_BYTES = 4096
REPORT_INTERVAL_S = 1.0
STEP_THRESHOLD_US = 128_000
SYNCED_US = 1000  # within this of the target once = synced (§15.4)
FILTER_WINDOW = 8
MAX_EPOCH_STEP = 1_000_000  # a jump above the followed epoch larger than this is refused
OP_IDS_REMEMBERED = 256
EVENTS_WAITING = 64
EVENTS_PER_REPORT = 8
EVENT_TEXT_MAX = 240
LOG_LIMIT = 10  # lines per LOG_WINDOW_S (§14.5)
LOG_WINDOW_S = 10.0
ALGORITHMS = ("master", "naive", "berkeley")
TWO_53 = 2**53
U32_MAX = 2**32 - 1
U64_MAX = 2**64 - 1
KEY_FILES = ("leader.key", "leader.pub", "replica.key", "cluster.key", "client.key",
             "operator.token")  # the six files whose modification times are watched (§7)


def host_us():
    """The host's realtime clock in integer microseconds since the Unix epoch."""
    return time.time_ns() // 1000


def is_int(x):
    # JSON true/false arrive as Python bools, which are ints; the protocol wants real integers.
    return isinstance(x, int) and not isinstance(x, bool)


def encode(msg):
    """Compact JSON, ASCII only (escapes are allowed, §6.1), ending in its closing `}`."""
    return json.dumps(msg, separators=(",", ":")).encode()


# ------------------------------------------------------------------------------------------
# Sealing (PROTOCOL.md §6)

HEX = frozenset(b"0123456789abcdef")
MAC_DOMAIN = b"time-sync mac key"
LEADER_DOMAIN = b"time-sync leader key"
CLIENT_KEY_DOMAIN = b"time-sync client key"


def seal(message, kid, sign):
    """message: a JSON object whose last byte is '}'; sign(bytes) -> tag or signature (§6.1)."""
    signed = message[:-1] + b',"kid":"' + kid.encode() + b'"}'
    return signed[:-1] + b',"sig":"' + sign(signed).hex().encode() + b'"}'


def unseal(body):
    """(message, kid, signed, sig), or None if the body has no seal of the right shape (§6.1)."""
    if not body.endswith(b'"}'):
        return None
    inner = body[:-2]
    at = inner.rfind(b',"sig":"')
    if at < 0:
        return None
    sig_hex = inner[at + 8:]
    if not set(sig_hex) <= HEX or len(sig_hex) % 2:
        return None
    kid_end = at - 1  # the kid's closing quote
    if kid_end < 16 or inner[kid_end:at] != b'"':
        return None
    kid = inner[kid_end - 8:kid_end]
    if inner[kid_end - 16:kid_end - 8] != b',"kid":"' or not set(kid) <= HEX:
        return None
    return (inner[:kid_end - 16] + b"}", kid.decode(), inner[:at] + b"}",
            bytes.fromhex(sig_hex.decode()))


def kid_of(domain, key_bytes):
    """First 4 bytes of SHA-256(domain ‖ key), as 8 lowercase hex digits (§6.2)."""
    return hashlib.sha256(domain + key_bytes).hexdigest()[:8]


def derive_client_key(cluster_secret, client_id):
    """HMAC-SHA256(cluster secret, "time-sync client key" ‖ the UUID's 16 bytes) (§6.3).
    Only servers and tsc do this; the client uses it in its self-test only."""
    return hmac.new(cluster_secret, CLIENT_KEY_DOMAIN + client_id.bytes, hashlib.sha256).digest()


def hmac_tag(key, data):
    return hmac.new(key, data, hashlib.sha256).digest()


def hmac_ok(key, data, tag):
    return len(tag) == 32 and hmac.compare_digest(hmac_tag(key, data), tag)


# Ed25519, strict verification (§6.3): OpenSSL (through `cryptography`) does the cofactorless
# check [S]B - [k]A == R byte for byte; this adds what it may not refuse: a non-canonical S and a
# small-order R or public key. Small order is tested by multiplying the point by 8.
ED_P = 2**255 - 19
ED_L = 2**252 + 27742317777372353535851937790883648493
ED_D = -121665 * pow(121666, ED_P - 2, ED_P) % ED_P
ED_SQRT_M1 = pow(2, (ED_P - 1) // 4, ED_P)


def ed25519_decompress(b):
    """The affine point (x, y) a 32-byte encoding names (RFC 8032 §5.1.3), or None."""
    if len(b) != 32:
        return None
    n = int.from_bytes(b, "little")
    sign, y = n >> 255, n & ((1 << 255) - 1)
    if y >= ED_P:
        return None
    u = (y * y - 1) % ED_P
    v = (ED_D * y * y + 1) % ED_P
    x = u * pow(v, 3, ED_P) * pow(u * pow(v, 7, ED_P), (ED_P - 5) // 8, ED_P) % ED_P
    vx2 = v * x * x % ED_P
    if vx2 == (-u) % ED_P and vx2 != u:
        x = x * ED_SQRT_M1 % ED_P
    elif vx2 != u:
        return None
    if x == 0 and sign:
        return None
    if x & 1 != sign:
        x = ED_P - x
    return x, y


def ed25519_small_order(b):
    """True if the encoding names a point of small order, None if it names no point."""
    pt = ed25519_decompress(b)
    if pt is None:
        return None
    X, Y, Z = pt[0], pt[1], 1
    for _ in range(3):  # doubling in projective coordinates (a = -1), dbl-2008-bbjlp
        B = (X + Y) * (X + Y) % ED_P
        C = X * X % ED_P
        D = Y * Y % ED_P
        E = -C % ED_P
        F = (E + D) % ED_P
        J = (F - 2 * Z * Z) % ED_P
        X, Y, Z = (B - C - D) * J % ED_P, F * (E - D) % ED_P, F * J % ED_P
    return X == 0 and Y == Z


# The points of small order are exactly those whose y is 0, 1, -1 or ±y8 (y8: a point of order
# 8). A signature's R that passed OpenSSL's byte comparison is a canonical encoding of a point, so
# its y alone says whether it is of small order; the self-test checks this set against
# ed25519_small_order.
_Y_MASK = (1 << 255) - 1
_Y8 = int.from_bytes(bytes.fromhex(
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"), "little") & _Y_MASK
SMALL_ORDER_Y = frozenset((0, 1, ED_P - 1, _Y8, ED_P - _Y8))


class LeaderKey:
    def __init__(self, raw):
        if ed25519_decompress(raw) is None:
            raise ValueError("not a valid Ed25519 public key")
        self.raw = raw
        self.kid = kid_of(LEADER_DOMAIN, raw)
        self.small_order = ed25519_small_order(raw)
        self.key = Ed25519PublicKey.from_public_bytes(raw)

    def verify(self, sig, data):
        if len(sig) != 64 or self.small_order:
            return False
        if int.from_bytes(sig[32:], "little") >= ED_L:
            return False  # S not canonical
        try:
            self.key.verify(sig, data)
        except InvalidSignature:
            return False
        return int.from_bytes(sig[:32], "little") & _Y_MASK not in SMALL_ORDER_Y


# ------------------------------------------------------------------------------------------
# Decoding (PROTOCOL.md §5)

class DecodeError(Exception):
    def __init__(self, kind, detail=""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


def malformed(detail):
    return DecodeError("malformed", detail)


UUID_RE = re.compile(
    r"(?:urn:uuid:|\{)?[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
    r"[0-9a-fA-F]{12}\}?|[0-9a-fA-F]{32}")


def parse_uuid(text):
    """A UUID in any form §5 accepts (canonical, upper case, 32 digits, {…}, urn:uuid:…)."""
    if not isinstance(text, str) or not UUID_RE.fullmatch(text):
        return None
    if text.startswith("{") != text.endswith("}"):
        return None
    if text.startswith("urn:uuid:") and text.endswith("}"):
        return None
    return uuid.UUID(text)


def parse_ip(text):
    if not isinstance(text, str) or "%" in text or "[" in text:
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


REQ, OPT, OPT_NOT_NULL = "required", "optional", "optional, not null"


def check_int(name, value, lo, hi):
    if not is_int(value):
        raise malformed(f"{name}: not an integer: {value!r}")
    if not lo <= value <= hi:
        raise malformed(f"{name}: out of range: {value}")
    return value


def check_object(name, value, fields):
    """An object with exactly these fields (name -> (kind, presence)); returns it decoded."""
    if not isinstance(value, dict):
        raise malformed(f"{name}: not an object")
    unknown = set(value) - set(fields)
    if unknown:
        raise malformed(f"{name}: unknown fields {sorted(unknown)}")
    out = {}
    for field, (kind, presence) in fields.items():
        path = f"{name}.{field}" if name else field
        if field not in value:
            if presence == REQ:
                raise malformed(f"missing field {path}")
            out[field] = "master" if kind == "algorithm" else None
            continue
        v = value[field]
        if v is None:
            if presence != OPT:
                raise malformed(f"{path}: null")
            out[field] = None
            continue
        out[field] = check_value(path, kind, v)
    return out


HLC_FIELDS = {"us": ("us", REQ), "c": ("u32", REQ)}
STAMP_FIELDS = {"lt": ("u53", REQ), "hlc": ("hlc", OPT), "vc": ("vc", OPT)}
EVENT_FIELDS = {"kind": ("str", REQ), "node": ("text", REQ), "stamp": ("stamp", REQ),
                "cause": ("stamp", OPT), "text": ("text", REQ), "data": ("dict", OPT_NOT_NULL)}
NTP_FIELDS = {name: ("u53", REQ) for name in (
    "answered", "kissed", "short", "oversized", "bad_version", "not_client_mode", "malformed",
    "replayed", "rate_limited")}
REFERENCE_MAX = 64
UPSTREAMS_MAX = 8
UPSTREAM_STATES = ("waiting", "unreachable", "falseticker", "candidate", "selected")
UPSTREAM_FIELDS = {"addr": ("reference", REQ), "state": ("upstream_state", REQ),
                   "offset_us": ("us", OPT), "delay_us": ("us", OPT),
                   "stratum": ("stratum", OPT)}


def check_value(name, kind, v):
    if kind == "us":
        return check_int(name, v, -TWO_53, TWO_53)
    if kind == "u53":
        return check_int(name, v, 0, TWO_53)
    if kind == "u32":
        return check_int(name, v, 0, U32_MAX)
    if kind == "u64":
        return check_int(name, v, 0, U64_MAX)
    if kind == "ppm":
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            raise malformed(f"{name}: not a number")
        if not (math.isfinite(v) and -1e6 <= v <= 1e6):
            raise malformed(f"{name}: out of range")
        return v
    if kind == "bool":
        if not isinstance(v, bool):
            raise malformed(f"{name}: not a boolean")
        return v
    if kind == "str":
        if not isinstance(v, str):
            raise malformed(f"{name}: not a string")
        return v
    if kind == "text":
        if not isinstance(v, str) or len(v.encode("utf-8", "surrogatepass")) > EVENT_TEXT_MAX:
            raise malformed(f"{name}: not a string of at most {EVENT_TEXT_MAX} bytes")
        return v
    if kind == "stratum":
        return check_int(name, v, 0, 16)
    if kind == "reference":
        if not isinstance(v, str) or len(v.encode("utf-8", "surrogatepass")) > REFERENCE_MAX:
            raise malformed(f"{name}: not a string of at most {REFERENCE_MAX} bytes")
        return v
    if kind == "ntp":
        return check_object(name, v, NTP_FIELDS)
    if kind == "upstream_state":
        if v not in UPSTREAM_STATES:
            raise malformed(f"{name}: unknown upstream state {v!r}")
        return v
    if kind == "upstreams":
        if not isinstance(v, list) or len(v) > UPSTREAMS_MAX:
            raise malformed(f"{name}: not an array of at most {UPSTREAMS_MAX} upstreams")
        return [check_object(f"{name}[{i}]", u, UPSTREAM_FIELDS) for i, u in enumerate(v)]
    if kind == "dict":
        if not isinstance(v, dict):
            raise malformed(f"{name}: not an object")
        return v
    if kind == "uuid":
        u = parse_uuid(v)
        if u is None:
            raise malformed(f"{name}: not a UUID: {v!r}")
        return u
    if kind == "ip":
        if parse_ip(v) is None:
            raise malformed(f"{name}: not an IP address: {v!r}")
        return v
    if kind == "algorithm":
        if v not in ALGORITHMS:
            raise malformed(f"{name}: unknown algorithm {v!r}")
        return v
    if kind == "stamp":
        return check_object(name, v, STAMP_FIELDS)
    if kind == "hlc":
        return check_object(name, v, HLC_FIELDS)
    if kind == "vc":
        if not isinstance(v, dict) or len(v) > 64:
            raise malformed(f"{name}: not an object of at most 64 entries")
        for k, c in v.items():
            if not re.fullmatch(r"[0-9]+", k) or int(k) > TWO_53:
                raise malformed(f"{name}: bad replica id {k!r}")
            check_int(f"{name}.{k}", c, 0, TWO_53)
        return v
    if kind == "change":
        if not isinstance(v, dict) or len(v) != 1:
            raise malformed(f"{name}: not an object with exactly one member")
        (form, inner), = v.items()
        if form == "absolute":
            return {"absolute": check_object(f"{name}.absolute", inner,
                                             {"time_us": ("us", REQ)})}
        if form == "shift":
            return {"shift": check_object(f"{name}.shift", inner, {"shift_us": ("us", REQ)})}
        raise malformed(f"{name}: unknown change {form!r}")
    if kind == "events":
        if not isinstance(v, list) or len(v) > EVENTS_PER_REPORT:
            raise malformed(f"{name}: not an array of at most {EVENTS_PER_REPORT} events")
        return [check_object(f"{name}[{i}]", e, EVENT_FIELDS) for i, e in enumerate(v)]
    raise AssertionError(kind)


def common(**fields):
    return {"server_id": ("uuid", REQ), "epoch": ("u53", REQ), **fields,
            "stamp": ("stamp", REQ)}


# Messages a client receives (§10): field -> (kind, presence). `v` and `type` checked apart.
TO_CLIENT = {
    "master_update": common(
        seq=("u53", REQ), master_id=("uuid", REQ), master_ip=("ip", REQ),
        master_time_us=("us", REQ), server_time_us=("us", REQ),
        algorithm=("algorithm", OPT_NOT_NULL),  # absent = "master"; null is not allowed
        master_ref_offset_us=("us", OPT), master_ref_freq_ppm=("ppm", OPT),
        master_stratum=("stratum", OPT), master_ref_error_us=("u53", OPT)),
    "probe_reply": common(
        client_id=("uuid", REQ), seq=("u53", REQ), t1_us=("us", REQ), t2_us=("us", REQ),
        t3_us=("us", REQ)),
    "berkeley_poll": common(round=("u53", REQ), poll=("u32", REQ)),
    "berkeley_adjust": common(
        client_id=("uuid", REQ), round=("u53", REQ), adjust_us=("us", REQ),
        outlier=("bool", REQ)),
    "set_time": common(client_id=("uuid", REQ), op_id=("uuid", REQ), change=("change", REQ)),
}

# What a client sends (§9, §11): used by the self-test to check what this client builds and the
# document's own examples.
TIME_REPORT = {
    "id": ("uuid", REQ), "ip": ("ip", REQ), "time_us": ("us", REQ), "seq": ("u53", REQ),
    "master_id": ("uuid", OPT), "master_time_us": ("us", OPT), "true_offset_us": ("us", OPT),
    "ref_offset_us": ("us", OPT), "ref_freq_ppm": ("ppm", OPT), "max_step_us": ("us", OPT),
    "ref_server_id": ("uuid", OPT), "epoch": ("u53", OPT), "stale_epoch_msgs": ("u64", OPT),
    "rejected_msgs": ("u64", OPT), "boot_us": ("us", REQ), "stamp": ("stamp", REQ),
    "events": ("events", OPT_NOT_NULL), "stratum": ("stratum", OPT),
    "reference": ("reference", OPT), "ntp": ("ntp", OPT),
    "upstreams": ("upstreams", OPT_NOT_NULL), "ref_error_us": ("u53", OPT),
    "max_error_us": ("u53", OPT),
}
TO_SERVER = {
    "probe": {"id": ("uuid", REQ), "seq": ("u53", REQ), "t1_us": ("us", REQ),
              "stamp": ("stamp", REQ)},
    "berkeley_reading": {"id": ("uuid", REQ), "epoch": ("u53", REQ), "round": ("u53", REQ),
                         "poll": ("u32", REQ), "time_us": ("us", REQ),
                         "ref_offset_us": ("us", OPT), "stamp": ("stamp", REQ)},
}


def _object_without_duplicates(pairs):
    obj = {}
    for k, v in pairs:
        if k in obj:
            raise malformed(f"duplicated field {k!r}")
        obj[k] = v
    return obj


def _no_constant(name):
    raise ValueError(f"{name} is not JSON")


def decode(body, schemas, untagged=None):
    """Decodes a message (its seal already taken off, or an unsealed body) in the order of §5:
    size, then `v`, then `type` (tagged bodies), schema and ranges. `schemas` maps each `type`
    allowed here to its fields; `untagged` is the schema of a body without `type` (a report).
    Returns the message as a dict, UUIDs as uuid.UUID, absent optional fields as None."""
    if len(body) > MAX_MESSAGE_BYTES:
        raise DecodeError("too_large", f"{len(body)} bytes")
    try:
        msg = json.loads(body.decode("utf-8"), object_pairs_hook=_object_without_duplicates,
                         parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError) as e:  # JSONDecodeError is a ValueError
        raise malformed(f"not JSON: {e}")
    if not isinstance(msg, dict):
        raise malformed("not a JSON object")
    v = msg.get("v")
    if not is_int(v) or v < 0:
        raise malformed("missing or non-integer field `v`")
    if v != PROTOCOL_VERSION:
        raise DecodeError("bad_version", f"v={v}")
    if untagged is not None:
        schema, kind = untagged, None
    else:
        kind = msg.get("type")
        schema = schemas.get(kind) if isinstance(kind, str) else None
        if schema is None:
            raise malformed(f"unknown or missing type {kind!r}")
    rest = {k: x for k, x in msg.items() if k != "v" and (kind is None or k != "type")}
    out = check_object("", rest, schema)
    out["v"] = v
    if kind is not None:
        out["type"] = kind
    return out


def open_body(body, schemas, untagged, verify):
    """Opens a body in the order of §6.5, steps 1-5. verify(kid, signed, sig, message) returns
    "ok", "unknown_key" or "bad_signature". Raises DecodeError(reason) if it does not open."""
    if len(body) > MAX_MESSAGE_BYTES:
        raise DecodeError("too_large", f"{len(body)} bytes")
    parts = unseal(body)
    if parts is None:
        decode(body, schemas, untagged)  # malformed or bad_version, if it is
        raise DecodeError("unsigned", "a valid version-5 message without a seal")
    message, kid, signed, sig = parts
    msg = decode(message, schemas, untagged)
    outcome = verify(kid, signed, sig, msg)
    if outcome != "ok":
        raise DecodeError(outcome, f"kid {kid}")
    return msg


def open_to_client(body, leader_keys):
    """A message from the leader (§10), opened with the leader public keys (kid -> LeaderKey)."""
    def verify(kid, signed, sig, _msg):
        key = leader_keys.get(kid)
        if key is None:
            return "unknown_key"
        return "ok" if key.verify(sig, signed) else "bad_signature"
    return open_body(body, TO_CLIENT, None, verify)


def open_from_client(body, cluster_secrets, report):
    """What a server does with a client's report (report=True) or request: the key is derived
    from the cluster secret the kid names and the `id` inside (§6.4). Used by the self-test."""
    def verify(kid, signed, sig, msg):
        secret = cluster_secrets.get(kid)
        if secret is None:
            return "unknown_key"
        key = derive_client_key(secret, msg["id"])
        return "ok" if hmac_ok(key, signed, sig) else "bad_signature"
    if report:
        return open_body(body, None, TIME_REPORT, verify)
    return open_body(body, TO_SERVER, None, verify)


# ------------------------------------------------------------------------------------------
# Key files (PROTOCOL.md §7)

class KeyFileError(Exception):
    pass


def key_lines(path):
    """The trimmed lines of a key file, without empty and comment lines; missing = none."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as e:
        raise KeyFileError(f"{path}: {e}")
    return [line.strip() for line in text.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def hex_key(path, text):
    if not re.fullmatch(r"[0-9a-fA-F]{64}", text):
        raise KeyFileError(f"{path}: not a 32-byte hex key")
    return bytes.fromhex(text)


class Keys:
    """A client's keys: its sealing key (the first line of client.key) and the leader public
    keys by kid (every line of leader.pub)."""

    def __init__(self, key_dir):
        path = os.path.join(key_dir, "client.key")
        client_keys = []
        for line in key_lines(path):
            kid, sep, rest = line.partition(" ")
            if not sep:
                raise KeyFileError(f"{path}: a line is not `<kid> <key>`")
            if not re.fullmatch(r"[0-9a-f]{8}", kid):
                raise KeyFileError(f"{path}: kid {kid!r} is not 8 lowercase hex digits")
            client_keys.append((kid, hex_key(path, rest.strip())))
        path = os.path.join(key_dir, "leader.pub")
        leader = {}
        for line in key_lines(path):
            try:
                key = LeaderKey(hex_key(path, line))
            except ValueError as e:
                raise KeyFileError(f"{path}: {e}")
            leader.setdefault(key.kid, key)
        if not client_keys:
            raise KeyFileError("no client key")
        if not leader:
            raise KeyFileError("no leader public key")
        self.seal_kid, self.seal_key = client_keys[0]
        self.leader = leader

    def seal(self, message):
        return seal(message, self.seal_kid, lambda signed: hmac_tag(self.seal_key, signed))


def key_files_state(key_dir):
    state = []
    for name in KEY_FILES:
        try:
            state.append(os.stat(os.path.join(key_dir, name)).st_mtime_ns)
        except OSError:
            state.append(None)
    return tuple(state)


def resolve_id(arg_id, key_dir):
    """The client's id: --id if given, else client.id; both and different, or neither: refuse
    (§7, §14.6)."""
    path = os.path.join(key_dir, "client.id")
    file_id = None
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read().strip()
    except FileNotFoundError:
        text = None
    except (OSError, UnicodeDecodeError) as e:
        raise KeyFileError(f"{path}: {e}")
    if text is not None:
        file_id = parse_uuid(text)
        if file_id is None:
            raise KeyFileError(f'{path}: not a UUID: "{text}"')
    if arg_id is not None:
        given = parse_uuid(arg_id)
        if given is None:
            raise KeyFileError(f'--id: not a UUID: "{arg_id}"')
        if file_id is not None and file_id != given:
            raise KeyFileError(f"--id {arg_id} disagrees with {path}: {file_id}")
        return given
    if file_id is None:
        raise KeyFileError(f"no client id: give --id (TS_CLIENT_ID) or write it to {path}")
    return file_id


# ------------------------------------------------------------------------------------------
# Logical clocks (PROTOCOL.md §8)

class LogicalClocks:
    """A Lamport counter, and a hybrid logical clock used only while `pt` is given (that is,
    while the client's clock is synced)."""

    def __init__(self, max_offset_us):
        self.lt = 0
        self.hlc = (0, 0)
        self.max_offset_us = max_offset_us
        self.hlc_refused = 0

    def _hlc_local(self, pt):
        us, c = self.hlc
        self.hlc = (pt, 0) if pt > us else (us, min(c + 1, U32_MAX))

    def tick(self, pt):
        """A send or a local event: the stamp to put on it."""
        self.lt += 1
        stamp = {"lt": self.lt}
        if pt is not None:
            self._hlc_local(pt)
            stamp["hlc"] = {"us": self.hlc[0], "c": self.hlc[1]}
        return stamp

    def observe(self, stamp, pt):
        """The receipt of a message that opened and passed fencing."""
        self.lt = max(self.lt, stamp["lt"]) + 1
        if pt is None:
            return
        remote = stamp.get("hlc")
        if remote is None:
            self._hlc_local(pt)
            return
        m_us, m_c = remote["us"], remote["c"]
        if m_us > pt + self.max_offset_us:
            self.hlc_refused += 1
            self._hlc_local(pt)
            return
        us, c = self.hlc
        new = max(us, m_us, pt)
        if new == us and new == m_us:
            nc = max(c, m_c) + 1
        elif new == us:
            nc = c + 1
        elif new == m_us:
            nc = m_c + 1
        else:
            nc = 0
        self.hlc = (new, min(nc, U32_MAX))


def cause_of(stamp):
    """A received message's stamp, as an event's `cause` (`lt` and `hlc` only)."""
    cause = {"lt": stamp["lt"]}
    if stamp.get("hlc") is not None:
        cause["hlc"] = dict(stamp["hlc"])
    return cause


class RateLimitedLog:
    """At most LOG_LIMIT lines per LOG_WINDOW_S; the count of the others is logged when the
    window ends, checked at every report tick (§14.5, §18)."""

    def __init__(self):
        self.start = time.monotonic()
        self.lines = 0
        self.suppressed = 0

    def tick(self):
        now = time.monotonic()
        if now - self.start >= LOG_WINDOW_S:
            if self.suppressed:
                print(f"{self.suppressed} more refused or ignored messages not logged",
                      file=sys.stderr)
            self.start, self.lines, self.suppressed = now, 0, 0

    def log(self, line):
        self.tick()
        if self.lines < LOG_LIMIT:
            self.lines += 1
            print(line, file=sys.stderr)
        else:
            self.suppressed += 1


# ------------------------------------------------------------------------------------------
# The client

class Client:
    def __init__(self, client_id, ip, keys, initial_offset_us=0, berkeley=True,
                 hlc_max_offset_us=100_000):
        self.id = client_id
        self.ip = ip
        self.keys = keys
        self.berkeley = berkeley
        self.boot_us = host_us()  # host clock at process start, constant (§9)
        self.offset_us = initial_offset_us  # virtual clock = host clock + offset
        self.clocks = LogicalClocks(hlc_max_offset_us)
        self.seq = 0
        self.last_update = None  # ((server_id, epoch), seq) of the last accepted update
        self.last_round = None  # ((server_id, epoch), round) of the last Berkeley adjustment
        self.master = None  # (master_id, master_time_us) of the last accepted update
        self.samples = deque(maxlen=FILTER_WINDOW)  # master clock minus host clock
        self.samples_for = None  # (server_id, master_id) the samples belong to
        self.synced = False
        self.max_step_us = 0
        self.updates_applied = 0
        self.polls_answered = 0
        self.adjusts_applied = 0
        self.time_sets_applied = 0
        self.ignored = 0
        self.steps = 0
        self.epoch = None  # the leader epoch followed
        self.stale_epoch_msgs = 0
        self.highest_refused = None  # highest deposed epoch refused (for fencing_refused)
        self.rejected_by_reason = {}
        self.op_ids = deque()  # the last OP_IDS_REMEMBERED op_ids applied
        self.events = deque(maxlen=EVENTS_WAITING)  # waiting to be reported, oldest dropped

    # --- clock -----------------------------------------------------------------------------

    def now_us(self, h=None):
        return (host_us() if h is None else h) + self.offset_us

    def pt(self, h=None):
        """The physical clock of the hybrid logical clock: the reference's time as a probe
        estimate gives it (§8.3). This client does not probe, so it has none: its stamps carry
        `lt` only, and it takes in no `hlc`."""
        return None

    def record(self, kind, text, data=None, cause=None):
        event = {"kind": kind, "node": f"client-{self.id}", "stamp": self.clocks.tick(self.pt()),
                 "text": text.encode()[:EVENT_TEXT_MAX].decode(errors="ignore")}
        if cause is not None:
            event["cause"] = cause
        if data is not None:
            event["data"] = data
        self.events.append(event)

    def correct(self, offset, cause, may_sync=True):
        """Applies a measured target-minus-local offset at once (see the module doc)."""
        was_synced = self.synced
        if was_synced:
            self.max_step_us = max(self.max_step_us, abs(offset))
        if abs(offset) > STEP_THRESHOLD_US:
            self.steps += 1
        self.offset_us += offset
        if was_synced and abs(offset) > STEP_THRESHOLD_US:
            self.record("clock_stepped", f"stepped by {offset} µs", {"step_us": offset}, cause)
        if not was_synced and may_sync and abs(offset) < SYNCED_US:
            self.synced = True
            self.record("clock_synced", f"synced: within {abs(offset)} µs of the target",
                        {"offset_us": offset}, cause)

    # --- what it receives --------------------------------------------------------------------

    def refuse(self, reason):
        self.rejected_by_reason[reason] = self.rejected_by_reason.get(reason, 0) + 1

    @property
    def rejected_msgs(self):
        return sum(self.rejected_by_reason.values())

    def fence(self, epoch):
        """Whether a message of leader epoch `epoch` may be acted on (§14.4 step 2)."""
        if self.epoch is not None and (epoch < self.epoch or epoch - self.epoch > MAX_EPOCH_STEP):
            self.stale_epoch_msgs += 1
            if epoch < self.epoch and (self.highest_refused is None
                                       or epoch > self.highest_refused):
                self.highest_refused = epoch
                self.record("fencing_refused",
                            f"refused a message of leader epoch {epoch}, following {self.epoch}",
                            {"epoch": epoch, "following": self.epoch})
            return False
        self.epoch = epoch
        return True

    def on_update(self, u, h):
        """Applies a decoded master_update received at host time `h`. Returns what happened."""
        key = ((u["server_id"], u["epoch"]), u["seq"])  # seq counts per leader term
        if self.last_update and self.last_update[0] == key[0] and key[1] <= self.last_update[1]:
            return "stale"
        self.last_update = key
        self.master = (u["master_id"], u["master_time_us"])
        if u["master_id"] == self.id:
            return "i_am_master"
        cause = cause_of(u["stamp"])
        if u["algorithm"] == "naive":
            # The seed's rule: set the clock to the master's last reported time.
            self.correct(u["master_time_us"] - self.now_us(h), cause)
        else:
            # No probe estimate of our own, so master_ref_offset_us is no use to us: the
            # fallback of PROTOCOL.md §15.3, a min-delay filter on master time minus host time.
            pair = (u["server_id"], u["master_id"])
            if self.samples_for != pair:
                self.samples.clear()
                self.samples_for = pair
            self.samples.append(u["master_time_us"] - h)
            estimate = max(self.samples)
            self.correct(h + estimate - self.now_us(h), cause)
        self.updates_applied += 1
        return "applied"

    def on_poll(self, p, h):
        """The berkeley_reading answering a poll: the clock at the poll's arrival (§14.4)."""
        self.polls_answered += 1
        return {
            "type": "berkeley_reading",
            "v": PROTOCOL_VERSION,
            "id": str(self.id),
            "epoch": p["epoch"],
            "round": p["round"],
            "poll": p["poll"],
            "time_us": self.now_us(h),
            "ref_offset_us": None,  # no probe estimate
            "stamp": self.clocks.tick(self.pt()),
        }

    def on_adjust(self, a):
        if a["client_id"] != self.id:
            return "not_mine"
        term = (a["server_id"], a["epoch"])  # rounds count per leader term
        last = self.last_round
        if last and last[0] == term and a["round"] <= last[1]:
            return "stale"
        consecutive = last is not None and last[0] == term and a["round"] == last[1] + 1
        self.last_round = (term, a["round"])
        self.correct(a["adjust_us"], cause_of(a["stamp"]), may_sync=consecutive)
        self.adjusts_applied += 1
        return "applied"

    def on_set_time(self, s, h):
        if s["client_id"] != self.id:
            return "not_mine"
        if s["op_id"] in self.op_ids:
            return "already_applied"
        self.op_ids.append(s["op_id"])
        if len(self.op_ids) > OP_IDS_REMEMBERED:
            self.op_ids.popleft()
        change = s["change"]
        if "absolute" in change:
            delta = change["absolute"]["time_us"] - self.now_us(h)
        else:
            delta = change["shift"]["shift_us"]
        self.offset_us += delta
        # Not synced from now on (no hlc, max_step_us null), before the event is stamped: the
        # clock may now be far from everyone else's.
        self.synced = False
        self.record("clock_stepped", f"set by the operator: stepped by {delta} µs",
                    {"step_us": delta, "op_id": str(s["op_id"])}, cause_of(s["stamp"]))
        self.time_sets_applied += 1
        return "applied"

    def handle(self, body, h, log):
        """Everything §14.4 does with one delivery, but the broker calls: returns
        (accepted, reading) where `accepted` says whether to ack (else reject without requeue)
        and `reading` is a berkeley_reading to publish after the ack, or None."""
        try:
            m = open_to_client(body, self.keys.leader)
        except DecodeError as e:
            self.refuse(e.kind)
            log.log(f"rejected message: {e.kind} ({e})")
            return False, None
        if not self.fence(m["epoch"]):
            log.log(f"ignored a message of leader epoch {m['epoch']} (type {m['type']}, "
                    f"following {self.epoch})")
            return True, None
        self.clocks.observe(m["stamp"], self.pt(h))
        kind = m["type"]
        reading = None
        outcome = "ignored"
        if kind == "master_update":
            was_master = self.master is not None and self.master[0] == self.id
            outcome = self.on_update(m, h)
            if outcome == "applied":
                print(f"update seq={m['seq']} master={m['master_id']} "
                      f"algorithm={m['algorithm']} offset_us={self.offset_us}", file=sys.stderr)
            elif outcome == "i_am_master":
                if not was_master:
                    print(f"this client is the master (update seq={m['seq']}): it never "
                          f"corrects itself", file=sys.stderr)
                outcome = "applied"
        elif kind == "berkeley_poll" and self.berkeley:
            reading = self.on_poll(m, h)
            outcome = "applied"
        elif kind == "berkeley_adjust" and self.berkeley:
            outcome = self.on_adjust(m)
            if outcome == "applied":
                print(f"berkeley round={m['round']} adjust_us={m['adjust_us']} "
                      f"outlier={m['outlier']} offset_us={self.offset_us}", file=sys.stderr)
        elif kind == "set_time":
            outcome = self.on_set_time(m, h)
            if outcome == "applied":
                print(f"set_time op_id={m['op_id']} change={json.dumps(m['change'])} "
                      f"offset_us={self.offset_us}", file=sys.stderr)
        # else: a probe_reply (this client never probes), or Berkeley with --no-berkeley
        if outcome != "applied":
            self.ignored += 1
        return True, reading

    # --- what it sends -----------------------------------------------------------------------

    def sealed_report(self):
        """A sealed TimeReport, its clock read last, just before sealing (§14.2, §20)."""
        self.seq += 1
        events = list(self.events)[:EVENTS_PER_REPORT]
        report = {
            "v": PROTOCOL_VERSION,
            "id": str(self.id),
            "ip": self.ip,
            "time_us": None,  # filled last
            "seq": self.seq,
            "master_id": str(self.master[0]) if self.master else None,
            "master_time_us": self.master[1] if self.master else None,
            "true_offset_us": None,  # filled last
            # This client does not probe: no estimate of its offset to the reference.
            "ref_offset_us": None,
            "ref_freq_ppm": None,
            "max_step_us": self.max_step_us if self.synced else None,
            "ref_server_id": None,
            "epoch": self.epoch,
            "stale_epoch_msgs": self.stale_epoch_msgs,
            "rejected_msgs": self.rejected_msgs,
            "boot_us": self.boot_us,
            "stamp": self.clocks.tick(self.pt()),
        }
        while True:
            if events:
                report["events"] = events
            else:
                report.pop("events", None)
            h = host_us()
            report["time_us"] = self.now_us(h)
            report["true_offset_us"] = report["time_us"] - h
            body = self.keys.seal(encode(report))
            if len(body) <= MAX_MESSAGE_BYTES or not events:
                break
            events = events[:-1]  # keep the sealed report within 4096 bytes
        for _ in events:  # sent (a report that is lost takes its events with it)
            self.events.popleft()
        return body


def session(conn, client, deadline, log, reload_keys):
    import pika

    ch = conn.channel()
    # Shared topology: check only (the client user may not declare it, §2.2, §14.1). A missing
    # object closes the channel with 404 and ends the session before anything is published.
    ch.queue_declare(REPORTS_QUEUE, passive=True)
    ch.queue_declare(RPC_QUEUE, passive=True)
    ch.exchange_declare(UPDATES_EXCHANGE, exchange_type="fanout", passive=True)
    # One queue for everything addressed to this client: fanout updates, polls and set_time,
    # and the replies to its own requests (it is their reply_to).
    q = ch.queue_declare("", durable=False, exclusive=True, auto_delete=True).method.queue
    ch.queue_bind(q, UPDATES_EXCHANGE, routing_key="")
    report_properties = pika.BasicProperties(
        content_type="application/json", delivery_mode=1, expiration="2000")
    rpc_properties = pika.BasicProperties(
        content_type="application/json", delivery_mode=1, reply_to=q, expiration="1000")

    def on_message(channel, method, _props, body):
        h = host_us()  # arrival, before opening: anything later would count as transit
        accepted, reading = client.handle(body, h, log)
        if not accepted:
            channel.basic_reject(method.delivery_tag, requeue=False)
            return
        channel.basic_ack(method.delivery_tag)
        if reading is not None:
            channel.basic_publish("", RPC_QUEUE, client.keys.seal(encode(reading)),
                                  rpc_properties)

    ch.basic_consume(q, on_message, auto_ack=False)
    next_report = time.monotonic()
    while time.monotonic() < deadline:
        if time.monotonic() >= next_report:
            reload_keys()
            log.tick()
            # Built (the clock read) immediately before publishing: see PROTOCOL.md §20.
            ch.basic_publish("", REPORTS_QUEUE, client.sealed_report(), report_properties)
            next_report += REPORT_INTERVAL_S
            if next_report < time.monotonic():  # missed ticks are skipped, not bunched
                next_report = time.monotonic() + REPORT_INTERVAL_S
        wait = max(0.0, min(next_report, deadline) - time.monotonic())
        conn.process_data_events(time_limit=wait)
    ch.close()


def run(args):
    import pika

    url = args.amqp_url or os.environ.get("TS_AMQP_URL")
    if not url:
        sys.exit("no broker URL: set TS_AMQP_URL (or give --amqp-url)")
    if not url.startswith("amqp://"):
        sys.exit("the broker URL must start with amqp:// (PROTOCOL.md §4: no TLS)")
    if parse_ip(args.ip) is None:
        sys.exit(f"--ip: not an IP address: {args.ip!r}")
    if not 1000 <= args.hlc_max_offset_us <= 60_000_000:
        sys.exit("--hlc-max-offset-us must be from 1000 to 60000000")
    try:
        client_id = resolve_id(args.id, args.key_dir)
        keys = Keys(args.key_dir)
    except KeyFileError as e:
        sys.exit(f"cannot start: {e}")
    key_state = [key_files_state(args.key_dir)]
    client = Client(client_id, args.ip, keys, args.initial_offset_ms * 1000,
                    not args.no_berkeley, args.hlc_max_offset_us)
    print(f"client {client_id}: sealing with kid {keys.seal_kid}, leader keys "
          f"{sorted(keys.leader)}", file=sys.stderr)

    def reload_keys():
        state = key_files_state(args.key_dir)
        if state == key_state[0]:
            return
        key_state[0] = state
        try:
            client.keys = Keys(args.key_dir)
            print(f"keys reloaded: sealing with kid {client.keys.seal_kid}, leader keys "
                  f"{sorted(client.keys.leader)}", file=sys.stderr)
        except KeyFileError as e:
            print(f"warning: cannot reload keys ({e}); keeping the keys in hand", file=sys.stderr)

    log = RateLimitedLog()
    deadline = time.monotonic() + args.duration
    delay = 1.0
    while time.monotonic() < deadline:
        try:
            conn = pika.BlockingConnection(pika.URLParameters(url))
        except pika.exceptions.AMQPError as e:
            print(f"cannot connect ({e!r}), retrying in {delay:.0f}s", file=sys.stderr)
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay + 1.0, 5.0)
            continue
        delay = 1.0
        try:
            session(conn, client, deadline, log, reload_keys)
            conn.close()
        except pika.exceptions.AMQPError as e:
            print(f"broker session ended ({e!r}); reconnecting in 1s", file=sys.stderr)
            try:
                conn.close()
            except Exception:
                pass
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    print(json.dumps({
        "id": str(client.id),
        "updates_applied": client.updates_applied,
        "final_offset_us": client.offset_us,
        "master_id": str(client.master[0]) if client.master else None,
        "polls_answered": client.polls_answered,
        "berkeley_adjusts": client.adjusts_applied,
        "messages_rejected": client.rejected_msgs,
        "messages_ignored": client.ignored,
        "max_step_us": client.max_step_us if client.synced else None,
        "epoch": client.epoch,
        "stale_epoch_msgs": client.stale_epoch_msgs,
        "rejected_by_reason": client.rejected_by_reason,
        "time_sets_applied": client.time_sets_applied,
    }))


# ------------------------------------------------------------------------------------------
# Self-test: the test vectors of PROTOCOL.md §6.6 and every sealed example of the document

TEST_CLUSTER_SECRET = bytes.fromhex(
    "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
TEST_REPLICA_KEY = bytes.fromhex(
    "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f")
TEST_LEADER_SEED = bytes.fromhex(
    "404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f")
TEST_LEADER_PUBLIC = bytes.fromhex(
    "2543b92ff1095511476adc8369db6ddc933665a11978dda1404ee1066ca9559d")
TEST_CLIENT_KEYS = {
    "5b0f7c9e-1d2a-4e8b-9f3c-6a7d8e9f0a1b":
        "b69f8c63465ccfeddd66d7b0af1d747768688c17a81bc11309917c7553bc5052",
    "7f565e2b-d40f-42ac-8c89-f88709a5ccd8":
        "d3775785bccc5a2cbc57d0e0852ffbf0fa36c98077280110727a27f25a790aca",
    "0d3c1f8a-2b4e-4c6d-8e9f-1a2b3c4d5e6f":
        "6c855448df315974d8b90bb5605b772970d8963e0000b11a31227ce95fb86399",
}
TEST_KID_HASHES = {  # domain, key -> SHA-256 in full (§6.6)
    "cluster secret": (MAC_DOMAIN, TEST_CLUSTER_SECRET,
                       "b610eb16e3d3c02c2f61c06b9d201ef69b196a4b9f1a1a0cba8e82c0fbf653a2"),
    "replica key": (MAC_DOMAIN, TEST_REPLICA_KEY,
                    "c9297ae888b16bb685d86c0374613ff67d0dacdeadcad20bfb58e2649a3d9215"),
    "leader key": (LEADER_DOMAIN, TEST_LEADER_PUBLIC,
                   "669b67d7839f5ed59e6ef7db7d804c92a1a177f04f6da7bd2ceae2731c6141cd"),
}
# §6.6: the probe's message, signed bytes and tag; the probe_reply's signed bytes.
TEST_PROBE_MESSAGE = (
    b'{"type":"probe","v":6,"id":"5b0f7c9e-1d2a-4e8b-9f3c-6a7d8e9f0a1b","seq":1207,'
    b'"t1_us":1763777045123456,"stamp":{"lt":88}}')
TEST_PROBE_SIGNED = (
    b'{"type":"probe","v":6,"id":"5b0f7c9e-1d2a-4e8b-9f3c-6a7d8e9f0a1b","seq":1207,'
    b'"t1_us":1763777045123456,"stamp":{"lt":88},"kid":"b610eb16"}')
TEST_PROBE_TAG = "8bf17288e8c4d1fdb9599b795d3388542dda8f732fc827dd03204f36b1a09430"
TEST_REPLY_SIGNED = (
    b'{"type":"probe_reply","v":6,"server_id":"9a8b7c6d-5e4f-4a3b-2c1d-0e9f8a7b6c5d",'
    b'"epoch":4,"client_id":"5b0f7c9e-1d2a-4e8b-9f3c-6a7d8e9f0a1b","seq":1207,'
    b'"t1_us":1763777045123456,"t2_us":1763777045123506,"t3_us":1763777045123514,'
    b'"stamp":{"lt":4182,"hlc":{"us":1763777045123515,"c":0}},"kid":"669b67d7"}')

# Every sealed example of PROTOCOL.md, byte for byte (name, length, body).
DOC_EXAMPLES = [
    ('6.6 probe', 210,
     b'{"type":"probe","v":6,"id":"5b0f7c9e-1d2a-4e8b-9f3c-6a7d8e9f0a1b","seq":1207,"t1'
     b'_us":1763777045123456,"stamp":{"lt":88},"kid":"b610eb16","sig":"8bf17288e8c4d1fd'
     b'b9599b795d3388542dda8f732fc827dd03204f36b1a09430"}'
     ),
    ('6.6 probe_reply', 436,
     b'{"type":"probe_reply","v":6,"server_id":"9a8b7c6d-5e4f-4a3b-2c1d-0e9f8a7b6c5d","'
     b'epoch":4,"client_id":"5b0f7c9e-1d2a-4e8b-9f3c-6a7d8e9f0a1b","seq":1207,"t1_us":1'
     b'763777045123456,"t2_us":1763777045123506,"t3_us":1763777045123514,"stamp":{"lt":'
     b'4182,"hlc":{"us":1763777045123515,"c":0}},"kid":"669b67d7","sig":"b2e86c5f4c3357'
     b'476429e1e76975811e6dd58e630add08bf0e6544edca34204d25720fffbf30661b8b368260016315'
     b'5f80fff698f783ed625ab6be91991d5303"}'
     ),
    ('6.6/13.6 election', 223,
     b'{"type":"election","v":6,"from":1,"priority":0,"stamp":{"lt":611,"hlc":{"us":176'
     b'3776990512004,"c":0},"vc":{"1":233,"2":190,"3":187}},"kid":"c9297ae8","sig":"30d'
     b'966b5c1233647ad61ef538c50ff5d5a31c61a2b001233ef63786f0df7c697"}'
     ),
    ('9 report, synced follower', 629,
     b'{"v":6,"id":"5b0f7c9e-1d2a-4e8b-9f3c-6a7d8e9f0a1b","ip":"10.0.0.7","time_us":176'
     b'3777045123456,"seq":42,"master_id":"0d3c1f8a-2b4e-4c6d-8e9f-1a2b3c4d5e6f","maste'
     b'r_time_us":1763777044998870,"true_offset_us":-312,"ref_offset_us":2641,"ref_freq'
     b'_ppm":-0.8824675191726605,"max_step_us":0,"ref_server_id":"9a8b7c6d-5e4f-4a3b-2c'
     b'1d-0e9f8a7b6c5d","epoch":4,"stale_epoch_msgs":0,"rejected_msgs":0,"boot_us":1763'
     b'777003000000,"stamp":{"lt":57,"hlc":{"us":1763777045120815,"c":0}},"stratum":11,'
     b'"reference":"10.0.0.2","ref_error_us":21,"max_error_us":44,"kid":"b610eb16","sig'
     b'":"d3c50ba00f9f5f667da90de832c122d3917047a38e5b2797a15af32a3596fbb3"}'
     ),
    ('9 first report', 452,
     b'{"v":6,"id":"5b0f7c9e-1d2a-4e8b-9f3c-6a7d8e9f0a1b","ip":"10.0.0.7","time_us":176'
     b'3778845000000,"seq":1,"master_id":null,"master_time_us":null,"true_offset_us":18'
     b'00000000000,"ref_offset_us":null,"ref_freq_ppm":null,"max_step_us":null,"ref_ser'
     b'ver_id":null,"epoch":null,"stale_epoch_msgs":0,"rejected_msgs":0,"boot_us":17637'
     b'77044990000,"stamp":{"lt":1},"stratum":16,"kid":"b610eb16","sig":"1f70840d7b54bc'
     b'971e77790eb38a628c03f2aa792288952e92940a2906b8907e"}'
     ),
    ('9 report with an event', 850,
     b'{"v":6,"id":"5b0f7c9e-1d2a-4e8b-9f3c-6a7d8e9f0a1b","ip":"10.0.0.7","time_us":176'
     b'3776948000412,"seq":4,"master_id":"0d3c1f8a-2b4e-4c6d-8e9f-1a2b3c4d5e6f","master'
     b'_time_us":1763776947998003,"true_offset_us":-287,"ref_offset_us":2666,"ref_freq_'
     b'ppm":null,"max_step_us":0,"ref_server_id":"9a8b7c6d-5e4f-4a3b-2c1d-0e9f8a7b6c5d"'
     b',"epoch":4,"stale_epoch_msgs":0,"rejected_msgs":0,"boot_us":1763776945000000,"st'
     b'amp":{"lt":4136,"hlc":{"us":1763776947998021,"c":3}},"events":[{"kind":"clock_sy'
     b'nced","node":"client-5b0f7c9e-1d2a-4e8b-9f3c-6a7d8e9f0a1b","stamp":{"lt":4135,"h'
     b'lc":{"us":1763776947998021,"c":2}},"cause":{"lt":4133,"hlc":{"us":17637769479980'
     b'21,"c":0}},"text":"synced: within 412 \xc2\xb5s of the master","data":{"offset_us":412'
     b'}}],"stratum":11,"reference":"10.0.0.2","kid":"b610eb16","sig":"4ba24253749e5396'
     b'cdd551f9b300741356697f1ce07c268f971392b085d25251"}'
     ),
    ('9 report of a client that does not probe', 376,
     b'{"v":6,"id":"7f565e2b-d40f-42ac-8c89-f88709a5ccd8","ip":"10.0.0.9","time_us":176'
     b'3777045200000,"seq":7,"master_id":"0d3c1f8a-2b4e-4c6d-8e9f-1a2b3c4d5e6f","master'
     b'_time_us":1763777045002310,"true_offset_us":-1668,"epoch":5,"stale_epoch_msgs":3'
     b',"boot_us":1763777038000000,"stamp":{"lt":31},"kid":"b610eb16","sig":"c7825ed401'
     b'055177b69efaf2edb1ebe8b6d5a91ab87027b0c6717a7a33b4dd65"}'
     ),
    ('10.1 master_update (the master probes)', 589,
     b'{"type":"master_update","v":6,"server_id":"9a8b7c6d-5e4f-4a3b-2c1d-0e9f8a7b6c5d"'
     b',"epoch":4,"seq":318,"master_id":"0d3c1f8a-2b4e-4c6d-8e9f-1a2b3c4d5e6f","master_'
     b'ip":"10.0.0.2","master_time_us":1763777045002310,"server_time_us":17637770450000'
     b'00,"algorithm":"master","master_ref_offset_us":2650,"master_ref_freq_ppm":-0.882'
     b'4675191726605,"master_stratum":10,"master_ref_error_us":22,"stamp":{"lt":4211,"h'
     b'lc":{"us":1763777045000019,"c":0}},"kid":"669b67d7","sig":"d4463c5067a0bbd1a3d10'
     b'e0e5060e046340509a5fead2bacda5713f2eb1ebc977f24baee5e2f56dddea4a472f2ede67f1e92e'
     b'3fdd9ba2d09678c1ff91c608d00"}'
     ),
    ('10.1 master_update (no reference offsets)', 549,
     b'{"type":"master_update","v":6,"server_id":"9a8b7c6d-5e4f-4a3b-2c1d-0e9f8a7b6c5d"'
     b',"epoch":4,"seq":319,"master_id":"0d3c1f8a-2b4e-4c6d-8e9f-1a2b3c4d5e6f","master_'
     b'ip":"10.0.0.2","master_time_us":1763777046002287,"server_time_us":17637770460000'
     b'00,"algorithm":"master","master_ref_offset_us":null,"master_ref_freq_ppm":null,"'
     b'master_stratum":10,"stamp":{"lt":4236,"hlc":{"us":1763777046000017,"c":0}},"kid"'
     b':"669b67d7","sig":"8fdea258d129d875838c2f5c1e9b81ee047a40f9a1d2e97a8889023ebd826'
     b'7368d45b6857766a31cd9c2e62479c8b124b5634559cc51be7c2a13628de5683a01"}'
     ),
    ('10.1 master_update (naive)', 548,
     b'{"type":"master_update","v":6,"server_id":"9a8b7c6d-5e4f-4a3b-2c1d-0e9f8a7b6c5d"'
     b',"epoch":4,"seq":320,"master_id":"0d3c1f8a-2b4e-4c6d-8e9f-1a2b3c4d5e6f","master_'
     b'ip":"10.0.0.2","master_time_us":1763777046412871,"server_time_us":17637770470000'
     b'00,"algorithm":"naive","master_ref_offset_us":null,"master_ref_freq_ppm":null,"m'
     b'aster_stratum":10,"stamp":{"lt":4260,"hlc":{"us":1763777047000015,"c":0}},"kid":'
     b'"669b67d7","sig":"ac5f50062caa7e342942cc3e9856cc1d1d7ba6cb02a4eb9bcc74b1eb4be418'
     b'2cdd17fb7ea32849952f75734537b5859fb418d156093c12d25bcd0ec548f89508"}'
     ),
    ('10.1 smallest master_update', 417,
     b'{"type":"master_update","v":6,"server_id":"9a8b7c6d-5e4f-4a3b-2c1d-0e9f8a7b6c5d"'
     b',"epoch":4,"seq":321,"master_id":"0d3c1f8a-2b4e-4c6d-8e9f-1a2b3c4d5e6f","master_'
     b'ip":"10.0.0.2","master_time_us":1763777048002301,"server_time_us":17637770480000'
     b'00,"stamp":{"lt":4287},"kid":"669b67d7","sig":"c0be85a5645482c54b84863c34bcba9a9'
     b'2527b075a2f44a6ea3d26de20be5d9d03769dc5691ac2872db357046975a2cdc4cbce12fcfa7cdaa'
     b'33a8aee18eb170e"}'
     ),
    ('10.3 berkeley_poll', 321,
     b'{"type":"berkeley_poll","v":6,"server_id":"9a8b7c6d-5e4f-4a3b-2c1d-0e9f8a7b6c5d"'
     b',"epoch":4,"round":17,"poll":0,"stamp":{"lt":5120,"hlc":{"us":1763777045800102,"'
     b'c":0}},"kid":"669b67d7","sig":"b830a7e8cedd14a29304aab9c55041af344e8372c789c89ea'
     b'e9a632842af5875f70cc742c996a49d3b5da2a90d3a9d97dbad5e6d1eabb9fa2ad5cbcb288a510a"'
     b'}'
     ),
    ('10.4 berkeley_adjust', 397,
     b'{"type":"berkeley_adjust","v":6,"server_id":"9a8b7c6d-5e4f-4a3b-2c1d-0e9f8a7b6c5'
     b'd","epoch":4,"client_id":"5b0f7c9e-1d2a-4e8b-9f3c-6a7d8e9f0a1b","round":17,"adju'
     b'st_us":-48,"outlier":false,"stamp":{"lt":5163,"hlc":{"us":1763777046550377,"c":0'
     b'}},"kid":"669b67d7","sig":"99b585d5c8017f659f9d04aba07a8ee0021d52ca42c1c234a35e8'
     b'6744ef710ed2da3068ca9c0dd8a3f23298c59310383dc261b1ead3953cc56b04ef260da640e"}'
     ),
    ('10.5 set_time (absolute)', 445,
     b'{"type":"set_time","v":6,"server_id":"9a8b7c6d-5e4f-4a3b-2c1d-0e9f8a7b6c5d","epo'
     b'ch":4,"client_id":"5b0f7c9e-1d2a-4e8b-9f3c-6a7d8e9f0a1b","op_id":"c2a1f4de-93b7-'
     b'4b0e-8d6a-2f5e7c9b1a03","change":{"absolute":{"time_us":1763780645000000}},"stam'
     b'p":{"lt":5301,"hlc":{"us":1763777050000210,"c":0}},"kid":"669b67d7","sig":"b2ef1'
     b'6a2ea95197dfccf845517c3ef5815d9e55d9209779c991e4854d5ec750b4e2a8712e43f95bfd1421'
     b'f45e87c408d85603cc759cc937a11ae224ae316600a"}'
     ),
    ('10.5 set_time (shift)', 436,
     b'{"type":"set_time","v":6,"server_id":"9a8b7c6d-5e4f-4a3b-2c1d-0e9f8a7b6c5d","epo'
     b'ch":4,"client_id":"5b0f7c9e-1d2a-4e8b-9f3c-6a7d8e9f0a1b","op_id":"e7d3b2a1-6c5f-'
     b'4e8d-9b0a-1c2d3e4f5a6b","change":{"shift":{"shift_us":-30000000}},"stamp":{"lt":'
     b'5340,"hlc":{"us":1763777052000188,"c":1}},"kid":"669b67d7","sig":"bd0cce0b620971'
     b'29a46f319fb595385feb0ab31218c16b897b9e18056cc1abb771f7ef01530bcbf1c169353755e0ab'
     b'890512752120e812b5fd9f960882907500"}'
     ),
    ('11.1 probe (with hlc)', 246,
     b'{"type":"probe","v":6,"id":"5b0f7c9e-1d2a-4e8b-9f3c-6a7d8e9f0a1b","seq":1207,"t1'
     b'_us":1763777045123456,"stamp":{"lt":88,"hlc":{"us":1763777045120815,"c":0}},"kid'
     b'":"b610eb16","sig":"6faabcd09154ab2c85e9b35e706dd86ab68e70f22c7d7dc732fc94cfa310'
     b'22d9"}'
     ),
    ('11.2 berkeley_reading (with ref_offset_us)', 301,
     b'{"type":"berkeley_reading","v":6,"id":"5b0f7c9e-1d2a-4e8b-9f3c-6a7d8e9f0a1b","ep'
     b'och":4,"round":17,"poll":0,"time_us":1763777045801234,"ref_offset_us":-131,"stam'
     b'p":{"lt":5122,"hlc":{"us":1763777045801365,"c":0}},"kid":"b610eb16","sig":"2067b'
     b'47689e5526195345dbaebb7f1ea065e8a83110c53241398cca2cad5cff7"}'
     ),
    ('11.2 berkeley_reading (without)', 242,
     b'{"type":"berkeley_reading","v":6,"id":"7f565e2b-d40f-42ac-8c89-f88709a5ccd8","ep'
     b'och":4,"round":17,"poll":3,"time_us":1763777045950771,"stamp":{"lt":44},"kid":"b'
     b'610eb16","sig":"cc02b7ace29a10eb62a349bde49c0e4222fb8bede7f3a2406c09e86bd1e648e4'
     b'"}'
     ),
    ('13.6 answer', 221,
     b'{"type":"answer","v":6,"from":3,"priority":0,"stamp":{"lt":613,"hlc":{"us":17637'
     b'76990512771,"c":0},"vc":{"1":233,"2":190,"3":189}},"kid":"c9297ae8","sig":"ab5cc'
     b'98f9e2c237980d2e09f404c72d27ecb02290efdc3155b93570f8b6da49d"}'
     ),
    ('13.6 coordinator', 236,
     b'{"type":"coordinator","v":6,"from":3,"priority":0,"epoch":7,"stamp":{"lt":614,"h'
     b'lc":{"us":1763776990512790,"c":0},"vc":{"1":233,"2":190,"3":190}},"kid":"c9297ae'
     b'8","sig":"cc8b4d901abedbbc7b5b049b66ef6bffb73ae8ce7480de9c7ca1dd29fd4f9912"}'
     ),
    ('13.6 heartbeat (leader)', 261,
     b'{"type":"heartbeat","v":6,"from":3,"priority":0,"role":"leader","epoch":7,"leade'
     b'r":3,"stamp":{"lt":702,"hlc":{"us":1763776991520331,"c":0},"vc":{"1":240,"2":196'
     b',"3":214}},"kid":"c9297ae8","sig":"3541ece6495a812ab4b138028d3e20216da72335186d8'
     b'ecd5b838cee3598eca0"}'
     ),
    ('13.6 heartbeat (follower)', 263,
     b'{"type":"heartbeat","v":6,"from":1,"priority":0,"role":"follower","epoch":7,"lea'
     b'der":3,"stamp":{"lt":705,"hlc":{"us":1763776991540118,"c":0},"vc":{"1":246,"2":1'
     b'96,"3":214}},"kid":"c9297ae8","sig":"dac86fe9627d7f7c638c70e160d5d7d6a0fd2a98f94'
     b'5ee47dc3d50b7f94f84de"}'
     ),
    ('13.6 resign', 222,
     b'{"type":"resign","v":6,"from":3,"epoch":7,"stamp":{"lt":9120,"hlc":{"us":1763777'
     b'200004511,"c":0},"vc":{"1":3010,"2":2987,"3":3122}},"kid":"c9297ae8","sig":"35e2'
     b'e8cbc93e76cd17a8a60a4096d32c0f59be3a1bdb99bf0c0d59d4f05a050f"}'
     ),
]


def self_test():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    results = []

    def check(name, ok, detail=""):
        results.append(bool(ok))
        print(f"{'ok  ' if ok else 'FAIL'} {name}{'' if ok or not detail else ': ' + detail}")

    def reason(f):
        try:
            f()
        except DecodeError as e:
            return e.kind
        return "opened"

    # §6.2, §6.3: kids, the leader public key, client keys.
    for name, (domain, key, full) in TEST_KID_HASHES.items():
        digest = hashlib.sha256(domain + key).hexdigest()
        check(f"§6.6 kid of the {name}: {full[:8]}", digest == full and kid_of(domain, key) ==
              full[:8], digest)
    signer = Ed25519PrivateKey.from_private_bytes(TEST_LEADER_SEED)
    public = signer.public_key().public_bytes(serialization.Encoding.Raw,
                                              serialization.PublicFormat.Raw)
    check("§6.6 leader public key from its seed", public == TEST_LEADER_PUBLIC, public.hex())
    check("§6.3 \"time-sync client key\" is 74696d652d…6b6579",
          CLIENT_KEY_DOMAIN.hex() == "74696d652d73796e6320636c69656e74206b6579")
    for cid, key in TEST_CLIENT_KEYS.items():
        got = derive_client_key(TEST_CLUSTER_SECRET, uuid.UUID(cid)).hex()
        check(f"§6.6 client key of {cid[:8]}…", got == key, got)
    # The other spellings of one id derive the same key (§5, §6.3).
    check("§6.3 a client key derives from the UUID's bytes, not its text",
          derive_client_key(TEST_CLUSTER_SECRET, parse_uuid(
              "{5B0F7C9E-1D2A-4E8B-9F3C-6A7D8E9F0A1B}")).hex() ==
          TEST_CLIENT_KEYS["5b0f7c9e-1d2a-4e8b-9f3c-6a7d8e9f0a1b"])

    # §6.6 worked example: the probe, step by step, sealed by this client's sealing code.
    probe_key = bytes.fromhex(TEST_CLIENT_KEYS["5b0f7c9e-1d2a-4e8b-9f3c-6a7d8e9f0a1b"])
    check("§6.6 probe: signed bytes", TEST_PROBE_MESSAGE[:-1] + b',"kid":"b610eb16"}' ==
          TEST_PROBE_SIGNED)
    check("§6.6 probe: HMAC-SHA256 tag", hmac_tag(probe_key, TEST_PROBE_SIGNED).hex() ==
          TEST_PROBE_TAG)
    body = DOC_EXAMPLES[0][2]
    sealed = seal(TEST_PROBE_MESSAGE, "b610eb16", lambda s: hmac_tag(probe_key, s))
    check("§6.6 probe: sealed body (210 bytes)", sealed == body and len(sealed) == 210)
    check("§6.6 probe: unseal", unseal(body) == (TEST_PROBE_MESSAGE, "b610eb16",
                                                 TEST_PROBE_SIGNED, bytes.fromhex(TEST_PROBE_TAG)))
    reply = DOC_EXAMPLES[1][2]
    parts = unseal(reply)
    check("§6.6 probe_reply: signed bytes", parts is not None and parts[2] == TEST_REPLY_SIGNED)
    sealed = seal(parts[0], "669b67d7", signer.sign)
    check("§6.6 probe_reply: signed with the leader seed, sealed body (436 bytes)",
          sealed == reply and len(sealed) == 436)

    # Every sealed example: sealing its message again with the right key gives the same bytes,
    # and it opens (and decodes) as its receiver would open it.
    leader_keys = {"669b67d7": LeaderKey(TEST_LEADER_PUBLIC)}
    secrets = {"b610eb16": TEST_CLUSTER_SECRET}
    for name, length, body in DOC_EXAMPLES:
        parts = unseal(body)
        if parts is None or len(body) != length:
            check(f"{name}: seal shape", False, "no seal")
            continue
        message, kid, signed, sig = parts
        if kid == "669b67d7":
            again = seal(message, kid, signer.sign)
            opened = reason(lambda: open_to_client(body, leader_keys))
        elif kid == "b610eb16":
            cid = json.loads(message)["id"]
            key = bytes.fromhex(TEST_CLIENT_KEYS[cid])
            again = seal(message, kid, lambda s: hmac_tag(key, s))
            is_report = b'"type"' not in message
            opened = reason(lambda: open_from_client(body, secrets, is_report))
        else:  # control messages: the replica key (this client has no decoder for them)
            again = seal(message, kid, lambda s: hmac_tag(TEST_REPLICA_KEY, s))
            opened = "opened" if hmac_ok(TEST_REPLICA_KEY, signed, sig) else "bad_signature"
        check(f"§{name}: seal reproduced and opened", again == body and opened == "opened",
              f"reproduced={again == body} open={opened}")

    # The examples above are the document's, all of them: every sealed line of PROTOCOL.md.
    doc = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "PROTOCOL.md")
    if os.path.exists(doc):
        with open(doc, "rb") as f:
            lines = {line.strip() for line in f if line.startswith(b"{") and b'"sig":"' in line}
        ours = {body for _, _, body in DOC_EXAMPLES}
        check(f"every sealed line of PROTOCOL.md is an example here ({len(lines)})",
              lines == ours, f"{len(lines - ours)} only in the document, "
              f"{len(ours - lines)} only here")

    # §6.5: the order of checks and the reasons, on the client's side.
    def opens(b):
        return reason(lambda: open_to_client(b, leader_keys))

    def signed_body(message):
        return seal(message, "669b67d7", signer.sign)

    update = DOC_EXAMPLES[7][2]
    message = unseal(update)[0]
    flipped = update[:-10] + (b"0" if update[-10:-9] != b"0" else b"1") + update[-9:]
    cases = [
        ("a tampered signature", flipped, "bad_signature"),
        ("a tampered message", update.replace(b'"seq":318', b'"seq":319'), "bad_signature"),
        ("a signature in upper case", update[:-130] + update[-130:].upper(), "malformed"),
        ("a trailing newline", update + b"\n", "malformed"),
        ("a space after the kid's colon", update.replace(b'"kid":"', b'"kid": "'), "malformed"),
        ("an unknown kid", update.replace(b'"kid":"669b67d7"', b'"kid":"00000000"'),
         "unknown_key"),
        ("a version-5 message without a seal", message, "unsigned"),
        ("an unsealed version-3 message", message.replace(b'"v":6', b'"v":3'), "bad_version"),
        ("a sealed version-4 message", signed_body(message.replace(b'"v":6', b'"v":4')),
         "bad_version"),
        ("v as a float", signed_body(message.replace(b'"v":6', b'"v":6.0')), "malformed"),
        ("v as a boolean", signed_body(message.replace(b'"v":6', b'"v":true')), "malformed"),
        ("a body over 4096 bytes", update[:-1] + b" " * 4096 + b"}", "too_large"),
        ("a byte-order mark", b"\xef\xbb\xbf" + update, "malformed"),
        ("not JSON", b"garbage", "malformed"),
        ("an unknown field", signed_body(message[:-1] + b',"x":1}'), "malformed"),
        ("a duplicated field", signed_body(message[:-1] + b',"seq":318}'), "malformed"),
        ("a type of the other direction", signed_body(message.replace(
            b'"type":"master_update"', b'"type":"probe"')), "malformed"),
        ("an epoch above 2^53", signed_body(message.replace(
            b'"epoch":4', b'"epoch":9007199254740993')), "malformed"),
        ("a time as a float", signed_body(message.replace(
            b'"server_time_us":1763777045000000', b'"server_time_us":1.763777045e15')),
         "malformed"),
        ("a null algorithm", signed_body(message.replace(b'"algorithm":"master"',
                                                         b'"algorithm":null')), "malformed"),
        ("NaN as a rate", signed_body(message.replace(
            b'-0.8824675191726605', b'NaN')), "malformed"),
        ("an IP with a zone", signed_body(message.replace(b'"10.0.0.2"', b'"fe80::1%eth0"')),
         "malformed"),
        ("an IP with a leading zero", signed_body(message.replace(b'"10.0.0.2"',
                                                                  b'"10.0.0.02"')), "malformed"),
        ("an unknown stamp field", signed_body(message.replace(b'"stamp":{"lt":4211,',
                                                               b'"stamp":{"lt":4211,"x":1,')),
         "malformed"),
    ]
    set_time = unseal(DOC_EXAMPLES[14][2])[0]
    for change in (b'{}', b'{"absolute":{"time_us":1},"shift":{"shift_us":1}}',
                   b'{"shift":{"shift_us":1,"x":2}}', b'{"type":"shift","shift_us":1}'):
        cases.append((f"set_time change {change.decode()}", signed_body(set_time.replace(
            b'{"shift":{"shift_us":-30000000}}', change)), "malformed"))
    # Strict Ed25519 (§6.3): S + l is the same signature in a non-canonical form.
    sig = bytes.fromhex(unseal(update)[3].hex())
    s_plus_l = int.from_bytes(sig[32:], "little") + ED_L
    cases.append(("a non-canonical S", unseal(update)[2][:-1] + b',"sig":"' + (
        sig[:32] + s_plus_l.to_bytes(32, "little")).hex().encode() + b'"}', "bad_signature"))
    for name, b, expected in cases:
        got = opens(b)
        check(f"§6.5 {name}: {expected}", got == expected, f"got {got}")
    check("§6.3 every y of SMALL_ORDER_Y is that of a point of small order; no example's R has one",
          all(ed25519_small_order((y | sign << 255).to_bytes(32, "little")) in (True, None)
              for y in SMALL_ORDER_Y for sign in (0, 1)) and
          all(ed25519_small_order(unseal(b)[3][:32]) is False and
              int.from_bytes(unseal(b)[3][:32], "little") & _Y_MASK not in SMALL_ORDER_Y
              for _, _, b in DOC_EXAMPLES if b'"kid":"669b67d7"' in b))
    identity = (1).to_bytes(32, "little")
    check("§6.3 small-order detection (the identity is, the test leader key is not)",
          ed25519_small_order(identity) is True and
          ed25519_small_order(TEST_LEADER_PUBLIC) is False)
    weak = LeaderKey(identity)  # R = identity, S = 0 verifies cofactorless under A = identity
    check("§6.3 a signature under a small-order public key is refused",
          not weak.verify(identity + bytes(32), b"anything"))

    # What this client builds opens as a server opens it (§6.4, §9, §11.2).
    cid = uuid.UUID("5b0f7c9e-1d2a-4e8b-9f3c-6a7d8e9f0a1b")
    keys = Keys.__new__(Keys)
    keys.seal_kid, keys.seal_key, keys.leader = "b610eb16", probe_key, leader_keys
    client = Client(cid, "10.0.0.7", keys, 500_000_000)
    log = RateLimitedLog()
    print_to = sys.stderr
    sys.stderr = open(os.devnull, "w")
    try:
        first = client.sealed_report()
        outcomes = [client.handle(b, host_us(), log) for _, _, b in DOC_EXAMPLES[7:15]]
        second = client.sealed_report()
        fenced = client.handle(signed_body(message.replace(b'"epoch":4', b'"epoch":3')),
                               host_us(), log)
        jump = client.handle(signed_body(message.replace(b'"epoch":4', b'"epoch":1000005')),
                             host_us(), log)
        rejected = client.handle(flipped, host_us(), log)
        replayed = client.handle(DOC_EXAMPLES[14][2], host_us(), log)
    finally:
        sys.stderr.close()
        sys.stderr = print_to
    r2 = None
    try:
        r1 = open_from_client(first, secrets, True)
        r2 = open_from_client(second, secrets, True)
        ok = r1["seq"] == 1 and r2["seq"] == 2 and r1["boot_us"] == r2["boot_us"]
        check("this client's reports open as a server opens them", ok)
    except DecodeError as e:
        check("this client's reports open as a server opens them", False, str(e))
    reading = outcomes[4][1]  # the berkeley_poll
    try:
        got = open_from_client(keys.seal(encode(reading)), secrets, False)
        check("this client's berkeley_reading opens as the reference opens it",
              got["type"] == "berkeley_reading" and got["round"] == 17 and got["epoch"] == 4)
    except (DecodeError, TypeError) as e:
        check("this client's berkeley_reading opens as the reference opens it", False, str(e))
    check("the document's messages to this client are accepted and acted on (both "
          "set_time, the berkeley_adjust)", all(a for a, _ in outcomes) and
          client.time_sets_applied == 2 and client.adjusts_applied == 1 and client.epoch == 4
          and client.updates_applied == 4, str(outcomes))
    check("a set_time whose op_id was applied is acknowledged and not applied again",
          replayed == (True, None) and client.time_sets_applied == 2)
    check("fencing: a lower epoch and a jump of more than 1 000 000 are acknowledged, ignored, "
          "counted", fenced == (True, None) and jump == (True, None) and
          client.stale_epoch_msgs == 2 and client.epoch == 4)
    check("a message that does not open is rejected and counted by reason",
          rejected == (False, None) and client.rejected_by_reason == {"bad_signature": 1})
    kinds = [e["kind"] for e in (r2 or {}).get("events") or []]
    check("the next report carries the events recorded (clock_stepped for each set_time)",
          kinds.count("clock_stepped") == 2, str(kinds))

    failed = results.count(False)
    if failed:
        print(f"self-test FAILED: {failed} of {len(results)} checks failed")
        return 1
    print(f"self-test passed: {len(results)} checks, every sealed example of PROTOCOL.md "
          f"({len(DOC_EXAMPLES)}) reproduced and opened")
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--amqp-url", default=None,
                   help="broker URL (default: $TS_AMQP_URL; prefer the variable, it holds a "
                        "password)")
    p.add_argument("--ip", help="address to advertise (master election); required")
    p.add_argument("--key-dir", default=os.environ.get("TS_KEY_DIR", "/etc/time-sync/keys"),
                   help="key directory: leader.pub, client.key, client.id (default: "
                        "$TS_KEY_DIR or /etc/time-sync/keys)")
    p.add_argument("--id", default=os.environ.get("TS_CLIENT_ID"),
                   help="client id (default: $TS_CLIENT_ID, else <key dir>/client.id; must be "
                        "the id the key was made for)")
    p.add_argument("--initial-offset-ms", type=int, default=0)
    p.add_argument("--duration", type=float, default=10.0, help="seconds to run")
    p.add_argument("--no-berkeley", action="store_true",
                   help="ignore berkeley_poll and berkeley_adjust instead of taking part")
    p.add_argument("--hlc-max-offset-us", type=int, default=100_000)
    p.add_argument("--self-test", action="store_true",
                   help="check the sealing and opening code against PROTOCOL.md's test vectors "
                        "and sealed examples, then exit 0 (passed) or 1")
    args = p.parse_args()
    if args.self_test:
        sys.exit(self_test())
    if not args.ip:
        p.error("--ip is required")
    run(args)


if __name__ == "__main__":
    main()
