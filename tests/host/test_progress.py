"""The live display's reader: it sees each event once, and waits for a line still being written."""

from __future__ import annotations

from kit.progress import EventTail


def test_tail_reads_new_events_once_and_waits_for_partial_lines(tmp_path):
    log = tmp_path / "events.log"
    tail = EventTail(log)
    assert tail.read() == []  # no file yet
    log.write_text(':::MLLOG {"key": "a", "value": 1}\nnot an event\n:::MLLOG {"key": "b"')
    assert tail.read() == [{"key": "a", "value": 1}]
    with open(log, "a") as f:
        f.write(', "value": 2}\n')
    assert tail.read() == [{"key": "b", "value": 2}]
    assert tail.read() == []
