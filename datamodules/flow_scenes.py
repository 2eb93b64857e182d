"""Frame pairs with exact dense optical flow: synthetic ones rendered from photos, and real scenes.

Synthetic pairs follow the FlyingChairs recipe: a background photo and a few foreground objects cut
from other photos, each layer moved by its own random homography between the two frames. Every
pixel of frame 1 knows where it lands in frame 2 (the homography of the frontmost layer there), so
the flow is exact; a pixel whose destination falls outside frame 2 is marked invalid.

    pair = render_pair(photos, size=(64, 96), rng=np.random.default_rng(0))
    pair.frames  # (2, H, W, 3) uint8;  pair.flow  # (H, W, 2) float32 (dx, dy);  pair.valid  # (H, W) bool

Real scenes nobody here rendered, at a documented working resolution (both frames resized, the truth
scaled with them):
- `motorcycle_pair`: Middlebury 2014 "motorcycle", rectified stereo in scikit-image; flow = -disparity
  along x (a point at x in the left image is at x - d in the right one); no ground truth where inf.
- `graf_pair`: OpenCV's graf1/graf3 (Oxford affine set) with their exact homography H1to3p, from
  Debian's opencv-doc.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

# CC0 or public-domain photos and textures inside scikit-image's wheel (no download).
TRAIN_PHOTOS = ("astronaut", "coffee", "rocket", "hubble_deep_field", "brick", "grass")
HELDOUT_PHOTOS = ("chelsea", "gravel")  # the held-out set never shows a photo that training sees
OPENCV_SAMPLES = Path("/usr/share/doc/opencv-doc/examples/data")  # Debian opencv-doc


def require(module: str, package: str) -> object:
    """Import `module`, or fail with one line naming the package to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"{module} is missing: pip install {package} (or pip install 'perceiver-mt[media]')") from None


def load_photo(photo: str | np.ndarray) -> np.ndarray:
    """One of scikit-image's bundled photos by name (or an image as it is) as (H, W, 3) uint8; grey ones
    repeated over RGB."""
    return _bundled_photo(photo) if isinstance(photo, str) else photo


@lru_cache(maxsize=None)
def _bundled_photo(name: str) -> np.ndarray:
    data = require("skimage.data", "scikit-image")
    image = getattr(data, name)()
    return np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image[..., :3]


@dataclass
class FlowPair:
    frames: np.ndarray  # (2, H, W, 3) uint8: frame 1, frame 2
    flow: np.ndarray  # (H, W, 2) float32: where each pixel of frame 1 moves in frame 2, (dx, dy) in pixels
    valid: np.ndarray  # (H, W) bool: the flow is known there (inside frame 2, ground truth present)


@dataclass
class MotionRange:
    """How far one layer may move between the frames, at the working resolution."""

    translation: float = 6.0  # pixels, per axis, uniform in +-this
    rotation: float = 6.0  # degrees
    scale: float = 0.08  # relative zoom, uniform in 1 +- this
    shear: float = 0.04
    perspective: float = 0.03  # projective terms, in units of the half image size


def random_motion(rng: np.random.Generator, size: tuple[int, int], motion: MotionRange,
                  strength: float = 1.0) -> np.ndarray:
    """A random homography (3, 3) of pixel coordinates (x, y, 1) about the image centre."""
    H, W = size
    half = max(H, W) / 2
    angle = np.deg2rad(rng.uniform(-1, 1) * motion.rotation * strength)
    zoom = 1 + rng.uniform(-1, 1) * motion.scale * strength
    shear = rng.uniform(-1, 1) * motion.shear * strength
    linear = zoom * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) @ [[1, shear], [0, 1]]
    normalized = np.eye(3)
    normalized[:2, :2] = linear
    normalized[:2, 2] = rng.uniform(-1, 1, 2) * motion.translation * strength / half
    normalized[2, :2] = rng.uniform(-1, 1, 2) * motion.perspective * strength
    to_normalized = np.array([[1 / half, 0, -(W - 1) / 2 / half], [0, 1 / half, -(H - 1) / 2 / half], [0, 0, 1]])
    return np.linalg.inv(to_normalized) @ normalized @ to_normalized


