"""Progress reports at a bounded rate, and the stop flag a live run reads (pure)."""

from __future__ import annotations

from types import SimpleNamespace

from lora_assets.generation.progress import Progress, ProgressPacer, RunWatch


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_reports_every_5_percent_or_10_s_never_faster_than_2_s() -> None:
    clock = Clock()
    pacer = ProgressPacer(200, clock=clock)
    clock.t = 1.0
    assert not pacer.due(50)  # plenty done, but under the minimum interval
    clock.t = 2.0
    assert pacer.due(50)
    clock.t = 4.5
    assert not pacer.due(55)  # 5 more of 200: under 5% and under 10 s
    assert pacer.due(60)  # 10 more: 5%
    clock.t = 14.0
    assert not pacer.due(60)  # nothing new, not yet 10 s since the last report
    clock.t = 14.6
    assert pacer.due(60)  # 10 s: a report even without progress (cost, ETA still shown)


def test_a_report_says_done_failed_cost_and_eta() -> None:
    p = Progress(total=168, done=40, failed=2, cost_usd=0.0123, elapsed_s=42.0)
    assert p.eta_s == 126.0
    assert p.line() == "40/168 items done (25%), 2 failed, $0.0123 so far, ETA 2m 06s"
    assert Progress(total=5, done=0, failed=0, cost_usd=0, elapsed_s=3).line().endswith("ETA unknown")
    md = p.metadata()
    assert md["items_done"] == 40 and md["items_failed"] == 2 and md["eta_s"] == 126.0
    clock = Clock()
    clock.t = 10.0
    pacer = ProgressPacer(10, clock=clock)
    clock.t = 15.0
    assert pacer.progress(SimpleNamespace(done=3, failed=1, cost_usd=0.5)).elapsed_s == 5.0


def test_the_stop_flag_keeps_its_first_reason() -> None:
    watch = RunWatch(total=3)
    assert not watch.stop_requested and not watch.wait(0)
    watch.request_stop("cancelled")
    watch.request_stop("other")
    assert watch.stop_requested and watch.reason == "cancelled" and watch.wait(0)
