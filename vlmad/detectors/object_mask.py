"""Object masks from keypoint matching, and suppression of anomaly scores outside the object.

A test image's keypoints (AKAZE, ORB or BRISK; binary descriptors) are matched against those of a few
normal reference images with a brute-force Hamming matcher and Lowe's ratio test. Keypoints of the
inspected object find partners in the references; keypoints of a featureless or randomly textured
background do not. The test-image locations of the good matches become the object region, and anomaly
scores outside it are multiplied by a factor in [0, 1] (0 removes them, 1 keeps the map unchanged). This
targets false positives on the background, which pixel AP (AUPR) punishes much more than pixel AUROC.

Turning matches into a region (``region="disks"``, the default): a filled disk of radius ``dilate`` times
the shorter image side around every matched keypoint, a morphological closing with a disk of twice that
radius (to bridge the gaps between neighbouring keypoints); blobs holding fewer than ``min_points`` matched
keypoints are dropped (the few stray background matches that pass the ratio test), then every hole is filled
(the outer contours drawn filled). This follows the object's outline, also for objects made of separate
parts (connectors joined by a cable, items lying apart) where the convex hull would cover the table between
them. ``region="hull"`` takes the convex hull of the matched points left after that blob filter, grown by
the same ``dilate`` radius: simpler and gap-free on one compact object, but it covers everything between the
parts. Optional ``ransac=True`` keeps, per reference, only the matches consistent with one homography (rigid
objects: it drops stray background matches, but also correct matches of parts that moved independently).

On the project's LOCO-style synthetic scenes at 256 pixels (AKAZE, 5 references, defaults; 8 test images
per category) the mask covers on average 0.29 (screw bag: its empty plastic has no keypoints) to 0.93
(pushpins) of the object, mean IoU with the object 0.64, and about 4% of the background.

Limits (as document 002 notes for the MVTec screw tip): the mask only covers what also appears in the
normal images, so a broken-off or misplaced part far from the matched object lies outside the mask and
its scores are suppressed with the background; a defect that changes the object's appearance also loses
its matches (on the synthetic scenes 0.53-0.96 of the defect pixels lie inside the mask, per category and
kind of defect; some defects not at all). Factors of about 0.6-0.8 keep some of that signal.

OpenCV 5 moved AKAZE and BRISK to opencv-contrib (``cv2.xfeatures2d``); both places are looked up, and a
build without them is a DetectorError for those methods (ORB is in every build).

When fewer than ``min_matches`` test keypoints are matched (a blank or unrelated image), the mask is the
whole image, so nothing is suppressed, and :class:`MaskInfo` says that it fell back.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from vlmad.detectors.base import Detector, DetectorError, ImageInput, as_image
from vlmad.errors import ConfigError

METHODS = ("akaze", "orb", "brisk")
REGIONS = ("disks", "hull")
DEFAULT_FACTORS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


@dataclass(frozen=True)
class MaskInfo:
    """How one object mask was made.

    - ``n_keypoints``: keypoints found in the test image;
    - ``n_matches``: distinct test keypoints with a good match in at least one reference (after the ratio
      test and, with ``ransac``, the homography check): the points the region is built from;
    - ``fallback``: True when ``n_matches < min_matches`` and the mask is the whole image;
    - ``coverage``: fraction of the image inside the mask (1.0 on fallback).
    """

    n_keypoints: int
    n_matches: int
    fallback: bool
    coverage: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _gray(image: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


_FACTORIES = {"akaze": "AKAZE_create", "orb": "ORB_create", "brisk": "BRISK_create"}


def _feature_detector(method: str) -> Any:
    """A fresh OpenCV detector-descriptor for ``method`` (all three give binary descriptors).

    OpenCV 5 moved AKAZE and BRISK from the main module to ``cv2.xfeatures2d`` (opencv-contrib); both places
    are tried, and a build that has neither is a DetectorError saying what to install.
    """
    import cv2

    name = _FACTORIES[method]
    factory = getattr(cv2, name, None) or getattr(getattr(cv2, "xfeatures2d", None), name, None)
    if factory is None:
        raise DetectorError(
            f"object mask: this OpenCV ({cv2.__version__}) has no {method.upper()}: OpenCV 5 moved AKAZE and "
            "BRISK to opencv-contrib; install opencv-python-headless<5 or opencv-contrib-python-headless, "
            "or use method='orb'"
        )
    if method == "orb":
        return factory(nfeatures=1000)
    return factory()


def _label(item: ImageInput, i: int) -> str:
    return f"image {i}" if isinstance(item, np.ndarray) else str(item)


def _disk(radius: int) -> np.ndarray:
    import cv2

    k = 2 * radius + 1
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))


class ObjectMasker:
    """Object masks of test images from keypoint matches against normal reference images.

    Parameters (stored unchanged; see the module docstring for the region construction):

    - ``method``: ``"akaze"``, ``"orb"`` or ``"brisk"``;
    - ``n_references``: how many normal images (a seeded random choice) keep their keypoints;
    - ``ratio``: Lowe's ratio test, best distance < ``ratio`` x second best;
    - ``min_matches``: fewer matched test keypoints than this means no mask (the whole image);
    - ``dilate``: radius of the disks (and of the hull's margin) as a fraction of the shorter image side;
    - ``min_points``: blobs of the closed disk union holding fewer matched points are dropped (stray
      background matches); the largest blob is always kept;
    - ``region``: ``"disks"`` or ``"hull"``;
    - ``ransac``: keep only matches consistent with one homography per reference;
    - ``seed``: the choice of references.

    ``fit(normal_images)`` keeps the references' keypoint locations and descriptors; ``mask(image)``
    returns an ``(H, W)`` bool mask at the image's size and records how it was made in ``last_info``.
    """

    def __init__(
        self,
        method: str = "akaze",
        n_references: int = 5,
        ratio: float = 0.75,
        min_matches: int = 8,
        dilate: float = 0.06,
        min_points: int = 3,
        region: str = "disks",
        ransac: bool = False,
        seed: int = 0,
    ) -> None:
        key = str(method).strip().lower()
        if key not in METHODS:
            raise ConfigError(f"unknown keypoint method {method!r}; choose one of: {', '.join(METHODS)}")
        if region not in REGIONS:
            raise ConfigError(f"unknown region {region!r}; choose one of: {', '.join(REGIONS)}")
        if n_references < 1:
            raise ConfigError(f"n_references must be at least 1, got {n_references}")
        if not 0 < ratio <= 1:
            raise ConfigError(f"ratio must be in (0, 1], got {ratio}")
        if min_matches < 1:
            raise ConfigError(f"min_matches must be at least 1, got {min_matches}")
        if min_points < 1:
            raise ConfigError(f"min_points must be at least 1, got {min_points}")
        if not 0 <= dilate <= 1:
            raise ConfigError(f"dilate must be in [0, 1] (a fraction of the shorter side), got {dilate}")
        self.method = key
        self.n_references = int(n_references)
        self.ratio = float(ratio)
        self.min_matches = int(min_matches)
        self.dilate = float(dilate)
        self.min_points = int(min_points)
        self.region = region
        self.ransac = bool(ransac)
        self.seed = int(seed)
        self.last_info: MaskInfo | None = None

    def get_params(self) -> dict[str, Any]:
        """Constructor arguments as stored."""
        return {
            "method": self.method,
            "n_references": self.n_references,
            "ratio": self.ratio,
            "min_matches": self.min_matches,
            "dilate": self.dilate,
            "min_points": self.min_points,
            "region": self.region,
            "ransac": self.ransac,
            "seed": self.seed,
        }

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"ObjectMasker({args})"

    # ---- keypoints ----------------------------------------------------------------------------------
    def _features(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """``(points (N, 2) float32 x/y, descriptors (N, D) uint8 or None)`` of one RGB image."""
        kps, desc = _feature_detector(self.method).detectAndCompute(_gray(image), None)
        if desc is None or len(kps) == 0:
            return np.zeros((0, 2), np.float32), None
        return np.array([kp.pt for kp in kps], dtype=np.float32), desc

    def fit(self, normal_images: Sequence[ImageInput]) -> ObjectMasker:
        """Keep keypoints and descriptors of up to ``n_references`` normal images; returns ``self``.

        Zero images is a DetectorError; so is a set of references without a single keypoint.
        """
        if len(normal_images) == 0:
            raise DetectorError("object mask: cannot fit on zero images; give it normal images of the object")
        rng = np.random.default_rng(self.seed)
        n = min(self.n_references, len(normal_images))
        chosen = sorted(int(i) for i in rng.choice(len(normal_images), size=n, replace=False))
        refs: list[tuple[np.ndarray, np.ndarray]] = []
        for i in chosen:
            pts, desc = self._features(as_image(normal_images[i], _label(normal_images[i], i)))
            if desc is not None:
                refs.append((pts, desc))
        if not refs:
            raise DetectorError(
                f"object mask: no {self.method} keypoints in any of the {n} reference images; they look "
                "blank (try another method or images with visible structure)"
            )
        self.reference_indices_ = chosen
        self.references_ = refs
        return self

    def _matched(self, pts: np.ndarray, desc: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """Boolean per test keypoint: a good match in at least one reference (ratio test; with ``ransac``
        also an inlier of that reference's homography, reprojection error under 2% of the longer side)."""
        import cv2

        matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
        good = np.zeros(len(pts), dtype=bool)
        for ref_pts, ref_desc in self.references_:
            if len(ref_desc) < 2:
                continue
            pairs = matcher.knnMatch(desc, ref_desc, k=2)
            q, t = [], []
            for pair in pairs:
                if len(pair) == 2 and pair[0].distance < self.ratio * pair[1].distance:
                    q.append(pair[0].queryIdx)
                    t.append(pair[0].trainIdx)
            if not q:
                continue
            qi = np.array(q)
            if self.ransac:
                if len(qi) < 4:
                    continue
                src = ref_pts[np.array(t)].reshape(-1, 1, 2)
                dst = pts[qi].reshape(-1, 1, 2)
                _, inl = cv2.findHomography(src, dst, cv2.RANSAC, 0.02 * max(shape))
                if inl is None:
                    continue
                qi = qi[inl.reshape(-1).astype(bool)]
            good[qi] = True
        return good

    def _region(self, pts: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """The object region of the matched test keypoints ``pts`` (see the module docstring)."""
        import cv2

        h, w = shape
        r = max(1, round(self.dilate * min(h, w)))
        xy = np.round(pts).astype(np.int32)
        # disks around the points, closed with a disk of twice the radius; padded first so that the
        # closing does not erode regions that touch the image border
        pad = 2 * r + 1
        canvas = np.zeros((h + 2 * pad, w + 2 * pad), np.uint8)
        for x, y in xy:
            cv2.circle(canvas, (int(x) + pad, int(y) + pad), r, 1, thickness=-1)
        canvas = cv2.morphologyEx(canvas, cv2.MORPH_CLOSE, _disk(2 * r))
        canvas = np.ascontiguousarray(canvas[pad:-pad, pad:-pad])
        # drop blobs made by fewer than min_points matches: stray matches on the background
        n, labels = cv2.connectedComponents(canvas, connectivity=8)
        inside = labels[np.clip(xy[:, 1], 0, h - 1), np.clip(xy[:, 0], 0, w - 1)]
        counts = np.bincount(inside, minlength=n)
        keep = counts >= self.min_points
        keep[0] = False
        if not keep.any():  # no blob has enough points: keep the largest rather than nothing
            keep[int(np.argmax(counts[1:])) + 1] = 1
        canvas = keep[labels].astype(np.uint8)
        if self.region == "hull":
            kept = xy[keep[inside]]
            canvas = np.zeros((h, w), np.uint8)
            cv2.fillConvexPoly(canvas, cv2.convexHull(kept.reshape(-1, 1, 2)), 1)
            return cv2.dilate(canvas, _disk(r)).astype(bool)
        contours, _ = cv2.findContours(canvas, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(canvas, contours, -1, 1, thickness=-1)
        return canvas.astype(bool)

    def mask_with_info(self, image: ImageInput) -> tuple[np.ndarray, MaskInfo]:
        """``(mask, info)``: the ``(H, W)`` bool object mask of one image and how it was made."""
        if not hasattr(self, "references_"):
            raise DetectorError("object mask: mask before fit; call fit() with normal images first")
        arr = as_image(image, _label(image, 0))
        shape = (int(arr.shape[0]), int(arr.shape[1]))
        pts, desc = self._features(arr)
        good = self._matched(pts, desc, shape) if desc is not None else np.zeros(len(pts), dtype=bool)
        n = int(good.sum())
        if n < self.min_matches:
            info = MaskInfo(n_keypoints=len(pts), n_matches=n, fallback=True, coverage=1.0)
            return np.ones(shape, dtype=bool), info
        m = self._region(pts[good], shape)
        return m, MaskInfo(n_keypoints=len(pts), n_matches=n, fallback=False, coverage=float(m.mean()))

    def mask(self, image: ImageInput) -> np.ndarray:
        """The ``(H, W)`` bool object mask of one image (all True on fallback); sets ``last_info``."""
        m, self.last_info = self.mask_with_info(image)
        return m

    def masks(self, images: Iterable[ImageInput]) -> list[np.ndarray]:
        """Masks of several images; ``infos_`` gets a :class:`MaskInfo` per image, ``last_info`` the last."""
        out, infos = [], []
        for im in images:
            m, info = self.mask_with_info(im)
            out.append(m)
            infos.append(info)
        self.infos_ = infos
        self.last_info = infos[-1] if infos else None
        return out


def _check_factor(factor: float) -> float:
    f = float(factor)
    if not 0.0 <= f <= 1.0:  # also rejects NaN
        raise ConfigError(f"mask factor must be in [0, 1], got {factor}")
    return f


def apply_object_mask(amap: np.ndarray, mask: np.ndarray, factor: float) -> np.ndarray:
    """``amap`` with the scores outside ``mask`` multiplied by ``factor`` (float32, a new array).

    ``factor`` must lie in [0, 1] (ConfigError otherwise); 1 returns an unchanged copy. A mask of another
    size than the map is resized to it (nearest neighbour). Inside the mask the values are unchanged.
    """
    import cv2

    f = _check_factor(factor)
    amap = np.asarray(amap, dtype=np.float32)
    mask = np.asarray(mask, dtype=bool)
    if amap.ndim != 2 or mask.ndim != 2:
        raise ValueError(f"map and mask must be 2-D, got {amap.shape} and {mask.shape}")
    if mask.shape != amap.shape:
        h, w = amap.shape
        mask = cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
    out = amap.copy()
    if f != 1.0:
        out[~mask] *= np.float32(f)
    return out


def factor_sweep(
    masks_gt: Sequence[np.ndarray],
    maps: Sequence[np.ndarray],
    object_masks: Sequence[np.ndarray],
    factors: Sequence[float] = DEFAULT_FACTORS,
) -> dict[float, float]:
    """Pixel AP (AUPR) of the maps after :func:`apply_object_mask` with each factor: ``{factor: AP}``.

    ``masks_gt`` are the ground-truth defect masks (same shapes as ``maps``), ``object_masks`` one object
    mask per map (resized to the map when needed). AP is NaN when no ground-truth pixel is positive.
    """
    from vlmad.metrics.pixel import PixelMetrics

    if not (len(masks_gt) == len(maps) == len(object_masks)):
        raise ValueError(
            f"{len(masks_gt)} ground-truth masks, {len(maps)} maps and {len(object_masks)} object masks; "
            "give one of each per image"
        )
    if len(maps) == 0:
        raise ValueError("no maps given")
    fs = [_check_factor(f) for f in factors]
    metrics = {f: PixelMetrics(max_exact=None) for f in fs}
    for gt, amap, om in zip(masks_gt, maps, object_masks, strict=True):
        for f, metric in metrics.items():
            metric.update(gt, apply_object_mask(amap, om, f))
    return {f: float(metric.compute().ap) for f, metric in metrics.items()}


class MaskedDetector:
    """Any detector whose maps are multiplied by ``factor`` outside a keypoint object mask.

    ``fit(images)`` fits the detector and the masker on the same normal images; ``predict(images)`` returns
    ``(scores, maps)`` as the detector does, with each map masked by :func:`apply_object_mask` and each score
    the maximum of its masked map. ``infos_`` holds the :class:`MaskInfo` of the last predicted images.
    """

    def __init__(self, detector: Detector, masker: ObjectMasker, factor: float = 0.8) -> None:
        self.detector = detector
        self.masker = masker
        self.factor = _check_factor(factor)

    def fit(self, images: Sequence[ImageInput]) -> MaskedDetector:
        """Fit the detector, then the masker, on normal images; returns ``self``."""
        if len(images) == 0:
            raise DetectorError("masked detector: cannot fit on zero images; give it normal training images")
        self.detector.fit(images)
        self.masker.fit(images)
        return self

    def predict(self, images: Sequence[ImageInput]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Scores (float64, max of each masked map) and masked float32 maps at each image's size."""
        _, maps = self.detector.predict(images)
        masks = self.masker.masks(images) if len(images) else []
        self.infos_ = list(getattr(self.masker, "infos_", [])) if len(images) else []
        out = [apply_object_mask(m, om, self.factor) for m, om in zip(maps, masks, strict=True)]
        scores = np.array([float(m.max()) if m.size else 0.0 for m in out], dtype=np.float64)
        return scores, out

    def describe(self) -> dict[str, Any]:
        """The detector's description with ``object_mask``: the masker's parameters and the factor."""
        d = dict(self.detector.describe())
        d["object_mask"] = {**self.masker.get_params(), "factor": self.factor}
        return d
