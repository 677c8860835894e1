"""asyncio on both sides: an ``async def`` handler in the main, ``await`` in the window.

It is the seed page's renderer -> main block written with ``await``, as one
writes a Promise in modern JS:

    onMsgFromRender((_e, args) => ...);                               // main process
    const result = await window.electronProkit.renderMsgToMain(msg);  // renderer

An ``async def`` handler runs on the main's event loop, so requests that wait
(here on ``asyncio.sleep``, standing in for real I/O) overlap instead of
holding a thread each. Every future zprokit returns can be awaited.
Run: ``python examples/asyncio_example.py``; it prints five replies and exits 0.
"""

import asyncio
import time

from zprokit import create_window, init_ipc, on_msg_from_render


async def fetch(event, url):
    await asyncio.sleep(0.3)
    return f"{url} -> 200 OK"


def render(window):
    asyncio.run(crawl(window))


async def crawl(window):
    urls = [f"https://example.org/page/{i}" for i in range(1, 6)]
    started = time.monotonic()
    replies = await asyncio.gather(*(window.render_msg_to_main(url, channel="fetch") for url in urls))
    for reply in replies:
        print(f"render: {reply}", flush=True)
    print(f"render: {len(replies)} replies in {time.monotonic() - started:.2f} s", flush=True)


def main() -> int:
    with init_ipc("tcp://127.0.0.1:0"):
        on_msg_from_render(fetch, channel="fetch")
        status = create_window("render", render).join(timeout=20)
    print(f"main: the render window exited with status {status}")
    return 0 if status == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
