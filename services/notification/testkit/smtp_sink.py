"""A real SMTP server for Roombook's tests (aiosmtpd, from PyPI: `pip install aiosmtpd`).

Every accepted message is written to MAILDIR as one .eml file (atomically, via rename), with
the SMTP envelope prepended as `X-Sink-Envelope-To` / `X-Sink-Mail-From` headers. Recipient
domains choose the server's answer, so tests can provoke each kind of failure:

    @reject.test         550 at RCPT (permanent)
    @tempfail.test       451 at RCPT, always (transient)
    @tempfail-once.test  451 at RCPT the first time per address, then accepted

Prints `LISTENING <port>` once it accepts connections; exits when its stdin closes (the test
process died) or on SIGTERM/SIGKILL.
"""

import argparse
import asyncio
import os
import sys
import time
import uuid

from aiosmtpd.smtp import SMTP


class Sink:
    def __init__(self, maildir):
        self.maildir = maildir
        self.deferred = set()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        domain = address.rpartition("@")[2].lower()
        if domain == "reject.test":
            return "550 5.1.1 <%s>: mailbox unavailable" % address
        if domain == "tempfail.test":
            return "451 4.3.0 <%s>: try again later" % address
        if domain == "tempfail-once.test" and address not in self.deferred:
            self.deferred.add(address)
            return "451 4.7.1 <%s>: greylisted, try again later" % address
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        head = "X-Sink-Envelope-To: %s\r\nX-Sink-Mail-From: %s\r\n" % (
            ", ".join(envelope.rcpt_tos),
            envelope.mail_from,
        )
        data = envelope.original_content or envelope.content
        if isinstance(data, str):
            data = data.encode("utf-8")
        name = "%020d-%s.eml" % (time.time_ns(), uuid.uuid4().hex)
        tmp = os.path.join(self.maildir, "." + name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(head.encode("utf-8") + data)
        os.rename(tmp, os.path.join(self.maildir, name))
        return "250 2.0.0 Message accepted for delivery"


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--maildir", required=True)
    args = parser.parse_args()
    os.makedirs(args.maildir, exist_ok=True)
    sink = Sink(args.maildir)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(sink, hostname="sink.test", decode_data=False, enable_SMTPUTF8=True),
        host=args.host,
        port=args.port,
        reuse_address=True,
    )
    port = server.sockets[0].getsockname()[1]
    print("LISTENING %d" % port, flush=True)
    # Stop when the parent goes away.
    await loop.run_in_executor(None, sys.stdin.read)
    server.close()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
