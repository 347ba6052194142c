"""Writes the seed corpora of the fuzz targets: fuzz/corpus/<target>/seed-*.

Tiny valid inputs of every kind each target reads, so that the fuzzer starts from the formats'
structure instead of finding magic numbers by chance. Run with the project's venv (Pillow, numpy):
    scripts/with-libtorch.sh bash -c '"$GAPMETER_PYTHON" fuzz/make_seeds.py'
The output is deterministic for given Pillow and numpy versions; the committed seeds are the
reference, rerunning is only needed to add kinds.
"""

import gzip
import io
import pathlib
import tarfile
import time
import zipfile

import numpy as np
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parent
CORPUS = ROOT / "corpus"
MTIME = 1_700_000_000


def write(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / f"seed-{name}").write_bytes(data)


def rgb(w=4, h=3):
    img = Image.new("RGB", (w, h))
    img.putdata([((x * 60) % 256, (y * 80) % 256, (x * y * 40) % 256) for y in range(h) for x in range(w)])
    return img


def encode(img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def images():
    out = {
        "rgb.png": encode(rgb(), "PNG"),
        "rgba.png": encode(rgb().convert("RGBA"), "PNG"),
        "gray.png": encode(rgb().convert("L"), "PNG"),
        "palette.png": encode(rgb().convert("P"), "PNG"),
        "gray16.png": encode(Image.fromarray(np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000), "PNG"),
        "rgb.jpg": encode(rgb(8, 8), "JPEG", quality=90),
        "gray.jpg": encode(rgb(8, 8).convert("L"), "JPEG", quality=90),
        "progressive.jpg": encode(rgb(8, 8), "JPEG", quality=90, progressive=True),
        "cmyk.jpg": encode(rgb(8, 8).convert("CMYK"), "JPEG", quality=90),
        "lossy.webp": encode(rgb(), "WEBP", quality=80),
        "lossless.webp": encode(rgb(), "WEBP", lossless=True),
        "rgb.gif": encode(rgb().convert("P"), "GIF"),
        "rgb.bmp": encode(rgb(), "BMP"),
        "gray.bmp": encode(rgb().convert("L"), "BMP"),
        "rgb.tif": encode(rgb(), "TIFF"),
        "lzw.tif": encode(rgb(), "TIFF", compression="tiff_lzw"),
        "gray.tif": encode(rgb().convert("L"), "TIFF"),
    }
    return out


def tar_bytes(members, gz=False):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        d = tarfile.TarInfo("imgs")
        d.type, d.mtime, d.mode = tarfile.DIRTYPE, MTIME, 0o755
        tar.addfile(d)
        for name, data in members.items():
            info = tarfile.TarInfo(f"imgs/{name}")
            info.size, info.mtime, info.mode = len(data), MTIME, 0o644
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("imgs/link.png")
        link.type, link.linkname, link.mtime = tarfile.SYMTYPE, "a.png", MTIME
        tar.addfile(link)
    raw = buf.getvalue()
    return gzip.compress(raw, mtime=MTIME) if gz else raw


def zip_bytes(members, method):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=method) as z:
        z.writestr(zipfile.ZipInfo("imgs/", date_time=(2024, 1, 1, 0, 0, 0)), b"")
        for name, data in members.items():
            info = zipfile.ZipInfo(f"imgs/{name}", date_time=(2024, 1, 1, 0, 0, 0))
            info.compress_type = method
            z.writestr(info, data)
        link = zipfile.ZipInfo("imgs/link.png", date_time=(2024, 1, 1, 0, 0, 0))
        link.external_attr = (0o120777 << 16)
        z.writestr(link, b"a.png")
    return buf.getvalue()


def multipart(parts, boundary="XfuzzX"):
    body = b""
    for disposition, data in parts:
        body += f"--{boundary}\r\nContent-Disposition: form-data; {disposition}\r\n".encode()
        body += b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return f"multipart/form-data; boundary={boundary}\r\n".encode() + body


def main():
    imgs = images()
    for name, data in imgs.items():
        write("decode_image", name, data)

    members = {"a.png": imgs["rgb.png"], "b.jpg": imgs["rgb.jpg"], "notes.txt": b"not an image\n"}
    write("walk_archive", "imgs.tar", tar_bytes(members))
    write("walk_archive", "imgs.tar.gz", tar_bytes(members, gz=True))
    write("walk_archive", "stored.zip", zip_bytes(members, zipfile.ZIP_STORED))
    write("walk_archive", "deflate.zip", zip_bytes(members, zipfile.ZIP_DEFLATED))

    repo = ROOT.parent
    for path in sorted((repo / "config" / "extractors").glob("*.toml")):
        write("parse_manifest", path.name, path.read_bytes())
    write("parse_manifest", "minimal.toml", b'id = "m"\nfile = "m.pt"\nsha256 = "' + b"ab" * 32
          + b'"\ninput_size = [224, 200]\ninput_range = "-1-1"\nmean = [0.5, 0.5, 0.5]\n'
          b'std = [0.2, 0.2, 0.2]\noutputs = ["pool", "logits"]\nfeatures = "logits"\n')

    feats = (np.arange(12, dtype=np.float32).reshape(4, 3) - 5.0) / 3.0
    def npy(a, **kw):
        buf = io.BytesIO()
        np.lib.format.write_array(buf, a, allow_pickle=False, **kw)
        return buf.getvalue()
    write("read_npy_npz", "f4.npy", npy(feats))
    write("read_npy_npz", "f8-fortran.npy", npy(np.asfortranarray(feats.astype(np.float64))))
    write("read_npy_npz", "f4-v2.npy", npy(feats, version=(2, 0)))
    mu = feats.mean(axis=0).astype(np.float64)
    sigma = np.cov(feats.astype(np.float64), rowvar=False)
    for name, save, m, s in [("f8.npz", np.savez, mu, sigma),
                             ("f4-compressed.npz", np.savez_compressed, mu.astype(np.float32), sigma.astype(np.float32))]:
        buf = io.BytesIO()
        save(buf, mu=m, sigma=s)
        write("read_npy_npz", name, buf.getvalue())

    small_tar = tar_bytes({"a.png": imgs["rgb.png"]})
    write("multipart_upload", "images.txt", multipart([
        ('name="files"; filename="a.png"', imgs["rgb.png"]),
        ('name="files"; filename="dir/b.jpg"', imgs["rgb.jpg"]),
        ('name="note"', b"a form field"),
        ('name="files"; filename="../up.png"', imgs["rgb.png"]),
    ]))
    write("multipart_upload", "archive.txt", multipart([
        ('name="files"; filename="set.tar"', small_tar),
        ('name="files"; filename="set.zip"', zip_bytes({"c.gif": imgs["rgb.gif"]}, zipfile.ZIP_DEFLATED)),
    ], boundary="----WebKitFormBoundary7MA4YWxkTrZu0gW"))


if __name__ == "__main__":
    main()
