import subprocess
import sys
import threading

import pytest

from pipeline.background import Sink, prefetch

from conftest import ROOT


def test_prefetch_keeps_order_and_runs_in_another_thread():
    threads = []

    def numbers():
        for number in range(100):
            threads.append(threading.current_thread())
            yield number

    assert list(prefetch(numbers(), depth=3)) == list(range(100))
    assert all(thread is not threading.current_thread() for thread in threads)


def test_prefetch_raises_the_producers_error_and_stops_it_when_the_caller_stops():
    def failing():
        yield 1
        raise ValueError("bad line 2")

    with pytest.raises(ValueError, match="bad line 2"):
        list(prefetch(failing()))
    produced = []

    def endless():
        number = 0
        while True:
            produced.append(number)
            yield number
            number += 1

    for number in prefetch(endless(), depth=2):
        if number == 5:
            break
    assert len(produced) <= 5 + 1 + 2 + 1  # stopped soon after the caller did


def test_sink_consumes_everything_in_order_and_reports_its_error():
    seen = []
    with Sink(seen.append, depth=2) as sink:
        for number in range(50):
            sink.put(number)
    assert seen == list(range(50))

    def consume(item):
        if item == 3:
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        with Sink(consume) as sink:
            for number in range(10):
                sink.put(number)


ABANDONED = {  # a caller interrupted before it could stop its thread, which is inside torch as Python exits
    "prefetch": "kept = prefetch(heavy()); next(kept)",
    "sink": "sink = Sink(lambda _: next(heavy())).__enter__()\nfor _ in range(4): sink.put(None)",
}


@pytest.mark.parametrize("abandoned", ABANDONED.values(), ids=ABANDONED.keys())
def test_a_thread_left_running_ends_before_the_interpreter_does(abandoned):
    """A daemon thread inside a torch call when Python finalizes aborts the process (SIGABRT, "terminate
    called without an active exception"): the exit status a Ctrl-C meant to give is lost."""
    script = "\n".join([
        "import sys, torch",
        "from pipeline.background import Sink, prefetch",
        "def heavy():",
        "    while True:",
        "        yield torch.randn(1500, 1500) @ torch.randn(1500, 1500)",
        abandoned,
        "sys.exit(130)",
    ])
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 130, result.stderr[-2000:]


def test_a_caller_in_another_thread_keeps_its_threads_after_the_main_thread_has_ended():
    script = "\n".join([
        "import threading, time",
        "from pipeline.background import Sink, prefetch",
        "def work():",
        "    time.sleep(0.3)  # the main thread has ended by now; the interpreter waits for this one",
        "    seen = []",
        "    with Sink(seen.append, depth=2) as sink:",
        "        for number in prefetch(iter(range(20)), depth=2):",
        "            sink.put(number)",
        "    print(seen == list(range(20)))",
        "threading.Thread(target=work).start()",
    ])
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["True"], result.stderr[-2000:]
