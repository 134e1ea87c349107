"""Progress bars (tqdm) that a Ctrl-C may cut short at any moment.

A KeyboardInterrupt that lands while tqdm builds a bar leaves it half made, and tqdm's finalizer then
fails on the position it never set, printing a traceback after the stage's one-line "interrupted"
message. A bar's finalizer here closes only a bar that got its position.
"""

from __future__ import annotations

from tqdm import tqdm


class Progress(tqdm):
    def __del__(self):
        if hasattr(self, "pos"):  # what tqdm's close() reads unguarded
            super().__del__()
