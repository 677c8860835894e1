"""Main -> renderer: the seed page's "主进程发送信息到渲染进程" section.

    // main process                              // renderer
    mainMsgToRender("main", "msg from main");    window.electronProkit.onMsgFromMain((_event, args) => {
                                                   console.log(args);
                                                 });

In electron-prokit "main" is the name of the main renderer window; in zprokit
"main" names the main process itself, so the renderer here is "render".
``main_msg_to_render`` is one-way: it raises ``WindowNotFound`` at once for
an unknown window, but a window that has not registered its callback yet
would only count the message as unhandled. So the renderer first says it is
listening (on a "ready" channel), and the main sends after that.
Run: ``python examples/main_to_render.py``; it prints the message and exits 0.
"""

import threading

from zprokit import create_window, init_ipc, main_msg_to_render, on_msg_from_render


def render(window):
    got = threading.Event()

    @window.on_msg_from_main
    def show(event, args):
        print(f"render: {args} (from {event.sender})", flush=True)
        got.set()

    window.render_msg_to_main(None, channel="ready").result(timeout=10)
    if not got.wait(10):
        raise SystemExit("render: no message from the main")


def main() -> int:
    with init_ipc("tcp://127.0.0.1:0"):
        ready = threading.Event()
        on_msg_from_render(lambda _e, _args: ready.set(), channel="ready")
        window = create_window("render", render)
        if not ready.wait(10):
            print("main: the render window did not get ready")
            return 1
        main_msg_to_render("render", "msg from main")  # seed: mainMsgToRender("main", "msg from main")
        status = window.join(timeout=20)
    print(f"main: the render window exited with status {status}")
    return 0 if status == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