def apply_homography(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(..., 2) pixel coordinates (x, y) -> their images under `matrix` (3, 3)."""
    h = points @ matrix[:, :2].T + matrix[:, 2]  # (..., 3)
    return h[..., :2] / h[..., 2:]


def pixel_grid(size: tuple[int, int]) -> np.ndarray:
    """(H, W, 2) coordinates (x, y) of every pixel centre."""
    H, W = size
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float64)
    return np.stack([xs, ys], axis=-1)


def homography_flow(matrix: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Flow of every pixel moved by `matrix`, and whether it stays inside the frame: (H, W, 2), (H, W)."""
    H, W = size
    grid = pixel_grid(size)
    moved = apply_homography(matrix, grid)
    inside = (moved[..., 0] >= 0) & (moved[..., 0] <= W - 1) & (moved[..., 1] >= 0) & (moved[..., 1] <= H - 1)
    return (moved - grid).astype(np.float32), inside


def render_view(photo: np.ndarray, frame_to_photo: np.ndarray, size: tuple[int, int], mirror: bool = True) -> np.ndarray:
    """The frame (H, W, ...) whose pixel p shows photo point frame_to_photo(p): bilinear; outside the photo
    mirrored (`mirror`) or 0."""
    cv2 = require("cv2", "opencv-python-headless")
    H, W = size
    border = cv2.BORDER_REFLECT_101 if mirror else cv2.BORDER_CONSTANT
    return cv2.warpPerspective(photo, frame_to_photo, (W, H), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                               borderMode=border)


def random_placement(rng: np.random.Generator, photo_shape: tuple[int, ...], size: tuple[int, int],
                     zoom: tuple[float, float]) -> np.ndarray:
    """A similarity mapping frame pixels into the photo: `zoom` photo pixels per frame pixel, random angle,
    placed so the frame's footprint (with room for the motion) stays inside the photo where it fits."""
    H, W = size
    ph, pw = photo_shape[:2]
    k = min(rng.uniform(*zoom), 0.8 * min(ph / H, pw / W))  # small photos: zoom in further
    angle = np.deg2rad(rng.uniform(-20, 20))
    rotation = k * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    half_extent = np.abs(rotation) @ [(W - 1) / 2, (H - 1) / 2]  # footprint half-size in the photo
    centre = [rng.uniform(min(half_extent[0], pw / 2), max(pw - half_extent[0], pw / 2)),
              rng.uniform(min(half_extent[1], ph / 2), max(ph - half_extent[1], ph / 2))]
    placement = np.eye(3)
    placement[:2, :2] = rotation
    placement[:2, 2] = centre - rotation @ [(W - 1) / 2, (H - 1) / 2]
    return placement


def object_mask(rng: np.random.Generator, size: tuple[int, int], area: tuple[float, float]) -> np.ndarray:
    """An ellipse (H, W) bool covering a random fraction `area` of the frame, anywhere in it."""
    H, W = size
    fraction = rng.uniform(*area)
    aspect = rng.uniform(0.5, 2.0)
    a = np.sqrt(fraction * H * W / np.pi * aspect)  # semi-axes with pi * a * b = fraction * H * W
    b = fraction * H * W / np.pi / a
    angle = rng.uniform(0, np.pi)
    cx, cy = rng.uniform(0, W - 1), rng.uniform(0, H - 1)
    grid = pixel_grid(size) - [cx, cy]
    u = grid[..., 0] * np.cos(angle) + grid[..., 1] * np.sin(angle)
    v = -grid[..., 0] * np.sin(angle) + grid[..., 1] * np.cos(angle)
    return (u / a) ** 2 + (v / b) ** 2 <= 1


def render_pair(photos: Sequence[str | np.ndarray], size: tuple[int, int], rng: np.random.Generator,
                motion: MotionRange | None = None, num_objects: int = 1,
                object_area: tuple[float, float] = (0.05, 0.2), zoom: tuple[float, float] = (1.0, 3.0)) -> FlowPair:
    """A background photo and `num_objects` objects from the same photo list, each moved by its own homography.

    Layer l (background first) is seen in frame 1 through placement P_l (frame pixel -> photo point) and
    moves by M_l between the frames, so frame 2 sees it through P_l M_l^-1 and a pixel p of layer l in
    frame 1 is at M_l(p) in frame 2. Objects keep their elliptical shape in frame 1 and move it by M_l.
    """
    motion = motion or MotionRange()
    H, W = size
    frames = np.zeros((2, H, W, 3), np.uint8)
    flow = np.zeros((H, W, 2), np.float32)
    valid = np.zeros((H, W), bool)
    for layer in range(1 + num_objects):
        photo = load_photo(photos[rng.integers(len(photos))])
        placement = random_placement(rng, photo.shape, size, zoom)
        move = random_motion(rng, size, motion, strength=1.0 if layer == 0 else 1.5)  # objects move more
        views = [render_view(photo, placement, size), render_view(photo, placement @ np.linalg.inv(move), size)]
        layer_flow, inside = homography_flow(move, size)
        if layer == 0:
            masks = [np.ones((H, W), bool)] * 2
        else:
            mask1 = object_mask(rng, size, object_area)
            mask2 = render_view(mask1.astype(np.float32), np.linalg.inv(move), size, mirror=False) >= 0.5
            masks = [mask1, mask2]
        for f in range(2):
            frames[f][masks[f]] = views[f][masks[f]]
        flow[masks[0]] = layer_flow[masks[0]]
        valid[masks[0]] = inside[masks[0]]
    return FlowPair(frames, flow, valid)


def heldout_pairs(count: int, size: tuple[int, int], seed: int = 1234, **options: object) -> list[FlowPair]:
    """The fixed held-out synthetic set: `count` pairs from photos training never sees, one seed each."""
    return [render_pair(HELDOUT_PHOTOS, size, np.random.default_rng((seed, i)), **options) for i in range(count)]


def resize_frames(frames: Sequence[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """T (h, w, 3) uint8 images (a pair, a window of video) -> (T, H, W, 3) uint8 at the working size (area
    averaging)."""
    cv2 = require("cv2", "opencv-python-headless")
    H, W = size
    return np.stack([cv2.resize(f, (W, H), interpolation=cv2.INTER_AREA) for f in frames])


def motorcycle_pair(size: tuple[int, int] = (64, 96)) -> FlowPair:
    """Middlebury's rectified motorcycle pair at `size` (H, W); truth = -disparity * (W / 741) along x.

    A working pixel has truth where at least 3/4 of the full-resolution pixels under it have one (the
    mean of those); the others are masked.
    """
    cv2 = require("cv2", "opencv-python-headless")
    data = require("skimage.data", "scikit-image")
    left, right, disparity = data.stereo_motorcycle()
    H, W = size
    known = np.isfinite(disparity)
    coverage = cv2.resize(known.astype(np.float32), (W, H), interpolation=cv2.INTER_AREA)
    mean = cv2.resize(np.where(known, disparity, 0).astype(np.float32), (W, H), interpolation=cv2.INTER_AREA)
    valid = coverage >= 0.75
    flow = np.zeros((H, W, 2), np.float32)
    flow[..., 0] = np.where(valid, -mean / np.maximum(coverage, 1e-6) * (W / disparity.shape[1]), 0)
    return FlowPair(resize_frames((left, right), size), flow, valid)


def graf_pair(size: tuple[int, int] = (64, 80), samples: Path = OPENCV_SAMPLES) -> FlowPair | None:
    """OpenCV's graf1 -> graf3 at `size` with the exact flow of homography H1to3p; None without opencv-doc.

    Resizing by (sx, sy) with pixel centres at (x + 0.5) * s - 0.5 conjugates the homography: S H S^-1.
    """
    cv2 = require("cv2", "opencv-python-headless")
    paths = [samples / "graf1.png", samples / "graf3.png", samples / "H1to3p.xml"]
    if not all(p.is_file() for p in paths):
        return None
    images = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths[:2]]
    storage = cv2.FileStorage(str(paths[2]), cv2.FILE_STORAGE_READ)
    homography = storage.getFirstTopLevelNode().mat()
    storage.release()
    H, W = size
    h, w = images[0].shape[:2]
    sx, sy = W / w, H / h
    scale = np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]])
    flow, valid = homography_flow(scale @ homography @ np.linalg.inv(scale), size)
    return FlowPair(resize_frames(tuple(images), size), flow, valid)
