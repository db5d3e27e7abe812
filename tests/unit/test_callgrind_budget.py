"""benchmarks.callgrind: a callgrind file read as instructions by stage of a request (the
budget every data-plane change is judged by, docs/performance.md)."""

from pathlib import Path

from benchmarks.callgrind import Budget, calls_into, read, stage

# loop -> on_read -> parse -> helper, and loop -> timer -> task -> helper; with callers kept
# apart (--separate-callers), name compression, and a call cost line after each calls= line.
# "deep" has lost its callers (deeper than callgrind keeps): its own 40 are shared by what its
# calls cost from each caller, 10 from parse and 30 from task.
PROFILE = """# callgrind format
version: 1
events: Ir
summary: 1000

ob=(1) /bin/x
fl=(1) x.c
fn=(1) loop
1 10
cfn=(2) on_read'loop
calls=2 1
1 600
cfn=(5) timer'loop
calls=3 1
1 390

fn=(2)
1 100
cfn=(3) parse'on_read'loop
calls=2 1
1 500

fn=(3)
1 300
cfn=(4) helper'parse'on_read'loop
calls=4 1
1 200
cfn=(8) deep
calls=1 1
1 10

fn=(4)
1 200

fn=(5)
1 40
cfn=(6) task'timer'loop
calls=3 1
1 350

fn=(6)
1 150
cfn=(7) helper'task'timer'loop
calls=3 1
1 200
cfn=(8)
calls=3 1
1 30

fn=(7)
1 200

fn=(8)
1 40
"""

STAGES = (
    stage("loop", "the event loop", "loop", "on_read"),
    stage("parse", "parsing", "parse"),
    stage("background", "periodic work", "timer"),
    stage("parse-helper", "the helper under parse only", ("helper", "parse")),
)


def _file(tmp_path: Path) -> Path:
    path = tmp_path / "x.callgrind"
    path.write_text(PROFILE)
    return path


def test_own_instructions_go_to_the_nearest_named_caller(tmp_path: Path) -> None:
    budget = Budget(read(_file(tmp_path)), STAGES)
    assert budget.profile.total == 1040
    assert budget.by_stage() == {"loop": 110, "parse": 310, "parse-helper": 200,
                                 "background": 420}
    assert budget.by_function()["background/timer"] == 420


def test_calls_into_counts_calls_and_their_inclusive_cost(tmp_path: Path) -> None:
    profile = read(_file(tmp_path))
    assert calls_into(profile, "timer") == (3, 390)
    assert calls_into(profile, "helper") == (7, 400)
    assert calls_into(profile, "absent") == (0, 0)

