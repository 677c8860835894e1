"""Renderer -> renderer: the seed page's "不同渲染进程间发送信息" section.

    // a renderer                                // the other (hidden) renderer, "work"
    window.electronProkit                        onRenderMsgToRender((e, arg) => {
      .renderMsgToRender("work", "Hello Work");    console.log(e, arg)
                                                 })

The message goes render -> main -> work. ``render_msg_to_render`` returns a
future that resolves to ``None`` once the main has routed it to a live
window (``WindowNotFound`` otherwise). "work" says it is listening (on a
"ready" channel) before the main starts "render", so nothing arrives early.
Run: ``python examples/render_to_render.py``; it prints both sides and exits 0.
"""

import threading

from zprokit import create_window, init_ipc, on_msg_from_render


def work(window):
    got = threading.Event()

    @window.on_render_msg_to_render
    def show(event, arg):
        print(f"work: {arg!r} from {event.sender!r}", flush=True)
        got.set()

    window.render_msg_to_main(None, channel="ready").result(timeout=10)
    if not got.wait(10):
        raise SystemExit("work: nothing from the other renderer")


def render(window):
    window.render_msg_to_render("work", "Hello Work").result(timeout=10)
    print("render: 'Hello Work' delivered to 'work'", flush=True)


def main() -> int:
    with init_ipc("tcp://127.0.0.1:0"):
        ready = threading.Event()
        on_msg_from_render(lambda _e, _args: ready.set(), channel="ready")
        windows = [create_window("work", work)]
        if not ready.wait(10):
            print("main: the work window did not get ready")
            return 1
        windows.append(create_window("render", render))
        statuses = {w.name: w.join(timeout=20) for w in windows}
    print(f"main: windows exited with {statuses}")
    return 0 if set(statuses.values()) == {0} else 1


if __name__ == "__main__":
    raise SystemExit(main())
