"""The audit spool's file format and locks (fhir_server/audit/spool.py): frames read back as
written, a torn or unfinished frame ends a read, the stored offset survives a reopen, a file
held by a live process is never taken over, and rotation starts a new file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fhir_server.audit import spool


def test_frames_read_back_as_written_from_the_stored_offset(tmp_path: Path) -> None:
    writer = spool.Spool(tmp_path)
    writer.open()
    ends = [writer.append([("read", n, None, ("Patient/1",))]) for n in range(5)]
    assert [number for number, _ in ends] == [0] * 5
    reader = spool.Reader(writer.path(0))
    items, more = reader.read()
    assert items == [[("read", n, None, ("Patient/1",))] for n in range(5)]
    assert not more
    assert reader.position == ends[-1][1]
    # stored through the third: a reopen starts after it
    reader.position = ends[2][1]
    reader.mark()
    reader.close()
    again = spool.Reader(writer.path(0))
    assert again.read()[0] == [
        [("read", 3, None, ("Patient/1",))],
        [("read", 4, None, ("Patient/1",))],
    ]
    again.close()
    writer.close(delete=True)
    assert not list(tmp_path.iterdir())


def test_a_torn_or_unfinished_frame_ends_the_read(tmp_path: Path) -> None:
    writer = spool.Spool(tmp_path)
    writer.open()
    writer.append(["whole"])
    _, end = writer.append(["torn"])
    path = writer.path(0)
    # a write cut short: the last frame is incomplete
    os.truncate(path, end - 2)
    reader = spool.Reader(path)
    assert reader.read()[0] == [["whole"]]
    assert reader.left() > 0
    assert reader.read()[0] == []  # still waiting for it
    # a frame whose bytes are all there but wrong (the CRC catches it)
    with path.open("r+b") as raw:
        raw.truncate(end)
        raw.seek(end - 1)
        raw.write(b"X")
    assert reader.read()[0] == []
    reader.close()
    writer.close(delete=True)


def test_a_frame_larger_than_a_read(tmp_path: Path) -> None:
    writer = spool.Spool(tmp_path)
    writer.open()
    big = "x" * 5000
    writer.append([big])
    writer.append(["small"])
    reader = spool.Reader(writer.path(0))
    items, more = reader.read(limit=1000)
    assert items == [[big]] and more
    assert reader.read(limit=1000)[0] == [["small"]]
    reader.close()
    writer.close(delete=True)


def test_rotation_starts_a_new_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool, "SPOOL_BYTES", 200)
    writer = spool.Spool(tmp_path)
    writer.open()
    numbers = {writer.append(["y" * 50])[0] for _ in range(10)}
    assert numbers == {0, 1, 2, 3, 4}
    writer.release((3, 0))  # files 0 to 2 stored: let go of them
    assert sorted(writer._fds) == [3, 4]
    writer.close(delete=True)


def test_only_a_file_no_live_process_holds_is_taken_over(tmp_path: Path) -> None:
    live = spool.Spool(tmp_path)
    live.open()
    live.append(["live"])
    # a spool left by a process that died (its locks died with it)
    script = (
        "import sys; from pathlib import Path; from fhir_server.audit import spool;"
        "s = spool.Spool(Path(sys.argv[1])); s.open(); s.append(['dead']);"
        "(Path(sys.argv[1]) / 'x-000000.tmp').write_bytes(b'')"
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True)
    taken = list(spool.orphans(tmp_path, own="nobody"))
    assert [r.read()[0] for r in taken] == [[["dead"]]]
    assert not (tmp_path / "x-000000.tmp").exists()  # a leftover temporary file is removed
    for reader in taken:
        reader.close(delete=True)
    # the live process's file is not taken, nor its own by the process that owns it
    assert list(spool.orphans(tmp_path, own="nobody")) == []
    assert list(spool.orphans(tmp_path, own=live.prefix)) == []
    assert [p.name for p in tmp_path.iterdir()] == [live.path(0).name]
    live.close(delete=True)


def test_the_folder_is_per_database(tmp_path: Path) -> None:
    one = spool.directory(tmp_path, "postgresql://a:secret@db:5432/fhir")
    assert one == spool.directory(tmp_path, "postgresql://b:other@db:5432/fhir")
    assert one != spool.directory(tmp_path, "postgresql://a:secret@db:5432/other")
    assert one != spool.directory(tmp_path, "postgresql://a:secret@db2:5432/fhir")
    assert "secret" not in str(one)
