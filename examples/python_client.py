#!/usr/bin/env python3
"""A minimal time-sync client in Python (protocol v3), written from docs/PROTOCOL.md alone.

It exists to prove that the protocol document is enough to write a compatible client without
reading the Rust code. It takes part in a cluster like `ts-client` does: it reports its virtual
clock every second, can be elected master, follows the master's updates, and takes part in
Berkeley rounds.

What it keeps from the reference client, and what it leaves out on purpose:

* The clock is virtual: host realtime clock + an offset (no simulated drift).
* It does **not probe** (PROTOCOL.md §10.3, §16): it never sends `probe` messages, so it has no
  estimate of its offset to the server's reference clock. Its reports carry no `ref_offset_us`
  or `ref_freq_ppm` (`null`), and it follows a `master_update` the way every v1 client did, and
  the way `ts-client` does when it has no estimate: through the min-delay filter (last 8
  samples of master_time_us minus host receive time, estimate = maximum). That is a few lines,
  and it makes the follower's error about one transit (1-2 ms) rather than the worst one.
  Updates of algorithm `naive` are applied as the document says: the clock is set to
  `master_time_us`, unfiltered.
* It answers `berkeley_poll` with a `berkeley_reading` without `ref_offset_us` (so the
  coordinator uses the poll's round trip) and applies `berkeley_adjust` by adding `adjust_us` to
  its offset. It learns no frequency (its clock does not drift).
* `probe_reply` messages are acknowledged and ignored (it sends no probes, so none should come).
* Epoch fencing (PROTOCOL.md §9.8, §10.4), exactly as `ts-client`: every message carries the
  epoch of the server replica that led when it was sent. A message from a lower epoch than the
  one followed is acknowledged and ignored (and counted) unless the followed epoch has been
  silent for 30 s; any other message makes its epoch the followed one. Reports carry the
  followed `epoch` and the count, `stale_epoch_msgs`; Berkeley readings echo the poll's epoch.
* Correction is simpler than `ts-client`: every correction is applied at once (the offset is
  just set), above and below the 128 ms step threshold, instead of being slewed at 500 ppm. So
  this clock can jump and can run backwards; that is fine for a demonstration, not for a clock
  anyone reads. `max_step_us` in its reports says how large those jumps were after it first
  came within 1 ms of its target.
* Reconnects after a broker failure with growing delays (1 s .. 5 s), re-declaring everything.

Usage:
    pip install pika
    python3 examples/python_client.py --amqp-url amqp://guest:guest@127.0.0.1:5672/%2f \
        --ip 127.0.0.9 --initial-offset-ms 500000 --duration 15

At exit it prints one JSON line:
    {"id": ..., "updates_applied": N, "final_offset_us": ..., "master_id": ..., ...}
"""

import argparse
import json
import sys
import time
import uuid
from collections import deque

import pika

PROTOCOL_VERSION = 3
REPORTS_QUEUE = "ts.reports"
UPDATES_EXCHANGE = "ts.master_updates"
RPC_QUEUE = "ts.rpc"
MAX_MESSAGE_BYTES = 4096
REPORT_INTERVAL_S = 1.0
STEP_THRESHOLD_US = 128_000
SYNCED_US = 1000  # within this of the target once = synced (max_step_us counts from then on)
FILTER_WINDOW = 8
EPOCH_LEASE_US = 30_000_000  # a lower epoch is refused until the followed one is silent this long
ALGORITHMS = ("master", "naive", "berkeley")

# Schemas of the messages a client receives (PROTOCOL.md §4, §6): field -> (kind, required).
# "v" and "type" are checked separately. Unknown fields are rejected.
TO_CLIENT = {
    "master_update": {
        "server_id": ("uuid", True),
        "epoch": ("uint", True),
        "seq": ("uint", True),
        "master_id": ("uuid", True),
        "master_ip": ("str", True),
        "master_time_us": ("int", True),
        "server_time_us": ("int", True),
        "algorithm": ("algorithm", False),  # absent = "master"; null is not allowed
        "master_ref_offset_us": ("int?", False),
        "master_ref_freq_ppm": ("number?", False),
    },
    "probe_reply": {
        "server_id": ("uuid", True),
        "epoch": ("uint", True),
        "seq": ("uint", True),
        "t1_us": ("int", True),
        "t2_us": ("int", True),
        "t3_us": ("int", True),
    },
    "berkeley_poll": {
        "server_id": ("uuid", True),
        "epoch": ("uint", True),
        "round": ("uint", True),
        "poll": ("uint", True),
    },
    "berkeley_adjust": {
        "server_id": ("uuid", True),
        "epoch": ("uint", True),
        "round": ("uint", True),
        "adjust_us": ("int", True),
        "outlier": ("bool", True),
    },
}

