"""What the driver learns while a run trains, from what rank 0 posts on the run's ProgressBoard: a
progress bar within each epoch on a terminal (plain lines every `every_s` seconds otherwise, e.g.
under `ray job submit`), one line per epoch, and each epoch's metrics handed to listeners (the
MLflow tracker). Runs in a thread of the driver."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable

from repb_ray.train.messages import EVAL_PENDING


def epoch_line(m: dict, epochs: int, decisions: tuple = ()) -> str:
    tests = " ".join(f"{k[5:]} {v:.4f}" for k, v in m.items() if k.startswith("test_"))
    extra = "".join(f" {k} {m[k]:.2f}" for k in decisions if isinstance(m.get(k), float))
    return (f"[repb_ray] epoch {m['epoch']}/{epochs}: {tests + ' ' if tests else ''}train loss {m['train_loss']:.4f}, "
            f"kept {m['kept']} (pruned {m['pruned_fraction']:.1%}, run {m['cum_pruned_fraction']:.1%}){extra}, "
            f"w_max {m['weight_max']:.2f}, {m['epoch_time_s']:.1f}s")


RATE_AFTER_S = 2.0  # no rate nor ETA until the epoch has trained this long past its first progress report


def bar(p: dict, epochs: int, first: tuple[float, int] | None = None, now: float | None = None, width: int = 24) -> str:
    """The epoch's progress over its kept samples. Rate and ETA come from the samples trained since
    `first` (time, samples) of the epoch's first progress report, once RATE_AFTER_S has passed: the
    epoch's start (its first data, a cold pipeline) would make an early rate mean nothing."""
    done, total = p["samples"], max(p["kept"], 1)
    frac = min(done / total, 1.0)
    fill = int(frac * width)
    text = f"[repb_ray] epoch {p['epoch']}/{epochs} [{'#' * fill}{'.' * (width - fill)}] {done}/{total} kept samples"
    now = time.time() if now is None else now
    if first is not None and now - first[0] >= RATE_AFTER_S and done > first[1]:
        rate = (done - first[1]) / (now - first[0])
        text += f", {rate:,.0f}/s, ETA {max(total - done, 0) / rate:.0f}s"
    return text


class Console:
    """Polls the ProgressBoard `board`; prints (unless `show` is False) a line per epoch once its metrics are complete
    and calls `on_epoch(metrics)` for each report of an epoch (twice when evaluated asynchronously)."""

    def __init__(self, board, epochs: int, stream=None, interactive: bool | None = None,
                 every_s: float = 30.0, poll_s: float = 0.5, show: bool = True, decisions: tuple = (),
                 on_epoch: Callable[[dict], None] | None = None):
        self.board, self.epochs, self.stream = board, epochs, stream or sys.stdout
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self.every_s, self.poll_s, self.show, self.decisions = every_s, poll_s, show, decisions
        self.on_epoch = on_epoch
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="repb-ray-console")
        self._printed = 0   # the last epoch printed
        self._seen = 0      # the last report handled
        self._board = None  # the board's incarnation those numbers belong to
        self._last_plain = 0.0
        self._bar_shown = False
        self._first: tuple | None = None  # (epoch, (time, samples)) of the epoch's first progress report

    def start(self) -> Console:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._poll()  # the last epoch lines
        self._clear()

    def _clear(self) -> None:
        if self._bar_shown:
            self.stream.write("\r\033[K")
            self._bar_shown = False

    def _poll(self) -> None:
        import ray
        try:
            state = ray.get(self.board.read.remote(self._seen), timeout=5)
            if state.get("board") != self._board:  # restarted empty (its node went): read it from its start
                self._board, self._seen = state.get("board"), 0
                state = ray.get(self.board.read.remote(0), timeout=5)
        except Exception:  # the board is restarting: try again on the next poll
            return
        for seq, text in state.get("notes", ()):
            self._seen = max(self._seen, seq)
            if self.show:
                self._clear()
                self.stream.write(f"[repb_ray] {text}\n")
        for seq, m in state["epochs"]:
            self._seen = max(self._seen, seq)
            if not m.get(EVAL_PENDING) and int(m["epoch"]) > self._printed:
                if self.show:
                    self._clear()
                    self.stream.write(epoch_line(m, self.epochs, self.decisions) + "\n")
                self._printed = int(m["epoch"])
            if self.on_epoch is not None:
                self.on_epoch(m)
        p = state["now"]
        if self.show and p and p.get("epoch", 0) > self._printed and not self._stop.is_set():
            if self._first is None or self._first[0] != p["epoch"]:
                self._first = (p["epoch"], (time.time(), p["samples"]))
            text = bar(p, self.epochs, self._first[1])
            if self.interactive:
                self.stream.write("\r\033[K" + text)
                self._bar_shown = True
            elif time.monotonic() - self._last_plain >= self.every_s:
                self.stream.write(text + "\n")
                self._last_plain = time.monotonic()
        if self.show:
            self.stream.flush()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            self._poll()
