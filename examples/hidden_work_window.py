"""A hidden work window: the seed page's ``createWindow("work", ...)`` block.

    const workWindow = createWindow("work", {
        show: false,
        webPreferences: { preload: join(__dirname, "../work/index.cjs") },
    });
    workWindow.loadFile(resolve(__dirname, "../work/index.html"));

In zprokit a window needs no page: ``create_window("work", target)`` starts
a process that connects as "work" and runs ``target(window)`` (a callable,
or a ``"module:function"`` string, the counterpart of the preload script).
Here it serves the main's requests until the main destroys it.
Run: ``python examples/hidden_work_window.py``; it prints the work done and exits 0.
"""

import threading

from zprokit import create_window, destroy_window, get_window, init_ipc, main_call_render, on_msg_from_render


def work(window):
    @window.on_msg_from_main(channel="primes")
    def primes(event, limit):
        found = [n for n in range(2, limit) if all(n % d for d in range(2, int(n**0.5) + 1))]
        print(f"work: {len(found)} primes below {limit}", flush=True)
        return found

    window.render_msg_to_main(None, channel="ready").result(timeout=10)
    window.wait_closed()  # serve until the main closes us
    print("work: closed by the main", flush=True)


def main() -> int:
    with init_ipc("tcp://127.0.0.1:0"):
        ready = threading.Event()
        on_msg_from_render(lambda _e, _args: ready.set(), channel="ready")
        work_window = create_window("work", work)
        if not ready.wait(10):
            print("main: the work window did not get ready")
            return 1
        print(f"main: window 'work' is process {get_window('work').pid} (created as {work_window.pid})", flush=True)
        primes = main_call_render("work", 50, channel="primes").result(timeout=10)
        print(f"main: work found {primes}", flush=True)
        destroy_window("work")
        status = work_window.join(timeout=20)
    print(f"main: the work window exited with status {status}")
    return 0 if status == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
