"""Is a head turn a real 3D turn or a flat picture being tilted?

Turning a printed photo (or a phone showing one) about its vertical axis
changes the image of the face by a single homography: every point of a flat
picture moves as the plane does. A real head is not flat: when it turns, the
nose, cheeks and ears move differently (parallax), and no homography maps the
frontal face onto the turned one.

:func:`planar_fit` matches ORB features between the face patch of the
frontal (baseline) frame and of the turned frame and fits a homography with
RANSAC: the fraction of matches it explains is near 1 for a flat picture and
low for a real head. On the shared clips a real turn of 20-30 degrees gives
0.15-0.30; a frame of the same clips warped as a photo tilted by 20-40
degrees, close to the camera, gives 0.78-0.99 (see ``tests/test_identity_liveness.py``).
Landmarks alone are not enough: the 68-point model places points as if on a
3D face even when it looks at a tilted photo, so a strongly tilted picture
can fake a yaw ratio change of 0.2.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from .face_detect import FaceBox

#: side of the square gray face patch compared, pixels
PATCH = 192
#: how much wider than the face box the patch is (keeps the jaw line and ears)
MARGIN = 0.15
#: fewer matches than this: no verdict
MIN_MATCHES = 12
#: RANSAC reprojection tolerance on the patch, pixels
TOLERANCE = 2.5

_orb: Any = None


def face_patch(rgb: np.ndarray, box: FaceBox) -> np.ndarray:
    """The gray face patch (``PATCH`` x ``PATCH``) around ``box``."""
    h, w = rgb.shape[:2]
    mx, my = int(box.width * MARGIN), int(box.height * MARGIN)
    top, bottom = max(0, box.top - my), min(h, box.bottom + my)
    left, right = max(0, box.left - mx), min(w, box.right + mx)
    gray = cv2.cvtColor(np.ascontiguousarray(rgb[top:bottom, left:right]), cv2.COLOR_RGB2GRAY)
    return cv2.resize(gray, (PATCH, PATCH), interpolation=cv2.INTER_AREA)


def planar_fit(baseline: np.ndarray, current: np.ndarray) -> float | None:
    """Fraction (0-1) of feature matches one homography explains; None if too few matches."""
    global _orb
    if _orb is None:
        _orb = cv2.ORB.create(nfeatures=600, fastThreshold=10)
    ka, da = _orb.detectAndCompute(baseline, None)
    kb, db = _orb.detectAndCompute(current, None)
    if da is None or db is None or len(ka) < MIN_MATCHES or len(kb) < MIN_MATCHES:
        return None
    matches = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True).match(da, db)
    if len(matches) < MIN_MATCHES:
        return None
    pa = np.array([ka[m.queryIdx].pt for m in matches], dtype=np.float32)
    pb = np.array([kb[m.trainIdx].pt for m in matches], dtype=np.float32)
    cv2.setRNGSeed(12345)  # RANSAC's sampling: the same frames give the same verdict
    _, inliers = cv2.findHomography(pa, pb, cv2.RANSAC, TOLERANCE, maxIters=2000, confidence=0.995)
    if inliers is None:
        return 0.0
    return float(inliers.mean())
