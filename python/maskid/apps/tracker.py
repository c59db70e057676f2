"""Face tracks across video frames, so the embedder runs when it has something new to say.

A camera at a door sees the same face for seconds. Embedding it on every frame wastes most of
the compute and makes the name flicker when one frame scores badly. The tracker links each
frame's detections to the previous ones by box overlap (IoU, greedy, best pair first), asks
for an embedding when a track appears, every `embed_every` frames after that, or when its box
has moved or changed size a lot, and names the track by voting over its recent matches.

Box overlap cannot tell two people apart when one replaces the other at the same spot (a cut,
or a queue at a door). So each track also keeps its recent descriptors, and a new descriptor
far from their mean (`similarity_to_recent` below the caller's margin) means someone else:
the caller ends the track and `restart`s it as a new one.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field

import numpy as np

from maskid.face import Face, iou


@dataclass
class Track:
    """One face followed over frames. `face` is its latest detection (box, landmarks)."""

    id: int
    face: Face
    first_frame: int
    last_seen: int
    embedded_frame: int | None = None
    embedded_box: np.ndarray | None = None
    votes: deque[tuple[str | None, float]] = field(default_factory=deque)
    descriptors: deque[np.ndarray] = field(default_factory=deque)  # recent, L2-normalised
    reported: bool = False  # an event has named this track
    reported_identity: str | None = None  # the identity that event gave

    @property
    def box(self) -> np.ndarray:
        return self.face.box

    @property
    def identity(self) -> str | None:
        """The most frequent identity among recent matches (None: unknown); ties go to the
        most recent. None until the track has been embedded once."""
        if not self.votes:
            return None
        counts = Counter(name for name, _ in self.votes)
        best = max(counts.values())
        for name, _ in reversed(self.votes):
            if counts[name] == best:
                return name
        return None  # unreachable: votes is not empty

    @property
    def score(self) -> float | None:
        """Mean best score of the recent matches that voted for `identity`."""
        if not self.votes:
            return None
        name = self.identity
        scores = [s for n, s in self.votes if n == name]
        return float(np.mean(scores))

    @property
    def recognized(self) -> bool:
        return bool(self.votes)


class IouTracker:
    """Greedy IoU tracker with embedding scheduling and identity voting.

    iou_match: least IoU between a track's box and a detection to be the same face.
    max_missed: detection rounds a track survives unseen before it is dropped.
    embed_every: frames between two embeddings of a track that keeps still.
    move_iou: re-embed when the box overlaps the last embedded box less than this.
    votes: how many recent matches name the track.
    max_refresh: re-embeddings of known tracks per frame (moved ones first, then the
        stalest); new tracks are always embedded at once. Spreads the work of many faces that
        appeared together, which would otherwise all fall due on the same frame.
    """

    def __init__(
        self,
        iou_match: float = 0.3,
        max_missed: int = 2,
        embed_every: int = 15,
        move_iou: float = 0.5,
        votes: int = 5,
        max_refresh: int = 2,
    ) -> None:
        if not 0 < iou_match < 1 or not 0 < move_iou <= 1:
            raise ValueError("iou_match and move_iou must lie in (0, 1]")
        if embed_every < 1 or votes < 1 or max_refresh < 1 or max_missed < 0:
            raise ValueError("embed_every, votes and max_refresh must be >= 1, max_missed >= 0")
        self.iou_match = iou_match
        self.max_missed = max_missed
        self.embed_every = embed_every
        self.move_iou = move_iou
        self.votes = votes
        self.max_refresh = max_refresh
        self.tracks: list[Track] = []
        self._next_id = 1
        self._rounds_missed: dict[int, int] = {}

    def update(self, faces: list[Face], frame: int) -> tuple[list[Track], list[Track]]:
        """Link this frame's detections to the tracks. Returns (new tracks, dropped tracks)."""
        matched_tracks: set[int] = set()
        matched_faces: set[int] = set()
        if self.tracks and faces:
            overlap = iou(np.stack([t.box for t in self.tracks]), np.stack([f.box for f in faces]))
            # Best pairs first: a face moving past another keeps its own track.
            for flat in np.argsort(-overlap, axis=None):
                ti, fi = np.unravel_index(flat, overlap.shape)
                if overlap[ti, fi] < self.iou_match:
                    break
                if ti in matched_tracks or fi in matched_faces:
                    continue
                matched_tracks.add(int(ti))
                matched_faces.add(int(fi))
                track = self.tracks[ti]
                track.face = _carry(track.face, faces[fi])
                track.last_seen = frame
                self._rounds_missed[track.id] = 0
        dropped = []
        for i, track in enumerate(self.tracks):
            if i not in matched_tracks:
                self._rounds_missed[track.id] = self._rounds_missed.get(track.id, 0) + 1
                if self._rounds_missed[track.id] > self.max_missed:
                    dropped.append(track)
        for track in dropped:
            self._rounds_missed.pop(track.id, None)
        kept = [t for t in self.tracks if t not in dropped]
        new = [
            Track(id=self._new_id(), face=f, first_frame=frame, last_seen=frame)
            for i, f in enumerate(faces)
            if i not in matched_faces
        ]
        self.tracks = kept + new
        return new, dropped

    def due(self, frame: int) -> list[Track]:
        """Tracks seen in this frame that need a (new) embedding: every new track, and up to
        `max_refresh` known ones that moved or went stale."""
        new, refresh = [], []
        for t in self.tracks:
            if t.last_seen != frame:
                continue  # not detected now: no fresh landmarks to align on
            if t.embedded_frame is None or t.embedded_box is None:
                new.append(t)
                continue
            age = frame - t.embedded_frame
            moved = iou(t.box, t.embedded_box)[0, 0] < self.move_iou  # or resized
            if moved or age >= self.embed_every:
                refresh.append((not moved, -age, t.id, t))
        refresh.sort(key=lambda item: item[:3])
        return new + [item[3] for item in refresh[: self.max_refresh]]

    def record(
        self,
        track: Track,
        identity: str | None,
        score: float,
        frame: int,
        descriptor: np.ndarray | None = None,
    ) -> None:
        """Note a match for the track (identity None: below the threshold) and the descriptor
        it came from (kept among the track's `votes` most recent ones)."""
        track.embedded_frame = frame
        track.embedded_box = track.box.copy()
        track.votes.append((identity, float(score)))
        while len(track.votes) > self.votes:
            track.votes.popleft()
        if descriptor is not None:
            d = np.asarray(descriptor, np.float32).reshape(-1)
            track.descriptors.append(d / max(float(np.linalg.norm(d)), 1e-12))
            while len(track.descriptors) > self.votes:
                track.descriptors.popleft()

    @staticmethod
    def similarity_to_recent(track: Track, descriptor: np.ndarray) -> float | None:
        """Cosine similarity of `descriptor` to the mean of the track's recent descriptors
        (None for a track not embedded yet)."""
        if not track.descriptors:
            return None
        mean = np.mean(np.stack(track.descriptors), axis=0)
        d = np.asarray(descriptor, np.float32).reshape(-1)
        denom = max(float(np.linalg.norm(mean) * np.linalg.norm(d)), 1e-12)
        return float(np.dot(mean, d) / denom)

    def restart(self, track: Track, frame: int) -> Track:
        """End `track` and put a new track (new id, no votes, no descriptors) in its place on
        the same detection: someone else now stands where it was. Returns the new track."""
        i = next(k for k, t in enumerate(self.tracks) if t is track)
        old = track.face  # keeps the ended track's last results for its "lost" event
        face = Face(box=old.box.copy(), score=old.score, landmarks=old.landmarks.copy())
        new = Track(id=self._new_id(), face=face, first_frame=frame, last_seen=frame)
        self.tracks[i] = new
        self._rounds_missed.pop(track.id, None)
        self._rounds_missed[new.id] = 0
        return new

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1


def _carry(old: Face, new: Face) -> Face:
    """The new detection, keeping the track's recognition results on it."""
    new.identity, new.match_score, new.matches = old.identity, old.match_score, old.matches
    return new
