"""imnet.progress: a live bar on a terminal, plain lines every few seconds anywhere else."""

from __future__ import annotations

import io

from tqdm import tqdm

from imnet.progress import LogProgress, progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_live_tqdm_bar():
    out = Terminal()
    bar = progress(range(5), desc="work", unit="shape", file=out)
    assert isinstance(bar, tqdm)
    assert list(bar) == [0, 1, 2, 3, 4]
    assert "\r" in out.getvalue() and "5/5" in out.getvalue()


def test_a_log_gets_one_line_per_interval_and_a_final_line():
    out = io.StringIO()  # not a terminal: a file, a pipe, CI
    bar = progress(range(4), desc="preparing shapes", unit="shape", file=out, interval=0.0)
    assert isinstance(bar, LogProgress)
    assert list(bar) == [0, 1, 2, 3]
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert len(lines) == 5  # every update (interval 0), then the summary
    assert lines[0].startswith("preparing shapes: 1/4 shapes (25%), ") and lines[0].endswith(" left")
    assert lines[-1].startswith("preparing shapes: 4/4 shapes (100%), ") and " done in 0:00" in lines[-1]


def test_a_long_interval_writes_only_the_final_line():
    out = io.StringIO()
    with progress(total=1000, desc="evaluating", unit="shape", file=out) as bar:  # default: every 10 s
        for _ in range(1000):
            bar.update()
        bar.set_postfix(iou="0.512")
        bar.write("a message between progress lines")
    message, summary = out.getvalue().splitlines()
    assert message == "a message between progress lines"
    assert summary.startswith("evaluating: 1000/1000 shapes (100%), ") and ", done in 0:00" in summary
    assert summary.endswith(", iou=0.512")


def test_disabled_progress_writes_nothing_but_still_iterates():
    out = io.StringIO()
    assert list(progress(range(3), file=out, disable=True, interval=0.0)) == [0, 1, 2]
    assert list(progress(range(3), file=Terminal(), disable=True)) == [0, 1, 2]
    assert out.getvalue() == ""
