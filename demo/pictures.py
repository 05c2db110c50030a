"""Pictures in and out of the page without Gradio's temporary files showing.

Out: Gradio answers an image with the path of the file it saved in its temporary folder (an absolute
server path, in the JSON of every answer). `Picture` and `picture_data` send the picture itself, as a
data URL, so no answer names a server folder.

In: a client may send an image as a data URL instead of an upload. Gradio would decode it at full size
and re-encode it while the request joins the queue, outside any limit; `data_url_image` bounds it as an
upload is bounded: the length of the base64 before decoding, then the pixel count from the header.
"""
import base64
import binascii
import io
import mimetypes
import os

import gradio as gr
from gradio.data_classes import ImageData
from PIL import Image

from mimic.model.images import ImageError, check_image, open_image

MAX_UPLOAD_BYTES = 20 * 2**20  # per picture, uploaded or sent as a data URL
MAX_DATA_URL_HEADER = 100  # characters before the comma of "data:image/png;base64,..."
EXAMPLE_SIDE = 128  # px: the examples table's thumbnails, sent in the page's config


def unusable(problem) -> gr.Error:
    return gr.Error(f"The image cannot be used: {problem}. Try a JPEG, PNG or WebP photo, or remove it.")


def data_url_image(url: str) -> bytes:
    """The bytes of an image sent as a base64 data URL, refused (gr.Error) before decoding when larger than
    an upload may be, and before any pixel is decoded when its header declares too many pixels."""
    comma = url.find(",", 0, MAX_DATA_URL_HEADER)
    if comma < 0 or not url[:comma].lower().endswith(";base64"):
        raise unusable("an image sent as a data URL must be base64 (data:image/png;base64,...)")
    size = (len(url) - comma - 1) * 3 // 4  # the decoded size, known without decoding
    if size > MAX_UPLOAD_BYTES:
        raise gr.Error(f"The image is {size / 2**20:.1f} MB; the limit is {MAX_UPLOAD_BYTES // 2**20} MB.")
    try:
        data = base64.b64decode(url[comma + 1:], validate=True)
    except (binascii.Error, ValueError):
        raise unusable("its data URL is not valid base64")
    try:
        check_image(data)
    except ImageError as e:
        raise unusable(e)
    return data


def as_data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def picture_data(value, image_format: str = "webp"):
    """A picture for an answer as ImageData holding a data URL and no path: a file's own bytes (the
    examples' pictures, never re-encoded), or a PIL image encoded in memory. None stays None."""
    if value is None:
        return None
    if isinstance(value, (str, os.PathLike)):
        with open(value, "rb") as f:
            data = f.read(MAX_UPLOAD_BYTES + 1)
        if len(data) > MAX_UPLOAD_BYTES:
            raise ValueError("an example picture is larger than an upload may be")
        mime = mimetypes.guess_type(str(value))[0] or "image/jpeg"
        return ImageData(url=as_data_url(data, mime), orig_name=os.path.basename(value), mime_type=mime)
    if not isinstance(value, Image.Image):
        value = Image.fromarray(value)
    buffer = io.BytesIO()
    image_format = (image_format or "webp").upper()
    value.save(buffer, format=image_format)
    mime = Image.MIME.get(image_format, "image/webp")
    return ImageData(url=as_data_url(buffer.getvalue(), mime), mime_type=mime)


def example_thumbnail(path):
    """An example's picture as the examples table shows it: a small JPEG data URL (the table is part of the
    page's config, which every visitor loads; the full picture is sent when the example is chosen)."""
    if path is None:
        return None
    image = open_image(path)
    image.thumbnail((EXAMPLE_SIDE, EXAMPLE_SIDE))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return ImageData(url=as_data_url(buffer.getvalue(), "image/jpeg"), mime_type="image/jpeg").model_dump()


class Picture(gr.Image):
    """Gradio's image output, answering with the picture as a data URL instead of a temporary file's path."""
    is_template = True  # the page draws it with Gradio's image widget

    def postprocess(self, value):
        return picture_data(value, self.format)
