import gc
import sys

from tqdm import tqdm

from pipeline.progress import Progress


def test_a_progress_bar_cut_short_while_built_is_finalized_quietly():
    """A Ctrl-C inside tqdm's constructor leaves a bar without its attributes: tqdm's own finalizer
    then prints a traceback after the stage's one-line message; ours stays quiet."""
    unraisable = []
    hook, sys.unraisablehook = sys.unraisablehook, unraisable.append
    try:
        for kind in (tqdm, Progress):
            bar = kind.__new__(kind)  # what a constructor interrupted after setting `disable` leaves behind
            bar.disable = False
            del bar
            gc.collect()
    finally:
        sys.unraisablehook = hook
    assert [type(report.exc_value) for report in unraisable] == [AttributeError]  # tqdm's alone
