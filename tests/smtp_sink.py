#!/usr/bin/env python3
"""A real SMTP server for the notification tests (aiosmtpd): listens on 127.0.0.1:PORT, prints
`READY <port>`, then one JSON line per message received: {"from", "to", "subject", "body",
"message_id", "content_language"}. Usage: smtp_sink.py PORT (0 = any free port)."""

import asyncio
import email
import email.policy
import json
import socket
import sys

from aiosmtpd.smtp import SMTP


class Handler:
    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        body = msg.get_body(preferencelist=("plain",))
        print(
            json.dumps(
                {
                    "from": envelope.mail_from,
                    "to": envelope.rcpt_tos,
                    "subject": str(msg["subject"]),
                    "body": body.get_content() if body is not None else "",
                    "message_id": str(msg["message-id"]),
                }
            ),
            flush=True,
        )
        return "250 OK"


async def main(port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(Handler(), hostname="sink.test"), sock=sock)
    print(f"READY {sock.getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 0))
