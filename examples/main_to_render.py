"""Main -> renderer: the seed page's "主进程发送信息到渲染进程" section, line for line.

    // main process                              // renderer
    mainMsgToRender("main", "msg from main");    window.electronProkit.onMsgFromMain((_event, args) => {
                                                   console.log(args);
                                                 });

As in electron-prokit, the renderer window is called "main"; ``event.from_main``
tells a message from the main process apart from one a window named "main"
sent. ``wait_for_window`` returns once the window's target has registered its
callbacks (here: it says ``ready()``), so the message sent right after finds
its callback. Run: ``python examples/main_to_render.py``; it prints the
message and exits 0.
"""

import threading

from zprokit import create_window, init_ipc, main_msg_to_render, wait_for_window


def render(window):
    got = threading.Event()

    @window.on_msg_from_main
    def show(event, args):
        print(f"render: {args} (from {event.sender}, from_main={event.from_main})", flush=True)
        got.set()

    window.ready()  # the callback is in place
    if not got.wait(10):
        raise SystemExit("render: no message from the main")


def main() -> int:
    with init_ipc("tcp://127.0.0.1:0"):
        window = create_window("main", render)
        wait_for_window("main")
        main_msg_to_render("main", "msg from main")  # seed: mainMsgToRender("main", "msg from main")
        status = window.join(timeout=20)
    print(f"main: the render window exited with status {status}")
    return 0 if status == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
