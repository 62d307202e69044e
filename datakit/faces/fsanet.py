"""FSA-Net head pose (yaw, pitch, roll) from a face crop, two ONNX variants averaged."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from datakit.faces.base import Face

#: Each side of the detector box grows by this fraction of the box size before the 64x64 resize.
#: FSA-Net's authors grow their SSD/MTCNN box by 0.6 per side and clip to the frame (their demo). YuNet's
#: box is taller (it reaches the forehead), and on the labelled Hamilton profile (frames 20-51, 39 faces
#: facing frame-left at ~80-90 deg) 0.4 puts 97% of them above 60 deg (min 55) against 95% (min 44) at
#: 0.6, with frontal stills within +-17 deg for both.
FSANET_MARGIN = 0.4


class FSANetPose:
    """FSA-Net (omasaht/headpose-fsanet-pytorch ONNX exports) through onnxruntime, one thread each.

    FSA-Net's native yaw sign was measured on the labelled case (Alex Lacamoire in profile facing
    frame-left in ``hamilton_white_house.mp4``): about +75 to +85 deg, i.e. already our convention
    (yaw > 0 points to the image left), so yaw passes through unchanged. Roll too: obama.jpg rotated 20 deg
    clockwise reads +19.8 (upright +0.4). Pitch is passed through as FSA-Net gives it; its sign was not
    checked on labelled footage (no labelled up/down case in the shared media).
    """

    name = "fsanet-1x1+var"

    def __init__(self, model_paths: tuple[Path, ...], margin: float = FSANET_MARGIN) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # many actors share the CPU; a 64x64 net gains nothing from more
        options.inter_op_num_threads = 1
        self._sessions = [
            ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]) for path in model_paths
        ]
        self._input_name = self._sessions[0].get_inputs()[0].name
        self.margin = margin

    def crop(self, frame_bgr: np.ndarray, bbox: tuple[float, float, float, float]) -> np.ndarray:
        """The 64x64 BGR network input for one box: grown by ``margin`` per side, clipped to the frame."""
        height, width = frame_bgr.shape[:2]
        x0, y0, x1, y1 = bbox
        dx, dy = self.margin * (x1 - x0), self.margin * (y1 - y0)
        left, top = max(round(x0 - dx), 0), max(round(y0 - dy), 0)
        right, bottom = min(round(x1 + dx), width), min(round(y1 + dy), height)
        if right - left < 2 or bottom - top < 2:
            return np.zeros((64, 64, 3), np.uint8)
        return cv2.resize(frame_bgr[top:bottom, left:right], (64, 64))

    def estimate(self, frame_bgr: np.ndarray, faces: list[Face]) -> None:
        """Fill yaw/pitch/roll (degrees) of ``faces`` in place, one batched run per model."""
        if not faces:
            return
        crops = np.stack([self.crop(frame_bgr, face.bbox) for face in faces])  # (N, 64, 64, 3) BGR
        batch = (crops.transpose(0, 3, 1, 2).astype(np.float32) - 127.5) / 128.0  # (N, 3, 64, 64)
        angles = np.mean([self._run(session, batch) for session in self._sessions], axis=0)  # (N, 3)
        for face, (yaw, pitch, roll) in zip(faces, angles, strict=True):
            face.yaw_deg, face.pitch_deg, face.roll_deg = float(yaw), float(pitch), float(roll)

    def _run(self, session, batch: np.ndarray) -> np.ndarray:
        # The exports have a fixed batch of 1.
        return np.concatenate([session.run(None, {self._input_name: item[None]})[0] for item in batch])
