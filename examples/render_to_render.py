"""Renderer -> renderer: the seed page's "不同渲染进程间发送信息" section, line for line.

    // a renderer ("main")                       // the other (hidden) renderer, "work"
    window.electronProkit                        onRenderMsgToRender((e, arg) => {
      .renderMsgToRender("work", "Hello Work");    console.log(e, arg)
                                                 })

The message goes render -> main process -> work. ``render_msg_to_render``
returns a future that resolves to ``None`` once the main has routed it to a
live window (``WindowNotFound`` otherwise). ``wait_for_window("work")``
returns once work's callback is registered, so nothing arrives early.
Run: ``python examples/render_to_render.py``; it prints both sides and exits 0.
"""

import threading

from zprokit import create_window, init_ipc, wait_for_window


def work(window):
    got = threading.Event()

    @window.on_render_msg_to_render
    def show(event, arg):
        print(f"work: {arg!r} from {event.sender!r}", flush=True)
        got.set()

    window.ready()  # the callback is in place
    if not got.wait(10):
        raise SystemExit("work: nothing from the other renderer")


def render(window):
    window.render_msg_to_render("work", "Hello Work").result(timeout=10)
    print("render: 'Hello Work' delivered to 'work'", flush=True)


def main() -> int:
    with init_ipc("tcp://127.0.0.1:0"):
        windows = [create_window("work", work)]
        wait_for_window("work")
        windows.append(create_window("main", render))
        statuses = {w.name: w.join(timeout=20) for w in windows}
    print(f"main: windows exited with {statuses}")
    return 0 if set(statuses.values()) == {0} else 1


if __name__ == "__main__":
    raise SystemExit(main())
