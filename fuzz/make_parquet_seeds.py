"""Writes the seed corpus of the `parquet` fuzz target (fuzz/corpus/parquet/): tiny Parquet files
in the Hugging Face `datasets` layout, a few KB each.

    /work/venv/bin/python fuzz/make_parquet_seeds.py
"""

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

OUT = Path(__file__).parent / "corpus" / "parquet"


def encoded(mode, size, fmt, seed):
    img = Image.new(mode, size)
    img.putdata([((x * 37 + seed * 11) % 256) if mode in "LP" else ((x * 37) % 256, (x * 5 + seed) % 256, (x * 91) % 256)
                 for x in range(size[0] * size[1])])
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


IMAGES = [
    encoded("RGB", (10, 9), "PNG", 0),
    encoded("L", (9, 9), "PNG", 1),
    encoded("P", (8, 11), "PNG", 2),
    encoded("RGB", (12, 10), "JPEG", 3),
    encoded("RGB", (9, 12), "PNG", 4),
]
HF_IMAGE = {"_type": "Image"}
STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def hf_metadata(features):
    return {b"huggingface": json.dumps({"info": {"features": features}}).encode()}


def struct_column(images, paths=None):
    paths = paths or [f"img_{k}.png" for k in range(len(images))]
    return pa.array([{"bytes": b, "path": p} for b, p in zip(images, paths)], type=STRUCT)


def write(name, table, **kw):
    pq.write_table(table, OUT / name, **kw)
    print(name, (OUT / name).stat().st_size)


OUT.mkdir(parents=True, exist_ok=True)

# The usual layout: struct {bytes, path} images and int64 labels, zstd.
t = pa.table({"image": struct_column(IMAGES[:3]), "label": pa.array([0, 2, 1], pa.int64())})
t = t.replace_schema_metadata(hf_metadata({"image": HF_IMAGE, "label": {"dtype": "int64", "_type": "Value"}}))
write("struct_label_zstd.parquet", t, compression="zstd")

# Plain binary images, int32 labels, snappy.
t = pa.table({"image": pa.array(IMAGES[1:4], pa.binary()), "label": pa.array([1, 0, 1], pa.int32())})
write("binary_label_snappy.parquet", t, compression="snappy")

# No label column, snappy.
write("struct_no_label_snappy.parquet", pa.table({"image": struct_column(IMAGES[3:])}), compression="snappy")

# A row stored by path only (null bytes), a null struct, uint8 labels, uncompressed.
col = pa.array(
    [{"bytes": IMAGES[0], "path": "a.png"}, {"bytes": None, "path": "only/a/path.png"}, None],
    type=STRUCT,
)
write("null_bytes_no_compression.parquet", pa.table({"image": col, "label": pa.array([3, 4, 5], pa.uint8())}),
      compression="none")

# Several row groups and dictionary-encoded repeats of one image, zstd, data pages v2.
imgs = [IMAGES[0], IMAGES[0], IMAGES[1], IMAGES[0], IMAGES[1]]
t = pa.table({"label": pa.array([0, 0, 1, 0, 1], pa.int16()), "image": struct_column(imgs, ["a", "a", "b", "a", "b"])})
write("row_groups_dictionary_zstd.parquet", t, compression="zstd", row_group_size=2, data_page_version="2.0")

# Large binary images and an extra column, snappy, no dictionary.
t = pa.table({
    "image": pa.array(IMAGES[2:4], pa.large_binary()),
    "label": pa.array([7, 8], pa.int64()),
    "caption": pa.array(["a", "b"]),
})
write("large_binary_snappy.parquet", t, compression="snappy", use_dictionary=False)
