#!/usr/bin/env python3
"""A minimal time-sync client in Python, written from docs/PROTOCOL.md alone.

It exists to prove that the protocol document is enough to write a compatible client without
reading the Rust code. It takes part in a cluster like `ts-client` does: it reports its virtual
clock every second, can be elected master, and follows the master's updates.

What it keeps from the reference client, and what it leaves out on purpose:

* The clock is virtual: host realtime clock + an offset (no simulated drift).
* Updates go through the same min-delay filter (last 8 samples of master_time_us minus host
  receive time, estimate = maximum), because that is a few lines and is what makes the
  follower's error a few hundred microseconds instead of the worst transit delay.
* Correction is simpler than `ts-client`: an offset above the 128 ms step threshold is stepped,
  and a smaller one is *also* applied at once (the offset is just set) instead of being slewed
  at 500 ppm. So this clock can jump by up to 128 ms and can run backwards; that is fine for a
  demonstration, not for a clock anyone reads.
* Reconnects after a broker failure with growing delays (1 s .. 5 s), re-declaring everything.

Usage:
    pip install pika
    python3 examples/python_client.py --amqp-url amqp://guest:guest@127.0.0.1:5672/%2f \
        --ip 127.0.0.9 --initial-offset-ms 500000 --duration 15

At exit it prints one JSON line:
    {"id": ..., "updates_applied": N, "final_offset_us": ..., "master_id": ...}
"""

import argparse
import json
import sys
import time
import uuid
from collections import deque

import pika

PROTOCOL_VERSION = 1
REPORTS_QUEUE = "ts.reports"
UPDATES_EXCHANGE = "ts.master_updates"
MAX_MESSAGE_BYTES = 4096
REPORT_INTERVAL_S = 1.0
STEP_THRESHOLD_US = 128_000
FILTER_WINDOW = 8
UPDATE_FIELDS = {
    "v", "server_id", "seq", "master_id", "master_ip", "master_time_us", "server_time_us",
}
# expiration: two report intervals (PROTOCOL.md §3), so a report never outlives the next one.
PROPERTIES = pika.BasicProperties(
    content_type="application/json", delivery_mode=1, expiration="2000"
)


def host_us():
    """The host's realtime clock in integer microseconds since the Unix epoch."""
    return time.time_ns() // 1000


def is_int(x):
    # JSON true/false arrive as Python bools, which are ints; the protocol wants real integers.
    return isinstance(x, int) and not isinstance(x, bool)


class DecodeError(Exception):
    def __init__(self, kind, detail):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


def decode_update(body):
    """Decodes a MasterUpdate in the documented order: size, then `v`, then the schema."""
    if len(body) > MAX_MESSAGE_BYTES:
        raise DecodeError("too_large", f"{len(body)} bytes")
    try:
        msg = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise DecodeError("malformed", str(e))
    if not isinstance(msg, dict):
        raise DecodeError("malformed", "not a JSON object")
    v = msg.get("v")
    if not is_int(v) or v < 0:
        raise DecodeError("malformed", "missing or non-integer field `v`")
    if v != PROTOCOL_VERSION:
        raise DecodeError("bad_version", f"v={v}")
    if set(msg) != UPDATE_FIELDS:
        raise DecodeError("malformed", f"fields {sorted(msg)}")
    try:
        server_id = uuid.UUID(msg["server_id"])
        master_id = uuid.UUID(msg["master_id"])
    except (TypeError, ValueError, AttributeError) as e:
        raise DecodeError("malformed", f"bad uuid: {e}")
    for f in ("seq", "master_time_us", "server_time_us"):
        if not is_int(msg[f]):
            raise DecodeError("malformed", f"{f} is not an integer")
    if msg["seq"] < 0 or not isinstance(msg["master_ip"], str):
        raise DecodeError("malformed", "bad seq or master_ip")
    msg["server_id"], msg["master_id"] = server_id, master_id
    return msg


