"""The daemon owns the log files: JSON lines split by channel, raw stderr, size rotation to .gz."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import trio

from oraclewad.settings import LogSettings
from oraclewad.supervisor.logsink import MAX_LINE, Compressor, LineSplitter, LogSink


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def gunzip_lines(path: Path) -> list[str]:
    return gzip.decompress(path.read_bytes()).decode().splitlines()


def test_splitter_reassembles_lines_across_chunks_and_truncates_overlong_ones():
    s = LineSplitter(limit=10)
    assert s.feed(b"ab") == []
    assert s.feed(b"c\nde\nf") == [(b"abc", False), (b"de", False)]
    assert s.feed(b"123456789012345") == [(b"f123456789", True)]
    assert s.feed(b"still the same line\nnext\n") == [(b"next", False)]
    assert s.feed(b"0123456789ABCDEF\n") == [(b"0123456789", True)]
    assert s.feed(b"tail") == []
    assert s.flush() == [(b"tail", False)]
    assert s.flush() == []


def test_lines_are_routed_by_channel_and_level(tmp_path):
    sink = LogSink(tmp_path / "logs" / "t" / "svc", LogSettings(), Compressor()).acquire()
    sink.stdout_lines([
        (b'{"level": "info", "channel": "webhook", "msg": "a"}', False),
        (b'{"level": "ERROR", "channel": "webhook", "msg": "b"}', False),
        (b'{"level": "info", "channel": "Bad Name", "msg": "c"}', False),
        (b'{"level": "info", "channel": "combined", "msg": "d"}', False),
        (b'{"level": "critical", "msg": "e"}', False),
        (b"not json at all", False),
        (b'["json", "but not an object"]', False),
        (b'{"level": "info", "msg": "cut', True),
    ])
    sink.stderr_lines([(b"Traceback (most recent call last):", False), (b"  boom", True)])
    sink.release()
    d = tmp_path / "logs" / "t" / "svc"
    assert sorted(p.name for p in d.iterdir()) == ["combined.log", "error.log", "webhook.log"]
    assert [r["msg"] for r in records(d / "webhook.log")] == ["a", "b"]
    assert [r["msg"] for r in records(d / "error.log")] == ["b", "e"]
    combined = records(d / "combined.log")
    assert [r["msg"] for r in combined] == ["a", "b", "c", "d", "e", "not json at all",
                                            '["json", "but not an object"]', '{"level": "info", "msg": "cut']
    wrapped = combined[5]
    assert wrapped["level"] == "info" and wrapped["channel"] == "stdout" and wrapped["ts"].endswith("Z")
    assert combined[-1]["truncated"] is True
    error_text = (d / "error.log").read_text()
    assert "Traceback (most recent call last):\n  boom [truncated]\n" in error_text
    assert (d / "combined.log").read_text().endswith("(most recent call last):\n  boom [truncated]\n")
    assert d.stat().st_mode & 0o777 == 0o750
    assert (d / "combined.log").stat().st_mode & 0o777 == 0o640


async def test_rotation_keeps_n_gzip_backups_compressed_off_the_event_loop(tmp_path):
    compressor = Compressor()
    d = tmp_path / "svc"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(compressor.run)
        sink = LogSink(d, LogSettings(max_bytes=1000, backups=2), compressor).acquire()
        for batch in range(6):
            sink.stdout_lines([(json.dumps({"msg": f"{batch}-{i}", "pad": "x" * 80}).encode(), False)
                               for i in range(9)])
            with trio.fail_after(10):
                await compressor.wait_idle()
        sink.release()
        nursery.cancel_scope.cancel()
    names = sorted(p.name for p in d.iterdir())
    assert names == ["combined.log", "combined.log.1.gz", "combined.log.2.gz"]
    newest = [json.loads(line)["msg"] for line in gunzip_lines(d / "combined.log.1.gz")]
    older = [json.loads(line)["msg"] for line in gunzip_lines(d / "combined.log.2.gz")]
    current = [r["msg"] for r in records(d / "combined.log")]
    assert current == [f"5-{i}" for i in range(9)]
    assert newest == [f"4-{i}" for i in range(9)]
    assert older == [f"3-{i}" for i in range(9)]
    assert (d / "combined.log.1.gz").stat().st_mode & 0o777 == 0o640


async def test_child_output_lands_in_the_right_files(sup, make_spec, root):
    sup.apply({"t/svc": make_spec("t/svc", "--log-sample", "--long-line", str(MAX_LINE * 2))})
    await sup.wait_state("t/svc", "running", 10)
    await sup.stop("t/svc")         # returns once the pumps wrote the child's last lines
    d = root / "logs" / "t" / "svc"
    assert sorted(p.name for p in d.iterdir()) == ["antiban.log", "broadcast.log", "combined.log",
                                                   "error.log", "webhook.log"]
    assert [r["msg"] for r in records(d / "webhook.log")] == ["order received", "send failed"]
    assert records(d / "webhook.log")[0]["order"] == 17
    assert [r["msg"] for r in records(d / "antiban.log")] == ["slowing down"]
    error = (d / "error.log").read_text()
    assert [r["msg"] for r in records(d / "error.log")] == ["send failed", "no channel, critical"]
    assert "Traceback (most recent call last):" in error and "ZeroDivisionError: division by zero" in error
    combined = records(d / "combined.log")
    msgs = [r["msg"] for r in combined]
    assert msgs[:9] == ["order received", "campaign tick", "slowing down", "send failed", "bad channel name",
                        "reserved channel name", "no channel, critical", "plain text line",
                        "x" * MAX_LINE]
    assert combined[8]["truncated"] is True
    assert "after long line" in msgs and msgs[-1] == "stopping on SIGTERM"
    assert "ZeroDivisionError" in (d / "combined.log").read_text()


async def test_child_output_rotates(make_supervisor, make_spec, root):
    sup = await make_supervisor(LogSettings(max_bytes=4000, backups=3))
    sup.apply({"t/svc": make_spec("t/svc", "--log-bytes", "30000")})
    await sup.wait_state("t/svc", "running", 10)
    await sup.stop("t/svc")
    with trio.fail_after(10):
        await sup.compressor.wait_idle()
    d = root / "logs" / "t" / "svc"
    names = sorted(p.name for p in d.iterdir())
    assert "broadcast.log.1.gz" in names and "combined.log.3.gz" in names
    assert not any(n.endswith((".4.gz", ".rotated", ".tmp")) for n in names)
    assert all((d / n).stat().st_size <= 4000 for n in names if n.endswith(".log"))
    lines = gunzip_lines(d / "combined.log.1.gz")
    assert lines and all(json.loads(line)["channel"] == "broadcast" for line in lines)
