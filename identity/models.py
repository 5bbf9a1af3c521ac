"""The dlib models, loaded once per process on first use.

``face_recognition`` loads every model (HOG detector, 5- and 68-point shape
predictors, the ResNet embedding model, the CNN detector) when it is imported.
Importing the identity package does not import it, so the server starts
quickly; the first face operation in a process -- or a worker process's
initializer -- pays the cost (about 1 s) once.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from typing import Any

_lock = threading.Lock()
_models: Models | None = None


@dataclass(frozen=True)
class Models:
    """Handles to the loaded dlib objects."""

    hog: Any  # dlib.fhog_object_detector (frontal faces, +-30 degrees)
    cnn: Any  # dlib.cnn_face_detection_model_v1 (mmod; any pose, about 3 s per 640x360 on one core)
    landmarks68: Any  # dlib.shape_predictor, 68 points (iBUG 300-W)
    landmarks5: Any  # dlib.shape_predictor, 5 points (what the embedding model was trained with)
    encoder: Any  # dlib.face_recognition_model_v1 (ResNet, 128-d)


def get() -> Models:
    """The models of this process (loading them the first time)."""
    global _models
    if _models is None:
        with _lock:
            if _models is None:
                with warnings.catch_warnings():
                    # face_recognition_models still imports pkg_resources
                    warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
                    import face_recognition.api as api
                _models = Models(
                    hog=api.face_detector,
                    cnn=api.cnn_face_detector,
                    landmarks68=api.pose_predictor_68_point,
                    landmarks5=api.pose_predictor_5_point,
                    encoder=api.face_encoder,
                )
    return _models