# Reports: two report intervals (PROTOCOL.md §3), so a report never outlives the next one.
REPORT_PROPERTIES = pika.BasicProperties(
    content_type="application/json", delivery_mode=1, expiration="2000"
)


def host_us():
    """The host's realtime clock in integer microseconds since the Unix epoch."""
    return time.time_ns() // 1000


def is_int(x):
    # JSON true/false arrive as Python bools, which are ints; the protocol wants real integers.
    return isinstance(x, int) and not isinstance(x, bool)


def encode(msg):
    return json.dumps(msg, separators=(",", ":")).encode()


class DecodeError(Exception):
    def __init__(self, kind, detail):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


def check_field(name, kind, value):
    """Returns the decoded value of one field, or raises DecodeError("malformed")."""
    if kind.endswith("?"):
        if value is None:
            return None
        kind = kind[:-1]
    ok = {
        "int": is_int(value),
        "uint": is_int(value) and value >= 0,
        "str": isinstance(value, str),
        "bool": isinstance(value, bool),
        "number": isinstance(value, (int, float)) and not isinstance(value, bool),
        "algorithm": value in ALGORITHMS,
        "uuid": isinstance(value, str),
    }[kind]
    if not ok:
        raise DecodeError("malformed", f"{name}: bad value {value!r}")
    if kind == "uuid":
        try:
            return uuid.UUID(value)
        except ValueError as e:
            raise DecodeError("malformed", f"{name}: bad uuid: {e}")
    return value


def decode(body):
    """Decodes a message from the client's queue in the documented order: size, then `v`, then
    the schema of its `type`. Returns the message as a dict, UUIDs as uuid.UUID."""
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
    schema = TO_CLIENT.get(msg.get("type"))
    if schema is None:
        raise DecodeError("malformed", f"unknown or missing type {msg.get('type')!r}")
    unknown = set(msg) - set(schema) - {"v", "type"}
    if unknown:
        raise DecodeError("malformed", f"unknown fields {sorted(unknown)}")
    out = {"v": v, "type": msg["type"]}
    for name, (kind, required) in schema.items():
        if name not in msg:
            if required:
                raise DecodeError("malformed", f"missing field {name}")
            out[name] = "master" if kind == "algorithm" else None
            continue
        out[name] = check_field(name, kind, msg[name])
    return out


class Client:
    def __init__(self, args):
        self.id = args.id
        self.ip = args.ip
        self.berkeley = not args.no_berkeley
        self.offset_us = args.initial_offset_ms * 1000  # virtual clock = host clock + offset
        self.seq = 0
        self.last_update = None  # ((server_id, epoch), seq) of the last accepted update
        self.last_round = None  # ((server_id, epoch), round) of the last Berkeley adjustment
        self.master = None  # (master_id, master_time_us) of the last accepted update
        self.samples = deque(maxlen=FILTER_WINDOW)  # master clock minus host clock
        self.samples_for = None  # (server_id, master_id) the samples belong to
        self.synced = False
        self.max_step_us = 0
        self.updates_applied = 0
        self.updates_rejected = 0
        self.polls_answered = 0
        self.adjusts_applied = 0
        self.ignored = 0
        self.steps = 0
        self.epoch = None  # (epoch followed, host time of its latest accepted message)
        self.stale_epoch_msgs = 0

    def admit(self, epoch, h):
        """Fencing: whether a message of leader epoch `epoch`, received at host time `h`, may be
        acted on. Lower epochs are refused (and counted) until the followed epoch has been
        silent for EPOCH_LEASE_US; anything else is accepted and its epoch followed from now."""
        if self.epoch is not None:
            current, heard = self.epoch
            if epoch < current and h - heard < EPOCH_LEASE_US:
                self.stale_epoch_msgs += 1
                return False
        self.epoch = (epoch, h)
        return True

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
            # This client does not probe: no estimate of its offset to the reference.
            "ref_offset_us": None,
            "ref_freq_ppm": None,
            "max_step_us": self.max_step_us if self.synced else None,
            "ref_server_id": None,
            "epoch": self.epoch[0] if self.epoch else None,
            "stale_epoch_msgs": self.stale_epoch_msgs,
        }

    def correct(self, offset):
        """Applies a measured target-minus-local offset at once (see the module doc)."""
        if self.synced:
            self.max_step_us = max(self.max_step_us, abs(offset))
        if abs(offset) < SYNCED_US:
            self.synced = True
        if abs(offset) > STEP_THRESHOLD_US:
            self.steps += 1
        self.offset_us += offset

    def on_update(self, u, h):
        """Applies a decoded master_update received at host time `h`. Returns what happened."""
        key = ((u["server_id"], u["epoch"]), u["seq"])  # seq counts per leader term
        if self.last_update and self.last_update[0] == key[0] and key[1] <= self.last_update[1]:
            return "stale"
        self.last_update = key
        self.master = (u["master_id"], u["master_time_us"])
        if u["master_id"] == self.id:
            return "i_am_master"
        if u["algorithm"] == "naive":
            # The seed's rule: set the clock to the master's last reported time.
            self.correct(u["master_time_us"] - self.now_us(h))
        else:
            # No probe estimate of our own, so master_ref_offset_us is no use to us: the
            # fallback of PROTOCOL.md §11.3, a min-delay filter on master time minus host time.
            pair = (u["server_id"], u["master_id"])
            if self.samples_for != pair:
                self.samples.clear()
                self.samples_for = pair
            self.samples.append(u["master_time_us"] - h)
            estimate = max(self.samples)
            self.correct(h + estimate - self.now_us(h))
        self.updates_applied += 1
        return "applied"

    def on_poll(self, p):
        """The berkeley_reading answering a poll; the clock is read last, just before sending."""
        self.polls_answered += 1
        return {
            "v": PROTOCOL_VERSION,
            "type": "berkeley_reading",
            "id": str(self.id),
            "epoch": p["epoch"],
            "round": p["round"],
            "poll": p["poll"],
            "time_us": self.now_us(),
        }

    def on_adjust(self, a):
        key = ((a["server_id"], a["epoch"]), a["round"])  # rounds count per leader term
        if self.last_round and self.last_round[0] == key[0] and key[1] <= self.last_round[1]:
            return "stale"
        self.last_round = key
        self.correct(a["adjust_us"])
        self.adjusts_applied += 1
        return "applied"


