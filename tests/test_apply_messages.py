"""What ``apply`` tells its user after a run (issue 15): one plain line on whether the forget set
now looks like unseen data, with the numbers, and a warning when it does not or when the model
lost held-out accuracy. Nothing claims "N samples forgotten" without that comparison."""

from __future__ import annotations

import math

import pytest

from unforget.cli.render import assessment_lines
from unforget.io.receipt import Snapshot
from unforget.training.evaluate import Score
from unforget.workflows.unlearn import COLLAPSE_DROP, assess


def snap(
    forget: float, heldout: float, *, n_f: int = 600, n_h: int = 1500, retain: float = 0.99
) -> Snapshot:
    return Snapshot(
        forget=Score(accuracy=forget, loss=1.0, n=n_f),
        retain=Score(accuracy=retain, loss=0.1, n=2048),
        heldout=Score(accuracy=heldout, loss=1.0, n=n_h),
    )


def test_tolerance_is_three_points_or_two_standard_errors() -> None:
    """p = 0.86, n_F = 600, n_H = 1500: 2·sqrt(0.86·0.14·(1/600 + 1/1500)) = 0.0335 > 0.03;
    with n_F = 6000 the standard-error term (0.0236) is below the 3-point floor."""
    small = assess(snap(0.99, 0.86), snap(0.86, 0.86))
    assert small.tolerance == pytest.approx(2 * math.sqrt(0.86 * 0.14 * (1 / 600 + 1 / 1500)))
    large = assess(snap(0.99, 0.86, n_f=6000), snap(0.86, 0.86, n_f=6000))
    assert large.tolerance == 0.03


@pytest.mark.parametrize(
    ("after_forget", "state"),
    [(0.87, "like_unseen"), (0.99, "remembered"), (0.50, "over_forgotten")],
)
def test_state_compares_forget_with_heldout(after_forget: float, state: str) -> None:
    a = assess(snap(0.99, 0.86), snap(after_forget, 0.86))
    assert a.state == state
    assert not a.collapsed
    line = assessment_lines(a)[0]
    assert f"{100 * after_forget:.1f}%" in line and "86.0%" in line
    assert line.startswith("WARNING") == (state != "like_unseen")
    assert "samples forgotten" not in line


def test_scrub_case_from_the_issue_warns() -> None:
    """Forget accuracy left at 99.0% against 71% held-out: still remembered, say so."""
    lines = assessment_lines(assess(snap(0.99, 0.71), snap(0.99, 0.71)))
    assert lines[0].startswith("WARNING: the forget set may still look like training data")
    assert "unforget audit" in lines[0] and "--method retrain" in lines[0]
    assert "99.0%" in lines[0] and "71.0%" in lines[0]


def test_collapse_warns_even_when_forget_matches_heldout() -> None:
    """Held-out 71% -> 50% with forget also at 50%: alike, but the model collapsed."""
    a = assess(snap(0.99, 0.71), snap(0.50, 0.50))
    assert a.state == "like_unseen" and a.collapsed
    lines = assessment_lines(a)
    assert len(lines) == 2 and lines[1].startswith("WARNING: held-out accuracy fell")
    assert "71.0%" in lines[1] and "50.0%" in lines[1]
    just_within = assess(snap(0.99, 0.71), snap(0.71 - COLLAPSE_DROP + 0.01, 0.71 - 0.04))
    assert not just_within.collapsed


def test_class_removal_compares_with_the_removed_classes_heldout_rows() -> None:
    """A removed class: unseen means ~0 on that class's held-out rows, so forget accuracy 1%
    is alike (not over-forgotten), judged against the removed classes' held-out rows."""
    before = Snapshot(
        forget=Score(accuracy=1.0, loss=0.0, n=600),
        retain=Score(accuracy=0.99, loss=0.0, n=2048),
        heldout=Score(accuracy=0.86, loss=0.5, n=1500),
        removed_classes=Score(accuracy=0.95, loss=0.2, n=150),
        other_classes=Score(accuracy=0.85, loss=0.5, n=1350),
    )
    after = Snapshot(
        forget=Score(accuracy=0.01, loss=6.0, n=600),
        retain=Score(accuracy=0.99, loss=0.0, n=2048),
        heldout=Score(accuracy=0.77, loss=1.0, n=1500),
        removed_classes=Score(accuracy=0.0, loss=7.0, n=150),
        other_classes=Score(accuracy=0.85, loss=0.5, n=1350),
    )
    a = assess(before, after)
    assert a.unseen_accuracy == 0.0 and a.state == "like_unseen" and not a.collapsed


@pytest.mark.parametrize(
    ("status", "reasons", "evidence", "step"),
    [
        ("PASS", (), "strong", "keep this report"),
        ("PASS", (), "weak", "--original"),
        ("FAIL-LEAK", (), "none", "re-run apply"),
        ("FAIL-OVER", (), "none", "re-run apply"),
        ("INCONCLUSIVE", ("no_references",), "none", "--refs 8"),
        ("INCONCLUSIVE", ("forget_set_too_small",), "none", "larger batch"),
        ("INCONCLUSIVE", ("some_future_code",), "none", "--refs"),
    ],
)
def test_every_verdict_ends_with_a_plain_sentence_and_a_next_step(
    status: str, reasons: tuple[str, ...], evidence: str, step: str
) -> None:
    from unforget.workflows.audit_output import conclusion

    sentence, next_step = conclusion(status, reasons, evidence)
    assert sentence.endswith(".") and "deleted samples" in sentence
    assert step in next_step
