"""The python side of test_zarr: python zarr / tifffile write arrays for
cptools to read, and check the arrays cptools wrote.

  zarr_peer.py write DIR   arrays + DIR/<name>.npy (what they hold) + DIR/cases.txt
  zarr_peer.py check DIR   every DIR/cw_<name> (written by cptools) against DIR/cw_<name>.npy
"""
import json
import os
import sys

import numcodecs
import numpy as np
import tifffile
import zarr


def write(d):
    rng = np.random.default_rng(20)
    B = numcodecs.Blosc
    cases = [
        # name, dtype, shape, chunks, compressor, separator, order
        ("zlib_u16", "<u2", (7, 33, 45), (3, 16, 20), numcodecs.Zlib(level=5), ".", "C"),
        ("gzip_i32", "<i4", (5, 17, 9), (2, 8, 8), numcodecs.GZip(level=5), "/", "C"),
        ("zstd_f32", "<f4", (4, 30, 31), (4, 7, 9), numcodecs.Zstd(level=3), ".", "C"),
        ("blosc_lz4_u8", "|u1", (6, 40, 40), (4, 16, 16), B(cname="lz4", clevel=5, shuffle=B.SHUFFLE), "/", "C"),
        ("blosc_zstd_f64", "<f8", (3, 20, 21), (2, 16, 16), B(cname="zstd", clevel=3, shuffle=B.BITSHUFFLE), ".", "C"),
        ("blosc_default_i16", "<i2", (3, 19, 23), (2, 10, 10), zarr.storage.default_compressor, ".", "C"),
        ("raw_be_i16", ">i2", (5, 10, 11), (2, 4, 4), None, ".", "C"),
        ("raw_u64_F", "<u8", (4, 9, 10), (3, 4, 5), None, "/", "F"),
        ("zlib_4d_u32", "<u4", (2, 3, 17, 19), (1, 2, 8, 8), numcodecs.Zlib(level=1), ".", "C"),
        ("blosclz_2d_i64", "<i8", (50, 60), (16, 16), B(cname="blosclz", clevel=5, shuffle=B.NOSHUFFLE), "/", "C"),
        ("zstd_be_f4_F", ">f4", (6, 7, 8), (4, 4, 4), numcodecs.Zstd(level=1), ".", "F"),
    ]
    names = []
    for name, dt, shape, chunks, comp, sep, order in cases:
        dt = np.dtype(dt)
        if dt.kind == "f":
            a = rng.normal(0, 1000, shape).astype(dt)
        else:
            info = np.iinfo(dt)
            a = rng.integers(info.min, info.max, shape, dtype=dt.newbyteorder("="), endpoint=True).astype(dt)
        z = zarr.open(os.path.join(d, name), mode="w", shape=shape, chunks=chunks, dtype=dt,
                      compressor=comp, dimension_separator=sep, order=order)
        z[...] = a
        np.save(os.path.join(d, name + ".npy"), np.ascontiguousarray(z[...]).astype(dt.newbyteorder("<")))
        names.append(name)
    # missing chunks read as fill_value (an integer and NaN)
    for name, dt, fill in (("missing_i8", "|i1", -3), ("missing_f32", "<f4", "NaN")):
        z = zarr.open(os.path.join(d, name), mode="w", shape=(5, 20, 20), chunks=(2, 8, 8), dtype=dt,
                      fill_value=np.nan if fill == "NaN" else fill, compressor=numcodecs.Zlib())
        z[1:3, 2:9, 11:17] = 7
        np.save(os.path.join(d, name + ".npy"), z[...])
        names.append(name)
    # an OME-NGFF 0.4 group with a (t, c, z, y, x) level 0 and a level 1
    g = zarr.open_group(os.path.join(d, "ome_group"), mode="w")
    a = rng.integers(0, 4000, (1, 2, 6, 30, 28), dtype="<u2")
    g.create_dataset("s0", data=a, chunks=(1, 1, 4, 16, 16), compressor=numcodecs.Zlib())
    g.create_dataset("s1", data=a[:, :, :, ::2, ::2], chunks=(1, 1, 4, 16, 16))
    axes = [{"name": "t", "type": "time", "unit": "second"}, {"name": "c", "type": "channel"}] + [
        {"name": n, "type": "space", "unit": "micrometer"} for n in "zyx"]
    g.attrs["multiscales"] = [{
        "version": "0.4", "axes": axes, "name": "test",
        "datasets": [
            {"path": "s0", "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 2.5, 0.5, 0.25]}]},
            {"path": "s1", "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 2.5, 1.0, 0.5]},
                                                         {"type": "translation", "translation": [0, 0, 0, .25, .25]}]},
        ],
        "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 2, 2, 2]}],
    }]
    np.save(os.path.join(d, "ome_group.npy"), a)
    # TIFF stacks: BigTIFF tiled, classic striped, an ImageJ hyperstack
    t = rng.integers(0, 60000, (5, 70, 90), dtype="<u2")
    tifffile.imwrite(os.path.join(d, "tiled.tif"), t, bigtiff=True, tile=(32, 32), compression="zlib")
    np.save(os.path.join(d, "tiled.npy"), t)
    # the same with its last page's last tile garbled: boxes elsewhere still read
    raw = bytearray(open(os.path.join(d, "tiled.tif"), "rb").read())
    with tifffile.TiffFile(os.path.join(d, "tiled.tif")) as tf:
        off, n = tf.pages[-1].dataoffsets[-1], tf.pages[-1].databytecounts[-1]
    raw[off:off + n] = bytes(n)
    open(os.path.join(d, "tiled_bad.tif"), "wb").write(raw)
    s = rng.normal(0, 1, (6, 50, 41)).astype("<f4")
    tifffile.imwrite(os.path.join(d, "striped.tif"), s, rowsperstrip=7)
    np.save(os.path.join(d, "striped.npy"), s)
    h = rng.integers(0, 255, (4, 2, 33, 29), dtype="u1")
    tifffile.imwrite(os.path.join(d, "hyper.tif"), h, imagej=True,
                     metadata={"axes": "ZCYX", "spacing": 2.0, "unit": "um"}, resolution=(1 / 0.5, 1 / 0.5))
    np.save(os.path.join(d, "hyper.npy"), h)
    f = np.asfortranarray(rng.integers(-30000, 30000, (5, 12, 13), dtype="<i2").astype(">i2"))
    np.save(os.path.join(d, "fortran_be.npy"), f)
    # NGFF 0.3: axes as plain names, no coordinateTransformations
    g = zarr.open_group(os.path.join(d, "ome03"), mode="w")
    g.create_dataset("0", data=a[0, 0], chunks=(3, 16, 16))
    g.attrs["multiscales"] = [{"version": "0.3", "axes": ["z", "y", "x"], "datasets": [{"path": "0"}]}]
    with open(os.path.join(d, "cases.txt"), "w") as fh:
        fh.write("\n".join(names) + "\n")


def check(d):
    bad = 0
    for e in sorted(os.listdir(d)):
        p = os.path.join(d, e)
        if not e.startswith("cw_") or e.endswith(".npy") or e.endswith(".json"):
            continue
        want = np.load(p + ".npy")
        if os.path.exists(os.path.join(p, ".zattrs")):
            g = zarr.open_group(p, mode="r")
            ms = g.attrs["multiscales"][0]
            meta = json.load(open(os.path.join(d, e + ".json")))
            if ms["version"] != "0.4" or [a["name"] for a in ms["axes"]] != meta["axes"] or \
                    ms["datasets"][0]["coordinateTransformations"][0]["scale"] != meta["scale"] or \
                    [a.get("unit") for a in ms["axes"]] != meta["units"]:
                print(e, "OME metadata", ms)
                bad += 1
            got = g[ms["datasets"][0]["path"]][...]
        else:
            got = zarr.open(p, mode="r")[...]
        if got.dtype != want.dtype or got.shape != want.shape or not np.array_equal(got, want):
            print(e, "differs", got.dtype, want.dtype, got.shape, want.shape)
            bad += 1
        else:
            print(e, "ok")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    {"write": write, "check": check}[sys.argv[1]](sys.argv[2])
