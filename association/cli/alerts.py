"""``nightpipe alerts``: read an alert stream from Kafka, a line per alert or a summary."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def add_alerts(sub: Any) -> None:
    """The ``alerts`` subcommand's arguments."""
    p = sub.add_parser(
        "alerts",
        help="read an alert stream from Kafka and print a line per alert",
        description=(
            "Decodes each message by the schema id in its Confluent header (Rubin's"
            " alert schemas, from lsst-alert-packet) and prints one line per alert."
        ),
    )
    p.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers, host:port[,...]")
    p.add_argument("--topic", default="alerts", help="alert topic (default: alerts)")
    p.add_argument(
        "--from-beginning", action="store_true", help="read the topic from its first message"
    )
    p.add_argument("--count", type=int, metavar="N", help="stop after N alerts")
    p.add_argument(
        "--summary",
        action="store_true",
        help="print a JSON summary instead of lines; stops at the topic's end (or after --count)",
    )
    p.add_argument("--idle", type=float, metavar="S", help="stop after S seconds without an alert")
    p.add_argument("--security-protocol", default="PLAINTEXT")
    p.add_argument("--sasl-mechanism")
    p.add_argument("--sasl-username")
    p.add_argument(
        "--sasl-password-env", metavar="VAR", help="environment variable of the password"
    )


def cmd_alerts(args: argparse.Namespace) -> int:
    """Read the stream; 0 if every message decoded, 1 otherwise."""
    from association.alerts.consumer import AlertStreamReader, StreamSummary, alert_line
    from events.kafka import KafkaConnection, KafkaError

    if args.count is not None and args.count < 1:
        raise SystemExit("--count must be >= 1")
    connection = KafkaConnection(
        args.bootstrap,
        security_protocol=args.security_protocol,
        sasl_mechanism=args.sasl_mechanism,
        sasl_username=args.sasl_username,
        sasl_password_env=args.sasl_password_env,
    )
    try:
        reader = AlertStreamReader(connection, args.topic, from_beginning=args.from_beginning)
    except KafkaError as exc:
        raise SystemExit(str(exc)) from None
    summary = StreamSummary(args.topic)
    to_end = args.summary and args.count is None
    try:
        for alert in reader.read(count=args.count, to_end=to_end, idle=args.idle):
            summary.add(alert)
            if not args.summary:
                print(alert_line(alert), flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        reader.close()
    if args.summary:
        json.dump(summary.as_dict(), sys.stdout, indent=2)
        print()
    return 1 if summary.undecodable else 0


COMMANDS = {"alerts": (add_alerts, cmd_alerts)}