class Client:
    def __init__(self, args):
        self.id = args.id
        self.ip = args.ip
        self.offset_us = args.initial_offset_ms * 1000  # virtual clock = host clock + offset
        self.seq = 0
        self.last_update = None  # (server_id, seq) of the last accepted update
        self.master = None  # (master_id, master_time_us) of the last accepted update
        self.samples = deque(maxlen=FILTER_WINDOW)  # master clock minus host clock
        self.samples_for = None  # (server_id, master_id) the samples belong to
        self.updates_applied = 0
        self.updates_rejected = 0
        self.steps = 0

    def now_us(self, h=None):
        return (host_us() if h is None else h) + self.offset_us

    def report(self):
        self.seq += 1
        h = host_us()
        t = self.now_us(h)
        return {
            "v": PROTOCOL_VERSION,
            "id": str(self.id),
            "ip": self.ip,
            "time_us": t,
            "seq": self.seq,
            "master_id": str(self.master[0]) if self.master else None,
            "master_time_us": self.master[1] if self.master else None,
            "true_offset_us": t - h,
        }

    def on_update(self, u, h):
        """Applies a decoded update received at host time `h`. Returns what happened."""
        key = (u["server_id"], u["seq"])
        if self.last_update and self.last_update[0] == key[0] and key[1] <= self.last_update[1]:
            return "stale"
        self.last_update = key
        self.master = (u["master_id"], u["master_time_us"])
        if u["master_id"] == self.id:
            return "i_am_master"
        pair = (u["server_id"], u["master_id"])
        if self.samples_for != pair:
            self.samples.clear()
            self.samples_for = pair
        self.samples.append(u["master_time_us"] - h)
        estimate = max(self.samples)
        offset = h + estimate - self.now_us(h)
        # Simplification (see the module doc): step above the threshold, and below it set the
        # offset directly as well instead of slewing.
        if abs(offset) > STEP_THRESHOLD_US:
            self.steps += 1
        self.offset_us += offset
        self.updates_applied += 1
        return "applied"


def session(conn, client, deadline):
    ch = conn.channel()
    ch.queue_declare(REPORTS_QUEUE, durable=True, exclusive=False, auto_delete=False)
    ch.exchange_declare(UPDATES_EXCHANGE, exchange_type="fanout", durable=True,
                        auto_delete=False, internal=False)
    q = ch.queue_declare("", durable=False, exclusive=True, auto_delete=True).method.queue
    ch.queue_bind(q, UPDATES_EXCHANGE, routing_key="")

    def on_message(channel, method, _props, body):
        h = host_us()
        try:
            u = decode_update(body)
        except DecodeError as e:
            client.updates_rejected += 1
            print(f"rejected update: {e}", file=sys.stderr)
            channel.basic_reject(method.delivery_tag, requeue=False)
            return
        outcome = client.on_update(u, h)
        if outcome == "applied":
            print(f"update seq={u['seq']} master={u['master_id']} "
                  f"offset_us={client.offset_us}", file=sys.stderr)
        channel.basic_ack(method.delivery_tag)

    ch.basic_consume(q, on_message, auto_ack=False)
    next_report = time.monotonic()
    while time.monotonic() < deadline:
        if time.monotonic() >= next_report:
            # Build (read the clock) immediately before publishing: see PROTOCOL.md §14.
            body = json.dumps(client.report(), separators=(",", ":")).encode()
            ch.basic_publish("", REPORTS_QUEUE, body, PROPERTIES)
            next_report += REPORT_INTERVAL_S
            if next_report < time.monotonic():  # missed ticks are skipped, not bunched
                next_report = time.monotonic() + REPORT_INTERVAL_S
        wait = max(0.0, min(next_report, deadline) - time.monotonic())
        conn.process_data_events(time_limit=wait)
    ch.close()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/%2f")
    p.add_argument("--ip", required=True, help="address to advertise (master election)")
    p.add_argument("--id", type=uuid.UUID, default=None, help="client id (default: uuid4)")
    p.add_argument("--initial-offset-ms", type=int, default=0)
    p.add_argument("--duration", type=float, default=10.0, help="seconds to run")
    args = p.parse_args()
    args.id = args.id or uuid.uuid4()
    client = Client(args)
    deadline = time.monotonic() + args.duration
    delay = 1.0
    while time.monotonic() < deadline:
        try:
            conn = pika.BlockingConnection(pika.URLParameters(args.amqp_url))
        except pika.exceptions.AMQPError as e:
            print(f"cannot connect ({e!r}), retrying in {delay:.0f}s", file=sys.stderr)
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay + 1.0, 5.0)
            continue
        delay = 1.0
        try:
            session(conn, client, deadline)
            conn.close()
        except pika.exceptions.AMQPError as e:
            print(f"broker session ended ({e!r}); reconnecting", file=sys.stderr)
            try:
                conn.close()
            except Exception:
                pass
    print(json.dumps({
        "id": str(client.id),
        "updates_applied": client.updates_applied,
        "final_offset_us": client.offset_us,
        "master_id": str(client.master[0]) if client.master else None,
    }))


if __name__ == "__main__":
    main()
