"""Progress a person can read: `lipsync-service run` and `lipsync-client` show a bar on a terminal and plain lines
(no control characters) elsewhere; the job reports its expected frame count by the output length rules."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from lipsync_service.cli import main as service_main
from lipsync_service.client import cli as client_cli
from lipsync_service.client.cli import ProgressDisplay
from lipsync_service.client.stream import FragmentCounter
from lipsync_service.core.processor import PassThroughProcessor
from lipsync_service.job import ExtendAudio, ExtendVideo, JobConfig
from lipsync_service.pipeline import JobProgress, run_files
from lipsync_service.settings import Settings
from tests import synth

CONTROL = re.compile(r"[\r\x1b\x00-\x08\x0b-\x1f]")  # anything but plain text and newlines


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("progress-media")
    return {
        "video": synth.make_video(folder / "clip.mp4", seconds=2.0, fps=25, size=(64, 64)),
        "fragmented": synth.make_video(folder / "frag.mp4", seconds=2.0, fps=25, size=(64, 64), layout="fragmented"),
        1.0: synth.make_wav(folder / "speech_1.wav", seconds=1.0),
        2.0: synth.make_wav(folder / "speech_2.wav", seconds=2.0),
        3.0: synth.make_wav(folder / "speech_3.wav", seconds=3.0),
    }


def test_plain_lines_come_every_interval_without_control_characters() -> None:
    out, clock = io.StringIO(), _Clock()
    display = ProgressDisplay(out, "run", unit=" frames", interval_s=10.0, clock=clock)
    display.update(1, 100)  # the first update is shown at once
    clock.now += 5
    display.update(20, 100)  # within the interval: not shown
    clock.now += 5
    display.update(45, 100)
    clock.now += 1
    display.update(46, 100)
    display.close(done=True)  # the final state is always shown
    lines = out.getvalue().splitlines()
    assert not CONTROL.search(out.getvalue())
    assert len(lines) == 3, lines
    assert lines[0].startswith("run: 1/100 frames (1%), ")
    assert re.fullmatch(r"run: 45/100 frames \(45%\), 4\.50 frames/s, elapsed 00:10, ETA 00:12", lines[1]), lines[1]
    assert lines[2].startswith("run: 46/46 frames (100%), ")


def test_unknown_total_shows_count_and_speed() -> None:
    out, clock = io.StringIO(), _Clock()
    display = ProgressDisplay(out, "upload", unit="B", unit_scale=True, clock=clock)
    clock.now += 2
    display.update(3_000_000, None, "received 0.0 MB, 0 frames")
    assert out.getvalue() == "upload: 3.00MB, 1.50MB/s, elapsed 00:02, received 0.0 MB, 0 frames\n"


def test_a_terminal_gets_a_bar() -> None:
    out = _Terminal()
    display = ProgressDisplay(out, "run", unit=" frames")
    for n in range(1, 76):
        display.update(n, 50 if n <= 50 else 75)  # an estimate corrected on the way
    display.close(done=True)
    text = out.getvalue()
    assert "\r" in text, "a bar redraws in place"
    assert re.search(r"run: 100%\|[^|]+\| 75/75 \[", text), text[-300:]
    assert "frames/s" in text
    assert text.endswith("\n")


def test_quiet_writes_nothing() -> None:
    out = _Terminal()
    display = ProgressDisplay(out, "run", unit=" frames", enabled=False)
    display.update(1, 2)
    display.close(done=True)
    assert out.getvalue() == ""


# Speech length, job config -> output frames of the 2 s, 50-frame clip (docs/protocol.md#output-length).
LENGTH_CASES = {
    "audio-shorter": (1.0, JobConfig(), 25),
    "audio-shorter-silence": (1.0, JobConfig(extend_audio=ExtendAudio.SILENCE), 50),
    "audio-longer-forward": (3.0, JobConfig(extend_video=ExtendVideo.FORWARD), 75),
    "audio-longer": (3.0, JobConfig(), 50),
}


@pytest.mark.parametrize("case", sorted(LENGTH_CASES))
def test_job_progress_reports_the_output_length_rules_total(tmp_path, media, case) -> None:
    audio_s, job_config, frames = LENGTH_CASES[case]
    seen: list[JobProgress] = []
    result = run_files(job_config, Settings(), PassThroughProcessor(), media["video"], media[audio_s],
                       tmp_path / "out.mp4", on_progress=seen.append)
    assert result.frames == frames
    assert [p.frames for p in seen] == list(range(1, frames + 1))
    # Before the speech is decoded the total is the header's frame count; from then on the exact output length.
    assert {p.total for p in seen} <= {50, frames}
    assert seen[-1].total == frames
    assert seen[0].video.frame_count == 50 and seen[0].video.fps == 25


def test_fragmented_input_total_is_estimated_from_its_duration(tmp_path, media) -> None:
    seen: list[JobProgress] = []
    run_files(JobConfig(), Settings(), PassThroughProcessor(), media["fragmented"], media[2.0],
              tmp_path / "out.mp4", on_progress=seen.append)
    assert seen[0].video.frame_count is None, "a fragmented MP4's header has no frame count"
    assert {p.total for p in seen} == {50}


def test_run_without_a_terminal_prints_plain_progress_lines(tmp_path, media, capsys) -> None:
    output = tmp_path / "out.mp4"
    code = service_main(["run", "--video", str(media["video"]), "--audio", str(media[3.0]), "--output", str(output),
                         "--processor", "passthrough", "--extend-video", "forward"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert not CONTROL.search(err), repr(err)
    assert re.search(r"^run: 75/75 frames \(100%\), [\d.]+ frames/s, elapsed \d\d:\d\d, ETA 00:00$", err, re.M), err
    assert f"75 frames (3.00 s of video) written to {output}" in err


def test_fragment_counter_counts_video_frames_in_any_chunking(tmp_path, media) -> None:
    output = tmp_path / "out.mp4"
    result = run_files(JobConfig(extend_video=ExtendVideo.FORWARD), Settings(), PassThroughProcessor(),
                       media["video"], media[3.0], output)
    data = output.read_bytes()
    for size in (1, 7, 4096, len(data)):
        counter = FragmentCounter()
        counts = [counter.feed(data[i : i + size]) for i in range(0, len(data), size)]
        assert counts[-1] == result.frames == 75
        assert counts == sorted(counts)


def test_client_progress_without_a_terminal(tmp_path, media, capsys) -> None:
    from tests.functional.helpers import running_server

    output = tmp_path / "out.mp4"
    with running_server() as server:
        code = client_cli.main(["--target", server.target, "--video-input", str(media["video"]), "--audio-input",
                                str(media[2.0]), "--output", str(output)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert not CONTROL.search(err), repr(err)
    size = output.stat().st_size / 1e6
    final = re.search(r"^lipsync-client upload: [\d.]+kB/[\d.]+kB \(100%\), .*, received (\S+) MB, (\d+) frames$",
                      err, re.M)
    assert final, err
    assert float(final.group(1)) == pytest.approx(size, abs=0.05) and final.group(2) == "50"
