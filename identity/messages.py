"""What the customer (and the agent) is told, in Chinese and English, keyed by stable codes.

Every reason the identity package gives -- a quality gate, a liveness failure,
a bad upload -- has a code that never changes (the server and the browser key
on it) and a short sentence in both languages that a customer understands.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Text:
    """One customer-facing sentence in both languages."""

    en: str
    zh: str


#: code -> text. Codes are stable API; wording may improve.
TEXTS: dict[str, Text] = {
    # uploads
    "bad_image": Text("The file is not a usable image.", "文件不是可用的图片。"),
    "image_too_large": Text("The image is too large.", "图片太大。"),
    "image_too_small": Text("The image is too small.", "图片太小。"),
    # quality gates
    "no_face": Text("No face found. Please face the camera.", "未检测到人脸，请正对摄像头。"),
    "multiple_faces": Text(
        "More than one face is visible. Please make sure you are alone in the picture.",
        "画面中有多张人脸，请确保画面中只有您本人。",
    ),
    "face_too_small": Text(
        "Your face is too small. Please move closer to the camera.",
        "人脸太小，请靠近摄像头。",
    ),
    "too_dark": Text(
        "The picture is too dark. Please turn on a light or face a window.",
        "画面太暗，请打开灯光或面向光源。",
    ),
    "too_bright": Text(
        "The picture is too bright. Please avoid strong light behind or on you.",
        "画面过亮，请避开强光直射或逆光。",
    ),
    "blurred": Text(
        "The picture is blurred. Please hold still and clean the camera lens.",
        "画面模糊，请保持不动并擦拭摄像头。",
    ),
    "face_not_centered": Text(
        "Please move your face to the centre of the picture.", "请将面部移到画面中央。"
    ),
    # verification
    "match": Text("The face matches the identity document.", "人脸与证件照片一致。"),
    "mismatch": Text("The face does not match the identity document.", "人脸与证件照片不一致。"),
    "uncertain": Text(
        "The automatic check could not decide. The agent will compare your face with your ID.",
        "系统未能自动确认，坐席将为您人工核对证件。",
    ),
    "no_video": Text(
        "No picture from your camera yet. Please check that it is on.",
        "暂未收到您的摄像头画面，请检查摄像头是否开启。",
    ),
    "photo_too_small": Text(
        "The portrait on the ID photo is too small to compare. Please photograph the ID from closer.",
        "证件照片中的人像太小，无法比对，请靠近证件重新拍摄。",
    ),
    # liveness
    "blink": Text("Please blink.", "请眨眨眼。"),
    "turn_left": Text("Please turn your head to your left.", "请向左转头。"),
    "turn_right": Text("Please turn your head to your right.", "请向右转头。"),
    "timeout": Text(
        "The action was not seen in time. Please try again.", "未在规定时间内完成动作，请重试。"
    ),
    "frozen_video": Text(
        "The video is frozen. Please check your camera and try again.",
        "视频画面静止，请检查摄像头后重试。",
    ),
    "flat_image": Text(
        "The head turn looked like a flat picture. Please turn your own head.",
        "转头动作像是平面图片，请本人转动头部。",
    ),
    "face_changed": Text(
        "A different face appeared during the check. Please try again alone.",
        "检测过程中出现了不同的人脸，请本人单独重试。",
    ),
    "not_reference": Text(
        "The face does not match the verified person.", "人脸与已核验的本人不一致。"
    ),
    "face_not_frontal": Text(
        "Please look straight at the camera before you start.", "开始前请正视摄像头。"
    ),
    "incomplete": Text("The video ended before the check was finished.", "视频在检测完成前结束。"),
    "passed": Text("Liveness check passed.", "活体检测通过。"),
}


def text(code: str) -> Text:
    """The sentence for ``code`` (a generic one for an unknown code)."""
    return TEXTS.get(code, Text("The check could not be completed.", "检测未能完成。"))
