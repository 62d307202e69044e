"""View bins: the head-pose classes that name reference view slots.

Sign convention (tested on labelled footage): ``yaw_deg > 0`` means the face points towards the image
left, so ``left`` / ``left_profile`` are faces looking to the left of the picture (the subject turned to
their own right). Bins on |yaw|: ``frontal`` below 20 deg, three-quarter ``left``/``right`` 20-60 deg,
``left_profile``/``right_profile`` above 60 deg. The edges are configurable.
"""

from __future__ import annotations

from dataclasses import dataclass

from datakit.schema import VIEWS


@dataclass(frozen=True, slots=True, kw_only=True)
class ViewBins:
    """Yaw edges (degrees) between frontal, three-quarter and profile."""

    frontal_max_deg: float = 20.0  #: |yaw| below this is frontal
    profile_min_deg: float = 60.0  #: |yaw| above this is a profile

    def __call__(self, yaw_deg: float | None) -> str | None:
        """The view bin of a yaw angle; None when the pose is unknown."""
        if yaw_deg is None or yaw_deg != yaw_deg:  # None or NaN
            return None
        magnitude = abs(yaw_deg)
        if magnitude < self.frontal_max_deg:
            return "frontal"
        side = "left" if yaw_deg > 0 else "right"
        return side if magnitude <= self.profile_min_deg else f"{side}_profile"


assert set(VIEWS) == {"frontal", "left", "right", "left_profile", "right_profile"}
