"""Presence during a call: missing, back, not alone, someone else -- as timeline events."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from PIL import Image

from identity import PresenceMonitor
from identity.analysis import FrameAnalysis, analyze_frame
from identity.presence import check_presence
from identity.video import read_frames

from .helpers import shared_data


def frame(video: str, index: int) -> np.ndarray:
    return next(iter(read_frames(shared_data(f"videos/{video}.mp4"), indices={index}))).rgb


def play(
    monitor: PresenceMonitor, script: list[tuple[float, FrameAnalysis]]
) -> list[tuple[str, float]]:
    """Feed the monitor twice a second; returns (kind, t) of every event."""
    events = []
    for t, analysis in script:
        events += [(e.kind, e.t) for e in monitor.update(replace(analysis, t=t))]
    return events


def test_customer_presence_events_on_the_timeline():
    customer = frame("d13", 60)
    reference = analyze_frame(frame("d13", 200), embed=True).embedding
    present = analyze_frame(customer, embed=True)
    empty = analyze_frame(np.full((480, 640, 3), 90, np.uint8), embed=True)
    two = analyze_frame(
        np.asarray(
            Image.open(shared_data("faces/face_recognition/examples/two_people.jpg")).convert("RGB")
        ),
        embed=True,
    )
    stranger = analyze_frame(frame("d18", 30), embed=True)
    assert (present.face_count, empty.face_count, two.face_count, stranger.face_count) == (
        1,
        0,
        2,
        1,
    )

    timeline: list[tuple[float, FrameAnalysis]] = []
    t = 0.0
    for analysis, seconds in [
        (present, 4),
        (empty, 5),
        (present, 2),
        (two, 1.5),
        (present, 2),
        (stranger, 3),
        (present, 2),
    ]:
        for _ in range(int(seconds * 2)):
            timeline.append((t, analysis))
            t += 0.5
    monitor = PresenceMonitor(reference, subject="customer", embed_every_s=0)
    events = play(monitor, timeline)
    kinds = [k for k, _ in events]
    assert kinds == [
        "face_missing",
        "face_returned",
        "multiple_faces",
        "multiple_faces_ended",
        "face_mismatch",
        "face_match_restored",
    ]
    at = dict(events)
    assert at["face_missing"] == 7.0  # last seen at 3.5 s: missing for more than 3 s at 7 s
    assert at["face_returned"] == 9.0
    assert at["multiple_faces"] == 11.0
    assert at["face_mismatch"] == 15.5  # someone else from 14.5 s: the third check in a row
    assert monitor.status()["mismatch"] is False and monitor.status()["faces"] == 1


def test_presence_asks_for_embeddings_sparingly():
    reference = np.zeros(128, np.float32)
    monitor = PresenceMonitor(reference, embed_every_s=2.0)
    present = analyze_frame(frame("d13", 60), embed=True)
    asked = []
    for i in range(10):
        t = i * 0.5
        want = monitor.wants_embedding(t)
        asked.append(want)
        monitor.update(replace(present, t=t, embedding=present.embedding if want else None))
    # the first check, then (the face being far from the zero reference) every check until the
    # mismatch is confirmed and while it lasts
    assert all(asked)
    matching = PresenceMonitor(present.embedding, embed_every_s=2.0)
    asked = []
    for i in range(10):
        t = i * 0.5
        want = matching.wants_embedding(t)
        asked.append(want)
        matching.update(replace(present, t=t, embedding=present.embedding if want else None))
    assert asked == [True, False, False, False, True, False, False, False, True, False]


def test_agent_video_without_reference_reports_only_missing_and_multiple():
    agent = PresenceMonitor(None, subject="agent")
    present = analyze_frame(frame("d0", 10))
    empty = analyze_frame(np.zeros((480, 640, 3), np.uint8))
    assert empty.quality.codes == ("too_dark", "no_face")
    assert not agent.wants_embedding(0.0)
    script = [(i * 0.5, present) for i in range(4)] + [(2 + i * 0.5, empty) for i in range(10)]
    events = [e for t, a in script for e in agent.update(replace(a, t=t))]
    assert [(e.kind, e.subject) for e in events] == [("face_missing", "agent")]
    assert events[0].detail == {"last_seen_t": 1.5}
    assert events[0].as_dict()["kind"] == "face_missing"


def test_multi_face_part_of_the_hamilton_clip():
    """The end of the clip shows three or four people in the audience, in three-quarter view.
    HOG (the live detector) looks for frontal faces and sees one at most; the CNN detector
    (~3 s a frame on one core: for audits, not for every live frame) sees them all."""
    rgb = frame("short_hamilton_clip", 245)
    hog = analyze_frame(rgb)
    assert hog.face_count <= 1
    cnn = analyze_frame(rgb, detector="cnn")
    assert cnn.face_count >= 3 and cnn.quality.reason == "multiple_faces"
    monitor = PresenceMonitor(None, subject="customer")
    events = monitor.update(replace(cnn, t=8.2))
    assert [(e.kind, e.detail["faces"]) for e in events] == [("multiple_faces", cnn.face_count)]


# -- the presence checks the server runs: BlazeFace, a tracked face, embeddings on track breaks


def camera(rgb: np.ndarray) -> np.ndarray:
    """A clip's frame as a 640x480 camera shows it: scaled to fit, on a gray background."""
    h, w = rgb.shape[:2]
    scale = min(480 / h, 640 / w)
    size = (round(w * scale), round(h * scale))
    fitted = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))
    out = np.full((480, 640, 3), 90, np.uint8)
    y, x = (480 - size[1]) // 2, (640 - size[0]) // 2
    out[y : y + size[1], x : x + size[0]] = fitted
    return out


