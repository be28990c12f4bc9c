"""A real SMTP server (aiosmtpd) for the email backend's tests, on a loopback port.

Every message accepted is appended to --out as one JSON line: the envelope, whether the
session was encrypted, and the message as received. Recipients whose address starts with
"tempfail" are refused with a 451 the first time they are seen and accepted after; those that
start with "reject" are refused with a 550. With --cert and --key the server offers STARTTLS
and requires it before MAIL; with --implicit as well, it speaks TLS from the first byte
instead. Prints "ready" once it listens; stops on SIGTERM.
"""

import argparse
import asyncio
import json
import signal
import ssl

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP


class Recorder:
    def __init__(self, out):
        self.out = out
        self.seen = set()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith("tempfail") and address not in self.seen:
            self.seen.add(address)
            return "451 4.3.0 Try again later"
        if address.startswith("reject"):
            return "550 5.1.1 No such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        record = {
            "from": envelope.mail_from,
            "to": envelope.rcpt_tos,
            # STARTTLS sets session.ssl; TLS from the first byte shows on the transport.
            "tls": session.ssl is not None or server.transport.get_extra_info("ssl_object") is not None,
            "data": envelope.content.decode("utf-8", "replace"),
        }
        with open(self.out, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        return "250 2.0.0 OK queued"


class TlsController(Controller):
    def __init__(self, handler, context, implicit, **kwargs):
        self.tls = None if implicit else context
        super().__init__(handler, ssl_context=context if implicit else None, **kwargs)

    def factory(self):
        return SMTP(self.handler, tls_context=self.tls, require_starttls=self.tls is not None)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--implicit", action="store_true")
    args = p.parse_args()
    context = None
    if args.cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.cert, args.key)
    controller = TlsController(Recorder(args.out), context, args.implicit, hostname="127.0.0.1", port=args.port)
    controller.start()
    print("ready", flush=True)
    stop = asyncio.new_event_loop()
    signal.signal(signal.SIGTERM, lambda *_: stop.call_soon_threadsafe(stop.stop))
    try:
        stop.run_forever()
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
