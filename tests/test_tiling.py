"""Tiled inference equals untiled inference: real images, real weights, odd sizes, limits, OOM."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from _upscale_support import Recording, cpu_backend, psnr, save_tiny_srresnet

from sr_deploy.imaging import image_to_model_input, read_image
from sr_deploy.tiling import DEFAULT_TILE_OVERLAP, auto_tile_size, plan_tiles, upscale_batch, upscale_tiled

SET5 = ["baby", "bird", "butterfly", "head", "woman"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return cpu_backend(save_tiny_srresnet(tmp_path_factory.mktemp("m") / "tiny.pt"))


def _lr(path, factor: int = 2) -> np.ndarray:
    """A real low-resolution input: the HR image shrunk with INTER_AREA, as (3, H, W) float32."""
    image = read_image(path)
    h, w = image.shape[:2]
    small = cv2.resize(image, (w // factor, h // factor), interpolation=cv2.INTER_AREA)
    return image_to_model_input(small)[0]


@pytest.mark.parametrize(
    "height,width,tile,overlap",
    [(128, 128, 45, 16), (37, 23, 10, 3), (1, 1, 4, 2), (5, 97, 7, 0), (144, 114, 200, 16), (64, 64, 64, 8)],
)
def test_plan_tiles_covers_every_pixel_once(height, width, tile, overlap):
    tiles, (window_h, window_w) = plan_tiles(height, width, tile, overlap)
    cover = np.zeros((height, width), dtype=int)
    for t in tiles:
        cover[t.y0 : t.y1, t.x0 : t.x1] += 1
        assert t.y1 - t.y0 <= tile and t.x1 - t.x0 <= tile
        # the window lies inside the image, contains the core, and has context where the image has it
        assert 0 <= t.wy <= t.y0 and t.y1 <= t.wy + window_h <= height
        assert 0 <= t.wx <= t.x0 and t.x1 <= t.wx + window_w <= width
        assert t.y0 - t.wy >= min(overlap, t.y0) and t.wy + window_h - t.y1 >= min(overlap, height - t.y1)
        assert t.x0 - t.wx >= min(overlap, t.x0) and t.wx + window_w - t.x1 >= min(overlap, width - t.x1)
    assert (cover == 1).all()
    assert window_h == min(height, max(t.y1 - t.y0 for t in tiles) + 2 * overlap)


@pytest.mark.slow
def test_tiled_matches_untiled_on_set5(tiny, set5_dir):
    """Tile 45 divides none of the Set5 sizes at 1/3 scale: 170, 96, 85, 93, 76x114."""
    for name in SET5:
        image = _lr(set5_dir / f"{name}.png", factor=3)
        _, h, w = image.shape
        assert h % 45 and w % 45
        whole = tiny(image[None])[0]
        tiled = upscale_tiled(tiny, image, tile=45, overlap=DEFAULT_TILE_OVERLAP, batch_size=3)
        assert tiled.shape == whole.shape == (3, 4 * h, 4 * w)
        assert psnr(tiled, whole) >= 50, name
        if name == "butterfly":
            # the same tiles without context show seams: the comparison above can fail
            assert psnr(upscale_tiled(tiny, image, tile=45, overlap=0), whole) < 50


@pytest.mark.slow
def test_tiled_matches_untiled_with_released_weights(weights_dir, set5_dir):
    """Real-ESRGAN animevideov3 (17 stacked 3x3 convs), 64 x 80 crop, tile 24 (no divisor)."""
    backend = cpu_backend(weights_dir / "realesr-animevideov3.pth")
    image = np.ascontiguousarray(_lr(set5_dir / "butterfly.png")[:, 30:94, 20:100])
    whole = backend(image[None])[0]
    tiled = upscale_tiled(backend, image, tile=24, batch_size=4)
    assert psnr(tiled, whole) >= 50


@pytest.mark.slow
def test_odd_sizes_exact_shapes(tiny, set5_dir):
    image = _lr(set5_dir / "head.png")
    for h, w, tile in [(37, 23, 10), (1, 13, 5), (17, 1, 4), (29, 31, 0)]:
        crop = np.ascontiguousarray(image[:, :h, :w])
        out = upscale_tiled(tiny, crop, tile=tile, overlap=5)
        assert out.shape == (3, 4 * h, 4 * w)
        assert psnr(out, tiny(crop[None])[0]) >= 50


@pytest.mark.slow
def test_max_shape_is_respected_and_tiles_are_batched(tiny, set5_dir):
    image = _lr(set5_dir / "bird.png")  # 144 x 144
    limited = Recording(tiny, max_shape=(2, 60, 60))
    assert auto_tile_size(limited, 144, 144, overlap=8) == 60 - 16
    out = upscale_tiled(limited, image, tile=None, overlap=8, batch_size=8)
    assert all(n <= 2 and h <= 60 and w <= 60 for n, _, h, w in limited.calls)
    assert any(n == 2 for n, *_ in limited.calls)
    assert psnr(out, tiny(image[None])[0]) >= 50
    # --tile 0 (off) still tiles when the backend cannot take the whole image
    limited.calls.clear()
    upscale_tiled(limited, image, tile=0, overlap=8)
    assert len(limited.calls) > 1 and all(h <= 60 for _, _, h, _ in limited.calls)


@pytest.mark.slow
def test_out_of_memory_halves_the_tile_and_retries(tiny, set5_dir):
    image = _lr(set5_dir / "woman.png", factor=3)  # 114 x 76
    flaky = Recording(tiny, fail_above=50)
    retries: list[int] = []
    out = upscale_tiled(flaky, image, tile=0, overlap=6, on_retry=retries.append)
    assert retries[0] == 114 // 2 and retries[-1] <= 50 - 12
    assert out.shape == (3, 4 * 114, 4 * 76)
    assert psnr(out, tiny(image[None])[0]) >= 50
    # a batch of frames falls back to per-frame tiles in the same way
    frames = np.stack([image, image[:, ::-1, :].copy()])
    flaky.calls.clear()
    outs = upscale_batch(flaky, frames, tile=0, overlap=6)
    assert outs.shape == (2, 3, 4 * 114, 4 * 76)
    assert psnr(outs[1], tiny(frames[1:])[0]) >= 50


def test_auto_tile_uses_whole_image_when_it_fits(tiny):
    assert auto_tile_size(tiny, 256, 256) == 0  # 256^2 LR pixels fit any CPU budget
    assert auto_tile_size(tiny, 20000, 20000) > 0  # a 80000 px output does not
