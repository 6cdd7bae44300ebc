import io
import random
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import ExifTags, Image

from cnnviz import images
from cnnviz.data import DatasetInfo
from cnnviz.images import ImageError

MNIST = DatasetInfo("mnist", "MNIST", tuple("0123456789"), 1, 28, (0.1307,), (0.3081,), invert=True)
RGB32 = DatasetInfo("rgb", "Colour shapes", ("circle", "square"), 3, 32, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
FORMATS = ["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"]
LOSSY = {"JPEG": 12, "WEBP": 12}  # per-channel tolerance after decoding; the others are exact


def encode(im: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def two_colours(width: int = 16, height: int = 12) -> Image.Image:
    """Left half red, right half blue."""
    im = Image.new("RGB", (width, height), (220, 20, 20))
    im.paste((20, 20, 220), (width // 2, 0, width, height))
    return im


def close(a, b, tol: int = 0) -> bool:
    a, b = np.atleast_1d(a), np.atleast_1d(b)
    return bool(np.all(np.abs(a.astype(int) - b.astype(int)) <= tol))


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width×height`` pixels (with a valid CRC) but holds one pixel of data."""
    data = bytearray(encode(Image.new("L", (1, 1)), "PNG"))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])  # keep bit depth, colour type, …
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


# --- load: formats, sources, modes -----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_load_every_format(fmt):
    im = images.load(encode(two_colours(), fmt))
    assert im.mode == "RGB" and im.size == (16, 12)
    assert im.info["cnnviz_format"] == fmt
    tol = LOSSY.get(fmt, 0)
    assert close(im.getpixel((2, 6)), (220, 20, 20), tol)
    assert close(im.getpixel((13, 6)), (20, 20, 220), tol)


@pytest.mark.parametrize("kind", ["bytes", "bytearray", "str", "Path", "BytesIO", "open file", "stream not at 0"])
def test_load_every_kind_of_source(kind, tmp_path):
    data = encode(two_colours(), "PNG")
    path = tmp_path / "upload.png"
    path.write_bytes(data)
    if kind == "bytes":
        im = images.load(data)
    elif kind == "bytearray":
        im = images.load(bytearray(data))
    elif kind == "str":
        im = images.load(str(path))
    elif kind == "Path":
        im = images.load(path)
    elif kind == "BytesIO":
        im = images.load(io.BytesIO(data))
    elif kind == "open file":
        with open(path, "rb") as f:
            im = images.load(f)
    else:
        stream = io.BytesIO(b"junk" + data)
        stream.seek(4)
        im = images.load(stream)
    assert im.size == (16, 12) and im.getpixel((0, 0)) == (220, 20, 20)


def grey_ramp(mode: str) -> Image.Image:
    return Image.fromarray(np.tile(np.arange(0, 256, 16, dtype=np.uint8), (4, 1))).convert(mode)


@pytest.mark.parametrize(
    "source, fmt, expected_mode",
    [
        (lambda: grey_ramp("1"), "PNG", "L"),
        (lambda: grey_ramp("1"), "BMP", "L"),
        (lambda: grey_ramp("L"), "PNG", "L"),
        (lambda: grey_ramp("L"), "JPEG", "L"),
        (lambda: grey_ramp("LA"), "PNG", "L"),
        (lambda: two_colours().convert("P"), "PNG", "RGB"),
        (lambda: two_colours().convert("P"), "GIF", "RGB"),
        (lambda: two_colours().convert("RGBA"), "PNG", "RGB"),
        (lambda: two_colours().convert("RGBA"), "WEBP", "RGB"),
        (lambda: two_colours().convert("RGBA"), "TIFF", "RGB"),
        (lambda: two_colours().convert("CMYK"), "JPEG", "RGB"),
        (lambda: two_colours().convert("CMYK"), "TIFF", "RGB"),
        (lambda: Image.fromarray(np.full((4, 4), 40000, np.uint16)), "PNG", "L"),
        (lambda: Image.fromarray(np.full((4, 4), -7, np.int32)), "TIFF", "L"),
        (lambda: Image.fromarray(np.full((4, 4), 0.5, np.float32)), "TIFF", "L"),
    ],
)
def test_load_every_mode(source, fmt, expected_mode):
    original = source()
    im = images.load(encode(original, fmt))
    assert im.mode == expected_mode and im.size == original.size
    assert im.info["cnnviz_mode"] == Image.open(io.BytesIO(encode(original, fmt))).mode
    im.getpixel((0, 0))  # fully loaded: the file it came from is closed


def test_cmyk_colours_come_through():
    im = images.load(encode(Image.new("CMYK", (4, 4), (0, 255, 255, 0)), "TIFF"))
    assert im.getpixel((0, 0)) == (255, 0, 0)


def test_animated_gif_gives_the_first_frame():
    frames = [Image.new("L", (8, 8), 0), Image.new("L", (8, 8), 255)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert Image.open(io.BytesIO(data)).n_frames == 2
    im = images.load(data)
    assert im.size == (8, 8) and im.getpixel((4, 4)) in (0, (0, 0, 0))


@pytest.mark.parametrize("orientation", [1, 6])
def test_a_big_jpeg_decodes_at_a_reduced_scale_and_keeps_its_own_size(orientation):
    stored = Image.new("RGB", (2400, 1800), (30, 60, 90))
    stored.paste((250, 250, 250), (0, 0, 600, 450))  # the stored top-left quarter of each side: white
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    im = images.load(encode(stored, "JPEG", exif=exif, quality=90))
    upright = (2400, 1800) if orientation == 1 else (1800, 2400)
    # Decoded at 1/2 scale (1/4 would fall below SHOWN_MAX on the short side), upright, the file's size kept.
    assert im.size == (upright[0] // 2, upright[1] // 2) and min(im.size) >= images.SHOWN_MAX
    assert im.info["cnnviz_size"] == upright
    corner = (10, 10) if orientation == 1 else (im.width - 10, 10)  # orientation 6: the stored top-left is top right
    assert close(im.getpixel(corner), (250, 250, 250), 12)
    steps = images.prepare(im, RGB32).steps
    assert steps[0].title == f"Original ({upright[0]}×{upright[1]})" and max(steps[0].image.size) == images.SHOWN_MAX
    small = encode(Image.new("RGB", (640, 480)), "JPEG")  # under twice SHOWN_MAX a side: decoded whole
    assert images.load(small).size == (640, 480) == images.load(small).info["cnnviz_size"]


@pytest.mark.parametrize("orientation, marked_corner", [(6, "top right"), (8, "bottom left"), (1, "top left")])
def test_exif_orientation_is_applied(orientation, marked_corner):
    stored = Image.new("L", (40, 20), 0)
    stored.paste(255, (0, 0, 6, 6))  # mark the stored top-left corner
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    im = images.load(encode(stored, "JPEG", exif=exif, quality=95))
    assert im.size == ((40, 20) if orientation == 1 else (20, 40))
    w, h = im.size
    corners = {"top left": (2, 2), "top right": (w - 3, 2), "bottom left": (2, h - 3), "bottom right": (w - 3, h - 3)}
    for name, xy in corners.items():
        assert (im.getpixel(xy) > 200) == (name == marked_corner), name


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "TIFF"])
def test_transparency_is_composited_on_white(fmt):
    rgba = Image.new("RGBA", (12, 4), (0, 0, 0, 0))  # transparent black: must not come out black
    rgba.paste((200, 0, 0, 255), (4, 0, 8, 4))
    rgba.paste((0, 0, 0, 128), (8, 0, 12, 4))  # half-transparent black over white: mid grey
    im = images.load(encode(rgba, fmt, **({"lossless": True} if fmt == "WEBP" else {})))
    assert im.getpixel((1, 1)) == (255, 255, 255)
    assert im.getpixel((5, 1)) == (200, 0, 0)
    assert close(im.getpixel((10, 1)), (127, 127, 127), 1)


def test_grey_and_palette_transparency_become_white():
    la = Image.new("LA", (4, 4), (0, 0))
    assert images.load(encode(la, "PNG")).getpixel((0, 0)) == 255
    grey = Image.new("L", (4, 4), 7)
    assert images.load(encode(grey, "PNG", transparency=7)).getpixel((0, 0)) == 255
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([0, 0, 0, 10, 200, 10])
    pal.putpixel((3, 3), 1)
    im = images.load(encode(pal, "PNG", transparency=0))
    assert im.getpixel((0, 0)) == (255, 255, 255) and im.getpixel((3, 3)) == (10, 200, 10)
    im = images.load(encode(pal, "GIF", transparency=0))
    assert im.getpixel((0, 0)) == (255, 255, 255) and im.getpixel((3, 3)) == (10, 200, 10)


@pytest.mark.parametrize(
    "values, fmt",
    [
        (np.array([[1000, 3000, 5000]], np.uint16), "PNG"),  # 16-bit using only part of its range
        (np.array([[-70000, 0, 70000]], np.int32), "TIFF"),
        (np.array([[-1.5, 0.5, 2.5]], np.float32), "TIFF"),
    ],
)
def test_deep_greyscale_is_stretched_to_the_full_range(values, fmt):
    im = images.load(encode(Image.fromarray(values), fmt))
    assert im.mode == "L"
    assert close(np.asarray(im)[0], [0, 128, 255], 1)


@pytest.mark.parametrize(
    "values",
    [
        np.full((3, 3), 0.25, np.float32),
        np.full((3, 3), 123456, np.int32),
        np.array([[0.0, np.nan], [1.0, np.inf]], np.float32),
        np.array([[-np.inf, np.inf]], np.float32),
    ],
)
def test_constant_or_non_finite_deep_images_load(values):
    im = images.load(encode(Image.fromarray(values), "TIFF"))
    assert im.mode == "L" and im.size == values.shape[::-1]


@pytest.mark.parametrize("size", [(1, 1), (1, 2000), (2000, 1)])
def test_tiny_and_extreme_aspect_images_load(size):
    im = images.load(encode(Image.new("RGB", size, (9, 99, 199)), "PNG"))
    assert im.size == size and im.getpixel((0, 0)) == (9, 99, 199)


# --- load: refusals ------------------------------------------------------------------------------------------------


def refusal(source) -> str:
    with pytest.raises(ImageError) as info:
        images.load(source)
    return str(info.value)


def test_empty_file_is_refused(tmp_path):
    assert refusal(b"") == "The file is empty."
    (tmp_path / "empty.png").write_bytes(b"")
    assert refusal(tmp_path / "empty.png") == "The file is empty."
    assert refusal(io.BytesIO()) == "The file is empty."


def test_non_images_are_refused(tmp_path):
    assert refusal(random.Random(0).randbytes(5000)) == images.NOT_AN_IMAGE
    text = tmp_path / "notes.png"
    text.write_text("This is a text file, whatever its name says.\n" * 20)
    assert "not an image" in refusal(text)
    assert "not an image" in refusal(b"%PDF-1.4\n" + b"0" * 100)
    # A format Pillow can read but we do not accept near uploads.
    assert "not an image" in refusal(encode(Image.new("RGB", (4, 4)), "PPM"))


def test_missing_file_is_refused(tmp_path):
    assert "Could not open" in refusal(tmp_path / "nowhere.png")
    assert "Could not open" in refusal(tmp_path)  # a folder


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "TIFF", "BMP"])
def test_truncated_files_are_refused(fmt):
    data = encode(Image.effect_noise((64, 64), 60).convert("RGB"), fmt)
    message = refusal(data[: len(data) // 2])
    assert message in (images.DAMAGED, images.NOT_AN_IMAGE)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_png_and_jpeg_say_damaged(fmt):
    data = encode(Image.effect_noise((64, 64), 60).convert("RGB"), fmt)
    assert refusal(data[: len(data) // 2]) == images.DAMAGED
    assert refusal(io.BytesIO(data[: len(data) // 2])) == images.DAMAGED


def test_oversize_files_are_refused_before_decoding(monkeypatch, tmp_path):
    monkeypatch.setattr(images, "MAX_BYTES", images.MB)
    big = b"\x00" * (3 * images.MB // 2)  # not even an image: the size is checked first
    assert refusal(big) == "The file is 1.5 MB; the limit is 1 MB."
    assert refusal(io.BytesIO(big)) == "The file is 1.5 MB; the limit is 1 MB."
    (tmp_path / "big.png").write_bytes(big)
    assert refusal(tmp_path / "big.png") == "The file is 1.5 MB; the limit is 1 MB."

    class Pipe:  # a stream that cannot tell its size up front
        def __init__(self):
            self.left = len(big)

        def read(self, n):
            n = min(n, self.left)
            self.left -= n
            return b"\x00" * n

    assert "larger than the limit of 1 MB" in refusal(Pipe())


def test_too_many_pixels_are_refused(monkeypatch):
    monkeypatch.setattr(images, "MAX_PIXELS", 300)
    assert "20×20 pixels" in refusal(encode(Image.new("L", (20, 20)), "PNG"))
    assert images.load(encode(Image.new("L", (10, 30)), "PNG")).size == (10, 30)  # exactly at the limit


def test_pixel_bombs_are_refused_from_the_header():
    assert refusal(png_declaring(7000, 7000)).startswith("The image is 7000×7000 pixels; the limit is 40 megapixels")
    with pytest.warns(Image.DecompressionBombWarning):  # Pillow warns past its own limit; we refuse
        assert "10000×10000 pixels" in refusal(png_declaring(10000, 10000))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an app that turns warnings into errors gets the same refusal
        assert "the limit is 40 megapixels" in refusal(png_declaring(10000, 10000))
    # Past twice Pillow's limit, Image.open itself refuses before we see the size.
    assert "the limit is 40 megapixels" in refusal(png_declaring(30000, 30000))


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about some of the damage it skips over
def test_nothing_but_image_error_escapes_for_damaged_files():
    rng = random.Random(0)
    base = two_colours(24, 24)
    for fmt in FORMATS:
        data = encode(base, fmt)
        for _ in range(15):
            mutated = bytearray(data)
            for _ in range(rng.randint(1, 8)):
                mutated[rng.randrange(len(mutated))] = rng.randrange(256)
            for candidate in (bytes(mutated), bytes(mutated[: rng.randrange(1, len(mutated))])):
                try:
                    im = images.load(candidate)
                except ImageError:
                    continue
                assert im.mode in ("L", "RGB")


# --- prepare -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("resize", images.RESIZE_POLICIES)
@pytest.mark.parametrize("dataset, colour", [(MNIST, 200), (RGB32, (10, 120, 250))])
def test_uniform_image_gives_the_known_normalised_value(dataset, colour, resize):
    image = Image.new("L" if dataset.channels == 1 else "RGB", (50, 37), colour)
    prepared = images.prepare(image, dataset, resize=resize, invert=False)
    x = prepared.tensor
    assert x.shape == (1, dataset.channels, dataset.size, dataset.size) and x.dtype == torch.float32
    v = torch.tensor(colour if isinstance(colour, tuple) else (colour,), dtype=torch.float32)
    expected = ((v / 255 - torch.tensor(dataset.mean)) / torch.tensor(dataset.std)).view(1, -1, 1, 1)
    torch.testing.assert_close(x, expected.expand_as(x))


def test_channels_follow_the_dataset():
    rgb = Image.new("RGB", (28, 28), (255, 0, 0))
    x = images.prepare(rgb, MNIST, invert=False).tensor
    assert x.shape == (1, 1, 28, 28)
    torch.testing.assert_close(x, torch.full_like(x, (76 / 255 - 0.1307) / 0.3081))  # ITU-R 601 luma of red
    grey = Image.new("L", (32, 32), 51)
    prepared = images.prepare(grey, RGB32)
    assert prepared.tensor.shape == (1, 3, 32, 32)
    assert [s.title for s in prepared.steps] == ["Original (32×32)", "Grey copied to red, green and blue",
                                                 "What the network sees"]


def bright_rows(image: Image.Image) -> list[int]:
    a = np.asarray(image.convert("L"))
    return [int(r) for r in np.nonzero(a.max(axis=1) > 127)[0]]


def test_pad_keeps_the_aspect_ratio():
    bar = Image.new("L", (100, 20), 0)
    bar.paste(255, (0, 6, 100, 14))  # a wide white bar on black, 8 rows of 20
    padded = images.prepare(bar, MNIST, resize="pad", invert=False).display
    squashed = images.prepare(bar, MNIST, resize="squash", invert=False).display
    assert 1 <= len(bright_rows(padded)) <= 4 and 12 <= min(bright_rows(padded)) <= 15
    assert len(bright_rows(squashed)) >= 10
    assert np.asarray(padded)[:8].max() == 0 and np.asarray(padded)[-8:].max() == 0  # padding is the background


def test_pad_fills_with_the_border_colour():
    image = Image.new("RGB", (64, 16), (0, 0, 255))
    image.paste((255, 0, 0), (30, 4, 34, 12))
    display = images.prepare(image, RGB32, resize="pad").display
    assert display.getpixel((16, 0)) == (0, 0, 255) and display.getpixel((16, 31)) == (0, 0, 255)


@pytest.mark.parametrize("size", [(1, 2000), (2000, 1)])
def test_pad_keeps_a_one_pixel_line(size):
    line = Image.new("L", size, 255)
    framed = Image.new("L", (size[0] + 2, size[1] + 2), 0)  # black border so the pad is black
    framed.paste(line, (1, 1))
    display = images.prepare(framed, MNIST, resize="pad", invert=False).display
    assert np.asarray(display).max() > 50


def test_crop_takes_the_centre():
    image = Image.new("RGB", (90, 30), (255, 0, 0))
    image.paste((0, 255, 0), (30, 0, 60, 30))
    image.paste((0, 0, 255), (60, 0, 90, 30))
    display = images.prepare(image, RGB32, resize="crop").display
    a = np.asarray(display)
    assert np.all(a[:, 2:-2] == (0, 255, 0))  # the edges may blend a little with the neighbours


def digit_like(ink: int, paper: int) -> Image.Image:
    image = Image.new("L", (60, 80), paper)
    image.paste(ink, (25, 10, 35, 70))  # a thick "1"
    return image


def test_auto_invert_makes_a_drawing_look_like_mnist():
    prepared = images.prepare(digit_like(ink=0, paper=255), MNIST)
    assert prepared.inverted
    display = np.asarray(prepared.display)
    assert display[0, 0] == 0 and display[14, 14] == 255
    assert any(s.title.startswith("Inverted") for s in prepared.steps)
    torch.testing.assert_close(prepared.tensor[0, 0, 0, 0], torch.tensor((0 - 0.1307) / 0.3081))


def test_auto_invert_leaves_mnist_like_images_alone():
    prepared = images.prepare(digit_like(ink=255, paper=0), MNIST)
    assert not prepared.inverted and np.asarray(prepared.display)[0, 0] == 0


def test_auto_invert_does_nothing_for_colour_datasets():
    prepared = images.prepare(digit_like(ink=0, paper=255).convert("RGB"), RGB32)
    assert not prepared.inverted and prepared.display.getpixel((0, 0)) == (255, 255, 255)


def test_invert_can_be_forced_either_way():
    assert images.prepare(digit_like(0, 255), MNIST, invert=False).display.getpixel((0, 0)) == 255
    forced = images.prepare(Image.new("RGB", (32, 32), (255, 200, 0)), RGB32, invert=True)
    assert forced.inverted and forced.display.getpixel((0, 0)) == (0, 55, 255)


def test_auto_invert_sees_through_a_digit_touching_the_edge():
    image = Image.new("L", (28, 28), 255)
    image.paste(0, (0, 0, 28, 6))  # a stroke along the whole top edge: the median border is still paper
    assert images.prepare(image, MNIST).inverted


def test_steps_show_the_whole_journey():
    image = images.load(encode(two_colours(200, 100), "PNG"))
    prepared = images.prepare(image, MNIST, resize="crop")
    titles = [s.title for s in prepared.steps]
    assert titles[0] == "Original (200×100)" and prepared.steps[0].image is image
    assert "Resized to 28×28 (crop)" in titles and "Greyscale" in titles
    assert titles[-1] == "What the network sees"
    assert all(isinstance(s.image, Image.Image) and s.title for s in prepared.steps)
    assert all(s.image.size == (28, 28) for s in prepared.steps[1:])  # nothing upscaled for show
    assert prepared.display is prepared.steps[-1].image and prepared.display.mode == "L"
    # What the network sees is exactly the last picture before normalising: the round trip loses nothing.
    assert prepared.display.tobytes() == prepared.steps[-2].image.tobytes()


def test_an_image_of_the_right_size_is_not_resized():
    titles = [s.title for s in images.prepare(Image.new("L", (28, 28), 0), MNIST).steps]
    assert titles == ["Original (28×28)", "What the network sees"]


@pytest.mark.parametrize("resize", images.RESIZE_POLICIES)
@pytest.mark.parametrize("size", [(1, 1), (1, 2000), (2000, 1), (3, 5)])
@pytest.mark.parametrize("dataset", [MNIST, RGB32])
def test_tiny_and_extreme_images_prepare(size, resize, dataset):
    image = images.load(encode(Image.new("RGB", size, (30, 60, 90)), "PNG"))
    x = images.prepare(image, dataset, resize=resize).tensor
    assert x.shape == (1, *dataset.input_shape) and torch.isfinite(x).all()


def test_prepare_leaves_the_image_alone():
    image = two_colours(50, 50)
    before = image.tobytes()
    images.prepare(image, MNIST, resize="pad")
    assert image.tobytes() == before and image.mode == "RGB"


def test_prepare_checks_its_arguments():
    with pytest.raises(ValueError, match="squash, crop, pad"):
        images.prepare(Image.new("RGB", (4, 4)), RGB32, resize="stretch")
    with pytest.raises(ValueError, match="'RGBA'"):
        images.prepare(Image.new("RGBA", (4, 4)), RGB32)


def test_load_then_prepare_with_a_real_dataset_info():
    from cnnviz import data

    image = images.load(encode(digit_like(0, 255), "JPEG"))
    prepared = images.prepare(image, data.info("mnist"))
    assert prepared.inverted and prepared.tensor.shape == (1, 1, 28, 28)


def test_the_original_step_is_kept_only_as_large_as_it_is_shown():
    # 4000×3000 is a 12-megapixel phone photo: left half red, right half blue.
    image = two_colours(4000, 3000)
    prepared = images.prepare(image, RGB32)
    original = prepared.steps[0]
    assert original.title == "Original (4000×3000)"  # the title still says what was uploaded
    assert original.image.size == (512, 384) and original.image.mode == "RGB"
    assert close(original.image.getpixel((10, 200)), (220, 20, 20), 2)
    assert close(original.image.getpixel((500, 200)), (20, 20, 220), 2)
    # The model input is made from the full image, not from the shown copy: same tensor as a direct resize.
    direct = images.prepare(image.resize((32, 32), images.RESAMPLE), RGB32).tensor
    assert torch.equal(prepared.tensor, direct)


@pytest.mark.parametrize("size, shown", [((512, 100), (512, 100)), ((1, 3000), (1, 512)), ((3000, 600), (512, 102))])
def test_the_original_step_fits_in_shown_max_without_losing_a_side(size, shown):
    assert images.prepare(Image.new("L", size, 90), MNIST).steps[0].image.size == shown
