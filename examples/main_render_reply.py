"""Renderer -> main with a reply: the seed page's "渲染进程发送信息到主进程" section.

    // main process                              // renderer
    initIpc();                                   window.electronProkit.renderMsgToMain(msg)
    onMsgFromRender((_e, args) => {                .then((result) => { console.log(result); });
      return `Main have get data is ${args}`;
    });

In Python the main's handler returns its reply, and the renderer's request
is a future: ``.result()`` waits for it (``.add_done_callback`` is ``.then``).
Run: ``python examples/main_render_reply.py``; it prints the reply and exits 0.
"""

from zprokit import create_window, init_ipc, on_msg_from_render


def render(window):
    """The renderer: a window process, given its connected Window."""
    result = window.render_msg_to_main("sendMsgToMain Hello").result(timeout=10)
    print(f"render: {result}", flush=True)


def main() -> int:
    with init_ipc("tcp://127.0.0.1:0"):  # seed: initIpc()
        on_msg_from_render(lambda _e, args: f"Main have get data is {args}")
        status = create_window("render", render).join(timeout=20)
    print(f"main: the render window exited with status {status}")
    return 0 if status == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
