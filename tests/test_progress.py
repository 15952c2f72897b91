"""Progress off a terminal (nohup, SLURM, CI logs): whole lines at a known rhythm, never carriage-return frames."""

import io
import re

from sparsedm.cli import main
from sparsedm.progress import LogLines, progress_bar


class Terminal(io.StringIO):
    def isatty(self):
        return True


def counts(text: str) -> list:
    return [int(n) for n in re.findall(r"(\d+)/\d+ \[", text)]


def test_a_log_gets_one_line_per_every_items_and_the_last():
    log = io.StringIO()
    with progress_bar(total=12, desc="steps", every=5, file=log) as bar:
        for _ in range(12):
            bar.set_postfix(loss="0.5")  # the trainer's postfix must not add lines of its own
            bar.update(1)
    text = log.getvalue()
    assert "\r" not in text and text.endswith("\n")
    assert counts(text) == [0, 5, 10, 12] and len(text.splitlines()) == 4
    assert all(line.startswith("steps:") for line in text.splitlines())


def test_an_iterable_without_every_ends_with_its_count():
    log = io.StringIO()
    assert list(progress_bar(range(7), desc="items", file=log)) == list(range(7))
    assert "\r" not in log.getvalue() and counts(log.getvalue())[-1] == 7


def test_a_terminal_keeps_tqdms_bar():
    screen = Terminal()
    with progress_bar(total=3, file=screen, mininterval=0) as bar:
        assert not isinstance(bar, LogLines)
        bar.update(3)
    assert "\r" in screen.getvalue()


def test_disable_none_still_means_silent_off_a_terminal():
    log = io.StringIO()
    with progress_bar(total=3, file=log, disable=None) as bar:
        bar.update(3)
    assert log.getvalue() == ""


def test_training_into_a_log_file_writes_a_line_per_log_every(tmp_path, tiny_run, capfd):
    args = ["train", "configs/chirodiff_kanjivg_cpu.yaml", "--out", str(tmp_path / "run"), *tiny_run]
    assert main([*args, "model.num_layers=1", "train.steps=12", "train.log_every=4", "train.val_batches=1"]) == 0
    err = capfd.readouterr().err
    assert "\r" not in err
    lines = [line for line in err.splitlines() if line.startswith("train ")]
    assert counts("\n".join(lines)) == [0, 4, 8, 12]