def sampled(video: str, every_s: float = 0.5, start_s: float = 0.0) -> list[np.ndarray]:
    """The frames a presence check twice a second would take, as the camera shows them."""
    frames, due = [], start_s
    for f in read_frames(shared_data(f"videos/{video}.mp4")):
        if f.t >= due:
            frames.append(camera(f.rgb))
            due += every_s
    return frames


def run_checks(
    monitor: PresenceMonitor, frames: list[np.ndarray], t0: float = 0.0
) -> list[tuple[str, float]]:
    """Each frame checked as the server does (request, check, update), 0.5 s apart."""
    events = []
    for i, rgb in enumerate(frames):
        t = t0 + i * 0.5
        analysis = check_presence(rgb, t, i, monitor.request(t))
        events += [(e.kind, e.t) for e in monitor.update(analysis)]
    return events


def test_fast_presence_flags_missing_several_and_a_different_face():
    d13 = sampled("d13")
    crowd = sampled("short_hamilton_clip", start_s=6.2)  # 2-4 people near the end
    d12 = sampled("d12")  # another man
    empty = [np.full((480, 640, 3), 90, np.uint8)] * 9
    reference = analyze_frame(d13[3], embed=True).embedding
    # ... then he leaves (1 s: too short to count as missing) and another man sits down
    script = d13[:8] + empty + d13[8:12] + crowd + d13[12:16] + empty[:2] + d12
    monitor = PresenceMonitor(reference, subject="customer")
    events = run_checks(monitor, script)
    assert [k for k, _ in events] == [
        "face_missing",
        "face_returned",
        "multiple_faces",
        "multiple_faces_ended",
        "face_mismatch",
    ]
    at = dict(events)
    assert at["face_missing"] == 7.0  # last seen at 3.5 s: missing for more than 3 s at 7 s
    assert at["face_returned"] == 8.5
    d12_from = 0.5 * (8 + 9 + 4 + len(crowd) + 4 + 2)
    # the new face breaks the track: embedded at once, confirmed by the next two checks
    assert at["face_mismatch"] == d12_from + 1.0
    assert monitor.status()["mismatch"] and monitor.last_distance > monitor.threshold


def test_a_face_swapped_in_place_is_caught_by_the_periodic_embedding():
    """d13 cut straight to d12, both centred: if the boxes overlap the track holds, and the
    embedding every ``embed_every_s`` catches the other man."""
    d13, d12 = sampled("d13"), sampled("d12")
    reference = analyze_frame(d13[3], embed=True).embedding
    monitor = PresenceMonitor(reference, embed_every_s=4.0)
    events = run_checks(monitor, d13[:12] + d12)
    assert [k for k, _ in events] == ["face_mismatch"]
    assert 6.0 < events[0][1] <= 6.0 + 4.0 + 1.0


def test_same_person_through_head_turns_is_not_flagged_and_rarely_embedded():
    d12 = sampled("d12")  # head turns to both sides
    reference = analyze_frame(camera(frame("d12", 10)), embed=True).embedding
    monitor = PresenceMonitor(reference)
    assert run_checks(monitor, d12) == []
    # one track through the turns; embedded when it began and every 8 s since, not per check
    assert monitor.tracks == 1
    assert monitor.embeddings == 1 + int(0.5 * (len(d12) - 1) // monitor.embed_every_s)
    assert len(d12) >= 14 and monitor.last_distance is not None

    long = sampled("d13")  # 12 s: 24 checks
    monitor = PresenceMonitor(analyze_frame(long[3], embed=True).embedding)
    assert run_checks(monitor, long) == []
    assert (monitor.tracks, monitor.embeddings) == (1, 2)


def test_agent_checks_never_embed():
    monitor = PresenceMonitor(None, subject="agent")
    request = monitor.request(0.0)
    assert request.embed == "no"
    a = check_presence(sampled("d0")[0], 0.0, 0, request)
    assert a.face_count == 1 and a.embedding is None
    monitor.update(a)
    assert monitor.embeddings == 0 and monitor.tracks == 1
