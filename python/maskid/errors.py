"""Errors a user can cause. The CLI turns each into one line on stderr and its exit code.

Exit codes (also in the README):
  0 success, 1 internal error (a bug: please report), 2 bad command line,
  3 unreadable/invalid image, 4 no face (or ambiguous faces), 5 gallery problem,
  6 model problem, 7 unknown identity name.
"""

from __future__ import annotations


class MaskidError(Exception):
    """Base class: a problem with the user's input or files, not a bug."""

    exit_code = 1


class UsageError(MaskidError):
    exit_code = 2


class ImageError(MaskidError):
    """The file is missing, unreadable, not an image, truncated or absurdly large."""

    exit_code = 3


class NoFaceError(MaskidError):
    """No face (or not exactly the one face required) was found."""

    exit_code = 4


class GalleryError(MaskidError):
    """The gallery is missing, empty, corrupt, locked or made by another embedder."""

    exit_code = 5


class ModelError(MaskidError):
    """A model file is missing, corrupt or has the wrong shape."""

    exit_code = 6


class UnknownIdentityError(MaskidError):
    """A name that is not in the gallery, or that is not a valid name."""

    exit_code = 7