def session(conn, client, deadline):
    ch = conn.channel()
    ch.queue_declare(REPORTS_QUEUE, durable=True, exclusive=False, auto_delete=False)
    ch.queue_declare(RPC_QUEUE, durable=True, exclusive=False, auto_delete=False)
    ch.exchange_declare(UPDATES_EXCHANGE, exchange_type="fanout", durable=True,
                        auto_delete=False, internal=False)
    # One queue for everything addressed to this client: fanout updates and polls, and the
    # replies to its own requests (it is their reply_to).
    q = ch.queue_declare("", durable=False, exclusive=True, auto_delete=True).method.queue
    ch.queue_bind(q, UPDATES_EXCHANGE, routing_key="")
    rpc_properties = pika.BasicProperties(
        content_type="application/json", delivery_mode=1, reply_to=q, expiration="1000"
    )

    def on_message(channel, method, _props, body):
        h = host_us()  # arrival, before decoding: anything later would count as transit
        try:
            m = decode(body)
        except DecodeError as e:
            client.updates_rejected += 1
            print(f"rejected message: {e}", file=sys.stderr)
            channel.basic_reject(method.delivery_tag, requeue=False)
            return
        if not client.admit(m["epoch"], h):
            # A deposed leader still talking: acknowledged, counted, otherwise ignored.
            print(f"ignored {m['type']} of stale epoch {m['epoch']} "
                  f"(following {client.epoch[0]})", file=sys.stderr)
            channel.basic_ack(method.delivery_tag)
            return
        kind = m["type"]
        reading = None
        if kind == "master_update":
            outcome = client.on_update(m, h)
            if outcome == "applied":
                print(f"update seq={m['seq']} master={m['master_id']} "
                      f"algorithm={m['algorithm']} offset_us={client.offset_us}",
                      file=sys.stderr)
        elif kind == "berkeley_poll" and client.berkeley:
            reading = m
        elif kind == "berkeley_adjust" and client.berkeley:
            if client.on_adjust(m) == "applied":
                print(f"berkeley round={m['round']} adjust_us={m['adjust_us']} "
                      f"outlier={m['outlier']} offset_us={client.offset_us}", file=sys.stderr)
        else:
            client.ignored += 1  # probe_reply (we never probe), or Berkeley when disabled
        channel.basic_ack(method.delivery_tag)
        if reading is not None:
            body = encode(client.on_poll(reading))
            channel.basic_publish("", RPC_QUEUE, body, rpc_properties)

    ch.basic_consume(q, on_message, auto_ack=False)
    next_report = time.monotonic()
    while time.monotonic() < deadline:
        if time.monotonic() >= next_report:
            # Build (read the clock) immediately before publishing: see PROTOCOL.md §16.
            ch.basic_publish("", REPORTS_QUEUE, encode(client.report()), REPORT_PROPERTIES)
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
    p.add_argument("--no-berkeley", action="store_true",
                   help="ignore berkeley_poll and berkeley_adjust instead of taking part")
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
        "polls_answered": client.polls_answered,
        "berkeley_adjusts": client.adjusts_applied,
        "messages_rejected": client.updates_rejected,
        "messages_ignored": client.ignored,
        "max_step_us": client.max_step_us if client.synced else None,
        "epoch": client.epoch[0] if client.epoch else None,
        "stale_epoch_msgs": client.stale_epoch_msgs,
    }))


if __name__ == "__main__":
    main()
