"""An echo bot on roost.client: it answers every message it receives.

Run a server and the bot, then open http://127.0.0.1:8080/ and write to "echo"::

    roost serve --demo &
    python examples/echo_bot.py --token "$(roost token echo)"

The bot confirms a message only after its reply was acked. If it crashes in
between, the server delivers the message again on the next connection and the
bot answers it again: at least once, never lost.
"""

from __future__ import annotations

import argparse
import asyncio

from roost.client import Disconnected, Message, connect


async def echo(url: str, token: str) -> int | None:
    """Echo until the connection closes; return the close code."""
    async with connect(url, token) as client:
        async for item in client:
            if isinstance(item, Message):
                body = item.body
                text = body.get("text") if isinstance(body, dict) else body
                await client.send(item.sender, {"text": f"echo: {text}"})
            await client.confirm(item.id)  # receipts are inbox items too
        return client.close_code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="ws://127.0.0.1:8080/ws")
    parser.add_argument("--token", required=True, help="a JWT, e.g. from `roost token echo`")
    args = parser.parse_args()
    try:
        code = asyncio.run(echo(args.url, args.token))
    except Disconnected as exc:
        code = exc.code
    except KeyboardInterrupt:
        return
    print(f"disconnected (close code {code})")


if __name__ == "__main__":
    main()
